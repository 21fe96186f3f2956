"""Small factorisations of many layers at once, and the batched HOSVD truncation of TDLRT.

A TDLRT step factors a handful of small matrices per Tucker layer (QRs of core unfoldings,
SVDs or Gram eigen-decompositions of the new directions, the HOSVD of the augmented core).
Here they are grouped by shape and dtype and each group is one batched ``torch.linalg`` call
(on CUDA each call also synchronises once for its error check, so grouping bounds those as
well). The results equal the per-matrix calls of :mod:`tuckerflow.linalg` up to round-off:
the same LAPACK/cuSOLVER routines on the same matrices, the same sign convention
(:func:`flip_signs`, batched).

:func:`truncate_cores` is :func:`tuckerflow.dlra.truncate_core` with ``method="hosvd"`` for
all layers of a step: every factorisation and the prefix sums of the exact-error table are
computed on the device, then **one** host transfer brings the singular values, norms and
tables of all layers, and the rank decisions are taken on the host by the same rules
(:mod:`tuckerflow.ranks`). Single-precision cores form their Gram matrices in single
precision where a certificate shows the decisions are the float64 path's; the others are
factored again in float64 (a second transfer, only then). Given the weight before the
update of a layer, the same transfer carries what TDLRT's truncation guard decides with
(:class:`GuardData`), and a truncation with a raised rank floor is then taken on the host
without another transfer.
"""

from __future__ import annotations

import math

import numpy as np
import tensorly as tl
import torch

from .._backend import scale_pow2
from .._host import to_host
from ..dlra import _clamped, _gram_is_invisible
from ..ranks import (
    largest_valid_rank,
    lower_ranks_certainly,
    lower_ranks_greedily,
    prepare_tails,
    rank_spec,
    select_prepared,
    sequential_budget,
)
from ..recompression import TruncationInfo, _choose_rank, _make_valid
from ..tucker import TuckerTensor

__all__ = [
    "GuardData",
    "augment_gram",
    "augment_is_certain",
    "batched",
    "flip_signs",
    "gram_left",
    "left_singular",
    "orth",
    "right_solve",
    "svd",
    "truncate_cores",
]

_EPS64 = float(np.finfo(np.float64).eps)


def batched(fn, mats):
    """``[fn(stack)[k] …]``: apply a batched ``fn`` to matrices grouped by shape and dtype.

    ``fn`` takes a ``(b, m, n)`` tensor and returns a tensor or a tuple of tensors with the
    batch as leading dimension; the result is one entry (tensor or tuple) per input, in order.
    """
    groups = {}
    for k, a in enumerate(mats):
        groups.setdefault((tuple(a.shape), a.dtype, a.device), []).append(k)
    out = [None] * len(mats)
    for ks in groups.values():
        res = fn(torch.stack([mats[k] for k in ks]))
        for j, k in enumerate(ks):
            out[k] = tuple(r[j] for r in res) if isinstance(res, tuple) else res[j]
    return out


def _first_largest(u):
    """Row index ``(…, 1, k)`` of the first entry of largest modulus in every column of ``u``.

    For real ``u`` from a max and a min reduction (no ``|u|`` temporary): the largest
    modulus is the maximum or minus the minimum, and on a tie between the two the lower
    row, the first one, as ``argmax(|u|)`` finds it.
    """
    if u.is_complex():
        return torch.argmax(u.abs(), dim=-2, keepdim=True)
    hi, ih = torch.max(u, dim=-2, keepdim=True)
    lo, il = torch.min(u, dim=-2, keepdim=True)
    return torch.where(hi > -lo, ih, torch.where(-lo > hi, il, torch.minimum(ih, il)))


def flip_signs(u, vh=None):
    """:func:`tuckerflow.linalg.flip_signs` on a batch ``(…, m, k)`` (the same phases).

    The entry of largest modulus of each column, the first one on ties (as the
    mask-and-count of :func:`tuckerflow.linalg.flip_signs`), is found by reductions and a
    gather, without temporaries of the size of ``u``.
    """
    pick = torch.gather(u, -2, _first_largest(u)).squeeze(-2)
    pmag = pick.abs()
    safe = torch.where(pmag == 0, torch.ones_like(pmag), pmag)
    phase = pick / safe.to(pick.dtype)
    phase = torch.where(pmag == 0, torch.ones_like(phase), phase)
    u = u * phase.conj().unsqueeze(-2)
    if vh is not None:
        vh = vh * phase.unsqueeze(-1)
    return u, vh


def _absmax(x):
    """``max |x|`` as a 0-d tensor (NaN and Inf propagate), without an ``|x|`` temporary."""
    if x.is_complex():
        return x.abs().amax()
    lo, hi = torch.aminmax(x)
    return torch.maximum(-lo, hi)


def _svd_stack(a):
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    u, vh = flip_signs(u, vh)
    return u, s, vh


def svd(mats):
    """Thin SVDs with deterministic signs, one batched call per shape: ``[(u, s, vh), …]``."""
    return batched(_svd_stack, mats)


def _orth_stack(a):
    return torch.linalg.qr(a)[0]


def orth(mats):
    """``Q`` of thin Householder QRs, one batched call per shape."""
    return batched(_orth_stack, mats)


def _gram_stack(a):
    work = a
    if a.dtype in (torch.float32, torch.complex64):
        work = a.to(torch.complex128 if a.is_complex() else torch.float64)
    real = a.real.dtype if a.is_complex() else a.dtype
    return _gram_eigh(work, a.dtype, real)


def _gram_eigh(work, dtype, real):
    """``(u, s)`` of the Gram matrices ``work workᴴ`` (``work`` already in >= float64)."""
    return _eigh_of_gram(work @ work.conj().transpose(-2, -1), dtype, real)


def _eigh_of_gram(g, dtype, real):
    """``(u, s)`` from a stack of Gram matrices ``g``: descending, signs as ``flip_signs``."""
    lam, v = torch.linalg.eigh(g)
    # the sign convention acts column by column: applied in place before the columns are
    # put in descending order (one reversal, at the output precision)
    pick = torch.gather(v, -2, _first_largest(v))
    pmag = pick.abs()
    phase = pick / torch.where(pmag == 0, torch.ones_like(pmag), pmag).to(pick.dtype)
    phase = torch.where(pmag == 0, torch.ones_like(phase), phase)
    u = torch.flip(v.mul_(phase.conj()).to(dtype), dims=(-1,))
    s = torch.sqrt(torch.clamp_min(torch.flip(lam, dims=(-1,)), 0.0))
    return u, s.to(real)


def gram_left(mats):
    """:func:`tuckerflow.linalg._gram_left` (float64 Gram matrix and ``eigh``), batched."""
    return batched(_gram_stack, mats)


def _augment_gram_stack(w):
    """Per ``n × k`` matrix ``w`` of the stack, in its own dtype: the Cholesky factor ``R`` of
    ``wᴴw`` and the row ``(λ_min(wᴴw), tr(wᴴw), info)`` (``info ≠ 0``: no Cholesky factor)."""
    g = w.conj().transpose(-2, -1) @ w
    lam = torch.linalg.eigvalsh(g)
    r, info = torch.linalg.cholesky_ex(g, upper=True)
    trace = torch.diagonal(g, dim1=-2, dim2=-1).real.sum(-1)
    return r, torch.stack([lam[..., 0], trace, info.to(lam.dtype)], dim=-1)


def augment_gram(mats):
    """:func:`_augment_gram_stack` of every ``w`` (float32 or complex64), batched per shape:
    ``[(R, (λ_min, ‖w‖_F², info)), …]``; :func:`augment_is_certain` decides from the row."""
    return batched(_augment_gram_stack, mats)


def right_solve(mats, factors):
    """``[w R⁻¹ …]`` for upper triangular ``R``, one batched solve per shape."""
    out = [None] * len(mats)
    groups = {}
    for k, w in enumerate(mats):
        groups.setdefault((tuple(w.shape), w.dtype, w.device), []).append(k)
    for ks in groups.values():
        res = torch.linalg.solve_triangular(
            torch.stack([factors[k] for k in ks]),
            torch.stack([mats[k] for k in ks]),
            upper=True,
            left=False,
        )
        for j, k in enumerate(ks):
            out[k] = res[j]
    return out


def _qr_left_stack(a):
    r = torch.linalg.qr(a.conj().transpose(-2, -1), mode="r")[1]
    u, s, _ = _svd_stack(r.conj().transpose(-2, -1))
    return u, s


def left_singular(mats, methods):
    """Left singular vectors and values by the paths of ``tuckerflow.linalg._left_singular``.

    ``methods[k]`` is ``"svd"``, ``"qr"`` (the R factor of a QR of ``aᴴ`` for a wide ``a``)
    or ``"gram"``; one batched call per path and shape. Returns ``[(u, s), …]``.
    """
    out = [None] * len(mats)
    paths = {"svd": [], "qr": [], "gram": []}
    for k, (a, m) in enumerate(zip(mats, methods)):
        rows, cols = a.shape
        if m == "qr" and rows >= cols:
            m = "svd"
        paths[m].append(k)
    for m, ks in paths.items():
        if not ks:
            continue
        fn = {"svd": lambda a: _svd_stack(a)[:2], "qr": _qr_left_stack, "gram": _gram_stack}[m]
        for k, res in zip(ks, batched(fn, [mats[k] for k in ks])):
            out[k] = res
    return out


# ----------------------------------------------------------------- batched truncation


def _scale_steps(dtype):
    # the steps of tuckerflow._backend.scale_pow2: numpy's maxexp (128, 1024) minus 2
    return int(np.finfo(str(dtype).replace("torch.", "")).maxexp) - 2


def _pow2_scale(x, e, step):
    """``x · 2**e`` for a device integer ``e`` in at most two exact steps (as ``scale_pow2``).

    ``|e| ≤ 2·step`` always holds here: ``e`` is the exponent of a finite entry of ``x``.
    ``x`` is scaled in place: callers pass a temporary of their own.
    """
    one = torch.ones((), dtype=x.real.dtype if x.is_complex() else x.dtype, device=x.device)
    k1 = torch.clamp(e, -step, step)
    k2 = e - k1
    return x.mul_(torch.ldexp(one, k1)).mul_(torch.ldexp(one, k2))


class _Request:
    __slots__ = (
        "c_hat",
        "U_hats",
        "rtol",
        "min_rank",
        "max_rank",
        "cshape",
        "free",
        "spec",
        "policy",
        "e",
        "work",
        "pairs",
        "slots",
        "min_rank_arg",
        "max_rank_arg",
        "reference",
        "block",
        "fast",
        "host",
        "prepared",
    )

    def __init__(self):
        self.pairs = {}
        self.fast = False
        self.host = None
        self.prepared = (None, {})


def _prepared(q, host, i):
    """:func:`tuckerflow.ranks.prepare_tails` of mode ``i``'s singular values in ``host``,
    once per transfer (the selections of :func:`_finish`, of its certificate and of a
    retruncation read the same values)."""
    if q.prepared[0] is not host:
        q.prepared = (host, {})
    cache = q.prepared[1]
    if i not in cache:
        cache[i] = prepare_tails(host[q.slots[("s", i)]])
    return cache[i]


def _prepare(c_hat, U_hats, rtol, min_rank, max_rank):
    """The host-static part of ``truncate_core`` (bounds and factorisation paths)."""
    q = _Request()
    q.c_hat, q.U_hats, q.rtol = c_hat, list(U_hats), rtol
    q.min_rank_arg, q.max_rank_arg, q.reference, q.block = min_rank, max_rank, None, None
    d = c_hat.dim()
    cshape = tuple(c_hat.shape)
    q.cshape = cshape
    q.free = [i for i in range(d) if q.U_hats[i] is not None]
    hi = _clamped(max_rank, cshape, lambda i: cshape[i], "max_rank")
    lo = _clamped(min_rank, cshape, lambda i: 1, "min_rank")
    for i in range(d):
        if q.U_hats[i] is None:
            lo[i] = hi[i] = cshape[i]
    lo = [min(a, b) for a, b in zip(lo, hi)]
    lo = list(largest_valid_rank(lo))
    spec = rank_spec(cshape, None, rtol, None, hi, None)
    spec.min_rank = lo
    q.spec = spec
    size = math.prod(cshape)
    # as truncate_core: the Gram path only under a relative tolerance
    gram_ok = (
        rtol is not None
        and bool(q.free)
        and _gram_is_invisible(rtol**2 / len(q.free), max(cshape[i] for i in q.free))
    )
    q.policy = ["gram" if gram_ok and cshape[i] ** 2 < size else "qr" for i in range(d)]
    return q


def box_size(c_hat, U_hats):
    """Entries of the exact-error table :func:`truncate_cores` transfers for one core."""
    shape = tuple(c_hat.shape)
    return math.prod(shape[i] for i, u in enumerate(U_hats) if u is not None)


def truncate_cores(items, rtol, references=None, blocks=None, form=True):
    """HOSVD truncation of many augmented cores with one host transfer.

    Parameters
    ----------
    items : list of ``(C_hat, U_hats, min_rank, max_rank)``
        As :func:`tuckerflow.dlra.truncate_core` takes them (torch tensors; every core has
        at least one truncated mode and ``box_size(C_hat, U_hats) ≤ GREEDY_BOX_LIMIT``).
    rtol : float, None, or a sequence of them (one per item)
        Relative tolerance ``ϑ = rtol · ‖Ĉ‖_F``; None: no tolerance, the ranks are the caps
        (as ``truncate_core(…, rtol=None)``).
    references : list of (tensor or None), optional
        Per item, the weight ``Y₀`` before the update in the bases ``Û`` (the core's shape):
        the transfer then also carries what TDLRT's truncation guard reads
        (:class:`GuardData`).
    blocks : list of (tensor or None), optional
        Per item, a leading block of the reference outside which it is zero (the core
        before an augmentation that kept the old bases, of which the reference is the
        zero-padding): the guard's rotation of the reference is then formed from the block.
    form : bool, optional
        False: items with a reference return an :class:`Unformed` truncation in place of the
        Tucker tensor (``rank``, ``core`` and ``form()``), so that a guard that raises the
        rank floor (:meth:`GuardData.retruncate`) does not form the kept bases twice.

    Returns
    -------
    list of ``(TuckerTensor, P_list, TruncationInfo, GuardData | None)``; the first three as
    ``truncate_core(…, method="hosvd")`` returns them. ``info.error_bound`` is read from the
    prefix sums instead of a separate sum of the discarded blocks: its absolute error is
    below ``4 N eps64 ‖Ĉ‖²`` in the square (``N`` entries), the margin the rank decision
    already allows for.

    Notes
    -----
    float32 and complex64 cores form and decompose their Gram matrices in their own dtype
    (float64 otherwise, as ``truncate_core``), and each such core's rank decisions are
    certified on the host to be those of the float64 path (:class:`_Certificate`: every
    comparison of the rules decided with room for the float32 path's error estimates). A
    core that is not certain is factored again in float64, in a second transfer shared by
    all such cores; its result is then the float64 path's. Certified results agree with the
    float64 path's to the certificate's bounds: kept subspaces within the angle
    ``δ_i / (σ_{r−1}² − σ_r² − 2δ_i)``, tails² within ``√m_i δ_i``, ``error_bound²`` within
    the table bound (docs: the precision guide).

    Raises
    ------
    ValueError
        A core or factor holds NaN or Inf (nothing of the layers was changed by this call).
    """
    with tl.backend_context("pytorch", local_threadsafe=True):
        return _truncate_cores(items, rtol, references, blocks, form)


_WIDE = {torch.float32: torch.float64, torch.complex64: torch.complex128}


def _wide(dtype):
    return torch.complex128 if dtype.is_complex else torch.float64


def _truncate_cores(items, rtol, references=None, blocks=None, form=True):
    rtols = list(rtol) if isinstance(rtol, (list, tuple)) else [rtol] * len(items)
    if len(rtols) != len(items):
        raise ValueError(f"rtol has {len(rtols)} entries for {len(items)} items")
    reqs = [_prepare(c, u, t, lo, hi) for (c, u, lo, hi), t in zip(items, rtols)]
    for q, ref, block in zip(reqs, references or [None] * len(reqs), blocks or [None] * len(reqs)):
        q.reference, q.block = ref, (None if ref is None else block)
        q.fast = _fast_gram(q)
    _device_pass(reqs)
    # form=False leaves the kept bases of the guarded items unformed (the guard may discard
    # them); the others are formed
    lazy = [not form and q.reference is not None for q in reqs]
    results = [_finish(q, q.host, q.fast, not z) for q, z in zip(reqs, lazy)]
    redo = [k for k, r in enumerate(results) if r is None]
    if redo:
        # the float32 decision was not certified: these cores again in float64 (a second
        # transfer, only for near-ties of a rank decision)
        _device_pass([_wide_again(reqs[k]) for k in redo])
        for k in redo:
            results[k] = _finish(reqs[k], reqs[k].host, form=not lazy[k])
    out = []
    for q, (tt, P_list, info) in zip(reqs, results):
        out.append((tt, P_list, info, None if q.reference is None else GuardData(q, q.host, tt)))
    return out


def _fast_gram(q):
    """Whether the Gram matrices of ``q`` are formed and decomposed in float32 (complex64)."""
    return (
        _FLOAT32_GRAM
        and q.c_hat.dtype in (torch.float32, torch.complex64)
        and any(q.policy[i] == "gram" for i in q.free)
    )


def _wide_again(q):
    q.fast = False
    q.pairs = {}
    return q


def _device_pass(reqs):
    """The device half of the truncations of ``reqs``, then one transfer (``q.host``)."""
    parts = []
    end = [0]

    def slot(t):
        t = t.reshape(-1).to(torch.float64)
        start = end[0]
        end[0] += t.numel()
        parts.append(t)
        return slice(start, end[0])

    mats, methods, owners = [], [], []
    grams = {}
    for q in reqs:
        top = _absmax(q.c_hat)
        umax = torch.stack([_absmax(q.U_hats[i]) for i in q.free]).amax()
        ok = torch.isfinite(top) & torch.isfinite(umax)
        e = torch.frexp(torch.where(ok, top, torch.zeros_like(top)))[1].to(torch.int64)
        q.e = e
        step = _scale_steps(q.c_hat.dtype)
        work = _pow2_scale(torch.where(ok, q.c_hat, 0.0), -e, step)
        q.work = work
        q.slots = {"top": slot(top), "umax": slot(umax), "e": slot(e), "norm": slot(tl_norm(work))}
        for i in q.free:
            if q.policy[i] == "gram":
                wide = work.dtype if q.fast else _WIDE.get(work.dtype, work.dtype)
                key = (q.cshape[i], math.prod(q.cshape) // q.cshape[i], work.dtype, wide)
                grams.setdefault((key, work.device), []).append((q, i))
                continue
            mats.append(_unfold(work, i))
            methods.append(q.policy[i])
            owners.append((q, i))
    for (q, i), (u, s) in zip(owners, left_singular(mats, methods)):
        q.pairs[i] = (u, s)
    for ((m, n, dtype, wide), device), members in grams.items():
        # one Gram product per unfolding, in float64 (or the core's float32 where
        # certified), each unfolding written by at most one copy (the mode permutation and
        # the conversion together; none for a leading mode in the core's dtype), then one
        # batched eigh
        panels = _gram_panels(m, dtype, wide, device)
        alloc = torch.empty if panels is None else torch.zeros
        stack = alloc((len(members), m, m), dtype=wide, device=device)
        for k, (q, i) in enumerate(members):
            if i == 0 and wide == dtype:
                a = q.work.reshape(m, n)
            else:
                rest = [q.cshape[j] for j in range(len(q.cshape)) if j != i]
                a = torch.empty((m, n), dtype=wide, device=device)
                a.view(m, *rest).copy_(torch.movedim(q.work, i, 0))
            if panels is None:
                torch.matmul(a, a.conj().T, out=stack[k])
            else:
                _lower_gram(a, panels, stack[k])
        real = torch.empty((), dtype=dtype).real.dtype
        us, ss = _eigh_of_gram(stack, dtype, real)
        for k, (q, i) in enumerate(members):
            q.pairs[i] = (us[k], ss[k])
    for q in reqs:
        for i in q.free:
            q.slots[("s", i)] = slot(q.pairs[i][1])
        # the rotated core in the full singular bases and its |·|² prefix sums over the
        # whole box of the truncated modes (the greedy HOSVD reads any window of it)
        g = q.work
        for i in q.free:
            g = torch.movedim(torch.tensordot(q.pairs[i][0].conj().T, g, dims=([1], [i])), 0, i)
        others = tuple(j for j in range(g.dim()) if j not in q.free)
        # Σ over the other modes of |g|², in float64 (one float64 temporary, squared in place)
        e2 = g.abs() if g.is_complex() else g
        e2 = e2.to(torch.float64, copy=True).square_()
        block = e2.sum(dim=others) if others else e2
        total = block.sum()
        for ax in range(block.dim()):
            block = torch.cumsum(block, dim=ax)
        q.slots["g"] = g
        q.slots["total"] = slot(total)
        q.slots["table"] = slot(block)
        q.slots["table_shape"] = tuple(block.shape)
        q.slots["e_numel"] = g.numel()
        if q.reference is not None:
            _guard_slots(q, slot)
    host = to_host(torch.cat(parts)) if parts else np.zeros(0)
    for q in reqs:
        q.host = host


#: Rows per panel of the lower-triangle Gram product (:func:`_lower_gram`), and the
#: smallest Gram matrix it is used for (below, one product of the whole matrix is faster).
GRAM_PANEL_ROWS = 48
GRAM_PANEL_MIN = 128


def _gram_panels(m, dtype, wide, device):
    """Row bounds of the panels of :func:`_lower_gram` for an ``m × m`` Gram matrix, or
    None where the Gram matrix is formed by one product.

    Only on the CPU and for the single-precision Gram path (``wide == dtype``, float32 or
    complex64): there the panels' lower triangle is the full product's (each entry is the
    same dot product; measured equal bit for bit with MKL/OpenBLAS in float32, and within
    round-off by construction), and the float64 path's bits stay those of one product.
    """
    if (
        device.type != "cpu"
        or wide != dtype
        or dtype not in (torch.float32, torch.complex64)
        or m < GRAM_PANEL_MIN
    ):
        return None
    k = m // GRAM_PANEL_ROWS
    return [(j * m) // k for j in range(k + 1)]


def _lower_gram(a, bounds, out):
    """The lower triangle of ``a aᴴ`` into ``out`` (zeros above the panels' diagonal
    blocks): row panel ``j`` is ``a[b_j:b_{j+1}] a[:b_{j+1}]ᴴ``, about ``(k+1)/2k`` of the
    full product's work for ``k`` panels. ``eigh`` reads the lower triangle only (its
    default ``UPLO="L"``)."""
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        torch.matmul(a[lo:hi], a[:hi].conj().T, out=out[lo:hi, :hi])


def _guard_slots(q, slot):
    """What the guard reads of ``Y₀`` (float64, in the units of the scaled core ``work``).

    ``‖Y₀‖``, ``‖Ĉ − Y₀‖``; the ``|·|²`` prefix table of ``Y₀ ×_i U_iᴴ`` over the box of the
    truncated modes (``U_i``: the full left singular bases of ``Mat_i(Ĉ)``), from which
    ``‖Y₀ − Y₀ ×_i P_iP_iᴴ‖² = ‖Y₀‖² − Σ_box`` for any leading ``P_i = U_i[:, :r_i]``; and per
    truncated mode the norms² of ``Mat_i(Y₀)`` outside the first ``r`` columns of ``U_i``
    (suffix sums of the rows of ``U_iᴴ Mat_i(Y₀)``) and outside ``U_i`` altogether.
    """
    wide = _wide(q.c_hat.dtype)
    step = _scale_steps(torch.float64)
    bases = {i: q.pairs[i][0].to(wide) for i in q.free}
    from tensorly.tenalg import multi_mode_dot

    if q.block is not None:
        # Y₀ is zero outside its leading block: Y₀ ×_i U_iᴴ = block ×_i U_i[:b_i]ᴴ, and
        # Ĉ − Y₀ is Ĉ less the block there (no Y₀-sized temporaries)
        b = _pow2_scale(q.block.detach().to(wide, copy=True), -q.e, step)
        lead = tuple(slice(0, n) for n in b.shape)
        diff = q.work.to(wide, copy=True)
        diff[lead] -= b
        q.slots["g_ny0"] = slot(torch.linalg.vector_norm(b))
        q.slots["g_ndiff"] = slot(torch.linalg.vector_norm(diff))
        del diff
        mats = [bases[i][: b.shape[i]].conj().T for i in q.free]
        z = multi_mode_dot(b, mats, modes=list(q.free))

        def reference():
            y = b.new_zeros(q.cshape)
            y[lead] = b
            return y

    else:
        y = _pow2_scale(q.reference.detach().to(wide, copy=True), -q.e, step)
        w = q.work.to(wide)
        q.slots["g_ny0"] = slot(torch.linalg.vector_norm(y))
        q.slots["g_ndiff"] = slot(torch.linalg.vector_norm(w - y))
        z = multi_mode_dot(y, [bases[i].conj().T for i in q.free], modes=list(q.free))

        def reference():
            return y

    e2 = z.abs().square_() if z.is_complex() else z.square_()
    others = tuple(j for j in range(e2.dim()) if j not in q.free)
    block = e2.sum(dim=others) if others else e2
    table = block
    for ax in range(table.dim()):
        table = torch.cumsum(table, dim=ax)
    q.slots["g_table"] = slot(table)
    # with square bases (the usual case: n_i ≤ ∏_{j≠i} n_j) the other modes' rotations keep
    # norms, so the rows of U_iᴴ Mat_i(Y₀) are the marginals of the table's block and nothing
    # lies outside U_i; otherwise they are formed per mode
    square = all(bases[i].shape[0] == bases[i].shape[1] for i in q.free)
    for k, i in enumerate(q.free):
        if square:
            rest = tuple(a for a in range(block.dim()) if a != k)
            rows = block.sum(dim=rest) if rest else block
            outside = torch.zeros((), dtype=rows.dtype, device=rows.device)
        else:
            unfolded = _unfold(reference(), i)
            coefficients = bases[i].conj().T @ unfolded
            rows = (coefficients.abs() ** 2).sum(dim=1)
            outside = torch.linalg.vector_norm(unfolded - bases[i] @ coefficients) ** 2
        suffix = torch.flip(torch.cumsum(torch.flip(rows, [0]), 0), [0])
        q.slots[("g_suffix", i)] = slot(torch.cat([suffix, torch.zeros_like(suffix[:1])]))
        q.slots[("g_outside", i)] = slot(outside)


def _valid(ranks, modes):
    """Whether no mode of ``modes`` breaks ``r_i ≤ ∏_{j≠i} r_j`` (``_make_valid`` is a no-op)."""
    return all(ranks[i] <= math.prod(ranks[:i] + ranks[i + 1 :]) for i in modes)


class GuardData:
    """What TDLRT's truncation guard reads of one layer, from the truncation's transfer.

    All norms are in one unit (that of the scaled core), so the guard's comparisons are
    those of the unscaled norms. ``discarded`` (``‖Y₀ − Y₀ ×_i P_iP_iᴴ‖`` at the truncation's
    ``P_i``) and ``remainders`` are None where the kept bases are not leading singular
    vectors of ``Mat_i(Ĉ)`` (an exact lowering of ranks ``r_i > ∏_{j≠i} r_j`` rotated them);
    the caller then computes them from the tensors.
    """

    def __init__(self, q, host, tt):
        sl = q.slots
        self._q, self._host = q, host
        self.free = list(q.free)
        # back to the caller's units (the core was scaled by 2**-e, exactly)
        unit = math.ldexp(1.0, int(host[sl["e"]][0])) if float(host[sl["top"]][0]) > 0 else 1.0
        ny0 = float(host[sl["g_ny0"]][0])
        self.norm_reference = ny0 * unit
        self.norm_change = float(host[sl["g_ndiff"]][0]) * unit
        self.discarded = None
        if sl["prefix"]:
            ranks = list(tt.rank)
            table = host[sl["g_table"]].reshape(sl["table_shape"])
            kept2 = float(table[tuple(ranks[m] - 1 for m in self.free)])
            self.discarded = math.sqrt(max(ny0**2 - kept2, 0.0)) * unit
        # the rank-cap truncation (truncate_core without tolerance, the guard's P_full)
        cap = _prepare(q.c_hat, q.U_hats, None, q.min_rank_arg, q.max_rank_arg).spec
        full = list(q.cshape)
        for i in self.free:
            k = min(q.cshape[i], math.prod(q.cshape[:i] + q.cshape[i + 1 :]))
            full[i] = min(max(cap.max_rank[i], cap.min_rank[i]), k)
        self.remainders = None
        if _valid(full, self.free):
            self.remainders = {
                i: (host[sl[("g_suffix", i)]][: full[i] + 1] + float(host[sl[("g_outside", i)]][0]))
                * unit**2
                for i in self.free
            }

    def retruncate(self, min_rank):
        """The truncation again with the rank floor ``min_rank`` (no transfer, unless the
        float32 Gram path cannot certify the new decision: then the core is factored again
        in float64, one transfer)."""
        q = self._q
        q.spec = _prepare(q.c_hat, q.U_hats, q.rtol, min_rank, q.max_rank_arg).spec
        with tl.backend_context("pytorch", local_threadsafe=True):
            out = _finish(q, self._host, certify=q.fast)
            if out is None:
                _device_pass([_wide_again(q)])
                self._host = q.host
                out = _finish(q, q.host)
            return out


def tl_norm(x):
    return torch.norm(x)  # what tl.norm calls


def _unfold(x, mode):
    return torch.movedim(x, mode, 0).reshape(x.shape[mode], -1)


#: Factor of the error estimate ``√(n/m) · eps32 · ‖Ĉ‖²`` of the Gram matrix of an
#: ``m × n`` unfolding formed and decomposed in float32 (see :class:`_Certificate`).
FAST_GRAM_MARGIN = 2.0

_EPS32 = float(np.finfo(np.float32).eps)

# the float32 Gram path with its certificate (False: always the float64 path, for tests)
_FLOAT32_GRAM = True


# the K-step's float32 Gram path with its certificate (False: always the float64 path, for
# tests)
_FLOAT32_AUGMENT = True


def augment_is_certain(row, n, k, threshold):
    """How the augmentation of ``kstep_prepare`` may add the ``k`` new directions of an
    ``n × k`` matrix ``w`` (``k ≤ n − r``, the room), from the float32 row
    ``(λ_min, ‖w‖_F², info)`` of :func:`augment_gram`; ``threshold = rtol · ‖g‖``.

    Returns None when the float64 path's decision is not certain; otherwise it keeps all
    ``k`` directions (``m = k``, their span is ``span(w)``), and the result says whether
    ``w R⁻¹`` (``R`` the float32 Cholesky factor of ``wᴴw``) is well conditioned (True) or
    ``w`` is to be orthonormalised by a QR first (False).

    The float32 Gram matrix ``wᴴw`` differs from the exact one by ``E``, estimated as in
    :class:`_Certificate` (``k`` rows of length ``n``, the float32 ``eigvalsh`` within it as
    ``k < n``): ``‖E‖₂ ≤ δ = FAST_GRAM_MARGIN · √(n/k) · eps32 · ‖w‖_F²``, so that
    ``σ_min(w)² ≥ λ_min − δ`` (Weyl). The float64 path's squared singular values err by
    about ``δ₆₄ = (√n + k) · eps64 · ‖w‖_F²`` (float64 Gram matrix and ``eigh``, see
    :data:`tuckerflow.dlra.AUGMENT_GRAM_SAFETY`), and it compares them rounded to float32
    (relative ``eps32/2``). Certain when

        ``λ_min − δ > (1 + 4 eps32) · threshold² + FAST_GRAM_MARGIN · δ₆₄``:

    then every float64 singular value exceeds the threshold. With ``λ_min > 2δ`` and the
    Cholesky factor, ``‖R⁻ᴴ E R⁻¹‖₂ ≤ δ / λ_min ≤ 1/2``: the columns of ``w R⁻¹`` are
    orthonormal to within a factor ``√3``. A drop of some directions, a choice among them
    (``k`` above the room) or a rank-deficient ``w`` are never certain here (the float32
    Gram error ``δ`` lies far above the squared threshold ``(16 eps32 ‖g‖)²``).
    """
    lam_min, norm2, info = (float(x) for x in row)
    if not (math.isfinite(lam_min) and math.isfinite(norm2)) or norm2 <= 0.0:
        return None
    delta = FAST_GRAM_MARGIN * math.sqrt(n / k) * _EPS32 * norm2
    delta64 = (math.sqrt(n) + k) * _EPS64 * norm2
    if not lam_min - delta > (1.0 + 4.0 * _EPS32) * threshold**2 + FAST_GRAM_MARGIN * delta64:
        return None
    return info == 0.0 and lam_min > 2.0 * delta


class _Certificate:
    """Whether the float32 Gram path's rank decisions are those of the float64 path.

    Per Gram mode ``i`` (``m_i`` rows of length ``n_i``), the Gram matrix formed in float32
    differs from the exact one by ``E_i``, estimated as ``‖E_i‖₂ ≤ δ_i = FAST_GRAM_MARGIN ·
    √(n_i/m_i) · eps32 · ‖Ĉ‖²``: each entry is an inner product of length ``n_i`` with an
    error of about ``√n_i · u`` of ``‖a_k‖‖a_l‖`` (Higham & Mary 2019), and an ``m × m``
    matrix of such errors of varying signs has a spectral norm of about ``2√(n/m) u ‖Ĉ‖²``
    (``u = eps32/2``); the float32 ``eigh`` adds about ``√m_i · u · ‖Ĉ‖²``, within it as
    ``m_i < n_i`` on this path. It is an estimate, not a worst-case bound (that would be
    ``n_i · u · ‖Ĉ‖²``, far above the gaps the rules resolve); the measured errors on TDLRT
    cores are at most 0.12 of it (tails: 0.06 of theirs). The float64 path's errors are
    ``eps64/eps32`` times smaller. Hence:

    - every eigenvalue moves by at most ``δ_i`` (Weyl), every tail ``Σ_{j≥ρ} σ_j²`` by
      about ``Σ_{j≥ρ} v_jᴴ E_i v_j`` (first order: ``m_i − ρ`` terms of varying signs),
      taken as at most ``√m_i · δ_i``;
    - the leading ``r_i``-dimensional subspaces of the two paths are at an angle of at
      most ``a_i = δ_i / (σ_{r_i−1}² − σ_{r_i}² − 2δ_i)`` (Davis–Kahan);
    - the table of kept squared norms at ranks ``r`` moves by at most

        ``δ_T(r) = Σ_i δ_i + Σ_i (2 a_i Σ_{j≠i} t_j(r_j) + a_i² σ_{i,r_i−1}²)``

      (``t_j``: the tails, widened by their bound; the first-order change in the subspace of
      mode ``i`` pairs the discarded parts of mode ``i`` and of the other modes, as that
      subspace is invariant under ``Mat_i(Ĉ)Mat_i(Ĉ)ᴴ``; the second-order term is the
      leading one of the perturbation series; ``Σ_i δ_i`` covers the rounding of the
      float32 rotation, which moves an entry ``‖g_box‖²`` by about ``2⟨g_box, Δg_box⟩``,
      ``Δg`` of relative size ``√m_i · u`` with varying signs, as in the float64 path).

    A decision is certain when every comparison of the rules is decided with room for
    these bounds; then the float64 path takes the same one.
    """

    def __init__(self, q, singular_values, norm_w, theta, margins, prepared):
        self.q, self.theta, self.margins = q, theta, margins
        self.prepared = prepared  # per mode, prepare_tails of singular_values[i]
        self.norm2 = norm_w**2
        size = math.prod(q.cshape)
        self.delta, self.tail_delta = {}, {}
        self.s, self.lam, self.tails = {}, {}, {}
        for i in q.free:
            self.s[i] = np.asarray(singular_values[i], dtype=np.float64)
            lam = self.s[i] ** 2
            self.lam[i] = lam
            self.tails[i] = np.concatenate([np.cumsum(lam[::-1])[::-1], [0.0]])
            m = q.cshape[i]
            delta = 0.0
            if q.policy[i] == "gram":
                delta = FAST_GRAM_MARGIN * math.sqrt(size / m**2) * _EPS32 * self.norm2
            self.delta[i] = delta
            self.tail_delta[i] = math.sqrt(m) * delta
        self.delta_sum = sum(self.delta.values())

    def per_mode(self, ranks, floors):
        """The sequential per-mode ranks and the floors are the same for all tails moved
        by up to their bound (the rules are monotone in the tails: the two extremes
        bracket every other case)."""
        q, spec, theta = self.q, self.q.spec, self.theta
        for sign in (1.0, -1.0):
            used2 = 0.0
            for k, i in enumerate(q.free):
                budget2 = sequential_budget(theta, used2, len(q.free) - k)
                delta = sign * self.tail_delta[i]
                prep = self.prepared[i]
                r, tail2 = select_prepared(
                    prep,
                    max(budget2 - delta, 0.0),
                    spec.min_rank[i],
                    spec.max_rank[i],
                    self.margins[i],
                )
                if r != ranks[i]:
                    return False
                used2 += tail2 + delta
                f = select_prepared(
                    prep, max(theta**2 - delta, 0.0), spec.min_rank[i], spec.max_rank[i]
                )[0]
                if f != floors[i]:
                    return False
        return True

    def table_error(self, ranks):
        """``δ_T(ranks)``: how far the two paths' error tables may differ at ``ranks``."""
        out = self.delta_sum
        for i in self.q.free:
            if self.delta[i] == 0.0 or ranks[i] >= len(self.lam[i]):
                continue
            r = ranks[i]
            gap = self.lam[i][r - 1] - self.lam[i][r] - 2.0 * self.delta[i]
            if gap <= 0.0:
                return math.inf
            a = self.delta[i] / gap
            rest = sum(self.tails[j][ranks[j]] + self.tail_delta[j] for j in self.q.free if j != i)
            out += 2.0 * a * rest + a * a * self.lam[i][r - 1]
        return out


#: :func:`tuckerflow.ranks.lower_ranks_certainly` (a name of this module, so that tests can
#: watch the certificate's calls)
_lower_ranks_certainly = lower_ranks_certainly


def _finish(q, host, certify=False, form=True):
    """The host half of one truncation: the rules of ``recompress(method="hosvd")``.

    ``form=False``: the first result is an :class:`Unformed` truncation.

    ``certify``: the Gram matrices were formed and decomposed in float32; returns None
    when a rank decision lies within that path's round-off of flipping (see
    :class:`_Certificate`), else the result as the float64 path decides it.
    """
    sl = q.slots
    top, umax = float(host[sl["top"]][0]), float(host[sl["umax"]][0])
    if not math.isfinite(umax):
        maxes = to_host(torch.stack([q.U_hats[i].abs().amax() for i in q.free]))
        bad = next(i for i, m in zip(q.free, maxes) if not math.isfinite(m))
        raise ValueError(f"U_hats[{bad}] contains non-finite values (NaN or Inf)")
    if not math.isfinite(top):
        raise ValueError("C_hat contains non-finite values (NaN or Inf)")
    exponent = int(host[sl["e"]][0]) if top > 0 else 0
    unit = math.ldexp(1.0, exponent)
    spec, modes, d = q.spec, list(q.free), len(q.cshape)
    norm_w = float(host[sl["norm"]][0])
    info = TruncationInfo(order=list(modes))
    info.singular_values, info.tails, info.methods = [None] * d, [0.0] * d, [None] * d
    theta = None if spec.rtol is None else spec.rtol * norm_w
    info.tolerance = None if theta is None else theta * unit
    if theta is not None:
        theta = min(theta, 2.0 * norm_w)
    used2 = 0.0
    ranks = list(q.cshape)
    margins, prepared = {}, {}
    for k, i in enumerate(modes):
        budget2 = sequential_budget(theta, used2, len(modes) - k)
        s_host = host[sl[("s", i)]]
        used = q.policy[i]
        margins[i] = 10.0 * ranks[i] * _EPS64 * norm_w**2 if used == "gram" else 0.0
        if spec.fixed is None and spec.by_tolerance:
            # _choose_rank's select_rank, on the prepared tails of s_host
            prepared[i] = _prepared(q, host, i)
            r, tail2 = select_prepared(
                prepared[i], budget2, spec.min_rank[i], spec.max_rank[i], margins[i]
            )
        else:
            r, tail2 = _choose_rank(s_host, spec, i, budget2, margins[i])
        ranks[i] = r
        used2 += tail2
        info.singular_values[i], info.tails[i], info.methods[i] = s_host, tail2, used
    total_h = float(host[sl["total"]][0])
    table = host[sl["table"]].reshape(sl["table_shape"])

    def error2(r):
        return max(total_h - float(table[tuple(r[m] - 1 for m in modes)]), 0.0)

    new = tuple(ranks)
    if theta is not None:
        floors = list(ranks)
        for i in modes:
            floors[i], _ = select_prepared(
                prepared[i], theta**2, spec.min_rank[i], spec.max_rank[i]
            )
        # the greedy lowering of tuckerflow.recompression._exact_hosvd_ranks on the full table
        lo = [max(floors[i], 1) for i in range(d)]
        margin2 = 4.0 * sl["e_numel"] * _EPS64 * total_h
        budget2 = theta**2 - margin2
        floor = [lo[i] if i in modes else ranks[i] for i in range(d)]
        if certify:
            cert = _Certificate(q, info.singular_values, norm_w, theta, margins, prepared)
            if not cert.per_mode(ranks, floors):
                return None
            new, certain = _lower_ranks_certainly(new, floor, error2, budget2, cert.table_error)
            if not certain:
                return None
        elif error2(new) <= budget2:
            new = lower_ranks_greedily(new, floor, error2, budget2)
        err2 = error2(new)
    else:
        err2 = used2  # no tolerance: the tails of the caps, as truncate_core reports them
    P_list = [None] * d
    for i in modes:
        ranks[i] = new[i]
        P_list[i] = q.pairs[i][0][:, : new[i]]
        if theta is not None:
            s_i = np.asarray(info.singular_values[i])
            info.tails[i] = float(np.sum(s_i[new[i] :] ** 2))
    g = sl["g"]
    core = g[tuple(slice(0, ranks[i]) if i in modes else slice(None) for i in range(d))]
    # whether the kept bases are leading singular vectors (what GuardData's tables assume)
    sl["prefix"] = _valid(ranks, modes)
    core, P_list = _make_valid(core, P_list, modes)
    info.error_bound = math.sqrt(err2) * unit
    info.tails = [math.sqrt(t2) * unit for t2 in info.tails]
    info.singular_values = [None if s is None else s * unit for s in info.singular_values]
    core = scale_pow2(core, exponent)
    if not form:
        return Unformed(core, q.U_hats, P_list), P_list, info
    return _formed(core, q.U_hats, P_list), P_list, info


def _formed(core, U_hats, P_list):
    """The truncation as a Tucker tensor: the kept bases ``Û_i P_i`` (identities where
    ``Û_i`` is None)."""
    factors = []
    for i, u in enumerate(U_hats):
        if u is None:
            factors.append(torch.eye(core.shape[i], dtype=core.dtype, device=core.device))
        else:
            factors.append(u @ P_list[i])
    return TuckerTensor(core, factors)


class Unformed:
    """A truncation whose kept bases ``Û_i P_i`` are not formed yet (``truncate_cores(…,
    form=False)``): its ``rank`` and ``core``, and :meth:`form` for the Tucker tensor (the
    same numbers as the formed result). A guard that raises the rank floor discards it
    without the products."""

    __slots__ = ("core", "_U_hats", "_P_list")

    def __init__(self, core, U_hats, P_list):
        self.core, self._U_hats, self._P_list = core, U_hats, P_list

    @property
    def rank(self):
        return tuple(int(n) for n in self.core.shape)

    def form(self):
        with tl.backend_context("pytorch", local_threadsafe=True):
            return _formed(self.core, self._U_hats, self._P_list)
