"""HOSVD, sequentially truncated HOSVD and recompression of Tucker tensors.

Rank selection follows one rule everywhere (the integrators and the optimizer reuse it, see
:mod:`tuckerflow.ranks`): for mode ``i`` with singular values ``σ_1 ≥ σ_2 ≥ …`` of the
relevant unfolding, keep the smallest ``ρ`` with ``(Σ_{j>ρ} σ_j²)^{1/2} ≤ ϑ_i``. The total
budget ``ϑ`` (from ``atol`` and ``rtol``) is spent mode by mode: mode ``k`` (in processing
order) may discard ``ϑ_k² = (ϑ² − Σ_{j<k} discarded_j²) / (d − k)``; for ST-HOSVD
``‖X − X_ST‖² = Σ_i tail_i²`` exactly, so ``‖X − result‖_F ≤ ϑ``. For HOSVD that sum only
bounds the error, so the ranks of the split are then lowered greedily while the exact error
stays within ``ϑ`` (for ``d = 2``: the ranks of the matrix SVD truncation). Every function
here is a thin layer over the kernel :func:`tuckerflow.recompression.recompress`.

References
----------
.. [DDV00] L. De Lathauwer, B. De Moor, J. Vandewalle, "A multilinear singular value
   decomposition", SIAM J. Matrix Anal. Appl. 21(4), 2000.
.. [VVM12] N. Vannieuwenhoven, R. Vandebril, K. Meerbergen, "A new truncation strategy for
   the higher-order singular value decomposition", SIAM J. Sci. Comput. 34(2), 2012.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, overload

import tensorly as tl

from ._backend import check_tensor
from .linalg import SVD_METHODS
from .ranks import (
    default_order,
    largest_valid_rank,
    per_mode,
    rank_spec,
    select_rank,
    validate_rank,
)
from .recompression import TruncationInfo, recompress
from .tucker import TuckerTensor, _truncate_tucker, as_tucker
from .typing import Rank, Seed, Tensor, TuckerLike

__all__ = [
    "TruncationInfo",
    "hosvd",
    "largest_valid_rank",
    "select_rank",
    "st_hosvd",
    "truncate",
    "validate_rank",
]


def _check_dense(x, name="X"):
    check_tensor(x, name)
    if tl.ndim(x) < 1:
        raise ValueError(f"{name} must have at least one mode, got a 0-d array")
    if any(n < 1 for n in tl.shape(x)):
        raise ValueError(f"{name} has an empty mode: shape {tuple(tl.shape(x))}")


def _check_method(method):
    if method not in SVD_METHODS:
        raise ValueError(f"method={method!r} is not one of {SVD_METHODS}")


@overload
def hosvd(
    X: Tensor,
    rank: Rank | None = ...,
    *,
    rtol: float | None = ...,
    atol: float | None = ...,
    max_rank: Rank | None = ...,
    min_rank: Rank | None = ...,
    method: str = ...,
    rng: Seed = ...,
    return_info: Literal[False] = ...,
) -> TuckerTensor: ...


@overload
def hosvd(
    X: Tensor,
    rank: Rank | None = ...,
    *,
    rtol: float | None = ...,
    atol: float | None = ...,
    max_rank: Rank | None = ...,
    min_rank: Rank | None = ...,
    method: str = ...,
    rng: Seed = ...,
    return_info: Literal[True],
) -> tuple[TuckerTensor, TruncationInfo]: ...


def hosvd(
    X: Tensor,
    rank: Rank | None = None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    max_rank: Rank | None = None,
    min_rank: Rank | None = None,
    method: str = "auto",
    rng: Seed = None,
    return_info: bool = False,
) -> TuckerTensor | tuple[TuckerTensor, TruncationInfo]:
    """Truncated higher-order SVD of a dense tensor.

    Parameters
    ----------
    X : tensor
        Dense tensor of the active backend (any real or complex float dtype; kept).
    rank : int or sequence of int, optional
        Fixed multilinear rank; must be valid for ``X.shape``. Exclusive with ``rtol``/``atol``.
    rtol, atol : float, optional
        Guarantee ``‖X − result‖_F ≤ min(atol, rtol · ‖X‖_F)`` (ranks chosen per mode).
    max_rank, min_rank : int or sequence of int, optional
        Caps and floors on the ranks chosen by a tolerance (``max_rank`` may make the
        tolerance unattainable; the error bound in ``info`` then says by how much).
    method : {"auto", "svd", "qr", "gram", "randomized"}
        Factorisation of each unfolding (see :func:`tuckerflow.linalg.left_singular`).
    rng : None, int or numpy.random.Generator
        Seed for the randomized path.
    return_info : bool
        Also return a :class:`TruncationInfo`.

    Returns
    -------
    TuckerTensor (and TruncationInfo)
        Orthonormal factors with deterministic signs, valid ranks.

    Notes
    -----
    ``U_i`` holds the leading left singular vectors of ``Mat_i(X)`` and ``C = X ×_i U_iᴴ``
    [DDV00]_. With ``tail_i`` the discarded singular values of ``Mat_i(X)``,
    ``max_i tail_i² ≤ ‖X − X_H‖² ≤ Σ_i tail_i² ≤ d ‖X − X_best‖²``.

    References
    ----------
    .. [1] De Lathauwer, De Moor & Vandewalle, SIAM J. Matrix Anal. Appl. 21(4), 2000.

    Examples
    --------
    >>> import tuckerflow as tf
    >>> X = tf.random_tucker((8, 7, 6), (3, 2, 2), rng=1).to_tensor()
    >>> tf.hosvd(X, rtol=1e-10).rank
    (3, 2, 2)
    """
    _check_dense(X)
    _check_method(method)
    shape = tuple(tl.shape(X))
    spec = rank_spec(shape, rank, rtol, atol, max_rank, min_rank)
    core, P_list, info = recompress(X, spec, method="hosvd", svd_method=method, rng=rng, name="X")
    out = TuckerTensor(core, P_list)
    return (out, info) if return_info else out


@overload
def st_hosvd(
    X: Tensor,
    rank: Rank | None = ...,
    *,
    rtol: float | None = ...,
    atol: float | None = ...,
    max_rank: Rank | None = ...,
    min_rank: Rank | None = ...,
    method: str = ...,
    order: Sequence[int] | None = ...,
    rng: Seed = ...,
    return_info: Literal[False] = ...,
) -> TuckerTensor: ...


@overload
def st_hosvd(
    X: Tensor,
    rank: Rank | None = ...,
    *,
    rtol: float | None = ...,
    atol: float | None = ...,
    max_rank: Rank | None = ...,
    min_rank: Rank | None = ...,
    method: str = ...,
    order: Sequence[int] | None = ...,
    rng: Seed = ...,
    return_info: Literal[True],
) -> tuple[TuckerTensor, TruncationInfo]: ...


def st_hosvd(
    X: Tensor,
    rank: Rank | None = None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    max_rank: Rank | None = None,
    min_rank: Rank | None = None,
    method: str = "auto",
    order: Sequence[int] | None = None,
    rng: Seed = None,
    return_info: bool = False,
) -> TuckerTensor | tuple[TuckerTensor, TruncationInfo]:
    """Sequentially truncated HOSVD of a dense tensor.

    Same parameters and guarantees as :func:`hosvd`, plus

    order : sequence of int, optional
        Order in which modes are processed. Default: the largest reduction ``n_i / r_i``
        first (ties: the larger mode first), so that later SVDs act on the smallest tensors.

    Notes
    -----
    After mode ``i`` is processed, ``X ← X ×_i U_iᴴ``: later SVDs act on partially truncated
    tensors [VVM12]_. The error obeys the exact identity
    ``‖X − X_ST‖² = Σ_k (discarded σ² at step k)`` (``info.error_bound``, up to round-off).
    The first (largest) unfolding dominates the cost; ``method="auto"`` factors it by a
    Householder QR of its transpose and a small SVD, or through its Gram matrix (in at least
    float64) when the requested tolerance is far above that path's round-off.

    Examples
    --------
    >>> import tuckerflow as tf
    >>> X = tf.random_tucker((8, 7, 6), (3, 2, 2), rng=1).to_tensor()
    >>> Y, info = tf.st_hosvd(X, rank=(3, 2, 2), return_info=True)
    >>> bool(info.error_bound < 1e-12)
    True
    """
    _check_dense(X)
    _check_method(method)
    shape = tuple(tl.shape(X))
    d = len(shape)
    spec = rank_spec(shape, rank, rtol, atol, max_rank, min_rank)
    if order is None:
        order = default_order(shape, spec)
    else:
        order = per_mode(order, d, "order")
        if sorted(order) != list(range(d)):
            raise ValueError(f"order={order} must be a permutation of range({d})")
    core, P_list, info = recompress(
        X, spec, method="st_hosvd", order=order, svd_method=method, rng=rng, name="X"
    )
    out = TuckerTensor(core, P_list)
    return (out, info) if return_info else out


@overload
def truncate(
    Y: TuckerLike,
    rank: Rank | None = ...,
    *,
    rtol: float | None = ...,
    atol: float | None = ...,
    max_rank: Rank | None = ...,
    min_rank: Rank | None = ...,
    method: str = ...,
    return_info: Literal[False] = ...,
) -> TuckerTensor: ...


@overload
def truncate(
    Y: TuckerLike,
    rank: Rank | None = ...,
    *,
    rtol: float | None = ...,
    atol: float | None = ...,
    max_rank: Rank | None = ...,
    min_rank: Rank | None = ...,
    method: str = ...,
    return_info: Literal[True],
) -> tuple[TuckerTensor, TruncationInfo]: ...


def truncate(
    Y: TuckerLike,
    rank: Rank | None = None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    max_rank: Rank | None = None,
    min_rank: Rank | None = None,
    method: str = "st_hosvd",
    return_info: bool = False,
) -> TuckerTensor | tuple[TuckerTensor, TruncationInfo]:
    """Recompress a Tucker tensor (of any rank, e.g. a sum) without densifying.

    Parameters
    ----------
    Y : Tucker tensor
        Factors need not be orthonormal (e.g. ``Y + Z`` before recompression, or factors
        after a mode product).
    rank, rtol, atol, max_rank, min_rank :
        As in :func:`hosvd`; tolerances are relative to ``‖Y‖``. With none of them, the
        result is ``Y`` exactly, with orthonormal factors and valid ranks.
    method : {"st_hosvd", "hosvd"}
        Truncation of the small core.

    Returns
    -------
    TuckerTensor (and TruncationInfo)

    Notes
    -----
    ``U_i = Q_i R_i`` (thin QR), ``C ← C ×_i R_i``; the small core is truncated by
    ST-HOSVD or HOSVD and ``U_i ← Q_i P_i``. The cost is ``O(Σ_i n_i s_i² + ∏ s_i · Σ s_i)``
    for ranks ``s``, independent of ``∏ n_i``. Since the ``Q_i`` are orthonormal, the error
    on the core is the error on ``Y``.
    """
    out, info = _truncate_tucker(
        as_tucker(Y, "Y"),
        rank,
        rtol=rtol,
        atol=atol,
        max_rank=max_rank,
        min_rank=min_rank,
        method=method,
    )
    return (out, info) if return_info else out
