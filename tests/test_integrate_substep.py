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
