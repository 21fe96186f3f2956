"""The BUG integrators (tuckerflow.integrate.bug): fixed rank against the matrix algorithm,
the rank-adaptive BUG's normal directions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import tensorly as tl

import tuckerflow as tf
import tuckerflow.integrate.base as base
from tuckerflow.integrate import (
    FixedRankBUG,
    KrylovExponential,
    NormalComponentWarning,
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
    # the rank-adaptive error estimate contains the normal component: a step of 0.1 is
    # rejected
    solver = RankAdaptiveBUG(op, 0.0, y0, 0.5, first_step=0.1, substep="exp", augment_normal=False)
    solver.step()
    assert solver.nrejected >= 1 and solver.t < 0.1
    assert solver.last_error <= 1.0 and solver.last_normal_error <= solver.last_error
    # with the normal directions added (the adaptive default) the rank grows and the error
    # follows the tolerance
    sol = tf.solve_ivp(op, (0, 0.5), y0, method="ra-bug", rtol=1e-3, atol=1e-12, substep="exp")
    assert sol.success and max(sol.ranks[-1]) > 1
    assert np.linalg.norm(sol.y[-1].to_tensor() - exact) <= 3e-3 * np.linalg.norm(exact)
    # it is controlled: within each step's tolerance
    assert len(sol.normal_errors) == sol.nsteps and np.max(sol.normal_errors) <= 1.0


@pytest.mark.parametrize("method", ["bug", "psi"])
def test_fixed_rank_adaptive_controls_the_inside_part_and_reports_the_normal_one(
    monkeypatch, method
):
    """For a fixed-rank method the normal component of the defect is the rank's model error:
    the step size follows the part inside the bases (as many steps as with the normal part
    zeroed, not the 100 of the whole estimate at the same final error), and the normal part
    is reported (each step's ratio, one warning), not accepted silently."""
    op, y0, exact = _odd_coupling_problem()
    kw = dict(method=method, rtol=1e-3, atol=1e-12, substep="exp")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sol = tf.solve_ivp(op, (0, 0.5), y0, **kw)
    assert sol.success and sol.ranks[-1] == (1, 1, 1)
    assert [w.category for w in caught] == [NormalComponentWarning]
    message = str(caught[0].message)
    assert f"method {method!r} at rank (1, 1, 1)" in message and "normal_errors" in message
    ratios = sol.normal_errors
    assert len(ratios) == sol.nsteps and np.all(np.isfinite(ratios))
    # the missed coupling is 10 times the tolerance and more per step
    assert np.max(ratios) > 10
    err = np.linalg.norm(sol.y[-1].to_tensor() - exact)

    parts = base.error_parts
    monkeypatch.setattr(base, "error_parts", lambda data: (parts(data)[0], 0.0))
    inside = tf.solve_ivp(op, (0, 0.5), y0, **kw)
    assert sol.nsteps == inside.nsteps and sol.nrejected == inside.nrejected
    assert np.all(inside.normal_errors == 0.0)
    # the whole estimate under control (the rank-adaptive rule): 15 times the steps for the
    # same error, the model error of rank 1 (the coupling is never seen)
    monkeypatch.setattr(base, "error_parts", lambda data: (math.hypot(*parts(data)), 0.0))
    full = tf.solve_ivp(op, (0, 0.5), y0, **kw)
    assert full.nsteps >= 10 * sol.nsteps
    err_full = np.linalg.norm(full.y[-1].to_tensor() - exact)
    assert abs(err - err_full) <= 1e-2 * err_full and err > 1e-2 * np.linalg.norm(exact)


def test_normal_component_is_not_reported_with_fixed_steps_nor_where_there_is_none():
    op, y0, _ = _odd_coupling_problem()
    sol = tf.solve_ivp(op, (0, 0.5), y0, method="bug", step=0.1, substep="exp")
    assert sol.normal_errors is None
    # the ground state of the separable oscillator (rank 1): F = −iEY lies in its bases,
    # the part outside is round-off
    n = 10
    x = np.linspace(-4, 4, n)
    dx = x[1] - x[0]
    osc = schrodinger((n,) * 3, dx, [x**2 / 2] * 3)
    h1 = np.diag(1 / dx**2 + x**2 / 2) - 0.5 / dx**2 * (np.eye(n, k=1) + np.eye(n, k=-1))
    u = np.linalg.eigh(h1)[1][:, :1].astype(complex)
    ground = tf.TuckerTensor(np.ones((1, 1, 1), dtype=complex), [u] * 3)
    rtol = 1e-6
    sol = tf.solve_ivp(osc, (0, 0.5), ground, method="bug", rtol=rtol, atol=1e-12)
    assert sol.success and len(sol.normal_errors) == sol.nsteps
    eps = np.finfo(np.float64).eps
    assert np.max(sol.normal_errors) <= 100 * eps / rtol, np.max(sol.normal_errors)
