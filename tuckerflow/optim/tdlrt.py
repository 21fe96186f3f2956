"""TDLRT: rank-adaptive, geometry-aware training of Tucker-factorized layers.

One optimizer step is one step of the rank-adaptive BUG integrator applied to the gradient
flow ``Ẏ = −∇L(Y)`` of every Tucker layer, wrapped around an arbitrary ``torch.optim``
optimizer that performs the Galerkin (core) step and the step of every other parameter.
:class:`TDLRT` is itself a ``torch.optim.Optimizer`` whose ``param_groups``, ``state`` and
``defaults`` are those of the base optimizer, so schedulers, ``GradScaler`` and training
frameworks take it as they take any optimizer.

The pieces live by concept: :mod:`~tuckerflow.optim.basis` (K-step),
:mod:`~tuckerflow.optim.transport` (optimizer state across basis changes),
:mod:`~tuckerflow.optim.edits` (which recorded gradient ``core.grad`` holds),
:mod:`~tuckerflow.optim.precision`, :mod:`~tuckerflow.optim.distributed` and
:mod:`~tuckerflow.optim.protocol` (the layer contract).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np
import tensorly as tl
import torch

from .._host import to_host
from ..dlra import truncate_core
from ..ranks import largest_valid_rank
from ..recompression import GREEDY_BOX_LIMIT
from . import _batched
from .basis import HostBatch, KStepJob, kstep_bases, kstep_finish, kstep_prepare
from .distributed import (
    agree_flags,
    average_,
    broadcast_parameters,
    broadcast_ranks,
    ddp_ignore_tucker_parameters,
    process_group,
    tucker_parameter_names,
)
from .edits import (
    GradientEditError,
    edit_candidates,
    resolve_edits,
    settle_edits,
    speculative_scale,
)
from .layers import set_tucker, tucker_layers
from .precision import plain_precision, work_dtype
from .protocol import check_layer
from .state import check_tdlrt_state_dict
from .transport import mode_products, transport_state

__all__ = [
    "GradientEditError",
    "NonFiniteGradientError",
    "TDLRT",
    "ddp_ignore_tucker_parameters",
    "default_scale",
]

_MODES = ("one-pass", "two-pass")
_ON_NONFINITE = ("raise", "skip")

# names kept for code that imported them from here
_plain_precision = plain_precision
_dist = process_group


class NonFiniteGradientError(FloatingPointError):
    """A gradient held NaN or Inf; the model and the optimizer were left unchanged."""


#: Largest ``max |UᴴU − I|`` accepted for the factors of a layer handed to :class:`TDLRT`
#: (float32 round-off is far below, a factor that is not orthonormal far above). Factors
#: stored in half precision are checked at ``2 · eps`` of their dtype instead: rounding each
#: entry of an orthonormal matrix by ``eps/2`` moves ``UᴴU`` by at most ``eps`` per entry.
ORTHONORMALITY_TOLERANCE = 1e-4


def _orthonormality_tolerance(dtype):
    return max(ORTHONORMALITY_TOLERANCE, 2.0 * torch.finfo(dtype).eps)


def _eye_like(u):
    return torch.eye(u.shape[1], dtype=u.dtype, device=u.device)


def _restore_shapes(layers, saved):
    """Give the layers back the core and factor data ``saved`` (``{name: (core, factors)}``)."""
    for name, layer in layers.items():
        core, facs = saved[name]
        factors = [None] * len(layer.weight_shape)
        for mode_, u in zip(layer.factorized_modes, facs):
            factors[mode_] = u
        set_tucker(layer, core, factors)


def _check_tau(tau):
    if isinstance(tau, (str, bytes, bool)):
        raise TypeError(f"tau must be a real number in (0, 1), got {tau!r}")
    try:
        value = float(tau)
    except (TypeError, ValueError):
        raise TypeError(f"tau must be a real number in (0, 1), got {tau!r}") from None
    if not (0.0 < value < 1.0):
        raise ValueError(f"tau={tau!r} must lie in the open interval (0, 1)")
    return value


def default_scale(layer):
    """Frobenius norm of PyTorch's default initialization of the layer's dense weight.

    ``kaiming_uniform_(a=√5)`` draws the entries of a ``Linear``/``Conv`` weight with
    variance ``1 / (3 · fan_in)``, so ``E‖W‖²_F = ∏ n_i / (3 · fan_in)`` (``n_i`` the weight's
    mode sizes); the Tucker layers' random initialization has the same expected norm.
    """
    fan_in = getattr(layer, "fan_in", None)
    if not isinstance(fan_in, numbers.Integral) or fan_in < 1:
        raise ValueError(
            f"reference_scale='default' needs layers with a positive integer fan_in, "
            f"{type(layer).__name__} has fan_in={fan_in!r}; give a dict of scales instead"
        )
    return math.sqrt(math.prod(layer.weight_shape) / (3.0 * fan_in))


def _check_layer_names(value, layers, what):
    """Refuse a per-layer dict ``value`` (option ``what``) naming modules that are not layers."""
    unknown = sorted(set(value) - set(layers))
    if unknown:
        raise ValueError(
            f"{what} names {unknown}, which are not Tucker layers of the model ({sorted(layers)})"
        )


def _reference_scales(value, layers):
    """``{layer name: s}`` of ``reference_scale`` (None: the rule is off)."""
    if value is None:
        return {}
    if isinstance(value, str):
        if value != "default":
            raise ValueError(
                f"reference_scale={value!r} is not None, 'default' or a dict of scales"
            )
        return {name: default_scale(layer) for name, layer in layers.items()}
    if not isinstance(value, dict):
        raise TypeError(
            f"reference_scale must be None, 'default' or a dict {{layer name: scale}}, "
            f"got {type(value).__name__}"
        )
    _check_layer_names(value, layers, "reference_scale")
    out = {}
    for name, scale in value.items():
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"reference_scale[{name!r}] must be a real number, got {scale!r}")
        if not (math.isfinite(float(scale)) and float(scale) > 0):
            raise ValueError(f"reference_scale[{name!r}]={scale!r} must be finite and > 0")
        out[name] = float(scale)
    return out


#: Exponent ``p`` of the small-weight tolerance ``τ_l = τ · min(1, ‖Ĉ‖ / s)^p`` of
#: ``reference_scale`` (the saddle ablation of the experiments page: ``p = 2`` leaves the
#: small-weight saddle in the epoch the dense network does, ``p = 1`` later).
REFERENCE_SCALE_POWER = 2


def _rank_bound(value, lname, layer, what, default_full):
    """Per-mode bound for one layer (full modes: the mode size)."""
    shape = tuple(layer.weight_shape)
    d = len(shape)
    if isinstance(value, dict):
        value = value.get(lname)
    if value is None:
        return [n if default_full else 1 for n in shape]
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, a sequence of ints or a dict, got {value!r}")
    if isinstance(value, numbers.Integral):
        if value < 1:
            raise ValueError(f"{what}={value} must be at least 1")
        return [min(int(value), n) for n in shape]
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{what} must be an int, a sequence of ints or a dict, got {value!r}")
    vals = list(value)
    if len(vals) != d:
        raise ValueError(
            f"{what} for layer {lname!r} has {len(vals)} entries but its weight has {d} modes "
            f"(weight_shape={shape})"
        )
    out = []
    for i, (v, n) in enumerate(zip(vals, shape)):
        if v is None:
            out.append(n if default_full else 1)
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{what}[{i}] for layer {lname!r} must be an int or None, got {v!r}")
        v = int(v)
        if v < 1:
            raise ValueError(f"{what}[{i}]={v} for layer {lname!r} must be at least 1")
        if v > n:
            raise ValueError(
                f"{what}[{i}]={v} for layer {lname!r} exceeds the size {n} of mode {i}"
            )
        out.append(v)
    return out


def _max_abs(tensors):
    """``max |entry|`` over tensors as a 0-d float64 device tensor (NaN and Inf propagate)."""
    maxima = [t.detach().abs().amax().to(torch.float64) for t in tensors if t.numel()]
    if not maxima:
        return torch.zeros((), dtype=torch.float64, device=tensors[0].device)
    return torch.stack(maxima).amax()


def _clear_records(layers):
    for layer in layers:
        layer.gradient_record.clear()


@contextlib.contextmanager
def _recording(layers, flag):
    """Set ``record_for_galerkin`` and ``factor_gradients`` of the layers for a block."""
    layers = list(layers)
    old = [(layer.record_for_galerkin, layer.factor_gradients) for layer in layers]
    for layer in layers:
        layer.record_for_galerkin = flag
        layer.factor_gradients = flag
    try:
        yield
    finally:
        for layer, (record, grads) in zip(layers, old):
            layer.record_for_galerkin = record
            layer.factor_gradients = grads


def _momentum_memory(optimizer, cores):
    """``⌈1/(1 − β)⌉`` for the largest momentum ``β`` of the cores' groups (1 without)."""
    ids = {id(c) for c in cores}
    beta = 0.0
    for group in optimizer.param_groups:
        if not any(id(p) in ids for p in group["params"]):
            continue
        value = group.get("momentum", 0.0)
        if "betas" in group:
            value = group["betas"][0]
        value = float(value or 0.0)
        if not 0.0 <= value < 1.0:
            raise ValueError(
                f"update_every='auto' needs a momentum in [0, 1) in the base optimizer, got "
                f"{value!r}; pass update_every as an integer"
            )
        beta = max(beta, value)
    # round first: 1/(1 − 0.9) is 10.000000000000002 in floating point
    return max(1, math.ceil(round(1.0 / (1.0 - beta), 9)))


def _discarded(reference, P_list):
    """``‖R − R ×_i P_iP_iᴴ‖`` (a device scalar): what projecting onto the kept directions
    removes from ``R``."""
    kept = mode_products(reference, [None if p is None else p.conj().T for p in P_list])
    back = mode_products(kept, list(P_list))
    return torch.linalg.vector_norm(reference - back)


def _has_flat_history(optimizer):
    """Optimizers keeping one flattened history over all parameters (``LBFGS``)."""
    return isinstance(optimizer, torch.optim.LBFGS)


class _PartialGradient:
    """What the K-step reads of a layer's weight gradient ``G``, formed without ``G``.

    ``parts[i] = c · G ×_{j≠i} U_jᴴ`` for each factorized mode ``i`` (the K-step's
    ``partial_contraction``), each a projected weight gradient of the recorded passes (for
    a convolution ``∂L/∂y`` against ``U_1ᵀx`` and ``U_0ᵀ∂L/∂y`` against ``x``: about ``r/n``
    of a dense weight gradient each); ``bound``: a float64 device scalar bounding ``‖c·G‖_F``
    (:meth:`~tuckerflow.nn.recording.GradientRecord.weight_gradient_bound`).
    NaN or Inf in ``G`` reaches every part (an inner product with a non-finite term is
    non-finite), so the parts' finite check is ``G``'s.
    """

    __slots__ = ("parts", "bound")

    def __init__(self, parts, bound):
        self.parts, self.bound = parts, bound

    @property
    def dtype(self):
        return next(iter(self.parts.values())).dtype

    def contraction(self, mode):
        return self.parts[mode]


def _grad_max_abs(g):
    """``max |g|`` in float64 of a weight gradient or of all parts of a partial one."""
    return _max_abs(list(g.parts.values()) if isinstance(g, _PartialGradient) else [g])


def _norm_bound(g, none):
    return g.bound.to(torch.float64) if isinstance(g, _PartialGradient) else none


class TDLRT(torch.optim.Optimizer):
    """Rank-adaptive training of Tucker layers around any ``torch.optim`` optimizer.

    A ``torch.optim.Optimizer`` itself: ``param_groups``, ``state`` and ``defaults`` *are*
    the base optimizer's (never copies), so learning-rate schedulers
    (``torch.optim.lr_scheduler.*(tdlrt)``), ``torch.amp.GradScaler``, step hooks and
    training frameworks use it as any optimizer, also after ``load_state_dict``.

    Parameters
    ----------
    model : torch.nn.Module
        A model holding Tucker layers (``tuckerflow.nn.TuckerLayer``, or any module following
        :class:`~tuckerflow.optim.protocol.TuckerLayerProtocol`; a
        ``DistributedDataParallel`` wrapper is accepted).
    optimizer : torch.optim.Optimizer
        Built over ``model.parameters()``; it takes the Galerkin step of every core (with the
        learning rate of the core's parameter group, so schedulers work) and the ordinary step
        of every other parameter. Factors are never stepped by it: they change only through
        the K-step basis update (their gradients are dropped before its step).
    tau : float in (0, 1)
        Relative truncation tolerance: per layer ``ϑ = τ ‖Ĉ‖_F``.
    min_rank, max_rank : int, sequence of int, or dict ``{layer name: int | sequence}``
        Rank floor and cap per mode. An int applies to every mode (clamped to the mode
        size); a sequence has one entry per weight mode (None: no bound) and must not exceed
        the mode sizes.
    mode : {"one-pass", "two-pass"}
        ``"two-pass"`` is the published form: after the basis update the closure is
        evaluated again at ``(Ĉ, Û)`` to obtain ``∇_Ĉ L``. ``"one-pass"`` forms the same
        gradient ``G ×_i Û_iᴴ`` from quantities of the first backward pass (the recorded
        ``G``), which is valid because ``Ĉ ×_i Û_i = Y`` exactly.
    on_nonfinite : {"raise", "skip"}
        What a step does with a NaN/Inf gradient: raise :class:`NonFiniteGradientError` or
        return without a change. In both cases model and optimizer are left unchanged.
        With ``"skip"`` and a base optimizer that skips on the device (those with
        ``_step_supports_amp_scaling``, i.e. ``fused=True`` SGD, Adam, AdamW: they take the
        ``found_inf`` flag ``torch.amp.GradScaler`` hands them), a step between basis
        updates reads nothing from the device: the flag goes to the optimizer's fused
        kernel, which leaves parameters and state as they were, and such a step still
        counts towards ``update_every`` (the schedule cannot depend on a value the host
        does not read); :attr:`skipped_steps` is then read from the device when asked for.
    freeze_ranks : bool
        Start with frozen ranks (fixed-rank BUG steps); see :meth:`freeze_ranks`.
    update_every : int or "auto"
        Amortized variant: basis augmentation and truncation only every ``update_every``-th
        step; in between, the factors stay and only the cores (and the other parameters)
        take an optimizer step with their exact gradient ``G ×_i U_iᴴ``. ``"auto"`` (the
        default) takes the memory length of the base optimizer's momentum,
        ``⌈1/(1 − β)⌉`` for the momentum ``β`` of the cores' parameter groups (``momentum``
        of SGD/RMSprop, ``betas[0]`` of Adam-like optimizers; 10 for ``β = 0.9``) and 1
        without momentum; it is resolved once, here (:attr:`update_every` holds the
        integer). See Notes for why.
    truncation : {"hosvd", "st_hosvd"}
        How the augmented core is truncated (:func:`tuckerflow.dlra.truncate_core`):
        ``"hosvd"`` chooses every rank from the unfoldings of ``Ĉ`` (the published rule, and
        the one the layers share in one batched transfer), ``"st_hosvd"`` sequentially.
    kstep : {"weight", "factors"}
        What the K-step reads. ``"weight"``: the projected weight gradient
        ``g_i = Mat_i(G ×_{j≠i} U_jᴴ) Q_i`` (the published step), its partial contractions
        ``G ×_{j≠i} U_jᴴ`` formed from the recorded passes without the dense ``G`` (for a
        convolution, ``∂L/∂y`` against the recorded ``U_1ᵀx`` and ``U_0ᵀ∂L/∂y`` against
        ``x``; layers whose records give no bound of ``‖G‖``, and the per-layer path of
        multi-process runs, form ``G``). ``"factors"`` reads the factor gradients
        ``∇_{U_i}L = g_i S_iᴴ`` that autograd computes anyway; it spans the same new
        directions wherever ``Mat_i(C)`` has full row rank (see
        :func:`~tuckerflow.optim.basis.kstep_bases`), and its Galerkin gradient needs a
        finite check of its own (one more host transfer per basis update). With bases
        updated at every step on one CPU thread (VGG16 / ResNet18 at 90 %, batch 32),
        ``"weight"`` costs 3.3× / 2.6× the fixed-rank Tucker step (4.6× / 2.8× with ``G``
        formed), ``"factors"`` 2.5× / 1.9× (the training benchmark, ``--tdlrt-kstep``);
        amortized (``update_every > 1``) the difference is paid once per interval.
    defer_truncation : bool
        With ``update_every > 1``: directions that a basis update adds are judged by the
        tolerance only at the end of the update interval, after the cores have taken
        ``update_every`` steps in the augmented bases (the rank cap ``max_rank`` applies at
        once). Without it a new direction is judged after a single step, at a size of one
        learning-rate step against ``τ‖Ĉ‖``, and ranks can hardly grow. Between the basis
        update and the end of the interval the layers hold the augmented bases (up to twice
        the rank); :meth:`apply_pending_truncation` truncates at once (``freeze_ranks`` does
        so too). No effect with ``update_every=1``.
    truncation_guard : bool
        A truncation must keep the weight ``Y₀`` the layer had before the basis update (that
        opened the interval, with ``defer_truncation``) to relative accuracy ``τ``:
        ``‖Y₀ − Y₀ ×_i P_iP_iᴴ‖ ≤ τ‖Y₀‖`` for the kept directions ``P_i``, in addition to the
        published ``‖Ĉ − Y₁‖ ≤ τ‖Ĉ‖``. Where the published ranks violate it, each mode keeps
        the fewest leading singular vectors of ``Mat_i(Ĉ)`` outside which ``Mat_i(Y₀)`` has
        norm at most ``τ‖Y₀‖/√m`` (``m`` truncated modes). A step that inflates ``‖Ĉ‖`` then
        cannot make the truncation take the layer's earlier content (see Notes). False: the
        published rule alone.
    limit_truncation_rate : bool
        With the guard: the kept bases must hold ``Y₀`` to ``min(τ‖Y₀‖, ‖Ĉ − Y₀‖)``, so a
        truncation never removes more of the earlier weight than the update moved it, and
        ranks fall at the pace of training instead of by up to a share ``τ`` at every basis
        update (see Notes). Off by default: it keeps more rank at a given ``τ``.
    truncation_budget : bool or None
        With the guard: each layer holds a removal budget (a token bucket), full (``τ‖Y₀‖``)
        at its first truncation; every truncation adds the distance ``‖Ĉ − Y₀‖`` the update
        moved the layer, up to the capacity ``τ‖Y₀‖``, may remove at most the budget of the
        earlier weight, and takes what it removed from it. Over a run the truncations then
        remove at most ``τ`` of the weight they were first given plus the path training
        travelled, so repeated updates cannot drain a layer that training does not move,
        while the first truncation follows ``τ`` and budget left by one update serves the
        next ones (see Notes). None (the default): on where the guard is on and
        ``limit_truncation_rate`` off (which allows only the movement of the same update and
        excludes it), off otherwise; True with either of them is refused.
    reference_scale : None, "default" or dict ``{layer name: float > 0}``
        The small-weight tolerance (not part of the published method; off by default). A
        layer with a reference scale ``s`` is truncated with ``τ_l = τ · min(1, ‖Ĉ‖_F / s)²``
        in place of ``τ`` (in the truncation, the guard and the removal budget): a layer far
        below its natural size is at the small-weight saddle, where the share of a direction
        in the core says nothing about its future (the directions training amplifies start
        below the random initial content), so the relative rule would remove them while
        they grow; at or above ``s`` nothing changes. ``"default"``: ``s`` is the norm of
        PyTorch's default initialization of the layer's dense weight
        (:func:`~tuckerflow.optim.default_scale`, ``√(∏ n_i / (3 fan_in))``), the scale of
        the layers' random initialization; meant for training from a random start. For pretrained or
        zero-started weights (adapters) give the scales as a dict, or leave it off (an
        adapter's update starts at zero and would not be truncated until it reached the
        scale). Costs one host transfer per truncation (the norms of all cores).
        :attr:`last_tolerance` holds each layer's last ``τ_l``.

    Raises
    ------
    TypeError
        ``model`` is not a ``torch.nn.Module``, ``optimizer`` not a ``torch.optim.Optimizer``
        (or already a TDLRT), or a Tucker layer lacks part of the layer contract.
    ValueError
        Bad options, a model without Tucker layers, a core outside the optimizer, factors
        that are not orthonormal, a DDP model that synchronises Tucker parameters.

    Notes
    -----
    One step for a layer ``Y = C ×_i U_i`` with weight gradient ``G`` and learning rate
    ``λ`` [ZSCKT24]_:

    1. K-step per factorized mode: ``Mat_i(C)ᴴ = Q_i S_iᴴ``,
       ``K_i = U_i S_i − λ Mat_i(G ×_{j≠i} U_jᴴ) Q_i``, ``Û_i = [U_i, orth((I − U_iU_iᴴ)K_i)]``,
       ``Ĉ = C ×_i Û_iᴴ U_i`` (so that ``Ĉ ×_i Û_i = Y``).
    2. Galerkin step: the base optimizer steps the core ``Ĉ`` with gradient
       ``G ×_i Û_iᴴ``, after its state was carried by ``×_i Û_iᴴ U_i``.
    3. Truncation of ``Ĉ`` by HOSVD with ``ϑ = τ‖Ĉ‖`` within the rank bounds
       (:func:`tuckerflow.dlra.truncate_core`), ``U_i ← Û_i P_i``, state carried by
       ``×_i P_iᴴ``.

    *Why the defaults.* The published form (``update_every=1``, no deferral, no guard,
    ``ϑ = τ‖Ĉ‖``) collapses layers to rank 1 on small image data with SGD and momentum 0.9 at
    learning rate 0.05 (see the experiments page). The mechanism: (i) with momentum, a step
    early in training can be many times larger than the weight it is added to; ``‖Ĉ‖`` is then
    dominated by that one step, and ``τ‖Ĉ‖`` exceeds the norm of everything the layer held
    before, which the relative truncation removes in one go, leaving the rank of the step
    (often (1, 1, 1, 1)); (ii) afterwards a new direction enters the bases with the size of one
    step, ``λ‖G‖``, far below ``τ‖Ĉ‖``, and is truncated again at once, so the rank cannot
    grow back. ``update_every="auto"`` lets momentum act over its own memory length between
    basis updates (momentum of a direction builds up over about ``1/(1 − β)`` steps; judged
    after one step, it is judged at a tenth of its size for ``β = 0.9``), ``defer_truncation``
    judges new directions after the interval, and the guard bounds what a truncation may take
    away from the weight before the update to a share ``τ`` of its norm (``τ²`` of its
    energy), whatever the update did. It binds after a dominating step and, rarely, at the
    margin of an ordinary one (a tail just under ``τ‖Ĉ‖`` holding a little more than
    ``τ‖Y₀‖`` of the earlier weight); :attr:`guarded_truncations` counts the truncations
    whose ranks it raised.
    The guard bounds one update, not many: where training moves a weight by less per update
    than ``τ`` of its norm, the relative rule still removes up to that share at every update
    (re-applied to an already truncated weight, it finds a new tail below ``ϑ``), and over
    many updates it can drain a layer to rank 1 without any single step dominating (seen on
    LeNet5's ``conv2`` at ``τ = 0.3``). ``limit_truncation_rate`` bounds the removal by the
    update itself, in the spirit of the rank-adaptive integrator's step-size-proportional
    tolerance [CKL22]_.
    ``truncation_budget`` rate-limits with bursts instead: the truncations together remove at
    most ``τ`` of a layer's first weight plus the sum of the update movements ``‖Ĉ − Y₀‖``,
    and the budget saved never exceeds one tolerance ``τ‖Y₀‖`` (an unbounded saving lets the
    large early movements of training pay for a drain later, seen on LeNet5). The relative
    rule acts in full at the first truncation and where training moves a layer by more than
    it would remove, and at the pace of training where it moves little (the drain). The
    budget is part of :meth:`state_dict`.

    The guard's norms are the Frobenius norms of the cores in the augmented bases (equal to
    those of the weights, the bases being orthonormal).

    A mode whose rank sits at its cap (below the mode size) takes the fixed-rank BUG update
    ``Û_i = orth(K_i)`` instead [CL22]_: augmenting and truncating back to the cap would
    mostly keep the old basis. Frozen ranks use that update in every mode. The state
    transport rule is in :mod:`tuckerflow.optim.transport`.

    *The visible gradients are the source of truth.* ``G`` is recorded per backward pass
    (:mod:`tuckerflow.nn.recording`); at ``step()``, ``core.grad`` is compared with the raw
    core gradients of the recorded passes (:mod:`tuckerflow.optim.edits`): passes discarded
    by a ``zero_grad`` (through this optimizer, the base optimizer or the model,
    ``set_to_none`` True or False) are left out, and a uniform edit ``core.grad = c · ∂L/∂C``
    (``clip_grad_norm_``, ``grad *= c``, ``GradScaler.unscale_``) is honoured exactly by
    using ``c · G``. An edit that is not uniform (``clip_grad_value_`` that clips, a hook
    changing single entries) cannot be expressed through ``G``: the one-pass step raises
    :class:`GradientEditError` before changing anything; in two-pass mode the closure's edit
    reaches the Galerkin step, which uses the edited core gradient at the augmented bases
    (the bases come from ``c · G`` with the best uniform ``c``). Factor gradients
    (``kstep="factors"``) are read as they are, edits included.

    With ``step(closure)`` the closure is evaluated first. The base optimizer's step gets a
    closure too; its first call returns that loss without re-evaluating (the gradients are
    in place), later calls (``LBFGS``'s line search) re-evaluate the model at the augmented
    bases without recording. ``LBFGS`` keeps one flattened history over all parameters,
    which cannot follow a change of basis or shape: it is reset at every basis update, so
    each TDLRT step is a fresh L-BFGS run of ``max_iter`` iterations on the Galerkin
    problem (with ``update_every > 1`` the history survives the core-only steps).

    After each step TDLRT sets the layers' ``record_for_galerkin`` and ``factor_gradients``
    to what the next step reads, so a backward pass forms nothing that is thrown away: the
    factor gradients exist only before basis-updating steps with ``kstep="factors"`` (the
    factors never take an optimizer step). Change the rank schedule (``freeze_ranks``)
    between steps, not between ``backward`` and ``step``. To train the layers with another
    optimizer afterwards, set ``factor_gradients = True`` on them again.

    Under ``DistributedDataParallel`` call :func:`ddp_ignore_tucker_parameters` before
    wrapping: TDLRT averages the weight gradients of the Tucker layers over the processes and
    broadcasts process 0's ranks, so that every process takes identical decisions (edits of
    the core gradients act on each process's local gradient, before that average).

    See the "Training loops" guide for every standard idiom (clipping, accumulation, AMP,
    schedulers, resume, ``torch.compile``, weight averaging, Lightning).

    References
    ----------
    .. [ZSCKT24] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco,
       "Geometry-aware training of factorized layers in tensor Tucker format",
       NeurIPS 2024 (arXiv:2305.19059).
    .. [CKL22] G. Ceruti, J. Kusch, C. Lubich, "A rank-adaptive robust integrator for
       dynamical low-rank approximation", BIT Numer. Math. 62, 2022 (arXiv:2104.05247).
    .. [CL22] G. Ceruti, C. Lubich, "An unconventional robust integrator for dynamical
       low-rank approximation", BIT Numer. Math. 62, 2022 (arXiv:2010.02022).

    Examples
    --------
    ``opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)``,
    ``tdlrt = TDLRT(model, opt, tau=0.1)``,
    ``sched = torch.optim.lr_scheduler.CosineAnnealingLR(tdlrt, T_max=1000)``, then per
    batch ``tdlrt.zero_grad(); loss_fn(model(x), y).backward(); tdlrt.step(); sched.step()``.
    """

    def __init__(
        self,
        model,
        optimizer,
        *,
        tau=0.1,
        min_rank=1,
        max_rank=None,
        mode="one-pass",
        on_nonfinite="raise",
        freeze_ranks=False,
        update_every="auto",
        truncation="hosvd",
        kstep="weight",
        defer_truncation=True,
        truncation_guard=True,
        limit_truncation_rate=False,
        truncation_budget=None,
        reference_scale=None,
    ):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                f"model must be a torch.nn.Module holding Tucker layers, got {type(model).__name__}"
            )
        if isinstance(optimizer, TDLRT):
            raise TypeError("optimizer is already a TDLRT; wrap the base optimizer only once")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer built over model.parameters(), "
                f"got {type(optimizer).__name__}"
            )
        # the Optimizer bookkeeping, without Optimizer.__init__: param_groups, state and
        # defaults are the base optimizer's (properties below), never copies
        self.optimizer = optimizer
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()
        self.tau = _check_tau(tau)
        if mode not in _MODES:
            raise ValueError(f"mode={mode!r} is not one of {_MODES}")
        if on_nonfinite not in _ON_NONFINITE:
            raise ValueError(f"on_nonfinite={on_nonfinite!r} is not one of {_ON_NONFINITE}")
        if kstep not in ("weight", "factors"):
            raise ValueError(f"kstep={kstep!r} is not one of ('weight', 'factors')")
        self.kstep = kstep
        if truncation not in ("hosvd", "st_hosvd"):
            raise ValueError(f"truncation={truncation!r} is not one of ('hosvd', 'st_hosvd')")
        if not (isinstance(update_every, str) and update_every == "auto") and (
            isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1
        ):
            raise ValueError(f"update_every={update_every!r} must be 'auto' or an integer >= 1")
        if not isinstance(defer_truncation, bool):
            raise TypeError(f"defer_truncation={defer_truncation!r} must be True or False")
        if not isinstance(truncation_guard, bool):
            raise TypeError(f"truncation_guard={truncation_guard!r} must be True or False")
        if not isinstance(limit_truncation_rate, bool):
            raise TypeError(
                f"limit_truncation_rate={limit_truncation_rate!r} must be True or False"
            )
        if limit_truncation_rate and not truncation_guard:
            raise ValueError("limit_truncation_rate=True needs truncation_guard=True")
        if truncation_budget is not None and not isinstance(truncation_budget, bool):
            raise TypeError(f"truncation_budget={truncation_budget!r} must be True, False or None")
        if truncation_budget is None:
            truncation_budget = truncation_guard and not limit_truncation_rate
        if truncation_budget and not truncation_guard:
            raise ValueError("truncation_budget=True needs truncation_guard=True")
        if truncation_budget and limit_truncation_rate:
            raise ValueError(
                "truncation_budget=True and limit_truncation_rate=True exclude each other; "
                "choose one bound on what a truncation removes"
            )
        self.defer_truncation = defer_truncation
        self.truncation_guard = truncation_guard
        self.limit_truncation_rate = limit_truncation_rate
        self.truncation_budget = truncation_budget
        #: ``{layer name: removal budget}`` of ``truncation_budget`` (the unit of the
        #: weights' Frobenius norm); a layer enters at its first truncation.
        self.removal_budget = {}
        self.model = model
        self.mode = mode
        self.on_nonfinite = on_nonfinite
        self.update_every = update_every
        self.truncation = truncation
        self._layers = tucker_layers(model)
        if not self._layers:
            raise ValueError(
                "model has no Tucker layers (modules with core, factors and set_tucker_); "
                "convert it with tuckerflow.nn.tuckerize first"
            )
        for name, layer in self._layers.items():
            check_layer(layer, name)
        for what, value in (("min_rank", min_rank), ("max_rank", max_rank)):
            if isinstance(value, dict):
                _check_layer_names(value, self._layers, what)
        #: ``{layer name: s}`` of ``reference_scale`` (empty: the rule is off).
        self.reference_scales = _reference_scales(reference_scale, self._layers)
        #: ``{layer name: τ_l}``, the relative tolerance of each layer's last truncation.
        self.last_tolerance = {}
        self._lo, self._hi = {}, {}
        for name, layer in self._layers.items():
            lo = _rank_bound(min_rank, name, layer, "min_rank", default_full=False)
            hi = _rank_bound(max_rank, name, layer, "max_rank", default_full=True)
            for i, (a, b) in enumerate(zip(lo, hi)):
                if a > b:
                    raise ValueError(
                        f"min_rank[{i}]={a} exceeds max_rank[{i}]={b} for layer {name!r}"
                    )
            self._lo[name], self._hi[name] = lo, hi
        if type(model).__name__ == "DistributedDataParallel":
            ignored = set(getattr(model, "parameters_to_ignore", ()))
            missing = [n for n in tucker_parameter_names(model.module) if n not in ignored]
            if missing:
                raise ValueError(
                    f"the DistributedDataParallel model synchronises the Tucker parameter "
                    f"{missing[0]!r}, whose shape TDLRT changes; call "
                    "tuckerflow.optim.ddp_ignore_tucker_parameters(model) before wrapping it"
                )
        for name, layer in self._layers.items():
            for mode_ in layer.factorized_modes:
                u = layer.factor(mode_).detach()
                tol = _orthonormality_tolerance(u.dtype)
                u = u.to(work_dtype(u.dtype))  # the product in at least float32
                err = float((u.conj().T @ u - _eye_like(u)).abs().max()) if u.numel() else 0.0
                if not err <= tol:
                    raise ValueError(
                        f"factor of mode {mode_} of layer {name!r} is not orthonormal "
                        f"(max |UᴴU − I| = {err:.2e} > {tol:g}); TDLRT "
                        "needs orthonormal factors (re-orthonormalize with a QR and absorb R "
                        "into the core)"
                    )
        groups = self._groups_by_param()
        for name, layer in self._layers.items():
            if id(layer.core) not in groups:
                raise ValueError(
                    f"the core of Tucker layer {name!r} is not among the optimizer's "
                    "parameters; build the optimizer over model.parameters()"
                )
        if update_every == "auto":
            update_every = _momentum_memory(
                self.optimizer, [layer.core for layer in self._layers.values()]
            )
        self.update_every = update_every
        #: ``{layer name: core before the basis update}`` of the layers whose truncation
        #: ``defer_truncation`` holds back to the end of the interval (in the current bases).
        self._pending = {}
        self._frozen = bool(freeze_ranks)
        self._steps = 0
        self.skipped_steps = 0
        self._skipped_on_device = None  # flags of device-side skips not read yet
        #: Truncations whose ranks the guard raised (see ``truncation_guard``).
        self.guarded_truncations = 0
        #: ``{layer name: TruncationInfo}`` of the last truncation.
        self.last_truncation = {}
        #: ``{layer name: EditResolution}`` of the last basis-updating step (what
        #: ``core.grad`` held: the recorded passes and the uniform edit factor).
        self.last_edits = {}
        self._arm_recording()
        with plain_precision():
            broadcast_parameters(self._layers.values())

    # ------------------------------------------------------ the Optimizer interface

    @property
    def param_groups(self):
        """The base optimizer's parameter groups (the same list and dicts)."""
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value):
        self.optimizer.param_groups = value

    @property
    def state(self):
        """The base optimizer's per-parameter state (the same dict)."""
        return self.optimizer.state

    @state.setter
    def state(self, value):
        self.optimizer.state = value

    @property
    def defaults(self):
        """The base optimizer's defaults (the same dict)."""
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value):
        self.optimizer.defaults = value

    def __getstate__(self):
        return dict(self.__dict__)

    def __setstate__(self, state):
        self.__dict__.update(state)
        for name in (
            "_optimizer_step_pre_hooks",
            "_optimizer_step_post_hooks",
            "_optimizer_state_dict_pre_hooks",
            "_optimizer_state_dict_post_hooks",
            "_optimizer_load_state_dict_pre_hooks",
            "_optimizer_load_state_dict_post_hooks",
        ):
            self.__dict__.setdefault(name, OrderedDict())
        self._patch_step_function()

    def __repr__(self):
        return (
            f"TDLRT(tau={self.tau}, mode={self.mode!r}, kstep={self.kstep!r}, "
            f"layers={len(self._layers)}, optimizer={self.optimizer!r})"
        )

    def add_param_group(self, param_group):
        """Add a parameter group to the base optimizer (see ``torch.optim.Optimizer``)."""
        self.optimizer.add_param_group(param_group)

    # ---------------------------------------------------------------- public API

    def ranks(self):
        """``{layer name: multilinear rank}`` (full modes included)."""
        return {name: tuple(layer.ranks) for name, layer in self._layers.items()}

    def freeze_ranks(self):
        """From now on take fixed-rank BUG steps (for a final fine-tuning phase).

        A truncation held back by ``defer_truncation`` is applied first.
        """
        self.apply_pending_truncation()
        self._frozen = True
        self._arm_recording()

    def apply_pending_truncation(self):
        """Truncate now the layers whose truncation ``defer_truncation`` holds back.

        Call it after the last step of a training run that may end inside an update
        interval (the training job does), so that the model holds the truncated ranks.
        A no-op when nothing is pending. Returns the names of the layers truncated.
        """
        if not self._pending:
            return []
        names = sorted(self._pending)
        references, self._pending = self._pending, {}
        plans = {}
        for name in names:
            layer = self._layers[name]
            factors = [None] * len(layer.weight_shape)
            for mode_ in layer.factorized_modes:
                factors[mode_] = layer.factor(mode_).detach().to(work_dtype(layer.core.dtype))
            plans[name] = (factors, None, None)
        with plain_precision():
            self._truncate(plans, references)
        return names

    @property
    def pending_truncation(self):
        """Names of the layers whose truncation waits for the end of the update interval."""
        return sorted(self._pending)

    @property
    def frozen(self):
        return self._frozen

    @property
    def next_step(self):
        """Kind of the next step: ``"adapt"`` (augmentation, Galerkin step, truncation),
        ``"bug"`` (fixed-rank basis update, ranks frozen) or ``"core"`` (Galerkin step of the
        cores only, between the basis updates of ``update_every > 1``)."""
        return self._kind()

    @property
    def steps(self):
        """Number of steps taken (skipped ones excluded, except device-side skips between
        basis updates: see ``on_nonfinite``)."""
        return self._steps

    @property
    def skipped_steps(self):
        """Number of steps skipped for a NaN/Inf gradient (``on_nonfinite="skip"``)."""
        if self._skipped_on_device is not None:
            # the device-side skips since the last read, in one transfer
            self._skipped += int(to_host(self._skipped_on_device))
            self._skipped_on_device = None
        return self._skipped

    @skipped_steps.setter
    def skipped_steps(self, value):
        self._skipped_on_device = None
        self._skipped = int(value)

    def zero_grad(self, set_to_none=True):
        """Zero the base optimizer's gradients and drop what the layers recorded.

        Zeroing through the base optimizer or the model works as well: a backward pass
        whose gradients were discarded is never read (see :mod:`tuckerflow.optim.edits`);
        this one also frees the records at once.
        """
        self.optimizer.zero_grad(set_to_none=set_to_none)
        _clear_records(self._layers.values())

    def step(self, closure=None):
        """One TDLRT step; returns the closure's loss (or None).

        With a closure, it is called first (evaluation 1). Without one, the gradients of a
        preceding ``backward()`` are used; two-pass mode and ``LBFGS`` need the closure.

        Raises
        ------
        NonFiniteGradientError
            A gradient is NaN or Inf (``on_nonfinite="raise"``).
        GradientEditError
            ``core.grad`` of a layer was edited in a way one-pass mode cannot honour.

        In every failure model and optimizer are left as they were.
        """
        try:
            return self._step(closure)
        finally:
            # the records were read (or the step refused): every step starts afresh
            _clear_records(self._layers.values())
            self._arm_recording()

    def state_dict(self):
        """Base optimizer state plus the layer shapes it belongs to and TDLRT's counters."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        shapes = {}
        for name, layer in self._layers.items():
            factors = [None] * len(layer.weight_shape)
            for mode_ in layer.factorized_modes:
                factors[mode_] = tuple(layer.factor(mode_).shape)
            shapes[name] = {"core": tuple(layer.core.shape), "factors": factors}
        out = {
            "optimizer": self.optimizer.state_dict(),
            "shapes": shapes,
            "steps": self._steps,
            "skipped_steps": self.skipped_steps,
            "frozen": self._frozen,
            "tau": self.tau,
            "pending": {name: c.clone() for name, c in self._pending.items()},
            "guarded_truncations": self.guarded_truncations,
            "removal_budget": dict(self.removal_budget),
        }
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, out)
            if result is not None:
                out = result
        return out

    def load_state_dict(self, state_dict):
        """Resize the Tucker layers to the stored shapes, then load the base optimizer.

        The layers get placeholder values of the stored shapes (zero core, leading columns
        of the identity); load the model's own state dict afterwards (or call
        :func:`tuckerflow.optim.resize_like` and ``model.load_state_dict`` first). The base
        optimizer's ``load_state_dict`` replaces its parameter-group dicts; TDLRT reads
        them afresh at every step, so schedulers keep reaching the basis update.
        """
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        check_tdlrt_state_dict(self._layers, self.optimizer, state_dict)
        shapes = state_dict["shapes"]
        saved = {
            n: (layer.core.data, [u.data for u in layer.factors])
            for n, layer in self._layers.items()
        }
        for name, layer in self._layers.items():
            want = shapes[name]
            if tuple(want["core"]) == tuple(layer.core.shape):
                continue
            ref = layer.core
            core = torch.zeros(tuple(want["core"]), dtype=ref.dtype, device=ref.device)
            factors = [
                None
                if s is None
                else torch.eye(s[0], dtype=ref.dtype, device=ref.device)[:, : s[1]]
                for s in want["factors"]
            ]
            set_tucker(layer, core, factors)
        try:
            self.optimizer.load_state_dict(state_dict["optimizer"])
        except BaseException:
            _restore_shapes(self._layers, saved)  # the base optimizer refused: undo the resize
            raise
        self._steps = int(state_dict.get("steps", 0))
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        self._frozen = bool(state_dict.get("frozen", False))
        self.guarded_truncations = int(state_dict.get("guarded_truncations", 0))
        budget = dict(state_dict.get("removal_budget") or {})
        unknown = sorted(set(budget) - set(self._layers))
        if unknown:
            raise ValueError(f"state_dict holds a removal budget of unknown layers {unknown}")
        self.removal_budget = {name: float(v) for name, v in budget.items()}
        pending = dict(state_dict.get("pending") or {})
        unknown = sorted(set(pending) - set(self._layers))
        if unknown:
            raise ValueError(f"state_dict holds a pending truncation of unknown layers {unknown}")
        self._pending = {}
        for name, ref in pending.items():
            core = self._layers[name].core
            if tuple(ref.shape) != tuple(core.shape):
                raise ValueError(
                    f"pending truncation reference of layer {name!r} has shape "
                    f"{tuple(ref.shape)}, the stored core {tuple(core.shape)}"
                )
            self._pending[name] = ref.to(device=core.device, dtype=work_dtype(core.dtype))
        self._arm_recording()
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    # ---------------------------------------------------------------- internals

    def _step(self, closure):
        kind = self._kind()
        self._embedded = {}  # set by this step's batched K-step, read by its augmentation
        if closure is None and self.mode == "two-pass" and kind != "core":
            raise ValueError(
                "mode='two-pass' needs step(closure): the closure re-evaluates the loss at "
                "the augmented bases"
            )
        if closure is None and _has_flat_history(self.optimizer):
            raise ValueError(
                f"the base optimizer {type(self.optimizer).__name__} re-evaluates the loss: "
                "call step(closure) with a closure that zeroes the gradients, evaluates the "
                "loss, calls backward and returns the loss"
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if kind == "core" and closure is None and self._skips_on_device():
            self._core_step_skipping_on_device()
            self._steps += 1
            self._end_of_interval()
            return loss
        batched = kind != "core" and self._batched_step()
        with plain_precision():
            # a batched basis update reads this flag with its one transfer
            if not batched and not self._all_finite(self._visible_grads()):
                return self._reject("a gradient")
        if kind == "core":
            self._core_step(closure, loss)
            self._steps += 1
            self._end_of_interval()
            return loss
        with plain_precision():
            galerkin_ok = False
            if batched:
                gate = self._batched_k_steps(kind)
                if gate is None:
                    return None
                resolutions, weight_grads, plans, galerkin_ok = gate
            else:
                resolutions = self._resolve_edits()
                weight_grads = self._weight_gradients(resolutions)
                if not self._all_finite(list(weight_grads.values())):
                    return self._reject("the recorded weight gradient")
                plans = self._k_steps(kind, weight_grads)
            embedded = dict(getattr(self, "_embedded", {}))
            saved = self._apply_augmentation(plans)
        second = loss
        try:
            if self.mode == "two-pass":
                # evaluation 2 needs the core gradients only
                with torch.enable_grad(), _recording(self._layers.values(), False):
                    second = closure()
            with plain_precision():
                galerkin = self._galerkin_gradients(plans, weight_grads, resolutions, embedded)
                finite = galerkin_ok or self._all_finite(list(galerkin.values()))
        except BaseException:
            # e.g. the closure failed at the augmented bases: leave the model as it was
            with plain_precision():
                self._restore(saved)
            raise
        with plain_precision():
            if not finite:
                self._restore(saved)
                return self._reject("the Galerkin gradient")
            for name, layer in self._layers.items():
                if name in galerkin:
                    layer.core.grad = galerkin[name].to(layer.core.dtype).contiguous()
            self._hide_factor_grads()
        # the weight before the update, for the guard (copied: the core may share storage)
        references = {n: p[1].detach().clone() for n, p in plans.items()} if kind == "adapt" else {}
        self._base_step(closure, second)
        if kind == "adapt":
            with plain_precision():
                if self.defer_truncation and self.update_every > 1:
                    # the cap at once, the tolerance at the end of the interval
                    self._pending.update(self._truncate(plans, None, references))
                else:
                    # where every factorized mode kept its old basis, the weight before the
                    # update is the old core zero-padded: the guard rotates the old core
                    blocks = {
                        n: saved[n][0]
                        for n in plans
                        if n in saved
                        and set(self._layers[n].factorized_modes) <= set(embedded.get(n, ()))
                    }
                    self._truncate(plans, references, blocks=blocks)
        self._steps += 1
        self._end_of_interval()
        return loss

    def _core_step(self, closure=None, loss=None):
        """The body of a step between basis updates: no host read and no shape change.

        Everything here is fixed-shape device work (the core gradients averaged over the
        processes, the base optimizer's step), so it can be captured in a CUDA graph or
        compiled with ``torch.compile(fullgraph=True)``; the finite check of the gradients
        before it is the step's only host read.
        """
        if closure is None and torch.compiler.is_compiling():
            # traced as it is (the precision guard's context managers do not trace; the
            # base optimizer's elementwise update does not depend on autocast or TF32)
            self._core_prologue()
            self.optimizer.step()
            return
        with plain_precision():
            self._core_prologue()
        self._base_step(closure, loss)

    def _skips_on_device(self):
        """Whether a step between basis updates can skip a NaN/Inf gradient on the device."""
        opt = self.optimizer
        return (
            self.on_nonfinite == "skip"
            and bool(getattr(opt, "_step_supports_amp_scaling", False))
            and getattr(opt, "found_inf", None) is None
            and getattr(opt, "grad_scale", None) is None
            and not torch.compiler.is_compiling()
            # one flag for one device (GradScaler keeps one per device)
            and len({p.device for g in opt.param_groups for p in g["params"]}) == 1
        )

    def _core_step_skipping_on_device(self):
        """A step between basis updates without a host read: the NaN/Inf flag of the
        gradients is handed to the base optimizer's fused kernel as ``found_inf`` (the
        protocol of ``torch.amp.GradScaler``), which then changes nothing."""
        with plain_precision():
            flag = 1.0 - self._finite_flag(self._visible_grads())  # 1: skip
            self._core_prologue()
            opt = self.optimizer
            opt.found_inf, opt.grad_scale = flag, None
            try:
                opt.step()
            finally:
                del opt.found_inf, opt.grad_scale
        pending = self._skipped_on_device
        self._skipped_on_device = flag if pending is None else pending + flag

    def _core_prologue(self):
        """What a step between basis updates adds to the base optimizer's step."""
        with torch.no_grad():
            for layer in self._layers.values():
                average_(layer.core.grad)
            self._hide_factor_grads()

    def _end_of_interval(self):
        if self._pending and self._kind() == "adapt":
            self.apply_pending_truncation()

    def _base_step(self, closure, loss):
        """The base optimizer's step; with a closure, one whose first call returns ``loss``."""
        if closure is None:
            with plain_precision():
                self.optimizer.step()
            return
        calls = []

        def again():
            calls.append(None)
            if len(calls) == 1:
                return loss  # the gradients of this evaluation are in place
            # a re-evaluation at the current (augmented) bases: only the cores and the other
            # parameters move, nothing is recorded
            with torch.enable_grad(), _recording(self._layers.values(), False):
                value = closure()
            with torch.no_grad():
                for layer in self._layers.values():
                    average_(layer.core.grad)
                self._hide_factor_grads()
            return value

        self.optimizer.step(again)

    def _arm_recording(self):
        """Let the layers record their batch, and form factor gradients, only when needed.

        The record is read by basis-updating steps in one-pass form, and by the K-step from
        the weight gradient; steps between amortized updates and the two-pass form with
        ``kstep="factors"`` need none (saves the hooks and the stored output gradients).
        The factor gradients are read only by the K-step of ``kstep="factors"``; every other
        step drops them, so backward need not form them.
        """
        record = self._reads_records(self._kind())
        factor_grads = self._kind() != "core" and self.kstep == "factors"
        for layer in self._layers.values():
            if layer.record_for_galerkin != record:
                layer.record_for_galerkin = record
            layer.factor_gradients = factor_grads

    def _reads_records(self, kind):
        return kind != "core" and not (self.mode == "two-pass" and self.kstep == "factors")

    def _kind(self):
        if self._frozen:
            return "bug"
        return "adapt" if self._steps % self.update_every == 0 else "core"

    def _groups_by_param(self):
        return {id(p): g for g in self.optimizer.param_groups for p in g["params"]}

    def _lr(self, param, groups):
        # read at every step: load_state_dict replaces the group dicts, schedulers edit them
        return float(groups[id(param)]["lr"])

    def _device(self):
        return next(iter(self._layers.values())).core.device

    def _reject(self, what):
        if self.on_nonfinite == "raise":
            raise NonFiniteGradientError(
                f"{what} holds NaN or Inf; the step was not taken and the model and optimizer "
                "are unchanged (use on_nonfinite='skip' to skip such steps)"
            )
        self.skipped_steps += 1
        return None

    def _visible_grads(self):
        return [p.grad for g in self.optimizer.param_groups for p in g["params"]]

    def _all_finite(self, tensors):
        return bool(to_host(self._finite_flag(tensors)) > 0)

    def _finite_flag(self, tensors):
        """1.0 (float32, on the device) if every entry of ``tensors`` on every process is
        finite, else 0.0; nothing is read."""
        tensors = [t for t in tensors if t is not None]
        if tensors:
            # max |entry| over all tensors (grouped multi-tensor kernels where available):
            # Inf and NaN propagate, finite values cannot overflow
            try:
                from torch.nn.utils import get_total_norm
            except ImportError:  # torch < 2.6
                flag = torch.stack([torch.isfinite(t).all() for t in tensors]).all()
            else:
                flag = torch.isfinite(get_total_norm(tensors, norm_type=float("inf")))
            flag = flag.to(torch.float32)
        else:
            flag = torch.ones((), device=self._device())
        return agree_flags(flag, "min")

    def _resolve_edits(self):
        """What ``core.grad`` of each layer holds; raises before any change if one-pass
        mode cannot honour it."""
        if not self._reads_records(self._kind()):
            self.last_edits = {}
            return {}
        return self._check_resolutions(resolve_edits(self._layers))

    def _check_resolutions(self, resolutions):
        """Raise for gradients one-pass mode cannot honour; record and return the rest."""
        bad = [name for name, r in resolutions.items() if not r.matched]
        unexplained = [name for name in bad if not resolutions[name].groups]
        # 2: a gradient no record explains, 1: a non-uniform edit (fine in two-pass mode)
        level = 2.0 if unexplained else (1.0 if bad else 0.0)
        if process_group() is not None:
            flag = agree_flags(torch.tensor(level, device=self._device()), "max")
            level = float(to_host(flag))
        if level >= 2 or (level >= 1 and self.mode == "one-pass"):
            if not bad:
                raise GradientEditError(
                    "another process holds a Tucker core gradient that its recorded backward "
                    "passes do not explain (see the error there); nothing was changed"
                )
            bad = unexplained or bad
            name = bad[0]
            res = resolutions[name]
            prefix = f"{name}." if name else ""
            if not res.groups:
                raise GradientEditError(
                    f"the gradient of parameter '{prefix}core' (Tucker layer {name!r}) holds "
                    "a gradient that no "
                    "recorded backward pass explains (written by hand, a penalty on the core "
                    "outside the layer's forward, or gradients kept from before the last step "
                    "without zero_grad); compute the loss through the layer's forward and "
                    "zero the gradients before each backward, or use the base optimizer's "
                    "weight_decay; nothing was changed"
                )
            raise GradientEditError(
                f"the gradient of parameter '{prefix}core' (Tucker layer {name!r}) was "
                f"edited by a non-uniform change (‖core.grad − c·∂L/∂C‖ = "
                f"{res.residual:.3g} for the best uniform factor c = {res.scale:.3g}, "
                f"round-off bound {res.tolerance:.3g}), e.g. by "
                "clip_grad_value_ or a gradient hook. The one-pass step forms its update "
                "from the recorded weight gradient and honours uniform edits only "
                "(clip_grad_norm_, scaling, GradScaler.unscale_); use "
                "TDLRT(..., mode='two-pass') and apply the edit inside the closure passed to "
                "step(), or a uniform edit; nothing was changed"
            )
        self.last_edits = resolutions
        return resolutions

    def _weight_gradients(self, resolutions, partial=False):
        """``c · Σ G_j`` over the recorded passes ``core.grad`` holds (kstep="weight"),
        averaged over the processes; ``partial`` (the batched path, one process): the
        K-step's partial contractions where the record gives them (as
        :meth:`_scaled_weight_gradients`)."""
        out = {}
        if self.kstep != "weight":
            return out
        for name, layer in self._layers.items():
            res = resolutions.get(name)
            if res is None or not res.groups:
                continue
            if partial:
                scale = torch.tensor(res.scale, dtype=torch.float64, device=self._device())
                part = self._partial_gradient(layer, res.groups, scale)
                if part is not None:
                    out[name] = part
                    continue
            d = len(layer.weight_shape)
            G = layer.gradient_record.weight_gradient([None] * d, res.groups)
            if G is None:
                continue
            G = G.detach().to(work_dtype(layer.core.dtype))
            if res.scale != 1.0:
                G = G * res.scale
            elif process_group() is not None:
                G = G.clone()
            out[name] = average_(G)
        return out

    def _hide_factor_grads(self):
        for layer in self._layers.values():
            for p in layer.factors:
                p.grad = None

    def _average(self, t):
        """Average ``t`` over the processes in place (a no-op without a process group)."""
        return average_(t, process_group())

    def _fixed_modes(self, name, layer, kind):
        if kind == "bug":
            return tuple(layer.factorized_modes)
        r, n, hi = tuple(layer.ranks), tuple(layer.weight_shape), self._hi[name]
        return tuple(i for i in layer.factorized_modes if r[i] >= hi[i] and hi[i] < n[i])

    def _k_step_inputs(self, kind, weight_grads, average):
        """``(name, args, kwargs)`` of :func:`kstep_bases` / :class:`KStepJob` for every layer
        with a K-step this step, in the working precision; ``average``: the factor gradients
        of ``kstep="factors"`` are averaged over the processes here."""
        groups = self._groups_by_param()
        for name, layer in self._layers.items():
            work = work_dtype(layer.core.dtype)
            G, factor_grads = weight_grads.get(name), None
            if self.kstep == "factors":
                grads = [p.grad for p in layer.factors]
                if layer.core.grad is None or any(g is None for g in grads):
                    continue
                factor_grads = [None] * len(layer.weight_shape)
                for mode_, g in zip(layer.factorized_modes, grads):
                    g = g.detach().to(work).clone()
                    factor_grads[mode_] = self._average(g) if average else g
            elif G is None:
                continue
            factors = [None] * len(layer.weight_shape)
            for mode_ in layer.factorized_modes:
                factors[mode_] = layer.factor(mode_).detach().to(work)
            args = (layer.core.detach().to(work), factors, G, self._lr(layer.core, groups))
            kwargs = {"fixed_modes": self._fixed_modes(name, layer, kind)}
            yield name, args, {**kwargs, "factor_grads": factor_grads}

    def _k_steps(self, kind, weight_grads):
        plans = {}
        for name, args, kwargs in self._k_step_inputs(kind, weight_grads, average=True):
            U_hats, c_hat, M_hats = kstep_bases(*args, **kwargs)
            plans[name] = (U_hats, c_hat, M_hats)
        return plans

    #: Take the per-layer path of every basis update (the reference of the batched one).
    _reference_path = False

    def _batched_step(self):
        """Whether the basis update batches its host reads (all but multi-process runs,
        where the ranks are agreed on by a collective per decision)."""
        return not self._reference_path and process_group() is None

    def _k_step_jobs(self, kind, weight_grads):
        return {
            name: KStepJob(*args, **kwargs)
            for name, args, kwargs in self._k_step_inputs(kind, weight_grads, average=False)
        }

    def _batched_k_steps(self, kind):
        """Finite checks, edit resolution and K-steps of all layers with one host transfer.

        Everything the decisions need is computed on the device first: ``max |grad|`` of
        the visible gradients and of the layers' parameters, the edit candidates of every
        core gradient (:mod:`~tuckerflow.optim.edits`), the weight gradients formed with the
        edit factor of the longest suffix of recorded passes (what the resolution picks
        unless a pass was zeroed away; otherwise they are formed again after the transfer,
        at the cost of a second one), and the norms and singular values of the new
        directions of every mode. One transfer brings them to the host, where the step is
        refused or the augmentation ranks are chosen. Returns None for a refused step,
        else ``(resolutions, weight_grads, plans, galerkin_ok)``; ``galerkin_ok`` says that
        the Galerkin gradient is finite by construction (one-pass, ``kstep="weight"``: its
        norm is at most ``‖G‖``, far below overflow), so that it needs no check of its own.
        """
        batch = HostBatch()
        vis = [g for g in self._visible_grads() if g is not None]
        vis_max = _max_abs(vis) if vis else None
        at = {"vis": None if vis_max is None else batch.add(vis_max)}
        params = [t for layer in self._layers.values() for t in (layer.core, *layer.factors)]
        par_max = _max_abs(params)
        at["params"] = batch.add(par_max)
        reads = self._reads_records(kind)
        stack, index, pre = (None, {}, {})
        if reads:
            stack, index, pre = edit_candidates(self._layers)
            if stack is not None:
                at["edits"] = batch.add(stack)
        guess = {}
        if self.kstep == "weight":
            for name in index:
                guess[name] = (index[name][2], speculative_scale(stack, index, name))
        weight_grads = self._scaled_weight_gradients(guess)
        names = list(weight_grads)
        ok = torch.isfinite(par_max)
        if names:
            g_max = torch.stack([_grad_max_abs(weight_grads[n]) for n in names])
            at["G"] = batch.add(g_max)
            unbounded = g_max.new_tensor(math.inf)
            at["bounds"] = batch.add(
                torch.stack([_norm_bound(weight_grads[n], unbounded) for n in names])
            )
            at["scales"] = batch.add(torch.stack([guess[n][1] for n in names]))
            ok = ok & torch.isfinite(g_max).all()
        if vis_max is not None:
            ok = ok & torch.isfinite(vis_max)
        jobs = self._k_step_jobs(kind, weight_grads)
        kstep_prepare(list(jobs.values()), batch, ok)
        host = batch.fetch()
        if at["vis"] is not None and not np.isfinite(host[at["vis"]]).all():
            return self._reject("a gradient")
        if not np.isfinite(host[at["params"]]).all():
            raise ValueError(
                "a core or factor of a Tucker layer holds NaN or Inf; the step was not taken"
            )
        resolutions = {}
        if reads:
            if stack is not None:
                rows = host[at["edits"]].reshape(-1, 5)
                settle_edits(rows, index, pre)
            resolutions = self._check_resolutions(pre)
        else:
            self.last_edits = {}
        if names:
            scales = host[at["scales"]]
            for name, c in zip(names, scales):
                res = resolutions.get(name)
                held = len(index[name][2])
                if res is None or len(res.groups) != held or res.scale != float(c):
                    # a pass was zeroed away or an edit is not uniform: the exact weight
                    # gradients and K-steps again, with the resolved passes (one more transfer)
                    return self._k_steps_resolved(kind, resolutions)
            if not np.isfinite(host[at["G"]]).all():
                return self._reject("the recorded weight gradient")
        plans = dict(zip(jobs, kstep_finish(list(jobs.values()), host)))
        self._embedded = {name: tuple(job.embedded) for name, job in jobs.items()}
        g_host = host[at["G"]] if names else ()
        bounds = host[at["bounds"]] if names else ()
        bounded = self._galerkin_bounded(weight_grads, g_host, plans, bounds)
        return resolutions, weight_grads, plans, bounded

    def _k_steps_resolved(self, kind, resolutions):
        """The K-steps again from the resolved passes and edit factors (one transfer)."""
        weight_grads = self._weight_gradients(resolutions, partial=True)
        names = list(weight_grads)
        batch = HostBatch()
        ok = torch.ones((), dtype=torch.bool, device=self._device())
        if names:
            g_max = torch.stack([_grad_max_abs(weight_grads[n]) for n in names])
            g_at = batch.add(g_max)
            unbounded = g_max.new_tensor(math.inf)
            b_at = batch.add(torch.stack([_norm_bound(weight_grads[n], unbounded) for n in names]))
            ok = torch.isfinite(g_max).all()
        jobs = self._k_step_jobs(kind, weight_grads)
        kstep_prepare(list(jobs.values()), batch, ok)
        host = batch.fetch()
        g_host = host[g_at] if names else ()
        bounds = host[b_at] if names else ()
        if not np.isfinite(g_host).all():
            return self._reject("the recorded weight gradient")
        plans = dict(zip(jobs, kstep_finish(list(jobs.values()), host)))
        self._embedded = {name: tuple(job.embedded) for name, job in jobs.items()}
        bounded = self._galerkin_bounded(weight_grads, g_host, plans, bounds)
        return resolutions, weight_grads, plans, bounded

    def _galerkin_bounded(self, weight_grads, g_host, plans, bounds=None):
        """Whether ``G ×_i Û_iᴴ`` is finite by construction (no check needed).

        ``‖G ×_i Û_iᴴ‖ ≤ ‖G‖ ≤ √N max|G|`` for orthonormal ``Û_i``, and every partial sum of
        the mode products is bounded by the same norm: finite when that lies far below the
        overflow threshold. Only the one-pass step from the weight gradient forms it so.
        Where the K-step read the partial contractions (:class:`_PartialGradient`), the
        Galerkin gradient is formed from the records, each entry an inner product of
        projected recorded tensors: ``bounds`` (``‖G‖ ≤ c Σ ‖x‖‖∂L/∂y‖``, from the transfer)
        bounds it and its partial sums in the same way.
        """
        if self.mode != "one-pass" or self.kstep != "weight" or not weight_grads:
            return False
        if not set(plans) <= set(weight_grads):
            return False
        if bounds is None:
            bounds = [math.inf] * len(weight_grads)
        for G, m, b in zip(weight_grads.values(), g_host, bounds):
            if isinstance(G, _PartialGradient):
                top = torch.finfo(G.dtype).max
                if not (math.isfinite(float(b)) and 4.0 * float(b) < top):
                    return False
            elif not 4.0 * math.sqrt(G.numel()) * float(m) < torch.finfo(G.dtype).max:
                return False
        return True

    def _scaled_weight_gradients(self, guess):
        """``c · Σ G_j`` over the given passes, ``c`` a device scalar (no transfer); for the
        library's records the K-step's partial contractions instead (:class:`_PartialGradient`,
        no ``G`` formed)."""
        out = {}
        for name, (groups, scale) in guess.items():
            layer = self._layers[name]
            partial = self._partial_gradient(layer, groups, scale)
            if partial is not None:
                out[name] = partial
                continue
            d = len(layer.weight_shape)
            G = layer.gradient_record.weight_gradient([None] * d, groups)
            if G is None:
                continue
            G = G.detach().to(work_dtype(layer.core.dtype))
            out[name] = G * scale.to(G.dtype)
        return out

    def _partial_gradient(self, layer, groups, scale):
        """``c · G ×_{j≠i} U_jᴴ`` for every factorized mode ``i`` and a bound of ``‖c·G‖``,
        each a small projected weight gradient of the recorded passes; None where the record
        is not the library's or states no bound (the K-step then reads ``c·G``)."""
        record = layer.gradient_record
        if not hasattr(record, "partial_weight_gradients") or not layer.factorized_modes:
            return None
        bound = record.weight_gradient_bound(groups)
        if bound is None:
            return None
        work = work_dtype(layer.core.dtype)
        factors = [None] * len(layer.weight_shape)
        for mode_ in layer.factorized_modes:
            factors[mode_] = layer.factor(mode_).detach().to(work)
        raw = record.partial_weight_gradients(factors, groups)
        if raw is None or set(raw) != set(layer.factorized_modes):
            return None
        parts = {}
        for mode_, part in raw.items():
            part = part.detach().to(work)
            parts[mode_] = part * scale.to(part.dtype)
        return _PartialGradient(parts, bound * scale.abs().to(bound.dtype))

    def _apply_augmentation(self, plans):
        """Write ``(Ĉ, Û)`` into the layers and carry the core's state; return an undo record."""
        opt_state = self.optimizer.state
        # modes whose basis change is the embedding [I; 0] (the batched K-step's): the state
        # is zero-padded there
        embedded, self._embedded = getattr(self, "_embedded", {}), {}
        saved = {}
        for name, (U_hats, c_hat, M_hats) in plans.items():
            layer = self._layers[name]
            ref = layer.core
            old_factors = [None] * len(layer.weight_shape)
            for mode_ in layer.factorized_modes:
                old_factors[mode_] = layer.factor(mode_).detach().clone()
            entries = {p: opt_state[p] for p in [ref, *layer.factors] if p in opt_state}
            saved[name] = (ref.detach().clone(), old_factors, entries)
            new_factors = [None if u is None else u.to(ref.dtype) for u in U_hats]
            old_shape = tuple(ref.shape)
            set_tucker(layer, c_hat.to(ref.dtype), new_factors)
            if ref in entries:
                opt_state[ref] = transport_state(
                    entries[ref], old_shape, M_hats, embedded=embedded.get(name, ())
                )
            for p in layer.factors:
                opt_state.pop(p, None)
        if plans and _has_flat_history(self.optimizer):
            # LBFGS: one flattened history over all parameters, in the old coordinates
            first = self.optimizer._params[0]
            flat = opt_state.pop(first, None)
            saved[None] = (first, flat, self.optimizer._numel_cache)
            self.optimizer._numel_cache = None
        return saved

    def _restore(self, saved):
        opt_state = self.optimizer.state
        for name, entry in saved.items():
            if name is None:
                first, flat, numel = entry
                opt_state.pop(first, None)
                if flat is not None:
                    opt_state[first] = flat
                self.optimizer._numel_cache = numel
                continue
            core, factors, entries = entry
            layer = self._layers[name]
            set_tucker(layer, core, factors)
            for p in [layer.core, *layer.factors]:
                opt_state.pop(p, None)
            for p, value in entries.items():
                opt_state[p] = value

    def _galerkin_gradients(self, plans, weight_grads, resolutions, embedded=None):
        out = {}
        for name, (U_hats, _, _) in plans.items():
            layer = self._layers[name]
            work = work_dtype(layer.core.dtype)
            if self.mode == "two-pass":
                g = layer.core.grad
                out[name] = None if g is None else self._average(g.detach().to(work).clone())
            elif name in weight_grads and not isinstance(weight_grads[name], _PartialGradient):
                # c·G of this batch (averaged over the processes): c·G ×_i Û_iᴴ directly
                G = weight_grads[name]
                out[name] = mode_products(G, [None if u is None else u.conj().T for u in U_hats])
            else:
                res = resolutions[name]
                ref = layer.core
                Uh = [None if u is None else u.to(ref.dtype) for u in U_hats]
                record = layer.gradient_record
                if getattr(record, "takes_leading", False):
                    # the library's record: a new tensor, never a recorded one
                    leading = (embedded or {}).get(name, ())
                    g = record.weight_gradient(Uh, res.groups, leading=leading).detach().to(work)
                    g = g * res.scale if res.scale != 1.0 else g
                else:  # a record of the protocol's two-argument form
                    g = record.weight_gradient(Uh, res.groups).detach().to(work)
                    g = g * res.scale if res.scale != 1.0 else g.clone()
                out[name] = self._average(g)
        return out

    def _guard_floor(self, name, c_hat, U_hats, reference, P_list, ranks):
        """Per-mode rank floor under which the kept bases would lose more than ``τ‖Y₀‖`` of
        the weight ``Y₀`` before the update (``reference``); None when the published ranks
        keep it.

        Mode ``i`` keeps the fewest leading left singular vectors of ``Mat_i(Ĉ)`` (at least
        the published rank) outside which ``Mat_i(Y₀)`` has norm at most ``τ‖Y₀‖/√m`` (``m``
        truncated modes); since the per-mode projections commute, the kept bases then hold
        ``Y₀`` to ``‖Y₀ − Y₀ ×_i P_iP_iᴴ‖ ≤ τ‖Y₀‖``. This is the per-layer form (one
        transfer for the norms, and the rank-cap HOSVD with one more for the tails when the
        guard acts); the batched truncation reads the same quantities with its own transfer
        (:class:`~tuckerflow.optim._batched.GuardData`) and takes the same decisions.
        """
        norms = torch.stack(
            [
                torch.linalg.vector_norm(reference),
                torch.linalg.vector_norm(c_hat - reference),
                _discarded(reference, P_list),
            ]
        )
        ny0, ndiff, discarded = (float(v) for v in to_host(norms))
        free = [i for i, u in enumerate(U_hats) if u is not None]

        return self._guard_rule(
            ny0,
            ndiff,
            lambda: discarded,
            ranks,
            free,
            lambda: self._guard_remainders(name, c_hat, U_hats, reference),
            name=name,
        )

    def _guard_remainders(self, name, c_hat, U_hats, reference):
        """``{mode i: [norm² of Mat_i(Y₀) outside the first r directions, r = 0…R_i]}``
        for the leading left singular vectors of ``Mat_i(Ĉ)`` up to the rank cap ``R_i``
        (the rank-cap HOSVD, then one transfer)."""
        free = [i for i, u in enumerate(U_hats) if u is not None]
        with tl.backend_context("pytorch", local_threadsafe=True):
            _, P_full, _ = truncate_core(
                c_hat, U_hats, min_rank=self._lo[name], max_rank=self._hi[name], method="hosvd"
            )
        parts = []
        for i in free:
            unfolded = torch.movedim(reference, i, 0).reshape(reference.shape[i], -1)
            coefficients = P_full[i].conj().T @ unfolded
            outside = torch.linalg.vector_norm(unfolded - P_full[i] @ coefficients) ** 2
            rows = torch.linalg.vector_norm(coefficients, dim=1) ** 2
            # tails[r] = norm² of Mat_i(Y₀) outside the first r directions (r ≤ R_i)
            tails = torch.flip(torch.cumsum(torch.flip(rows, [0]), 0), [0])
            parts.append(torch.cat([tails, torch.zeros_like(tails[:1])]) + outside)
        host = to_host(torch.cat(parts).to(torch.float64))
        out, pos = {}, 0
        for i, t in zip(free, parts):
            out[i] = host[pos : pos + t.numel()]
            pos += t.numel()
        return out

    def _guard_rule(
        self, norm_reference, norm_change, discarded, ranks, free, remainders, name=None
    ):
        """The guard's decision from its norms (any one unit): a rank floor or None.

        ``discarded()`` is ``‖Y₀ − Y₀ ×_i P_iP_iᴴ‖`` at the published truncation,
        ``remainders()[i][r]`` the norm² of ``Mat_i(Y₀)`` outside the first ``r`` leading left
        singular vectors of ``Mat_i(Ĉ)`` (``r`` up to the rank cap); both are called only
        when needed. ``name``: the layer whose removal budget ``truncation_budget`` reads
        and charges.
        """
        bound = self.last_tolerance.get(name, self.tau) * norm_reference
        if self.limit_truncation_rate:
            bound = min(bound, norm_change)
        budget = None
        if self.truncation_budget and name is not None:
            # a bucket filled by the movement and holding at most one tolerance τ‖Y₀‖
            budget = min(self.removal_budget.get(name, bound) + norm_change, bound)
            bound = budget
        removed = discarded()
        if removed <= bound:
            if budget is not None:
                self.removal_budget[name] = max(budget - removed, 0.0)
            return None
        share = bound / math.sqrt(max(len(free), 1))
        rest = remainders()
        floor = list(ranks)
        for i in free:
            tails = rest[i]
            keep = len(tails) - 1
            for r in range(floor[i], len(tails)):
                if math.sqrt(float(tails[r])) <= share:
                    keep = r
                    break
            floor[i] = max(floor[i], keep)
        if budget is not None:
            # the kept bases hold at least the floor's leading directions, whose per-mode
            # remainders bound what the truncation removes (the projections commute)
            removed = math.sqrt(sum(float(rest[i][floor[i]]) for i in free))
            self.removal_budget[name] = max(budget - removed, 0.0)
        return list(largest_valid_rank(floor))

    def _batched_guard(self, name, c_hat, U_hats, reference, new, P_list, data):
        """The guard's decision from the batched truncation's transfer (``data``).

        Where the kept bases are not leading singular vectors (ranks lowered to be valid,
        rare), the affected norms come from the tensors instead, one transfer each.
        """
        if data.discarded is not None:
            discarded = lambda: data.discarded  # noqa: E731
        else:
            discarded = lambda: float(to_host(_discarded(reference, P_list)))  # noqa: E731
        if data.remainders is not None:
            remainders = lambda: data.remainders  # noqa: E731
        else:
            remainders = lambda: self._guard_remainders(name, c_hat, U_hats, reference)  # noqa: E731
        return self._guard_rule(
            data.norm_reference,
            data.norm_change,
            discarded,
            list(new.rank),
            data.free,
            remainders,
            name=name,
        )

    def _small_weight_tolerances(self, plans):
        """``{layer name: τ_l}`` of the layers of ``plans`` that have a reference scale:
        ``τ_l = τ · min(1, ‖Ĉ‖_F / s)^p`` (``p`` = :data:`REFERENCE_SCALE_POWER`), the
        norms of all such cores in one host transfer."""
        names = [n for n in plans if n in self.reference_scales]
        if not names:
            return {}
        cores = [self._layers[n].core.detach() for n in names]
        device = cores[0].device
        norms = torch.stack(
            [torch.linalg.vector_norm(c.to(work_dtype(c.dtype))).to(device) for c in cores]
        )
        host = to_host(norms.to(torch.float64))
        out = {}
        for name, norm in zip(names, host):
            share = min(1.0, float(norm) / self.reference_scales[name])
            out[name] = self.tau * share**REFERENCE_SCALE_POWER
        return out

    def _truncate(self, plans, references, carry=None, blocks=None):
        """Truncate the layers of ``plans`` (core: the layer's, bases: the plan's ``Û``).

        ``references``: ``{name: core before the update}`` for the guard; None truncates to
        the rank cap only (no tolerance) and returns ``carry`` (``{name: core}`` in the
        bases ``Û``) carried to the kept bases. ``blocks``: ``{name: leading block}`` of the
        references that are zero outside it (see :func:`~tuckerflow.optim._batched.truncate_cores`).

        Off a process group and with ``truncation="hosvd"``, the layers are truncated
        together (:func:`~tuckerflow.optim._batched.truncate_cores`): one host transfer
        carries the singular values and error tables of all layers and what the guard
        decides with, so a truncation costs one transfer with or without the guard.
        """
        opt_state = self.optimizer.state
        results = {}
        rtol = None if references is None else self.tau
        guarded = rtol is not None and self.truncation_guard
        tols = {name: rtol for name in plans}
        if rtol is not None:
            tols.update(self._small_weight_tolerances(plans))
            self.last_tolerance.update(tols)
        batched = []
        if self._batched_step() and self.truncation == "hosvd":
            for name, (U_hats, _, _) in plans.items():
                layer = self._layers[name]
                c_hat = layer.core.detach().to(work_dtype(layer.core.dtype))
                if _batched.box_size(c_hat, U_hats) <= GREEDY_BOX_LIMIT:
                    batched.append((name, c_hat, U_hats))
            items = [(c, u, self._lo[n], self._hi[n]) for n, c, u in batched]
            refs = [references.get(n) if guarded else None for n, _, _ in batched]
            blks = [(blocks or {}).get(n) for n, _, _ in batched]
            rtols = [tols[n] for n, _, _ in batched]
            # the guarded layers' kept bases are formed once the guard has decided
            outs = _batched.truncate_cores(items, rtols, refs, blks, form=False) if items else []
            for (name, c_hat, U_hats), ref, (new, P_list, info, data) in zip(batched, refs, outs):
                if data is not None:
                    floor = self._batched_guard(name, c_hat, U_hats, ref, new, P_list, data)
                    if floor is not None:
                        self.guarded_truncations += 1
                        new, P_list, info = data.retruncate(floor)
                if isinstance(new, _batched.Unformed):
                    new = new.form()
                results[name] = (c_hat, U_hats, new, P_list, info)
        for name, (U_hats, _, _) in plans.items():
            if name in results:
                continue
            layer = self._layers[name]
            work = work_dtype(layer.core.dtype)
            c_hat = layer.core.detach().to(work)
            reference = None if references is None else references.get(name)
            with tl.backend_context("pytorch", local_threadsafe=True):
                new, P_list, info = truncate_core(
                    c_hat,
                    U_hats,
                    rtol=tols[name],
                    min_rank=self._lo[name],
                    max_rank=self._hi[name],
                    method=self.truncation,
                )
            if guarded and reference is not None:
                floor = self._guard_floor(name, c_hat, U_hats, reference, P_list, new.rank)
                if floor is not None:
                    self.guarded_truncations += 1
                    with tl.backend_context("pytorch", local_threadsafe=True):
                        new, P_list, info = truncate_core(
                            c_hat,
                            U_hats,
                            rtol=tols[name],
                            min_rank=floor,
                            max_rank=self._hi[name],
                            method=self.truncation,
                        )
            results[name] = (c_hat, U_hats, new, P_list, info)
        if process_group() is not None and results:
            names = sorted(results)
            local = [r for n in names for r in results[n][2].rank]
            agreed = broadcast_ranks(local, self._device())
            if agreed != local:
                pos = 0
                for n in names:
                    c_hat, U_hats, new, _, _ = results[n]
                    d = len(new.rank)
                    want = agreed[pos : pos + d]
                    pos += d
                    if tuple(want) != tuple(new.rank):
                        with tl.backend_context("pytorch", local_threadsafe=True):
                            # this process's tolerance (process 0's in a consistent set-up,
                            # so the same factorisation path), ranks pinned to process 0's
                            new2, P2, info2 = truncate_core(
                                c_hat,
                                U_hats,
                                rtol=tols[n],
                                min_rank=want,
                                max_rank=want,
                                method=self.truncation,
                            )
                        results[n] = (c_hat, U_hats, new2, P2, info2)
        flat = _has_flat_history(self.optimizer)
        for name, (_c_hat, U_hats, new, P_list, info) in results.items():
            layer = self._layers[name]
            ref = layer.core
            old_shape = tuple(ref.shape)
            factors = [
                None if U_hats[i] is None else new.factors[i].to(ref.dtype)
                for i in range(len(U_hats))
            ]
            set_tucker(layer, new.core.to(ref.dtype), factors)
            if ref in opt_state and not flat:
                mats = [None if p is None else p.conj().T for p in P_list]
                opt_state[ref] = transport_state(opt_state[ref], old_shape, mats)
            self.last_truncation[name] = info
        if results and flat:
            self.optimizer.state.pop(self.optimizer._params[0], None)
            self.optimizer._numel_cache = None
        carried = {}
        for name, ref in (carry or {}).items():
            if name in results:
                P_list = results[name][3]
                carried[name] = mode_products(
                    ref, [None if p is None else p.conj().T for p in P_list]
                )
        return carried
