"""The reduced operators of a KroneckerSum (the integrators' fast path) equal the general path.

``reduced_galerkin`` and ``reduced_k_step`` must give, to round-off, what the integrators
compute from ``L(t, Y)`` by contraction; an integrator step through the fast path must equal
the same step through the general path (the operator hidden behind a plain function).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorly as tl
from conftest import tol
from hypothesis import given
from hypothesis import strategies as st

import tuckerflow as tf
from tuckerflow.ambient import contract_unchecked, unfolded_contract
from tuckerflow.integrate import METHODS
from tuckerflow.integrate.steps import ct
from tuckerflow.operators import Banded, KroneckerSum, laplacian
from tuckerflow.testing.strategies import seeds, shape_and_rank


def _operator(shape, gen, time_dependent, cplx):
    """Laplacian + a product term (dense matrices) + a product of diagonals, optionally
    with a time-dependent and a complex coefficient."""
    dense = [gen.standard_normal((n, n)) for n in shape]
    diag = [Banded(n, {0: gen.standard_normal(n)}) for n in shape]
    c = (lambda t: 0.3 + math.sin(t)) if time_dependent else 0.3
    op = laplacian(shape, 0.5) + KroneckerSum(shape, [(c, dense), (-0.7, diag)])
    if cplx:
        op = op + KroneckerSum(shape, [(0.2j, [None] * len(shape))])
    return op


def _state(backend, dtype, shape, rank, seed):
    return tf.random_tucker(shape, rank, rng=seed, dtype=dtype, device=backend.device)


def _case(backend, dtype, sr, seed, time_dependent):
    """Shape, generator, operator and Tucker state of one drawn example."""
    shape, rank = sr
    gen = np.random.default_rng(seed % 1000)
    op = _operator(shape, gen, time_dependent, "complex" in dtype)
    return shape, gen, op, _state(backend, dtype, shape, rank, seed % 1000)


@given(
    sr=shape_and_rank(min_dims=2, max_dims=4, max_side=6),
    seed=seeds,
    time_dependent=st.booleans(),
)
def test_reduced_galerkin_equals_the_contraction(backend, dtype, sr, seed, time_dependent):
    shape, gen, op, y = _case(backend, dtype, sr, seed, time_dependent)
    mats = [ct(u) for u in y.factors]
    g = op.reduced_galerkin(y.factors)
    for t in (0.0, 0.4):
        core = y.core * (1.0 + t)
        ref = contract_unchecked(op(t, tf.TuckerTensor(core, y.factors)), mats)
        scale = max(1.0, float(np.abs(backend.numpy(ref)).max()))
        got = g(t, core)
        assert tuple(tl.shape(got)) == tuple(tl.shape(ref))
        np.testing.assert_allclose(
            backend.numpy(got), backend.numpy(ref), atol=tol(dtype, 1e3) * scale
        )


@given(
    sr=shape_and_rank(min_dims=2, max_dims=4, max_side=6),
    seed=seeds,
    time_dependent=st.booleans(),
)
def test_reduced_k_step_equals_the_unfolded_contraction(backend, dtype, sr, seed, time_dependent):
    shape, gen, op, y = _case(backend, dtype, sr, seed, time_dependent)
    mode = int(gen.integers(len(shape)))
    right = backend.tensor(
        gen.standard_normal((math.prod(r for j, r in enumerate(y.rank) if j != mode), 2)),
        dtype,
    )
    mats = [None if j == mode else ct(u) for j, u in enumerate(y.factors)]
    g = op.reduced_k_step(y.core, y.factors, mode, right)
    # factors[mode] is not used (and the reduced matrices of the others are reused)
    unused = [None if j == mode else u for j, u in enumerate(y.factors)]
    g_unused = op.reduced_k_step(y.core, unused, mode, right)
    k = backend.tensor(gen.standard_normal((shape[mode], y.rank[mode])), dtype)
    factors = list(y.factors)
    factors[mode] = k
    for t in (0.0, 0.4):
        ref = unfolded_contract(op(t, tf.TuckerTensor(y.core, factors)), mats, mode, right)
        scale = max(1.0, float(np.abs(backend.numpy(ref)).max()))
        for fn in (g, g_unused):
            got = fn(t, k)
            assert tuple(tl.shape(got)) == tuple(tl.shape(ref))
            np.testing.assert_allclose(
                backend.numpy(got), backend.numpy(ref), atol=tol(dtype, 1e4) * scale
            )


def test_reduced_galerkin_keeps_a_factor_that_is_not_orthonormal(backend):
    # U^H U is not the identity: the identity block must be applied as U^H U, as the
    # general path does
    shape = (5, 4, 3)
    op = laplacian(shape, 0.5)
    y = _state(backend, "float64", shape, 2, 3)
    factors = [2.0 * u for u in y.factors]
    mats = [ct(u) for u in factors]
    ref = contract_unchecked(op(0.0, tf.TuckerTensor(y.core, factors)), mats)
    got = op.reduced_galerkin(factors)(0.0, y.core)
    np.testing.assert_allclose(backend.numpy(got), backend.numpy(ref), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["psi", "bug", "ra-bug", "parallel-bug", "midpoint-bug"])
def test_fast_and_general_paths_take_the_same_step(backend, dtype, method):
    shape = (12, 10, 8)
    gen = np.random.default_rng(5)
    op = _operator(shape, gen, True, "complex" in dtype)
    y0 = _state(backend, dtype, shape, 3, 5)
    kw = {"step": 0.01, "substep": "rk4"}
    if METHODS[method].rank_adaptive:
        kw["max_rank"] = 5
    if method == "parallel-bug":
        # a retry starts from a core with zero blocks, whose QR (the K-steps' V_i) is fixed
        # by round-off: both paths would be right and still differ far above it
        kw["max_retries"] = 0
    fast = METHODS[method](op, 0.0, y0, 1.0, **kw)
    plain = METHODS[method](lambda t, Y: op(t, Y), 0.0, y0, 1.0, **kw)
    for _ in range(3):
        assert fast.step() is None and plain.step() is None
    assert fast.nfev == plain.nfev
    assert fast.rank == plain.rank
    a, b = backend.numpy(fast.y.to_tensor()), backend.numpy(plain.y.to_tensor())
    np.testing.assert_allclose(a, b, atol=tol(dtype, 1e3) * max(1.0, float(np.abs(b).max())))
