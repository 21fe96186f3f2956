"""Events of :func:`~tuckerflow.integrate.solve_ivp`: sign changes of ``event(t, Y)``.

SciPy's semantics (``scipy/integrate/_ivp/ivp.py``): an event is a callable
``event(t, Y, *args) -> float`` with optional attributes ``terminal`` (bool, or a positive
int: stop after that many occurrences) and ``direction`` (``> 0``: only rising zero
crossings, ``< 0``: only falling ones, ``0``: both). After every accepted step the events
are evaluated at the new state; a sign change is located by Brent's method on the step's
dense output (:class:`~tuckerflow.integrate.dense_output.StepInterpolant`).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["find_active_events", "handle_events", "prepare_events"]

_EPS = float(np.finfo(np.float64).eps)


def prepare_events(events):
    """Validate ``events``; return ``(events, max_events, direction)`` as arrays."""
    if isinstance(events, (str, bytes)):
        raise TypeError(
            f"events must be a callable event(t, Y) or a sequence of them, got the "
            f"{type(events).__name__} {events!r}"
        )
    if callable(events):
        events = (events,)
    try:
        events = tuple(events)
    except TypeError:
        raise TypeError(
            f"events must be a callable event(t, Y) or a sequence of them, got {events!r}"
        ) from None
    max_events = np.empty(len(events))
    direction = np.empty(len(events))
    for i, event in enumerate(events):
        if not callable(event):
            raise TypeError(f"events[{i}]={event!r} is not callable as event(t, Y)")
        terminal = getattr(event, "terminal", None)
        d = getattr(event, "direction", 0)
        try:
            direction[i] = float(d)
        except (TypeError, ValueError):
            raise TypeError(f"events[{i}].direction={d!r} must be a number") from None
        if math.isnan(direction[i]):
            raise ValueError(f"events[{i}].direction must not be NaN")
        if terminal is None or terminal is False or terminal == 0:
            max_events[i] = np.inf
        elif terminal is True:
            max_events[i] = 1
        elif isinstance(terminal, (int, np.integer)) and terminal > 0:
            max_events[i] = int(terminal)
        else:
            raise ValueError(
                f"events[{i}].terminal={terminal!r} must be a bool or a positive integer"
            )
    return events, max_events, direction


def event_value(event, t, y, i):
    v = event(t, y)
    try:
        v = complex(v)
    except (TypeError, ValueError):
        raise TypeError(f"events[{i}](t, Y) must return a real number, got {v!r}") from None
    if v.imag != 0:
        raise TypeError(f"events[{i}](t, Y) must return a real number, got {v!r}")
    if not math.isfinite(v.real):
        raise ValueError(f"events[{i}](t, Y) returned {v.real!r} at t={t!r}; it must be finite")
    return v.real


def find_active_events(g, g_new, direction):
    """Indices of the events whose sign changed in the requested direction."""
    g, g_new = np.asarray(g), np.asarray(g_new)
    up = (g <= 0) & (g_new >= 0)
    down = (g >= 0) & (g_new <= 0)
    either = up | down
    mask = up & (direction > 0) | down & (direction < 0) | either & (direction == 0)
    return np.nonzero(mask)[0]


def _root(event, i, interp, t_old, t):
    from scipy.optimize import brentq

    def g(s):
        return event_value(event, s, interp(s), i)

    ga, gb = g(t_old), g(t)
    if ga == 0:
        return t_old
    if gb == 0 or np.sign(ga) == np.sign(gb):
        # the interpolant does not change sign (a touch at the end point): the step end
        return t
    return brentq(g, t_old, t, xtol=4 * _EPS, rtol=4 * _EPS)


def handle_events(interp, events, active, count, max_events, t_old, t):
    """Roots of the active events in the step; which of them terminate the integration."""
    roots = np.asarray([_root(events[i], i, interp, t_old, t) for i in active])
    if np.any(count[active] >= max_events[active]):
        order = np.argsort(roots) if t > t_old else np.argsort(-roots)
        active, roots = active[order], roots[order]
        first = np.nonzero(count[active] >= max_events[active])[0][0]
        return active[: first + 1], roots[: first + 1], True
    return active, roots, False
