"""Random Tucker tensors with orthonormal factors and a controlled core spectrum."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorly as tl

from ._backend import backend_dtype, normalize_dtype
from .ranks import validate_rank
from .tucker import TuckerTensor
from .typing import Rank, Seed, Tensor

__all__ = ["random_tucker", "random_orthonormal"]


def _rng(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is not None and (isinstance(rng, bool) or not isinstance(rng, numbers.Integral)):
        raise TypeError(f"rng must be None, an int or a numpy.random.Generator, got {rng!r}")
    if rng is not None and rng < 0:
        raise ValueError(f"rng={rng} must be a non-negative seed")
    return np.random.default_rng(None if rng is None else int(rng))


def _positive_int(v, name):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {v!r} ({type(v).__name__})")
    if v < 1:
        raise ValueError(f"{name}={v} must be at least 1")
    return int(v)


def _gauss(gen, shape, cplx):
    z = gen.standard_normal(shape)
    if cplx:
        z = (z + 1j * gen.standard_normal(shape)) / np.sqrt(2.0)
    return z


def _spectrum(decay, r):
    if isinstance(decay, (str, bytes, bool)):
        raise TypeError(f"decay must be a number, a sequence or a callable, got {decay!r}")
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


def random_orthonormal(
    n: int, r: int, *, rng: Seed = None, dtype: Any = "float64", device: Any = None
) -> Tensor:
    """An ``n × r`` matrix with orthonormal columns, Haar-distributed (QR of a Gaussian).

    Parameters
    ----------
    n, r : int
        ``1 ≤ r ≤ n``.
    rng : None, int or numpy.random.Generator
    dtype : str, NumPy or backend dtype
        ``"float32"``, ``"float64"`` (default), ``"complex64"`` or ``"complex128"``.
    device : optional
        Device for backends that have one.

    Examples
    --------
    >>> import numpy as np, tuckerflow as tf
    >>> U = tf.random_orthonormal(5, 2, rng=0)
    >>> U.shape, bool(np.allclose(U.T @ U, np.eye(2)))
    ((5, 2), True)
    """
    n = _positive_int(n, "n")
    r = _positive_int(r, "r")
    if r > n:
        raise ValueError(f"r={r} exceeds n={n}: an n × r matrix has at most n orthonormal columns")
    name = normalize_dtype(dtype)
    gen = _rng(rng)
    q, rr = np.linalg.qr(_gauss(gen, (n, r), name.startswith("complex")))
    q = q * (np.diag(rr) / np.abs(np.diag(rr)))[None, :]
    return _to_backend(q, name, device)


def random_tucker(
    shape: Sequence[int],
    rank: Rank,
    *,
    rng: Seed = None,
    dtype: Any = None,
    device: Any = None,
    decay: Any = 1.0,
    norm: float = 1.0,
    sweeps: int = 20,
) -> TuckerTensor:
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
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise TypeError(f"shape must be a sequence of ints, got {shape!r}")
    shape = tuple(_positive_int(n, f"shape[{i}]") for i, n in enumerate(shape))
    if not shape:
        raise ValueError("shape must have at least one mode")
    r = validate_rank(shape, rank)
    name = "float64" if dtype is None else normalize_dtype(dtype)
    if isinstance(norm, bool) or not isinstance(norm, numbers.Real) or not np.isfinite(float(norm)):
        raise ValueError(f"norm must be a finite real number, got {norm!r}")
    sweeps = _positive_int(sweeps, "sweeps")
    cplx = name.startswith("complex")
    gen = _rng(rng)
    core = _gauss(gen, r, cplx)
    spectra = [_spectrum(decay, ri) for ri in r]
    for _ in range(sweeps):
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
