"""Dense output: a Tucker tensor at any time of an integration.

Every accepted step from ``(t0, Y0)`` to ``(t1, Y1)`` has a tensor-product space
``W = W_1 ⊗ ⋯ ⊗ W_d`` (orthonormal bases) that contains both end values: the augmented
bases of the rank-adaptive steps, ``orth([U_i⁰, U_i¹])`` for the fixed-rank ones. In that
space the step is a curve of small cores, and the interpolant is the cubic Hermite curve

``C(θ) = h00(θ) C0 + h10(θ) h G0 + h01(θ) C1 + h11(θ) h G1``,  ``θ = (t − t0)/h``,

with ``C0, C1`` the coordinates of ``Y0, Y1`` in ``W`` and ``G0 = F(t0, Y0) ×_j W_jᴴ``,
``G1 = F(t1, Y1) ×_j W_jᴴ`` the projected slopes. The interpolant stays in ``W`` (it is a
Tucker tensor of rank at most ``dim W_j`` per mode, recompressed to the step's truncation
tolerance), matches both end values exactly and the projected slopes, and its distance to
the exact solution is ``O(h^{p+1}) + O(h ‖(I − P_W) F‖)`` per step: the local error of a
method of order ``p ≤ 2`` plus the part of ``F`` the step did not see, the normal component
of the adaptive error estimate (:mod:`.error`), which the rank-adaptive methods bound and
the fixed-rank ones report.
"""

from __future__ import annotations

import numpy as np
import tensorly as tl
from tensorly.tenalg import multi_mode_dot

from .._backend import conj_t
from ..ambient import contract_unchecked
from ..dlra import augment_basis, truncate_core
from ..tucker import TuckerTensor

__all__ = ["StepInterpolant", "TuckerOdeSolution"]


def _ct(x):
    y = conj_t(x)
    resolve = getattr(y, "resolve_conj", None)
    return resolve() if resolve is not None else y


def _coordinates(y, bases):
    """Core of ``y`` in the bases ``W_j`` (which contain its factors' spans)."""
    return multi_mode_dot(y.core, [tl.dot(_ct(w), u) for w, u in zip(bases, y.factors)])


class StepData:
    """What one accepted step leaves behind for its error estimate and dense output."""

    def __init__(self, t0, y0, t1, y1, bases, f0, f1):
        self.t0, self.y0, self.t1, self.y1 = t0, y0, t1, y1
        self._bases = None if bases is None else list(bases)
        self.f0, self.f1 = f0, f1
        self.theta = None  # truncation tolerance of the interpolant (set by the solver)
        self._g0 = self._g1 = self._c0 = self._c1 = None

    # everything below is computed on first use: a fixed-step run without dense output,
    # events or adaptive control never pays for it
    @property
    def bases(self):
        if self._bases is None:
            self._bases = [
                augment_basis(u0, u1) for u0, u1 in zip(self.y0.factors, self.y1.factors)
            ]
        return self._bases

    @property
    def c0(self):
        if self._c0 is None:
            self._c0 = _coordinates(self.y0, self.bases)
        return self._c0

    @property
    def c1(self):
        if self._c1 is None:
            self._c1 = _coordinates(self.y1, self.bases)
        return self._c1

    def _projected(self, f):
        return contract_unchecked(f, [_ct(w) for w in self.bases])

    @property
    def g0(self):
        if self._g0 is None:
            self._g0 = self._projected(self.f0)
        return self._g0

    @property
    def g1(self):
        if self._g1 is None:
            self._g1 = self._projected(self.f1)
        return self._g1


def step_data(t0, y0, t1, y1, bases, f0, f1):
    return StepData(t0, y0, t1, y1, bases, f0, f1)


class StepInterpolant:
    """Cubic Hermite interpolant of one step in the step's tensor-product space.

    Call it with a time in ``[t_old, t]`` of the step; returns a
    :class:`~tuckerflow.TuckerTensor`.
    """

    def __init__(self, data):
        if not isinstance(data, StepData):
            raise TypeError(
                "StepInterpolant takes the StepData of an accepted step (use "
                f"solver.dense_output()), got {type(data).__name__}"
            )
        self.t_old, self.t = data.t0, data.t1
        self.bases = data.bases
        self.theta = data.theta
        h = data.t1 - data.t0
        self._h = h
        self._c = (data.c0, h * data.g0, data.c1, h * data.g1)

    def core(self, t):
        """Coordinates of the interpolant at ``t`` in the step's bases (a dense core)."""
        s = (float(t) - self.t_old) / self._h if self._h != 0 else 1.0
        h00 = (1 + 2 * s) * (1 - s) ** 2
        h10 = s * (1 - s) ** 2
        h01 = s**2 * (3 - 2 * s)
        h11 = s**2 * (s - 1)
        c0, d0, c1, d1 = self._c
        return h00 * c0 + h10 * d0 + h01 * c1 + h11 * d1

    def __call__(self, t):
        core = self.core(t)
        if self.theta is None:
            return TuckerTensor(core, self.bases)
        y, _, _ = truncate_core(core, self.bases, atol=self.theta)
        return y


class TuckerOdeSolution:
    """Continuous solution of :func:`~tuckerflow.integrate.solve_ivp` (``sol.sol``).

    The counterpart of SciPy's ``OdeSolution``: ``sol(t)`` returns the Tucker tensor at a
    scalar time ``t`` in the integration span, a list of them for a sequence of times.

    Attributes
    ----------
    ts : numpy array
        The step times, in the order of integration.
    interpolants : list of :class:`StepInterpolant`
    """

    def __init__(self, ts, interpolants):
        try:
            self.ts = np.asarray(ts, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"ts must be a sequence of step times, got {ts!r}") from None
        try:
            self.interpolants = list(interpolants)
        except TypeError:
            raise TypeError(
                f"interpolants must be a list of StepInterpolant, got {interpolants!r}"
            ) from None
        if self.ts.ndim != 1 or self.ts.size == 0:
            raise ValueError(
                f"ts must be a non-empty 1-D sequence of times, got shape {self.ts.shape}"
            )
        if not np.all(np.isfinite(self.ts)):
            raise ValueError("ts must be finite")
        if len(self.interpolants) != self.ts.size - 1:
            raise ValueError(
                f"len(interpolants)={len(self.interpolants)} must be len(ts) - 1 = "
                f"{self.ts.size - 1} (one interpolant per step between consecutive times)"
            )
        for k, p in enumerate(self.interpolants):
            if not isinstance(p, StepInterpolant):
                raise TypeError(f"interpolants[{k}] must be a StepInterpolant, got {p!r}")
        steps = np.diff(self.ts)
        if steps.size and not (np.all(steps > 0) or np.all(steps < 0)):
            raise ValueError("ts must be strictly monotonic (the order of integration)")
        for k, p in enumerate(self.interpolants):
            if (p.t_old, p.t) != (self.ts[k], self.ts[k + 1]):
                raise ValueError(
                    f"interpolants[{k}] covers [{p.t_old!r}, {p.t!r}], not the step "
                    f"[{float(self.ts[k])!r}, {float(self.ts[k + 1])!r}] of ts"
                )
        self.ascending = len(self.ts) < 2 or self.ts[-1] >= self.ts[0]
        self._sorted = self.ts if self.ascending else self.ts[::-1]
        self.t_min, self.t_max = float(self._sorted[0]), float(self._sorted[-1])

    def _one(self, t):
        t = float(t)
        if not self.interpolants:
            raise ValueError("the solution has no steps to interpolate")
        if not (self.t_min <= t <= self.t_max):
            raise ValueError(
                f"t={t!r} lies outside the integrated span [{self.t_min!r}, {self.t_max!r}]"
            )
        k = int(np.searchsorted(self._sorted, t, side="left")) - 1
        k = min(max(k, 0), len(self.interpolants) - 1)
        if not self.ascending:
            k = len(self.interpolants) - 1 - k
        return self.interpolants[k](t)

    def __call__(self, t):
        if np.ndim(t) == 0:
            return self._one(t)
        return [self._one(v) for v in np.asarray(t, dtype=np.float64).ravel()]
