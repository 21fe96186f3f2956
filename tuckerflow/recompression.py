"""The array-level recompression kernel: truncated (ST-)HOSVD of one tensor.

Every truncation of tuckerflow ends here: :func:`tuckerflow.hosvd` and
:func:`tuckerflow.st_hosvd` of a dense tensor, :func:`tuckerflow.truncate` and
:func:`tuckerflow.add` of a Tucker tensor (on its orthonormalised core),
:func:`tuckerflow.dlra.truncate_core` (the augmented core of the integrators and of TDLRT) and
the decomposition of a layer weight. :func:`recompress` takes an array ``A`` and returns, for
the modes it may truncate, matrices ``P_i`` with orthonormal columns and the core
``A ×_i P_iᴴ``; the caller multiplies its own factors by ``P_i``. The rank rules themselves
live in :mod:`tuckerflow.ranks`.

Numerics shared by all callers
------------------------------
* Non-finite input is refused (``ValueError`` naming the argument) before any LAPACK call.
* Scale safety: ``A`` is multiplied by a power of two that brings ``max |A|`` into
  ``[1/2, 1)`` (exact: no rounding) before anything is squared, and the core is scaled back at
  the end, so that tensors from about ``1e-300`` to ``1e300`` truncate as at unit scale.
* Rank selection by a total tolerance ``ϑ``: ST-HOSVD spends the squared budget mode by
  mode (:func:`tuckerflow.ranks.sequential_budget`); its error is the sum of the discarded
  squares, an identity. HOSVD starts from the same split and then lowers ranks greedily
  while the **exact** error ``‖A − A ×_i P_iP_iᴴ‖`` stays within ``ϑ``: with the full
  singular bases ``W_i`` of the unfoldings, ``G = A ×_i W_iᴴ`` is computed once and the
  error of any ranks ``r`` is ``‖G‖² − ‖G[:r_1, …, :r_d]‖²``, summed in float64 from the
  small end (suffix sums of ``|G|²`` over the discarded slabs, no ``total − kept``
  cancellation, so that tight tolerances in float32 and float64 are resolved). For
  ``d = 2`` this gives the ranks of the matrix SVD truncation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorly as tl
from tensorly.tenalg import mode_dot, multi_mode_dot

from ._backend import astype, check_finite, check_tensor, conj_t, real_dtype_name, scale_pow2
from ._host import to_host
from .linalg import GRAM_SAFETY, SVD_METHODS, _left_singular, _mode_products, _svd
from .ranks import (
    RankSpec,
    _as_int,
    _as_sequence,
    check_spec,
    lower_ranks_greedily,
    select_rank,
    sequential_budget,
)

__all__ = ["TRUNCATION_METHODS", "TruncationInfo", "recompress"]

#: Truncation algorithms of :func:`recompress`.
TRUNCATION_METHODS = ("st_hosvd", "hosvd")

#: The greedy HOSVD refinement reads at most this many prefix sums from the device; a
#: larger search box is narrowed to the ranks closest to the split rule's.
GREEDY_BOX_LIMIT = 1 << 20

_EPS64 = float(np.finfo(np.float64).eps)


@dataclass
class TruncationInfo:
    """What a truncation did, returned with ``return_info=True``.

    Attributes
    ----------
    singular_values : list of numpy arrays
        Per mode (indexed by mode), the singular values of the unfolding that chose the rank
        (of ``X`` for HOSVD, of the partially truncated tensor for ST-HOSVD); None for a mode
        that was not truncated.
    tails : list of float
        Per mode, ``(Σ_{j>r_i} σ_j²)^{1/2}``: the norm discarded in that mode.
    error_bound : float
        For ST-HOSVD ``(Σ_i tails_i²)^{1/2}``, the error up to round-off (an identity). For
        HOSVD with a tolerance the exact error ``‖X − result‖`` computed from the rotated
        core; for HOSVD at fixed ranks the bound ``(Σ_i tails_i²)^{1/2}``.
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


def _to_host(s) -> np.ndarray:
    return to_host(s)


def _choose_rank(s_host, spec: RankSpec, i: int, budget2: float, margin2: float):
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


def _mode_factor(unfolded, spec: RankSpec, i: int, budget2: float, method: str, rng):
    """Factor and rank of one mode: returns (u_full, rank, tail2, s_host, method_used).

    ``method="auto"`` on a wide unfolding tries the Gram path first (one matrix product and
    a small ``eigh``). Its eigenvalues carry an absolute error of about
    ``round2 = m · eps64 · ‖A‖²``; the result is kept only when the error this mode may
    commit (the tolerance budget) or does commit (the tail at a fixed rank) exceeds
    ``GRAM_SAFETY · round2``, so that the Gram path's round-off cannot be seen in the
    result. Otherwise the mode is recomputed by the accurate QR path.
    """
    m, n = tl.shape(unfolded)
    rank_hint = spec.fixed[i] if spec.fixed is not None else spec.max_rank[i]
    if method == "auto" and m < n:
        u, s = _left_singular(unfolded, method="gram")
        s_host = _to_host(s)
        round2 = m * _EPS64 * float(np.sum(s_host**2))
        if spec.by_tolerance:
            if budget2 > GRAM_SAFETY * round2:
                r, tail2 = _choose_rank(s_host, spec, i, budget2, 10.0 * round2)
                return u, r, tail2, s_host, "gram"
        else:
            r, tail2 = _choose_rank(s_host, spec, i, budget2, 0.0)
            if tail2 > GRAM_SAFETY * round2:
                return u, r, tail2, s_host, "gram"
        used = "qr"
    elif method == "auto":
        used = "svd"
    else:
        used = method
    if used == "randomized" and spec.by_tolerance and spec.max_rank[i] >= min(m, n):
        used = "qr"  # a tolerance needs every singular value; nothing caps the rank
    u, s = _left_singular(unfolded, method=used, rank_hint=rank_hint, rng=rng)
    s_host = _to_host(s)
    margin2 = 10.0 * m * _EPS64 * float(np.sum(s_host**2)) if used == "gram" else 0.0
    r, tail2 = _choose_rank(s_host, spec, i, budget2, margin2)
    if used == "randomized":
        # only leading values are known: the tail is what the norm leaves over
        norm2 = float(_to_host(tl.norm(unfolded))) ** 2
        tail2 = max(norm2 - float(np.sum(s_host[:r] ** 2)), 0.0)
    return u, r, tail2, s_host, used


def _make_valid(core, P_list, modes):
    """Exactly lower ranks that break ``r_i ≤ ∏_{j≠i} r_j`` (such unfoldings are deficient)."""
    changed = True
    while changed and tl.ndim(core) > 1:
        changed = False
        for i in modes:
            r = tl.shape(core)
            other = math.prod(r[:i] + r[i + 1 :])
            if r[i] > other:
                u = _svd(tl.unfold(core, i))[0][:, :other]
                P_list[i] = tl.dot(P_list[i], u)
                core = mode_dot(core, conj_t(u), i)
                changed = True
    return core, P_list


def _exact_hosvd_ranks(work, bases, ranks, floors, modes, theta2):
    """Lower HOSVD ranks greedily while the exact error stays within ``theta2``.

    ``bases[i]`` are the full left singular bases of the unfoldings of ``work``. Returns the
    new ranks, the rotated core ``G = work ×_i bases[i]ᴴ`` and the exact squared error at the
    returned ranks.
    """
    modes = sorted(modes)
    lo = [max(floors[i], 1) for i in range(len(ranks))]
    hi = list(ranks)
    # narrow an oversized search box to the ranks next to the split rule's
    while math.prod(hi[i] - lo[i] + 1 for i in modes) > GREEDY_BOX_LIMIT:
        widest = max(modes, key=lambda i: hi[i] - lo[i])
        lo[widest] += (hi[widest] - lo[widest] + 1) // 2
    g = _mode_products(work, [conj_t(b) if i in modes else None for i, b in enumerate(bases)])
    e = tl.abs(g)
    if real_dtype_name(e) != "float64":
        e = astype(e, "float64")
    e = e * e
    table = _host(_error_table(e, modes, lo, hi)).reshape([hi[i] - lo[i] + 1 for i in modes])
    # each entry is a sum of at most N non-negative float64 terms (no cancellation): its
    # relative error is below N · eps64, so the budget is shrunk by that factor
    budget2 = theta2 * (1.0 - 4.0 * math.prod(tl.shape(e)) * _EPS64)

    def error2(r):
        return float(table[tuple(r[m] - lo[m] for m in modes)])

    start = tuple(hi)
    floor = [lo[i] if i in modes else hi[i] for i in range(len(hi))]
    new = start
    if error2(start) <= budget2:
        new = lower_ranks_greedily(start, floor, error2, budget2)
    return list(new), g, _complement2(e, new, modes)


def _host(x) -> np.ndarray:
    return _to_host(tl.reshape(x, (-1,)))


def _error_table(e, modes, lo, hi):
    """``‖G‖² − ‖G[:r_1, …, :r_d]‖²`` for every ``r`` with ``lo ≤ r ≤ hi``, from ``e = |G|²``.

    Computed from the small end, as a sum of non-negative terms (the complement of the
    leading block split into the slabs ``[:r_{m_1}, …, :r_{m_{k-1}}, r_{m_k}:, …]``, each a
    prefix sum in the earlier modes and a suffix sum in mode ``m_k``), never as
    ``total − kept``: an error far below ``‖G‖²`` (a tight tolerance) keeps its relative
    accuracy. Axes of the result follow ``modes`` (sorted); the other modes are summed.
    """
    d = tl.ndim(e)
    others = tuple(j for j in range(d) if j not in modes)
    block = tl.sum(e, axis=others) if others else e
    k = len(modes)
    table = None
    for a, m in enumerate(modes):
        t = block
        if a + 1 < k:
            t = tl.sum(t, axis=tuple(range(a + 1, k)))
        t = t[tuple(slice(0, hi[b]) for b in modes[:a])]
        for ax in range(a):
            t = tl.cumsum(t, axis=ax)
        # suffix sums along axis a, with a zero slot for "keep everything" (r = n)
        t = tl.flip(tl.cumsum(tl.flip(t, axis=a), axis=a), axis=a)
        zshape = list(tl.shape(t))
        zshape[a] = 1
        t = tl.concatenate([t, tl.zeros(tuple(zshape), **tl.context(t))], axis=a)
        window = tuple(slice(lo[b] - 1, hi[b]) for b in modes[:a]) + (slice(lo[m], hi[m] + 1),)
        t = t[window]
        t = tl.reshape(t, tuple(tl.shape(t)) + (1,) * (k - a - 1))
        table = t if table is None else table + t
    return table


def _complement2(e, ranks, modes) -> float:
    """``Σ |G|²`` outside the leading ``ranks`` block, as a sum of non-negative blocks.

    ``Σ_k Σ e[:r_{m_1}, …, :r_{m_{k-1}}, r_{m_k}:, …]``: the exact squared error without the
    cancellation of ``‖G‖² − ‖G[:r]‖²`` (one host transfer).
    """
    d = tl.ndim(e)
    parts = []
    for k, i in enumerate(modes):
        sl = [slice(None)] * d
        for j in modes[:k]:
            sl[j] = slice(0, ranks[j])
        sl[i] = slice(ranks[i], None)
        block = e[tuple(sl)]
        if min(tl.shape(block), default=1) > 0:
            parts.append(tl.reshape(tl.sum(block), (1,)))
    if not parts:
        return 0.0
    return float(np.sum(_to_host(tl.concatenate(parts))))


def _mode_list(value: Any, d: int, name: str, *, distinct: bool = True) -> list[int]:
    """``value`` as a list of mode indices in ``[0, d)`` (distinct ones if ``distinct``)."""
    modes = [
        _as_int(m, f"{name}[{k}]")
        for k, m in enumerate(_as_sequence(value, name, "a sequence of mode indices"))
    ]
    for k, m in enumerate(modes):
        if not 0 <= m < d:
            raise ValueError(f"{name}[{k}]={m} is not a mode of a tensor with {d} modes")
    if distinct and len(set(modes)) != len(modes):
        raise ValueError(f"{name}={modes} repeats a mode")
    return modes


def recompress(
    core: Any,
    spec: RankSpec,
    *,
    method: str = "st_hosvd",
    order: Sequence[int] | None = None,
    modes: Sequence[int] | None = None,
    svd_method: str | Sequence[str] = "auto",
    rng: Any = None,
    name: str = "core",
) -> tuple[Any, list[Any], TruncationInfo]:
    """Truncate the array ``core`` in ``modes`` by ST-HOSVD or HOSVD.

    Parameters
    ----------
    core : tensor
        Array of the active backend (real or complex float), finite (checked).
    spec : RankSpec
        Rank request for ``core``'s shape (:func:`tuckerflow.ranks.rank_spec` makes one;
        checked by :func:`tuckerflow.ranks.check_spec`); caps above ``core``'s shape stand
        for its shape. A tolerance ``atol`` is in the units of ``core``.
    method : {"st_hosvd", "hosvd"}
    order : sequence of int, optional
        Processing order of the modes for ST-HOSVD (default: ``modes`` in increasing order).
    modes : sequence of int, optional
        Distinct modes that may be truncated (default: all); the others are left alone.
    svd_method : str or one str per mode
        Factorisation path of each unfolding, one of ``tuckerflow.linalg.SVD_METHODS``.
    rng : None, int or numpy.random.Generator
        Seed of the randomized path.
    name : str
        Name of ``core`` in error messages.

    Returns
    -------
    new_core : tensor
        ``core ×_{i ∈ modes} P_iᴴ``, of valid multilinear rank in ``modes``.
    P_list : list
        ``P_i`` (``core.shape[i] × r_i``, orthonormal columns, deterministic signs) for the
        truncated modes, None for the others.
    info : TruncationInfo
        In the units of ``core``.
    """
    check_tensor(core, name)
    if method not in TRUNCATION_METHODS:
        raise ValueError(f"method={method!r} is not one of {TRUNCATION_METHODS}")
    d = tl.ndim(core)
    check_spec(spec, tuple(tl.shape(core)))
    modes = list(range(d)) if modes is None else _mode_list(modes, d, "modes")
    order = list(modes) if order is None else _mode_list(order, d, "order", distinct=False)
    if sorted(order) != sorted(modes):
        raise ValueError(f"order={order} must be a permutation of the modes {modes}")
    if isinstance(svd_method, str):
        policy = [svd_method] * d
    else:
        policy = _as_sequence(svd_method, "svd_method", f"a str or a sequence of {d} str")
        if len(policy) != d:
            raise ValueError(f"svd_method has {len(policy)} entries but {name} has {d} modes")
    for p in policy:
        if p not in SVD_METHODS:
            raise ValueError(f"method={p!r} is not one of {SVD_METHODS}")
    top = check_finite(core, name)
    # an exact power of two brings max|A| into [1/2, 1): nothing below squares out of range
    exponent = math.frexp(top)[1] if top > 0 else 0
    work = scale_pow2(core, -exponent)
    unit = math.ldexp(1.0, exponent)
    info = TruncationInfo(order=list(order))
    info.singular_values, info.tails, info.methods = [None] * d, [0.0] * d, [None] * d
    P_list: list = [None] * d
    if not modes:
        return core, P_list, info
    explicit = all(policy[i] in ("svd", "qr", "gram") for i in modes)
    pairs = {}
    if method == "hosvd" and explicit:
        # every mode factors an unfolding of A itself: all factorisations first, then the
        # norm and every singular value reach the host in one transfer (one device sync)
        pairs = {i: _left_singular(tl.unfold(work, i), method=policy[i]) for i in modes}
        parts = [tl.reshape(tl.norm(work), (1,))] + [pairs[i][1] for i in modes]
        host = _to_host(tl.concatenate(parts))
        norm_w, pos, s_of = float(host[0]), 1, {}
        for i in modes:
            k = tl.shape(pairs[i][1])[0]
            s_of[i] = host[pos : pos + k]
            pos += k
    else:
        norm_w = float(_to_host(tl.norm(work))) if spec.by_tolerance else 0.0
    theta = None  # in the units of the scaled array (atol is in the caller's)
    if spec.by_tolerance:
        cands = [] if spec.atol is None else [spec.atol / unit]
        theta = min(cands + ([] if spec.rtol is None else [spec.rtol * norm_w]))
    info.tolerance = None if theta is None else theta * unit
    if theta is not None:
        # a tolerance above ‖A‖ allows discarding everything; capping it keeps ϑ² finite
        # for an atol far above the (unit-scaled) tensor
        theta = min(theta, 2.0 * norm_w)
    used2 = 0.0
    t = work
    bases: list[Any] = [None] * d
    ranks = list(tl.shape(work))
    for k, i in enumerate(order):
        budget2 = sequential_budget(theta, used2, len(order) - k)
        if i in pairs:
            u, _ = pairs[i]
            s_host = s_of[i]
            used = policy[i]
            margin2 = 10.0 * ranks[i] * _EPS64 * norm_w**2 if used == "gram" else 0.0
            r, tail2 = _choose_rank(s_host, spec, i, budget2, margin2)
        else:
            u, r, tail2, s_host, used = _mode_factor(
                tl.unfold(t, i), spec, i, budget2, policy[i], rng
            )
        bases[i] = u
        P_list[i] = u[:, :r]
        ranks[i] = r
        if method == "st_hosvd":
            t = mode_dot(t, conj_t(P_list[i]), i)
        used2 += tail2
        info.singular_values[i], info.tails[i], info.methods[i] = s_host, tail2, used
    error2 = used2
    g = None
    if method == "hosvd" and theta is not None and "randomized" not in info.methods:
        # lower bound of each rank: its own tail alone must fit the whole budget
        floors = list(ranks)
        for i in modes:
            floors[i] = select_rank(
                info.singular_values[i],
                theta**2,
                min_rank=spec.min_rank[i],
                max_rank=spec.max_rank[i],
            )[0]
        new, g, error2 = _exact_hosvd_ranks(work, bases, ranks, floors, modes, theta**2)
        for i in modes:
            ranks[i] = new[i]
            P_list[i] = bases[i][:, : new[i]]
            s_i = np.asarray(info.singular_values[i])
            info.tails[i] = float(np.sum(s_i[new[i] :] ** 2))
    if method == "st_hosvd":
        out = t
    elif g is not None:
        out = g[tuple(slice(0, ranks[i]) if i in modes else slice(None) for i in range(d))]
    else:
        out = multi_mode_dot(work, [conj_t(P_list[i]) for i in modes], modes=modes)
    out, P_list = _make_valid(out, P_list, modes)
    info.error_bound = math.sqrt(error2) * unit
    info.tails = [math.sqrt(t2) * unit for t2 in info.tails]
    info.singular_values = [None if s is None else s * unit for s in info.singular_values]
    return scale_pow2(out, exponent), P_list, info
