"""Base class of the steppable low-rank integrators and the checked right-hand side.

The pattern is SciPy's ``OdeSolver``: the public :meth:`TuckerOdeSolver.step` owns the time,
the status and the counters; a method implements ``_step_impl(t, Y, h) -> Y_new``. A failed
step (the right-hand side returned a wrong shape or non-finite values) leaves ``t`` and ``y``
at the last good state and sets ``status = "failed"``.
"""

from __future__ import annotations

import math

import numpy as np
import tensorly as tl
from tensorly import tucker_tensor as _tl_tucker
from tensorly.tenalg import multi_mode_dot

from .._backend import conj_t, to_float
from ..dlra import core_qr
from ..geometry.contract import ambient_shape, contract
from ..truncation import validate_rank
from ..tucker import TuckerTensor, as_tucker, orthonormalize
from .substep import resolve_substep

__all__ = ["RightHandSideError", "TuckerOdeSolver"]

#: A step that would leave less than this fraction of ``step`` before ``t_bound`` (or the
#: next stop) is stretched to end there, so that no sliver step of round-off size remains.
SLIVER_FRACTION = 1e-10


class RightHandSideError(RuntimeError):
    """The right-hand side returned an unusable value at time ``t``."""

    def __init__(self, t, reason):
        super().__init__(f"at t={t!r}: {reason}")
        self.t = t
        self.reason = reason


def ct(x):
    """Conjugate transpose, materialised (PyTorch's lazy conjugate views are resolved)."""
    y = conj_t(x)
    resolve = getattr(y, "resolve_conj", None)
    return resolve() if resolve is not None else y


class CheckedRightHandSide:
    """``fun`` wrapped: counts evaluations, checks shapes, checks contractions for NaN/Inf."""

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
            shape = ambient_shape(F)
        except TypeError as exc:
            raise RightHandSideError(t, f"fun(t, Y) returned an unusable value: {exc}") from None
        if shape != self.shape:
            raise RightHandSideError(
                t, f"fun(t, Y) returned shape {shape}, expected Y.shape={self.shape}"
            )
        return F

    def contract(self, F, matrices, t):
        """``contract(F, matrices)`` checked for NaN/Inf (one small reduction)."""
        return self._checked(contract(F, matrices), t)

    def unfolded_contract(self, F, matrices, mode, right, t):
        """``Mat_mode(contract(F, matrices)) @ right`` (``matrices[mode]`` is None), checked."""
        return self._checked(unfolded_contract(F, matrices, mode, right), t)

    @staticmethod
    def _checked(out, t):
        m = to_float(tl.max(tl.abs(out))) if int(np.prod(tl.shape(out))) else 0.0
        if not math.isfinite(m):
            raise RightHandSideError(t, "fun(t, Y) returned non-finite values (NaN or Inf)")
        return out


def unfolded_contract(F, matrices, mode, right):
    """``Mat_mode(F ×_{j≠mode} M_j) @ right`` without the ``n_mode × ∏ m_j`` intermediate
    where the structure of ``F`` allows it.

    A Tucker ``F = D ×_j W_j`` gives ``W_mode · (Mat_mode(D ×_{j≠mode} M_j W_j) @ right)``,
    costing ``O(n_mode s · cols(right))`` instead of ``O(n_mode ∏ m_j)`` memory traffic; objects
    with an ``unfolded_contract(matrices, mode, right)`` method are asked for it; anything else
    goes through :func:`tuckerflow.geometry.contract`.
    """
    method = getattr(F, "unfolded_contract", None)
    if method is not None:
        return method(matrices, mode, right)
    if isinstance(F, _tl_tucker.TuckerTensor) or (
        isinstance(F, (tuple, list)) and len(F) == 2 and tl.is_tensor(F[0])
    ):
        y = as_tucker(F, "F")
        mats = [tl.dot(m, u) for m, u in zip(matrices, y.factors) if m is not None]
        modes = [j for j, m in enumerate(matrices) if m is not None]
        small = multi_mode_dot(y.core, mats, modes=modes)
        return tl.dot(y.factors[mode], tl.dot(tl.unfold(small, mode), right))
    return tl.dot(tl.unfold(contract(F, matrices), mode), right)


def _check_time(name, value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name}={value!r} must be finite")
    return v


class TuckerOdeSolver:
    """Base class of the integrators of ``dY/dt = F(t, Y)`` on Tucker tensors.

    Parameters
    ----------
    fun : callable ``fun(t, Y)``
        Receives a :class:`~tuckerflow.TuckerTensor` and returns the ambient tensor
        ``F(t, Y)``: a dense tensor, a Tucker tensor, or any object of the
        :class:`~tuckerflow.geometry.Contractible` protocol; structured operators of
        :mod:`tuckerflow.operators` qualify.
    t0, t_bound : float
        Start time and final time, ``t_bound ≥ t0``.
    y0 : Tucker tensor
        Initial value with a valid multilinear rank; its factors are orthonormalised (exact).
    step : float
        Step size ``h > 0`` (the last step is shortened to end at ``t_bound``).
    substep : {"euler", "rk4", "exp"} or callable
        Solver of the substep ODEs (see :mod:`tuckerflow.integrate.substep`).
    **options
        Method-specific options, listed in the class attribute ``OPTIONS``; any other name is
        an error listing the valid ones.

    Attributes
    ----------
    t, y : current time and Tucker tensor
    status : {"running", "finished", "failed"}
    message : str or None
    nfev, nsteps, nrejected : counters (evaluations of ``fun``, accepted, rejected steps)
    """

    #: Name of the method in :data:`tuckerflow.integrate.METHODS`.
    name = "base"
    #: Classical order of the method in the step size.
    order = 1
    #: True when the rank may change from step to step.
    rank_adaptive = False
    #: Names of the method-specific keyword options.
    OPTIONS: tuple = ()

    def __init__(self, fun, t0, y0, t_bound, *, step, substep="rk4", **options):
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            valid = ", ".join(("step", "substep", *self.OPTIONS))
            raise TypeError(
                f"method {self.name!r} got unknown option(s) {unknown}; its options are: {valid}"
            )
        self.t = _check_time("t0", t0)
        self.t_bound = _check_time("t_bound", t_bound)
        if self.t_bound < self.t:
            raise ValueError(
                f"t_span is reversed: t_bound={t_bound!r} < t0={t0!r}; "
                "integration runs forward in time only"
            )
        h = _check_time("step", step)
        if h <= 0:
            raise ValueError(f"step={step!r} must be > 0")
        self.max_step = h
        y0 = as_tucker(y0, "y0")
        validate_rank(y0.shape, y0.rank, "y0.rank")
        self.shape = tuple(y0.shape)
        self.y = orthonormalize(y0)
        self.fun = CheckedRightHandSide(fun, self.shape)
        self.substep = resolve_substep(substep)
        self.status = "running" if self.t < self.t_bound else "finished"
        self.message = None
        self.t_old = None
        self.nsteps = 0
        self.nrejected = 0
        self._configure(**options)

    # -- subclass interface ------------------------------------------------------------------
    def _configure(self, **options):
        """Store method options (called once from ``__init__``)."""

    def _step_impl(self, t, y, h):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- public ------------------------------------------------------------------------------
    @property
    def nfev(self) -> int:
        return self.fun.nfev

    @property
    def rank(self) -> tuple:
        return tuple(self.y.rank)

    def step(self, *, t_stop=None):
        """Advance by one step (to ``min(t + step, t_bound, t_stop)``).

        Returns
        -------
        message : str or None
            None on success; the reason on failure (then ``status == "failed"`` and the state
            is unchanged).
        """
        if self.status != "running":
            raise RuntimeError(f"step() called on a solver whose status is {self.status!r}")
        end = self.t_bound if t_stop is None else min(float(t_stop), self.t_bound)
        if end <= self.t:
            raise ValueError(f"t_stop={t_stop!r} must be later than the current time {self.t}")
        h = self.max_step
        if self.t + h >= end - SLIVER_FRACTION * self.max_step:
            h = end - self.t
            t_new = end
        else:
            t_new = self.t + h
        try:
            y_new = self._step_impl(self.t, self.y, h)
        except RightHandSideError as exc:
            self.status = "failed"
            self.message = f"fun failed {exc}; the last good state is at t={self.t!r}"
            return self.message
        self.t_old, self.t, self.y = self.t, t_new, y_new
        self.nsteps += 1
        if self.t >= self.t_bound:
            self.status = "finished"
        return None


# ------------------------------------------------------------------------------------------------
# substeps shared by the methods


def k_step(rhs, substep, t0, h, core, factors, i):
    """K-step of mode ``i``: ``K' = Mat_i(F(t, Ten_i(K V_iᴴ))) V_i`` from ``K(t0) = U_i S_i``.

    Returns ``(K(t0 + h), Q_i)`` where ``Mat_i(C)ᴴ = Q_i S_iᴴ`` and ``V_i = (⊗_{j≠i} U_j) Q_i``.
    """
    q, s = core_qr(core, i)
    k0 = tl.dot(factors[i], s)
    k_rank = list(tl.shape(core))
    k_rank[i] = tl.shape(q)[1]
    k_core = tl.fold(ct(q), i, k_rank)  # Mat_i(k_core) = Qᴴ, so Mat_i(Y) = K V_iᴴ
    mats = [ct(u) for u in factors]
    mats[i] = None

    def f(t, k):
        fac = list(factors)
        fac[i] = k
        F = rhs(t, TuckerTensor(k_core, fac))
        return rhs.unfolded_contract(F, mats, i, q, t)

    return substep(f, t0, k0, h), q


def galerkin_step(rhs, substep, t0, h, core0, factors):
    """Galerkin core step ``C' = F(t, C ×_j U_j) ×_j U_jᴴ`` in fixed bases from ``core0``."""
    mats = [ct(u) for u in factors]

    def f(t, c):
        return rhs.contract(rhs(t, TuckerTensor(c, factors)), mats, t)

    return substep(f, t0, core0, h)
