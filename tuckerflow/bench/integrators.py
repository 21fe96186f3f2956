"""Benchmark: the low-rank integrators against the dense solvers a user would pick instead.

``python -m tuckerflow.bench integrators [--sizes …] [--rank 16] [--dense-sizes 32 64 96]
[--threads 1]``

Part 1, per-step cost against ``n``: the operator is ``F(Y) = κ Δ Y − c · (x ⊗ y ⊗ z) ⊙ Y``
on an ``n × n × n`` grid (banded second differences in grid units, κ = 0.1, a product
potential ``c = 1`` that makes ranks grow), ``Y0`` a random Tucker tensor of rank ``r``
(default 16). For each method one ``step()`` (RK4 substeps, ``h = 0.1``; the rank-adaptive
methods capped at ``max_rank = r``) is timed, median of ``--repeat`` after a warm-up, wall
time and CPU time of the process (the latter is robust to other jobs on a shared machine);
``p`` in ``time ∝ n^p`` is fitted over ``n ≥ --fit-from``.

Part 2, against the dense solvers: the heat-type equation ``u_t = κ Δu − c (x y z) u`` on
``(0, 1)³`` with Dirichlet boundary (κ = 0.01, c = 50, ``T = 0.5``) from a smooth rank-3
initial value, on ``n³`` grid points. Low rank: ``ra-bug`` with Krylov-exponential substeps,
10 fixed steps, ``rank_rtol = 1e-8``, ``max_rank = r``. Peers on the sparse ``n³ × n³``
matrix (``scipy.sparse``): ``scipy.sparse.linalg.expm_multiply`` (the reference solution),
``scipy.integrate.solve_ivp`` with ``BDF`` and the sparse Jacobian (up to ``--bdf-max``, its
sparse LU fills in quickly in 3-D) and with ``DOP853`` (up to ``--explicit-max``); the ODE
solvers are run at ``rtol`` equal to the low-rank error, so that the accuracies match.
Reported: wall times (the low-rank one the median of :data:`LOWRANK_REPEATS` runs, the
dense ones of one run), ratios against the low-rank run and relative errors. With
``--accurate`` (default) a second low-rank run by the second-order midpoint BUG (40 steps,
``rank_rtol = 1e-12``, ``max_rank = 2r``) is timed as well; with ``--pde-error`` (default)
every solution's error against the PDE is estimated from the solution on the nested grid
``2n + 1`` (that accurate low-rank run there, evaluated at the coarse points; Richardson's
factor 4/3 for the second-order differences), so that the low-rank and the dense errors
are compared where a user measures them.

Part 3, adaptive against fixed steps: the same kind of operator on a ``16³`` grid
(κ = 0.02, c = 1) from a random rank-2 value (a fast transient, then slow decay), ``T = 2``;
``ra-bug`` with RK4 substeps at fixed steps and adaptive at several ``rtol``; reported:
evaluations of ``fun`` and relative error against a dense Krylov exponential.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import tensorly as tl

from .._backend import backend_dtype
from ..integrate import METHODS, solve_ivp
from ..integrate.substep import KrylovExponential
from ..operators import Banded, KroneckerSum, laplacian
from ..random import random_tucker
from ..tucker import TuckerTensor
from ._util import environment, fitted_exponent, print_table, sync_for, timeit


def add_arguments(parser):
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dense-sizes", type=int, nargs="*", default=[32, 64, 96])
    parser.add_argument("--bdf-max", type=int, default=40)
    parser.add_argument("--explicit-max", type=int, default=96)
    parser.add_argument("--fit-from", type=int, default=256)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="BLAS/OpenMP (and torch) threads; set the *_NUM_THREADS variables as well",
    )
    parser.add_argument("--parts", nargs="+", default=["steps", "dense", "adaptive"])
    parser.add_argument(
        "--accurate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time a second-order low-rank run (midpoint BUG, 40 steps) against the dense",
    )
    parser.add_argument(
        "--pde-error",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="estimate each solution's error against the PDE from the nested grid 2n + 1",
    )


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
    return op, core, modes, x


def sparse_matrix(n, x, *, kappa=0.01, coupling=50.0):
    """The heat problem's operator as a SciPy sparse ``n³ × n³`` matrix (C order)."""
    import scipy.sparse as sp

    h = 1.0 / (n + 1)
    d2 = sp.diags([1.0, -2.0, 1.0], [-1, 0, 1], shape=(n, n)) / h**2
    eye = sp.identity(n)
    lap = (
        sp.kron(sp.kron(d2, eye), eye)
        + sp.kron(sp.kron(eye, d2), eye)
        + sp.kron(eye, sp.kron(eye, d2))
    )
    v = x - 0.5
    pot = np.einsum("i,j,k->ijk", v, v, v).ravel()
    return (kappa * lap - coupling * sp.diags(pot)).tocsr()


@contextlib.contextmanager
def _threads(n):
    if n is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional
        import sys

        print(
            "--threads: threadpoolctl is not installed, BLAS threads are not limited; set "
            "OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS instead",
            file=sys.stderr,
        )
        limiter = contextlib.nullcontext()
    else:
        limiter = threadpool_limits(limits=n)
    torch_before = None
    try:
        import sys

        if "torch" in sys.modules:
            import torch

            torch_before = torch.get_num_threads()
            torch.set_num_threads(n)
    except ImportError:  # pragma: no cover
        pass
    with limiter:
        yield
    if torch_before is not None:
        import torch

        torch.set_num_threads(torch_before)


def _cpu_timeit(fn, repeat, sync):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        if sync:
            sync()
        times.append(time.process_time() - t0)
    return float(np.median(times))


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
            row[f"{name}_cpu_s"] = _cpu_timeit(solver.step, repeat, sync)
        rows.append(row)
        print_table([row], ["n", *(f"{m}_s" for m in args.methods), "ra-bug_cpu_s"])
    return rows


#: Runs of the (sub-second) low-rank integration per size, of which the median is reported;
#: the dense solvers run once (minutes each), so a short burst of other load on a shared
#: machine cannot decide the ratio through the low-rank time alone.
LOWRANK_REPEATS = 3


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _dense_comparison(args, sizes, rank, sync):
    import scipy.integrate
    import scipy.sparse.linalg

    rows = []
    end = 0.5
    for n in sizes:
        op, core, modes, x = heat_problem(n)
        kw = {"dtype": backend_dtype("float64")}
        if args.device is not None:
            kw["device"] = args.device
        y0 = TuckerTensor(tl.tensor(core, **kw), [tl.tensor(modes, **kw)] * 3)
        times = []
        for _ in range(LOWRANK_REPEATS):
            t0 = time.perf_counter()
            sol = solve_ivp(
                op, (0.0, end), y0, method="ra-bug", step=end / 10, substep="exp",
                rank_rtol=1e-8, max_rank=rank, t_eval=[end],
            )  # fmt: skip
            if sync:
                sync()
            times.append(time.perf_counter() - t0)
        t_lr = float(np.median(times))
        y_lr = np.asarray(tl.to_numpy(sol.y[-1].to_tensor())).ravel()
        u0 = np.einsum("abc,ia,jb,kc->ijk", core, modes, modes, modes).ravel()
        a = sparse_matrix(n, x)
        t0 = time.perf_counter()
        ref = scipy.sparse.linalg.expm_multiply(a * end, u0)
        t_expm = time.perf_counter() - t0
        err_lr = _rel(y_lr, ref)
        row = {
            "n": n,
            "lowrank_s": t_lr,
            "lowrank_err": err_lr,
            "final_rank": str(sol.ranks[-1]),
            "expm_multiply_s": t_expm,
            "vs_expm_multiply": t_expm / t_lr,
        }
        if args.accurate:
            t0 = time.perf_counter()
            acc = _accurate_solve(n, end, 2 * rank, kw)
            if sync:
                sync()
            t_acc = time.perf_counter() - t0
            row["accurate_s"] = t_acc
            row["accurate_err"] = _rel(np.asarray(tl.to_numpy(acc.to_tensor())).ravel(), ref)
            row["accurate_rank"] = str(tuple(acc.rank))
            row["accurate_vs_expm_multiply"] = t_expm / t_acc
        if args.pde_error:
            # errors against the PDE: the solution on the nested grid 2n + 1 (spacing h/2)
            # at the coarse points, with Richardson's factor 4/3 for a second-order scheme
            # (grid functions compared: the initial value carries the factor (2h)^{3/2})
            fine = _accurate_solve(2 * n + 1, end, 2 * rank, kw)
            fine = TuckerTensor(fine.core, [f[1::2] for f in fine.factors])
            h = 1.0 / (n + 1)
            u_fine = np.asarray(tl.to_numpy(fine.to_tensor())).ravel() / (h**1.5)
            scale = (2 * h) ** 1.5
            row["pde_err_lowrank"] = 4 / 3 * _rel(y_lr / scale, u_fine)
            row["pde_err_expm_multiply"] = 4 / 3 * _rel(ref / scale, u_fine)
            row["pde_err_ratio"] = row["pde_err_lowrank"] / row["pde_err_expm_multiply"]
        solvers = []
        if n <= args.bdf_max:
            solvers.append(("BDF", {"jac": a}))
        if n <= args.explicit_max:
            solvers.append(("DOP853", {}))
        for name, extra in solvers:
            t0 = time.perf_counter()
            out = scipy.integrate.solve_ivp(
                lambda t, u, a=a: a @ u, (0.0, end), u0, method=name, rtol=err_lr,
                atol=err_lr * 1e-3 * float(np.abs(u0).max()), **extra,
            )  # fmt: skip
            t_s = time.perf_counter() - t0
            row[f"{name}_s"] = t_s
            row[f"{name}_err"] = _rel(out.y[:, -1], ref)
            row[f"vs_{name}"] = t_s / t_lr
        rows.append(row)
        print_table([row], list(row))
    return rows


def _accurate_solve(n, end, max_rank, kw):
    """The heat problem at ``T = end`` by the second-order midpoint BUG, 40 steps,
    ``rank_rtol = 1e-12``: about 1e-10 from the semi-discrete solution (at ``n = 64``)."""
    op, core, modes, _ = heat_problem(n)
    y0 = TuckerTensor(tl.tensor(core, **kw), [tl.tensor(modes, **kw)] * 3)
    sol = solve_ivp(
        op, (0.0, end), y0, method="midpoint-bug", step=end / 40, substep="exp",
        rank_rtol=1e-12, max_rank=max_rank, t_eval=[end],
    )  # fmt: skip
    return sol.y[-1]


def adaptive_problem(n=16):
    x = np.linspace(-1, 1, n)
    op = 0.02 * laplacian((n,) * 3, 2 / (n + 1)) + KroneckerSum(
        (n,) * 3, [(-1.0, [Banded(n, {0: x})] * 3)]
    )
    return op


def _adaptive_comparison(args, n=16, end=2.0):
    op = adaptive_problem(n)
    y0 = random_tucker((n,) * 3, 2, rng=0, device=args.device)
    exact = KrylovExponential(rtol=1e-13)(lambda t, v: op.apply_dense(v), 0.0, y0.to_tensor(), end)
    exact = np.asarray(tl.to_numpy(exact))
    rows = []
    runs = [("fixed", {"step": h, "rank_atol": 1e-10}) for h in (0.02, 0.01, 0.005, 0.0025)]
    runs += [("adaptive", {"rtol": r, "atol": 1e-12}) for r in (1e-2, 1e-3, 1e-4)]
    for kind, kw in runs:
        t0 = time.perf_counter()
        sol = solve_ivp(op, (0.0, end), y0, method="ra-bug", **kw)
        t_run = time.perf_counter() - t0
        err = _rel(np.asarray(tl.to_numpy(sol.y[-1].to_tensor())), exact)
        row = {
            "mode": kind,
            "setting": kw.get("step", kw.get("rtol")),
            "nfev": sol.nfev,
            "nsteps": sol.nsteps,
            "nrejected": sol.nrejected,
            "error": err,
            "time_s": t_run,
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
    result = {
        "benchmark": "integrators",
        "backend": args.backend,
        "device": args.device,
        "rank": rank,
        "threads": args.threads,
        "fit_from": fit_from,
    }
    with _threads(args.threads), tl.backend_context(args.backend, local_threadsafe=True):
        sync = sync_for(args.backend, args.device)
        if "steps" in args.parts:
            rows = _scaling(args, sizes, rank, repeat, sync)
            exponents = {}
            for name in args.methods:
                used = [r for r in rows if r["n"] >= fit_from]
                exponents[name] = fitted_exponent(
                    [r["n"] for r in used], [r[f"{name}_s"] for r in used]
                )
            print("\nper-step time, fitted exponent p in time ~ n^p:")
            print_table([{"method": k, "p": v} for k, v in exponents.items()], ["method", "p"])
            result["scaling"] = rows
            result["exponents"] = exponents
        if "dense" in args.parts:
            print("\nra-bug against expm_multiply, BDF and DOP853 (heat-type equation, T = 0.5):")
            result["dense_comparison"] = _dense_comparison(args, dense_sizes, rank, sync)
        if "adaptive" in args.parts:
            print("\nadaptive against fixed steps (ra-bug, RK4 substeps, T = 2):")
            result["adaptive_comparison"] = _adaptive_comparison(args, n=8 if args.quick else 16)
    result["environment"] = environment()
    return result


__all__ = ["adaptive_problem", "heat_problem", "scaling_operator", "sparse_matrix"]
