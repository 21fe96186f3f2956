"""Projector-splitting integrator (PSI) for Tucker tensors.

References
----------
.. [LVW18] C. Lubich, B. Vandereycken and A. Walach, "Time integration of rank-constrained
   Tucker tensors", SIAM J. Numer. Anal. 56(3), 2018 (arXiv:1709.02594).
"""

from __future__ import annotations

import tensorly as tl

from ..ambient import contract_unchecked
from ..tucker import TuckerTensor
from .base import TuckerOdeSolver, check_finite_step, check_shape
from .steps import ct, galerkin_step, k_step, trusted_tucker

__all__ = ["ProjectorSplitting"]


def s_step(rhs, substep, t0, h, s0, q, factors, i, s_rank):
    """Backward S-step ``S' = −U_iᴴ Mat_i(F(t, Ten_i(U_i S V_iᴴ))) V_i`` from ``S(t0) = s0``."""
    qh = ct(q)
    mats = [ct(u) for u in factors]
    expected = tuple(s_rank)

    def f(t, s):
        c = tl.fold(tl.dot(s, qh), i, s_rank)
        F = rhs(t, trusted_tucker(c, factors))
        g = check_shape(contract_unchecked(F, mats), expected, t, "the S-step contraction")
        return -tl.dot(tl.unfold(g, i), q)

    return substep(f, t0, s0, h)


class ProjectorSplitting(TuckerOdeSolver):
    """Projector-splitting integrator, Lie–Trotter order (``method="psi"``).

    Notes
    -----
    Modes are processed in order; mode ``i`` sees the already updated factors of the modes
    ``< i``. With ``Mat_i(C)ᴴ = Q_i S_iᴴ`` and ``V_i = (⊗_{j≠i} U_j) Q_i``:

    1. K-step ``K' = Mat_i(F(t, Ten_i(K V_iᴴ))) V_i`` from ``K(t0) = U_i S_i``; thin QR
       ``K(t1) = U_i¹ Ŝ_i``.
    2. S-step (backward) ``S' = −U_i¹ᴴ Mat_i(F(t, Ten_i(U_i¹ S V_iᴴ))) V_i`` from
       ``S(t0) = Ŝ_i``; then ``C ← Ten_i(S(t1) Q_iᴴ)`` and ``U_i ← U_i¹``.

    After all modes, a forward Galerkin core step ``C' = F(t, C ×_j U_j) ×_j U_jᴴ``
    [1]_. Every substep runs over the whole interval ``[t0, t0 + h]``. Exact for tensors
    of constant rank ``r`` when ``F(t, Y) = Ȧ(t)``; first order; robust to small singular
    values. The modes cannot be processed in parallel (unlike the BUG integrators) and the
    S-step runs backward in time, which is unstable for dissipative problems.

    References
    ----------
    .. [1] Lubich, Vandereycken & Walach, SINUM 2018 (arXiv:1709.02594).
    """

    name = "psi"
    order = 1

    def _advance(self, t, y, h):
        core, factors = y.core, list(y.factors)
        for i in range(len(factors)):
            k1, q = k_step(self.fun, self.substep, t, h, core, factors, i)
            check_finite_step([k1], t, t + h)
            u1, s_hat = tl.qr(k1)
            factors[i] = u1
            s_rank = list(tl.shape(core))
            s_rank[i] = tl.shape(u1)[1]
            s1 = s_step(self.fun, self.substep, t, h, s_hat, q, factors, i, s_rank)
            check_finite_step([s1], t, t + h)
            core = tl.fold(tl.dot(s1, ct(q)), i, s_rank)
        core = galerkin_step(self.fun, self.substep, t, h, core, factors)
        return TuckerTensor(core, factors), None
