"""What a Tucker layer records of each backward pass, for the one-pass TDLRT step.

The one-pass form of the TDLRT step [ZSCKT24]_ needs the weight gradient ``G`` of the batch
(the K-step reads ``G ×_{j≠i} U_jᴴ``, the Galerkin step ``G ×_i Û_iᴴ``), which autograd does
not expose: the layers never form the dense weight. A :class:`GradientRecord` keeps, for every
backward pass that reaches the layer's core, what ``G`` is made of (the layer input and the
output gradient of every use of the layer, or ``G`` itself), together with the raw core
gradient ``∂L/∂C = G ×_i U_iᴴ`` of that pass as autograd delivers it to the core, before any
gradient hook of the user and before accumulation into ``core.grad``.

The records of one backward pass form a :class:`BackwardGroup`. Comparing ``core.grad`` at
step time with the groups' raw core gradients tells which groups are current (a suffix: an
earlier ``zero_grad`` discarded the others) and whether the visible gradient was edited
(:mod:`tuckerflow.optim.edits`): the visible gradients are the source of truth.

Grouping is exact: each output-gradient arrival is tagged with autograd's graph task (one per
``backward()`` call), and a group is closed when the core's gradient of the same task has been
accumulated into ``core.grad`` (a post-accumulate-grad hook); ``torch.autograd.grad`` calls,
which accumulate nothing, never make a group. A ``core.grad`` of None when a backward pass
arrives means everything recorded before was discarded (``zero_grad(set_to_none=True)`` by any
route): the old groups are dropped there, which also frees their memory.

References
----------
.. [ZSCKT24] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch and F. Tudisco,
   "Geometry-aware training of factorized layers in tensor Tucker format", NeurIPS 2024
   (arXiv:2305.19059).
"""

from __future__ import annotations

import weakref

import torch

__all__ = ["BackwardGroup", "Contribution", "GradientRecord", "MidGradHook"]


def _graph_task():
    """Identifier of the running backward pass (-1 outside backward; None if unavailable)."""
    get = getattr(torch._C, "_current_graph_task_id", None)
    return None if get is None else get()


def _no_record():
    return None


class Contribution:
    """One use of the layer in one backward pass: input and output gradient, or ``G``.

    ``x_mid`` and ``grad_mid``, where the layer's factorized forward provides them, are the
    input projected by the factor of the input mode and the gradient projected by the factor
    of the output mode (the intermediates of that forward and its backward), from which the
    Galerkin gradient in bases that start with those factors needs only the new directions.
    """

    __slots__ = ("x", "grad", "weight_grad", "task", "x_mid", "grad_mid")

    def __init__(self, task, *, x=None, grad=None, weight_grad=None):
        self.task, self.x, self.grad, self.weight_grad = task, x, grad, weight_grad
        self.x_mid = self.grad_mid = None


class MidGradHook:
    """Tensor hook on an intermediate of a factorized forward: records its gradient on the
    contribution that the output hook of the same use and backward pass made."""

    __slots__ = ("x_mid", "pending")

    def __init__(self, x_mid):
        self.x_mid, self.pending = x_mid, None

    def __call__(self, grad):
        c, self.pending = self.pending, None
        if c is not None:
            c.grad_mid = grad.detach()


class BackwardGroup:
    """Everything one backward pass gave the layer.

    Attributes
    ----------
    contributions : list of Contribution
        One per use of the layer in the forward pass (several for shared layers).
    core_grad : torch.Tensor
        The raw gradient of the core in this pass, ``G ×_i U_iᴴ``, as autograd computed it
        (before user hooks and accumulation).
    """

    __slots__ = ("contributions", "core_grad")

    def __init__(self, contributions, core_grad):
        self.contributions, self.core_grad = contributions, core_grad


class _OutputGradHook:
    """Tensor hook on a layer output (or on a dense weight): records one contribution.

    The hook, and with it the input ``x``, lives as long as the autograd graph; the gradient
    passes through unchanged.
    """

    __slots__ = ("record", "x", "is_weight", "mid")

    def __init__(self, record, x, is_weight, mid=None):
        self.record, self.x, self.is_weight, self.mid = record, x, is_weight, mid

    def __call__(self, grad):
        self.record._on_output_grad(self.x, grad.detach(), self.is_weight, self.mid)


class GradientRecord:
    """The per-backward-pass records of one Tucker layer (see the module docstring).

    Parameters
    ----------
    layer : torch.nn.Module
        A Tucker layer: ``core`` (a Parameter), ``weight_shape``, ``galerkin_record``
        (``"output_grad"`` or ``"weight_grad"``) and, for output-gradient records,
        ``_projected_weight_grad(x, grad_out, U_hats)``.

    Notes
    -----
    The hooks on the core are registered when the record is made (at layer construction,
    before any hook of the user, so that they see the raw gradient) and again when the core
    Parameter was replaced (``copy.deepcopy`` of a layer makes a new one).
    """

    #: :meth:`weight_gradient` takes ``leading`` and returns a new tensor (what
    #: :class:`tuckerflow.optim.TDLRT` relies on; the layer protocol asks for less)
    takes_leading = True

    def __init__(self, layer):
        self._layer = weakref.ref(layer)
        self.enabled = False
        self._pending = []
        self._raw = {}
        self.groups = []
        self._hooked = None
        self.ensure_hooks()

    def __deepcopy__(self, memo):
        # a copied layer makes a fresh, empty record bound to itself (see TuckerLayer)
        return None

    def __reduce__(self):
        # records are transient (they hold autograd tensors): a pickled layer has none
        return (_no_record, ())

    # ------------------------------------------------------------------ recording

    def ensure_hooks(self):
        layer = self._layer()
        core = layer.core
        if self._hooked is not None and self._hooked() is core:
            return
        ref = weakref.ref(self)

        def pre(grad, ref=ref):
            rec = ref()
            if rec is not None:
                rec._on_core_grad(grad)

        def post(param, ref=ref):
            rec = ref()
            if rec is not None:
                rec._on_core_accumulated()

        core.register_hook(pre)
        core.register_post_accumulate_grad_hook(post)
        self._hooked = weakref.ref(core)

    def watch_output(self, y, x, mid=None):
        """Record the output gradient of ``y = layer(x)`` when backward reaches it.

        ``mid``: a :class:`MidGradHook` the forward registered on its intermediate (its
        gradient arrives after the output's in the same backward pass)."""
        if y.requires_grad:
            y.register_hook(_OutputGradHook(self, x.detach(), False, mid))

    def watch_weight(self, w):
        """Record the gradient of a dense weight ``w`` (a differentiable reconstruction)."""
        if w.requires_grad:
            w.register_hook(_OutputGradHook(self, None, True))

    def _on_output_grad(self, x, grad, is_weight, mid=None):
        if not self.enabled:
            return
        task = _graph_task()
        layer = self._layer()
        if is_weight:
            self._pending.append(Contribution(task, weight_grad=grad))
        elif layer.galerkin_record == "weight_grad":
            self._pending.append(Contribution(task, weight_grad=layer._weight_grad_of(x, grad)))
        else:
            c = Contribution(task, x=x, grad=grad)
            if mid is not None:
                c.x_mid, mid.pending = mid.x_mid, c
            self._pending.append(c)

    def _on_core_grad(self, grad):
        if not self.enabled:
            return
        layer = self._layer()
        if layer.core.grad is None:
            # the accumulation starts afresh: what was recorded before was discarded
            self.groups = []
        # the gradient object itself (not a detached view): holding it keeps autograd from
        # adopting its storage as ``.grad``, which later accumulation would change in place
        self._raw[_graph_task()] = grad

    def _on_core_accumulated(self):
        if not self.enabled:
            return
        task = _graph_task()
        grad = self._raw.pop(task, None)
        self._raw.clear()  # left by autograd.grad calls, which accumulate nothing
        if grad is None:
            return
        # arrivals of other passes never reached the core's accumulation (autograd.grad
        # calls, a core without gradient): they are dropped
        mine = [c for c in self._pending if c.task == task]
        self._pending = []
        self.groups.append(BackwardGroup(mine, grad.detach()))

    def clear(self):
        """Drop every record (frees their memory)."""
        self._pending = []
        self._raw = {}
        self.groups = []

    # ------------------------------------------------------------------ reading

    def contributions(self, groups=None):
        groups = self.groups if groups is None else groups
        return [c for g in groups for c in g.contributions]

    def partial_weight_gradients(self, factors, groups=None):
        """``{i: Σ G ×_{j≠i} U_jᴴ}`` for every mode ``i`` with a factor in ``factors`` (one
        entry per mode, None: not projected), summed over the contributions of ``groups``;
        None when the groups hold no contribution. New tensors in the core's dtype.

        The layer's recorded intermediates give them directly where it can
        (``_partial_weight_grads``: the factors of the recorded forward); otherwise each is a
        :meth:`weight_gradient` with the other modes projected.
        """
        layer = self._layer()
        contributions = self.contributions(groups)
        if not contributions:
            return None
        direct = getattr(layer, "_partial_weight_grads", None)
        if direct is not None and all(
            (u is None) == (layer.factor(i) is None) for i, u in enumerate(factors)
        ):
            with torch.no_grad(), torch.autocast(layer.core.device.type, enabled=False):
                parts = direct(contributions)
            if parts is not None:
                return parts
        parts = {}
        for i, u in enumerate(factors):
            if u is None:
                continue
            proj = list(factors)
            proj[i] = None
            part = self.weight_gradient(proj, groups)
            if part is None:
                return None
            parts[i] = part
        return parts

    def weight_gradient_bound(self, groups=None):
        """A float64 device scalar bounding ``‖Σ G_j‖_F`` over the contributions of
        ``groups`` (default: all), from the norms of the recorded tensors, never forming
        ``G``; None where the layer states no bound (``_weight_grad_norm_factor``) or the
        groups hold no contribution.

        A contribution of input ``x`` and output gradient ``g`` adds ``c ‖x‖_F ‖g‖_F``
        (``c`` the layer's factor), one with a dense weight gradient its norm. The norms are
        taken in the recorded tensors' precision (at least float32; a float64 copy of every
        activation would cost more than the K-step it serves): they are then exact to a
        relative ``√n·eps32``, far inside the factor 4 by which TDLRT's overflow check stays
        below the largest float, and a norm beyond float32's range is Inf (no bound). NaN
        or Inf in a recorded tensor makes the bound NaN or Inf.
        """
        layer = self._layer()
        factor_of = getattr(layer, "_weight_grad_norm_factor", None)
        factor = None if factor_of is None else factor_of()
        contributions = self.contributions(groups)
        if factor is None or not contributions:
            return None

        def norm(t):
            wide = t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32
            return torch.linalg.vector_norm(t, dtype=wide).to(torch.float64)

        total = None
        with torch.no_grad():
            for c in contributions:
                if c.weight_grad is not None:
                    t = norm(c.weight_grad)
                elif c.x is not None and c.grad is not None:
                    t = factor * (norm(c.x) * norm(c.grad))
                else:
                    return None
                total = t if total is None else total + t
        return total

    def weight_gradient(self, U_hats, groups=None, leading=()):
        """``G ×_i U_hats[i]ᴴ`` summed over the contributions of ``groups`` (default: all).

        ``U_hats`` has one entry per mode, an ``n_i × p_i`` matrix or None (mode not
        projected). The result is in the core's dtype, without autograd history, even inside
        an autocast region, and a new tensor (never one of the recorded ones). Returns None
        when the groups hold no contribution.

        ``leading``: modes whose ``U_hats[i]`` starts with the factor the recorded forward
        passes used (an augmented basis). Where the layer recorded the intermediates of its
        factorized forward, the block of the old directions is then the pass's raw core
        gradient and only the new directions are formed
        (``layer._projected_weight_grad_parts``); the same quantity, without its largest block.
        """
        layer = self._layer()
        ref = layer.core
        cast = [
            None if u is None else u.detach().to(dtype=ref.dtype, device=ref.device) for u in U_hats
        ]
        out = None
        groups = self.groups if groups is None else groups
        parts = getattr(layer, "_projected_weight_grad_parts", None)
        if leading and parts is not None:
            rest = []
            with torch.no_grad(), torch.autocast(ref.device.type, enabled=False):
                for g in groups:
                    part = parts(g.contributions, g.core_grad, cast, set(leading))
                    if part is None:
                        rest.append(g)
                    else:
                        out = part if out is None else out + part
            if not rest:
                return out
            groups = rest
        contributions = self.contributions(groups)
        with torch.no_grad(), torch.autocast(ref.device.type, enabled=False):
            dense = [c.weight_grad for c in contributions if c.weight_grad is not None]
            if dense:
                summed = dense[0].to(ref.dtype, copy=True)
                for w in dense[1:]:
                    summed = summed + w.to(ref.dtype)
                for i, u in enumerate(cast):
                    if u is not None:
                        summed = torch.movedim(
                            torch.tensordot(u.conj().t(), summed, dims=([1], [i])), 0, i
                        )
                out = summed if out is None else out + summed
            for c in contributions:
                if c.grad is not None:
                    part = layer._projected_weight_grad(
                        c.x.to(ref.dtype), c.grad.to(ref.dtype), cast
                    )
                    out = part if out is None else out + part
        return out
