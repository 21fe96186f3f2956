"""Validation of base points and their per-mode V-factors (shared by the geometry modules)."""

from __future__ import annotations

import math

import tensorly as tl

from .._backend import check_finite, conj_t, context, eps, to_float
from .._host import to_host
from ..ranks import validate_rank
from ..tucker import TuckerTensor, as_tucker
from ..typing import Tensor, TuckerLike

#: Orthonormality is accepted when ``‖UᴴU − I‖_F ≤ ORTHONORMALITY_FACTOR · eps · max(n, r)``.
ORTHONORMALITY_FACTOR = 100.0

#: A base point's core counts as rank-deficient in mode ``i`` when the triangular factor of
#: ``Mat_i(C)ᴴ`` has ``min_j |R_jj| ≤ RANK_DEFICIENCY_FACTOR · eps · max_j |R_jj|`` (then
#: ``σ_min/σ_max`` of the unfolding is at most that ratio as well).
RANK_DEFICIENCY_FACTOR = 1000.0

#: Two base points are the same when every factor and the core agree to
#: ``SAME_POINT_FACTOR · eps`` (relative), or when they are the same arrays.
SAME_POINT_FACTOR = 1000.0


def orthonormality_error(u: Tensor) -> float:
    """``‖UᴴU − I‖_F`` as a Python float."""
    r = tl.shape(u)[1]
    return to_float(tl.norm(tl.dot(conj_t(u), u) - tl.eye(r, **context(u))))


def orthonormality_tolerance(u: Tensor) -> float:
    return ORTHONORMALITY_FACTOR * eps(u) * max(tl.shape(u))


def check_point(y: TuckerLike, name: str = "Y") -> TuckerTensor:
    """Return ``y`` as a TuckerTensor, raising ``ValueError`` unless it can be a base point.

    Checks, in this order: finite entries, a multilinear rank that exists
    (``r_i ≤ n_i``, ``r_i ≤ ∏_{j≠i} r_j``), orthonormal factors. Nothing is
    re-orthonormalised: the user's data are never silently changed. (Full rank of the core
    unfoldings is checked where their QR is formed, see :func:`v_factors`.)
    """
    y = as_tucker(y, name)
    check_finite(y.core, f"{name}.core")
    for i, u in enumerate(y.factors):
        check_finite(u, f"{name}.factors[{i}]")
    validate_rank(tuple(y.shape), tuple(y.rank), f"{name}.rank")
    for i, u in enumerate(y.factors):
        err = orthonormality_error(u)
        tol = orthonormality_tolerance(u)
        if not err <= tol:
            raise ValueError(
                f"{name}.factors[{i}] does not have orthonormal columns: "
                f"‖UᴴU − I‖={err:.3g} exceeds {tol:.3g} (100·eps·max(n, r)); the geometry "
                f"needs orthonormal factors, e.g. tuckerflow.orthonormalize({name})"
            )
    return y


def same_point(a: TuckerTensor, b: TuckerTensor) -> tuple[bool, str]:
    """Whether two base points are the same (identical arrays, or equal to round-off)."""
    if a is b:
        return True, ""
    if tuple(a.shape) != tuple(b.shape):
        return False, f"shapes differ: {tuple(a.shape)} and {tuple(b.shape)}"
    if tuple(a.rank) != tuple(b.rank):
        return False, f"ranks differ: {tuple(a.rank)} and {tuple(b.rank)}"
    pairs = [(a.core, b.core, "core")] + [
        (u, w, f"factors[{i}]") for i, (u, w) in enumerate(zip(a.factors, b.factors))
    ]
    for x, z, what in pairs:
        if x is z:
            continue
        scale = max(to_float(tl.norm(x)), math.sqrt(tl.shape(x)[-1]))
        diff = to_float(tl.norm(x - z))
        if not diff <= SAME_POINT_FACTOR * eps(x) * scale:
            return False, f"the {what} differ by {diff:.3g} (relative {diff / scale:.3g})"
    return True, ""


def v_factors(core: Tensor, name: str = "Y") -> tuple[list[Tensor], list[Tensor]]:
    """Per mode ``i`` the thin QR ``Mat_i(C)ᴴ = Q_i S_iᴴ``: returns the lists ``(Q, S)``.

    ``Q_i`` has shape ``(∏_{j≠i} r_j, r_i)`` and orthonormal columns, ``S_i`` is ``r_i × r_i``
    (lower triangular) and ``Mat_i(C) = S_i Q_iᴴ``. With ``V_i = (⊗_{j≠i} U_j) Q_i`` this gives
    ``Mat_i(Y) = (U_i S_i) V_iᴴ``.

    Raises ``ValueError`` when an unfolding of the core is rank-deficient (see
    ``RANK_DEFICIENCY_FACTOR``): the point then lies on a manifold of lower rank and its
    tangent space at rank ``r`` does not exist. One host transfer for all modes.
    """
    qs, ss = [], []
    diags = []
    for i in range(tl.ndim(core)):
        q, r = tl.qr(conj_t(tl.unfold(core, i)))
        qs.append(q)
        ss.append(conj_t(r))
        diags.append(tl.abs(tl.diag(r)))
    host = to_host(tl.concatenate(diags))
    pos = 0
    for i, s in enumerate(ss):
        k = tl.shape(s)[0]
        dg = host[pos : pos + k]
        pos += k
        top = float(dg.max()) if dg.size else 0.0
        low = float(dg.min()) if dg.size else 0.0
        if not low > RANK_DEFICIENCY_FACTOR * eps(core) * top:
            raise ValueError(
                f"the mode-{i} unfolding of {name}.core is rank-deficient (triangular factor "
                f"diagonal from {low:.3g} to {top:.3g}): {name} has a lower multilinear rank "
                "than its core's shape, and the tangent space at that rank does not exist; "
                "truncate it first (tuckerflow.truncate)"
            )
    return qs, ss
