"""Substep solvers (tuckerflow.integrate.substep): orders, the Krylov exponential, a user
substep plugged into an integrator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorly as tl

import tuckerflow as tf
from tuckerflow.integrate import KrylovExponential, explicit_euler, rk4
from tuckerflow.operators import laplacian

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_substep_orders_and_exponential(backend, dtype64):
    gen = np.random.default_rng(0)
    m = gen.standard_normal((12, 12)) / 4
    if "complex" in dtype64:
        m = m + 1j * gen.standard_normal((12, 12)) / 4
    M = backend.tensor(m, dtype64)
    y0 = gen.standard_normal((12, 3))
    Y0 = backend.tensor(y0, dtype64)
    from scipy.linalg import expm

    def f(t, y):
        return tl.dot(M, y)

    exact = expm(0.5 * m) @ y0
    out = KrylovExponential(krylov_dim=8)(f, 0.0, Y0, 0.5)  # forces restarts
    np.testing.assert_allclose(backend.numpy(out), exact, atol=1e-12)
    errs = {}
    for name, solver in (("euler", explicit_euler), ("rk4", rk4)):
        errs[name] = []
        for n in (8, 16):
            y = Y0
            for k in range(n):
                y = solver(f, k * 0.5 / n, y, 0.5 / n)
            errs[name].append(np.linalg.norm(backend.numpy(y) - exact))
    assert 2.2 >= errs["euler"][0] / errs["euler"][1] >= 1.8  # order 1: error halves
    assert 14 <= errs["rk4"][0] / errs["rk4"][1] <= 18  # order 4: error / 16


def test_user_substep_plugs_in(backend):
    calls = []

    def midpoint(f, t0, y0, h):
        calls.append(h)
        return y0 + h * f(t0 + h / 2, y0 + (h / 2) * f(t0, y0))

    op = 0.1 * laplacian((6, 6, 6), 0.2)
    y0 = tf.random_tucker((6, 6, 6), 2, rng=0, device=backend.device)
    sol = tf.solve_ivp(op, (0, 0.2), y0, method="bug", step=0.1, substep=midpoint)
    assert sol.success and len(calls) == 2 * 4  # 3 K-steps + 1 Galerkin per step
    assert sol.nfev == 2 * len(calls)


# ------------------------------------------------------------------------------------------
# bad input found by the fuzz (tuckerflow.testing.fuzz)


def test_krylov_dim_must_be_a_positive_integer():
    for bad in (math.inf, 2.7, True, "30", None):
        with pytest.raises(TypeError, match="krylov_dim must be an integer >= 1"):
            KrylovExponential(krylov_dim=bad)
    with pytest.raises(ValueError, match="krylov_dim=0 must be at least 1"):
        KrylovExponential(krylov_dim=0)
    for bad in (0.0, 1.0, -1e-3, math.nan):
        with pytest.raises(ValueError, match=r"rtol=.* must lie in \(0, 1\)"):
            KrylovExponential(rtol=bad)
    assert KrylovExponential(krylov_dim=np.int64(5)).krylov_dim == 5


def test_rk4_equals_the_plain_formula_bit_for_bit_and_leaves_its_inputs(backend, dtype):
    # rk4 accumulates its stages in place, in arrays it created: the values must be those of
    # y0 + h/6 (k1 + 2 k2 + 2 k3 + k4) evaluated left to right, and neither y0 nor the
    # arrays returned by f (which f may keep) may change
    gen = np.random.default_rng(3)
    m = gen.standard_normal((9, 9)) / 3
    y = gen.standard_normal((9, 4))
    if "complex" in dtype:
        m, y = m + 1j * gen.standard_normal((9, 9)) / 3, y + 1j * gen.standard_normal((9, 4))
    M, Y0 = backend.tensor(m, dtype), backend.tensor(y, dtype)
    kept = []

    def f(t, x):
        out = tl.dot(M, x) * (1.0 + t)
        kept.append((out, backend.numpy(out).copy()))
        return out

    def plain(f, t0, y0, h):
        k1 = f(t0, y0)
        k2 = f(t0 + h / 2, y0 + (h / 2) * k1)
        k3 = f(t0 + h / 2, y0 + (h / 2) * k2)
        k4 = f(t0 + h, y0 + h * k3)
        return y0 + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)

    before = backend.numpy(Y0).copy()
    got = backend.numpy(rk4(f, 0.3, Y0, 0.1))
    np.testing.assert_array_equal(backend.numpy(Y0), before)
    for out, value in kept:
        np.testing.assert_array_equal(backend.numpy(out), value)
    np.testing.assert_array_equal(got, backend.numpy(plain(f, 0.3, Y0, 0.1)))


def _exactly_exponentiable(k, scale, complex_, gen):
    """``(a, exp(a))`` with ``exp(a)`` known in closed form: ``a = Q (D + s N) Qᴴ`` for a
    unitary ``Q``, a diagonal (complex) or 2×2-rotation-block (real) ``D`` and the nilpotent
    shift ``N`` (a non-normal Jordan-type part, whose series ends after ``k`` terms)."""
    q, _ = np.linalg.qr(
        gen.standard_normal((k, k)) + (1j * gen.standard_normal((k, k)) if complex_ else 0)
    )
    if complex_:
        lam = scale * (gen.standard_normal(k) + 1j * gen.standard_normal(k))
        core, exp_core = np.diag(lam), np.diag(np.exp(lam))
    else:
        core, exp_core = np.zeros((k, k)), np.zeros((k, k))
        for b in range(0, k, 2):
            alpha = scale * gen.standard_normal()
            if b + 1 < k:
                beta = scale * gen.standard_normal()
                core[b : b + 2, b : b + 2] = [[alpha, beta], [-beta, alpha]]
                c, s = np.cos(beta), np.sin(beta)
                exp_core[b : b + 2, b : b + 2] = np.exp(alpha) * np.array([[c, s], [-s, c]])
            else:
                core[b, b], exp_core[b, b] = alpha, np.exp(alpha)
    if not complex_:
        return q @ core @ q.T, q @ exp_core @ q.T
    # the Jordan-type part for the complex case: a = Q (λ I + N) Qᴴ, exp = e^λ Σ N^j / j!
    lam = complex(scale * gen.standard_normal(), scale * gen.standard_normal())
    shift = np.diag(np.full(k - 1, min(scale, 1.0) + 0j), 1)
    series = sum(np.linalg.matrix_power(shift, j) / math.factorial(j) for j in range(k))
    a = q @ (lam * np.eye(k) + shift) @ q.conj().T
    return a, np.exp(lam) * (q @ series @ q.conj().T)


@pytest.mark.parametrize("k", [1, 3, 12, 30])
@pytest.mark.parametrize("scale", [0.0, 1e-3, 0.4, 3.0, 40.0])
@pytest.mark.parametrize("complex_", [False, True])
def test_expm_small_matches_a_closed_form(k, scale, complex_):
    from tuckerflow.integrate.substep import expm_small

    a, exact = _exactly_exponentiable(k, scale, complex_, np.random.default_rng(k))
    # scaling and squaring: the relative round-off grows with ‖a‖₁ (each of the ~log2 ‖a‖₁
    # squarings doubles the error of the previous one); the reference is exact to a few eps
    eps64 = np.finfo(np.float64).eps
    tol = 50 * eps64 * max(1.0, float(np.abs(a).sum(axis=0).max()))
    err = np.linalg.norm(expm_small(a) - exact) / np.linalg.norm(exact)
    assert err <= tol


def test_krylov_reads_two_values_per_basis_vector(backend):
    from tuckerflow._host import counting

    gen = np.random.default_rng(1)
    m = backend.tensor(gen.standard_normal((20, 20)) / 8, "float64")
    y0 = backend.tensor(gen.standard_normal((20, 3)), "float64")
    calls = []

    def f(t, y):
        calls.append(t)
        return tl.dot(m, y)

    with counting() as n:
        KrylovExponential()(f, 0.0, y0, 0.5)
    # one norm of the start vector, then the Hessenberg column and h_{j+1,j} per vector
    assert 2 <= len(calls) < 30 and n() == 1 + 2 * len(calls)
