"""Rules for multilinear ranks: validation, the largest valid rank, and error-budget selection.

Every function of tuckerflow that takes, clamps or chooses a multilinear rank goes through
this module, so that the rules below are written once.

* **Validity.** A multilinear rank ``r`` of a tensor of shape ``n`` exists iff
  ``1 ≤ r_i ≤ n_i`` and ``r_i ≤ ∏_{j≠i} r_j`` for every mode ``i``
  (:func:`validate_rank`, :func:`largest_valid_rank`).
* **Selection by tolerance, per mode.** With the singular values ``σ_1 ≥ σ_2 ≥ …`` of the
  relevant unfolding, keep the smallest ``ρ`` with ``Σ_{j>ρ} σ_j² ≤ budget`` (:func:`select_rank`).
* **Splitting a total budget ϑ² over modes.** Sequentially truncated HOSVD spends it mode by
  mode, ``ϑ_k² = (ϑ² − Σ_{j<k} tail_j²) / (m − k)`` (:func:`sequential_budget`); its error is
  the sum of the tails, an identity. For HOSVD that sum only bounds the error from above (for
  ``d = 2`` it counts the discarded singular values of the matrix twice), so HOSVD starts from
  the ranks of the split rule and lowers them greedily while the *exact* error of the
  truncation stays within ``ϑ`` (:func:`lower_ranks_greedily`, see
  :mod:`tuckerflow.recompression`).

All functions here work on host numbers (Python ints and floats, NumPy arrays); nothing here
touches a tensor backend.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "RankSpec",
    "check_spec",
    "check_tolerance",
    "default_order",
    "invalid_mode",
    "largest_valid_rank",
    "lower_ranks_certainly",
    "lower_ranks_greedily",
    "PreparedTails",
    "per_mode",
    "prepare_tails",
    "rank_spec",
    "select_prepared",
    "select_rank",
    "sequential_budget",
    "validate_rank",
]


def _as_int(v, where: str) -> int:
    """``v`` as an int if it is an integer (Python or NumPy, not bool); TypeError otherwise."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{where} must be an integer, got {v!r} ({type(v).__name__})")
    return int(v)


def _as_sequence(value: Any, name: str, what: str) -> list[Any]:
    """``value`` as a list if it is a sequence (not a string); TypeError otherwise."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    return list(value)


def _check_shape(shape: Any, name: str = "shape") -> tuple[int, ...]:
    """``shape`` as a tuple of ints ``≥ 0``: a sequence of integers (Python or NumPy)."""
    out = tuple(
        _as_int(n, f"{name}[{i}]")
        for i, n in enumerate(_as_sequence(shape, name, "a sequence of ints"))
    )
    for i, n in enumerate(out):
        if n < 0:
            raise ValueError(f"{name}[{i}]={n} must be at least 0")
    return out


def _check_real(value: Any, name: str, *, allow_inf: bool = False) -> float:
    """``value`` as a float: a real number (not bool), not NaN, finite unless ``allow_inf``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    v = float(value)
    if math.isnan(v) or (not allow_inf and math.isinf(v)):
        kind = "a number (not NaN)" if allow_inf else "a finite number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return v


def per_mode(
    value: Any, d: int, name: str, *, allow_none: bool = False, minimum: int | None = None
) -> list[Any]:
    """``value`` (an int, or one int per mode) as a list of ``d`` ints.

    With ``allow_none=True`` a ``None`` entry is kept (it means "no bound" to the caller).
    Floats, NaN, strings and booleans are refused with a ``TypeError``: nothing is rounded.
    With ``minimum``, an entry below it is refused with a ``ValueError`` naming it.
    """
    d = _as_int(d, "d")
    if d < 0:
        raise ValueError(f"d={d} (the number of modes) must be at least 0")
    out: list[int | None] = []
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        out = [int(value)] * d
    elif isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be an int or a sequence of {d} ints, got {value!r}")
    else:
        vals = list(value)
        if len(vals) != d:
            raise ValueError(f"{name} has {len(vals)} entries but the tensor has {d} modes")
        for i, v in enumerate(vals):
            if v is None and allow_none:
                out.append(None)
            else:
                out.append(_as_int(v, f"{name}[{i}]"))
    if minimum is not None:
        for i, v in enumerate(out):
            if v is not None and v < minimum:
                raise ValueError(f"{name}[{i}]={v} must be at least {minimum}")
    return out


def validate_rank(shape: Sequence[int], rank: Any, name: str = "rank") -> tuple[int, ...]:
    """Check that ``rank`` is a valid multilinear rank for ``shape`` and return it as a tuple.

    A multilinear rank ``r`` of a tensor of shape ``n`` exists iff ``1 ≤ r_i ≤ n_i`` and
    ``r_i ≤ ∏_{j≠i} r_j`` for every mode ``i``.

    Raises
    ------
    ValueError
        Naming the first violated relation, e.g. ``rank[2]=9 exceeds shape[2]=7``.
    TypeError
        If an entry is not an integer.

    Examples
    --------
    >>> validate_rank((4, 3, 2), 2)
    (2, 2, 2)
    """
    shape = _check_shape(shape)
    d = len(shape)
    r = per_mode(rank, d, name)
    for i, (ri, ni) in enumerate(zip(r, shape)):
        if ri < 1:
            raise ValueError(f"{name}[{i}]={ri} must be at least 1")
        if ri > ni:
            raise ValueError(f"{name}[{i}]={ri} exceeds shape[{i}]={ni}")
    bad = invalid_mode(r)
    if bad is not None:
        i, other = bad
        raise ValueError(
            f"{name}[{i}]={r[i]} exceeds the product of the other ranks ({other}); "
            "no tensor has this multilinear rank"
        )
    return tuple(r)


def _modes_of(modes: Any, d: int) -> list[int]:
    """``modes`` (None: all ``d``) as a list of mode indices, each checked to be in ``0..d-1``."""
    if modes is None:
        return list(range(d))
    if isinstance(modes, (str, bytes)) or not isinstance(modes, Iterable):
        raise TypeError(f"modes must be None or a sequence of mode indices, got {modes!r}")
    out = [_as_int(i, "modes entry") for i in modes]
    for i in out:
        if not 0 <= i < d:
            raise ValueError(f"modes entry {i} is not a mode of a rank of {d} entries")
    return out


def invalid_mode(rank: Sequence[int], modes: Iterable[int] | None = None) -> tuple[int, int] | None:
    """The first mode ``i`` (of ``modes``, default all) with ``r_i > ∏_{j≠i} r_j``, and that
    product, or None where no tensor of ``rank``'s shape is ruled out by the rule.

    A tensor of one mode has any rank; callers raise their own error from the pair.

    Examples
    --------
    >>> invalid_mode((9, 2, 3))
    (0, 6)
    >>> invalid_mode((6, 2, 3)) is None
    True
    """
    if isinstance(rank, (str, bytes)) or not isinstance(rank, (Sequence, np.ndarray)):
        raise TypeError(f"rank must be a sequence of ints, got {rank!r}")
    r = [_as_int(v, f"rank[{i}]") for i, v in enumerate(rank)]
    checked = _modes_of(modes, len(r))
    if len(r) < 2:
        return None
    for i in checked:
        other = math.prod(r[:i] + r[i + 1 :])
        if r[i] > other:
            return i, other
    return None


def largest_valid_rank(rank: Sequence[int], modes: Iterable[int] | None = None) -> tuple[int, ...]:
    """Largest multilinear rank ``≤ rank`` (entrywise) that satisfies ``r_i ≤ ∏_{j≠i} r_j``.

    Entries must be integers ``≥ 1``. Entries are lowered to the product of the others until
    none exceeds it; each pass only lowers entries and every entry stays ``≥ 1``, so the loop
    ends (after at most ``Σ r_i`` passes). With ``modes``, only those entries are lowered (the
    others are sizes kept full; the result may then still break the rule in another mode,
    which :func:`invalid_mode` tells).

    Examples
    --------
    >>> largest_valid_rank((9, 2, 3))
    (6, 2, 3)
    """
    if isinstance(rank, (str, bytes)) or not isinstance(rank, (Sequence, np.ndarray)):
        raise TypeError(f"rank must be a sequence of ints, got {rank!r}")
    r = [_as_int(v, f"rank[{i}]") for i, v in enumerate(rank)]
    for i, v in enumerate(r):
        if v < 1:
            raise ValueError(f"rank[{i}]={v} must be at least 1")
    lowered = _modes_of(modes, len(r))
    changed = True
    while changed and len(r) > 1:
        changed = False
        for i in lowered:
            other = math.prod(r[:i] + r[i + 1 :])
            if r[i] > other:
                r[i] = other
                changed = True
    return tuple(r)


def check_tolerance(value: Any, name: str) -> float | None:
    """``value`` as a float ``≥ 0`` (None passes through).

    Only real numbers are accepted (Python or NumPy; not bool, not strings): ``rtol="0.1"`` is
    a ``TypeError``, NaN, inf and negative values a ``ValueError``.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


@dataclass
class RankSpec:
    """What a truncation is asked for, validated once (see :func:`rank_spec`).

    Attributes
    ----------
    fixed : tuple of int or None
        Fixed ranks (exclusive with a tolerance).
    rtol, atol : float or None
        Relative and absolute tolerance; the total tolerance is ``min(atol, rtol · ‖X‖)``.
    min_rank, max_rank : list of int
        Per-mode floor and cap.
    """

    fixed: tuple | None
    rtol: float | None
    atol: float | None
    min_rank: list = field(default_factory=list)
    max_rank: list = field(default_factory=list)

    @property
    def by_tolerance(self) -> bool:
        return self.rtol is not None or self.atol is not None

    def theta(self, norm_x: float) -> float | None:
        """The total tolerance ``ϑ = min(atol, rtol · norm_x)`` (None without a tolerance)."""
        cands = []
        if self.atol is not None:
            cands.append(self.atol)
        if self.rtol is not None:
            cands.append(self.rtol * norm_x)
        return min(cands) if cands else None

    def clamped(self, shape: Sequence[int]) -> RankSpec:
        """The same request with caps, floors and fixed ranks clamped to ``shape``."""
        return RankSpec(
            None if self.fixed is None else tuple(min(a, b) for a, b in zip(self.fixed, shape)),
            self.rtol,
            self.atol,
            [min(a, b) for a, b in zip(self.min_rank, shape)],
            [min(a, b) for a, b in zip(self.max_rank, shape)],
        )


def rank_spec(
    shape: Sequence[int],
    rank: Any = None,
    rtol: Any = None,
    atol: Any = None,
    max_rank: Any = None,
    min_rank: Any = None,
) -> RankSpec:
    """Validate the rank arguments of a truncation of a tensor of ``shape``.

    ``rank`` (fixed ranks, valid for ``shape``) excludes ``rtol``/``atol``; ``max_rank`` and
    ``min_rank`` (int or one int per mode, ``1 ≤ min_rank ≤ max_rank``, ``min_rank ≤ shape``)
    bound the ranks a tolerance chooses. Caps above ``shape`` are clamped to it.
    """
    shape = _check_shape(shape)
    d = len(shape)
    rtol = check_tolerance(rtol, "rtol")
    atol = check_tolerance(atol, "atol")
    if rank is not None and (rtol is not None or atol is not None):
        raise ValueError(
            "give either rank (fixed ranks) or a tolerance (rtol/atol), not both; "
            "to cap ranks chosen by a tolerance use max_rank"
        )
    fixed = validate_rank(shape, rank) if rank is not None else None
    if rank is not None and max_rank is not None:
        caps = per_mode(max_rank, d, "max_rank")
        bad = [i for i in range(d) if fixed[i] > caps[i]]  # type: ignore[index]
        if bad:
            i = bad[0]
            raise ValueError(f"rank[{i}]={fixed[i]} exceeds max_rank[{i}]={caps[i]}")  # type: ignore[index]
    hi = list(shape) if max_rank is None else per_mode(max_rank, d, "max_rank")
    lo = [1] * d if min_rank is None else per_mode(min_rank, d, "min_rank")
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
    return RankSpec(fixed, rtol, atol, lo, hi)


def check_spec(spec: Any, shape: Sequence[int], name: str = "spec") -> RankSpec:
    """Check that ``spec`` is a :class:`RankSpec` that a tensor of ``shape`` can be truncated
    by, and return it.

    Its tolerances pass :func:`check_tolerance`; a fixed rank (exclusive with a tolerance) has
    one integer ``1 ≤ r_i ≤ n_i`` per mode; ``min_rank`` and ``max_rank`` hold one integer
    ``≥ 1`` per mode (a cap above ``n_i`` stands for ``n_i``). :func:`rank_spec` makes such
    requests; this check is for one built by hand.

    Raises
    ------
    TypeError
        If ``spec`` is no :class:`RankSpec` or an entry is not an integer.
    ValueError
        Naming the first violated relation, e.g. ``spec.max_rank has 2 entries but the tensor
        has 3 modes``.
    """
    if not isinstance(spec, RankSpec):
        raise TypeError(f"{name} must be a RankSpec (see rank_spec), got {spec!r}")
    shape = _check_shape(shape)
    d = len(shape)
    check_tolerance(spec.rtol, f"{name}.rtol")
    check_tolerance(spec.atol, f"{name}.atol")
    if spec.fixed is not None:
        if spec.by_tolerance:
            raise ValueError(f"{name} gives both fixed ranks and a tolerance (rtol/atol)")
        fixed = per_mode(spec.fixed, d, f"{name}.fixed")
        for i, (r, n) in enumerate(zip(fixed, shape)):
            if not 1 <= r <= n:
                raise ValueError(f"{name}.fixed[{i}]={r} must lie in [1, shape[{i}]={n}]")
    for label in ("min_rank", "max_rank"):
        for i, v in enumerate(per_mode(getattr(spec, label), d, f"{name}.{label}")):
            if v < 1:
                raise ValueError(f"{name}.{label}[{i}]={v} must be at least 1")
    return spec


def default_order(shape: Sequence[int], spec: RankSpec) -> list[int]:
    """ST-HOSVD's default processing order: the largest reduction ``n_i / r_i`` first.

    Ties go to the larger mode, then the lower index; later (costlier-per-entry) SVDs then
    act on the smallest tensors. ``spec`` must fit ``shape`` (:func:`check_spec`).
    """
    shape = _check_shape(shape)
    check_spec(spec, shape)
    target = spec.fixed if spec.fixed is not None else spec.max_rank
    return sorted(range(len(shape)), key=lambda i: (-shape[i] / target[i], -shape[i], i))


def _tails2(s: np.ndarray) -> np.ndarray:
    """``tail2[k] = Σ_{j≥k} s_j²`` for ``k = 0 … p`` (suffix sums: no cancellation)."""
    return np.concatenate([np.cumsum((s**2)[::-1])[::-1], [0.0]])


def select_rank(
    s: Any,
    budget2: float,
    *,
    min_rank: int = 1,
    max_rank: int | None = None,
    margin2: float = 0.0,
) -> tuple[int, float]:
    """Smallest ``ρ`` with ``Σ_{j≥ρ} s_j² + margin2 ≤ budget2``, clamped to the rank bounds.

    Parameters
    ----------
    s : 1-D array of finite singular values in descending order
    budget2 : float
        Squared error this mode may discard (``inf``: no tolerance).
    min_rank, max_rank : int
        Floor and cap of the result (clamped to ``len(s)``).
    margin2 : float
        Safety margin for round-off in ``s`` (used with the Gram path).

    Returns
    -------
    rank : int
    tail2 : float
        ``Σ_{j≥rank} s_j²``, the squared norm actually discarded.

    Notes
    -----
    The squares are formed after dividing by ``s_0``, so that singular values from about
    ``1e-300`` to ``1e300`` are handled without underflow or overflow.

    Examples
    --------
    >>> select_rank([3.0, 2.0, 0.1, 0.05], 0.02)
    (2, 0.0125)
    """
    budget2 = float(budget2)
    margin2 = float(margin2)
    return select_prepared(prepare_tails(s), budget2, min_rank, max_rank, margin2)


class PreparedTails:
    """What :func:`select_rank` computes of ``s`` alone (its scale and the suffix sums of
    its squares), to be reused by several selections on the same singular values
    (:func:`prepare_tails`, :func:`select_prepared`)."""

    __slots__ = ("size", "top", "tail2")

    def __init__(self, size: int, top: float, tail2: np.ndarray) -> None:
        size = _as_int(size, "size")
        if size < 0:
            raise ValueError(f"size={size} must be at least 0")
        top = _check_real(top, "top")
        if top < 0:
            raise ValueError(f"top={top!r} (the largest singular value) must be at least 0")
        if not isinstance(tail2, np.ndarray) or tail2.shape != (size + 1,):
            got = getattr(tail2, "shape", type(tail2).__name__)
            raise ValueError(f"tail2 must be a NumPy array of shape ({size + 1},), got {got}")
        if not np.all(np.isfinite(tail2)):
            raise ValueError("tail2 contains non-finite values (NaN or Inf)")
        self.size, self.top, self.tail2 = size, top, tail2


def prepare_tails(s: Any) -> PreparedTails:
    """The part of :func:`select_rank` that depends on ``s`` only (checked finite here)."""
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(s)):
        raise ValueError("s contains non-finite values (NaN or Inf)")
    p = s.size
    top = float(np.max(np.abs(s))) if p else 0.0
    tail2 = _tails2(s / top) if top > 0.0 else np.zeros(p + 1)
    return PreparedTails(p, top, tail2)


def select_prepared(
    prep: PreparedTails,
    budget2: float,
    min_rank: int = 1,
    max_rank: int | None = None,
    margin2: float = 0.0,
) -> tuple[int, float]:
    """:func:`select_rank` on the singular values ``prep`` was made of (the same numbers)."""
    if not isinstance(prep, PreparedTails):
        raise TypeError(f"prep must be a PreparedTails (see prepare_tails), got {prep!r}")
    budget2 = float(budget2)
    margin2 = float(margin2)
    if math.isnan(budget2) or budget2 < 0:
        raise ValueError(f"budget2 must be a number >= 0, got {budget2!r}")
    if not math.isfinite(margin2) or margin2 < 0:
        raise ValueError(f"margin2 must be a finite number >= 0, got {margin2!r}")
    min_rank = _as_int(min_rank, "min_rank")
    max_rank = None if max_rank is None else _as_int(max_rank, "max_rank")
    p, top, tail2 = prep.size, prep.top, prep.tail2
    if top > 0.0:
        # (x / top) / top: Python's ``top**2`` raises OverflowError above 1e154
        ok = np.nonzero(tail2 + margin2 / top / top <= budget2 / top / top)[0]
    else:
        ok = np.nonzero(tail2 + margin2 <= budget2)[0]
    rho = int(ok[0]) if ok.size else p
    hi = p if max_rank is None else min(int(max_rank), p)
    rho = max(min(rho, hi), min(int(min_rank), p))
    return rho, float(tail2[rho]) * top * top if top > 0.0 else 0.0


def sequential_budget(theta: float | None, used2: float, remaining_modes: int) -> float:
    """Squared budget of the next mode when ``used2`` is spent and ``remaining_modes`` remain.

    ``(ϑ² − used2) / remaining_modes`` (``inf`` without a tolerance, or when ``ϑ²`` exceeds
    the float range). Spending it mode by mode never discards more than ``ϑ/√m`` in the worst
    case and keeps ``Σ_i tail_i² ≤ ϑ²``.

    ``theta`` is None or a finite number ``≥ 0``, ``used2`` a finite number (callers that
    bracket round-off may pass one below 0), ``remaining_modes`` an integer ``≥ 1``.
    """
    theta = check_tolerance(theta, "theta")
    used2 = _check_real(used2, "used2")
    remaining_modes = _as_int(remaining_modes, "remaining_modes")
    if remaining_modes < 1:
        raise ValueError(f"remaining_modes={remaining_modes} must be at least 1")
    if theta is None:
        return math.inf
    # theta * theta: Python's theta**2 raises OverflowError above 1e154
    return max(theta * theta - used2, 0.0) / remaining_modes


def lower_ranks_greedily(
    start: Sequence[int],
    floor: Sequence[int],
    error2: Callable[[tuple[int, ...]], float],
    budget2: float,
) -> tuple[int, ...]:
    """Lower ranks one at a time while ``error2(ranks) ≤ budget2``.

    Starting from ``start`` (ranks whose error is within the budget), each round tries to
    lower every mode with ``rank > floor`` by one and keeps the candidate with the smallest
    error (ties: the lowest mode); it stops when no candidate stays within the budget.
    ``error2`` must be non-decreasing when any rank is lowered (true for the exact error of a
    HOSVD truncation: lowering a rank projects the result further).

    Examples
    --------
    >>> tails = {1: 5.0, 2: 1.0, 3: 0.0}
    >>> lower_ranks_greedily((3, 3), (1, 1), lambda r: tails[min(r)], 1.5)
    (2, 2)
    """
    return lower_ranks_certainly(start, floor, error2, budget2, lambda ranks: 0.0)[0]


def lower_ranks_certainly(
    start: Sequence[int],
    floor: Sequence[int],
    error2: Callable[[tuple[int, ...]], float],
    budget2: float,
    error_bound: Callable[[tuple[int, ...]], float],
) -> tuple[tuple[int, ...], bool]:
    """:func:`lower_ranks_greedily`, and whether every comparison it makes is decided with
    room for an error ``error_bound(ranks)`` of each ``error2(ranks)``: ``(ranks, certain)``.

    Used where ``error2`` is computed in a lower precision: a ``certain`` result is the
    one the exact errors give.

    ``start`` and ``floor`` hold one integer ``≥ 1`` per mode; ``budget2`` is a number (not
    NaN); ``error2`` and ``error_bound`` must return numbers ``≥ 0`` (``inf`` allowed), and a
    NaN or negative one is a ``ValueError``.
    """
    for label, fn in (("error2", error2), ("error_bound", error_bound)):
        if not callable(fn):
            raise TypeError(f"{label} must be a function of the ranks, got {fn!r}")
    r = per_mode(start, len(_as_sequence(start, "start", "a sequence of ints")), "start")
    floor = per_mode(floor, len(r), "floor")
    for label, ranks in (("start", r), ("floor", floor)):
        for i, v in enumerate(ranks):
            if v < 1:
                raise ValueError(f"{label}[{i}]={v} must be at least 1")
    budget2 = _check_real(budget2, "budget2", allow_inf=True)
    error2 = _checked_error(error2, "error2")
    error_bound = _checked_error(error_bound, "error_bound")
    e0 = error2(tuple(r))
    certain = abs(e0 - budget2) > error_bound(tuple(r))
    if e0 > budget2:
        return tuple(r), certain
    while True:
        best = None
        for i in range(len(r)):
            if r[i] <= floor[i]:
                continue
            cand = list(r)
            cand[i] -= 1
            e = error2(tuple(cand))
            slack = error_bound(tuple(cand))
            certain = certain and abs(e - budget2) > slack
            if e <= budget2:
                if best is not None:
                    certain = certain and abs(e - best[0]) > slack + best[2]
                if best is None or e < best[0]:
                    best = (e, i, slack)
        if best is None:
            return tuple(r), certain
        r[best[1]] -= 1


def _checked_error(fn: Callable[[tuple[int, ...]], float], name: str):
    """``fn`` whose values are checked: real numbers ``≥ 0`` (``inf`` allowed), not NaN."""

    def checked(ranks: tuple[int, ...]) -> float:
        value = _check_real(fn(ranks), f"{name}{ranks}", allow_inf=True)
        if value < 0:
            raise ValueError(f"{name}{ranks}={value!r} must be at least 0 (a squared error)")
        return value

    return checked
