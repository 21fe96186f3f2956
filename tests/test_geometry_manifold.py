"""FixedRankTucker: geoopt-style verbs and paired checks with their reasons."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
from conftest import tol
from hypothesis import given, settings
from hypothesis import strategies as st

import tuckerflow as tf
from tuckerflow.testing import assert_in_tangent_space, assert_on_manifold, relative_distance
from tuckerflow.testing.strategies import shapes_and_ranks


@settings(max_examples=6)
@given(sr=shapes_and_ranks(max_side=5), seed=st.integers(0, 2**31 - 1))
def test_verbs_stay_on_manifold(backend, dtype, sr, seed):
    shape, rank = sr
    m = tf.FixedRankTucker(shape, rank)
    assert m.dim == np.prod(rank) + sum(r * (n - r) for n, r in zip(shape, rank))
    x = m.random_point(rng=seed, dtype=dtype, device=backend.device)
    assert m.check_point_on_manifold(x, explain=True) == (True, "")
    u = m.random_tangent(x, rng=seed + 1)
    assert m.check_vector_on_tangent(x, u)
    assert_in_tangent_space(u)
    # random tangents are unit vectors (unless the tangent space is {0}: r = n, d = 1 … never)
    assert abs(float(tl.to_numpy(m.norm(x, u))) - 1.0) <= tol(dtype)
    y = m.retr(x, u, 0.3)
    assert_on_manifold(y, rank)
    v = m.transp(x, y, u)
    assert m.check_vector_on_tangent(y, v)
    g = m.egrad2rgrad(x, x.to_tensor())
    assert relative_distance(g, x) <= tol(dtype)  # P_x x = x
    ip = complex(np.asarray(tl.to_numpy(m.inner(x, u, g))))
    ref = complex(np.asarray(tl.to_numpy(tf.inner(u.to_tucker(), x))))
    assert abs(ip - ref) <= tol(dtype, 1000)
    p = m.projx(y.to_tensor())
    assert_on_manifold(p, rank)
    assert relative_distance(p, y) <= tol(dtype, 1000)
    assert relative_distance(m.projx(y), y) <= tol(dtype, 1000)
    assert float(tl.to_numpy(m.zero_tangent(x).norm())) == 0.0


def test_check_reasons(backend):
    m = tf.FixedRankTucker((5, 4, 3), (2, 2, 2))
    x = m.random_point(rng=0, device=backend.device)
    ok, why = m.check_point_on_manifold(tf.random_tucker((5, 4, 4), 2, rng=0), explain=True)
    assert not ok and "x.shape=(5, 4, 4) differs" in why
    ok, why = m.check_point_on_manifold(tf.random_tucker((5, 4, 3), 1, rng=0), explain=True)
    assert not ok and "x.rank=(1, 1, 1) differs" in why
    skew = tf.TuckerTensor(x.core, [x.factors[0] * 1.5, x.factors[1], x.factors[2]])
    ok, why = m.check_point_on_manifold(skew, explain=True)
    assert not ok and "x.factors[0] is not orthonormal" in why
    flat = np.zeros((2, 2, 2))
    flat[0, 0, 0] = flat[1, 1, 0] = 1.0  # mode-2 unfolding has rank 1
    deficient = tf.TuckerTensor(backend.tensor(flat, "float64"), list(x.factors))
    ok, why = m.check_point_on_manifold(deficient, explain=True)
    assert not ok and "mode-2 unfolding of x.core is rank-deficient" in why
    assert m.check_point_on_manifold("nope") is False
    with pytest.raises(ValueError, match="is not orthonormal"):
        m.assert_check_point_on_manifold(skew)
    m.assert_check_point_on_manifold(x)
    other = m.random_point(rng=5, device=backend.device)
    u = m.random_tangent(x, rng=1)
    ok, why = m.check_vector_on_tangent(other, u, explain=True)
    assert not ok and "another base point" in why
    ok, why = m.check_vector_on_tangent(x, x, explain=True)
    assert not ok and "not a TuckerTangent" in why
    with pytest.raises(ValueError, match="another base point"):
        m.assert_check_vector_on_tangent(other, u)
    with pytest.raises(ValueError, match="v is not attached to x"):
        m.transp(other, x, u)
    with pytest.raises(ValueError, match="x.shape=\\(5, 4, 4\\) differs"):
        m.proju(tf.random_tucker((5, 4, 4), 2, rng=0), x.to_tensor())


def test_invalid_manifolds():
    with pytest.raises(ValueError, match=r"rank\[2\]=4 exceeds shape\[2\]=3"):
        tf.FixedRankTucker((5, 4, 3), (2, 2, 4))
    with pytest.raises(ValueError, match="exceeds the product of the other ranks"):
        tf.FixedRankTucker((5, 4, 3), (3, 1, 1))


def test_check_point_on_manifold_explains_a_nan_core(backend):
    m = tf.FixedRankTucker((5, 4, 3), (2, 2, 2))
    y = m.random_point(rng=0, device=backend.device)
    bad = backend.numpy(y.core).copy()
    bad.flat[3] = np.nan
    ok, reason = m.check_point_on_manifold(
        tf.TuckerTensor(backend.tensor(bad), y.factors), explain=True
    )
    assert not ok and "x.core contains non-finite values" in reason
    u = backend.numpy(y.factors[1]).copy()
    u[0, 0] = np.inf
    ok, reason = m.check_point_on_manifold(
        tf.TuckerTensor(y.core, [y.factors[0], backend.tensor(u), y.factors[2]]), explain=True
    )
    assert not ok and "x.factors[1] contains non-finite" in reason


def test_project_refuses_points_off_the_manifold(backend):
    y = tf.random_tucker((5, 4, 3), (2, 2, 2), rng=0, device=backend.device)
    z = backend.tensor(np.random.default_rng(1).standard_normal((5, 4, 3)))
    # a core of impossible multilinear rank: (3, 1) for a 3 × 3 tensor
    u3 = backend.tensor(np.eye(3))
    with pytest.raises(ValueError, match=r"Y.rank\[0\]=3 exceeds the product of the other"):
        tf.project(tf.TuckerTensor(backend.tensor(np.ones((3, 1))), [u3, u3[:, :1]]), u3)
    # a rank-deficient core: its mode-0 unfolding has rank 1 < 2
    c = backend.numpy(y.core).copy()
    c[1] = 0.5 * c[0]
    deficient = tf.TuckerTensor(backend.tensor(c), y.factors)
    with pytest.raises(ValueError, match="mode-0 unfolding of Y.core is rank-deficient"):
        tf.project(deficient, z)
    with pytest.raises(ValueError, match="rank-deficient"):
        tf.TuckerTangent.zeros(deficient)
    # non-finite base points and ambient tensors
    bad = backend.numpy(y.core).copy()
    bad.flat[0] = np.nan
    with pytest.raises(ValueError, match="Y.core contains non-finite"):
        tf.project(tf.TuckerTensor(backend.tensor(bad), y.factors), z)
    zn = backend.numpy(z).copy()
    zn[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="Z contains non-finite"):
        tf.project(y, backend.tensor(zn))
    with pytest.raises(ValueError, match="egrad contains non-finite"):
        tf.riemannian_gradient(y, backend.tensor(zn))
