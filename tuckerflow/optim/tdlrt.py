"""TDLRT: rank-adaptive, geometry-aware training of Tucker-factorized layers.

One optimizer step is one step of the rank-adaptive BUG integrator applied to the gradient
flow ``Ẏ = −∇L(Y)`` of every Tucker layer, wrapped around an arbitrary ``torch.optim``
optimizer that performs the Galerkin (core) step and the step of every other parameter.
"""

from __future__ import annotations

import contextlib

import tensorly as tl

from ..dlra import truncate_core
from .basis import kstep_bases
from .layers import set_tucker, tucker_layers
from .transport import mode_products, transport_state

__all__ = ["NonFiniteGradientError", "TDLRT", "ddp_ignore_tucker_parameters"]

_MODES = ("one-pass", "two-pass")
_ON_NONFINITE = ("raise", "skip")


class NonFiniteGradientError(FloatingPointError):
    """A gradient held NaN or Inf; the model and the optimizer were left unchanged."""


#: Largest ``max |UᴴU − I|`` accepted for the factors of a layer handed to :class:`TDLRT`
#: (float32 round-off is far below, a factor that is not orthonormal far above). Factors
#: stored in half precision are checked at ``2 · eps`` of their dtype instead: rounding each
#: entry of an orthonormal matrix by ``eps/2`` moves ``UᴴU`` by at most ``eps`` per entry.
ORTHONORMALITY_TOLERANCE = 1e-4


def _orthonormality_tolerance(dtype):
    import torch

    return max(ORTHONORMALITY_TOLERANCE, 2.0 * torch.finfo(dtype).eps)


def _eye_like(u):
    import torch

    return torch.eye(u.shape[1], dtype=u.dtype, device=u.device)


def _dist():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def _work_dtype(dtype):
    import torch

    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@contextlib.contextmanager
def _full_precision_matmul():
    """float32 matrix products in full precision for the block (no TF32 / bf16 passes).

    Users enable TF32 for speed (``torch.backends.cuda.matmul.fp32_precision = "tf32"`` or
    ``torch.set_float32_matmul_precision("high")``); its unit round-off of about 5e-4 would
    leave the augmented bases orthonormal only to that level and blur rank decisions. Only
    settings that are not already full precision are changed, and they are restored.
    """
    import torch

    backends = [
        getattr(getattr(torch.backends, name, None), "matmul", None) for name in ("cuda", "mkldnn")
    ]
    backends = [b for b in backends if b is not None and hasattr(b, "fp32_precision")]
    generic = getattr(torch.backends, "fp32_precision", "none")
    saved = []
    if backends:
        for b in backends:
            old = b.fp32_precision
            effective = generic if old == "none" else old
            if effective not in ("none", "ieee"):
                saved.append((b, old))
                b.fp32_precision = "ieee"
    elif torch.get_float32_matmul_precision() != "highest":  # torch < 2.9
        saved.append((None, torch.get_float32_matmul_precision()))
        torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        for b, old in saved:
            if b is None:
                torch.set_float32_matmul_precision(old)
            else:
                b.fp32_precision = old


@contextlib.contextmanager
def _plain_precision():
    """No autograd, no autocast and no TF32: the small linear algebra runs in the tensors'
    dtype at its full precision."""
    import torch

    stack = contextlib.ExitStack()
    stack.enter_context(torch.no_grad())
    stack.enter_context(_full_precision_matmul())
    for device in ("cpu", "cuda"):
        try:
            enabled = torch.is_autocast_enabled(device)
        except TypeError:  # torch < 2.4 has no per-device query
            enabled = True
        if enabled:
            with contextlib.suppress(RuntimeError):
                stack.enter_context(torch.autocast(device_type=device, enabled=False))
    with stack:
        yield


def _tucker_parameter_names(model):
    names = []
    for lname, layer in tucker_layers(model).items():
        prefix = f"{lname}." if lname else ""
        names.append(f"{prefix}core")
        names.extend(f"{prefix}factors.{k}" for k in range(len(layer.factorized_modes)))
    return names


def ddp_ignore_tucker_parameters(model):
    """Let ``DistributedDataParallel`` leave the Tucker cores and factors to :class:`TDLRT`.

    DDP fixes the size of its gradient buckets when it wraps a model, so parameters whose
    shape changes (the cores and factors of rank-adaptive layers) must not be in them. Call
    this on the unwrapped model *before* ``DistributedDataParallel(model)``; TDLRT then
    averages the gradients it needs over the processes itself and broadcasts the rank
    decisions of process 0, so every process takes identical steps.

    Returns the list of ignored parameter names.
    """
    from torch.nn.parallel import DistributedDataParallel

    names = _tucker_parameter_names(model)
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
    return names


def _check_tau(tau):
    try:
        value = float(tau)
    except (TypeError, ValueError):
        raise TypeError(f"tau must be a real number in (0, 1), got {tau!r}") from None
    if not (0.0 < value < 1.0):
        raise ValueError(f"tau={tau!r} must lie in the open interval (0, 1)")
    return value


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
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{what}={value} must be at least 1")
        return [min(value, n) for n in shape]
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
        v = int(v)
        if v < 1:
            raise ValueError(f"{what}[{i}]={v} for layer {lname!r} must be at least 1")
        if v > n:
            raise ValueError(
                f"{what}[{i}]={v} for layer {lname!r} exceeds the size {n} of mode {i}"
            )
        out.append(v)
    return out


def _weight_gradient(layer):
    """The layer's recorded weight gradient, or None when it took no part in the batch.

    Errors while forming it (e.g. out of memory) propagate: they must not pass for an
    absent layer.
    """
    import torch

    recorded = getattr(layer, "recorded_batches", None)
    if recorded is not None:
        return layer.full_weight_gradient() if recorded else None
    # a module with the layer interface only: it raises RuntimeError without a record
    out_of_memory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    try:
        return layer.full_weight_gradient()
    except out_of_memory:
        raise
    except RuntimeError:
        return None


def _clear_records(layers):
    for layer in layers:
        clear = getattr(layer, "clear_galerkin_record", None)
        if clear is not None:
            clear()


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


class TDLRT:
    """Rank-adaptive training of Tucker layers around any ``torch.optim`` optimizer.

    Parameters
    ----------
    model : torch.nn.Module
        A model holding Tucker layers (``tuckerflow.nn.TuckerLayer``; a
        ``DistributedDataParallel`` wrapper is accepted).
    optimizer : torch.optim.Optimizer
        Built over ``model.parameters()``; it takes the Galerkin step of every core (with the
        learning rate of the core's parameter group, so schedulers work) and the ordinary step
        of every other parameter. Factors are never stepped by it: they change only through
        the K-step basis update (their gradients are dropped before ``optimizer.step()``).
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
        ``G``, or ``layer.galerkin_gradient``), which is valid because ``Ĉ ×_i Û_i = Y``
        exactly.
    on_nonfinite : {"raise", "skip"}
        What a step does with a NaN/Inf gradient: raise :class:`NonFiniteGradientError` or
        return without a change. In both cases model and optimizer are left unchanged.
    freeze_ranks : bool
        Start with frozen ranks (fixed-rank BUG steps); see :meth:`freeze_ranks`.
    update_every : int
        Amortized variant: basis augmentation and truncation only every ``update_every``-th
        step; in between, the factors stay and only the cores (and the other parameters)
        take an optimizer step with their exact gradient ``G ×_i U_iᴴ``.
    truncation : {"hosvd", "st_hosvd"}
        Truncation of the augmented core (HOSVD is the published rule).
    kstep : {"weight", "factors"}
        Source of the K-step. ``"weight"`` (published): from the dense weight gradient ``G``
        the layers record (in one-pass mode the Galerkin gradient ``G ×_i Û_iᴴ`` is then
        formed from the same ``G``). ``"factors"``: from the autograd gradients of the
        factors, ``K_i S_iᴴ = U_i Mat_i(C)Mat_i(C)ᴴ − λ∇_{U_i}L`` (same span when the core
        unfoldings have full row rank), and the Galerkin gradient from the layer's
        ``galerkin_gradient``; no dense weight gradient is formed, which is cheaper for
        large convolutions, and two-pass mode then needs no recording at all. Use
        ``"weight"`` for cores that may be exactly rank-deficient (e.g. zero).

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

    A mode whose rank sits at its cap (below the mode size) takes the fixed-rank BUG update
    ``Û_i = orth(K_i)`` instead [CL22]_: augmenting and truncating back to the cap would
    mostly keep the old basis. Frozen ranks use that update in every mode. The state
    transport rule is in :mod:`tuckerflow.optim.transport`.

    After each step TDLRT sets the layers' ``record_for_galerkin`` and ``factor_gradients``
    to what the next step reads, so a backward pass forms nothing that is thrown away: the
    factor gradients exist only before basis-updating steps with ``kstep="factors"`` (the
    factors never take an optimizer step). Change the rank schedule (``freeze_ranks``)
    between steps, not between ``backward`` and ``step``. To train the layers with another
    optimizer afterwards, set ``factor_gradients = True`` on them again.

    Usage is that of any optimizer: ``loss.backward(); tdlrt.step()`` (or
    ``tdlrt.step(closure)``, required in two-pass mode, where ``closure`` zeroes the
    gradients, evaluates the loss, calls ``backward`` and returns the loss).

    Under ``DistributedDataParallel`` call :func:`ddp_ignore_tucker_parameters` before
    wrapping: TDLRT averages the weight gradients of the Tucker layers over the processes and
    broadcasts process 0's ranks, so that every process takes identical decisions.

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
    ``tdlrt = TDLRT(model, opt, tau=0.1)``, then per batch
    ``opt.zero_grad(); loss_fn(model(x), y).backward(); tdlrt.step()``.
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
        update_every=1,
        truncation="hosvd",
        kstep="weight",
    ):
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
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(f"update_every={update_every!r} must be an integer >= 1")
        self.model = model
        self.optimizer = optimizer
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
        for what, value in (("min_rank", min_rank), ("max_rank", max_rank)):
            if isinstance(value, dict):
                unknown = sorted(set(value) - set(self._layers))
                if unknown:
                    raise ValueError(
                        f"{what} names {unknown}, which are not Tucker layers of the model "
                        f"({sorted(self._layers)})"
                    )
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
            missing = [n for n in _tucker_parameter_names(model.module) if n not in ignored]
            if missing:
                raise ValueError(
                    f"the DistributedDataParallel model synchronises the Tucker parameter "
                    f"{missing[0]!r}, whose shape TDLRT changes; call "
                    "tuckerflow.optim.ddp_ignore_tucker_parameters(model) before wrapping it"
                )
        for name, layer in self._layers.items():
            for mode in layer.factorized_modes:
                u = layer.factor(mode).detach()
                tol = _orthonormality_tolerance(u.dtype)
                u = u.to(_work_dtype(u.dtype))  # the product in at least float32
                err = float((u.conj().T @ u - _eye_like(u)).abs().max()) if u.numel() else 0.0
                if not err <= tol:
                    raise ValueError(
                        f"factor of mode {mode} of layer {name!r} is not orthonormal "
                        f"(max |UᴴU − I| = {err:.2e} > {tol:g}); TDLRT "
                        "needs orthonormal factors (re-orthonormalize with a QR and absorb R "
                        "into the core)"
                    )
        self._group_of = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                self._group_of[id(p)] = group
        for name, layer in self._layers.items():
            if id(layer.core) not in self._group_of:
                raise ValueError(
                    f"the core of Tucker layer {name!r} is not among the optimizer's "
                    "parameters; build the optimizer over model.parameters()"
                )
        self._frozen = bool(freeze_ranks)
        self._steps = 0
        self._weight_grads = {}
        self.skipped_steps = 0
        #: ``{layer name: TruncationInfo}`` of the last truncation.
        self.last_truncation = {}
        self._arm_recording()
        dist = _dist()
        if dist is not None:
            with _plain_precision():
                for layer in self._layers.values():
                    for p in [layer.core, *layer.factors]:
                        dist.broadcast(p.data, src=0)

    # ---------------------------------------------------------------- public API

    def ranks(self):
        """``{layer name: multilinear rank}`` (full modes included)."""
        return {name: tuple(layer.ranks) for name, layer in self._layers.items()}

    def freeze_ranks(self):
        """From now on take fixed-rank BUG steps (for a final fine-tuning phase)."""
        self._frozen = True
        self._arm_recording()

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
        """Number of steps taken (skipped ones excluded)."""
        return self._steps

    def zero_grad(self, set_to_none=True):
        """Zero the base optimizer's gradients and drop what the layers recorded.

        The layers sum the weight gradients of every recorded forward/backward pair until a
        step consumes them; use this (rather than ``optimizer.zero_grad()``) when a backward
        pass is discarded without a step.
        """
        self.optimizer.zero_grad(set_to_none=set_to_none)
        _clear_records(self._layers.values())

    def step(self, closure=None):
        """One TDLRT step; returns the closure's loss (or None).

        With a closure, it is called first (evaluation 1). Without one, the gradients of a
        preceding ``backward()`` are used; two-pass mode needs the closure for evaluation 2.
        """
        try:
            return self._step(closure)
        finally:
            # the layers sum what they record until cleared: every step starts afresh
            _clear_records(self._layers.values())
            self._weight_grads = {}
            self._arm_recording()

    def _step(self, closure):
        import torch

        kind = self._kind()
        if closure is None and self.mode == "two-pass" and kind != "core":
            raise ValueError(
                "mode='two-pass' needs step(closure): the closure re-evaluates the loss at "
                "the augmented bases"
            )
        loss = None
        if closure is not None:
            _clear_records(self._layers.values())
            with torch.enable_grad():
                loss = closure()
        with _plain_precision():
            if not self._grads_finite(kind):
                return self._reject("a gradient")
            if kind == "core":
                self._core_only_step()
                self._steps += 1
                return loss
            plans = self._k_steps(kind)
            saved = self._apply_augmentation(plans)
        try:
            if self.mode == "two-pass":
                # evaluation 2 needs the core gradients only
                with torch.enable_grad(), _recording(self._layers.values(), False):
                    closure()
            with _plain_precision():
                galerkin = self._galerkin_gradients(plans)
                finite = self._all_finite(list(galerkin.values()))
        except BaseException:
            # e.g. the closure failed at the augmented bases: leave the model as it was
            with _plain_precision():
                self._restore(saved)
            raise
        with _plain_precision():
            if not finite:
                self._restore(saved)
                return self._reject("the Galerkin gradient")
            for name, layer in self._layers.items():
                if name in galerkin:
                    layer.core.grad = galerkin[name].to(layer.core.dtype)
            self._hide_factor_grads()
            self.optimizer.step()
            if kind == "adapt":
                self._truncate(plans)
        self._steps += 1
        return loss

    def state_dict(self):
        """Base optimizer state plus the layer shapes it belongs to and TDLRT's counters."""
        shapes = {}
        for name, layer in self._layers.items():
            factors = [None] * len(layer.weight_shape)
            for mode in layer.factorized_modes:
                factors[mode] = tuple(layer.factor(mode).shape)
            shapes[name] = {"core": tuple(layer.core.shape), "factors": factors}
        return {
            "optimizer": self.optimizer.state_dict(),
            "shapes": shapes,
            "steps": self._steps,
            "skipped_steps": self.skipped_steps,
            "frozen": self._frozen,
            "tau": self.tau,
        }

    def load_state_dict(self, state_dict):
        """Resize the Tucker layers to the stored shapes, then load the base optimizer.

        The layers get placeholder values of the stored shapes (zero core, leading columns
        of the identity); load the model's own state dict afterwards (or call
        :func:`tuckerflow.optim.resize_like` and ``model.load_state_dict`` first).
        """
        import torch

        for key in ("optimizer", "shapes"):
            if key not in state_dict:
                raise KeyError(f"state_dict has no entry {key!r}; was it made by TDLRT?")
        shapes = state_dict["shapes"]
        if set(shapes) != set(self._layers):
            raise ValueError(
                f"state_dict holds the Tucker layers {sorted(shapes)} but the model has "
                f"{sorted(self._layers)}"
            )
        for name, layer in self._layers.items():
            want = shapes[name]
            if len(want["core"]) != len(layer.weight_shape):
                raise ValueError(
                    f"stored core of layer {name!r} has {len(want['core'])} modes, the layer "
                    f"{len(layer.weight_shape)}"
                )
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
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self._steps = int(state_dict.get("steps", 0))
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        self._frozen = bool(state_dict.get("frozen", False))
        self._arm_recording()

    # ---------------------------------------------------------------- internals

    def _arm_recording(self):
        """Let the layers record their batch, and form factor gradients, only when needed.

        The record is read by basis-updating steps in one-pass form, and by the K-step from
        the weight gradient; steps between amortized updates and the two-pass form with
        ``kstep="factors"`` need none (saves the hooks and the stored output gradients).
        The factor gradients are read only by the K-step of ``kstep="factors"``; every other
        step drops them, so backward need not form them.
        """
        update = self._kind() != "core"
        record = update and not (self.mode == "two-pass" and self.kstep == "factors")
        factor_grads = update and self.kstep == "factors"
        for layer in self._layers.values():
            if layer.record_for_galerkin != record:
                layer.record_for_galerkin = record
            layer.factor_gradients = factor_grads

    def _kind(self):
        if self._frozen:
            return "bug"
        return "adapt" if self._steps % self.update_every == 0 else "core"

    def _lr(self, param):
        lr = self._group_of[id(param)]["lr"]
        return float(lr)

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

    def _all_finite(self, tensors):
        import torch

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
        dist = _dist()
        if dist is not None:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _grads_finite(self, kind):
        tensors = [p.grad for g in self.optimizer.param_groups for p in g["params"]]
        self._weight_grads = {}
        if kind != "core" and self.kstep == "weight":
            for name, layer in self._layers.items():
                G = _weight_gradient(layer)
                if G is not None:
                    G = G.detach().to(_work_dtype(layer.core.dtype))
                    dist = _dist()
                    if dist is not None:
                        G = G.clone()
                        dist.all_reduce(G)
                        G /= dist.get_world_size()
                    self._weight_grads[name] = G
                    tensors.append(G)
        return self._all_finite(tensors)

    def _hide_factor_grads(self):
        for layer in self._layers.values():
            for p in layer.factors:
                p.grad = None

    def _average(self, t):
        """Average ``t`` over the processes in place (a no-op without a process group)."""
        dist = _dist()
        if dist is not None and t is not None:
            # NCCL reduces contiguous tensors only
            c = t.contiguous()
            dist.all_reduce(c)
            c /= dist.get_world_size()
            if c.data_ptr() != t.data_ptr():
                t.copy_(c)
        return t

    def _core_only_step(self):
        for layer in self._layers.values():
            self._average(layer.core.grad)
        self._hide_factor_grads()
        self.optimizer.step()

    def _fixed_modes(self, name, layer, kind):
        if kind == "bug":
            return tuple(layer.factorized_modes)
        r, n, hi = tuple(layer.ranks), tuple(layer.weight_shape), self._hi[name]
        return tuple(i for i in layer.factorized_modes if r[i] >= hi[i] and hi[i] < n[i])

    def _k_steps(self, kind):
        plans = {}
        for name, layer in self._layers.items():
            work = _work_dtype(layer.core.dtype)
            G, factor_grads = self._weight_grads.get(name), None
            if self.kstep == "factors":
                grads = [p.grad for p in layer.factors]
                if any(g is None for g in grads):
                    continue
                factor_grads = [None] * len(layer.weight_shape)
                for mode, g in zip(layer.factorized_modes, grads):
                    factor_grads[mode] = self._average(g.detach().to(work).clone())
            elif G is None:
                continue
            core = layer.core.detach().to(work)
            factors = [None] * len(layer.weight_shape)
            for mode in layer.factorized_modes:
                factors[mode] = layer.factor(mode).detach().to(work)
            U_hats, c_hat, M_hats = kstep_bases(
                core,
                factors,
                G,
                self._lr(layer.core),
                fixed_modes=self._fixed_modes(name, layer, kind),
                factor_grads=factor_grads,
            )
            plans[name] = (U_hats, c_hat, M_hats)
        return plans

    def _apply_augmentation(self, plans):
        """Write ``(Ĉ, Û)`` into the layers and carry the core's state; return an undo record."""
        opt_state = self.optimizer.state
        saved = {}
        for name, (U_hats, c_hat, M_hats) in plans.items():
            layer = self._layers[name]
            ref = layer.core
            old_factors = [None] * len(layer.weight_shape)
            for mode in layer.factorized_modes:
                old_factors[mode] = layer.factor(mode).detach().clone()
            entries = {p: opt_state[p] for p in [ref, *layer.factors] if p in opt_state}
            saved[name] = (ref.detach().clone(), old_factors, entries)
            new_factors = [None if u is None else u.to(ref.dtype) for u in U_hats]
            old_shape = tuple(ref.shape)
            set_tucker(layer, c_hat.to(ref.dtype), new_factors)
            if ref in entries:
                opt_state[ref] = transport_state(entries[ref], old_shape, M_hats)
            for p in layer.factors:
                opt_state.pop(p, None)
        return saved

    def _restore(self, saved):
        opt_state = self.optimizer.state
        for name, (core, factors, entries) in saved.items():
            layer = self._layers[name]
            set_tucker(layer, core, factors)
            for p in [layer.core, *layer.factors]:
                opt_state.pop(p, None)
            for p, entry in entries.items():
                opt_state[p] = entry

    def _galerkin_gradients(self, plans):
        out = {}
        for name, (U_hats, _, _) in plans.items():
            layer = self._layers[name]
            work = _work_dtype(layer.core.dtype)
            if self.mode == "two-pass":
                g = layer.core.grad
                out[name] = None if g is None else self._average(g.detach().to(work).clone())
            elif name in self._weight_grads:
                # G of this batch (averaged over the processes): G ×_i Û_iᴴ directly
                G = self._weight_grads[name]
                out[name] = mode_products(G, [None if u is None else u.conj().T for u in U_hats])
            else:
                ref = layer.core
                Uh = [None if u is None else u.to(ref.dtype) for u in U_hats]
                out[name] = self._average(layer.galerkin_gradient(Uh).detach().to(work).clone())
        return out

    def _truncate(self, plans):
        import torch

        opt_state = self.optimizer.state
        results = {}
        for name, (U_hats, _, _) in plans.items():
            layer = self._layers[name]
            work = _work_dtype(layer.core.dtype)
            c_hat = layer.core.detach().to(work)
            with tl.backend_context("pytorch", local_threadsafe=True):
                new, P_list, info = truncate_core(
                    c_hat,
                    U_hats,
                    rtol=self.tau,
                    min_rank=self._lo[name],
                    max_rank=self._hi[name],
                    method=self.truncation,
                )
            results[name] = (c_hat, U_hats, new, P_list, info)
        dist = _dist()
        if dist is not None and results:
            names = sorted(results)
            # on the parameters' device: NCCL communicates CUDA tensors only
            ranks = [r for n in names for r in results[n][2].rank]
            local = torch.tensor(ranks, dtype=torch.int64, device=self._device())
            agreed = local.clone()
            dist.broadcast(agreed, src=0)
            if not torch.equal(local, agreed):
                pos = 0
                for n in names:
                    c_hat, U_hats, new, _, _ = results[n]
                    d = len(new.rank)
                    want = [int(v) for v in agreed[pos : pos + d].tolist()]
                    pos += d
                    if tuple(want) != tuple(new.rank):
                        with tl.backend_context("pytorch", local_threadsafe=True):
                            # this process's tolerance (process 0's in a consistent set-up,
                            # so the same factorisation path), ranks pinned to process 0's
                            new2, P2, info2 = truncate_core(
                                c_hat,
                                U_hats,
                                rtol=self.tau,
                                min_rank=want,
                                max_rank=want,
                                method=self.truncation,
                            )
                        results[n] = (c_hat, U_hats, new2, P2, info2)
        for name, (_c_hat, U_hats, new, P_list, info) in results.items():
            layer = self._layers[name]
            ref = layer.core
            old_shape = tuple(ref.shape)
            factors = [
                None if U_hats[i] is None else new.factors[i].to(ref.dtype)
                for i in range(len(U_hats))
            ]
            set_tucker(layer, new.core.to(ref.dtype), factors)
            if ref in opt_state:
                mats = [None if p is None else p.conj().T for p in P_list]
                opt_state[ref] = transport_state(opt_state[ref], old_shape, mats)
            self.last_truncation[name] = info
