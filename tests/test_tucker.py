"""Compressed Tucker algebra equals its dense counterpart, on every backend and dtype."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
from conftest import tol
from hypothesis import given
from strategies import seeds, shape_and_rank

import tuckerflow as tf


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
