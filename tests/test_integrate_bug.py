"""The BUG integrators (tuckerflow.integrate.bug): fixed rank against the matrix algorithm,
the rank-adaptive BUG's normal directions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorly as tl

import tuckerflow as tf
from tuckerflow.integrate import (
    FixedRankBUG,
    KrylovExponential,
    RankAdaptiveBUG,
    explicit_euler,
    rk4,
)
from tuckerflow.operators import schrodinger

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _matrix_bug(F, y0, t0, h, substep):
    """The matrix BUG integrator of Ceruti & Lubich (NumPy): K-, L- and S-steps."""
    u0, s0, v0h = np.linalg.svd(y0, full_matrices=False)
    r = int(np.sum(s0 > 1e-12 * s0[0]))
    u0, s0, v0 = u0[:, :r], np.diag(s0[:r]), v0h[:r].conj().T
    k1 = substep(lambda t, k: F(t, k @ v0.conj().T) @ v0, t0, u0 @ s0, h)
    l1 = substep(lambda t, w: F(t, u0 @ w.conj().T).conj().T @ u0, t0, v0 @ s0.conj().T, h)
    u1, v1 = np.linalg.qr(k1)[0], np.linalg.qr(l1)[0]
    m, n = u1.conj().T @ u0, v1.conj().T @ v0
    s1 = substep(
        lambda t, s: u1.conj().T @ F(t, u1 @ s @ v1.conj().T) @ v1, t0, m @ s0 @ n.conj().T, h
    )
    return u1 @ s1 @ v1.conj().T


@pytest.mark.parametrize("substep", [explicit_euler, rk4])
def test_d2_agrees_with_matrix_bug(backend, dtype64, substep):
    gen = np.random.default_rng(2)
    a = gen.standard_normal((9, 9)) / 3
    b = gen.standard_normal((7, 7)) / 3
    if "complex" in dtype64:
        a = a + 1j * gen.standard_normal((9, 9)) / 3

    def F_np(t, y):
        return a @ y + y @ b.T + math.sin(t) * y * y

    def F_tl(t, Y):
        x = Y.to_tensor()
        return tl.dot(A, x) + tl.dot(x, tl.transpose(B)) + math.sin(t) * x * x

    A, B = backend.tensor(a, dtype64), backend.tensor(b, dtype64)
    y0 = tf.random_tucker((9, 7), 3, rng=1, dtype=dtype64, device=backend.device)
    y_np = backend.numpy(y0.to_tensor())
    t = 0.0
    solver = FixedRankBUG(F_tl, 0.0, y0, 0.3, step=0.1, substep=substep)
    while solver.status == "running":
        solver.step()
        y_np = _matrix_bug(F_np, y_np, t, 0.1, substep)
        t += 0.1
        # two orderings of the same floating-point operations
        np.testing.assert_allclose(backend.numpy(solver.y.to_tensor()), y_np, atol=1e-12)


def _odd_coupling_problem(n=10):
    """``i ψ' = (−½Δ + ½|x|² + ½ x₁x₂x₃) ψ`` from the (even, rank-1) Gaussian: the odd
    coupling maps ``u⊗u⊗u`` to ``xu⊗xu⊗xu``, orthogonal to ``u`` in every mode."""
    x = np.linspace(-4, 4, n)
    op = schrodinger((n,) * 3, x[1] - x[0], [x**2 / 2] * 3, couplings=[(0.5, [x, x, x])])
    g = np.exp(-(x**2) / 2)
    g = (g / np.linalg.norm(g)).astype(complex)[:, None]
    y0 = tf.TuckerTensor(np.ones((1, 1, 1), dtype=complex), [g] * 3)
    exact = KrylovExponential(rtol=1e-13)(lambda t, v: op.apply_dense(v), 0.0, y0.to_tensor(), 0.5)
    return op, y0, exact


def test_first_order_bug_is_blind_to_a_fully_orthogonal_component():
    op, y0, exact = _odd_coupling_problem()
    errs = []
    for h in (0.1, 0.05):
        sol = tf.solve_ivp(op, (0, 0.5), y0, method="ra-bug", step=h, substep="exp")
        assert sol.ranks[-1] == (1, 1, 1)
        errs.append(np.linalg.norm(sol.y[-1].to_tensor() - exact))
    # the error is the missed coupling itself: it does not shrink with h
    assert errs[1] >= 0.9 * errs[0] and errs[0] > 1e-2
    # the adaptive error estimate contains the normal component: a step of 0.1 is rejected
    solver = RankAdaptiveBUG(op, 0.0, y0, 0.5, first_step=0.1, substep="exp", augment_normal=False)
    solver.step()
    assert solver.nrejected >= 1 and solver.t < 0.1
    # with the normal directions added (the adaptive default) the rank grows and the error
    # follows the tolerance
    sol = tf.solve_ivp(op, (0, 0.5), y0, method="ra-bug", rtol=1e-3, atol=1e-12, substep="exp")
    assert sol.success and max(sol.ranks[-1]) > 1
    assert np.linalg.norm(sol.y[-1].to_tensor() - exact) <= 3e-3 * np.linalg.norm(exact)
