"""Dynamical low-rank integrators for tensor ODEs ``dY/dt = F(t, Y)`` in Tucker format.

:func:`solve_ivp` is the convenience function (SciPy's interface: tolerances, adaptive or
fixed steps, events, dense output, backward time); each method is also a steppable class
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

Modules: :mod:`.base` (the base class :class:`TuckerOdeSolver`: time, status, counters, the
step-size controller), :mod:`.rank_adaptive` (:class:`RankAdaptiveSolver`, the base of the
rank-adaptive methods), :mod:`.steps` (K-, Galerkin and augmented steps), :mod:`.error`
(the adaptive error estimate), :mod:`.dense_output`, :mod:`.events`, :mod:`.substep`
(explicit Euler, RK4, a Krylov exponential for linear problems, or any callable
``(f, t0, y0, h) -> y1``), :mod:`.ivp` (:func:`solve_ivp`).
"""

from __future__ import annotations

from .base import NormalComponentWarning, OptionWarning, RightHandSideError, TuckerOdeSolver
from .bug import FixedRankBUG, RankAdaptiveBUG
from .dense_output import StepInterpolant, TuckerOdeSolution
from .ivp import METHODS, OdeResult, solve_ivp
from .midpoint_bug import MidpointBUG
from .parallel_bug import ParallelBUG
from .psi import ProjectorSplitting
from .rank_adaptive import RankAdaptiveSolver
from .substep import SUBSTEPS, KrylovExponential, explicit_euler, rk4

__all__ = [
    "METHODS",
    "SUBSTEPS",
    "FixedRankBUG",
    "KrylovExponential",
    "MidpointBUG",
    "NormalComponentWarning",
    "OdeResult",
    "OptionWarning",
    "ParallelBUG",
    "ProjectorSplitting",
    "RankAdaptiveBUG",
    "RankAdaptiveSolver",
    "RightHandSideError",
    "StepInterpolant",
    "TuckerOdeSolution",
    "TuckerOdeSolver",
    "explicit_euler",
    "rk4",
    "solve_ivp",
]
