"""``solve_ivp``: integrate ``dY/dt = F(t, Y)`` on Tucker tensors with a chosen method."""

from __future__ import annotations

import math

import numpy as np

from .base import TuckerOdeSolver, check_step_size, check_tolerances
from .bug import FixedRankBUG, RankAdaptiveBUG
from .dense_output import TuckerOdeSolution
from .events import event_value, find_active_events, handle_events, prepare_events
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
    1: "A termination event occurred.",
}
CALLBACK_MESSAGE = "The callback asked to stop."


class OdeResult(dict):
    """Result of :func:`solve_ivp`: a dict whose keys are also attributes (SciPy's fields
    where they apply, plus the low-rank ones).

    Attributes
    ----------
    t : numpy array
        Output times (decreasing for backward integration).
    y : list of TuckerTensor
        The solution at the output times (on failure the last good state is appended).
    sol : TuckerOdeSolution or None
        ``sol(t)``: the Tucker tensor at any ``t`` of the span (``dense_output=True``).
    t_events : list of numpy arrays or None
        For each event, the times at which it occurred.
    y_events : list of lists of TuckerTensor or None
        For each event, the solution at those times.
    nfev : int
        Evaluations of ``fun`` (there is no Jacobian: ``njev``, ``nlu`` do not apply).
    nsteps, nrejected : int
        Accepted steps; rejected attempts (by the step-size controller, and the parallel
        BUG's retries from an augmented start).
    t_steps : numpy array
        Times reached by the accepted steps (``t0`` first).
    ranks : list of tuple
        Multilinear rank after each accepted step (``y0``'s first), aligned with ``t_steps``.
    normal_errors : numpy array or None
        Adaptive mode: for each accepted step (aligned with ``t_steps[1:]``) the normal
        component of its error estimate, the part of ``fun`` outside the step's bases,
        relative to the step's tolerance. The rank-adaptive methods keep it within the
        tolerance; for the fixed-rank methods it is the model error of the rank, which the
        step-size control leaves out, and a value above 1 (also announced by a
        :class:`~tuckerflow.integrate.NormalComponentWarning`) means that the rank cannot
        meet ``rtol``/``atol``. None with fixed steps (no estimate is computed).
    status : int
        ``0`` reached ``t_bound``; ``1`` stopped by a terminal event (or the callback);
        ``-1`` failed.
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


def _check_t_eval(t_eval, t0, t_bound):
    t_eval = np.asarray(t_eval, dtype=np.float64)
    if t_eval.ndim != 1:
        raise ValueError(f"t_eval must be one-dimensional, got shape {t_eval.shape}")
    lo, hi = min(t0, t_bound), max(t0, t_bound)
    if not np.all(np.isfinite(t_eval)) or np.any(t_eval < lo) or np.any(t_eval > hi):
        raise ValueError(f"t_eval must lie within t_span=({t0!r}, {t_bound!r}), got {t_eval!r}")
    d = np.diff(t_eval)
    if (t_bound >= t0 and np.any(d <= 0)) or (t_bound < t0 and np.any(d >= 0)):
        order = "increasing" if t_bound >= t0 else "decreasing"
        raise ValueError(
            f"t_eval must be strictly {order} (the direction of integration), got {t_eval!r}"
        )
    return t_eval


def solve_ivp(
    fun,
    t_span,
    y0,
    *,
    method="ra-bug",
    step=None,
    rtol=1e-3,
    atol=1e-6,
    first_step=None,
    max_step=math.inf,
    t_eval=None,
    dense_output=False,
    events=None,
    vectorized=False,
    args=None,
    rank_atol=None,
    rank_rtol=None,
    max_rank=None,
    min_rank=None,
    substep="rk4",
    callback=None,
    **options,
):
    """Integrate ``dY/dt = fun(t, Y)`` from a Tucker tensor ``y0`` by dynamical low-rank steps.

    The interface of :func:`scipy.integrate.solve_ivp`, for a state kept in Tucker format.

    Parameters
    ----------
    fun : callable ``fun(t, Y, *args)``
        ``Y`` is a :class:`~tuckerflow.TuckerTensor`; the return value may be a dense tensor,
        a Tucker tensor or any :class:`~tuckerflow.ambient.Contractible` (the operators of
        :mod:`tuckerflow.operators` are callables returning such objects).
    t_span : (float, float)
        ``(t0, t_bound)``, both finite; ``t_bound < t0`` integrates backward in time.
    y0 : Tucker tensor
        Initial value with finite entries; its rank fixes the rank of the fixed-rank methods.
    method : str or TuckerOdeSolver subclass
        ``"psi"`` (projector splitting, fixed rank), ``"bug"`` (fixed rank), ``"ra-bug"``
        (rank-adaptive), ``"parallel-bug"`` (rank-adaptive, parallel substeps, step
        rejection), ``"midpoint-bug"`` (rank-adaptive, second order); see :data:`METHODS`.
    step : float, optional
        Fixed step size ``h > 0`` (a magnitude, also backward); steps are shortened to land on
        ``t_bound`` and on ``t_eval``. Default None: adaptive steps for every method.
    rtol, atol : float
        Local error per step, measured norm-wise: ``‖err‖_F ≤ atol·√N + rtol·‖Y‖_F`` (``N``
        the number of entries of ``Y``; the analogue of SciPy's RMS norm). ``rtol > 0``,
        ``atol ≥ 0``. Without ``rank_atol``/``rank_rtol`` the rank truncation spends
        ``TRUNCATION_FRACTION = 0.1`` of this budget in every step, adaptive or fixed.
    first_step, max_step : float, optional
        Initial and largest step size of the adaptive mode (magnitudes ``> 0``).
    t_eval : sequence of float, optional
        Output times within ``t_span``, sorted in the direction of integration. Fixed steps
        are shortened to land on them; adaptive steps are not, the outputs are taken from
        the dense output. Default: the time of every step.
    dense_output : bool
        Build ``sol``, the continuous solution (one extra evaluation of ``fun`` per step in
        fixed-step mode, none in adaptive mode).
    events : callable or list of callables ``event(t, Y, *args) -> float``, optional
        Zero crossings to locate, with SciPy's optional attributes ``terminal`` (bool or a
        count) and ``direction``; roots are found on the dense output.
    vectorized : bool
        SciPy's flag; only ``False`` is supported: ``fun`` receives one Tucker tensor at a
        time (a batch of states has no Tucker format).
    args : tuple, optional
        Extra arguments passed to ``fun`` and to the events.
    rank_atol, rank_rtol, max_rank, min_rank : optional
        Truncation options of the rank-adaptive methods (see
        :class:`~tuckerflow.integrate.RankAdaptiveSolver`); for the fixed-rank methods they
        have no effect (an :class:`~tuckerflow.integrate.OptionWarning`).
    substep : {"euler", "rk4", "exp"} or callable
        Solver of the substep ODEs; ``"exp"`` is exact for linear ``fun``
        (:class:`~tuckerflow.integrate.substep.KrylovExponential`).
    callback : callable ``callback(t, Y) -> bool``, optional
        Called after every accepted step; returning True stops the integration (status 1).
    **options
        Further method options (e.g. ``truncation="st_hosvd"``); a name the method does not
        take has no effect and raises an :class:`~tuckerflow.integrate.OptionWarning`
        listing the valid ones (as SciPy warns about arguments that do not apply), as do
        ``rank_atol``, ``rank_rtol``, ``max_rank``, ``min_rank`` for the fixed-rank methods.

    Returns
    -------
    OdeResult
        ``t``, ``y``, ``sol``, ``t_events``, ``y_events``, ``nfev``, ``nsteps``,
        ``nrejected``, ``t_steps``, ``ranks``, ``normal_errors``, ``status``, ``message``,
        ``success``. When ``fun`` returns a wrong shape or NaN/Inf, or the step size falls
        below the time resolution, the integration stops with ``success=False``, a message
        naming the time, and the last good state at the end of ``y``. After a terminal event
        ``status == 1`` and ``t[-1]``, ``y[-1]`` are the event time and state (also when
        ``t_eval`` is given, where SciPy omits them).

    Notes
    -----
    Dynamical low-rank approximation replaces ``Ẏ = F(t, Y)`` by an evolution on (or near)
    the manifold of Tucker tensors of rank ``r``; every method reduces a step to small
    substep ODEs for factor-sized matrices and cores. The fixed-rank BUG
    [2]_, rank-adaptive BUG [3]_ and projector-splitting [1]_ integrators are
    exact for constant-rank solutions and robust to small singular values; the parallel BUG
    [4]_ runs all substeps from the same state; the midpoint BUG [5]_ is second
    order. The right-hand side is only accessed through contractions with small matrices
    (:mod:`tuckerflow.ambient`), so structured operators never densify.

    The adaptive mode estimates the local error of each step by its defect against the
    trapezoidal rule, ``Y1 − Y0 − (h/2)(F(t0, Y0) + F(t1, Y1))``
    (:mod:`tuckerflow.integrate.error`), and controls the step size like SciPy's explicit
    Runge–Kutta methods (constants in :mod:`tuckerflow.integrate.base`). The rank-adaptive
    methods control the whole defect, including its normal component (the part of ``F``
    outside the step's bases); the fixed-rank methods control the part inside the bases,
    since the normal component is the model error of their rank, which no step size
    reduces, and report it in ``normal_errors``.

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
    >>> sol = tf.solve_ivp(heat, (0.0, 0.1), Y0, rtol=1e-6, dense_output=True)
    >>> sol.success, sol.sol(0.05).shape
    (True, (12, 12, 12))
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
    check_tolerances(rtol, atol)
    if not isinstance(vectorized, (bool, np.bool_)):
        raise TypeError(f"vectorized must be True or False, got {vectorized!r}")
    if vectorized:
        raise ValueError(
            "vectorized=True is not supported: fun(t, Y) is called on one Tucker tensor at a "
            "time (a batch of states has no Tucker format); pass vectorized=False"
        )
    span = abs(t_bound - t0)
    if first_step is not None:
        check_step_size("first_step", first_step, span)
    check_step_size("max_step", max_step, span)
    if args is not None:
        if not isinstance(args, tuple):
            raise TypeError(
                f"args must be a tuple of extra arguments for fun and events, got "
                f"{type(args).__name__} {args!r} (write args=(value,) for one argument)"
            )
        user_fun = fun
        if not callable(user_fun):
            raise TypeError(f"fun must be callable as fun(t, Y, *args), got {fun!r}")

        def fun(t, Y, _f=user_fun):
            return _f(t, Y, *args)

    if events is not None:
        events, max_events, event_dir = prepare_events(events)
        if args is not None:
            events = tuple(lambda t, Y, _e=e: _e(t, Y, *args) for e in events)
    if t_eval is not None:
        t_eval = _check_t_eval(t_eval, t0, t_bound)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable as callback(t, Y), got {callback!r}")
    rank_opts = {
        k: v
        for k, v in dict(
            rank_atol=rank_atol, rank_rtol=rank_rtol, max_rank=max_rank, min_rank=min_rank
        ).items()
        if v is not None
    }
    solver = cls(
        fun,
        t0,
        y0,
        t_bound,
        step=step,
        rtol=rtol,
        atol=atol,
        first_step=first_step,
        max_step=max_step,
        substep=substep,
        **rank_opts,
        **options,
    )
    direction = solver.direction
    fixed = step is not None

    ts, ys = [], []
    if t_eval is None:
        ts.append(t0)
        ys.append(solver.y)
        pending = []
    else:
        pending = list(t_eval)
        while pending and pending[0] == t0:
            ts.append(pending.pop(0))
            ys.append(solver.y)
    t_steps, ranks = [t0], [solver.rank]
    normal_errors = None if fixed else []
    interpolants = [] if dense_output else None
    t_events = y_events = None
    if events is not None:
        g = [event_value(e, t0, solver.y, i) for i, e in enumerate(events)]
        t_events = [[] for _ in events]
        y_events = [[] for _ in events]
        event_count = np.zeros(len(events))
    status = None
    message = None
    while solver.status == "running":
        stop = pending[0] if (pending and fixed) else None
        message = solver.step(t_stop=stop)
        if message is not None:
            status = -1
            break
        t_old, t = solver.t_old, solver.t
        y = solver.y
        t_steps.append(t)
        ranks.append(solver.rank)
        if normal_errors is not None:
            normal_errors.append(solver.last_normal_error)
        interp = None
        if dense_output or events is not None or (t_eval is not None and not fixed):
            interp = solver.dense_output()
        if interpolants is not None:
            interpolants.append(interp)
        terminate = False
        if events is not None:
            g_new = [event_value(e, t, y, i) for i, e in enumerate(events)]
            active = find_active_events(g, g_new, event_dir)
            if active.size:
                event_count[active] += 1
                active, roots, terminate = handle_events(
                    interp, events, active, event_count, max_events, t_old, t
                )
                for e, te in zip(active, roots):
                    t_events[e].append(float(te))
                    y_events[e].append(y if te == t else interp(te))
                if terminate:
                    status = 1
                    t = float(roots[-1])
                    y = solver.y if t == solver.t else interp(t)
            g = g_new
        if t_eval is None:
            ts.append(t)
            ys.append(y)
        else:
            while pending and direction * (pending[0] - t) <= 0:
                te = pending.pop(0)
                ts.append(te)
                ys.append(y if te == t else interp(te) if interp is not None else solver.y)
            if terminate and (not ts or ts[-1] != t):
                ts.append(t)
                ys.append(y)
        if terminate:
            message = MESSAGES[1]
            break
        if callback is not None and callback(t, y):
            status = 1
            message = CALLBACK_MESSAGE
            break
    if status is None:
        status = 0
        message = MESSAGES[0]
    if status == -1 and (not ts or ts[-1] != solver.t):
        ts.append(solver.t)
        ys.append(solver.y)
    sol = None
    if dense_output:
        sol = TuckerOdeSolution(t_steps[: len(interpolants) + 1], interpolants)
    return OdeResult(
        t=np.asarray(ts, dtype=np.float64),
        y=ys,
        sol=sol,
        t_events=None if t_events is None else [np.asarray(v) for v in t_events],
        y_events=y_events,
        nfev=solver.nfev,
        nsteps=solver.nsteps,
        nrejected=solver.nrejected,
        t_steps=np.asarray(t_steps, dtype=np.float64),
        ranks=ranks,
        normal_errors=(
            None if normal_errors is None else np.asarray(normal_errors, dtype=np.float64)
        ),
        status=status,
        message=message,
        success=status >= 0,
    )
