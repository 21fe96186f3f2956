"""The K-step of a TDLRT step: new bases for every factorized mode of one Tucker layer.

Pure functions on torch tensors; the small linear algebra goes through the shared building
blocks of :mod:`tuckerflow.dlra` (called under TensorLy's PyTorch backend, locally).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import tensorly as tl

from ..dlra import augment_basis, core_qr
from ..linalg import orth
from .transport import mode_products

__all__ = ["kstep_bases", "partial_contraction"]


def partial_contraction(G, factors, skip):
    """``G ×_{j≠skip} U_jᴴ`` (modes with a None factor are left alone)."""
    mats = [None if (u is None or j == skip) else u.conj().T for j, u in enumerate(factors)]
    return mode_products(G, mats)


def _check_kstep_args(core, factors, G, lr, fixed_modes, factor_grads):
    """Types and shapes of :func:`kstep_bases`' arguments (finiteness: the blocks refuse)."""
    import torch

    if not isinstance(core, torch.Tensor) or core.ndim < 1:
        raise TypeError(f"core must be a torch.Tensor with at least one mode, got {core!r:.60}")
    d = core.ndim
    if isinstance(factors, (str, bytes)) or not isinstance(factors, (list, tuple)):
        raise TypeError(
            f"factors must be a list of {d} torch matrices or None, got {factors!r:.60}"
        )
    if len(factors) != d:
        raise ValueError(f"factors has {len(factors)} entries, core.ndim={d}")
    for i, u in enumerate(factors):
        if u is not None and not (isinstance(u, torch.Tensor) and u.ndim == 2):
            raise TypeError(f"factors[{i}] must be a torch matrix or None, got {u!r:.60}")
        if u is not None and u.shape[1] != core.shape[i]:
            raise ValueError(
                f"factors[{i}].shape={tuple(u.shape)} must have core.shape[{i}]={core.shape[i]} "
                "columns"
            )
    if factor_grads is None:
        shape = tuple(core.shape[i] if u is None else u.shape[0] for i, u in enumerate(factors))
        if not isinstance(G, torch.Tensor) or tuple(G.shape) != shape:
            raise ValueError(f"G must be a torch.Tensor of shape {shape}, got {G!r:.60}")
    else:
        if not isinstance(factor_grads, (list, tuple)) or len(factor_grads) != d:
            raise TypeError(f"factor_grads must be a list of {d} entries, got {factor_grads!r:.60}")
        for i, (u, g) in enumerate(zip(factors, factor_grads)):
            if u is not None and not (isinstance(g, torch.Tensor) and g.shape == u.shape):
                raise ValueError(
                    f"factor_grads[{i}] must be a torch.Tensor shaped like factors[{i}]"
                )
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr):
        raise ValueError(f"lr must be a finite real number, got {lr!r}")
    if isinstance(fixed_modes, (str, bytes)) or not isinstance(fixed_modes, Iterable):
        raise TypeError(f"fixed_modes must be an iterable of modes, got {fixed_modes!r}")
    for m in fixed_modes:
        if isinstance(m, bool) or not isinstance(m, numbers.Integral) or not 0 <= m < d:
            raise ValueError(f"fixed_modes contains {m!r}; modes are 0..{d - 1}")


def kstep_bases(core, factors, G, lr, *, fixed_modes=(), factor_grads=None):
    """New bases and the core written in them, from the K-steps of all factorized modes.

    Parameters
    ----------
    core : torch.Tensor, shape ``(r_1, …, r_d)``
    factors : list of torch.Tensor ``(n_i, r_i)`` with orthonormal columns, or None
        (mode kept full: never changed).
    G : torch.Tensor, shape ``(n_1, …, n_d)``
        Gradient of the loss with respect to the full weight ``Y = C ×_i U_i``.
    lr : float
        Step size ``λ`` of the K-step.
    fixed_modes : iterable of int
        Modes taking the fixed-rank BUG update ``Û_i = orth(K_i)`` (``r_i`` columns) instead
        of the augmentation (rank cap reached, or ranks frozen).
    factor_grads : list of torch.Tensor or None, optional
        The autograd gradients ``∇_{U_i}L`` of the factors. When given, ``G`` is not used
        (pass None) and the K-step is formed without the dense weight gradient (see Notes).

    Returns
    -------
    U_hats : list of torch.Tensor or None
        ``Û_i = [U_i, orth((I − U_iU_iᴴ) K_i)]`` (at most ``2 r_i`` columns, starting with
        ``U_i`` exactly), or ``orth(K_i)`` for the fixed modes.
    C_hat : torch.Tensor
        ``C ×_i (Û_iᴴ U_i)``; equals the weight exactly, ``Ĉ ×_i Û_i = Y``, when no mode is
        fixed.
    M_hats : list of torch.Tensor or None
        ``M̂_i = Û_iᴴ U_i``, the basis change the optimizer state of the core follows.

    Notes
    -----
    With ``Mat_i(C)ᴴ = Q_i S_iᴴ`` (thin QR), ``K_i = U_i S_i − λ g_i`` and
    ``g_i = Mat_i(G ×_{j≠i} U_jᴴ) Q_i`` [ZSCKT24]_. The augmented span
    ``span[U_i, K_i] = span[U_i, g_i]`` does not depend on ``λ ≠ 0``; it contains the
    tangent directions of ``−∇L`` at ``Y`` [CKL22]_. No inverse of a core unfolding appears.
    The augmentation is computed from ``g_i`` itself, so that its drop level is the round-off
    of ``g_i`` (:func:`tuckerflow.dlra.augment_basis`): a step ``λ g_i`` far smaller than the
    round-off of ``U_i S_i`` (float32 weights, small learning rates) still rotates the basis,
    as it does in float64. Only the fixed modes form ``K_i`` (``orth(K_i)``).

    Since ``∇_{U_i}L = Mat_i(G ×_{j≠i} U_jᴴ) Mat_i(C)ᴴ = g_i S_iᴴ``, the matrix
    ``K_i S_iᴴ = U_i Mat_i(C) Mat_i(C)ᴴ − λ ∇_{U_i}L`` needs only the gradients autograd
    already computed; it spans the same space as ``K_i`` whenever ``Mat_i(C)`` has full row
    rank (the generic case; a core with a rank-deficient unfolding, e.g. an all-zero core,
    needs ``G``).

    References
    ----------
    .. [ZSCKT24] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco,
       "Geometry-aware training of factorized layers in tensor Tucker format",
       NeurIPS 2024 (arXiv:2305.19059).
    .. [CKL22] G. Ceruti, J. Kusch, C. Lubich, "A rank-adaptive robust integrator for
       dynamical low-rank approximation", BIT Numer. Math. 62, 2022.

    Examples
    --------
    >>> import torch
    >>> from tuckerflow.optim.basis import kstep_bases
    >>> from tuckerflow.optim.transport import mode_products
    >>> g = torch.Generator().manual_seed(0)
    >>> U = [torch.linalg.qr(torch.randn(n, 2, generator=g, dtype=torch.float64))[0]
    ...      for n in (5, 4, 3)]
    >>> C = torch.randn(2, 2, 2, generator=g, dtype=torch.float64)
    >>> G = torch.randn(5, 4, 3, generator=g, dtype=torch.float64)
    >>> Uh, Ch, _ = kstep_bases(C, U, G, 0.1)
    >>> [u.shape[1] for u in Uh]
    [4, 4, 3]
    >>> bool(torch.allclose(mode_products(Ch, Uh), mode_products(C, U)))
    True
    """
    _check_kstep_args(core, factors, G, lr, fixed_modes, factor_grads)
    fixed = set(fixed_modes)
    U_hats = []
    with tl.backend_context("pytorch", local_threadsafe=True):
        for i, u in enumerate(factors):
            if u is None:
                U_hats.append(None)
                continue
            if factor_grads is not None:
                unfolded = tl.unfold(core, i)
                start, g = u @ (unfolded @ unfolded.conj().T), factor_grads[i]
            else:
                q, s = core_qr(core, i)
                start, g = u @ s, tl.unfold(partial_contraction(G, factors, i), i) @ q
            if i in fixed:
                U_hats.append(orth(start - lr * g))
            elif lr == 0:
                U_hats.append(u)  # K_i = U_i S_i: nothing new
            else:
                # span[U_i, K_i] = span[U_i, g_i]: augmenting by g_i itself puts the drop
                # level at the round-off of g_i (16 eps ‖g_i‖), not of K_i = U_i S_i − λ g_i,
                # where λ‖g_i‖ may be far below eps ‖K_i‖ (float32, small learning rates)
                U_hats.append(augment_basis(u, g))
    # one product Û_iᴴ U_i per mode, shared by the core and the optimizer-state transport
    # (what augmented_core would form again, with checks the shapes here pass by construction)
    M_hats = [None if u is None else uh.conj().T @ u for u, uh in zip(factors, U_hats)]
    c_hat = mode_products(core, M_hats)
    return U_hats, c_hat, M_hats
