"""Second-order BUG integrator based on the midpoint rule.

References
----------
.. [CEKL24] G. Ceruti, L. Einkemmer, J. Kusch and C. Lubich, "A robust second-order low-rank
   BUG integrator based on the midpoint rule", BIT Numer. Math. 64, 2024.
"""

from __future__ import annotations

import tensorly as tl

from ..ambient import unfolded_contract
from ..dlra import augment_basis, augmented_core, core_qr
from ..tucker import TuckerTensor
from .base import check_finite_step, check_shape
from .rank_adaptive import RankAdaptiveSolver
from .steps import augmented_bug_step, ct, galerkin_step

__all__ = ["MidpointBUG"]


class MidpointBUG(RankAdaptiveSolver):
    """Second-order rank-adaptive BUG integrator (``method="midpoint-bug"``).

    Options: those of :class:`~tuckerflow.integrate.RankAdaptiveSolver`; for second order
    the substep solver must be at least second order (``"rk4"`` or ``"exp"``) and the
    truncation tolerance small (the error has a term ``nsteps · ϑ``).

    Notes
    -----
    1. An augmented BUG step over ``[t0, t0 + h/2]``, not truncated, gives
       ``Y_{1/2} = Ĉ_{1/2} ×_j Û_j`` (``Û_j ⊇ U_j⁰``).
    2. Each mode is augmented once more with ``Mat_i(F(t_{1/2}, Y_{1/2})) V_i^{1/2}``
       (``V_i^{1/2} = (⊗_{j≠i} Û_j) Q_i``, ``Mat_i(Ĉ_{1/2})ᴴ = Q_i S_iᴴ``):
       ``Ǔ_i = orth([Û_i, Mat_i(F_{1/2}) V_i^{1/2}])``.
    3. Galerkin step over the whole step from ``C0 ×_j (Ǔ_jᴴ U_j⁰)``; truncation with
       tolerance ``ϑ``.

    This is the Tucker form of the matrix midpoint BUG integrator [1]_: the K-, L- and
    extra directions of the matrix paper become one augmentation per mode. Ranks grow to at
    most ``4 r_i`` inside a step.

    References
    ----------
    .. [1] Ceruti, Einkemmer, Kusch & Lubich, BIT 2024.
    """

    name = "midpoint-bug"
    order = 2

    def _advance(self, t, y, h):
        core, factors = y.core, list(y.factors)
        d = len(factors)
        half = h / 2
        core_half, u_half = augmented_bug_step(self.fun, self.substep, t, half, core, factors)
        F_half = self.fun(t + half, TuckerTensor(core_half, u_half))
        ws = []
        for i in range(d):
            q, _ = core_qr(core_half, i)
            mats = [ct(u) for u in u_half]
            mats[i] = None
            w = unfolded_contract(F_half, mats, i, q)
            ws.append(check_shape(w, (self.shape[i], tl.shape(q)[1]), t + half, "a contraction"))
        check_finite_step(ws, t, t + h)
        u_check = [augment_basis(u, w) for u, w in zip(u_half, ws)]
        if self.augment_normal:
            u_check = self._with_normal_directions(F_half, y, u_check, h)
        core_check = augmented_core(core, factors, u_check)
        core_check = galerkin_step(self.fun, self.substep, t, h, core_check, u_check)
        y1, _, _ = self._truncate(core_check, u_check)
        return y1, u_check
