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


# 1/k! arranged for the Paterson–Stockmeyer evaluation of the degree-16 Taylor polynomial:
# row j holds the coefficients of b⁰…b³ in the j-th block (degrees 4j … 4j + 3)
_PS_BLOCKS = np.array([[1.0 / math.factorial(4 * j + i) for i in range(4)] for j in range(4)])
_PS_TOP = 1.0 / math.factorial(16)


def expm_small(a):
    """``exp(a)`` of a small host matrix by scaling and squaring of a degree-16 Taylor series.

    With ``‖a / 2^s‖_1 ≤ 1/2`` the truncated series errs by less than
    ``e^{1/2} · 0.5^17 / 17!`` ≈ 4e-20 (far below float64 round-off); the squarings then cost
    ``s`` products. The polynomial is evaluated by the Paterson–Stockmeyer scheme: the
    powers ``b², b³, b⁴``, the four blocks ``Σ_{i<4} b^i / (4j + i)!`` as one product, then
    a Horner recursion in ``b⁴`` (7 small products instead of 17). Used for the Hessenberg
    matrices of :class:`KrylovExponential`, for which a general-purpose Padé routine has a
    large fixed overhead (at these sizes every NumPy call costs microseconds of overhead,
    the arithmetic almost nothing).
    """
    a = np.asarray(a)
    k = a.shape[0]
    norm1 = float(np.abs(a).sum(axis=0).max()) if a.size else 0.0
    s = max(0, math.ceil(math.log2(norm1 / 0.5))) if norm1 > 0.5 else 0
    b = a / 2.0**s if s else a
    powers = np.empty((4, k, k), dtype=np.result_type(a.dtype, np.float64))
    powers[0] = np.eye(k)
    powers[1] = b
    np.matmul(b, b, out=powers[2])
    np.matmul(powers[2], b, out=powers[3])
    b4 = powers[2] @ powers[2]
    blocks = (_PS_BLOCKS @ powers.reshape(4, k * k)).reshape(4, k, k)
    out = _PS_TOP * b4 + blocks[3]
    for j in (2, 1, 0):
        out = out @ b4 + blocks[j]
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
    ``f`` and two host transfers (the Hessenberg column, ``h_{j+1,j}``) per basis vector;
    the basis is one array allocated per call and filled in place; the small exponentials
    are taken on the host (:func:`expm_small`). A skew-Hermitian ``A`` (Schrödinger) gives a
    unitary propagator.
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
        m = self.krylov_dim
        basis = None  # rows: orthonormal Krylov vectors, allocated once, filled in place
        while done < h * (1 - 1e-14):
            beta = to_float(tl.norm(y))
            if beta == 0.0:
                break
            if basis is None:
                basis = tl.zeros((m, tl.shape(y)[0]), **context(y0))
            basis = tl.index_update(basis, tl.index[0], y / beta)
            hess = np.zeros((m + 1, m), dtype=np.complex128 if cplx else np.float64)
            tau = h - done
            size = 0
            e = None
            for j in range(m):
                w = tl.reshape(f(tm, tl.reshape(basis[j], shape)), (-1,))
                v = basis[: j + 1]
                vh = tl.conj(v) if cplx else v  # (conj of a real basis would copy it)
                # classical Gram–Schmidt twice: orthogonal to round-off; the two passes'
                # coefficients are summed on the device and read in one transfer
                c1 = tl.dot(vh, w)
                w = w - tl.dot(c1, v)
                c2 = tl.dot(vh, w)
                w = w - tl.dot(c2, v)
                col = to_host(c1 + c2, dtype=None)
                hess[: j + 1, j] = col
                nxt = to_float(tl.norm(w))
                # ‖A v_j‖ by Pythagoras (the basis is orthonormal), to round-off
                scale = math.sqrt(float(np.vdot(col, col).real) + nxt * nxt)
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
                    basis = tl.index_update(basis, tl.index[j + 1], w / nxt)
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
