"""Solvers for the small substep ODEs of the low-rank integrators.

Every substep of a DLRA integrator (a K-step, an S-step, a Galerkin core step) is an ODE
``y' = f(t, y)`` for a small array ``y`` (a factor-sized matrix or a core). A substep solver
is any callable ``solver(f, t0, y0, h) -> y1`` that approximates ``y(t0 + h)``; ``f`` returns
an array of the shape of ``y``. Three are provided: explicit Euler (order 1), the classical
Runge–Kutta method (order 4), and a Krylov exponential integrator that is exact (to a
tolerance) for linear ``f``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import tensorly as tl

from .._backend import context, eps, is_complex, to_float
from .._host import to_host

__all__ = [
    "SUBSTEPS",
    "KrylovExponential",
    "explicit_euler",
    "resolve_substep",
    "rk4",
]


def explicit_euler(f, t0, y0, h):
    """One explicit Euler step ``y1 = y0 + h f(t0, y0)`` (order 1, one evaluation)."""
    return y0 + h * f(t0, y0)


def _fresh_sum(fresh, other):
    """``fresh + other`` for an array ``fresh`` created by the caller: added in place when the
    dtypes agree (the same value, one allocation less), otherwise as usual."""
    if getattr(fresh, "dtype", None) is not None and fresh.dtype == getattr(other, "dtype", None):
        fresh += other
        return fresh
    return fresh + other


def rk4(f, t0, y0, h):
    """One step of the classical fourth-order Runge–Kutta method (four evaluations).

    ``y0 + h/6 · (k1 + 2 k2 + 2 k3 + k4)`` with the sum taken in that order, accumulated as
    the stages come in arrays created here (in place where the dtypes agree: the values of
    the plain expression, with fewer large arrays alive at once; at the sizes of a
    low-rank core their allocation, not the arithmetic, is what costs).
    """
    k1 = f(t0, y0)
    k2 = f(t0 + h / 2, _fresh_sum((h / 2) * k1, y0))
    stage = _fresh_sum((h / 2) * k2, y0)
    acc = _fresh_sum(2 * k2, k1)
    del k1, k2
    k3 = f(t0 + h / 2, stage)
    stage = _fresh_sum(h * k3, y0)
    acc = _fresh_sum(acc, 2 * k3)
    del k3
    k4 = f(t0 + h, stage)
    del stage
    acc = _fresh_sum(acc, k4)
    del k4
    acc *= h / 6
    return _fresh_sum(acc, y0)


def expm_small(a):
    """``exp(a)`` of a small host matrix by scaling and squaring of a degree-18 Taylor series.

    With ``‖a / 2^s‖_1 ≤ 1/2`` the truncated series errs by less than ``0.5^19 / 19!``
    (far below round-off); the squarings then cost ``s`` products. Used for the
    Hessenberg matrices of :class:`KrylovExponential`, for which a general-purpose Padé
    routine has a large fixed overhead.
    """
    a = np.asarray(a)
    norm1 = float(np.abs(a).sum(axis=0).max()) if a.size else 0.0
    s = max(0, math.ceil(math.log2(norm1 / 0.5))) if norm1 > 0.5 else 0
    b = a / 2.0**s
    out = np.eye(a.shape[0], dtype=a.dtype)
    term = np.eye(a.shape[0], dtype=a.dtype)
    for k in range(1, 19):
        term = term @ b / k
        out = out + term
    for _ in range(s):
        out = out @ out
    return out


class KrylovExponential:
    """``y(t0 + h) = exp(h A) y0`` for a linear right-hand side ``f(t, y) = A y``.

    Parameters
    ----------
    krylov_dim : int
        Largest Arnoldi basis built from one starting vector.
    rtol : float, optional
        Relative accuracy of each step; default ``100 · eps`` of the state's dtype.

    Notes
    -----
    Arnoldi on ``v_1 = y/‖y‖`` gives ``A V_m = V_m H_m + h_{m+1,m} v_{m+1} e_mᵀ`` and
    ``exp(τA) y ≈ ‖y‖ V_m exp(τ H_m) e_1`` with the a-posteriori error estimate
    ``‖y‖ h_{m+1,m} |e_mᵀ exp(τ H_m) e_1|`` (Saad, SINUM 1992; Hochbruck & Lubich, SINUM 1997).
    When the estimate exceeds the tolerance the step is split (the basis is reused for the
    shorter step, then rebuilt). An invariant subspace (``h_{m+1,m}`` at round-off level)
    makes the result exact. ``f`` is sampled at the midpoint ``t0 + h/2``: exact for
    autonomous linear problems, second order for time-dependent ones. Costs one evaluation of
    ``f`` per basis vector; the small exponentials are taken on the host
    (:func:`expm_small`). A skew-Hermitian ``A`` (Schrödinger) gives a unitary propagator.
    """

    def __init__(self, *, krylov_dim=30, rtol=None):
        if isinstance(krylov_dim, bool) or not isinstance(krylov_dim, numbers.Integral):
            raise TypeError(f"krylov_dim must be an integer >= 1, got {krylov_dim!r}")
        if krylov_dim < 1:
            raise ValueError(f"krylov_dim={krylov_dim} must be at least 1")
        if rtol is not None:
            if isinstance(rtol, bool) or not isinstance(rtol, numbers.Real):
                raise TypeError(f"rtol must be None or a real number in (0, 1), got {rtol!r}")
            if not (0.0 < float(rtol) < 1.0):
                raise ValueError(f"rtol={rtol!r} must lie in (0, 1) (None: 100·eps of the dtype)")
            rtol = float(rtol)
        self.krylov_dim = int(krylov_dim)
        self.rtol = rtol

    def __repr__(self):
        return f"KrylovExponential(krylov_dim={self.krylov_dim}, rtol={self.rtol})"

    def __call__(self, f, t0, y0, h):
        tm = t0 + h / 2
        cplx = is_complex(y0)
        rtol = self.rtol if self.rtol is not None else 100.0 * eps(y0)
        shape = tl.shape(y0)
        y = tl.reshape(y0, (-1,))
        tiny = 10.0 * eps(y0)
        sign = -1.0 if h < 0 else 1.0  # backward substeps: exp(-|h| A)
        h = abs(h)
        done = 0.0
        while done < h * (1 - 1e-14):
            beta = to_float(tl.norm(y))
            if beta == 0.0:
                break
            basis = tl.reshape(y / beta, (1, -1))  # rows: orthonormal Krylov vectors
            m = self.krylov_dim
            hess = np.zeros((m + 1, m), dtype=np.complex128 if cplx else np.float64)
            tau = h - done
            size = 0
            e = None
            for j in range(m):
                w = tl.reshape(f(tm, tl.reshape(basis[j], shape)), (-1,))
                scale = to_float(tl.norm(w))
                for _ in range(2):  # classical Gram–Schmidt twice: orthogonal to round-off
                    # (conj of a real basis would copy it for nothing)
                    c = tl.dot(tl.conj(basis) if cplx else basis, w)
                    w = w - tl.dot(c, basis)
                    hess[: j + 1, j] += to_host(c, dtype=None)
                nxt = to_float(tl.norm(w))
                size = j + 1
                if nxt <= tiny * max(scale, 1e-300):  # invariant subspace: exact
                    e = expm_small(sign * tau * hess[:size, :size])[:, 0]
                    break
                hess[j + 1, j] = nxt
                # stop as soon as the whole remaining substep is resolved
                e = expm_small(sign * tau * hess[:size, :size])[:, 0]
                if beta * nxt * abs(e[size - 1]) <= rtol * beta:
                    break
                if j + 1 < m:
                    basis = tl.concatenate([basis, tl.reshape(w / nxt, (1, -1))], axis=0)
            else:
                # basis exhausted: shorten the step until the estimate is met
                while beta * hess[size, size - 1] * abs(e[size - 1]) > rtol * beta:
                    if tau <= h * 1e-6:
                        break
                    tau /= 2
                    e = expm_small(sign * tau * hess[:size, :size])[:, 0]
            if not cplx:
                e = e.real
            y = tl.dot(tl.tensor(beta * e, **context(y0)), basis[:size])
            done += tau
        return tl.reshape(y, shape)


#: Substep solvers by name.
SUBSTEPS = {"euler": explicit_euler, "rk4": rk4, "exp": KrylovExponential()}


def resolve_substep(substep):
    """A substep solver from a name in :data:`SUBSTEPS` or a callable ``(f, t0, y0, h)``."""
    if isinstance(substep, str):
        try:
            return SUBSTEPS[substep]
        except KeyError:
            raise ValueError(
                f"substep={substep!r} is not one of {sorted(SUBSTEPS)} (or pass a callable "
                "solver(f, t0, y0, h) -> y1)"
            ) from None
    if callable(substep):
        return substep
    raise TypeError(
        f"substep must be a name in {sorted(SUBSTEPS)} or a callable, got {type(substep).__name__}"
    )
