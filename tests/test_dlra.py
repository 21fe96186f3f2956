"""Facts of the shared DLRA building blocks (algorithms.md §4 and §5) on every backend."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorly as tl
from conftest import tol
from hypothesis import given
from hypothesis import strategies as st

import tuckerflow as tf
from tuckerflow.dlra import (
    AUGMENT_RTOL_FACTOR,
    augment_basis,
    augmented_core,
    core_qr,
    truncate_core,
)
from tuckerflow.testing.strategies import seeds, shape_and_rank


def _gauss(shape, dtype, seed):
    gen = np.random.default_rng(seed)
    z = gen.standard_normal(shape)
    if "complex" in dtype:
        z = z + 1j * gen.standard_normal(shape)
    return z


def _orth_err(u):
    return np.abs(u.conj().T @ u - np.eye(u.shape[1])).max()


@given(sr=shape_and_rank(min_dims=2, max_dims=4, max_side=5), seed=seeds)
def test_core_qr_factors_the_unfolding(backend, dtype, sr, seed):
    _, rank = sr
    c = _gauss(rank, dtype, seed % 1000)
    for i in range(len(rank)):
        q, s = core_qr(backend.tensor(c, dtype), i)
        qn, sn = backend.numpy(q), backend.numpy(s)
        other = math.prod(rank) // rank[i]
        assert qn.shape == (other, min(rank[i], other))
        assert sn.shape == (rank[i], min(rank[i], other))
        unf = np.moveaxis(c, i, 0).reshape(rank[i], -1)
        # one QR: backward error a few eps times the size
        assert np.abs(sn @ qn.conj().T - unf).max() <= tol(dtype, 100) * np.abs(unf).max()
        assert _orth_err(qn) <= tol(dtype, 100)


@given(n=st.integers(2, 9), r=st.integers(1, 4), k=st.integers(1, 5), seed=seeds)
def test_augment_basis_spans_and_keeps_old(backend, dtype, n, r, k, seed):
    r = min(r, n)
    u0 = np.linalg.qr(_gauss((n, r), dtype, seed % 1000))[0]
    kk = _gauss((n, k), dtype, seed % 1000 + 1)
    u = augment_basis(backend.tensor(u0, dtype), backend.tensor(kk, dtype))
    un = backend.numpy(u)
    np.testing.assert_array_equal(un[:, :r], backend.numpy(backend.tensor(u0, dtype)))
    assert un.shape[1] == min(n, r + k)  # generic K adds min(k, n - r) directions
    assert _orth_err(un) <= tol(dtype, 100)
    # K lies in the span: residual after projection at round-off level
    res = kk - un @ (un.conj().T @ kk)
    assert np.linalg.norm(res) <= tol(dtype, 100) * np.linalg.norm(kk)


def test_augment_basis_drops_null_directions(backend, dtype):
    n, r = 8, 3
    u0 = np.linalg.qr(_gauss((n, r), dtype, 0))[0]
    new = _gauss((n, 1), dtype, 1)
    # K = old directions + one new direction repeated: only one direction is genuinely new
    kk = u0 @ _gauss((r, 4), dtype, 2) + new @ np.ones((1, 4))
    u = augment_basis(backend.tensor(u0, dtype), backend.tensor(kk, dtype))
    assert tl.shape(u)[1] == r + 1
    # K inside span(U0): nothing is added, and the zero matrix adds nothing
    u = augment_basis(backend.tensor(u0, dtype), backend.tensor(u0 @ np.ones((r, 2)), dtype))
    assert tl.shape(u)[1] == r
    u = augment_basis(backend.tensor(u0, dtype), backend.tensor(np.zeros((n, 2)), dtype))
    assert tl.shape(u)[1] == r


@pytest.mark.parametrize("dtype", ["float32", "complex64", "float64"])
@pytest.mark.parametrize("default", [True, False])
def test_augment_basis_separates_directions_at_its_threshold(backend, dtype, default):
    # single precision takes the float64-accumulated Gram path, double the SVD: both must
    # keep exactly the directions above rtol·‖K‖ and capture K up to that level; the default
    # level is AUGMENT_RTOL_FACTOR·eps, whatever n is
    n, r = 200, 3
    gen = np.random.default_rng(5)
    u0 = np.linalg.qr(_gauss((n, r), dtype, 0))[0]
    rest = np.linalg.qr((np.eye(n) - u0 @ u0.conj().T) @ _gauss((n, 4), dtype, 1))[0]
    rtol = AUGMENT_RTOL_FACTOR * tol(dtype, 1) if default else 1e4 * tol(dtype, 1)
    kk = u0 @ _gauss((r, 4), dtype, 2)
    # two directions above the threshold (the smaller one 8 times above it: round-off of the
    # projection is below eps·‖K‖), one a tenth of it (below, but still above round-off in
    # the explicit case), one zero
    sv = np.linalg.norm(kk) * np.array([0.3, 8 * rtol, 0.1 * rtol, 0.0])
    kk = kk + rest @ np.diag(sv) @ np.linalg.qr(gen.standard_normal((4, 4)))[0]
    u = backend.tensor(u0, dtype)
    kwargs = {} if default else {"rtol": rtol}
    u = backend.numpy(augment_basis(u, backend.tensor(kk, dtype), **kwargs))
    assert u.shape[1] == r + 2
    assert _orth_err(u) <= tol(dtype, 100)
    res = kk - u @ (u.conj().T @ kk)
    # what is left of K is the dropped direction (0.1·rtol·‖K‖) plus round-off
    assert np.linalg.norm(res) <= (0.1 * rtol * 1.01 + tol(dtype, 100)) * np.linalg.norm(kk)


@pytest.mark.parametrize("dtype", ["float32", "complex64"])
def test_augment_basis_single_precision_keeps_what_double_keeps(backend, dtype):
    # from the same (single precision) inputs, directions well above the round-off of K are
    # kept in single precision exactly as in double precision, for a wide mode (n = 512),
    # where a drop level growing with n would already swallow a 1e-4·‖K‖ step
    n, r = 512, 4
    gen = np.random.default_rng(7)
    u0 = np.linalg.qr(_gauss((n, r), dtype, 0))[0]
    rest = np.linalg.qr((np.eye(n) - u0 @ u0.conj().T) @ _gauss((n, 3), dtype, 1))[0]
    kk = u0 @ _gauss((r, 3), dtype, 2)
    sv = np.linalg.norm(kk) * np.array([1e-2, 1e-4, 1e-5])
    kk = kk + rest @ np.diag(sv) @ np.linalg.qr(gen.standard_normal((3, 3)))[0]
    double = "complex128" if "complex" in dtype else "float64"
    u_single = backend.tensor(u0, dtype)
    k_single = backend.tensor(kk, dtype)
    lo = augment_basis(u_single, k_single)
    hi = augment_basis(
        backend.tensor(backend.numpy(u_single), double),
        backend.tensor(backend.numpy(k_single), double),
    )
    assert tl.shape(lo)[1] == tl.shape(hi)[1] == r + 3
    # the new spans agree up to the round-off of K (below eps·‖K‖) over the smallest kept
    # singular value 1e-5·‖K‖ (Wedin's bound on the sine of the largest principal angle)
    lo_n, hi_n = backend.numpy(lo)[:, r:], backend.numpy(hi)[:, r:]
    cosines = np.linalg.svd(lo_n.conj().T @ hi_n, compute_uv=False)
    sine = math.sqrt(max(0.0, 1.0 - float(cosines.min()) ** 2))
    assert sine <= 4 * tol(dtype, 1) / 1e-5


@given(sr=shape_and_rank(min_dims=2, max_dims=4, max_side=6), seed=seeds)
def test_augmented_core_represents_the_same_tensor(backend, dtype, sr, seed):
    shape, rank = sr
    y = tf.random_tucker(shape, rank, rng=seed % 1000, dtype=dtype, device=backend.device)
    gen = np.random.default_rng(seed % 1000)
    u_hats = [
        augment_basis(u, backend.tensor(_gauss((n, 2), dtype, int(gen.integers(1e6))), dtype))
        for u, n in zip(y.factors, shape)
    ]
    c_hat = augmented_core(y.core, y.factors, u_hats)
    z = tf.TuckerTensor(c_hat, u_hats)
    err = np.linalg.norm(backend.numpy(z.to_tensor()) - backend.numpy(y.to_tensor()))
    assert err <= tol(dtype, 100)  # ‖Y‖ = 1: products of orthonormal matrices, round-off only


@pytest.mark.parametrize("method", ["hosvd", "st_hosvd"])
@given(
    sr=shape_and_rank(min_dims=2, max_dims=4, max_side=6), seed=seeds, level=st.floats(1e-8, 0.5)
)
def test_truncate_core_honours_tolerance_and_returns_kept_directions(
    backend, dtype64, method, sr, seed, level
):
    shape, rank = sr
    a = tf.random_tucker(shape, rank, rng=seed % 1000, dtype=dtype64, device=backend.device)
    b = tf.random_tucker(shape, rank, rng=seed % 1000 + 1, dtype=dtype64, device=backend.device)
    s = tf.add(a, b, beta=0.1, rtol=None)  # orthonormal factors, rank up to 2r
    y, p_list, info = truncate_core(s.core, s.factors, rtol=level, method=method)
    x = backend.numpy(s.to_tensor())
    err = np.linalg.norm(backend.numpy(y.to_tensor()) - x)
    assert err <= level * np.linalg.norm(x) + tol(dtype64, 100)
    assert info.error_bound <= level * np.linalg.norm(x) * (1 + 1e-9)
    tf.validate_rank(shape, y.rank)
    for i, (u, p) in enumerate(zip(s.factors, p_list)):
        # factors are Û_i P_i and the core is Ĉ ×_i P_iᴴ
        np.testing.assert_allclose(
            backend.numpy(y.factors[i]), backend.numpy(u) @ backend.numpy(p), atol=1e-12
        )
        assert _orth_err(backend.numpy(y.factors[i])) <= tol(dtype64, 100)
    core = s.core
    for i, p in enumerate(p_list):
        core = tl.tenalg.mode_dot(core, tl.conj(tl.transpose(p)), i)
    np.testing.assert_allclose(backend.numpy(core), backend.numpy(y.core), atol=1e-12)


@pytest.mark.parametrize("method", ["hosvd", "st_hosvd"])
@pytest.mark.parametrize("dtype", ["float32", "complex64", "float64", "complex128"])
def test_truncate_core_takes_the_gram_path_only_where_its_round_off_is_invisible(
    backend, dtype, method
):
    shape = (10, 9, 8)
    x = _gauss(shape, dtype, 3) * np.geomspace(1.0, 1e-3, 10)[:, None, None]
    full = tf.hosvd(backend.tensor(x, dtype))
    c = backend.numpy(full.core)
    norm = np.linalg.norm(c)
    for rtol, expect in ((0.1, "gram"), (1e-7, "qr")):
        y, p_list, info = truncate_core(full.core, full.factors, rtol=rtol, method=method)
        assert info.methods == [expect] * 3
        # the tolerance holds whatever the path: ‖Ĉ − Ĉ ×_i P_iP_iᴴ‖ ≤ rtol·‖Ĉ‖ + round-off
        proj = c
        for i, p in enumerate(p_list):
            pn = backend.numpy(p)
            proj = np.moveaxis(np.tensordot(pn @ pn.conj().T, proj, axes=(1, i)), 0, i)
        assert np.linalg.norm(proj - c) <= (rtol + tol(dtype, 100)) * norm
        if method == "hosvd":
            # singular values of each unfolding: float64-accumulated Gram values are as
            # accurate as an SVD in the working precision (error ~ eps·‖Ĉ‖)
            for i in range(3):
                ref = np.linalg.svd(np.moveaxis(c, i, 0).reshape(shape[i], -1), compute_uv=False)
                got = np.asarray(info.singular_values[i])
                assert np.abs(got - ref).max() <= tol(dtype, 100) * norm


@given(sr=shape_and_rank(min_dims=3, max_dims=3, max_side=6), seed=seeds, cap=st.integers(1, 3))
def test_truncate_core_caps_floors_and_full_modes(backend, sr, seed, cap):
    shape, _ = sr
    x = backend.tensor(_gauss(shape, "float64", seed % 1000), "float64")
    full = tf.hosvd(x)  # exact, full valid ranks
    y, _, _ = truncate_core(full.core, full.factors, rtol=1e-3, max_rank=cap)
    tf.validate_rank(shape, y.rank)
    assert max(y.rank) <= cap
    y, _, _ = truncate_core(full.core, full.factors, rtol=0.99, min_rank=2)
    tf.validate_rank(shape, y.rank)
    assert all(r >= min(2, n) for r, n in zip(y.rank, full.rank))
    # a mode given as None is neither truncated nor rotated
    u_hats = [None] + list(full.factors[1:])
    y, p_list, _ = truncate_core(full.core, u_hats, rtol=0.5)
    assert p_list[0] is None and y.rank[0] == full.rank[0]
    np.testing.assert_array_equal(backend.numpy(y.factors[0]), np.eye(full.rank[0]))


def test_bad_input(backend):
    c = backend.tensor(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match=r"mode=3 must be an integer in \[0, 3\)"):
        core_qr(c, 3)
    u0 = backend.tensor(np.eye(5)[:, :2])
    with pytest.raises(ValueError, match=r"K.shape\[0\]=4 differs from U0.shape\[0\]=5"):
        augment_basis(u0, backend.tensor(np.ones((4, 2))))
    with pytest.raises(ValueError, match="rtol must be a finite number >= 0"):
        augment_basis(u0, backend.tensor(np.ones((5, 2))), rtol=-1.0)
    with pytest.raises(ValueError, match="C0 has 3 modes but 2 old"):
        augmented_core(c, [u0, u0], [u0, u0])
    with pytest.raises(ValueError, match=r"max_rank\[0\]=0 must be at least 1"):
        truncate_core(c, [None, None, None], max_rank=0)
    with pytest.raises(ValueError, match="method='svd' is not one of"):
        truncate_core(c, [None, None, None], method="svd")


def test_bad_input_is_refused_with_the_argument_named(backend):
    gen = np.random.default_rng(0)
    c = backend.tensor(gen.standard_normal((2, 2, 2)))
    u0 = backend.tensor(np.linalg.qr(gen.standard_normal((5, 2)))[0])
    k = backend.tensor(gen.standard_normal((5, 2)))
    # rtol**2 raised OverflowError from about 1e154; such an rtol drops every new direction
    out = augment_basis(u0, k, rtol=1e300)
    np.testing.assert_array_equal(backend.numpy(out), backend.numpy(u0))
    assert tl.shape(augment_basis(u0, k, rtol=np.float32(1e-6))) == (5, 4)
    for bad in ("0.1", True, 1j):
        with pytest.raises(TypeError, match="rtol must be a real number"):
            augment_basis(u0, k, rtol=bad)
    # augmented_core(C, "abc", "abc") raised IndexError on the characters
    with pytest.raises(TypeError, match="U0s must be a sequence of matrices or None"):
        augmented_core(c, "abc", "abc")
    with pytest.raises(TypeError, match=r"U0s\[1\] is a builtins.str"):
        augmented_core(c, [u0, "b", u0], [u0, u0, u0])
    with pytest.raises(ValueError, match=r"U_hats\[0\] must be a matrix, got shape \(2, 2, 2\)"):
        augmented_core(c, [u0, u0, u0], [c, u0, u0])
    with pytest.raises(ValueError, match=r"U_hats\[2\] must be a matrix"):
        truncate_core(c, [u0, u0, c])
    # the same rtol overflowed in truncate_core's Gram-path test: all is discarded
    y, p_list, _ = truncate_core(c, [u0, u0, u0], rtol=1e300)
    assert y.rank == (1, 1, 1) and [tl.shape(p) for p in p_list] == [(2, 1)] * 3
