"""Benchmark: per-step cost of the low-rank integrators, and a dense RK4 for comparison.

``python -m tuckerflow.bench integrators [--sizes 64 … 2048] [--rank 16] [--dense-sizes 32 64]``

Part 1, scaling in ``n``: the operator is ``F(Y) = κ Δ Y − c · (x ⊗ y ⊗ z) ⊙ Y`` on an
``n × n × n`` grid (banded second differences in grid units, κ = 0.1, a product potential
``c = 1`` that makes ranks grow), ``Y0`` a random Tucker tensor of rank ``r`` (default 16).
For each method one ``step()`` (RK4 substeps, ``h = 0.1``; the rank-adaptive methods capped
at ``max_rank = r``) is timed; ``p`` in ``time ∝ n^p`` is fitted over ``n ≥ --fit-from``.

Part 2, against the full system: the heat-type equation ``u_t = κ Δu − c (x y z) u`` on
``(0, 1)³`` with Dirichlet boundary (κ = 0.01, c = 50, ``T = 0.5``) from a smooth rank-3
initial value. The rank-adaptive BUG integrator (Krylov exponential substeps, 10 steps,
``rank_rtol = 1e-8``, ``max_rank = r``) is compared with the classical RK4 on the dense
``n³`` tensor at 90 % of its stability limit; both are measured against a dense Krylov
exponential reference (relative tolerance 1e-13). Reported: wall times, their ratio and
relative errors.
"""

from __future__ import annotations

import math

import numpy as np
import tensorly as tl

from .._backend import backend_dtype
from ..integrate import METHODS
from ..integrate.substep import KrylovExponential, rk4
from ..operators import Banded, KroneckerSum, laplacian
from ..random import random_tucker
from ..tucker import TuckerTensor
from ._util import environment, fitted_exponent, print_table, sync_for, timeit


def add_arguments(parser):
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dense-sizes", type=int, nargs="*", default=[32, 64])
    parser.add_argument("--fit-from", type=int, default=256)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))


def scaling_operator(n, *, kappa=0.1, coupling=1.0):
    """``κ Δ − c · diag(x) ⊗ diag(y) ⊗ diag(z)`` in grid units (spacing 1)."""
    x = np.linspace(-1.0, 1.0, n)
    lap = laplacian((n, n, n), 1.0)
    potential = KroneckerSum((n, n, n), [(-coupling, [Banded(n, {0: x})] * 3)])
    return kappa * lap + potential


def heat_problem(n, *, kappa=0.01, coupling=50.0):
    """``κ Δ − c (x y z)`` on the interior grid of (0, 1)³ and a smooth rank-3 initial value."""
    h = 1.0 / (n + 1)
    x = np.arange(1, n + 1) * h
    op = kappa * laplacian((n, n, n), h) + KroneckerSum(
        (n, n, n), [(-coupling, [Banded(n, {0: x - 0.5})] * 3)]
    )
    modes = np.sqrt(2 * h) * np.sin(np.pi * np.outer(x, np.arange(1, 4)))  # orthonormal
    core = np.zeros((3, 3, 3))
    for i in range(3):
        for j in range(3):
            for k in range(3):
                core[i, j, k] = 1.0 / (1 + i + j + k) ** 2
    lam_max = kappa * 3 * 4 / h**2 + coupling / 8
    return op, core, modes, lam_max


def _scaling(args, sizes, rank, repeat, sync):
    rows = []
    for n in sizes:
        op = scaling_operator(n)
        y0 = random_tucker((n, n, n), rank, rng=n, device=args.device)
        row = {"n": n, "rank": rank}
        for name in args.methods:
            cls = METHODS[name]
            kw = {"max_rank": rank} if cls.rank_adaptive else {}
            solver = cls(op, 0.0, y0, 1e9, step=0.1, substep="rk4", **kw)
            stats = timeit(solver.step, repeat=repeat, warmup=1, sync=sync)
            if solver.status != "running":
                raise RuntimeError(f"{name} stopped: {solver.message}")
            row[f"{name}_s"] = stats["median"]
            row[f"{name}_p10_s"] = stats["p10"]
            row[f"{name}_p90_s"] = stats["p90"]
        rows.append(row)
        print_table([row], ["n", *(f"{m}_s" for m in args.methods)])
    return rows


def _dense_comparison(args, sizes, rank, sync):
    import time

    from ..integrate import solve_ivp

    rows = []
    for n in sizes:
        op, core, modes, lam_max = heat_problem(n)
        kw = {"dtype": backend_dtype("float64")}
        if args.device is not None:
            kw["device"] = args.device
        y0 = TuckerTensor(tl.tensor(core, **kw), [tl.tensor(modes, **kw)] * 3)
        x0 = y0.to_tensor()
        end = 0.5

        def f(t, x, op=op):
            return op.apply_dense(x, t)

        ref = KrylovExponential(rtol=1e-13)(f, 0.0, x0, end)
        t0 = time.perf_counter()
        sol = solve_ivp(
            op,
            (0.0, end),
            y0,
            method="ra-bug",
            step=end / 10,
            substep="exp",
            rank_rtol=1e-8,
            max_rank=rank,
            t_eval=[end],
        )
        if sync:
            sync()
        t_lr = time.perf_counter() - t0
        h_dense = 0.9 * 2.785 / lam_max
        steps = math.ceil(end / h_dense)
        h_dense = end / steps
        t0 = time.perf_counter()
        x = x0
        for k in range(steps):
            x = rk4(f, k * h_dense, x, h_dense)
        if sync:
            sync()
        t_dense = time.perf_counter() - t0
        nref = float(tl.to_numpy(tl.norm(ref)))
        err_lr = float(tl.to_numpy(tl.norm(sol.y[-1].to_tensor() - ref))) / nref
        err_dense = float(tl.to_numpy(tl.norm(x - ref))) / nref
        row = {
            "n": n,
            "lowrank_s": t_lr,
            "dense_rk4_s": t_dense,
            "speedup": t_dense / t_lr,
            "lowrank_err": err_lr,
            "dense_err": err_dense,
            "dense_steps": steps,
            "lowrank_steps": sol.nsteps,
            "final_rank": str(sol.ranks[-1]),
        }
        rows.append(row)
        print_table([row], list(row))
    return rows


def run(args):
    sizes = [16, 32, 64] if args.quick else args.sizes
    rank = 4 if args.quick else args.rank
    repeat = 2 if args.quick else args.repeat
    dense_sizes = [16] if args.quick else args.dense_sizes
    fit_from = 0 if args.quick else args.fit_from
    with tl.backend_context(args.backend, local_threadsafe=True):
        sync = sync_for(args.backend, args.device)
        rows = _scaling(args, sizes, rank, repeat, sync)
        exponents = {}
        for name in args.methods:
            used = [r for r in rows if r["n"] >= fit_from]
            exponents[name] = fitted_exponent(
                [r["n"] for r in used], [r[f"{name}_s"] for r in used]
            )
        print("\nper-step time, fitted exponent p in time ~ n^p:")
        print_table([{"method": k, "p": v} for k, v in exponents.items()], ["method", "p"])
        print("\nrank-adaptive BUG against dense RK4 (heat-type equation, T = 0.5):")
        dense = _dense_comparison(args, dense_sizes, rank, sync)
    return {
        "benchmark": "integrators",
        "backend": args.backend,
        "device": args.device,
        "rank": rank,
        "scaling": rows,
        "exponents": exponents,
        "fit_from": fit_from,
        "dense_comparison": dense,
        "environment": environment(),
    }
