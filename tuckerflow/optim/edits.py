"""Which recorded backward passes ``core.grad`` still holds, and how it was edited.

The one-pass TDLRT step forms its K-step and Galerkin gradient from the weight gradient ``G``
the layers record (:mod:`tuckerflow.nn.recording`), not from ``core.grad``, which the user
may have edited (``clip_grad_norm_``, ``grad *= a``, ``GradScaler.unscale_``, a hook) or
discarded (``zero_grad``). The visible gradient is the source of truth: with the raw core
gradients ``R_1, …, R_k`` of the recorded backward passes (``R_j = G_j ×_i U_iᴴ``),

    ``core.grad = c · (R_s + … + R_k)``

is solved for the first pass ``s`` still held (the passes before it were zeroed away) and a
scalar ``c``: a *uniform* edit, honoured exactly by taking ``c · (G_s + … + G_k)`` as the weight
gradient. Anything else (``clip_grad_value_`` that clips, a hook changing single entries, a
penalty added to ``core.grad`` by hand) cannot be expressed through ``G``:
:class:`GradientEditError` says so before anything changes.
"""

from __future__ import annotations

import math

__all__ = ["GradientEditError", "EditResolution", "resolve_edits"]


class GradientEditError(RuntimeError):
    """A gradient edit the one-pass TDLRT step cannot honour; nothing was changed.

    Raised by :meth:`tuckerflow.optim.TDLRT.step` when ``core.grad`` of a Tucker layer is not a
    uniform multiple of the gradient of the recorded backward passes (``clip_grad_value_``
    that clips, a gradient hook changing single entries, a gradient written by hand). Use
    ``TDLRT(..., mode="two-pass")`` and apply the edit inside the closure passed to ``step``:
    the Galerkin step then takes the closure's edited core gradient at the augmented bases.
    """


class EditResolution:
    """What ``core.grad`` of one layer is made of.

    Attributes
    ----------
    groups : list of BackwardGroup
        The recorded backward passes ``core.grad`` holds (empty: the layer has no gradient).
    scale : float
        The uniform factor ``c`` of the edit (1.0 when unedited).
    residual, tolerance : float
        ``‖core.grad − c Σ R_j‖`` and the round-off bound it was checked against.
    """

    __slots__ = ("groups", "scale", "residual", "tolerance")

    def __init__(self, groups, scale, residual=0.0, tolerance=0.0):
        self.groups, self.scale = groups, scale
        self.residual, self.tolerance = residual, tolerance

    @property
    def matched(self):
        return self.residual <= self.tolerance


def _suffix_candidates(grad, raws):
    """For every suffix ``s`` of the passes: ``(c, ‖grad − c S_s‖, tolerance)`` as tensors.

    Computed in float64 (cores are small), so that the arithmetic of the check itself adds
    nothing at float32 level.

    Tolerance. Every step that produced ``core.grad`` from the raw gradients rounds each entry
    once, by at most the unit round-off ``u = eps/2`` of the gradient's dtype, relative to
    (entrywise) ``|c| Σ_j |R_j|``, so in Frobenius norm by at most ``u |c| Σ_j ‖R_j‖``:
    accumulating ``n`` passes into ``.grad`` takes ``n − 1`` such steps, a scalar edit one
    each (a GradScaler's unscale by a power of two none). Allowing ``n + 2`` steps (two
    uniform edits, e.g. unscale and clip) at ``eps`` instead of ``u`` gives a factor two of
    margin; the float64 dot products forming ``c`` and the residual add at most
    ``√m · eps64`` relatively (``m`` entries, round-off of a sum of ``m`` terms at random
    signs), which only matters for float64 gradients. A non-uniform edit moves entries by
    amounts of their own size, orders of magnitude above.
    """
    import torch

    g = grad.detach().to(torch.float64)
    eps = torch.finfo(grad.dtype).eps
    m = grad.numel()
    suffix = torch.zeros_like(g)
    norm_sum = torch.zeros((), dtype=torch.float64, device=g.device)
    out = []
    for n, raw in enumerate(reversed(raws), start=1):
        r = raw.detach().to(torch.float64)
        suffix = suffix + r
        norm_sum = norm_sum + torch.linalg.vector_norm(r)
        ss = (suffix * suffix).sum()
        gs = (g * suffix).sum()
        c = torch.where(ss > 0, gs / torch.where(ss > 0, ss, 1.0), 1.0)
        residual = torch.linalg.vector_norm(g - c * suffix)
        unit = ((n + 2) * eps + math.sqrt(m) * torch.finfo(torch.float64).eps) * norm_sum
        # an unedited gradient keeps c = 1 exactly (its own bound, |c| = 1)
        at_one = torch.linalg.vector_norm(g - suffix)
        out.append(torch.stack([c, residual, unit * c.abs(), at_one, unit]))
    return out  # out[n-1]: the suffix of the last n passes


def edit_candidates(layers):
    """The device half of :func:`resolve_edits`: no host transfer.

    Returns ``(stack, index, out)``: ``stack`` is a float64 tensor of shape ``(K, 5)`` (or
    None) holding the candidates of every layer, to be read with one transfer and passed
    to :func:`settle_edits` with ``index`` and ``out`` (the layers already resolved).
    """
    import torch

    stacks, index = [], {}
    out = {}
    for name, layer in layers.items():
        grad = layer.core.grad
        groups = list(layer.gradient_record.groups)
        if grad is None:
            out[name] = EditResolution([], 1.0)
            continue
        if not groups:
            out[name] = EditResolution([], 1.0, residual=math.inf, tolerance=0.0)
            continue
        if any(tuple(g.core_grad.shape) != tuple(grad.shape) for g in groups):
            # passes recorded before a rank change cannot be part of the current gradient
            groups = [g for g in groups if tuple(g.core_grad.shape) == tuple(grad.shape)]
            if not groups:
                out[name] = EditResolution([], 1.0, residual=math.inf, tolerance=0.0)
                continue
        cands = _suffix_candidates(grad, [g.core_grad for g in groups])
        index[name] = (len(stacks), len(cands), groups)
        stacks.extend(cands)
    return (torch.stack(stacks) if stacks else None), index, out


def settle_edits(values, index, out):
    """The host half of :func:`resolve_edits`: ``values`` are the rows of the stack."""
    for name, (start, count, groups) in index.items():
        best = None
        # the longest suffix first: accumulation without a zero_grad keeps every pass
        for n in range(count, 0, -1):
            c, residual, tol, at_one, unit = (float(v) for v in values[start + n - 1])
            if at_one <= unit:
                c, residual, tol = 1.0, at_one, unit
            cand = EditResolution(groups[-n:], c, residual, tol)
            if cand.matched:
                best = cand
                break
            if best is None or residual / max(tol, 1e-300) < best.residual / max(
                best.tolerance, 1e-300
            ):
                best = cand
        out[name] = best
    return out


def speculative_scale(stack, index, name):
    """The device scalar ``c`` of the longest suffix of layer ``name`` (1 where unedited).

    It is the factor :func:`settle_edits` returns when every recorded pass is still held (the
    common case), available before the transfer; None for a layer without candidates.
    """
    import torch

    if name not in index:
        return None
    start, count, _ = index[name]
    c, _, _, at_one, unit = stack[start + count - 1]
    return torch.where(at_one <= unit, torch.ones_like(c), c)


def resolve_edits(layers):
    """An :class:`EditResolution` per layer from one device synchronisation.

    Parameters
    ----------
    layers : dict
        ``{name: layer}``; each layer has ``core`` and ``gradient_record``.

    Returns
    -------
    dict
        ``{name: EditResolution}``. Layers whose ``core.grad`` is None get one without groups;
        a layer whose gradient no suffix explains gets the best candidate with ``matched``
        False (the caller raises).
    """
    from .._host import to_host

    stack, index, out = edit_candidates(layers)
    if stack is not None:
        settle_edits(to_host(stack), index, out)
    return out
