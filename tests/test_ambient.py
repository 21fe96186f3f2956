"""tuckerflow.ambient: the complement norm and directions of Tucker tensors against dense ones."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl

import tuckerflow as tf
from tuckerflow.ambient import complement_directions, complement_norm


def _random(rng, shape, dtype):
    a = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        a = a + 1j * rng.standard_normal(shape)
    return a.astype(dtype)


def _orthonormal(rng, n, k, dtype):
    return np.linalg.qr(_random(rng, (n, k), np.complex128 if np.dtype(dtype).kind == "c"
                                else np.float64))[0][:, :k].astype(dtype)  # fmt: skip


def _dense(core, factors, bases):
    """``‖(I − P) Z‖``, ``‖Z‖`` and the singular values of ``(I − B_jB_jᴴ) Mat_j(Z)``."""
    wide = np.complex128 if np.iscomplexobj(core) else np.float64
    z = tl.tenalg.multi_mode_dot(core.astype(wide), [f.astype(wide) for f in factors])
    bs = [b.astype(wide) for b in bases]
    p = z
    for j, b in enumerate(bs):
        p = tl.tenalg.mode_dot(tl.tenalg.mode_dot(p, b.conj().T, j), b, j)
    outside = []
    for j, b in enumerate(bs):
        m = tl.unfold(z, j)
        outside.append(np.linalg.svd(m - b @ (b.conj().T @ m), compute_uv=False))
    return float(np.linalg.norm(z - p)), float(np.linalg.norm(z)), outside


# rank (2, 2, 2): the rest is thinner than every complement (a thin QR of it); rank (6, 6, 5)
# against 3 kept columns: the rest fills the complement (all of it, from a complete QR of
# B_j); 6 of 6 kept in the last mode: nothing lies outside there
@pytest.mark.parametrize(
    "rank, kept", [((2, 2, 2), (3, 3, 3)), ((6, 6, 5), (3, 3, 3)), ((6, 5, 4), (2, 3, 6))]
)
def test_complement_of_a_tucker_tensor_equals_the_dense_one(backend, dtype, rank, kept):
    rng = np.random.default_rng(0)
    shape = (8, 7, 6)
    core = _random(rng, rank, dtype)
    factors = [_orthonormal(rng, n, r, dtype) for n, r in zip(shape, rank)]
    bases = [_orthonormal(rng, n, k, dtype) for n, k in zip(shape, kept)]
    with tl.backend_context("numpy"):
        norm_dense, scale, outside = _dense(core, factors, bases)
    eps = float(np.finfo(dtype).eps)
    z = tf.TuckerTensor(backend.tensor(core), [backend.tensor(f) for f in factors])
    tb = [backend.tensor(b) for b in bases]
    norm = complement_norm(z, tb)
    # far above the Gram path's round-off (about sqrt(eps) ‖Z‖), below every true value
    threshold = 1e2 * np.sqrt(eps) * scale
    dirs = [backend.numpy(q).astype(np.complex128) for q in complement_directions(z, tb, threshold)]
    assert abs(norm - norm_dense) <= 100 * eps * scale
    for j, (q, b, s) in enumerate(zip(dirs, bases, outside)):
        n, k = b.shape
        assert q.shape[1] == int((s > threshold).sum()) <= n - k, j
        if q.shape[1]:
            assert np.linalg.norm(q.conj().T @ q - np.eye(q.shape[1])) <= 100 * eps * n
            assert np.linalg.norm(b.conj().T @ q) <= 100 * eps * n
