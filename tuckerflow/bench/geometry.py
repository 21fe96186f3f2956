"""Benchmark: tangent-space projection and retraction cost against the mode size ``n``.

``python -m tuckerflow.bench geometry [--sizes 64 128 … 4096] [--rank 16] [--repeat 5]``

For each ``n`` the base point ``Y`` is a random Tucker tensor of shape ``n × n × n`` and
multilinear rank ``r`` (default 16); ``Z`` is another random Tucker tensor of rank ``r``. Timed:

* ``project``: ``tuckerflow.project(Y, Z)`` with ``Z`` in Tucker form (factor-wise
  contractions);
* ``retract``: ``tuckerflow.retract(Y, ξ, 0.1)`` for a unit tangent vector ``ξ`` (QR of the
  ``n × 2r`` factors and HOSVD of the ``2r × 2r × 2r`` core);
* ``project_dense``: the same projection with ``Z`` formed densely, for ``n³`` entries up to
  ``--dense-max-entries`` (the dense tensor is built outside the timing), reported as the ratio
  ``dense / Tucker``.

The growth exponent ``p`` of ``time ∝ n^p`` is fitted by least squares on ``log time`` over the
sizes ``n ≥ --fit-from`` (default 256, where per-call overheads no longer dominate); the
factor-wise algorithms have ``p ≤ 1`` up to overheads.
"""

from __future__ import annotations

import tensorly as tl

from .. import random_tucker
from ..geometry import FixedRankTucker, project, retract
from ._util import environment, fitted_exponent, print_table, sync_for, timeit


def add_arguments(parser):
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048, 4096]
    )
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--dense-max-entries", type=int, default=256**3)
    parser.add_argument("--fit-from", type=int, default=256)


def run(args):
    sizes = [32, 64, 128] if args.quick else args.sizes
    rank = 4 if args.quick else args.rank
    repeat = 2 if args.quick else args.repeat
    fit_from = 0 if args.quick else args.fit_from
    rows = []
    with tl.backend_context(args.backend, local_threadsafe=True):
        sync = sync_for(args.backend, args.device)
        for n in sizes:
            shape = (n, n, n)
            y = random_tucker(shape, rank, rng=n, dtype=args.dtype, device=args.device)
            z = random_tucker(shape, rank, rng=n + 1, dtype=args.dtype, device=args.device)
            xi = FixedRankTucker(shape, (rank,) * 3).random_tangent(y, rng=0)
            t_proj = timeit(lambda y=y, z=z: project(y, z), repeat=repeat, sync=sync)
            t_retr = timeit(lambda y=y, xi=xi: retract(y, xi, 0.1), repeat=repeat, sync=sync)
            row = {
                "n": n,
                "rank": rank,
                "project_s": t_proj["median"],
                "project_p10_s": t_proj["p10"],
                "project_p90_s": t_proj["p90"],
                "retract_s": t_retr["median"],
                "retract_p10_s": t_retr["p10"],
                "retract_p90_s": t_retr["p90"],
            }
            if n**3 <= args.dense_max_entries:
                zd = z.to_tensor()
                t_dense = timeit(lambda y=y, zd=zd: project(y, zd), repeat=repeat, sync=sync)
                row["project_dense_s"] = t_dense["median"]
                row["dense_over_tucker"] = t_dense["median"] / t_proj["median"]
                del zd
            rows.append(row)
    fit = [r for r in rows if r["n"] >= fit_from]
    exponents = {
        "project": fitted_exponent([r["n"] for r in fit], [r["project_s"] for r in fit]),
        "retract": fitted_exponent([r["n"] for r in fit], [r["retract_s"] for r in fit]),
        "fit_sizes": [r["n"] for r in fit],
    }
    print_table(
        rows,
        ["n", "rank", "project_s", "retract_s", "project_dense_s", "dense_over_tucker"],
    )
    print(
        f"fitted exponent (n >= {fit_from}): project n^{exponents['project']:.2f}, "
        f"retract n^{exponents['retract']:.2f}"
    )
    return {
        "benchmark": "geometry",
        "backend": args.backend,
        "device": args.device,
        "dtype": args.dtype,
        "exponents": exponents,
        "environment": environment(),
        "rows": rows,
    }
