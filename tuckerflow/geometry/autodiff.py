"""Riemannian gradients of PyTorch functions of Tucker tensors from one backward pass."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorly as tl

from .._backend import conj_t, dtype_name
from ..tucker import TuckerTensor
from ..typing import TuckerLike
from ._point import check_point
from .projection import _orthogonal_complement
from .tangent import TuckerTangent, _assemble, _Base

__all__ = ["AUTODIFF_METHODS", "autodiff_riemannian_gradient"]

#: Parametrisations offered by :func:`autodiff_riemannian_gradient`.
AUTODIFF_METHODS = ("tangent", "factors")


def autodiff_riemannian_gradient(
    f: Callable[[Any], Any],
    Y: TuckerLike,
    *,
    method: str = "tangent",
    return_value: bool = False,
) -> TuckerTangent | tuple[TuckerTangent, Any]:
    """Riemannian gradient of a real scalar PyTorch function of a Tucker tensor.

    Parameters
    ----------
    f : callable
        ``f(T) -> 0-d real torch tensor`` for a :class:`~tuckerflow.TuckerTensor` ``T`` of the
        shape of ``Y`` (differentiable through ``T.core`` and ``T.factors``, e.g. using
        ``T.to_tensor()``, :func:`tuckerflow.inner` or any mode products).
    Y : Tucker tensor of torch tensors
        Base point (orthonormal factors, checked); the PyTorch TensorLy backend must be active.
    method : {"tangent", "factors"}
        ``"tangent"`` (default) differentiates along the tangent-space coordinates and uses no
        inverse; ``"factors"`` differentiates through ``(C, U_i)`` and solves one small
        triangular system per mode (see Notes).
    return_value : bool
        Also return ``f(Y)`` (detached).

    Returns
    -------
    TuckerTangent (and the value)
        ``grad f(Y) = P_Y ∇f(Y)``.

    Notes
    -----
    One forward and one backward pass, never forming ``∇f(Y)`` densely unless ``f`` does.
    Write ``W_i = Mat_i(∇f ×_{j≠i} U_jᴴ)`` and ``Mat_i(C)ᴴ = Q_i S_iᴴ``; the gradient
    components are ``δC = ∇f ×_j U_jᴴ`` and ``δK_i = (I − U_iU_iᴴ) W_i Q_i``
    (see :class:`~tuckerflow.TuckerTangent`).

    * ``"tangent"``: ``f`` is evaluated at the rank-``2r`` Tucker tensor
      ``T(D, K) = D ×_j U_j + Σ_i Ten_i(K_i Q_iᴴ) ×_{j≠i} U_j`` at ``D = C``, ``K_i = 0``
      (so ``T = Y``); then ``∂f/∂D = δC`` and ``∂f/∂K_i = W_i Q_i`` exactly: no inverse.
    * ``"factors"``: ``f`` is evaluated at ``C ×_j U_j``; ``∂f/∂C = δC`` and
      ``∂f/∂U_i = W_i Mat_i(C)ᴴ = W_i Q_i S_iᴴ``, so
      ``δK_i = (I − U_iU_iᴴ) ∂f/∂U_i S_i^{-ᴴ}``: the classical formula
      ``δU_i = (I − U_iU_iᴴ) ∂f/∂U_i (Mat_i(C) Mat_i(C)ᴴ)^{-1}`` with the Gram matrix replaced
      by its triangular factor (condition number ``κ(S_i)``, not ``κ(S_i)²``).

    PyTorch's gradient of a real function of complex tensors is ``∂f/∂z̄``-based, i.e. the
    ``G`` with ``df = Re⟨G, dz⟩``: the same convention as :func:`tuckerflow.project`.

    References
    ----------
    .. [1] O. Koch and C. Lubich, "Dynamical tensor approximation", SIAM J. Matrix Anal. Appl.
       31(5), 2010.
    .. [2] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch and F. Tudisco, "Geometry-aware
       training of factorized layers in tensor Tucker format", NeurIPS 2024, arXiv:2305.19059.
    """
    import torch  # PyTorch-only function: torch is imported when it is called, not before

    if method not in AUTODIFF_METHODS:
        raise ValueError(f"method={method!r} is not one of {AUTODIFF_METHODS}")
    if tl.get_backend() != "pytorch":
        raise ValueError(
            "autodiff_riemannian_gradient needs the PyTorch TensorLy backend "
            f"(active: {tl.get_backend()!r}); use tl.backend_context('pytorch')"
        )
    y = check_point(Y, "Y")
    # the base point of the result holds no autograd history (Y may hold Parameters)
    y = TuckerTensor(y.core.detach(), [u.detach() for u in y.factors])
    base = _Base(y)
    d = len(y.shape)
    factors = list(y.factors)
    core = y.core.clone().requires_grad_(True)
    if method == "tangent":
        ks = [torch.zeros_like(u, requires_grad=True) for u in factors]
        blocks = [tl.fold(conj_t(q), i, tuple(y.rank)) for i, q in enumerate(base.qs)]
        r = tuple(y.rank)
        parts = [(core, (0,) * d)]
        for i in range(d):
            parts.append((blocks[i], tuple(r[i] if j == i else 0 for j in range(d))))
        big = _assemble(parts, tuple(2 * ri for ri in r))
        point = TuckerTensor(big, [torch.cat([u, k], dim=1) for u, k in zip(factors, ks)])
        leaves = [core, *ks]
    else:
        fs = [u.clone().requires_grad_(True) for u in factors]
        point = TuckerTensor(core, fs)
        leaves = [core, *fs]
    with torch.enable_grad():
        value = f(point)
        if not (torch.is_tensor(value) and value.ndim == 0) or value.is_complex():
            raise TypeError(f"f must return a 0-d real torch tensor, got {value!r}")
        raw = torch.autograd.grad(value, leaves, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, raw)]
    dcore = grads[0]
    dk = []
    for i in range(d):
        g = grads[1 + i]
        if method == "factors":
            # δK_i S_iᴴ = (I − UUᴴ) ∂f/∂U_i  ⇔  S_i δK_iᴴ = ((I − UUᴴ) ∂f/∂U_i)ᴴ
            g = conj_t(torch.linalg.solve(base.ss[i], conj_t(g)))
        dk.append(_orthogonal_complement(factors[i], g))
    grad = TuckerTangent._from_scaled(base, dcore, dk)
    if dtype_name(dcore) != dtype_name(y.core):  # pragma: no cover - torch keeps dtypes
        raise TypeError("autograd changed the dtype of the gradient")
    return (grad, value.detach()) if return_value else grad
