"""Validation of base points and their per-mode V-factors (shared by the geometry modules)."""

from __future__ import annotations

import math

import tensorly as tl

from .._backend import conj_t, context, eps, to_float
from ..tucker import TuckerTensor, as_tucker

#: Orthonormality is accepted when ``‖UᴴU − I‖_F ≤ ORTHONORMALITY_FACTOR · eps · max(n, r)``.
ORTHONORMALITY_FACTOR = 100.0

#: Two base points are the same when every factor and the core agree to
#: ``SAME_POINT_FACTOR · eps`` (relative), or when they are the same arrays.
SAME_POINT_FACTOR = 1000.0


def orthonormality_error(u) -> float:
    """``‖UᴴU − I‖_F`` as a Python float."""
    r = tl.shape(u)[1]
    return to_float(tl.norm(tl.dot(conj_t(u), u) - tl.eye(r, **context(u))))


def orthonormality_tolerance(u) -> float:
    return ORTHONORMALITY_FACTOR * eps(u) * max(tl.shape(u))


def check_point(y, name: str = "Y") -> TuckerTensor:
    """Return ``y`` as a TuckerTensor, raising ``ValueError`` unless its factors are orthonormal.

    Nothing is re-orthonormalised: the user's data are never silently changed.
    """
    y = as_tucker(y, name)
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


def v_factors(core):
    """Per mode ``i`` the thin QR ``Mat_i(C)ᴴ = Q_i S_iᴴ``: returns the lists ``(Q, S)``.

    ``Q_i`` has shape ``(∏_{j≠i} r_j, r_i)`` and orthonormal columns, ``S_i`` is ``r_i × r_i``
    (lower triangular) and ``Mat_i(C) = S_i Q_iᴴ``. With ``V_i = (⊗_{j≠i} U_j) Q_i`` this gives
    ``Mat_i(Y) = (U_i S_i) V_iᴴ``.
    """
    qs, ss = [], []
    for i in range(tl.ndim(core)):
        q, r = tl.qr(conj_t(tl.unfold(core, i)))
        qs.append(q)
        ss.append(conj_t(r))
    return qs, ss
