"""3-D linear Schrödinger equation: error against step size for every method, rank against time.

Run from the repository root: ``python docs/scripts/integrators_schrodinger.py``. Writes
``docs/figures/integrators_convergence.png`` and ``docs/figures/integrators_ranks.png`` and
prints the numbers quoted in ``docs/guide/integrators.rst``.

Problem: ``i ψ_t = H ψ`` on an ``n³`` grid of ``[-6, 6]³`` (Dirichlet), with
``H = −½Δ + ½|x|² + λ x₁x₂x₃`` (harmonic trap plus a cubic coupling that makes the rank grow),
``λ = 0.2``, from a displaced Gaussian packet (rank 1), up to ``T = 1``. The reference is the
dense Krylov exponential of the whole ``n³`` system.
"""

from __future__ import annotations

import pathlib
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import tuckerflow as tf  # noqa: E402
from tuckerflow.integrate import METHODS, KrylovExponential  # noqa: E402
from tuckerflow.operators import schrodinger  # noqa: E402

N = 32
END = 1.0
STEPS = [0.2, 0.1, 0.05, 0.025]
FIXED_RANK = 16
TOLERANCE = 1e-8  # rank_atol of the rank-adaptive methods
FIGURES = pathlib.Path(__file__).resolve().parents[1] / "figures"


def problem():
    x = np.linspace(-6, 6, N + 2)[1:-1]
    h = x[1] - x[0]
    op = schrodinger((N, N, N), h, [x**2 / 2] * 3, couplings=[(0.2, [x, x, x])])
    packets = []
    for shift in (1.0, -0.5, 0.5):
        g = np.exp(-((x - shift) ** 2) / 2) * np.exp(0.5j * x)
        packets.append((g / np.linalg.norm(g))[:, None])
    y0 = tf.TuckerTensor(np.ones((1, 1, 1), dtype=complex), packets)
    return op, y0


def padded(y0, rank, seed=0):
    """``y0`` plus a rank-``rank`` perturbation of size 1e-10: a start for fixed-rank methods."""
    noise = tf.random_tucker(y0.shape, rank - 1, rng=seed, dtype="complex128")
    return tf.add(y0, noise, beta=1e-10, rtol=None)


def main():
    op, y0 = problem()
    t0 = time.perf_counter()
    ref = KrylovExponential(rtol=1e-13)(lambda t, x: op.apply_dense(x, t), 0.0, y0.to_tensor(), END)
    print(f"dense reference ({N}^3 = {N**3} unknowns): {time.perf_counter() - t0:.1f} s")
    nref = np.linalg.norm(ref)
    errors, ranks = {}, {}
    for name, cls in METHODS.items():
        errors[name] = []
        for h in STEPS:
            if cls.rank_adaptive:
                start, kw = y0, {"rank_atol": TOLERANCE}
            else:
                start, kw = padded(y0, FIXED_RANK), {}
            t0 = time.perf_counter()
            sol = tf.solve_ivp(op, (0, END), start, method=name, step=h, substep="exp", **kw)
            assert sol.success, sol.message
            err = np.linalg.norm(sol.y[-1].to_tensor() - ref) / nref
            errors[name].append(err)
            print(
                f"{name:13s} h={h:<6} error={err:.2e} final rank={sol.ranks[-1]} "
                f"nfev={sol.nfev} rejected={sol.nrejected} ({time.perf_counter() - t0:.1f} s)"
            )
            if cls.rank_adaptive and h == 0.05:
                ranks[name] = (sol.t_steps, [max(r) for r in sol.ranks])
    for name, errs in errors.items():
        slope = np.polyfit(np.log(STEPS), np.log(errs), 1)[0]
        print(f"{name:13s} fitted order {slope:.2f}")

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for name, errs in errors.items():
        ax.loglog(STEPS, errs, "o-", label=name)
    ax.loglog(STEPS, [errors["bug"][0] * (h / STEPS[0]) for h in STEPS], "k:", lw=0.8, label="O(h)")
    ax.loglog(
        STEPS,
        [errors["midpoint-bug"][0] * (h / STEPS[0]) ** 2 for h in STEPS],
        "k--",
        lw=0.8,
        label="O(h²)",
    )
    ax.set_xticks(STEPS, [f"{h:g}" for h in STEPS])
    ax.minorticks_off()
    ax.set_xlabel("step size h")
    ax.set_ylabel("relative error at T = 1")
    ax.set_title(f"3-D Schrödinger, n = {N}", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FIGURES / "integrators_convergence.png", dpi=110)

    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    for name, (ts, rs) in ranks.items():
        ax.step(ts, rs, where="post", label=name)
    ax.set_xlabel("t")
    ax.set_ylabel("largest mode rank")
    ax.set_title(f"rank-adaptive methods, h = 0.05, rank_atol = {TOLERANCE:g}", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FIGURES / "integrators_ranks.png", dpi=110)


if __name__ == "__main__":
    main()
