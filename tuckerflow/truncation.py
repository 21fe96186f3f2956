"""HOSVD, sequentially truncated HOSVD and recompression of Tucker tensors.

Rank selection follows one rule everywhere (the integrators and the optimizer reuse it):
for mode ``i`` with singular values ``σ_1 ≥ σ_2 ≥ …`` of the relevant unfolding, keep the
smallest ``ρ`` with ``(Σ_{j>ρ} σ_j²)^{1/2} ≤ ϑ_i``. The total budget ``ϑ`` (from ``atol`` and
``rtol``) is spent mode by mode: mode ``k`` (in processing order) may discard
``ϑ_k² = (ϑ² − Σ_{j<k} discarded_j²) / (d − k)``. This never discards more than ``ϑ/√d`` per
mode in the worst case and guarantees ``‖X − result‖_F ≤ ϑ`` for both HOSVD
(``‖X − X_H‖² ≤ Σ_i tail_i²``) and ST-HOSVD (``‖X − X_ST‖² = Σ_i tail_i²``).

References
----------
.. [DDV00] L. De Lathauwer, B. De Moor, J. Vandewalle, "A multilinear singular value
   decomposition", SIAM J. Matrix Anal. Appl. 21(4), 2000.
.. [VVM12] N. Vannieuwenhoven, R. Vandebril, K. Meerbergen, "A new truncation strategy for
   the higher-order singular value decomposition", SIAM J. Sci. Comput. 34(2), 2012.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import tensorly as tl
from tensorly.tenalg import mode_dot, multi_mode_dot

from ._backend import check_finite, check_tensor, conj_t
from .linalg import GRAM_SAFETY, SVD_METHODS, left_singular, svd
from .tucker import TuckerTensor, as_tucker

__all__ = [
    "TruncationInfo",
    "hosvd",
    "largest_valid_rank",
    "select_rank",
    "st_hosvd",
    "truncate",
    "validate_rank",
]


@dataclass
class TruncationInfo:
    """What a truncation did, returned with ``return_info=True``.

    Attributes
    ----------
    singular_values : list of numpy arrays
        Per mode (indexed by mode), the singular values of the unfolding that chose the rank
        (of ``X`` for HOSVD, of the partially truncated tensor for ST-HOSVD).
    tails : list of float
        Per mode, ``(Σ_{j>r_i} σ_j²)^{1/2}``: the norm discarded in that mode.
    error_bound : float
        ``(Σ_i tails_i²)^{1/2}``: an upper bound of ``‖X − result‖`` for HOSVD and, up to
        round-off, its exact value for ST-HOSVD.
    tolerance : float or None
        The total tolerance ``ϑ`` that was requested (None for fixed ranks).
    order : list of int
        Order in which the modes were processed.
    methods : list of str
        Factorisation path used per mode (see :func:`tuckerflow.linalg.left_singular`).
    """

    singular_values: list = field(default_factory=list)
    tails: list = field(default_factory=list)
    error_bound: float = 0.0
    tolerance: float | None = None
    order: list = field(default_factory=list)
    methods: list = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# argument checking


def _per_mode(value, d, name):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return [int(value)] * d
    try:
        vals = [int(v) for v in value]
    except TypeError:
        raise TypeError(f"{name} must be an int or one int per mode, got {value!r}") from None
    if len(vals) != d:
        raise ValueError(f"{name} has {len(vals)} entries but the tensor has {d} modes")
    if any(int(v) != v for v in value):
        raise TypeError(f"{name} must hold integers, got {value!r}")
    return vals


def validate_rank(shape, rank, name="rank"):
    """Check that ``rank`` is a valid multilinear rank for ``shape`` and return it as a tuple.

    A multilinear rank ``r`` of a tensor of shape ``n`` exists iff ``1 ≤ r_i ≤ n_i`` and
    ``r_i ≤ ∏_{j≠i} r_j`` for every mode ``i``.

    Raises
    ------
    ValueError
        Naming the first violated relation, e.g. ``rank[2]=9 exceeds shape[2]=7``.
    """
    d = len(shape)
    r = _per_mode(rank, d, name)
    for i, (ri, ni) in enumerate(zip(r, shape)):
        if ri < 1:
            raise ValueError(f"{name}[{i}]={ri} must be at least 1")
        if ri > ni:
            raise ValueError(f"{name}[{i}]={ri} exceeds shape[{i}]={ni}")
    if d > 1:
        for i, ri in enumerate(r):
            other = math.prod(r[:i] + r[i + 1 :])
            if ri > other:
                raise ValueError(
                    f"{name}[{i}]={ri} exceeds the product of the other ranks ({other}); "
                    "no tensor has this multilinear rank"
                )
    return tuple(r)


def largest_valid_rank(rank):
    """Largest multilinear rank ``≤ rank`` (entrywise) that satisfies ``r_i ≤ ∏_{j≠i} r_j``.

    Entries are lowered to the product of the others until none exceeds it; each pass only
    lowers entries, so the loop ends.

    Examples
    --------
    >>> largest_valid_rank((9, 2, 3))
    (6, 2, 3)
    """
    r = [int(v) for v in rank]
    changed = True
    while changed and len(r) > 1:
        changed = False
        for i in range(len(r)):
            other = math.prod(r[:i] + r[i + 1 :])
            if r[i] > other:
                r[i] = other
                changed = True
    return tuple(r)


def _check_tol(value, name):
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


@dataclass
class _RankSpec:
    fixed: tuple | None
    rtol: float | None
    atol: float | None
    min_rank: list
    max_rank: list

    @property
    def by_tolerance(self):
        return self.rtol is not None or self.atol is not None

    def theta(self, norm_x):
        cands = []
        if self.atol is not None:
            cands.append(self.atol)
        if self.rtol is not None:
            cands.append(self.rtol * norm_x)
        return min(cands) if cands else None


def _rank_spec(shape, rank, rtol, atol, max_rank, min_rank):
    d = len(shape)
    rtol = _check_tol(rtol, "rtol")
    atol = _check_tol(atol, "atol")
    if rank is not None and (rtol is not None or atol is not None):
        raise ValueError(
            "give either rank (fixed ranks) or a tolerance (rtol/atol), not both; "
            "to cap ranks chosen by a tolerance use max_rank"
        )
    fixed = validate_rank(shape, rank) if rank is not None else None
    if rank is not None and max_rank is not None:
        caps = _per_mode(max_rank, d, "max_rank")
        bad = [i for i in range(d) if fixed[i] > caps[i]]
        if bad:
            i = bad[0]
            raise ValueError(f"rank[{i}]={fixed[i]} exceeds max_rank[{i}]={caps[i]}")
    hi = list(shape) if max_rank is None else _per_mode(max_rank, d, "max_rank")
    lo = [1] * d if min_rank is None else _per_mode(min_rank, d, "min_rank")
    for i in range(d):
        if hi[i] < 1:
            raise ValueError(f"max_rank[{i}]={hi[i]} must be at least 1")
        if lo[i] < 1:
            raise ValueError(f"min_rank[{i}]={lo[i]} must be at least 1")
        if lo[i] > shape[i]:
            raise ValueError(f"min_rank[{i}]={lo[i]} exceeds shape[{i}]={shape[i]}")
        if lo[i] > hi[i]:
            raise ValueError(f"min_rank[{i}]={lo[i]} exceeds max_rank[{i}]={hi[i]}")
        hi[i] = min(hi[i], shape[i])
    if min_rank is not None:
        validate_rank(shape, lo, "min_rank")
    return _RankSpec(fixed, rtol, atol, lo, hi)


def select_rank(s, budget2, *, min_rank=1, max_rank=None, margin2=0.0):
    """Smallest ``ρ`` with ``Σ_{j≥ρ} s_j² + margin2 ≤ budget2``, clamped to the rank bounds.

    Parameters
    ----------
    s : 1-D numpy array, singular values in descending order
    budget2 : float
        Squared error this mode may discard.
    margin2 : float
        Safety margin for round-off in ``s`` (used with the Gram path).

    Returns
    -------
    rank : int
    tail2 : float
        ``Σ_{j≥rank} s_j²``, the squared norm actually discarded.
    """
    s = np.asarray(s, dtype=np.float64)
    p = s.size
    # suffix sums of squares, accurate (no cancellation): tail2[k] = sum_{j>=k} s_j^2
    tail2 = np.concatenate([np.cumsum((s**2)[::-1])[::-1], [0.0]])
    ok = np.nonzero(tail2 + margin2 <= budget2)[0]
    rho = int(ok[0]) if ok.size else p
    hi = p if max_rank is None else min(max_rank, p)
    rho = max(min(rho, hi), min(min_rank, p))
    return rho, float(tail2[rho])


def _to_host(s):
    return np.asarray(tl.to_numpy(s), dtype=np.float64)


# --------------------------------------------------------------------------------------------
# exact reduction to a valid multilinear rank


def _make_valid(core, factors):
    """Reduce ranks violating ``r_i ≤ ∏_{j≠i} r_j`` (exact: such unfoldings are rank-deficient)."""
    factors = list(factors)
    d = len(factors)
    changed = True
    while changed and d > 1:
        changed = False
        for i in range(d):
            r = tl.shape(core)
            other = math.prod(r[:i] + r[i + 1 :])
            if r[i] > other:
                u, s, vh = svd(tl.unfold(core, i))
                u = u[:, :other]
                factors[i] = tl.dot(factors[i], u)
                core = mode_dot(core, conj_t(u), i)
                changed = True
    return core, factors


# --------------------------------------------------------------------------------------------
# public API


def _check_dense(x, name="X"):
    check_tensor(x, name)
    if tl.ndim(x) < 1:
        raise ValueError(f"{name} must have at least one mode, got a 0-d array")
    if any(n < 1 for n in tl.shape(x)):
        raise ValueError(f"{name} has an empty mode: shape {tuple(tl.shape(x))}")
    check_finite(x, name)


def _check_method(method):
    if method not in SVD_METHODS:
        raise ValueError(f"method={method!r} is not one of {SVD_METHODS}")


def _default_order(shape, spec):
    target = spec.fixed if spec.fixed is not None else spec.max_rank
    d = len(shape)
    # largest reduction first: later (costlier-per-entry) SVDs act on the smallest tensors
    return sorted(range(d), key=lambda i: (-shape[i] / target[i], -shape[i], i))


def _choose_rank(s_host, spec, i, budget2, margin2):
    """Rank and discarded squared norm of mode ``i`` from its singular values."""
    if spec.fixed is not None:
        r = min(spec.fixed[i], s_host.size)
    elif spec.by_tolerance:
        return select_rank(
            s_host, budget2, min_rank=spec.min_rank[i], max_rank=spec.max_rank[i], margin2=margin2
        )
    else:
        r = min(max(spec.max_rank[i], spec.min_rank[i]), s_host.size)
    return r, float(np.sum(s_host[r:] ** 2))


def _mode_factor(unfolded, spec, i, budget2, method, rng):
    """Factor and rank of one mode: returns (u_r, rank, tail2, s_host, method_used).

    ``method="auto"`` on a wide unfolding tries the Gram path first (one matrix product and
    a small ``eigh``). Its eigenvalues carry an absolute error of about
    ``round2 = m · eps64 · ‖A‖²``; the result is kept only when the error this mode may
    commit (the tolerance budget) or does commit (the tail at a fixed rank) exceeds
    ``GRAM_SAFETY · round2``, so that the Gram path's round-off cannot be seen in the
    result. Otherwise the mode is recomputed by the accurate QR path.
    """
    m, n = tl.shape(unfolded)
    rank_hint = spec.fixed[i] if spec.fixed is not None else spec.max_rank[i]
    eps64 = float(np.finfo(np.float64).eps)
    if method == "auto" and m < n:
        u, s = left_singular(unfolded, method="gram")
        s_host = _to_host(s)
        round2 = m * eps64 * float(np.sum(s_host**2))
        if spec.by_tolerance:
            if budget2 > GRAM_SAFETY * round2:
                r, tail2 = _choose_rank(s_host, spec, i, budget2, 10.0 * round2)
                return u[:, :r], r, tail2, s_host, "gram"
        else:
            r, tail2 = _choose_rank(s_host, spec, i, budget2, 0.0)
            if tail2 > GRAM_SAFETY * round2:
                return u[:, :r], r, tail2, s_host, "gram"
        used = "qr"
    elif method == "auto":
        used = "svd"
    else:
        used = method
    if used == "randomized" and spec.by_tolerance and spec.max_rank[i] >= min(m, n):
        used = "qr"  # a tolerance needs every singular value; nothing caps the rank
    u, s = left_singular(unfolded, method=used, rank_hint=rank_hint, rng=rng)
    s_host = _to_host(s)
    margin2 = 10.0 * m * eps64 * float(np.sum(s_host**2)) if used == "gram" else 0.0
    r, tail2 = _choose_rank(s_host, spec, i, budget2, margin2)
    if used == "randomized":
        # only leading values are known: the tail is what the norm leaves over
        norm2 = float(_to_host(tl.norm(unfolded))) ** 2
        tail2 = max(norm2 - float(np.sum(s_host[:r] ** 2)), 0.0)
    return u[:, :r], r, tail2, s_host, used


def _budget(theta, used2, remaining_modes):
    if theta is None:
        return math.inf
    return max(theta**2 - used2, 0.0) / remaining_modes


def hosvd(
    X,
    rank=None,
    *,
    rtol=None,
    atol=None,
    max_rank=None,
    min_rank=None,
    method="auto",
    rng=None,
    return_info=False,
):
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
    spec = _rank_spec(shape, rank, rtol, atol, max_rank, min_rank)
    theta = spec.theta(float(_to_host(tl.norm(X)))) if spec.by_tolerance else None
    out, info = _hosvd_core(X, spec, theta, method, rng)
    return (out, info) if return_info else out


def _hosvd_core(X, spec, theta, method, rng):
    d = tl.ndim(X)
    factors = [None] * d
    info = TruncationInfo(tolerance=theta, order=list(range(d)))
    info.singular_values, info.tails, info.methods = [None] * d, [0.0] * d, [None] * d
    used2 = 0.0
    for i in range(d):
        budget2 = _budget(theta, used2, d - i)
        u, _, tail2, s_host, used = _mode_factor(tl.unfold(X, i), spec, i, budget2, method, rng)
        factors[i] = u
        used2 += tail2
        info.singular_values[i], info.tails[i], info.methods[i] = s_host, math.sqrt(tail2), used
    core = multi_mode_dot(X, [conj_t(u) for u in factors])
    core, factors = _make_valid(core, factors)
    info.error_bound = math.sqrt(used2)
    return TuckerTensor(core, factors), info


def st_hosvd(
    X,
    rank=None,
    *,
    rtol=None,
    atol=None,
    max_rank=None,
    min_rank=None,
    method="auto",
    order=None,
    rng=None,
    return_info=False,
):
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
    spec = _rank_spec(shape, rank, rtol, atol, max_rank, min_rank)
    if order is None:
        order = _default_order(shape, spec)
    else:
        order = [int(o) for o in order]
        if sorted(order) != list(range(d)):
            raise ValueError(f"order={order} must be a permutation of range({d})")
    theta = spec.theta(float(_to_host(tl.norm(X)))) if spec.by_tolerance else None
    return _st_hosvd_core(X, spec, order, theta, method, rng, return_info)


def _st_hosvd_core(X, spec, order, theta, method, rng, return_info):
    d = tl.ndim(X)
    factors = [None] * d
    info = TruncationInfo(tolerance=theta, order=list(order))
    info.singular_values, info.tails, info.methods = [None] * d, [0.0] * d, [None] * d
    used2 = 0.0
    t = X
    for k, i in enumerate(order):
        budget2 = _budget(theta, used2, d - k)
        u, _, tail2, s_host, used = _mode_factor(tl.unfold(t, i), spec, i, budget2, method, rng)
        t = mode_dot(t, conj_t(u), i)
        factors[i] = u
        used2 += tail2
        info.singular_values[i], info.tails[i], info.methods[i] = s_host, math.sqrt(tail2), used
    core, factors = _make_valid(t, factors)
    info.error_bound = math.sqrt(used2)
    out = TuckerTensor(core, factors)
    return (out, info) if return_info else out


def truncate(
    Y,
    rank=None,
    *,
    rtol=None,
    atol=None,
    max_rank=None,
    min_rank=None,
    method="st_hosvd",
    return_info=False,
):
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
    Y = as_tucker(Y, "Y")
    if method not in ("st_hosvd", "hosvd"):
        raise ValueError(f"method={method!r} is not one of ('st_hosvd', 'hosvd')")
    shape = tuple(Y.shape)
    for i, u in enumerate(Y.factors):
        check_finite(u, f"Y.factors[{i}]")
    check_finite(Y.core, "Y.core")
    spec = _rank_spec(shape, rank, rtol, atol, max_rank, min_rank)
    qs, rs = zip(*(tl.qr(u) for u in Y.factors))
    core = multi_mode_dot(Y.core, list(rs))
    cshape = tuple(tl.shape(core))
    # ranks cannot exceed the (possibly smaller) orthonormalised core
    inner_spec = _RankSpec(
        None if spec.fixed is None else tuple(min(a, b) for a, b in zip(spec.fixed, cshape)),
        spec.rtol,
        spec.atol,
        [min(a, b) for a, b in zip(spec.min_rank, cshape)],
        [min(a, b) for a, b in zip(spec.max_rank, cshape)],
    )
    if spec.fixed is not None and any(a > b for a, b in zip(spec.fixed, cshape)):
        i = next(i for i in range(len(shape)) if spec.fixed[i] > cshape[i])
        raise ValueError(
            f"rank[{i}]={spec.fixed[i]} exceeds the rank of Y in mode {i} ({cshape[i]})"
        )
    theta = inner_spec.theta(float(_to_host(tl.norm(core)))) if spec.by_tolerance else None
    if method == "st_hosvd":
        order = _default_order(cshape, inner_spec)
        small, info = _st_hosvd_core(core, inner_spec, order, theta, "svd", None, True)
    else:
        small, info = _hosvd_core(core, inner_spec, theta, "svd", None)
    factors = [tl.dot(q, p) for q, p in zip(qs, small.factors)]
    out = TuckerTensor(small.core, factors)
    return (out, info) if return_info else out
