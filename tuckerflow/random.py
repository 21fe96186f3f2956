"""Random Tucker tensors with orthonormal factors and a controlled core spectrum."""

from __future__ import annotations

import numpy as np
import tensorly as tl

from ._backend import backend_dtype
from .truncation import validate_rank
from .tucker import TuckerTensor

__all__ = ["random_tucker", "random_orthonormal"]

_DTYPES = ("float32", "float64", "complex64", "complex128")


def _rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _gauss(gen, shape, cplx):
    z = gen.standard_normal(shape)
    if cplx:
        z = (z + 1j * gen.standard_normal(shape)) / np.sqrt(2.0)
    return z


def _spectrum(decay, r):
    if callable(decay):
        s = np.asarray([decay(k) for k in range(r)], dtype=np.float64)
    elif np.ndim(decay) == 0:
        s = float(decay) ** np.arange(r, dtype=np.float64)
    else:
        s = np.asarray(decay, dtype=np.float64)
    if s.shape != (r,) or np.any(~np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"decay must give {r} positive finite singular values, got {s}")
    return s / np.linalg.norm(s)


def _to_backend(a, dtype, device):
    kw = {"dtype": backend_dtype(dtype)}
    if device is not None:
        kw["device"] = device
    return tl.tensor(a, **kw)


def random_orthonormal(n, r, *, rng=None, dtype="float64", device=None):
    """An ``n × r`` matrix with orthonormal columns, Haar-distributed (QR of a Gaussian)."""
    gen = _rng(rng)
    q, rr = np.linalg.qr(_gauss(gen, (n, r), "complex" in str(dtype)))
    q = q * (np.diag(rr) / np.abs(np.diag(rr)))[None, :]
    return _to_backend(q, str(dtype), device)


def random_tucker(
    shape, rank, *, rng=None, dtype=None, device=None, decay=1.0, norm=1.0, sweeps=20
):
    """Random Tucker tensor of exact multilinear rank with a prescribed core spectrum.

    Parameters
    ----------
    shape : sequence of int
    rank : int or sequence of int
        Must be a valid multilinear rank for ``shape``.
    rng : None, int or numpy.random.Generator
    dtype : str or backend dtype, optional
        ``"float32"``, ``"float64"`` (default), ``"complex64"`` or ``"complex128"``.
    device : optional
        Device for backends that have one (e.g. ``"cuda"`` with PyTorch).
    decay : float in (0, 1], sequence or callable
        Singular values of every unfolding of the core are proportional to ``decay**k``
        (``k = 0 … r_i − 1``), or given per index by a sequence or callable ``k -> σ_k``.
        ``decay=1`` gives a perfectly conditioned core.
    norm : float
        Frobenius norm of the result.
    sweeps : int
        Alternating rescalings of the core unfoldings (see Notes).

    Returns
    -------
    TuckerTensor
        Haar-random orthonormal factors, a core of full multilinear rank.

    Notes
    -----
    The core starts Gaussian; each sweep replaces, mode after mode, the singular values of
    ``Mat_i(C)`` by the prescribed ones. The last mode's spectrum is exact and the others are
    close after a few sweeps (exact for ``decay=1`` up to round-off). A core uniform in
    ``[0, 1)`` would instead be nearly rank one, a poor test tensor.

    Examples
    --------
    >>> import tuckerflow as tf
    >>> Y = tf.random_tucker((10, 9, 8), 3, rng=0, decay=0.1)
    >>> Y.rank
    (3, 3, 3)
    """
    shape = tuple(int(n) for n in shape)
    r = validate_rank(shape, rank)
    name = "float64" if dtype is None else str(dtype).rsplit(".", 1)[-1]
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    cplx = name.startswith("complex")
    gen = _rng(rng)
    core = _gauss(gen, r, cplx)
    spectra = [_spectrum(decay, ri) for ri in r]
    for _ in range(max(int(sweeps), 1)):
        for i, ri in enumerate(r):
            m = np.moveaxis(core, i, 0).reshape(ri, -1)
            u, _, vh = np.linalg.svd(m, full_matrices=False)
            m = (u * spectra[i][: u.shape[1]]) @ vh
            rest = tuple(r[j] for j in range(len(r)) if j != i)
            core = np.moveaxis(m.reshape((ri,) + rest), 0, i)
    core *= float(norm) / np.linalg.norm(core)
    factors = [
        random_orthonormal(n, ri, rng=gen, dtype=name, device=device) for n, ri in zip(shape, r)
    ]
    return TuckerTensor(_to_backend(core, name, device), factors)
