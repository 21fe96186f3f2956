"""Compressed Tucker algebra equals its dense counterpart, on every backend and dtype."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
from conftest import tol
from hypothesis import given

import tuckerflow as tf
from tuckerflow.testing.strategies import seeds, shape_and_rank


def _pair(backend, dtype, shape, rank, seed, decay=0.5):
    y = tf.random_tucker(shape, rank, rng=seed, dtype=dtype, device=backend.device, decay=decay)
    z = tf.random_tucker(shape, rank, rng=seed + 1, dtype=dtype, device=backend.device)
    return y, z


@given(sr=shape_and_rank(), seed=seeds)
def test_inner_norm_sum_match_dense(backend, dtype, sr, seed):
    shape, rank = sr
    y, z = _pair(backend, dtype, shape, rank, seed % 10_000)
    yd, zd = backend.numpy(y.to_tensor()), backend.numpy(z.to_tensor())
    t = tol(dtype, 200)
    assert abs(complex(backend.numpy(tf.inner(y, z))) - np.vdot(yd, zd)) <= t
    assert abs(float(backend.numpy(tf.norm(y))) - np.linalg.norm(yd)) <= t
    s = y + 2.5 * z
    assert np.linalg.norm(backend.numpy(s.to_tensor()) - (yd + 2.5 * zd)) <= t * 4
    d = y - z
    assert np.linalg.norm(backend.numpy(d.to_tensor()) - (yd - zd)) <= t * 4
    # dense second argument of inner
    assert abs(complex(backend.numpy(tf.inner(y, z.to_tensor()))) - np.vdot(yd, zd)) <= t


@given(sr=shape_and_rank(), seed=seeds)
def test_sum_is_proper_tucker(backend, dtype64, sr, seed):
    shape, rank = sr
    y, _ = _pair(backend, dtype64, shape, rank, seed % 10_000)
    s = y + y
    assert s.rank == y.rank  # Y + Y has the rank of Y, not twice it
    for u in s.factors:
        g = backend.numpy(tl.dot(tl.conj(tl.transpose(u)), u))
        np.testing.assert_allclose(g, np.eye(g.shape[0]), atol=tol(dtype64))
    tf.validate_rank(s.shape, s.rank)


def test_norm_keeps_relative_accuracy_of_differences(backend):
    y = tf.random_tucker((30, 20, 10), (4, 3, 2), rng=0, device=backend.device)
    eps_shift = 1e-9
    z = tf.TuckerTensor(y.core * (1 + eps_shift), y.factors)
    exact = eps_shift * float(backend.numpy(tf.norm(y)))
    # the difference of two nearly equal tensors given as an un-orthonormalised sum
    s = tf.add(y, z, beta=-1.0, rtol=None)
    # QR-based norm: absolute error ~ eps ||Y||, i.e. relative 1e-16 / 1e-9 here
    assert abs(float(backend.numpy(tf.norm(s))) - exact) <= 1e-5 * exact


@given(sr=shape_and_rank(), seed=seeds)
def test_mode_product_and_orthonormalize(backend, dtype, sr, seed):
    shape, rank = sr
    y, _ = _pair(backend, dtype, shape, rank, seed % 10_000)
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((3, shape[0]))
    ym = tf.mode_dot(y, backend.tensor(m, dtype), 0)
    dense = np.tensordot(m, backend.numpy(y.to_tensor()), axes=(1, 0))
    t = tol(dtype, 200) * max(1.0, np.linalg.norm(m))
    assert np.linalg.norm(backend.numpy(ym.to_tensor()) - dense) <= t
    yo = tf.orthonormalize(ym)
    assert np.linalg.norm(backend.numpy(yo.to_tensor()) - dense) <= t
    for u in yo.factors:
        g = backend.numpy(tl.dot(tl.conj(tl.transpose(u)), u))
        np.testing.assert_allclose(g, np.eye(g.shape[0]), atol=tol(dtype, 100))


def test_dtype_and_device_preserved(backend, dtype):
    y = tf.random_tucker((6, 5, 4), (2, 2, 2), rng=0, dtype=dtype, device=backend.device)
    for out in (y + y, 2 * y, tf.truncate(y, rank=(1, 1, 1)), tf.orthonormalize(y)):
        assert str(out.core.dtype).endswith(dtype)
        assert all(str(u.dtype).endswith(dtype) for u in out.factors)
        if backend.device is not None:
            assert str(out.core.device).startswith(backend.device)


def test_tensorly_interop(backend):
    y = tf.random_tucker((6, 5, 4), (3, 2, 2), rng=0, device=backend.device)
    core, factors = y
    tly = tl.tucker_tensor.TuckerTensor((core, factors))
    for arg in (tly, (core, factors), y):
        assert abs(float(backend.numpy(tf.norm(arg))) - 1.0) <= tol("float64")
    np.testing.assert_allclose(
        backend.numpy(tl.tucker_to_tensor(y)), backend.numpy(y.to_tensor()), atol=1e-15
    )
    assert isinstance(tf.as_tucker((core, factors)), tl.tucker_tensor.TuckerTensor)


class TestBadInput:
    def test_factor_shape_mismatch(self, backend):
        y = tf.random_tucker((6, 5, 4), (3, 2, 2), rng=0, device=backend.device)
        with pytest.raises(ValueError, match=r"factors\[1\] has 2 columns but core.shape\[1\]=3"):
            tf.TuckerTensor(tl.zeros((3, 3, 2), **tl.context(y.core)), y.factors)

    def test_wrong_number_of_factors(self, backend):
        y = tf.random_tucker((6, 5, 4), (3, 2, 2), rng=0, device=backend.device)
        with pytest.raises(ValueError, match="3 modes but 2 factors"):
            tf.TuckerTensor(y.core, y.factors[:2])

    def test_mixed_dtype(self, backend):
        y = tf.random_tucker((6, 5, 4), (3, 2, 2), rng=0, device=backend.device)
        f32 = backend.tensor(backend.numpy(y.factors[0]), "float32")
        with pytest.raises(TypeError, match=r"factors\[0\] has dtype float32"):
            tf.TuckerTensor(y.core, [f32, *y.factors[1:]])

    def test_shape_mismatch_in_inner(self, backend):
        y = tf.random_tucker((6, 5, 4), 2, rng=0, device=backend.device)
        z = tf.random_tucker((6, 5, 3), 2, rng=0, device=backend.device)
        with pytest.raises(ValueError, match=r"Y.shape=\(6, 5, 4\) differs from Z.shape"):
            tf.inner(y, z)

    def test_not_a_tucker_tensor(self):
        with pytest.raises(TypeError, match="must be a Tucker tensor"):
            tf.norm(np.ones((2, 2)))


def test_mixed_backends_raise():
    pytest.importorskip("torch")
    y = tf.random_tucker((6, 5, 4), 2, rng=0)
    x = y.to_tensor()
    with tl.backend_context("pytorch", local_threadsafe=True):
        with pytest.raises(TypeError, match="active TensorLy backend is 'pytorch'"):
            tf.norm(y)
        with pytest.raises(TypeError, match="numpy.ndarray"):
            tf.hosvd(x)


# --------------------------------------------------------------------------------------------
# TensorLy's methods on our class; one meaning of mode_dot


def test_inherited_methods_return_our_class(backend):
    y = tf.random_tucker((5, 4, 3), 2, rng=0, device=backend.device)
    c = y.tucker_copy()
    assert type(c) is tf.TuckerTensor and c.core is not y.core
    np.testing.assert_array_equal(backend.numpy(c.to_tensor()), backend.numpy(y.to_tensor()))
    m = backend.tensor(np.ones((2, 5)))
    z = y.mode_dot(m, 0)
    assert type(z) is tf.TuckerTensor and z.shape == (2, 4, 3)
    assert y.shape == (5, 4, 3) and tl.shape(y.factors[0]) == (5, 2)  # y untouched
    n = c.normalize()
    assert n is c and type(n) is tf.TuckerTensor
    np.testing.assert_allclose(
        backend.numpy(n.to_tensor()), backend.numpy(y.to_tensor()), atol=1e-12
    )
    with pytest.warns(DeprecationWarning, match="copy"):
        y.mode_dot(m, 0, copy=True)


def test_tensorly_in_place_mode_dot_leaves_no_stale_shape(backend):
    from tensorly.tucker_tensor import tucker_mode_dot

    y = tf.random_tucker((5, 4, 3), 2, rng=0, device=backend.device)
    before = backend.numpy(y.to_tensor())
    m = np.random.default_rng(1).standard_normal((7, 5))
    tucker_mode_dot(y, backend.tensor(m), 0, copy=False)  # replaces y.factors[0] in place
    assert y.shape == (7, 4, 3)
    expected = np.linalg.norm(np.tensordot(m, before, axes=(1, 0)))
    assert float(backend.numpy(tf.norm(y))) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="columns"):
        y[1] = [y.factors[0][:, :1], y.factors[1], y.factors[2]]


def test_mode_dot_has_one_meaning(backend):
    y = tf.random_tucker((5, 4, 3), 2, rng=0, device=backend.device)
    x = y.to_tensor()
    m = backend.tensor(np.random.default_rng(2).standard_normal((6, 4)))
    dense = tf.mode_dot(x, m, 1)
    tucker = tf.mode_dot(y, m, 1)
    np.testing.assert_allclose(backend.numpy(tucker.to_tensor()), backend.numpy(dense), atol=1e-12)
    v = backend.tensor(np.arange(4.0))
    contracted = tf.mode_dot(y, v, 1)
    assert contracted.shape == (5, 3)
    np.testing.assert_allclose(
        backend.numpy(contracted.to_tensor()),
        backend.numpy(tl.tenalg.mode_dot(x, v, 1)),
        atol=1e-12,
    )
    assert tf.mode_dot(y, v, 1, keep_dim=True).shape == (5, 1, 3)


def test_multi_mode_dot_needs_one_mode_per_matrix(backend):
    y = tf.random_tucker((5, 4, 3), 2, rng=0, device=backend.device)
    mats = [backend.tensor(np.ones((2, 5))), backend.tensor(np.ones((2, 4)))]
    with pytest.raises(ValueError, match="2 matrices but 1 modes"):
        tf.multi_mode_dot(y, mats, modes=[0])
    with pytest.raises(ValueError, match="repeats a mode"):
        tf.multi_mode_dot(y, [mats[0], mats[0]], modes=[0, 0])
    with pytest.raises(TypeError, match="mode must be an integer"):
        tf.mode_dot(y, mats[0], 0.0)
    assert tf.multi_mode_dot(y, mats).shape == (2, 2, 3)


def test_scalar_arithmetic_idioms(backend):
    y = tf.random_tucker((5, 4, 3), 2, rng=0, device=backend.device)
    for z in (np.float64(2) * y, y * np.float32(2), 2 * y, y * 2.0):
        assert isinstance(z, tf.TuckerTensor)
        assert float(backend.numpy(tf.norm(z))) == pytest.approx(2.0, rel=1e-12)
    with pytest.raises(ValueError, match="division of a Tucker tensor by zero"):
        y / 0
    with pytest.raises(ZeroDivisionError):  # also the Python idiom
        y / 0.0
    with pytest.raises(TypeError):
        y * "2"
    with pytest.raises(TypeError):
        y + 1.0
    c = 1j * y  # a complex scalar makes the tensor complex, factors included
    assert "complex" in str(c.core.dtype) and "complex" in str(c.factors[0].dtype)


def test_add_refuses_non_finite_input(backend):
    y = tf.random_tucker((5, 4, 3), 2, rng=0, device=backend.device)
    bad = backend.numpy(y.core).copy()
    bad.flat[0] = np.nan
    with pytest.raises(ValueError, match=r"Y.core contains non-finite"):
        tf.add(tf.TuckerTensor(backend.tensor(bad), y.factors), y)
    with pytest.raises(ValueError, match="rtol must be a number, None or 'roundoff'"):
        tf.add(y, y, rtol="fast")
    # plain arithmetic propagates NaN
    assert np.isnan(backend.numpy(tf.scale(y, float("nan")).core)).all()


# --------------------------------------------------------------------------------------------
# random tensors: no silent coercion, valid dtypes accepted


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"shape": (2.7, 3), "rank": 1}, TypeError),
        ({"shape": (4, 3), "rank": (1.5, 1)}, TypeError),
        ({"shape": (4, 3), "rank": (float("nan"), 1)}, TypeError),
        ({"shape": (4, 3), "rank": (float("inf"), 1)}, TypeError),
        ({"shape": (4, 0), "rank": 1}, ValueError),
        ({"shape": "43", "rank": 1}, TypeError),
        ({"shape": (4, 3), "rank": 2, "dtype": "int64"}, ValueError),
        ({"shape": (4, 3), "rank": 2, "rng": 1.5}, TypeError),
        ({"shape": (4, 3), "rank": 2, "norm": float("nan")}, ValueError),
        ({"shape": (4, 3), "rank": 2, "sweeps": 0}, ValueError),
    ],
)
def test_random_tucker_bad_input(kwargs, exc):
    with pytest.raises(exc):
        tf.random_tucker(**kwargs)


def test_random_constructors_accept_dtype_objects(backend):
    for dt in (np.float32, np.dtype("complex64"), "float32"):
        y = tf.random_tucker((4, 3, 2), 2, rng=0, dtype=dt, device=backend.device)
        assert str(y.core.dtype).endswith(np.dtype(dt).name)
    u = tf.random_orthonormal(5, 2, rng=0, dtype=np.float32, device=backend.device)
    assert tl.shape(u) == (5, 2) and str(u.dtype).endswith("float32")


@pytest.mark.parametrize(
    "args, kwargs, exc",
    [
        ((2, 4), {}, ValueError),  # used to return a 2 × 2 matrix
        ((4, 2), {"dtype": "int64"}, ValueError),  # used to return zeros
        ((4.0, 2), {}, TypeError),
        ((4, 0), {}, ValueError),
    ],
)
def test_random_orthonormal_bad_input(args, kwargs, exc):
    with pytest.raises(exc):
        tf.random_orthonormal(*args, **kwargs)
