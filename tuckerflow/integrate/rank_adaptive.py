"""``RankAdaptiveSolver``: the base class of the methods whose rank changes from step to step.

It holds what the rank-adaptive methods share: the rank options, the truncation tolerance of
each step (given, or derived from the step's error budget) and the truncation of an
augmented core.
"""

from __future__ import annotations

import math

import numpy as np
import tensorly as tl

from .._backend import to_float
from ..ambient import complement_directions
from ..dlra import _truncate_core
from ..ranks import per_mode
from .base import TRUNCATION_FRACTION, TuckerOdeSolver

__all__ = ["RankAdaptiveSolver", "TRUNCATIONS"]

#: Truncation methods of the rank-adaptive integrators.
TRUNCATIONS = ("hosvd", "st_hosvd")


def _per_mode_bound(value, d, name):
    return None if value is None else tuple(per_mode(value, d, name, minimum=1))


def _tolerance(value, name):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


class RankAdaptiveSolver(TuckerOdeSolver):
    """Base class of the rank-adaptive integrators (``ra-bug``, ``parallel-bug``,
    ``midpoint-bug``).

    Parameters
    ----------
    rank_rtol, rank_atol : float, optional
        Tolerance ``ϑ = min(rank_atol, rank_rtol · ‖Ĉ‖)`` of the truncation at the end of every
        step (the rule of :mod:`tuckerflow.truncation`). Default (neither given): ``ϑ`` is
        :data:`~tuckerflow.integrate.base.TRUNCATION_FRACTION` of the step's error budget,
        ``ϑ = 0.1 · (atol·√N + rtol·‖Y‖)``, in fixed-step and adaptive mode alike. The
        global error of a rank-adaptive method has a plateau of about ``nsteps · ϑ``.
    max_rank, min_rank : int or sequence of int, optional
        Caps and floors of the ranks (at least 1).
    truncation : {"hosvd", "st_hosvd"}
        How the augmented core is truncated (``"st_hosvd"`` makes the norm change of the
        truncation an exact identity).
    augment_normal : bool, optional
        Also augment the bases by the directions in which ``F(t, Y)`` leaves the augmented
        space (:func:`tuckerflow.ambient.complement_directions`, singular values above
        ``ϑ / |h|``): a component of ``F`` orthogonal to the bases in every mode at once,
        which the K-steps cannot see, then enters the Galerkin step. Default: True in
        adaptive mode, False with fixed steps (the published methods). Needs a Tucker form
        of ``F`` (Tucker tensors, the values of :mod:`tuckerflow.operators`); other values
        are not augmented.
    **options
        Options of the method (``METHOD_OPTIONS``).

    Attributes
    ----------
    truncation_info : TruncationInfo of the last truncation
    augmented_norm : norm of the augmented core before the last truncation
    """

    rank_adaptive = True
    RANK_OPTIONS = (
        "rank_rtol",
        "rank_atol",
        "max_rank",
        "min_rank",
        "truncation",
        "augment_normal",
    )
    METHOD_OPTIONS: tuple = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.OPTIONS = RankAdaptiveSolver.RANK_OPTIONS + tuple(cls.METHOD_OPTIONS)

    def _configure(
        self,
        rank_rtol=None,
        rank_atol=None,
        max_rank=None,
        min_rank=None,
        truncation="hosvd",
        augment_normal=None,
        **options,
    ):
        d = len(self.shape)
        if augment_normal is not None and not isinstance(augment_normal, bool):
            raise TypeError(f"augment_normal must be a bool or None, got {augment_normal!r}")
        self.augment_normal = self.adaptive if augment_normal is None else augment_normal
        self.rank_rtol = _tolerance(rank_rtol, "rank_rtol")
        self.rank_atol = _tolerance(rank_atol, "rank_atol")
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
        self._theta = None
        self._configure_method(**options)

    def _configure_method(self, **options):
        """Store the method's own options (``METHOD_OPTIONS``)."""

    @property
    def derived_tolerance(self) -> bool:
        """True when the truncation tolerance is derived from ``rtol``/``atol``."""
        return self.rank_rtol is None and self.rank_atol is None

    def _begin_step(self, t, y, h, tol):
        super()._begin_step(t, y, h, tol)
        if self.derived_tolerance:
            self._theta = TRUNCATION_FRACTION * tol

    def _step_theta(self, y):
        """The truncation tolerance this step will use (before the truncation runs)."""
        if self.derived_tolerance:
            return self._theta
        norm = to_float(tl.norm(y.core))
        cands = [
            v
            for v in (self.rank_atol, None if self.rank_rtol is None else self.rank_rtol * norm)
            if v is not None
        ]
        return min(cands)

    def _with_normal_directions(self, f, y, bases, h):
        """``bases`` augmented by the directions of ``(I − P) f`` above ``ϑ / |h|``."""
        if not self.augment_normal:
            return bases
        dirs = complement_directions(f, bases, self._step_theta(y) / abs(h))
        if dirs is None:
            return bases
        return [
            b if tl.shape(w)[1] == 0 else tl.concatenate([b, w], axis=1)
            for b, w in zip(bases, dirs)
        ]

    def _truncate(self, core_hat, u_hats):
        """Truncate ``Ĉ ×_i Û_i``; records ``truncation_info`` and ``augmented_norm``."""
        self.augmented_norm = to_float(tl.norm(core_hat))
        if self.derived_tolerance:
            rtol, atol = None, self._theta
            if 0 < self._theta < self.augmented_norm:
                # the same ϑ as a fraction of ‖Ĉ‖: a relative tolerance lets the truncation
                # factor the unfoldings through their Gram matrices where that path's
                # round-off is invisible at this ϑ (one product and a small eigh instead of
                # a QR per mode)
                rtol, atol = self._theta / self.augmented_norm, None
        else:
            rtol, atol = self.rank_rtol, self.rank_atol
        # the augmented bases come from checked K-steps (and checked values of F)
        y, p_list, info = _truncate_core(
            core_hat,
            u_hats,
            rtol=rtol,
            atol=atol,
            min_rank=self.min_rank,
            max_rank=self.max_rank,
            method=self.truncation,
            factors_finite=True,
        )
        self.truncation_info = info
        if info.tolerance is not None:
            self._theta = info.tolerance
        return y, p_list, info
