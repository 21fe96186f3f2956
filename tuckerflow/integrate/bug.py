"""Basis-update & Galerkin (BUG) integrators: fixed rank and rank-adaptive (augmented).

References
----------
.. [CL22] G. Ceruti and C. Lubich, "An unconventional robust integrator for dynamical
   low-rank approximation", BIT Numer. Math. 62, 2022 (arXiv:2010.02022).
.. [CKL22] G. Ceruti, J. Kusch and C. Lubich, "A rank-adaptive robust integrator for
   dynamical low-rank approximation", BIT Numer. Math. 62, 2022 (arXiv:2104.05247).
"""

from __future__ import annotations

import tensorly as tl

from ..dlra import _augment_basis, augmented_core
from ..linalg import _mode_products, orth
from ..tucker import TuckerTensor
from .base import TuckerOdeSolver
from .rank_adaptive import TRUNCATIONS, RankAdaptiveSolver
from .steps import augmented_bug_step, ct, galerkin_step, k_steps

__all__ = ["FixedRankBUG", "RankAdaptiveBUG", "TRUNCATIONS", "augmented_bug_step"]


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

    In adaptive mode the step size follows the part of the error estimate inside the
    step's bases; the part of ``F`` outside them, the model error of the rank, is reported
    (``normal_errors`` of :func:`~tuckerflow.integrate.solve_ivp`, a
    :class:`~tuckerflow.integrate.NormalComponentWarning` when it exceeds the tolerance).

    References
    ----------
    .. [1] Ceruti & Lubich, BIT 2022 (arXiv:2010.02022).
    """

    name = "bug"
    order = 1

    def _advance(self, t, y, h):
        core, factors = y.core, list(y.factors)
        ks, _ = k_steps(self.fun, self.substep, t, h, core, factors)
        new = [orth(k) for k in ks]
        mats = [tl.dot(ct(u1), u0) for u1, u0 in zip(new, factors)]
        core1 = galerkin_step(self.fun, self.substep, t, h, _mode_products(core, mats), new)
        return TuckerTensor(core1, new), None


class RankAdaptiveBUG(RankAdaptiveSolver):
    """Rank-adaptive (augmented) basis-update & Galerkin integrator (``method="ra-bug"``).

    Options: see :class:`~tuckerflow.integrate.RankAdaptiveSolver`.

    Notes
    -----
    K-steps as in :class:`FixedRankBUG`; ``Û_i = [U_i⁰, orth((I − U_i⁰U_i⁰ᴴ) K_i(t1))]``
    (:func:`tuckerflow.dlra.augment_basis`, at most ``2 r_i`` columns); Galerkin step from
    ``Ĉ(t0) = C0 ×_j (Û_jᴴ U_j⁰)`` (so ``Ĉ(t0) ×_j Û_j = Y0`` exactly); truncation of
    ``Ĉ(t1)`` with tolerance ``ϑ`` and ``U_i ← Û_i P_i`` [1]_. Exact for tensors of
    constant rank when ``F(t, Y) = Ȧ(t)``, up to ``ϑ``.

    Like every first-order BUG step, it cannot see a component of ``F(Y)`` that is
    orthogonal to the current bases in every mode at once: the K-step of mode ``i``
    contracts ``F`` with the old bases of the other modes, which annihilates such a
    component, so the augmented bases do not contain it and the Galerkin step ignores it
    (e.g. an odd product potential ``V(x)V(y)V(z)`` acting on an even rank-1 state: the
    rank stays 1 and the error does not shrink with ``h``). The error estimate of the
    adaptive mode contains this normal component and rejects such steps, and by default
    (``augment_normal``) the step takes its directions into the bases; the midpoint BUG,
    whose second augmentation evaluates ``F`` at the half step, sees it.

    References
    ----------
    .. [1] Ceruti, Kusch & Lubich, BIT 2022 (arXiv:2104.05247).
    """

    name = "ra-bug"
    order = 1

    def _advance(self, t, y, h):
        core, factors = y.core, list(y.factors)
        ks, _ = k_steps(self.fun, self.substep, t, h, core, factors)
        # the K-step results were checked for finiteness by k_steps
        u_hats = [_augment_basis(u, k, finite=True) for u, k in zip(factors, ks)]
        if self.augment_normal:
            u_hats = self._with_normal_directions(self._current_f(), y, u_hats, h)
        core_hat = augmented_core(core, factors, u_hats)
        core_hat = galerkin_step(self.fun, self.substep, t, h, core_hat, u_hats)
        y1, _, _ = self._truncate(core_hat, u_hats)
        return y1, u_hats
