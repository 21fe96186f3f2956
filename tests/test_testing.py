"""tuckerflow.testing: strategies build valid domains, assertions and the suite can fail."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorly as tl
from hypothesis import given, settings
from hypothesis import strategies as st

import tuckerflow as tf
from tuckerflow.testing import (
    ManifoldSuite,
    assert_close,
    assert_in_tangent_space,
    assert_on_manifold,
    assert_orthonormal,
    fitted_slope,
)
from tuckerflow.testing.strategies import (
    make_valid_rank,
    shapes_and_ranks,
    tangent_vectors,
    tucker_tensors,
)


@given(sr=shapes_and_ranks(max_dims=5, max_side=9), proper=st.booleans())
def test_shapes_and_ranks_are_valid(sr, proper):
    shape, rank = sr
    assert tf.validate_rank(shape, rank) == rank


@given(sr=shapes_and_ranks(proper=True))
def test_proper_ranks_leave_a_normal_direction(sr):
    shape, rank = sr
    assert all(r < n for r, n in zip(rank, shape))


def test_make_valid_rank():
    assert make_valid_rank((5, 1, 1)) == (1, 1, 1)
    assert make_valid_rank((4, 2, 2)) == (4, 2, 2)
    assert make_valid_rank((9, 2, 3)) == (6, 2, 3)


@settings(max_examples=5)
@given(data=st.data())
def test_drawn_points_and_tangents(backend, data):
    y = data.draw(tucker_tensors(device=backend.device))
    assert_on_manifold(y)
    y, xi = data.draw(tangent_vectors(device=backend.device, dtype="complex128"))
    assert_in_tangent_space(xi)
    assert abs(float(tl.to_numpy(xi.norm())) - 1.0) <= 1e-12
    assert "complex128" in str(xi.dcore.dtype)


def test_assertions_fail_when_they_should(backend):
    y = tf.random_tucker((5, 4, 3), (2, 2, 2), rng=0, device=backend.device)
    with pytest.raises(AssertionError, match="not orthonormal"):
        assert_orthonormal(y.factors[0] * 1.01)
    assert_orthonormal(y.factors[0])
    with pytest.raises(AssertionError, match="relative distance"):
        assert_close(y, y * 1.001, rtol=1e-6)
    assert_close(y, y.to_tensor(), rtol=1e-14)
    with pytest.raises(AssertionError, match="rank-deficient|differs"):
        assert_on_manifold(y, (2, 2, 1))


def test_fitted_slope():
    t = np.geomspace(1e-3, 1e-1, 5)
    assert math.isclose(fitted_slope(t, 3 * t**2), 2.0, rel_tol=1e-12)


def test_suite_catches_a_wrong_gradient(backend):
    suite = ManifoldSuite(tf.FixedRankTucker((5, 4, 3), (2, 2, 2)), rng=0, device=backend.device)
    f, egrad = suite.default_function()
    # a gradient off by a factor 2: the Taylor remainder is then O(t), not O(t²)
    with pytest.raises(AssertionError, match="Taylor remainder slope"):
        suite.check_gradient_taylor(f, lambda x: 2 * egrad(x))
    out = suite.check_gradient_taylor(f, egrad)
    assert 2.4 >= out["slope"] >= 1.7


def test_suite_runs_everything(backend):
    suite = ManifoldSuite(
        tf.FixedRankTucker((4, 3, 3), (2, 2, 2)), rng=1, device=backend.device, ambient="tucker"
    )
    out = suite.run_all()
    assert out["check_projection_rank"]["rank"] == tf.FixedRankTucker((4, 3, 3), (2, 2, 2)).dim
    assert -1.25 <= out["check_curvature_scaling"]["slope"] <= -0.75
    assert out["check_retraction_orders"]["tangential_slope"] >= 2.6


def test_suite_bad_arguments():
    with pytest.raises(TypeError, match="manifold must be a FixedRankTucker"):
        ManifoldSuite((4, 3, 3))
    with pytest.raises(ValueError, match="ambient='sparse'"):
        ManifoldSuite(tf.FixedRankTucker((4, 3), (2, 2)), ambient="sparse")
    suite = ManifoldSuite(tf.FixedRankTucker((30, 30), (2, 2)))
    with pytest.raises(ValueError, match="max_size=512"):
        suite.check_projection_rank()
    with pytest.raises(ValueError, match="needs a mode with 2 ≤ r_i < n_i"):
        ManifoldSuite(tf.FixedRankTucker((3, 3), (1, 1))).check_curvature_scaling()


class _FirstOrderRetraction(tf.FixedRankTucker):
    """A user's manifold whose retraction is only first order: ``R(Y, tξ) = P_r(Y + tξ)``
    computed from a perturbed direction (``ξ`` plus a tangent error of size ``t``)."""

    def retr(self, x, u, t=1.0, *, method="hosvd"):
        return super().retr(x, u * (1.0 + t), t, method=method)


class _WrongProjection(tf.FixedRankTucker):
    """A user's manifold whose projection forgets the factor components."""

    def proju(self, x, u):
        xi = super().proju(x, u)
        return tf.TuckerTangent.from_scaled(xi.point, xi.dcore, [0 * k for k in xi.scaled_dfactors])


def test_suite_tests_the_users_own_manifold(backend):
    # the suite goes through the object's verbs: a broken subclass must fail it
    shape, rank = (5, 4, 3), (2, 2, 2)
    good = ManifoldSuite(tf.FixedRankTucker(shape, rank), rng=0, device=backend.device)
    good.check_retraction_orders()
    broken = ManifoldSuite(_FirstOrderRetraction(shape, rank), rng=0, device=backend.device)
    with pytest.raises(AssertionError, match="retraction defect slope"):
        broken.check_retraction_orders()
    with pytest.raises(AssertionError):
        broken.run_all()
    # a projection onto too small a space is still idempotent and self-adjoint: its rank
    # (measured through proju) gives it away
    wrong = ManifoldSuite(_WrongProjection((4, 3, 3), rank), rng=0, device=backend.device)
    wrong.check_projection_idempotent()
    with pytest.raises(AssertionError, match="rank"):
        wrong.check_projection_rank()
