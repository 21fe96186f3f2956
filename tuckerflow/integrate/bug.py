"""Basis-update & Galerkin (BUG) integrators: fixed rank and rank-adaptive (augmented).

References
----------
.. [CL22] G. Ceruti and C. Lubich, "An unconventional robust integrator for dynamical
   low-rank approximation", BIT Numer. Math. 62, 2022 (arXiv:2010.02022).
.. [CKL22] G. Ceruti, J. Kusch and C. Lubich, "A rank-adaptive robust integrator for
   dynamical low-rank approximation", BIT Numer. Math. 62, 2022 (arXiv:2104.05247).
"""

from __future__ import annotations

import math

import numpy as np
import tensorly as tl
from tensorly.tenalg import multi_mode_dot

from .._backend import eps, to_float
from ..dlra import augment_basis, augmented_core, truncate_core
from ..linalg import orth
from ..tucker import TuckerTensor
from .base import TuckerOdeSolver, ct, galerkin_step, k_step

__all__ = ["FixedRankBUG", "RankAdaptiveBUG", "RankAdaptiveMixin"]

#: Truncation methods of the rank-adaptive integrators.
TRUNCATIONS = ("hosvd", "st_hosvd")


def augmented_bug_step(fun, substep, t, h, core, factors):
    """One untruncated augmented BUG step from ``t`` to ``t + h``.

    K-steps in every mode, bases ``Û_i = [U_i, new directions]``, and the Galerkin step on
    ``Ĉ(t) = C ×_j (Û_jᴴ U_j)``. Returns ``(Ĉ(t + h), [Û_i])``, a Tucker tensor of rank up
    to ``2 r`` that the rank-adaptive BUG truncates and the midpoint BUG uses as its half
    step (Ceruti, Kusch & Lubich, BIT 2022).
    """
    u_hats = []
    for i in range(len(factors)):
        k1, _ = k_step(fun, substep, t, h, core, factors, i)
        u_hats.append(augment_basis(factors[i], k1))
    core_hat = augmented_core(core, factors, u_hats)
    return galerkin_step(fun, substep, t, h, core_hat, u_hats), u_hats


def _per_mode_bound(value, d, name):
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        vals = [int(value)] * d
    else:
        try:
            vals = [int(v) for v in value]
        except TypeError:
            raise TypeError(f"{name} must be an int or one int per mode, got {value!r}") from None
        if len(vals) != d:
            raise ValueError(f"{name} has {len(vals)} entries but the tensor has {d} modes")
    for i, v in enumerate(vals):
        if v < 1:
            raise ValueError(f"{name}[{i}]={v} must be at least 1")
    return tuple(vals)


def _tolerance(value, name):
    if value is None:
        return None
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


class RankAdaptiveMixin:
    """Options and truncation shared by the rank-adaptive methods.

    Parameters
    ----------
    rank_rtol, rank_atol : float, optional
        Tolerance ``ϑ = min(rank_atol, rank_rtol · ‖Ĉ‖)`` of the truncation at the end of every
        step (the rule of :mod:`tuckerflow.truncation`). Default (neither given):
        ``rank_rtol = sqrt(eps)`` of the dtype. The global error of a rank-adaptive method
        has a plateau of about ``nsteps · ϑ``.
    max_rank, min_rank : int or sequence of int, optional
        Caps and floors of the ranks (at least 1).
    truncation : {"hosvd", "st_hosvd"}
        How the augmented core is truncated (``"st_hosvd"`` makes the norm change of the
        truncation an exact identity).
    """

    RANK_OPTIONS = ("rank_rtol", "rank_atol", "max_rank", "min_rank", "truncation")

    def _configure_ranks(
        self, rank_rtol=None, rank_atol=None, max_rank=None, min_rank=None, truncation="hosvd"
    ):
        d = len(self.shape)
        self.rank_rtol = _tolerance(rank_rtol, "rank_rtol")
        self.rank_atol = _tolerance(rank_atol, "rank_atol")
        if self.rank_rtol is None and self.rank_atol is None:
            self.rank_rtol = math.sqrt(eps(self.y.core))
        self.max_rank = _per_mode_bound(max_rank, d, "max_rank")
        self.min_rank = _per_mode_bound(min_rank, d, "min_rank")
        if self.max_rank is not None:
            for i, (r, cap) in enumerate(zip(self.y.rank, self.max_rank)):
                if r > cap:
                    raise ValueError(
                        f"y0.rank[{i}]={r} exceeds max_rank[{i}]={cap}; truncate y0 first "
                        "(tuckerflow.truncate(y0, max_rank=...))"
                    )
            if self.min_rank is not None:
                for i, (lo, hi) in enumerate(zip(self.min_rank, self.max_rank)):
                    if lo > hi:
                        raise ValueError(f"min_rank[{i}]={lo} exceeds max_rank[{i}]={hi}")
        if truncation not in TRUNCATIONS:
            raise ValueError(f"truncation={truncation!r} is not one of {TRUNCATIONS}")
        self.truncation = truncation
        self.truncation_info = None
        self.augmented_norm = None

    def _truncate(self, core_hat, u_hats):
        """Truncate ``Ĉ ×_i Û_i``; records ``truncation_info`` and ``augmented_norm``."""
        self.augmented_norm = to_float(tl.norm(core_hat))
        y, p_list, info = truncate_core(
            core_hat,
            u_hats,
            rtol=self.rank_rtol,
            atol=self.rank_atol,
            min_rank=self.min_rank,
            max_rank=self.max_rank,
            method=self.truncation,
        )
        self.truncation_info = info
        return y, p_list, info


class FixedRankBUG(TuckerOdeSolver):
    """Fixed-rank basis-update & Galerkin integrator (``method="bug"``).

    Notes
    -----
    For each mode ``i`` (independently, hence in parallel): ``Mat_i(C0)ᴴ = Q_i S_iᴴ``,
    ``V_i = (⊗_{j≠i} U_j⁰) Q_i``; K-step ``K_i' = Mat_i(F(t, Ten_i(K_i V_iᴴ))) V_i`` from
    ``K_i(t0) = U_i⁰ S_i``; ``U_i¹ = orth(K_i(t1))``, ``M_i = U_i¹ᴴ U_i⁰``. Galerkin step
    ``C' = F(t, C ×_j U_j¹) ×_j U_j¹ᴴ`` from ``C(t0) = C0 ×_j M_j``; ``Y1 = C(t1) ×_j U_j¹``
    [1]_. Exact for tensors of constant rank ``r`` when ``F(t, Y) = Ȧ(t)``; robust to small
    singular values (no inverse of the core anywhere).

    References
    ----------
    .. [1] Ceruti & Lubich, BIT 2022 (arXiv:2010.02022).
    """

    name = "bug"
    order = 1

    def _step_impl(self, t, y, h):
        core, factors = y.core, list(y.factors)
        new = []
        for i in range(len(factors)):
            k1, _ = k_step(self.fun, self.substep, t, h, core, factors, i)
            new.append(orth(k1))
        mats = [tl.dot(ct(u1), u0) for u1, u0 in zip(new, factors)]
        core1 = galerkin_step(self.fun, self.substep, t, h, multi_mode_dot(core, mats), new)
        return TuckerTensor(core1, new)


class RankAdaptiveBUG(RankAdaptiveMixin, TuckerOdeSolver):
    """Rank-adaptive (augmented) basis-update & Galerkin integrator (``method="ra-bug"``).

    Options: see :class:`RankAdaptiveMixin`.

    Notes
    -----
    K-steps as in :class:`FixedRankBUG`; ``Û_i = [U_i⁰, orth((I − U_i⁰U_i⁰ᴴ) K_i(t1))]``
    (:func:`tuckerflow.dlra.augment_basis`, at most ``2 r_i`` columns); Galerkin step from
    ``Ĉ(t0) = C0 ×_j (Û_jᴴ U_j⁰)`` (so ``Ĉ(t0) ×_j Û_j = Y0`` exactly); truncation of
    ``Ĉ(t1)`` with tolerance ``ϑ`` and ``U_i ← Û_i P_i`` [1]_. Exact for tensors of
    constant rank when ``F(t, Y) = Ȧ(t)``, up to ``ϑ``.

    References
    ----------
    .. [1] Ceruti, Kusch & Lubich, BIT 2022 (arXiv:2104.05247).
    """

    name = "ra-bug"
    order = 1
    rank_adaptive = True
    OPTIONS = RankAdaptiveMixin.RANK_OPTIONS

    def _configure(self, **options):
        self._configure_ranks(**options)

    def _step_impl(self, t, y, h):
        core_hat, u_hats = augmented_bug_step(self.fun, self.substep, t, h, y.core, list(y.factors))
        y1, _, _ = self._truncate(core_hat, u_hats)
        return y1
