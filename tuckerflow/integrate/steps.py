"""Substeps shared by the methods: K-steps, Galerkin core steps, the augmented BUG step.

Each substep is a small ODE solved by the substep solver. The value of every evaluation of
``fun`` is checked for shape in O(1); the result of each substep is checked for finiteness
once (one reduction and one host transfer per substep, not per evaluation), before any
factorisation sees it.

Fast path (optional). The right-hand side of a substep changes only in the small unknown
(``K`` of a K-step, the core of the Galerkin step); an operator ``fun`` that is linear in
the state may hand the integrators that small operator once per substep instead of being
evaluated on a Tucker tensor every time. It does so by providing the methods

``fun.reduced_k_step(core, factors, mode, right)``
    returning ``g(t, K) = Mat_mode(fun(t, Y_K) ×_{j≠mode} U_jᴴ) @ right`` with
    ``Y_K = core ×_mode K ×_{j≠mode} U_j`` (``factors[mode]`` unused);
``fun.reduced_galerkin(factors)``
    returning ``g(t, C) = fun(t, C ×_j U_j) ×_j U_jᴴ``.

Both must equal, to round-off, what the general path computes from ``fun(t, Y)``; the
factors passed are orthonormal. :class:`tuckerflow.operators.KroneckerSum` provides them.
Every call of ``g`` counts as one evaluation of ``fun`` (``nfev``) and its value is checked
for shape like an evaluation's. Operators without these methods (and any right-hand side
not wrapped by the solver) take the general path.
"""

from __future__ import annotations

import tensorly as tl

from .._backend import conj_t
from ..ambient import contract_unchecked, unfolded_contract
from ..dlra import _augment_basis, _core_qr, augmented_core
from ..tucker import TuckerTensor
from .base import CheckedRightHandSide, check_finite_step, check_shape

__all__ = [
    "augmented_bug_step",
    "ct",
    "galerkin_step",
    "k_step",
    "k_steps",
    "trusted_tucker",
]


def trusted_tucker(core, factors):
    """A :class:`~tuckerflow.TuckerTensor` from arrays the integrator built itself.

    The substep evaluations of ``fun`` pass states assembled from the step's own, already
    validated arrays (a core and factors of matching shapes, dtype and device), so the
    per-evaluation validation of the constructor is skipped: the state is validated once per
    step (``y0`` at the start, every result by the finiteness check of its substep).
    """
    y = TuckerTensor.__new__(TuckerTensor)
    y.core = core
    y.factors = list(factors)
    return y


def _reduced(rhs, name):
    """``rhs.fun.<name>`` when ``rhs`` is a solver's checked right-hand side whose function
    provides the fast path ``name`` (see the module notes), else None."""
    if type(rhs) is not CheckedRightHandSide:
        return None
    method = getattr(rhs.fun, name, None)
    return method if callable(method) else None


def _counted(rhs, g, expected, what):
    """``g`` as a substep right-hand side: counted in ``rhs.nfev`` and checked for shape."""

    def f(t, x):
        rhs.nfev += 1
        return check_shape(g(t, x), expected, t, what)

    return f


def ct(x):
    """Conjugate transpose, materialised (PyTorch's lazy conjugate views are resolved)."""
    y = conj_t(x)
    resolve = getattr(y, "resolve_conj", None)
    return resolve() if resolve is not None else y


def k_step(rhs, substep, t0, h, core, factors, i, adjoints=None):
    """K-step of mode ``i``: ``K' = Mat_i(F(t, Ten_i(K V_iᴴ))) V_i`` from ``K(t0) = U_i S_i``.

    Returns ``(K(t0 + h), Q_i)`` where ``Mat_i(C)ᴴ = Q_i S_iᴴ`` and ``V_i = (⊗_{j≠i} U_j) Q_i``.
    The result is not checked for finiteness (:func:`k_steps` checks all modes at once).
    ``adjoints``: the ``U_jᴴ`` when the caller has them (the K-steps of one step share them,
    so that an operator's contractions with them are computed once for all modes).
    """
    q, s = _core_qr(core, i)  # the state was checked for finiteness when it was made
    k0 = tl.dot(factors[i], s)
    k_rank = list(tl.shape(core))
    k_rank[i] = tl.shape(q)[1]
    k_core = tl.fold(ct(q), i, k_rank)  # Mat_i(k_core) = Qᴴ, so Mat_i(Y) = K V_iᴴ
    expected = tuple(tl.shape(k0))
    fast = _reduced(rhs, "reduced_k_step")
    if fast is not None:
        g = fast(k_core, list(factors), i, q)
        return substep(_counted(rhs, g, expected, "a K-step contraction"), t0, k0, h), q
    mats = [ct(u) for u in factors] if adjoints is None else list(adjoints)
    mats[i] = None

    def f(t, k):
        fac = list(factors)
        fac[i] = k
        F = rhs(t, trusted_tucker(k_core, fac))
        return check_shape(unfolded_contract(F, mats, i, q), expected, t, "a K-step contraction")

    return substep(f, t0, k0, h), q


def k_steps(rhs, substep, t0, h, core, factors):
    """The K-steps of all modes from the same state; one finiteness check for all."""
    ks, qs = [], []
    adjoints = None if _reduced(rhs, "reduced_k_step") else [ct(u) for u in factors]
    for i in range(len(factors)):
        k1, q = k_step(rhs, substep, t0, h, core, factors, i, adjoints)
        ks.append(k1)
        qs.append(q)
    check_finite_step(ks, t0, t0 + h)
    return ks, qs


def galerkin_step(rhs, substep, t0, h, core0, factors):
    """Galerkin core step ``C' = F(t, C ×_j U_j) ×_j U_jᴴ`` in fixed bases from ``core0``."""
    expected = tuple(tl.shape(core0))
    fast = _reduced(rhs, "reduced_galerkin")
    if fast is not None:
        g = fast(list(factors))
        c1 = substep(_counted(rhs, g, expected, "the Galerkin contraction"), t0, core0, h)
        check_finite_step([c1], t0, t0 + h)
        return c1
    mats = [ct(u) for u in factors]

    def f(t, c):
        F = rhs(t, trusted_tucker(c, factors))
        return check_shape(contract_unchecked(F, mats), expected, t, "the Galerkin contraction")

    c1 = substep(f, t0, core0, h)
    check_finite_step([c1], t0, t0 + h)
    return c1


def augmented_bug_step(fun, substep, t, h, core, factors):
    """One untruncated augmented BUG step from ``t`` to ``t + h``.

    K-steps in every mode, bases ``Û_i = [U_i, new directions]``, and the Galerkin step on
    ``Ĉ(t) = C ×_j (Û_jᴴ U_j)``. Returns ``(Ĉ(t + h), [Û_i])``, a Tucker tensor of rank up
    to ``2 r`` that the rank-adaptive BUG truncates and the midpoint BUG uses as its half
    step (Ceruti, Kusch & Lubich, BIT 2022).
    """
    ks, _ = k_steps(fun, substep, t, h, core, factors)
    u_hats = [_augment_basis(u, k, finite=True) for u, k in zip(factors, ks)]  # ks: checked
    core_hat = augmented_core(core, factors, u_hats)
    return galerkin_step(fun, substep, t, h, core_hat, u_hats), u_hats
