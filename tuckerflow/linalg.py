"""Dense linear algebra building blocks with deterministic signs.

All SVD-like results go through :func:`flip_signs`, so that repeated runs (and different
factorisation paths) return the same singular vectors up to round-off. The public functions
refuse non-finite input with a ``ValueError`` before any LAPACK call (some LAPACK SVD drivers
never return on a matrix holding an ``inf``); the private ``_…`` variants skip that check for
callers that have already made it once for a whole tensor.
"""

from __future__ import annotations

import math

import numpy as np
import tensorly as tl

from ._backend import (
    astype,
    check_finite,
    check_tensor,
    conj_t,
    context,
    dtype_name,
    is_complex,
    real_dtype_name,
)
from .typing import Seed, Tensor

__all__ = ["flip_signs", "left_singular", "mode_products", "orth", "svd", "SVD_METHODS"]

#: Factorisation paths for the left singular vectors of an unfolding.
SVD_METHODS = ("auto", "svd", "qr", "gram", "randomized")

#: A Gram-matrix path is used by ``method="auto"`` (in the truncations) only when the allowed
#: squared error exceeds this multiple of ``m * eps * ||A||^2`` (its eigenvalue error).
GRAM_SAFETY = 1e3


def _largest_entries(u):
    """``u[k_j, j]`` with ``k_j`` the first row of largest modulus in column ``j``.

    Written with backend reductions only (a mask of the maxima, its running count to keep the
    first one, a masked sum), so that it runs on the array's device for every backend.
    """
    mag = tl.abs(u)
    top = tl.max(mag, axis=0)
    hit = astype(mag == top[None, :], real_dtype_name(u))
    first = hit * astype(tl.cumsum(hit, axis=0) == 1, real_dtype_name(u))
    return tl.sum(u * astype(first, dtype_name(u)), axis=0)


def flip_signs(u: Tensor, vh: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Make the entry of largest modulus of every column of ``u`` real and positive.

    The phase removed from column ``j`` of ``u`` is put on row ``j`` of ``vh`` so that
    ``u @ diag(s) @ vh`` is unchanged. Ties go to the first row, so the result is
    deterministic. ``u`` is a finite matrix and ``vh``, if given, a finite matrix with one row
    per column of ``u`` (``ValueError`` otherwise; each finiteness check is one host read,
    the rest a handful of kernels).
    """
    _check_matrix(u, "u")
    if vh is not None:
        check_tensor(vh, "vh")
        if tl.ndim(vh) != 2 or tl.shape(vh)[0] != tl.shape(u)[1]:
            raise ValueError(
                f"vh.shape={tuple(tl.shape(vh))} must be a matrix with u.shape[1]="
                f"{tl.shape(u)[1]} rows"
            )
        check_finite(vh, "vh")
    return _flip_signs(u, vh)


def _flip_signs(u, vh=None):
    """:func:`flip_signs` without validation (no host synchronisation), for the
    factorisations of this module, whose inputs are checked."""
    if not is_complex(u):
        # the phase of a real column is its sign: the same result in a few kernels
        # (argmax returns the first maximum on every backend, the tie rule above)
        if 0 in tuple(tl.shape(u)):
            return u, vh
        idx = tl.argmax(tl.abs(u), axis=0)
        pick = tl.diag(u[idx])  # u[idx[j], j]
        one = tl.ones(tl.shape(pick), **context(pick))
        sign = tl.where(pick < 0, -one, one)
        u = u * sign[None, :]
        if vh is not None:
            vh = vh * sign[:, None]
        return u, vh
    pick = _largest_entries(u)
    mag = tl.abs(pick)
    safe = tl.where(mag == 0, tl.ones(tl.shape(mag), **context(mag)), mag)
    phase = pick / astype(safe, dtype_name(pick))
    phase = tl.where(mag == 0, tl.ones(tl.shape(phase), **context(phase)), phase)
    u = u * tl.conj(phase)[None, :]
    if vh is not None:
        vh = vh * phase[:, None]
    return u, vh


def _check_matrix(a, name):
    check_tensor(a, name)
    if tl.ndim(a) != 2:
        raise ValueError(f"{name} must be a matrix, got {tl.ndim(a)} dimensions")
    check_finite(a, name)


def _svd(a, full_matrices=False):
    u, s, vh = tl.svd(a, full_matrices=full_matrices)
    u, vh = _flip_signs(u, vh)
    return u, s, vh


def svd(a: Tensor, *, full_matrices: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD ``a = u @ diag(s) @ vh`` with deterministic signs.

    Raises ``ValueError`` if ``a`` holds NaN or Inf (checked before LAPACK is called).
    """
    _check_matrix(a, "a")
    return _svd(a, full_matrices=full_matrices)


def orth(a: Tensor) -> Tensor:
    """Orthonormal basis of the columns of ``a`` by a thin Householder QR.

    Raises ``ValueError`` if ``a`` holds NaN or Inf.
    """
    _check_matrix(a, "a")
    return _orth(a)


def _orth(a):
    q, _ = tl.qr(a)
    return q


def _gram_left(a):
    """Left singular vectors and values through the Gram matrix, accumulated in >= float64."""
    work = a
    if real_dtype_name(a) == "float32":
        work = astype(a, "complex128" if is_complex(a) else "float64")
    g = tl.dot(work, conj_t(work))
    lam, v = tl.eigh(g)
    lam = tl.flip(lam, axis=0)
    v = tl.flip(v, axis=1)
    lam = tl.where(lam < 0, tl.zeros(tl.shape(lam), **context(lam)), lam)
    s = tl.sqrt(lam)
    u, _ = _flip_signs(v)
    if work is a:  # accumulated in the input's own dtype: nothing to cast back
        return u, s
    return astype(u, dtype_name(a)), astype(s, real_dtype_name(a))


def _qr_left(a):
    """Left singular vectors of a wide ``a`` from the R factor of ``a^H``: backward stable."""
    r = tl.qr(conj_t(a), mode="r")
    if isinstance(r, tuple):  # some backends return (q, r) whatever the mode
        r = r[-1]
    u, s, _ = _svd(conj_t(r))
    return u, s


def _randomized_left(a, k, *, oversample=10, power_iter=2, rng=None):
    m, n = tl.shape(a)
    ell = min(m, k + oversample)
    gen = np.random.default_rng(rng if rng is not None else 0)
    omega = gen.standard_normal((n, ell))
    if is_complex(a):
        omega = omega + 1j * gen.standard_normal((n, ell))
    omega = tl.tensor(omega, **context(a))
    y = tl.dot(a, omega)
    q = _orth(y)
    ah = conj_t(a)
    for _ in range(power_iter):
        q = _orth(tl.dot(ah, q))
        q = _orth(tl.dot(a, q))
    b = tl.dot(conj_t(q), a)
    ub, s = _qr_left(b) if tl.shape(b)[0] < tl.shape(b)[1] else _svd(b)[:2]
    u, _ = _flip_signs(tl.dot(q, ub))
    return u, s


def left_singular(
    a: Tensor, *, method: str = "auto", rank_hint: int | None = None, rng: Seed = None
) -> tuple[Tensor, Tensor]:
    """Left singular vectors ``u`` and singular values ``s`` (descending) of a matrix.

    Parameters
    ----------
    a : tensor, shape (m, n)
        Finite entries (NaN or Inf is a ``ValueError``, raised before any LAPACK call).
    method : {"auto", "svd", "qr", "gram", "randomized"}
        ``"svd"``: LAPACK-style thin SVD of ``a``. ``"qr"``: for wide ``a`` (``m < n``), the
        R factor of a Householder QR of ``aᴴ`` followed by an ``m × m`` SVD; as accurate as
        ``"svd"`` and never forms the right singular vectors. ``"gram"``: eigen-decomposition
        of ``a aᴴ`` accumulated in at least float64; fast but squares the condition number,
        so singular values below about ``sqrt(m · eps) ‖a‖`` are lost. ``"randomized"``: a
        randomized range finder with ``rank_hint + 10`` samples and two power iterations
        (Halko, Martinsson & Tropp 2011); only the leading ``rank_hint + 10`` values are
        returned. ``"auto"`` takes ``"qr"`` for wide and ``"svd"`` for tall matrices (the
        truncations decide about the Gram path themselves, from their error budget).
    rank_hint : int, optional
        Target rank for the randomized path.
    rng : None, int or numpy.random.Generator
        Seed of the randomized path.

    Returns
    -------
    u : tensor, shape (m, p)
    s : tensor, shape (p,), real, descending

    Examples
    --------
    >>> import numpy as np
    >>> from tuckerflow.linalg import left_singular
    >>> u, s = left_singular(np.diag([3.0, 1.0]) @ np.ones((2, 4)))
    >>> np.round(s, 6)
    array([6.324555, 0.      ])
    """
    _check_matrix(a, "a")
    if method not in SVD_METHODS:
        raise ValueError(f"method={method!r} is not one of {SVD_METHODS}")
    if rank_hint is not None and (
        isinstance(rank_hint, bool) or not isinstance(rank_hint, (int, np.integer)) or rank_hint < 1
    ):
        raise ValueError(f"rank_hint must be an integer >= 1, got {rank_hint!r}")
    return _left_singular(a, method=method, rank_hint=rank_hint, rng=rng)


def _left_singular(a, *, method="auto", rank_hint=None, rng=None):
    m, n = tl.shape(a)
    if method == "auto":
        method = "qr" if m < n else "svd"
    if method == "svd":
        u, s, _ = _svd(a)
        return u, s
    if method == "qr":
        if m >= n:
            u, s, _ = _svd(a)
            return u, s
        return _qr_left(a)
    if method == "gram":
        return _gram_left(a)
    if method == "randomized":
        if rank_hint is None:
            raise ValueError("method='randomized' needs a target rank (rank or max_rank)")
        if rank_hint + 10 >= min(m, n):
            return _left_singular(a, method="qr")
        return _randomized_left(a, rank_hint, rng=rng)
    raise ValueError(f"method={method!r} is not one of {SVD_METHODS}")


def mode_products(x: Tensor, matrices) -> Tensor:
    """``x ×_0 M_0 ×_1 M_1 ⋯`` (None leaves a mode alone), one matrix product per mode.

    ``matrices`` holds at most one entry per mode of ``x`` (modes past its end are left
    alone), each None or a matrix with ``x.shape[j]`` columns (``TypeError``/``ValueError``
    otherwise). Values are not checked: NaN propagates as in any product.

    Each product works on ``x`` in its own memory layout: mode ``j`` of a tensor of shape
    ``(a, n_j, b)`` (``a``, ``b`` the products of the sizes before and after it) is
    ``M_j @ x`` batched over ``a`` (a plain product for the first and the last mode), and the
    result keeps the layout. No transposed copy is ever made, and no later product reads a
    strided view (which costs several times a contiguous one in BLAS).
    """
    check_tensor(x, "x")
    if isinstance(matrices, (str, bytes)) or not hasattr(matrices, "__len__"):
        raise TypeError(f"matrices must be a sequence of matrices or None, got {matrices!r}")
    matrices = list(matrices)
    shape = tuple(tl.shape(x))
    if len(matrices) > len(shape):
        raise ValueError(f"{len(matrices)} matrices were given for a tensor of {len(shape)} modes")
    _check_mode_matrices(
        matrices,
        shape,
        lambda j, m: (
            f"matrices[{j}].shape={m} must be a matrix with x.shape[{j}]={shape[j]} columns"
        ),
    )
    return _mode_products(x, matrices)


def _check_mode_matrices(matrices, shape, message):
    """Each non-None ``matrices[j]`` a matrix of the backend with ``shape[j]`` columns (the
    product ``T ×_j M_j`` is defined); else ``ValueError(message(j, matrices[j].shape))``."""
    for j, m in enumerate(matrices):
        if m is None:
            continue
        check_tensor(m, f"matrices[{j}]")
        if tl.ndim(m) != 2 or tl.shape(m)[1] != shape[j]:
            raise ValueError(message(j, tuple(tl.shape(m))))


def _mode_products(x, matrices):
    """:func:`mode_products` without validation, for callers whose matrices fit ``x`` by
    construction (the integrators' cores, the truncations, the operators)."""
    # the array protocol common to the supported backends (``.shape``, ``.reshape``, ``.T``
    # and ``@`` on NumPy, CuPy and PyTorch arrays): the products of the integrators' small
    # cores are short, and TensorLy's dispatch would cost about as much as the arithmetic
    shape = list(x.shape)
    for j, m in enumerate(matrices):
        if m is None:
            continue
        left, n, right = math.prod(shape[:j]), shape[j], math.prod(shape[j + 1 :])
        if left == 1:
            x = m @ x.reshape(n, right)
        elif right == 1:
            x = x.reshape(left, n) @ m.T
        else:
            x = m @ x.reshape(left, n, right)
        shape[j] = m.shape[0]
        x = x.reshape(tuple(shape))
    return x
