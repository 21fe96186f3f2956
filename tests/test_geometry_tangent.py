"""TuckerTangent algebra and embeddings, project/retract/transport API and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorly as tl
from conftest import tol
from hypothesis import given, settings
from hypothesis import strategies as st

import tuckerflow as tf
from tuckerflow.testing import relative_distance, to_numpy
from tuckerflow.testing.strategies import shapes_and_ranks

SEEDS = st.integers(0, 2**31 - 1)


def _point_and_ambient(backend, dtype, shape, rank, seed):
    y = tf.random_tucker(shape, rank, rng=seed, dtype=dtype, device=backend.device)
    rng = np.random.default_rng(seed + 1)
    z = rng.standard_normal(shape)
    if "complex" in dtype:
        z = z + 1j * rng.standard_normal(shape)
    return y, backend.tensor(z / np.linalg.norm(z), dtype)


@settings(max_examples=6)
@given(sr=shapes_and_ranks(max_side=5), seed=SEEDS, a=st.floats(-3, 3), b=st.floats(-3, 3))
def test_vector_space_operations_match_dense(backend, dtype, sr, seed, a, b):
    shape, rank = sr
    y, z = _point_and_ambient(backend, dtype, shape, rank, seed)
    w = tl.tensor(z * 0.5 + y.to_tensor(), **tl.context(z))
    xi, eta = tf.project(y, z), tf.project(y, w)
    x, e = to_numpy(xi), to_numpy(eta)
    # compressed vs dense evaluation of the same sums: a few eps of relative round-off
    scale = abs(a) * np.linalg.norm(x) + abs(b) * np.linalg.norm(e) + 1.0
    assert np.linalg.norm(to_numpy(a * xi + eta * b) - (a * x + b * e)) <= tol(dtype) * scale
    assert np.linalg.norm(to_numpy(xi - eta) - (x - e)) <= tol(dtype) * scale
    assert np.linalg.norm(to_numpy(-xi / 2.0) + x / 2) <= tol(dtype) * scale
    ip = complex(np.asarray(tl.to_numpy(xi.inner(eta))))
    assert abs(ip - np.vdot(x, e)) <= tol(dtype) * scale**2
    assert abs(float(tl.to_numpy(xi.norm())) - np.linalg.norm(x)) <= tol(dtype) * scale
    # the rank-2r Tucker form is the same tensor
    t = xi.to_tucker()
    assert all(s <= 2 * r for s, r in zip(t.rank, rank))
    assert relative_distance(t, xi) <= tol(dtype)
    assert relative_distance(xi.to_tucker(point_scale=1.0), y.to_tensor() + xi.to_tensor()) <= tol(
        dtype
    )


@settings(max_examples=6)
@given(sr=shapes_and_ranks(max_side=5), seed=SEEDS)
def test_components_round_trip(backend, dtype64, sr, seed):
    shape, rank = sr
    y, z = _point_and_ambient(backend, dtype64, shape, rank, seed)
    xi = tf.project(y, z)
    again = tf.TuckerTangent(y, xi.dcore, xi.dfactors)
    assert relative_distance(again, xi) <= tol(dtype64)
    assert relative_distance(again.dcore, xi.dcore) <= tol(dtype64)
    assert tf.TuckerTangent.zeros(y).norm() == 0
    scaled = tf.TuckerTangent.from_scaled(y, xi.dcore, xi.scaled_dfactors)
    assert relative_distance(scaled, xi) <= tol(dtype64)
    with pytest.raises(ValueError, match=r"scaled_dfactors\[\d\] violates the gauge"):
        tf.TuckerTangent.from_scaled(
            y, xi.dcore, [k + u for k, u in zip(xi.scaled_dfactors, y.factors)]
        )
    # conjugate-linear in the first argument, linear in the second
    ip = complex(np.asarray(tl.to_numpy(xi.inner(again))))
    if "complex" in dtype64:
        ip_i = complex(np.asarray(tl.to_numpy((1j * xi).inner(again))))
        assert abs(ip_i + 1j * ip) <= tol(dtype64) * max(1.0, abs(ip))
    # the classical formula dU_i = (I − U_iU_iᴴ) Mat_i(Z ×_{j≠i} U_jᴴ) Mat_i(C)^+
    zn = to_numpy(z)
    un = [to_numpy(f) for f in y.factors]
    for i, du in enumerate(xi.dfactors):
        w = zn
        for j in range(len(shape)):
            if j != i:
                w = _mode_dot(w, un[j].conj().T, j)
        wi = np.moveaxis(w, i, 0).reshape(shape[i], -1)
        ci = np.moveaxis(to_numpy(y.core), i, 0).reshape(rank[i], -1)
        ref = (np.eye(shape[i]) - un[i] @ un[i].conj().T) @ wi @ np.linalg.pinv(ci)
        # random cores (decay=1) are well conditioned: agreement to a few hundred eps
        assert np.linalg.norm(to_numpy(du) - ref) <= 10 * tol(dtype64) * max(
            1.0, np.linalg.norm(ref)
        )


def _mode_dot(x, m, mode):
    return np.moveaxis(np.tensordot(m, np.moveaxis(x, mode, 0), 1), 0, mode)


def test_float32_stays_float32(backend):
    y, z = _point_and_ambient(backend, "float32", (5, 4, 3), (2, 2, 2), 3)
    xi = tf.project(y, z)
    assert "float32" in str(xi.dcore.dtype) and "float32" in str(xi.scaled_dfactors[0].dtype)
    assert "float32" in str(tf.retract(y, xi, 0.3).core.dtype)


def test_tucker_and_contractible_ambient_match_dense(backend, dtype):
    y = tf.random_tucker((6, 5, 4), (2, 3, 2), rng=1, dtype=dtype, device=backend.device)
    z = tf.random_tucker((6, 5, 4), (3, 3, 3), rng=2, dtype=dtype, device=backend.device)

    class Lazy:
        shape = (6, 5, 4)

        def contract(self, matrices):
            return tf.geometry.contract(z, matrices)

    ref = tf.project(y, z.to_tensor())
    for amb in (z, Lazy()):
        assert relative_distance(tf.project(y, amb), ref) <= tol(dtype, 1000)
    g = tf.riemannian_gradient(y, z)
    assert relative_distance(g, ref) <= tol(dtype, 1000)


def test_transport(backend, dtype64):
    y = tf.random_tucker((6, 5, 4), (2, 3, 2), rng=1, dtype=dtype64, device=backend.device)
    xi = tf.FixedRankTucker(y.shape, y.rank).random_tangent(y, rng=0)
    same = tf.transport(y, xi)
    assert relative_distance(same, xi) <= tol(dtype64)
    y1 = tf.retract(y, xi, 0.5)
    moved = tf.transport(y1, xi)
    assert moved.point is not xi.point
    # transport = projection onto the new tangent space: idempotent there, linear in xi
    assert relative_distance(tf.project(y1, moved.to_tucker()), moved) <= tol(dtype64)
    assert relative_distance(tf.transport(y1, 3.0 * xi), 3.0 * moved) <= tol(dtype64)
    assert float(tl.to_numpy(moved.norm())) <= float(tl.to_numpy(xi.norm())) * (1 + tol(dtype64))


def test_bad_input(backend):
    y = tf.random_tucker((5, 4, 3), (2, 2, 2), rng=0, device=backend.device)
    other = tf.random_tucker((5, 4, 3), (2, 2, 2), rng=1, device=backend.device)
    z = backend.tensor(np.ones((5, 4, 3)), "float64")
    xi = tf.project(y, z)
    with pytest.raises(ValueError, match=r"Z.shape=\(5, 4, 2\) differs from Y.shape=\(5, 4, 3\)"):
        tf.project(y, backend.tensor(np.ones((5, 4, 2)), "float64"))
    with pytest.raises(TypeError, match="dtype float32"):
        tf.project(y, backend.tensor(np.ones((5, 4, 3)), "float32"))
    with pytest.raises(ValueError, match="another base point"):
        tf.retract(other, xi)
    with pytest.raises(ValueError, match="different base points"):
        _ = xi + tf.project(other, z)
    with pytest.raises(TypeError, match="cannot add"):
        _ = xi + 1.0
    for t in (math.nan, math.inf):
        with pytest.raises(ValueError, match="t=.* is not finite"):
            tf.retract(y, xi, t)
    with pytest.raises(TypeError, match="t must be a real number"):
        tf.retract(y, xi, "big")
    with pytest.raises(ValueError, match="method='svd' is not one of"):
        tf.retract(y, xi, method="svd")
    with pytest.raises(TypeError, match="xi must be a TuckerTangent"):
        tf.retract(y, z)
    # non-orthonormal factors: an error naming the factor, and the data left as they were
    u0 = y.factors[1] * 2.0
    bad = tf.TuckerTensor(y.core, [y.factors[0], u0, y.factors[2]])
    before = backend.numpy(u0).copy()
    for call in (
        lambda: tf.project(bad, z),
        lambda: tf.retract(bad, xi),
        lambda: tf.transport(bad, xi),
    ):
        with pytest.raises(ValueError, match=r"factors\[1\] does not have orthonormal columns"):
            call()
    np.testing.assert_array_equal(backend.numpy(bad.factors[1]), before)
    # the gauge is checked, not enforced
    du = [tl.tensor(f, **tl.context(f)) for f in y.factors]
    with pytest.raises(ValueError, match=r"dfactors\[0\] violates the gauge"):
        tf.TuckerTangent(y, y.core, du)
    with pytest.raises(ValueError, match=r"dcore.shape=\(2, 2\) differs from point.rank"):
        tf.TuckerTangent(y, backend.tensor(np.ones((2, 2)), "float64"), xi.dfactors)


def test_same_point_by_value_is_accepted(backend):
    y = tf.random_tucker((5, 4, 3), (2, 2, 2), rng=0, device=backend.device)
    copy = tf.TuckerTensor(y.core * 1.0, [f * 1.0 for f in y.factors])
    z = backend.tensor(np.ones((5, 4, 3)), "float64")
    xi, eta = tf.project(y, z), tf.project(copy, z)
    assert relative_distance(xi + eta, 2.0 * xi) <= tol("float64")
    assert relative_distance(tf.retract(copy, xi, 0.2), tf.retract(y, xi, 0.2)) <= tol("float64")


def test_huge_shapes_never_densify(backend):
    # 10^15 entries: any dense step would fail; the factor-wise algorithms take milliseconds
    shape, rank = (100_000, 100_000, 100_000), (2, 2, 2)
    y = tf.random_tucker(shape, rank, rng=0, device=backend.device)
    z = tf.random_tucker(shape, (3, 3, 3), rng=1, device=backend.device)
    xi = tf.project(y, z)
    # ⟨P_Y Z, Z⟩ = ‖P_Y Z‖² (self-adjoint idempotent), from compressed products only
    lhs = float(np.real(np.asarray(tl.to_numpy(tf.inner(xi.to_tucker(), z)))))
    assert abs(lhs - float(tl.to_numpy(xi.norm())) ** 2) <= tol("float64", 1000)
    y1 = tf.retract(y, xi, 0.1)
    assert y1.rank == rank and tuple(y1.shape) == shape
    assert tf.FixedRankTucker(shape, rank).check_point_on_manifold(y1)
