"""Facts of algorithms.md section 2: recovery, error chains, tolerance guarantees, validity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorly as tl
from conftest import eps, tol
from hypothesis import given
from hypothesis import strategies as st

import tuckerflow as tf
from tuckerflow.testing.strategies import make_valid, seeds, shape_and_rank

METHODS = ("auto", "svd", "qr", "gram")


def _noisy(backend, dtype, shape, rank, seed, noise):
    y = tf.random_tucker(shape, make_valid(rank), rng=seed, dtype=dtype, decay=0.5)
    x = backend.numpy(y.to_tensor())
    rng = np.random.default_rng(seed + 7)
    e = rng.standard_normal(shape)
    if "complex" in dtype:
        e = e + 1j * rng.standard_normal(shape)
    x = x + noise * e / np.linalg.norm(e)
    return backend.tensor(x, dtype), x


def _orth_err(backend, u):
    g = backend.numpy(tl.dot(tl.conj(tl.transpose(u)), u))
    return np.abs(g - np.eye(g.shape[0])).max()


@pytest.mark.parametrize("algo", [tf.hosvd, tf.st_hosvd])
@given(sr=shape_and_rank(), seed=seeds)
def test_exact_recovery_of_low_rank_input(backend, dtype, algo, sr, seed):
    shape, rank = sr
    y = tf.random_tucker(
        shape, rank, rng=seed % 10_000, dtype=dtype, decay=0.5, device=backend.device
    )
    x = y.to_tensor()
    out = algo(x, rank=rank)
    err = np.linalg.norm(backend.numpy(out.to_tensor()) - backend.numpy(x))
    # kappa of the core unfoldings is at most 2**(r-1) (decay 0.5): error ~ eps * kappa
    kappa = 2.0 ** (max(rank) - 1)
    assert err <= tol(dtype, 50) * kappa
    assert out.rank == rank
    # a tolerance between the data's round-off (~eps) and its smallest genuine singular value
    # (~ 1 / (kappa * sqrt(r)) relative) finds the rank by itself
    sigma_min = 1.0 / (kappa * math.sqrt(max(rank)))
    out2 = algo(x, rtol=math.sqrt(100 * eps(dtype) * sigma_min))
    assert out2.rank == rank


@given(sr=shape_and_rank(min_dims=3), seed=seeds, frac=st.floats(0.2, 1.0))
def test_hosvd_error_chain(backend, dtype64, sr, seed, frac):
    shape, _ = sr
    x_b, x = _noisy(backend, dtype64, shape, tuple(shape), seed % 10_000, noise=0.3)
    rank = make_valid(tuple(max(1, int(frac * n)) for n in shape))
    y, info = tf.hosvd(x_b, rank=rank, return_info=True)
    err2 = np.linalg.norm(backend.numpy(y.to_tensor()) - x) ** 2
    tails2 = np.asarray(info.tails) ** 2
    slack = tol(dtype64, 1000) * np.linalg.norm(x) ** 2
    assert tails2.max() <= err2 + slack
    assert err2 <= tails2.sum() + slack
    # any approximation of rank r is at least as far as the best one
    z = tf.st_hosvd(x_b, rank=rank)
    other2 = np.linalg.norm(backend.numpy(z.to_tensor()) - x) ** 2
    assert tails2.sum() <= len(shape) * other2 + slack
    # the per-mode tails are those of the unfoldings of X
    for i in range(len(shape)):
        s = np.linalg.svd(np.moveaxis(x, i, 0).reshape(shape[i], -1), compute_uv=False)
        assert abs(math.sqrt(np.sum(s[rank[i] :] ** 2)) - info.tails[i]) <= 1e-8


@pytest.mark.parametrize("method", METHODS)
@given(sr=shape_and_rank(min_dims=3), seed=seeds, frac=st.floats(0.2, 1.0))
def test_st_hosvd_error_identity(backend, dtype, method, sr, seed, frac):
    shape, _ = sr
    x_b, x = _noisy(backend, dtype, shape, tuple(shape), seed % 10_000, noise=0.3)
    rank = make_valid(tuple(max(1, int(frac * n)) for n in shape))
    y, info = tf.st_hosvd(x_b, rank=rank, method=method, return_info=True)
    err = np.linalg.norm(backend.numpy(y.to_tensor()) - x)
    # the identity holds to round-off; the Gram path loses sqrt(eps64)-level accuracy
    slack = (1e-7 if method == "gram" else tol(dtype, 300)) * np.linalg.norm(x)
    assert abs(err**2 - info.error_bound**2) <= 2 * slack * np.linalg.norm(x)
    assert y.rank == rank


@pytest.mark.parametrize("algo", [tf.hosvd, tf.st_hosvd])
@pytest.mark.parametrize("kind", ["rtol", "atol"])
@given(sr=shape_and_rank(min_dims=2), seed=seeds, level=st.floats(1e-6, 0.9))
def test_tolerance_is_honoured(backend, dtype, algo, kind, sr, seed, level):
    shape, rank = sr
    x_b, x = _noisy(backend, dtype, shape, rank, seed % 10_000, noise=1e-2)
    nx = np.linalg.norm(x)
    level = max(level, 1e3 * eps(dtype))
    kw = {"rtol": level} if kind == "rtol" else {"atol": level * nx}
    y, info = algo(x_b, **kw, return_info=True)
    err = np.linalg.norm(backend.numpy(y.to_tensor()) - x)
    assert err <= level * nx * (1 + 1e-6) + tol(dtype, 100) * nx
    assert info.error_bound <= level * nx * (1 + 1e-9)
    tf.validate_rank(shape, y.rank)
    for u in y.factors:
        assert _orth_err(backend, u) <= tol(dtype, 100)


@given(sr=shape_and_rank(min_dims=2), seed=seeds, cap=st.integers(1, 4))
def test_ranks_are_valid_and_capped(backend, sr, seed, cap):
    shape, _ = sr
    x_b, _ = _noisy(backend, "float64", shape, tuple(shape), seed % 10_000, noise=1.0)
    for algo in (tf.hosvd, tf.st_hosvd):
        y = algo(x_b, rtol=1e-3, max_rank=cap)
        tf.validate_rank(shape, y.rank)
        assert max(y.rank) <= cap
        y = algo(x_b)  # no truncation requested: exact, valid ranks
        tf.validate_rank(shape, y.rank)


@given(sr=shape_and_rank(min_dims=3), seed=seeds)
def test_truncate_compressed_matches_dense(backend, dtype64, sr, seed):
    shape, rank = sr
    a = tf.random_tucker(shape, rank, rng=seed % 10_000, dtype=dtype64, device=backend.device)
    b = tf.random_tucker(
        shape, rank, rng=seed % 10_000 + 3, dtype=dtype64, device=backend.device, decay=0.3
    )
    s = tf.add(a, b, beta=0.1, rtol=None)  # rank up to 2r, orthonormal factors
    for method in ("st_hosvd", "hosvd"):
        y, info = tf.truncate(s, rtol=0.05, method=method, return_info=True)
        err = np.linalg.norm(backend.numpy(y.to_tensor()) - backend.numpy(s.to_tensor()))
        ns = float(backend.numpy(tf.norm(s)))
        assert err <= 0.05 * ns + tol(dtype64, 100)
        tf.validate_rank(shape, y.rank)
    # without arguments truncate is exact
    y = tf.truncate(s)
    assert np.linalg.norm(backend.numpy(y.to_tensor()) - backend.numpy(s.to_tensor())) <= tol(
        dtype64, 100
    )


def test_deterministic_signs(backend):
    x_b, _ = _noisy(backend, "float64", (9, 8, 7), (3, 3, 3), 0, noise=0.1)
    a = tf.st_hosvd(x_b, rank=3)
    b = tf.st_hosvd(x_b * 1.0, rank=3)
    for u, v in zip(a.factors, b.factors):
        np.testing.assert_array_equal(backend.numpy(u), backend.numpy(v))
        # largest-modulus entry of every column is positive
        un = backend.numpy(u)
        idx = np.abs(un).argmax(axis=0)
        assert np.all(un[idx, np.arange(un.shape[1])] > 0)
    # qr and svd paths agree after the sign convention
    c = tf.hosvd(x_b, rank=3, method="svd")
    d = tf.hosvd(x_b, rank=3, method="qr")
    for u, v in zip(c.factors, d.factors):
        np.testing.assert_allclose(backend.numpy(u), backend.numpy(v), atol=1e-10)


def test_randomized_path_is_near_optimal(backend):
    x_b, x = _noisy(backend, "float64", (60, 50, 40), (5, 5, 5), 1, noise=1e-3)
    exact = tf.st_hosvd(x_b, rank=5, method="svd")
    rand = tf.st_hosvd(x_b, rank=5, method="randomized", rng=0)
    e0 = np.linalg.norm(backend.numpy(exact.to_tensor()) - x)
    e1 = np.linalg.norm(backend.numpy(rand.to_tensor()) - x)
    assert e1 <= e0 * 1.01


@pytest.mark.parametrize("algo", [tf.hosvd, tf.st_hosvd])
def test_backends_agree_with_numpy(backend, algo):
    _, x = _noisy(backend, "float64", (9, 8, 7), (3, 3, 2), 5, noise=0.05)
    with tl.backend_context("numpy", local_threadsafe=True):
        ref = algo(x, rtol=0.02)
    out = algo(backend.tensor(x), rtol=0.02)
    assert out.rank == ref.rank
    np.testing.assert_allclose(backend.numpy(out.core), ref.core, atol=1e-12)
    for u, v in zip(out.factors, ref.factors):
        np.testing.assert_allclose(backend.numpy(u), v, atol=1e-12)


class TestBadInput:
    @pytest.fixture
    def x(self, backend):
        return backend.tensor(np.random.default_rng(0).standard_normal((5, 4, 3)))

    def test_rank_above_dimension(self, x):
        with pytest.raises(ValueError, match=r"rank\[2\]=4 exceeds shape\[2\]=3"):
            tf.hosvd(x, rank=(2, 2, 4))

    def test_rank_violating_product_rule(self, x):
        with pytest.raises(ValueError, match=r"rank\[0\]=5 exceeds the product of the other"):
            tf.st_hosvd(x, rank=(5, 2, 2))

    @pytest.mark.parametrize("bad", [-1e-3, float("nan"), float("inf")])
    def test_bad_tolerance(self, x, bad):
        with pytest.raises(ValueError, match="rtol must be a finite number >= 0"):
            tf.st_hosvd(x, rtol=bad)
        with pytest.raises(ValueError, match="atol must be a finite number >= 0"):
            tf.hosvd(x, atol=bad)

    def test_rank_and_tolerance_conflict(self, x):
        with pytest.raises(ValueError, match="either rank .* or a tolerance"):
            tf.st_hosvd(x, rank=2, atol=1e-3)

    def test_rank_caps(self, x):
        with pytest.raises(ValueError, match=r"max_rank\[0\]=0 must be at least 1"):
            tf.st_hosvd(x, rtol=0.1, max_rank=0)
        with pytest.raises(ValueError, match=r"min_rank\[0\]=3 exceeds max_rank\[0\]=2"):
            tf.st_hosvd(x, rtol=0.1, min_rank=3, max_rank=2)
        with pytest.raises(ValueError, match="max_rank has 2 entries but the tensor has 3"):
            tf.hosvd(x, rtol=0.1, max_rank=(2, 2))

    def test_non_finite(self, backend, x):
        bad = backend.numpy(x).copy()
        bad[1, 1, 1] = np.nan
        with pytest.raises(ValueError, match="X contains non-finite"):
            tf.hosvd(backend.tensor(bad))
        bad[1, 1, 1] = np.inf
        with pytest.raises(ValueError, match="X contains non-finite"):
            tf.st_hosvd(backend.tensor(bad), rank=2)

    def test_unknown_method(self, x):
        with pytest.raises(ValueError, match="method='fast' is not one of"):
            tf.st_hosvd(x, rank=2, method="fast")


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"rtol": "0.1"}, TypeError, "rtol must be a real number"),
        ({"atol": [0.1]}, TypeError, "atol must be a real number"),
        ({"rank": (2.0, 2, 2)}, TypeError, r"rank\[0\] must be an integer"),
        ({"rank": (float("nan"), 2, 2)}, TypeError, r"rank\[0\] must be an integer"),
        ({"rtol": 0.1, "max_rank": float("inf")}, TypeError, "max_rank must be an int"),
        ({"rank": 2, "order": [0.4, 1.4, 2.9]}, TypeError, r"order\[0\] must be an integer"),
        ({"rank": 2, "order": [0, 1]}, ValueError, "order has 2 entries"),
    ],
)
def test_no_silent_coercion(backend, kwargs, exc, match):
    x = backend.tensor(np.random.default_rng(0).standard_normal((5, 4, 3)))
    with pytest.raises(exc, match=match):
        tf.st_hosvd(x, **kwargs)


def test_flip_signs_uses_backend_reductions_with_first_row_ties(backend):
    # the gather runs through backend reductions (no NumPy call on device arrays); ties of
    # the largest modulus go to the first row, as argmax would
    from tuckerflow.linalg import flip_signs

    u = np.array([[0.6, -0.8, 0.5], [-0.8, 0.6, -0.5], [0.0, 0.0, 0.7071]])
    out, _ = flip_signs(backend.tensor(u))
    got = backend.numpy(out)
    np.testing.assert_allclose(got[:, 0], -u[:, 0])  # -0.8 in row 1 made positive
    np.testing.assert_allclose(got[:, 1], -u[:, 1])  # -0.8 in row 0
    np.testing.assert_allclose(got[:, 2], u[:, 2])  # 0.7071 in row 2 is already positive
    tie = np.array([[-0.5], [0.5]])  # equal moduli: the first row decides
    np.testing.assert_allclose(backend.numpy(flip_signs(backend.tensor(tie))[0]), -tie)
