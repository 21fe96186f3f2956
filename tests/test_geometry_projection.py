"""Facts of the tangent-space projection (algorithms.md §3, tuckerflow.geometry.projection)
on every backend and dtype, through tuckerflow.testing's suite.

Tolerances live in the suite: round-off identities at ``100 · eps(dtype) · max(n_i)`` (every
quantity is a handful of QR/products of matrices with at most max(n_i) rows, each adding
O(eps · n) relative error); rates are fitted slopes with fixed margins (see ManifoldSuite).
"""

from __future__ import annotations

from conftest import manifold_suite
from hypothesis import given, settings
from hypothesis import strategies as st

import tuckerflow as tf
from tuckerflow.testing.strategies import seeds, shapes_and_ranks


@settings(max_examples=6)
@given(sr=shapes_and_ranks(max_side=5), seed=seeds, ambient=st.sampled_from(["dense", "tucker"]))
def test_projection_identities(backend, dtype, sr, seed, ambient):
    suite = manifold_suite(backend, dtype, sr, seed, ambient)
    suite.check_projection_idempotent()
    suite.check_projection_self_adjoint()
    suite.check_projection_fixes_point()
    suite.check_projection_contracts()
    suite.check_gauge()
    suite.check_inner_is_frobenius()


@settings(max_examples=3)
@given(sr=shapes_and_ranks(min_dims=2, max_dims=3, max_side=3), seed=seeds)
def test_projection_rank_is_manifold_dimension(backend, dtype, sr, seed):
    out = manifold_suite(backend, dtype, sr, seed).check_projection_rank()
    assert out["rank"] == tf.FixedRankTucker(*sr).dim


@settings(max_examples=5)
@given(sr=shapes_and_ranks(max_side=5), seed=seeds)
def test_gauge_invariance(backend, dtype, sr, seed):
    manifold_suite(backend, dtype, sr, seed, "tucker").check_gauge_invariance()


@st.composite
def _curved_cases(draw):
    # one mode with 2 ≤ r_0 < n_0 so that the curvature example exists
    shape, rank = draw(shapes_and_ranks(min_dims=3, max_dims=3, min_side=3, max_side=5))
    r0 = draw(st.integers(2, shape[0] - 1))
    rank = (r0, max(rank[1], 2), max(rank[2], 2))
    rank = (r0, min(rank[1], shape[1]), min(rank[2], shape[2]))
    from tuckerflow.testing.strategies import make_valid_rank

    return shape, make_valid_rank(rank)


@settings(max_examples=4)
@given(sr=_curved_cases(), seed=seeds)
def test_curvature_bound_scales_like_one_over_rho(backend, dtype, sr, seed):
    out = manifold_suite(backend, dtype, sr, seed).check_curvature_scaling()
    assert -1.25 <= out["slope"] <= -0.75


@settings(max_examples=4)
@given(sr=shapes_and_ranks(max_side=5), seed=seeds)
def test_riemannian_gradient_taylor(backend, dtype, sr, seed):
    out = manifold_suite(backend, dtype, sr, seed).check_gradient_taylor()
    assert 2.4 >= out["slope"] >= 1.7
