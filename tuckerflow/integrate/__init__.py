"""Dynamical low-rank integrators for tensor ODEs ``dY/dt = F(t, Y)`` in Tucker format.

:func:`solve_ivp` is the convenience function; each method is also a steppable class
(SciPy's ``OdeSolver`` pattern) registered in :data:`METHODS`:

========================  =====================  ==========================================
name                      class                  what it is
========================  =====================  ==========================================
``"psi"``                 ProjectorSplitting     projector splitting, fixed rank, order 1
``"bug"``                 FixedRankBUG           basis-update & Galerkin, fixed rank
``"ra-bug"``              RankAdaptiveBUG        augmented BUG with truncation
``"parallel-bug"``        ParallelBUG            parallel substeps, step rejection
``"midpoint-bug"``        MidpointBUG            rank-adaptive, order 2
========================  =====================  ==========================================

Substep ODEs are solved by :mod:`tuckerflow.integrate.substep` (explicit Euler, RK4, a
Krylov exponential for linear problems, or any callable ``(f, t0, y0, h) -> y1``).
"""

from __future__ import annotations

from .base import RightHandSideError, TuckerOdeSolver
from .bug import FixedRankBUG, RankAdaptiveBUG, RankAdaptiveMixin
from .ivp import METHODS, OdeResult, solve_ivp
from .midpoint_bug import MidpointBUG
from .parallel_bug import ParallelBUG
from .psi import ProjectorSplitting
from .substep import SUBSTEPS, KrylovExponential, explicit_euler, rk4

__all__ = [
    "METHODS",
    "SUBSTEPS",
    "FixedRankBUG",
    "KrylovExponential",
    "MidpointBUG",
    "OdeResult",
    "ParallelBUG",
    "ProjectorSplitting",
    "RankAdaptiveBUG",
    "RankAdaptiveMixin",
    "RightHandSideError",
    "TuckerOdeSolver",
    "explicit_euler",
    "rk4",
    "solve_ivp",
]
