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
from .transport import basis_change, embedding, mode_products

__all__ = ["kstep_bases", "partial_contraction"]


def _single():
    import torch

    return (torch.float32, torch.complex64)


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


class HostBatch:
    """Device values gathered for one host transfer: ``add`` returns a slice into the result."""

    def __init__(self):
        self.parts, self.size, self.host = [], 0, None

    def add(self, t):
        import torch

        t = t.reshape(-1).to(torch.float64)
        sl = slice(self.size, self.size + t.numel())
        self.parts.append(t)
        self.size += t.numel()
        return sl

    def fetch(self):
        """The one transfer (none when nothing was added)."""
        import numpy as np
        import torch

        from .._host import to_host

        self.host = to_host(torch.cat(self.parts)) if self.parts else np.zeros(0)
        return self.host


class KStepJob:
    """Inputs of :func:`kstep_bases` for one layer (see there)."""

    __slots__ = ("core", "factors", "G", "lr", "fixed", "factor_grads", "modes", "embedded")

    def __init__(self, core, factors, G, lr, *, fixed_modes=(), factor_grads=None):
        self.core, self.factors, self.G, self.lr = core, list(factors), G, lr
        self.fixed, self.factor_grads = set(fixed_modes), factor_grads
        self.modes = {}
        #: modes whose basis change ``Û_iᴴ U_i`` is the embedding ``[I; 0]`` (after
        #: :func:`kstep_finish`)
        self.embedded = []


def kstep_prepare(jobs, batch, ok=None):
    """Device half of :func:`kstep_bases` for many layers at once; no host transfer.

    Every QR of a core unfolding, every orthonormalisation of a fixed mode and every SVD or
    Gram ``eigh`` of the new directions is one batched call per shape
    (:mod:`tuckerflow.optim._batched`). The norms and singular values the augmentation
    decides on are added to ``batch`` (a :class:`HostBatch`); after ``batch.fetch()``,
    :func:`kstep_finish` forms the bases. ``ok`` (a device boolean) replaces the matrices
    handed to the iterative SVD/``eigh`` by zeros when the step's inputs were not finite
    (the step is refused after the transfer; some LAPACK drivers never return on an Inf).

    Single-precision modes of the Gram path with ``k ≤ n − r`` new directions form ``wᴴw``
    in their own dtype and transfer its smallest eigenvalue, trace and Cholesky flag
    instead of its spectrum (:func:`tuckerflow.optim._batched.augment_gram`): where
    :func:`~tuckerflow.optim._batched.augment_is_certain` shows that the float64 path keeps
    all ``k`` directions, :func:`kstep_finish` adds ``orth((I − UUᴴ) w R⁻¹)`` (``R`` the
    Cholesky factor; ``orth((I − UUᴴ) orth(w))`` where ``w R⁻¹`` is not known to be well
    conditioned), no eigenvectors; the others are decided by the float64 path.
    """
    import math

    import torch

    from .._backend import eps
    from ..dlra import _EPS64, AUGMENT_GRAM_SAFETY, AUGMENT_RTOL_FACTOR
    from . import _batched

    def unfold(x, i):
        return torch.movedim(x, i, 0).reshape(x.shape[i], -1)

    # 1. QRs of the core unfoldings (weight K-step) in batches
    qr_in, qr_at = [], []
    for j, job in enumerate(jobs):
        for i, u in enumerate(job.factors):
            if u is not None and job.factor_grads is None:
                qr_in.append(unfold(job.core, i).conj().T)
                qr_at.append((j, i))
    qrs = _batched.batched(lambda a: torch.linalg.qr(a), qr_in)
    qr_of = {key: res for key, res in zip(qr_at, qrs)}
    fixed_in, fixed_at, svd_in, svd_at, gram_in, gram_at = [], [], [], [], [], []
    fast_in, fast_at = [], []
    for j, job in enumerate(jobs):
        for i, u in enumerate(job.factors):
            if u is None:
                continue
            if job.factor_grads is not None:
                g = job.factor_grads[i]
            else:
                q, r = qr_of[(j, i)]
                if hasattr(job.G, "contraction"):  # formed from the records (TDLRT)
                    g = unfold(job.G.contraction(i), i) @ q
                else:
                    g = unfold(partial_contraction(job.G, job.factors, i), i) @ q
            entry = {"u": u}
            job.modes[i] = entry
            if i in job.fixed:
                # K_i = U_i S_i − λ g_i (U_i Mat_i(C) Mat_i(C)ᴴ − λ ∇_{U_i}L from the factor
                # gradients): formed for the fixed modes only, the augmentation needs g_i alone
                if job.factor_grads is not None:
                    unf = unfold(job.core, i)
                    start = u @ (unf @ unf.conj().T)
                else:
                    start = u @ r.conj().T.resolve_conj()
                entry["kind"] = "fixed"
                fixed_in.append(start - job.lr * g)
                fixed_at.append(entry)
                continue
            n, r_ = u.shape
            k = g.shape[1]
            if job.lr == 0 or n == r_ or k == 0:
                entry["kind"] = "keep"
                continue
            rtol = AUGMENT_RTOL_FACTOR * eps(u)
            u0h = u.conj().T
            w = g - u @ (u0h @ g)
            w = w - u @ (u0h @ w)
            entry.update(kind="augment", w=w, rtol=rtol, room=n - r_)
            entry["norm"] = batch.add(torch.norm(g).reshape(1))
            safe = w if ok is None else torch.where(ok, w, torch.zeros_like(w))
            if k < n and rtol**2 > AUGMENT_GRAM_SAFETY * (math.sqrt(n) + k) * _EPS64:
                entry["gram"] = True
                if k <= n - r_ and _batched._FLOAT32_AUGMENT and u.dtype in _single():
                    # the float32 Gram path, certified in kstep_finish (keeping all k)
                    fast_in.append(safe)
                    fast_at.append(entry)
                    continue
                gram_in.append(safe.conj().T)
                gram_at.append(entry)
            else:
                entry["gram"] = False
                svd_in.append(safe)
                svd_at.append(entry)
    for entry, q in zip(fixed_at, _batched.orth(fixed_in)):
        entry["U"] = q
    for entry, (v, s) in zip(gram_at, _batched.gram_left(gram_in)):
        entry["vecs"], entry["s"] = v, s
        entry["s_at"] = batch.add(s)
    for entry, (u_, s, _) in zip(svd_at, _batched.svd(svd_in)):
        entry["vecs"], entry["s"] = u_, s
        entry["s_at"] = batch.add(s)
    for entry, (chol, row) in zip(fast_at, _batched.augment_gram(fast_in)):
        entry["chol"] = chol
        entry["row_at"] = batch.add(row)
    return jobs


def kstep_finish(jobs, host):
    """Host half: the new bases of every job from the transferred values.

    No transfer, unless a mode of the float32 Gram path is not certain
    (:func:`tuckerflow.optim._batched.augment_is_certain`): those modes are decided again by
    the float64 path, with one more transfer shared by all of them. Returns
    ``[(U_hats, C_hat, M_hats), …]`` as :func:`kstep_bases` does.
    """
    import numpy as np

    from . import _batched

    orth_in, orth_at = [], []
    solve_at, qr_at, again = [], [], []

    def augment(entry, s_host):
        u = entry["u"]
        m = min(int(np.count_nonzero(s_host > entry["rtol"] * entry["norm_k"])), entry["room"])
        if m == 0:
            entry["U"] = u
            return
        if entry["gram"]:
            new = (entry["w"] @ entry["vecs"][:, :m]) / entry["s"][None, :m]
        else:
            new = entry["vecs"][:, :m]
        orth_in.append(new - u @ (u.conj().T @ new))
        orth_at.append(entry)

    for job in jobs:
        for entry in job.modes.values():
            if entry["kind"] != "augment":
                continue
            norm_k = entry["norm_k"] = float(host[entry["norm"]][0])
            if norm_k == 0.0:
                entry["U"] = entry["u"]
            elif "chol" not in entry:
                augment(entry, host[entry["s_at"]])
            else:
                how = entry["certain"] = _batched.augment_is_certain(
                    host[entry["row_at"]], *entry["w"].shape, entry["rtol"] * norm_k
                )
                # all k directions kept, span(w) = span(w R⁻¹) = span(orth(w)): from w R⁻¹
                # where that is well conditioned, else by a QR of w; None: not certain
                if how is None:
                    again.append(entry)
                elif how:
                    solve_at.append(entry)
                else:
                    qr_at.append(entry)
    if again:
        # not certain (near the threshold, or rank-deficient): the float64 path, one more
        # transfer for all such modes
        retry = HostBatch()
        for entry, (v, s) in zip(again, _batched.gram_left([e["w"].conj().T for e in again])):
            entry["vecs"], entry["s"] = v, s
            entry["s_at"] = retry.add(s)
        retry.fetch()
        for entry in again:
            augment(entry, retry.host[entry["s_at"]])
    # the certain modes: a basis of span(w) with columns orthonormal up to a factor √3 (or
    # exactly), projected once more; its QR then puts the new directions orthogonal to U to
    # round-off, as for w V S⁻¹ above
    solved = _batched.right_solve([e["w"] for e in solve_at], [e["chol"] for e in solve_at])
    first = _batched.orth([e["w"] for e in qr_at])
    for entry, new in zip(solve_at + qr_at, solved + first):
        u = entry["u"]
        orth_in.append(new - u @ (u.conj().T @ new))
        orth_at.append(entry)
    for entry, q in zip(orth_at, _batched.orth(orth_in)):
        entry["U"] = _cat(entry["u"], q)
    out = []
    for job in jobs:
        U_hats = []
        for i, u in enumerate(job.factors):
            if u is None:
                U_hats.append(None)
                continue
            entry = job.modes[i]
            U_hats.append(entry["u"] if entry["kind"] == "keep" else entry["U"])
        # an augmented (or kept) mode starts with U_i exactly and adds directions orthogonal
        # to it: Û_iᴴ U_i is the embedding [I; 0] (to round-off), taken exactly, so that the
        # core and the optimizer state are zero-padded instead of multiplied by it
        job.embedded = [
            i
            for i, u in enumerate(job.factors)
            if u is not None and job.modes[i]["kind"] != "fixed"
        ]
        M_hats = []
        for i, (u, uh) in enumerate(zip(job.factors, U_hats)):
            if u is None:
                M_hats.append(None)
            elif i in job.embedded:
                M_hats.append(embedding(uh.shape[1], u.shape[1], u))
            else:
                M_hats.append(uh.conj().T @ u)
        out.append((U_hats, basis_change(job.core, M_hats, job.embedded), M_hats))
    return out


def _cat(u, new):
    import torch

    return torch.cat([u, new], dim=1)
