"""Riemannian gradient descent for low-rank tensor completion (figure of the geometry guide).

Run from the repository root::

    python docs/scripts/geometry_completion.py [--out docs/figures/geometry_completion.png]

A tensor ``A`` of shape ``n × n × n`` and multilinear rank ``r`` is observed on a random set
``Ω`` of entries. We minimise ``f(Y) = ½‖P_Ω(Y − A)‖²`` over ``M_r`` by Riemannian gradient
descent: ``ξ = P_Y P_Ω(Y − A)``, exact line search along ``−ξ`` for the quadratic model
(step ``‖ξ‖² / ‖P_Ω ξ‖²``), then ``Y ← R(Y, −α ξ)``. The residual ``P_Ω(Y − A)`` is sparse; it
enters the projection only through contractions with the factors (a ``Contractible``), so no
iteration touches ``n³`` numbers (only the initial guess, an ST-HOSVD of the zero-filled
observations, is dense).
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

import tuckerflow as tf


class SampledTensor:
    """A sparse tensor of values at given indices, known only through contractions."""

    def __init__(self, shape, indices, values):
        self.shape = tuple(shape)
        self.indices = indices  # tuple of d integer arrays
        self.values = values

    def contract(self, matrices):
        # Z ×_j M_j: every sample contributes v · ⊗_j M_j[:, i_j] (or a unit vector in a mode
        # left alone); accumulate over samples with one mode kept as a scatter index
        d = len(self.shape)
        free = [j for j, m in enumerate(matrices) if m is None]
        cols = [m[:, idx].T for m, idx in zip(matrices, self.indices) if m is not None]
        letters = "abcdefgh"[: len(cols)]
        spec = ",".join(f"e{c}" for c in letters) + ",e->e" + letters
        prod = np.einsum(spec, *cols, self.values)
        out_shape = tuple(
            self.shape[j] if matrices[j] is None else matrices[j].shape[0] for j in range(d)
        )
        if not free:
            return prod.sum(axis=0).reshape(out_shape)
        (k,) = free  # the projection leaves at most one mode alone
        acc = np.zeros((self.shape[k],) + prod.shape[1:], dtype=prod.dtype)
        np.add.at(acc, self.indices[k], prod)
        return np.moveaxis(acc, 0, k).reshape(out_shape)


def sample(y, indices):
    """Entries of a Tucker tensor at the given indices, without forming it."""
    core, factors = y.core, y.factors
    rows = [u[idx] for u, idx in zip(factors, indices)]
    return np.einsum("abc,ea,eb,ec->e", core, *rows)


def run(n=100, rank=5, fraction=0.05, iterations=60, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, n, n)
    truth = tf.random_tucker(shape, rank, rng=seed, decay=0.5)
    m = int(fraction * n**3)
    omega = tuple(rng.integers(0, n, m) for _ in range(3))
    test = tuple(rng.integers(0, n, 20_000) for _ in range(3))
    a_omega, a_test = sample(truth, omega), sample(truth, test)
    manifold = tf.FixedRankTucker(shape, rank)
    # start: ST-HOSVD of the zero-filled, rescaled observations (the only dense step)
    filled = np.zeros(shape)
    np.add.at(filled, omega, a_omega / fraction)
    y = manifold.projx(filled)
    del filled
    history = []
    for it in range(iterations + 1):
        res = sample(y, omega) - a_omega
        err_train = np.linalg.norm(res) / np.linalg.norm(a_omega)
        err_test = np.linalg.norm(sample(y, test) - a_test) / np.linalg.norm(a_test)
        history.append((it, err_train, err_test))
        if it == iterations or err_train < 1e-13:
            break
        grad = tf.riemannian_gradient(y, SampledTensor(shape, omega, res))
        g_omega = sample(grad.to_tucker(), omega)
        step = float(grad.norm()) ** 2 / float(np.vdot(g_omega, g_omega).real)
        y = tf.retract(y, grad, -step)
    return np.array(history), manifold.dim, m


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/figures/geometry_completion.png")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history, dim, m = run()
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=110)
    ax.semilogy(history[:, 0], history[:, 1], label="observed entries")
    ax.semilogy(history[:, 0], history[:, 2], "--", label="held-out entries")
    ax.set_xlabel("iteration")
    ax.set_ylabel("relative error")
    ax.set_title(f"Tensor completion, 100³, rank 5: {m} samples, dim M_r = {dim}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    for it, tr, te in history[:: max(1, len(history) // 8)]:
        print(f"{int(it):3d}  train {tr:.3e}  test {te:.3e}")
    print(f"final: train {history[-1, 1]:.3e} test {history[-1, 2]:.3e}; wrote {out}")


if __name__ == "__main__":
    main()
