"""``solve_ivp``: integrate ``dY/dt = F(t, Y)`` on Tucker tensors with a chosen method."""

from __future__ import annotations

import math

import numpy as np

from .base import TuckerOdeSolver
from .bug import FixedRankBUG, RankAdaptiveBUG
from .midpoint_bug import MidpointBUG
from .parallel_bug import ParallelBUG
from .psi import ProjectorSplitting

__all__ = ["METHODS", "OdeResult", "solve_ivp"]

#: Integrators by name; ``solve_ivp(method=...)`` also accepts any subclass of
#: :class:`~tuckerflow.integrate.base.TuckerOdeSolver`.
METHODS = {
    "psi": ProjectorSplitting,
    "bug": FixedRankBUG,
    "ra-bug": RankAdaptiveBUG,
    "parallel-bug": ParallelBUG,
    "midpoint-bug": MidpointBUG,
}

MESSAGES = {
    0: "The solver successfully reached the end of the integration interval.",
    1: "The callback asked to stop.",
}


class OdeResult(dict):
    """Result of :func:`solve_ivp`: a dict whose keys are also attributes.

    Attributes
    ----------
    t : numpy array
        Output times.
    y : list of TuckerTensor
        The solution at the output times (on failure the last good state is appended).
    t_steps : numpy array
        Times reached by the accepted steps (``t0`` first).
    ranks : list of tuple
        Multilinear rank after each accepted step (``y0``'s first), aligned with ``t_steps``.
    nfev, nsteps, nrejected : int
        Evaluations of ``fun``, accepted steps, rejected steps.
    status : int
        ``0`` reached ``t_bound``; ``1`` stopped by the callback; ``-1`` failed.
    message : str
    success : bool
        ``status >= 0``.
    """

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self):
        keys = ("status", "success", "message", "nsteps", "nfev", "nrejected")
        inner = ", ".join(f"{k}={self[k]!r}" for k in keys if k in self)
        return f"OdeResult({inner}, len(t)={len(self.get('t', []))})"


def _resolve_method(method):
    if isinstance(method, str):
        try:
            return METHODS[method]
        except KeyError:
            raise ValueError(
                f"method={method!r} is not one of {sorted(METHODS)} "
                "(or pass a subclass of TuckerOdeSolver)"
            ) from None
    if isinstance(method, type) and issubclass(method, TuckerOdeSolver):
        return method
    raise TypeError(
        f"method must be a name in {sorted(METHODS)} or a TuckerOdeSolver subclass, got {method!r}"
    )


def solve_ivp(
    fun,
    t_span,
    y0,
    *,
    method="ra-bug",
    step,
    rank_atol=None,
    rank_rtol=None,
    max_rank=None,
    min_rank=None,
    t_eval=None,
    substep="rk4",
    callback=None,
    **options,
):
    """Integrate ``dY/dt = fun(t, Y)`` from a Tucker tensor ``y0`` by dynamical low-rank steps.

    Parameters
    ----------
    fun : callable ``fun(t, Y)``
        ``Y`` is a :class:`~tuckerflow.TuckerTensor`; the return value may be a dense tensor,
        a Tucker tensor or any :class:`~tuckerflow.geometry.Contractible` (the operators of
        :mod:`tuckerflow.operators` are callables returning Tucker tensors).
    t_span : (float, float)
        ``(t0, t_bound)`` with ``t0 ≤ t_bound``, both finite.
    y0 : Tucker tensor
        Initial value; its rank fixes the rank of the fixed-rank methods.
    method : str or TuckerOdeSolver subclass
        ``"psi"`` (projector splitting, fixed rank), ``"bug"`` (fixed rank), ``"ra-bug"``
        (rank-adaptive), ``"parallel-bug"`` (rank-adaptive, parallel substeps, step
        rejection), ``"midpoint-bug"`` (rank-adaptive, second order); see :data:`METHODS`.
    step : float
        Step size ``h > 0``. Steps are shortened to land on ``t_bound`` and on ``t_eval``.
    rank_atol, rank_rtol, max_rank, min_rank : optional
        Truncation options of the rank-adaptive methods (see
        :class:`~tuckerflow.integrate.RankAdaptiveMixin`); an error for the fixed-rank ones.
    t_eval : sequence of float, optional
        Output times in ``[t0, t_bound]`` (sorted); default: every step.
    substep : {"euler", "rk4", "exp"} or callable
        Solver of the substep ODEs; ``"exp"`` is exact for linear ``fun``
        (:class:`~tuckerflow.integrate.substep.KrylovExponential`).
    callback : callable ``callback(t, Y) -> bool``, optional
        Called after every accepted step; returning True stops the integration (status 1).
    **options
        Further method options (e.g. ``truncation="st_hosvd"``); unknown names are an error
        listing the valid ones.

    Returns
    -------
    OdeResult
        ``t``, ``y``, ``t_steps``, ``ranks``, ``nfev``, ``nsteps``, ``nrejected``,
        ``status``, ``message``, ``success``. When ``fun`` returns a wrong shape or NaN/Inf,
        the integration stops with ``success=False``, a message naming the time, and the last
        good state at the end of ``y``.

    Notes
    -----
    Dynamical low-rank approximation replaces ``Ẏ = F(t, Y)`` by an evolution on (or near)
    the manifold of Tucker tensors of rank ``r``; every method reduces a step to small
    substep ODEs for factor-sized matrices and cores. The fixed-rank BUG
    [2]_, rank-adaptive BUG [3]_ and projector-splitting [1]_ integrators are
    exact for constant-rank solutions and robust to small singular values; the parallel BUG
    [4]_ runs all substeps from the same state; the midpoint BUG [5]_ is second
    order. The right-hand side is only accessed through contractions with small matrices
    (:func:`tuckerflow.geometry.contract`), so structured operators never densify.

    References
    ----------
    .. [1] Lubich, Vandereycken & Walach, SINUM 56(3), 2018 (arXiv:1709.02594).
    .. [2] Ceruti & Lubich, BIT 62, 2022 (arXiv:2010.02022).
    .. [3] Ceruti, Kusch & Lubich, BIT 62, 2022 (arXiv:2104.05247).
    .. [4] Ceruti, Kusch & Lubich, SISC 46, 2024 (arXiv:2304.05660).
    .. [5] Ceruti, Einkemmer, Kusch & Lubich, BIT 64, 2024.

    Examples
    --------
    >>> import numpy as np, tuckerflow as tf
    >>> from tuckerflow.operators import laplacian
    >>> Y0 = tf.random_tucker((12, 12, 12), 2, rng=0)
    >>> heat = 0.01 * laplacian((12, 12, 12), 1 / 13)
    >>> sol = tf.solve_ivp(heat, (0.0, 0.1), Y0, method="ra-bug", step=0.02, substep="exp",
    ...                    rank_atol=1e-10)
    >>> sol.success, len(sol.y), sol.ranks[-1]
    (True, 6, (2, 2, 2))
    """
    cls = _resolve_method(method)
    try:
        t0, t_bound = (float(v) for v in t_span)
    except (TypeError, ValueError):
        raise TypeError(
            f"t_span must be a pair of real numbers (t0, t_bound), got {t_span!r}"
        ) from None
    if not (math.isfinite(t0) and math.isfinite(t_bound)):
        raise ValueError(f"t_span={t_span!r} must be finite")
    if t_bound < t0:
        raise ValueError(
            f"t_span={t_span!r} is reversed (t_bound < t0); integration runs forward in time only"
        )
    rank_opts = {
        k: v
        for k, v in dict(
            rank_atol=rank_atol, rank_rtol=rank_rtol, max_rank=max_rank, min_rank=min_rank
        ).items()
        if v is not None
    }
    solver = cls(fun, t0, y0, t_bound, step=step, substep=substep, **rank_opts, **options)
    if t_eval is not None:
        t_eval = np.asarray(t_eval, dtype=np.float64).ravel()
        if t_eval.size and (
            not np.all(np.isfinite(t_eval))
            or t_eval[0] < t0
            or t_eval[-1] > t_bound
            or np.any(np.diff(t_eval) < 0)
        ):
            raise ValueError(
                f"t_eval must be sorted and lie within t_span={t_span!r}, got {t_eval!r}"
            )
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable as callback(t, Y), got {callback!r}")

    ts, ys = [], []
    if t_eval is None or (t_eval.size and t_eval[0] == t0):
        ts.append(t0)
        ys.append(solver.y)
    pending = [] if t_eval is None else [v for v in t_eval if v > t0]
    t_steps, ranks = [t0], [solver.rank]
    status = None
    while solver.status == "running":
        stop = pending[0] if pending else None
        message = solver.step(t_stop=stop)
        if message is not None:
            status = -1
            break
        t_steps.append(solver.t)
        ranks.append(solver.rank)
        if t_eval is None:
            ts.append(solver.t)
            ys.append(solver.y)
        else:
            while pending and pending[0] <= solver.t:
                ts.append(pending.pop(0))
                ys.append(solver.y)
        if callback is not None and callback(solver.t, solver.y):
            status = 1
            break
    if status is None:
        status = 0
    if status == -1:
        message = solver.message
        if not ts or ts[-1] != solver.t:
            ts.append(solver.t)
            ys.append(solver.y)
    else:
        message = MESSAGES[status]
    return OdeResult(
        t=np.asarray(ts, dtype=np.float64),
        y=ys,
        t_steps=np.asarray(t_steps, dtype=np.float64),
        ranks=ranks,
        nfev=solver.nfev,
        nsteps=solver.nsteps,
        nrejected=solver.nrejected,
        status=status,
        message=message,
        success=status >= 0,
    )
