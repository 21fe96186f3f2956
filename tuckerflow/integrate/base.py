"""Base class of the steppable low-rank integrators: time, status, counters, step control.

The pattern is SciPy's ``OdeSolver`` (``scipy/integrate/_ivp/base.py``): the public
:meth:`TuckerOdeSolver.step` owns the time, the status and the counters and calls
``_step_impl() -> (success, message)``. The base class's ``_step_impl`` is the step-size
control shared by every method (fixed steps, or adaptive steps from a local error
estimate); a method implements one step of a given size,
``_advance(t, Y, h) -> (Y_new, bases)``. A failed step leaves ``t`` and ``y`` at the last
good state and sets ``status = "failed"``.

Adaptive steps (``step=None``) use the error estimate of :mod:`.error` and a standard
controller whose constants are the module attributes :data:`SAFETY`, :data:`MIN_FACTOR`
and :data:`MAX_FACTOR` (SciPy's values). The rank-adaptive methods control the whole
estimate; the fixed-rank methods control its part inside the step's bases and report the
normal component (the model error of their rank), with a :class:`NormalComponentWarning`
when it exceeds the tolerance.
"""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import tensorly as tl

from .._backend import check_finite, dtype_name, eps, to_float
from .._host import to_host
from ..ambient import ContractionError, ambient_shape
from ..truncation import validate_rank
from ..tucker import TuckerTensor, as_tucker, orthonormalize
from .dense_output import StepInterpolant, step_data
from .error import error_parts, initial_step
from .substep import resolve_substep

__all__ = [
    "MAX_FACTOR",
    "MIN_FACTOR",
    "NormalComponentWarning",
    "OptionWarning",
    "RTOL_FLOOR",
    "SAFETY",
    "SLIVER_FRACTION",
    "TRUNCATION_FRACTION",
    "RightHandSideError",
    "TuckerOdeSolver",
]

#: Safety factor of the step-size controller ``h_new = h · SAFETY · (1/err)^(1/(q+1))``.
SAFETY = 0.9
#: Smallest factor by which one rejected or accepted step changes the step size.
MIN_FACTOR = 0.2
#: Largest factor by which one accepted step enlarges the step size.
MAX_FACTOR = 10.0
#: The adaptive mode refuses ``rtol`` below this multiple of the state dtype's epsilon (the
#: round-off of the error estimate itself), as SciPy's solvers do (SciPy raises it silently).
RTOL_FLOOR = 100.0
#: Fraction of each step's error budget ``atol·√N + rtol·‖Y‖`` that the rank truncation of
#: the rank-adaptive methods may spend when no rank tolerance is given.
TRUNCATION_FRACTION = 0.1
#: A fixed step that would leave less than this fraction of ``step`` before ``t_bound`` (or
#: the next stop) is stretched to end there, so that no sliver step of round-off size remains.
SLIVER_FRACTION = 1e-10


class OptionWarning(UserWarning):
    """An option was passed that the chosen method does not take (it has no effect).

    SciPy's ``solve_ivp`` warns likewise about arguments that do not apply to the chosen
    solver; turn it into an error with ``warnings.simplefilter("error", OptionWarning)``.
    """


class NormalComponentWarning(UserWarning):
    """A fixed-rank method accepted a step whose normal component exceeds the tolerance.

    The normal component of a step is the part of ``F`` outside the step's bases
    (:mod:`tuckerflow.integrate.error`). For a fixed-rank method it is the model error of
    the rank, which no step size reduces, so the step-size control leaves it out; this
    warning says that the integration does not meet ``rtol``/``atol`` because of it. Each
    step's ratio is in ``solve_ivp(...).normal_errors``. A rank-adaptive method (e.g.
    ``"ra-bug"``) or a larger rank removes it.
    """


def _user_stacklevel():
    """Stack level of the first frame outside ``tuckerflow.integrate`` (the user's call)."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith(
        "tuckerflow.integrate"
    ):
        level += 1
        frame = frame.f_back
    return level


class RightHandSideError(RuntimeError):
    """The right-hand side returned an unusable value at time ``t``."""

    def __init__(self, t, reason, where=None):
        super().__init__(f"{where or f'at t={t!r}'}: {reason}")
        self.t = t
        self.reason = reason


def _value_shape(F):
    """Shape of a right-hand side value in O(1) (no validation of its contents)."""
    if tl.is_tensor(F):
        return tuple(tl.shape(F))
    if isinstance(F, TuckerTensor):
        return tuple(F.shape)
    if isinstance(F, (tuple, list)) and len(F) == 2 and tl.is_tensor(F[0]):
        try:
            return tuple(int(tl.shape(u)[0]) for u in F[1])
        except (TypeError, IndexError):
            raise TypeError("a (core, factors) pair whose factors are not matrices") from None
    return ambient_shape(F)


class CheckedRightHandSide:
    """``fun`` wrapped: counts evaluations and checks the shape of each value (O(1)).

    Finiteness is checked on the results of the substeps (one reduction per substep, see
    :func:`check_finite_step`), not on every evaluation.
    """

    def __init__(self, fun, shape):
        if not callable(fun):
            raise TypeError(f"fun must be callable as fun(t, Y), got {type(fun).__name__}")
        self.fun = fun
        self.shape = tuple(shape)
        self.nfev = 0

    def __call__(self, t, Y):
        self.nfev += 1
        F = self.fun(t, Y)
        try:
            shape = _value_shape(F)
        except TypeError as exc:
            raise RightHandSideError(t, f"fun(t, Y) returned an unusable value: {exc}") from None
        if shape != self.shape:
            raise RightHandSideError(
                t, f"fun(t, Y) returned shape {shape}, expected Y.shape={self.shape}"
            )
        return F


def _ratio(err, tol):
    return err / tol if tol > 0 else (0.0 if err == 0 else math.inf)


def check_shape(out, expected, t, what):
    """Raise :class:`RightHandSideError` when a contraction of ``F`` has the wrong shape."""
    got = tuple(tl.shape(out))
    if got != tuple(expected):
        raise RightHandSideError(
            t,
            f"{what} of fun(t, Y) has shape {got}, expected {tuple(expected)} "
            "(a Contractible whose contract() returns the wrong shape)",
        )
    return out


def check_finite_step(arrays, t0, t1):
    """One host transfer: raise :class:`RightHandSideError` if any array is not finite."""
    maxima = [tl.reshape(tl.max(tl.abs(a)), (1,)) for a in arrays if int(np.prod(tl.shape(a)))]
    if not maxima:
        return
    m = to_host(tl.concatenate(maxima), dtype=None)
    if not np.all(np.isfinite(m)):
        raise RightHandSideError(
            t0,
            "fun(t, Y) returned non-finite values (NaN or Inf)",
            where=f"in the step from t={t0!r} to t={t1!r}",
        )


def check_time(name, value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name}={value!r} must be finite")
    return v


def check_step_size(name, value, span):
    """A step-size magnitude: finite (or inf for ``max_step``), > 0, within the span."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if math.isnan(v) or v <= 0:
        raise ValueError(
            f"{name}={value!r} must be > 0 (a step size is a magnitude; for backward "
            "integration, t_bound < t0, give it positive as well)"
        )
    if name == "first_step" and span > 0 and v > span:
        raise ValueError(f"first_step={value!r} exceeds the length of t_span, {span!r}")
    if name in ("first_step", "step") and math.isinf(v):
        raise ValueError(f"{name}={value!r} must be finite")
    return v


def check_tolerances(rtol, atol):
    for name, v in (("rtol", rtol), ("atol", atol)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
            raise TypeError(f"{name} must be a real number, got {v!r}")
    rtol, atol = float(rtol), float(atol)
    if not (math.isfinite(rtol) and rtol > 0):
        raise ValueError(f"rtol={rtol!r} must be a finite number > 0")
    if not (math.isfinite(atol) and atol >= 0):
        raise ValueError(f"atol={atol!r} must be a finite number >= 0")
    return rtol, atol


class TuckerOdeSolver:
    """Base class of the integrators of ``dY/dt = F(t, Y)`` on Tucker tensors.

    Parameters
    ----------
    fun : callable ``fun(t, Y)``
        Receives a :class:`~tuckerflow.TuckerTensor` and returns the ambient tensor
        ``F(t, Y)``: a dense tensor, a Tucker tensor, or any object of the
        :class:`~tuckerflow.ambient.Contractible` protocol; structured operators of
        :mod:`tuckerflow.operators` qualify.
    t0, t_bound : float
        Start time and final time; ``t_bound < t0`` integrates backward in time.
    y0 : Tucker tensor
        Initial value with a valid multilinear rank and finite entries; its factors are
        orthonormalised (exact).
    step : float, optional
        Fixed step size ``h > 0`` (the last step is shortened to end at ``t_bound``). Default
        None: adaptive steps controlled by ``rtol`` and ``atol``.
    rtol, atol : float
        Local error tolerance of the adaptive steps, ``‖err‖_F ≤ atol·√N + rtol·‖Y‖_F``
        (``N`` the number of entries of ``Y``); also the budget from which the rank-adaptive
        methods derive their truncation tolerance when none is given.
    first_step : float, optional
        Initial step size of the adaptive mode (default: chosen from ``F(t0, Y0)``).
    max_step : float
        Largest step size of the adaptive mode (default: unbounded).
    substep : {"euler", "rk4", "exp"} or callable
        Solver of the substep ODEs (see :mod:`tuckerflow.integrate.substep`).
    **options
        Method-specific options, listed in the class attribute ``OPTIONS``; any other name has
        no effect and raises an :class:`OptionWarning` listing the valid ones.

    Attributes
    ----------
    t, y : current time and Tucker tensor
    t_old : time before the last accepted step (None before the first)
    direction : +1 or -1
    step_size : size of the last accepted step (None before the first)
    status : {"running", "finished", "failed"}
    message : str or None
    nfev, nsteps, nrejected : counters (evaluations of ``fun``, accepted, rejected steps)
    last_error : the controlled error estimate of the last accepted step relative to the
        tolerance (adaptive mode; ``≤ 1``): the whole estimate for the rank-adaptive methods,
        its part inside the step's bases for the fixed-rank ones
    last_normal_error, max_normal_error : the normal component of the last accepted step's
        estimate relative to the tolerance, and its largest value so far (adaptive mode;
        None before the first step). For a fixed-rank method a value above 1 means the
        rank's model error exceeds the tolerance; the first such step issues a
        :class:`NormalComponentWarning`

    Notes
    -----
    A method implements ``_advance(t, Y, h) -> (Y_new, bases)``: one step of size ``h``
    (negative backward), returning the new state and a list of orthonormal bases (one per
    mode) whose tensor product contains both ``Y`` and ``Y_new``, or None (the base class
    then uses ``orth([U_i, U_i^new])``). The error estimate and the dense output live in that
    space.
    """

    #: Name of the method in :data:`tuckerflow.integrate.METHODS`.
    name = "base"
    #: Classical order of the method in the step size.
    order = 1
    #: True when the rank may change from step to step.
    rank_adaptive = False
    #: Names of the method-specific keyword options.
    OPTIONS: tuple = ()

    def __init__(
        self,
        fun,
        t0,
        y0,
        t_bound,
        *,
        step=None,
        rtol=1e-3,
        atol=1e-6,
        first_step=None,
        max_step=math.inf,
        substep="rk4",
        **options,
    ):
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            valid = ", ".join(
                ("step", "rtol", "atol", "first_step", "max_step", "substep", *self.OPTIONS)
            )
            warnings.warn(
                f"method {self.name!r} got unknown option(s) {unknown}, which have no effect; "
                f"its options are: {valid}",
                OptionWarning,
                stacklevel=_user_stacklevel(),
            )
            options = {k: v for k, v in options.items() if k in self.OPTIONS}
        self.t = check_time("t0", t0)
        self.t_bound = check_time("t_bound", t_bound)
        self.direction = -1.0 if self.t_bound < self.t else 1.0
        span = abs(self.t_bound - self.t)
        self.rtol, self.atol = check_tolerances(rtol, atol)
        self.fixed_step = None if step is None else check_step_size("step", step, span)
        self.first_step = (
            None if first_step is None else check_step_size("first_step", first_step, span)
        )
        self.max_step = check_step_size("max_step", max_step, span)
        y0 = as_tucker(y0, "y0")
        validate_rank(y0.shape, y0.rank, "y0.rank")
        check_finite(y0.core, "y0.core")
        for i, u in enumerate(y0.factors):
            check_finite(u, f"y0.factors[{i}]")
        if self.fixed_step is None and self.rtol < RTOL_FLOOR * eps(y0.core):
            raise ValueError(
                f"rtol={rtol!r} is below {RTOL_FLOOR:g}·eps of y0's dtype {dtype_name(y0.core)} "
                f"({RTOL_FLOOR * eps(y0.core):.2g}): the error estimate cannot resolve it; "
                "use a wider dtype or a larger rtol"
            )
        self.shape = tuple(y0.shape)
        self.size = math.prod(self.shape)
        self.y = orthonormalize(y0)
        self.fun = CheckedRightHandSide(fun, self.shape)
        self.substep = resolve_substep(substep)
        self.status = "running" if self.t != self.t_bound else "finished"
        self.message = None
        self.t_old = None
        self.step_size = None
        self.nsteps = 0
        self.nrejected = 0
        self.last_error = None
        self.last_normal_error = None
        self.max_normal_error = None
        self._warned_normal = False
        self._h_abs = None
        self._f = None  # F(t, y) when already evaluated (first same as last)
        self._step = None  # data of the last accepted step (dense output)
        self._configure(**options)

    # -- subclass interface ------------------------------------------------------------------
    def _configure(self, **options):
        """Store method options (called once from ``__init__``)."""

    def _advance(self, t, y, h):  # pragma: no cover - abstract
        """One step of size ``h`` from ``(t, y)``: returns ``(y_new, bases or None)``."""
        raise NotImplementedError

    def _begin_step(self, t, y, h, tol):
        """Hook called before each attempt with the step's error budget ``tol``."""
        self._tol = tol

    # -- public ------------------------------------------------------------------------------
    @property
    def nfev(self) -> int:
        return self.fun.nfev

    @property
    def rank(self) -> tuple:
        return tuple(self.y.rank)

    @property
    def adaptive(self) -> bool:
        return self.fixed_step is None

    def tolerance(self, *norms) -> float:
        """Error budget ``atol·√N + rtol·max(norms)`` of one step."""
        return self.atol * math.sqrt(self.size) + self.rtol * max(norms)

    def step(self, *, t_stop=None):
        """Advance by one step (fixed: to ``min(t + step, t_bound, t_stop)`` in the direction
        of integration; adaptive: as far as the error estimate allows, not beyond ``t_bound``
        or ``t_stop``).

        Returns
        -------
        message : str or None
            None on success; the reason on failure (then ``status == "failed"`` and the state
            is unchanged).
        """
        if self.status != "running":
            raise RuntimeError(f"step() called on a solver whose status is {self.status!r}")
        end = self.t_bound
        if t_stop is not None:
            t_stop = float(t_stop)
            if self.direction * (t_stop - self.t) <= 0:
                raise ValueError(
                    f"t_stop={t_stop!r} must lie after the current time {self.t} in the "
                    "direction of integration"
                )
            if self.direction * (t_stop - end) < 0:
                end = t_stop
        try:
            success, message = self._step_impl(end)
        except RightHandSideError as exc:
            success, message = False, f"fun failed {exc}"
        except ContractionError as exc:
            success, message = False, f"fun(t, Y) is unusable: {exc}"
        if not success:
            self.status = "failed"
            self.message = f"{message}; the last good state is at t={self.t!r}"
            return self.message
        self.nsteps += 1
        if self.direction * (self.t - self.t_bound) >= 0:
            self.status = "finished"
        return None

    def dense_output(self):
        """The interpolant of the last accepted step (:class:`StepInterpolant`).

        A cubic Hermite interpolant in the tensor-product space of the step, from the two
        end values and the projections of ``F`` onto that space (third-order accurate in
        the step size, i.e. at least the method's order); it costs one evaluation of ``fun``
        per step in fixed-step mode (none in adaptive mode, where the error estimate
        evaluates ``F`` at the new state anyway).
        """
        if self._step is None:
            raise RuntimeError("dense_output() is available after the first accepted step")
        data = self._step
        if data.f0 is None:
            data.f0 = self.fun(data.t0, data.y0)
        if data.f1 is None:
            data.f1 = self._f if self._f is not None else self.fun(self.t, self.y)
            self._f = data.f1
        return StepInterpolant(data)

    # -- step-size control ---------------------------------------------------------------------
    def _min_step(self, t):
        return 10 * abs(np.nextafter(t, self.direction * np.inf) - t)

    def _current_f(self):
        if self._f is None:
            self._f = self.fun(self.t, self.y)
        return self._f

    def _step_impl(self, end):
        t, y = self.t, self.y
        if self.fixed_step is not None:
            return self._fixed_step(t, y, end)
        return self._adaptive_step(t, y, end)

    def _fixed_step(self, t, y, end):
        h_abs = self.fixed_step
        # the resolution is coarsest at the end of the span of largest magnitude: a step
        # below it there would never reach t_bound (or take ~2^52 steps to)
        for where in (t, self.t_bound):
            if where + self.direction * h_abs == where or where - self.direction * h_abs == where:
                return False, (
                    f"step={h_abs!r} is below the time resolution at t={where!r} "
                    "(t + step == t): the steps cannot reach t_bound"
                )
        remaining = abs(end - t)
        if h_abs >= remaining - SLIVER_FRACTION * h_abs:
            t_new = end
        else:
            t_new = t + self.direction * h_abs
        h = t_new - t
        tol = self.tolerance(to_float(tl.norm(y.core)))
        self._begin_step(t, y, h, tol)
        y_new, bases = self._advance(t, y, h)
        self._accept(t, y, t_new, y_new, bases, f0=self._f, f1=None)
        return True, None

    def _adaptive_step(self, t, y, end):
        f0 = self._current_f()
        norm0 = to_float(tl.norm(y.core))
        exponent = -1.0 / (min(self.order, 2) + 1)
        if self._h_abs is None:
            if self.first_step is not None:
                self._h_abs = self.first_step
            else:
                self._h_abs = initial_step(f0, norm0, self, exponent)
        h_abs = min(self._h_abs, self.max_step)
        if self.max_step < self._min_step(self.t_bound):
            return False, (
                f"max_step={self.max_step!r} is below the time resolution at "
                f"t={self.t_bound!r}: the steps cannot reach t_bound"
            )
        rejected = False
        while True:
            if h_abs < self._min_step(t):
                return False, (
                    f"the step size {h_abs:.3g} required by rtol={self.rtol}, "
                    f"atol={self.atol} is below the time resolution at t={t!r}"
                )
            t_new = t + self.direction * h_abs
            if self.direction * (t_new - end) > 0:
                t_new = end
            h = t_new - t
            h_abs = abs(h)
            tol = self.tolerance(norm0)
            self._begin_step(t, y, h, tol)
            y_new, bases = self._advance(t, y, h)
            f1 = self.fun(t_new, y_new)
            data = step_data(t, y, t_new, y_new, bases, f0, f1)
            inside, normal = error_parts(data)
            # fixed rank: the normal component is the rank's model error, which a smaller
            # step does not reduce; it is reported, not controlled
            err = math.hypot(inside, normal) if self.rank_adaptive else inside
            tol = self.tolerance(norm0, to_float(tl.norm(y_new.core)))
            ratio = _ratio(err, tol)
            if not math.isfinite(ratio) or not math.isfinite(normal):
                check_finite_step([data.g0, data.g1], t, t_new)
                if not math.isfinite(normal):
                    raise RightHandSideError(
                        t,
                        "fun(t, Y) returned non-finite values (NaN or Inf)",
                        where=f"in the step from t={t!r} to t={t_new!r}",
                    )
            if ratio <= 1.0:
                factor = MAX_FACTOR if ratio == 0 else min(MAX_FACTOR, SAFETY * ratio**exponent)
                if rejected:
                    factor = min(1.0, factor)
                self._h_abs = h_abs * max(factor, MIN_FACTOR)
                self.last_error = ratio
                self._report_normal(_ratio(normal, tol), t_new)
                self._accept_data(data, f1)
                return True, None
            self.nrejected += 1
            rejected = True
            h_abs *= max(MIN_FACTOR, SAFETY * ratio**exponent)

    def _report_normal(self, ratio, t):
        self.last_normal_error = ratio
        if self.max_normal_error is None or ratio > self.max_normal_error:
            self.max_normal_error = ratio
        if ratio > 1.0 and not self.rank_adaptive and not self._warned_normal:
            self._warned_normal = True
            warnings.warn(
                f"method {self.name!r} at rank {self.rank}: the part of fun(t, Y) outside the "
                f"step's bases is {ratio:.3g} times the error tolerance of the step ending at "
                f"t={t!r}. It is the model error of the fixed rank, which no step size "
                "reduces: the step is accepted and the results do not meet rtol/atol; "
                "solve_ivp(...).normal_errors holds the ratio of every step. A rank-adaptive "
                "method (e.g. 'ra-bug') or a larger rank removes it",
                NormalComponentWarning,
                stacklevel=_user_stacklevel(),
            )

    def _accept(self, t, y, t_new, y_new, bases, f0, f1):
        self._accept_data(step_data(t, y, t_new, y_new, bases, f0, f1), f1)

    def _accept_data(self, data, f1):
        theta = getattr(self, "_theta", None)
        data.theta = theta if theta is not None else TRUNCATION_FRACTION * self._tol
        self.t_old, self.t, self.y = data.t0, data.t1, data.y1
        self.step_size = data.t1 - data.t0
        self._f = f1
        self._step = data
