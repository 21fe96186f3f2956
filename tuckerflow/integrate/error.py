"""Local error estimate of the adaptive mode: the trapezoidal defect of a step.

For a step from ``(t0, Y0)`` to ``(t1, Y1)``, ``h = t1 − t0``, the estimate is the norm of
the *defect against the trapezoidal rule*

``E = Y1 − Y0 − (h/2) (F(t0, Y0) + F(t1, Y1))``.

The exact flow satisfies ``Y(t1) − Y(t0) = (h/2)(F0 + F1) + O(h³)``, so
``E = (Y1 − Y(t1)) + O(h³) + O(h L ‖Y1 − Y(t1)‖)``: for a first-order method (local error
``O(h²)``) ``E`` is the local error to leading order; for the second-order midpoint BUG
both are ``O(h³)`` and ``E`` is an estimate of that order (not asymptotically exact). The
controller exponent is ``1/(q + 1)`` with ``q = min(order, 2)``.

``E`` is split in the step's tensor-product space ``W`` (which contains ``Y0`` and ``Y1``):

* the part in ``W``, ``(C1 − C0) − (h/2)(G0 + G1)`` with ``G = F ×_j W_jᴴ``: a small core;
* the part outside ``W``, ``−(h/2)(I − P_W)(F0 + F1)``: the *normal component* of the
  step, the part of ``F`` that no Galerkin step in ``W`` can see. It is computed without
  forming ``F`` (:func:`tuckerflow.ambient.complement_norm`). It detects a right-hand side
  orthogonal to the current bases in every mode at once (e.g. an odd product potential
  acting on an even state), which a first-order BUG step misses entirely while its K-steps
  see nothing.

:func:`error_parts` returns both norms. What the step-size control does with them depends
on the method (:class:`~tuckerflow.integrate.base.TuckerOdeSolver`): the rank-adaptive
methods control ``‖E‖ = hypot(inside, normal)``, since a step that sees more of ``F`` can
make the rank grow; for the fixed-rank methods the normal component is the model error of
the chosen rank, which no step size reduces (per unit time it is ``‖(I − P_W) F‖`` whatever
``h``), so they control the inside part and report the normal one.

Because ``Y1`` is the truncated state, the truncation error of the step is part of ``E``.

The estimate uses ``F(t1, Y1)``, which becomes ``F(t0, Y0)`` of the next step (first same
as last): one evaluation of ``fun`` per attempted step on top of the method's own.

For stiff right-hand sides (``|h| ‖∂F/∂Y‖ ≫ 1``) the trapezoidal rule is a poor
companion and the estimate is pessimistic (steps are limited by the stiff part as for an
explicit method); integrate such problems with fixed steps and ``substep="exp"``.
"""

from __future__ import annotations

import math

import tensorly as tl

from .._backend import to_float
from ..ambient import ambient_norm, complement_norm

__all__ = ["error_norm", "error_parts", "initial_step"]


def error_parts(data):
    """``(inside, normal)``: the norms of the two orthogonal parts of the step's defect
    ``Y1 − Y0 − (h/2)(F0 + F1)``, in the step's space ``W`` and outside it (module notes)."""
    h = data.t1 - data.t0
    inside = (data.c1 - data.c0) - (h / 2) * (data.g0 + data.g1)
    inside = to_float(tl.norm(inside))
    normal = abs(h) / 2 * complement_norm([data.f0, data.f1], data.bases, weights=[1.0, 1.0])
    return inside, normal


def error_norm(data):
    """``‖Y1 − Y0 − (h/2)(F0 + F1)‖_F`` of a step (see the module notes)."""
    return math.hypot(*error_parts(data))


def initial_step(f0, norm0, solver, exponent):
    """First step size from ``‖Y0‖`` and ``‖F(t0, Y0)‖`` (SciPy's rule, first stage).

    ``h0 = 0.01 ‖Y0‖ / ‖F0‖`` in units of the error budget ``tol = atol·√N + rtol·‖Y0‖``, and
    ``h1 = (0.01 tol / ‖F0‖)^{1/(q+1)}``; the first step is ``min(100 h0, h1, max_step,
    |t_bound − t0|)``. SciPy's second stage (an explicit Euler trial step) needs the dense
    state ``Y0 + h0 F0``, which is not low rank; the controller corrects a poor guess within a
    few steps.
    """
    tol = solver.tolerance(norm0)
    fnorm = ambient_norm(f0)
    d0 = norm0 / tol if tol > 0 else math.inf
    d1 = fnorm / tol if tol > 0 else math.inf
    if d0 < 1e-5 or d1 < 1e-5 or not math.isfinite(d0 * d1):
        h0 = 1e-6
    else:
        h0 = 0.01 * d0 / d1
    h1 = (0.01 / d1) ** (-exponent) if d1 > 1e-15 and math.isfinite(d1) else max(1e-6, h0 * 1e-3)
    span = abs(solver.t_bound - solver.t)
    return min(100 * h0, h1, solver.max_step, span)
