"""Benchmark: ST-HOSVD and HOSVD against TensorLy's ``tucker`` on low rank plus noise.

``python -m tuckerflow.bench truncation [--sizes 128 256] [--ranks 8 32] [--repeat 3]``

For each size ``n`` (tensor ``n × n × n``) and rank ``r`` the input is a random Tucker tensor
of multilinear rank ``r`` and unit norm plus Gaussian noise of relative norm ``--noise``.
Every variant is timed in the same run and reported as a time ratio against
``tensorly.decomposition.tucker`` (HOOI with its defaults) together with the relative error
and the error excess over TensorLy's (in percent).
"""

from __future__ import annotations

import numpy as np
import tensorly as tl

from .. import hosvd, random_tucker, st_hosvd
from ._util import environment, print_table, sync_for, timeit


def add_arguments(parser):
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--noise", type=float, default=1e-2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dtype", default="float64")


def _variants():
    from tensorly.decomposition import tucker

    return {
        "tensorly.tucker": lambda x, r: tucker(x, rank=[r] * 3),
        "st_hosvd": lambda x, r: st_hosvd(x, rank=r),
        "st_hosvd[qr]": lambda x, r: st_hosvd(x, rank=r, method="qr"),
        "st_hosvd[gram]": lambda x, r: st_hosvd(x, rank=r, method="gram"),
        "st_hosvd[randomized]": lambda x, r: st_hosvd(x, rank=r, method="randomized", rng=0),
        "hosvd": lambda x, r: hosvd(x, rank=r),
    }


def run(args):
    sizes = [32, 48] if args.quick else args.sizes
    ranks = [4] if args.quick else args.ranks
    repeat = 1 if args.quick else args.repeat
    rows = []
    with tl.backend_context(args.backend, local_threadsafe=True):
        sync = sync_for(args.backend, args.device)
        for n in sizes:
            for r in ranks:
                y = random_tucker((n, n, n), r, rng=n + r, dtype=args.dtype, device=args.device)
                x = y.to_tensor()
                gen = np.random.default_rng(1)
                noise = gen.standard_normal((n, n, n))
                noise *= args.noise / np.linalg.norm(noise)
                kw = {"dtype": getattr(tl.backend.current_backend(), args.dtype)}
                if args.device is not None:
                    kw["device"] = args.device
                x = x + tl.tensor(noise, **kw)
                nx = float(tl.to_numpy(tl.norm(x)))
                results = {}
                for name, fn in _variants().items():
                    out = fn(x, r)
                    err = float(tl.to_numpy(tl.norm(x - tl.tucker_to_tensor(out)))) / nx
                    t = timeit(lambda fn=fn, x=x, r=r: fn(x, r), repeat=repeat, warmup=1, sync=sync)
                    results[name] = (t, err)
                t_ref, e_ref = results["tensorly.tucker"]
                for name, (t, err) in results.items():
                    rows.append(
                        {
                            "n": n,
                            "rank": r,
                            "method": name,
                            "median_s": t["median"],
                            "p10_s": t["p10"],
                            "p90_s": t["p90"],
                            "speedup_vs_tensorly": t_ref["median"] / t["median"],
                            "rel_error": err,
                            "error_excess_pct": 100.0 * (err / e_ref - 1.0),
                        }
                    )
    print_table(
        rows,
        ["n", "rank", "method", "median_s", "speedup_vs_tensorly", "rel_error", "error_excess_pct"],
    )
    return {
        "benchmark": "truncation",
        "backend": args.backend,
        "device": args.device,
        "dtype": args.dtype,
        "noise": args.noise,
        "environment": environment(),
        "rows": rows,
    }
