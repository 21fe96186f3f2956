"""The base class of Tucker-factorized layers: storage, reconstruction, resizing.

A layer weight ``W`` of shape ``n = (n_0, …, n_{d-1})`` (PyTorch layout) is stored as a core
``C`` of shape ``r`` and one factor ``U_i`` (``n_i × r_i``, orthonormal columns) per
factorized mode; a mode "kept full" has no factor and ``r_i = n_i``:
``W = C ×_{i factorized} U_i``.

References
----------
.. [ZSCKT24] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch and F. Tudisco,
   "Geometry-aware training of factorized layers in tensor Tucker format", NeurIPS 2024
   (arXiv:2305.19059).
.. [KL10] O. Koch and C. Lubich, "Dynamical tensor approximation", SIAM J. Matrix Anal.
   Appl. 31(5), 2010.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .._state import StateDictEntryError, check_tucker_shapes
from ..ranks import invalid_mode, largest_valid_rank
from .recording import GradientRecord

__all__ = ["TuckerLayer", "FORWARD_MODES"]

# torch.compiler.is_compiling appeared in torch 2.3; before, nothing here is traced specially
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)

#: Accepted values of :attr:`TuckerLayer.forward_mode`.
FORWARD_MODES = ("auto", "factorized", "dense")


def mode_dot(tensor, matrix, mode):
    """``tensor ×_mode matrix`` for a torch tensor and a ``(p, n_mode)`` matrix.

    ``tensordot`` is not on autocast's cast lists, so under autocast one operand may come
    out of an autocast op in bf16/fp16 while the other is a float32 parameter: both are
    brought to their promoted dtype.
    """
    dtype = torch.promote_types(tensor.dtype, matrix.dtype)
    return torch.movedim(
        torch.tensordot(matrix.to(dtype), tensor.to(dtype), dims=([1], [mode])), 0, mode
    )


#: Sizes beyond torch's index range (``int64``) cannot be allocated.
_MAX_SIZE = 2**63 - 1


def check_size(value, name, *, minimum=1):
    """``value`` as an int ``≥ minimum`` (a layer size, a kernel entry, a padding).

    Python and NumPy integers and integral floats (``2.0``) are accepted; booleans, strings,
    fractions, NaN and inf are refused with an error naming ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value) or int(value) != value or not minimum <= value <= _MAX_SIZE:
        raise ValueError(f"{name}={value!r} must be an int >= {minimum} (and below 2**63)")
    return int(value)


def check_factory(device, dtype):
    """``device`` and ``dtype`` as ``nn.Linear`` takes them, refused with a clear error."""
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype (e.g. torch.float32) or None, got {dtype!r}")
    if device is None or isinstance(device, torch.device):
        return
    if isinstance(device, bool) or not isinstance(device, (str, int)):
        raise TypeError(f"device must be a torch.device, a str or an int, got {device!r}")
    try:
        torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"device={device!r} is not a torch device: {exc}") from None


def orthonormal_(n, r, *, device=None, dtype=None, generator=None):
    """Haar-random ``n × r`` matrix with orthonormal columns from torch's random generator."""
    dtype = dtype or torch.get_default_dtype()
    # half precision has no QR kernels: factor in float32, store in the requested dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    g = torch.randn(n, r, device=device, dtype=work, generator=generator)
    q, rr = torch.linalg.qr(g)
    signs = torch.sign(torch.diagonal(rr))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return (q * signs).to(dtype)


def resolve_full_modes(weight_shape, keep_full, *, default):
    """Sorted tuple of the modes kept full (modes of size 1 are always full)."""
    d = len(weight_shape)
    if keep_full is None:
        modes = set(default)
    elif isinstance(keep_full, str):
        if keep_full == "spatial":
            modes = set(range(2, d))
        elif keep_full == "none":
            modes = set()
        else:
            raise ValueError(
                f"keep_full={keep_full!r} must be None, 'spatial', 'none' or a sequence of modes"
            )
    else:
        try:
            modes = {int(m) for m in keep_full}
        except TypeError:
            raise TypeError(
                f"keep_full must be None, 'spatial', 'none' or a sequence of ints, "
                f"got {keep_full!r}"
            ) from None
        bad = [m for m in modes if not 0 <= m < d]
        if bad:
            raise ValueError(
                f"keep_full contains mode {bad[0]}, but the weight has modes 0..{d - 1} "
                f"(weight_shape={tuple(weight_shape)})"
            )
    modes |= {i for i, n in enumerate(weight_shape) if n == 1}
    return tuple(sorted(modes))


def resolve_rank(weight_shape, rank, full_modes, name="rank"):
    """Core shape for ``rank`` (int cap, float fraction in (0, 1], or one entry per mode).

    An int ``r`` means ``min(r, n_i)`` in every factorized mode and a float ``f`` means
    ``max(1, round(f · n_i))``; both are then lowered to the largest valid multilinear rank
    (``r_i ≤ ∏_{j≠i} r_j``). A sequence is taken literally (``None`` or ``n_i`` for a mode
    kept full) and must be valid.
    """
    shape = tuple(int(n) for n in weight_shape)
    d = len(shape)
    factorized = [i for i in range(d) if i not in full_modes]
    if rank is None:
        raise TypeError(f"{name} is required: an int, a float in (0, 1] or one int per mode")
    if isinstance(rank, bool):
        raise TypeError(f"{name} must be an int, a float or a sequence, got {rank!r}")
    if isinstance(rank, numbers.Real) and not isinstance(rank, numbers.Integral):
        if not 0.0 < float(rank) <= 1.0:
            raise ValueError(f"{name}={rank!r} as a fraction must lie in (0, 1]")
        r = [n if i in full_modes else max(1, round(rank * n)) for i, n in enumerate(shape)]
        return largest_valid_rank(r, factorized)
    if isinstance(rank, numbers.Integral):
        if rank < 1:
            raise ValueError(f"{name}={rank} must be at least 1")
        r = [n if i in full_modes else min(int(rank), n) for i, n in enumerate(shape)]
        return largest_valid_rank(r, factorized)
    if isinstance(rank, (str, bytes)) or not isinstance(rank, Sequence):
        raise TypeError(f"{name} must be an int, a float or a sequence, got {rank!r}")
    if len(rank) != d:
        raise ValueError(
            f"{name} has {len(rank)} entries but the weight has {d} modes (weight_shape={shape})"
        )
    r = []
    for i, (ri, n) in enumerate(zip(rank, shape)):
        if ri is not None and (
            isinstance(ri, bool) or not isinstance(ri, numbers.Real) or not math.isfinite(ri)
        ):
            raise TypeError(f"{name}[{i}] must be an int or None, got {ri!r}")
        if i in full_modes:
            if ri is not None and ri != n:
                raise ValueError(
                    f"{name}[{i}]={ri} but mode {i} is kept full (size {n}); give None or {n}"
                )
            r.append(n)
            continue
        if ri is None or int(ri) != ri:
            raise TypeError(f"{name}[{i}] must be an int for factorized mode {i}, got {ri!r}")
        ri = int(ri)
        if ri < 1:
            raise ValueError(f"{name}[{i}]={ri} must be at least 1")
        if ri > n:
            raise ValueError(f"{name}[{i}]={ri} exceeds weight_shape[{i}]={n}")
        r.append(ri)
    bad = invalid_mode(r, factorized)
    if bad is not None:
        i, other = bad
        raise ValueError(
            f"{name}[{i}]={r[i]} exceeds the product of the other ranks ({other}); "
            "no tensor has this multilinear rank"
        )
    return tuple(r)


class TuckerLayer(nn.Module):
    """Base class of layers whose weight is a Tucker tensor ``W = C ×_i U_i``.

    Subclasses (:class:`~tuckerflow.nn.TuckerLinear`, :class:`~tuckerflow.nn.TuckerConv1d`,
    :class:`~tuckerflow.nn.TuckerConv2d`, :class:`~tuckerflow.nn.TuckerConv3d`) define the
    forward passes and the projected weight gradient; this class holds the parameters.

    Attributes
    ----------
    core : torch.nn.Parameter
        Shape :attr:`ranks`.
    factors : torch.nn.ParameterList
        One ``n_i × r_i`` Parameter with orthonormal columns per factorized mode, in mode order.
    factorized_modes : tuple of int
        Modes that carry a factor; the others are kept full (``r_i = n_i``).
    weight_shape : tuple of int
        Shape of the dense weight in PyTorch's layout.
    bias : torch.nn.Parameter or None
    forward_mode : {"auto", "factorized", "dense"}
        ``"auto"`` picks, per call, the cheaper of the factorized contraction and the
        reconstructed weight by the FLOP estimate of :meth:`forward_flops`.
    recompute_factorized : bool
        When True, the factorized forward keeps only its input for backward and recomputes
        the low-rank intermediate maps there (activation checkpointing of this layer). It
        costs one more factorized forward per step and brings the activation memory of the
        layer down to that of the dense layer. Default False.
    record_for_galerkin : bool
        When True, every forward pass under autograd (training or eval mode) records the
        layer input and, when backward reaches it, the gradient of its output, grouped by
        backward pass (:attr:`gradient_record`), from which :meth:`galerkin_gradient` and
        :meth:`full_weight_gradient` are formed without a second backward pass. A forward
        pass whose backward never runs records nothing.
    factor_gradients : bool
        When False, the forward passes (and :meth:`reconstruct`) use the factors as constants:
        no gradient flows to them and backward skips their (batch-sized) weight-gradient
        products; the core, the bias and the layer input still get theirs. Default True.
        :class:`tuckerflow.optim.TDLRT` switches it off for the steps that do not read the
        factor gradients (it moves the factors by its basis update only).

    Notes
    -----
    The parameter objects are created once and never replaced: :meth:`set_tucker_` swaps
    their data (ranks may change), so an optimizer built over ``model.parameters()`` keeps
    valid references. :meth:`load_state_dict` accepts checkpoints of other ranks and resizes
    the parameters to them.

    References
    ----------
    .. [1] Zangrando, Schotthöfer, Ceruti, Kusch & Tudisco, NeurIPS 2024, arXiv:2305.19059.
    """

    #: ``"auto"`` takes the factorized contraction when its FLOP estimate is below
    #: ``auto_threshold`` times that of the reconstructed weight.
    auto_threshold = 1.0

    def _init_tucker(self, weight_shape, *, rank, keep_full, default_full, bias_size, factory):
        check_factory(factory.get("device"), factory.get("dtype"))
        self.weight_shape = tuple(int(n) for n in weight_shape)
        full = resolve_full_modes(self.weight_shape, keep_full, default=default_full)
        self.factorized_modes = tuple(i for i in range(len(self.weight_shape)) if i not in full)
        ranks = resolve_rank(self.weight_shape, rank, full)
        dtype = factory.get("dtype") or torch.get_default_dtype()
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a real floating point dtype, got {dtype}")
        self.core = nn.Parameter(torch.empty(ranks, **factory))
        self.factors = nn.ParameterList(
            [
                nn.Parameter(torch.empty(self.weight_shape[i], ranks[i], **factory))
                for i in self.factorized_modes
            ]
        )
        if bias_size is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.empty(bias_size, **factory))
        self._forward_mode = "auto"
        self._auto_choice = {}
        self.recompute_factorized = False
        self._record = False
        self._factor_grads = True
        self._record_kind = "output_grad"
        # made now, before any user hook on the core: its hooks must see the raw gradient
        self._gradient_record = GradientRecord(self)
        self.reset_parameters()

    # ---------------------------------------------------------------------------------------
    # structure

    @property
    def ranks(self):
        """Current multilinear rank (the core shape; full modes have ``r_i = n_i``)."""
        return tuple(self.core.shape)

    def factor(self, mode):
        """The factor Parameter of ``mode``, or None when the mode is kept full."""
        d = len(self.weight_shape)
        if not -d <= mode < d:
            raise IndexError(f"mode={mode} out of range for a weight with {d} modes")
        mode %= d
        if mode not in self.factorized_modes:
            return None
        return self.factors[self.factorized_modes.index(mode)]

    def factor_list(self):
        """Factors over all modes, None for modes kept full."""
        return [self.factor(i) for i in range(len(self.weight_shape))]

    @property
    def factor_gradients(self):
        return self._factor_grads

    @factor_gradients.setter
    def factor_gradients(self, value):
        self._factor_grads = bool(value)

    def _forward_factor(self, mode):
        """The factor as the forward passes use it (detached when ``factor_gradients`` is off)."""
        u = self.factor(mode)
        if u is not None and not self._factor_grads:
            u = u.detach()
        return u

    @property
    def forward_mode(self):
        return self._forward_mode

    @forward_mode.setter
    def forward_mode(self, value):
        if value not in FORWARD_MODES:
            raise ValueError(f"forward_mode={value!r} is not one of {FORWARD_MODES}")
        self._forward_mode = value

    @property
    def fan_in(self):
        """Inputs per output unit: ``∏_{i≥1} n_i`` (``C_in/groups · ∏ k`` for a conv)."""
        return math.prod(self.weight_shape[1:])

    def parameter_count(self):
        """Number of scalars stored (core, factors and bias)."""
        return sum(p.numel() for p in self.parameters())

    # ---------------------------------------------------------------------------------------
    # initialisation and reconstruction

    def reset_parameters(self):
        """Random orthonormal factors and a Gaussian core of matching variance.

        With orthonormal factors ``‖W‖_F = ‖C‖_F``; the core entries have variance
        ``∏ n_i / (3 · fan_in · ∏ r_i)`` so that ``E‖W‖²_F / ∏ n_i = 1 / (3 · fan_in)``, the
        variance of PyTorch's default ``kaiming_uniform_(a=√5)`` weight. The bias is uniform in
        ``±1/√fan_in`` as in PyTorch. Draws come from torch's global generator.
        """
        with torch.no_grad():
            n_total = math.prod(self.weight_shape)
            var = n_total / (3.0 * self.fan_in * math.prod(self.ranks))
            self.core.normal_(0.0, math.sqrt(var))
            for p in self.factors:
                p.copy_(orthonormal_(p.shape[0], p.shape[1], device=p.device, dtype=p.dtype))
            if self.bias is not None:
                bound = 1.0 / math.sqrt(self.fan_in) if self.fan_in > 0 else 0.0
                self.bias.uniform_(-bound, bound)

    def reconstruct(self, core=None, factors=None):
        """The dense weight ``C ×_i U_i`` (differentiable), shape :attr:`weight_shape`.

        With :attr:`factor_gradients` off, only the core carries the autograd graph.
        ``core`` and ``factors`` (one entry per mode) default to the layer's own.
        """
        if core is None:
            core, factors = self._tensors()
        w = core
        for i in self.factorized_modes:
            w = mode_dot(w, factors[i], i)
        return w

    def _tensors(self):
        """Core and per-mode factors (None: kept full) as the forward passes use them.

        Under ``torch.compile`` they are views made outside the graph: dynamo keeps the
        shapes of ``nn.Parameter`` inputs static, so every rank change would recompile (and
        a few would exhaust its recompile limit); plain tensor inputs get symbolic sizes
        after their first change. Gradients flow through the views to the parameters.
        """
        if _is_compiling():
            return _traced_tensors_eagerly(self)
        return self.core, [self._forward_factor(i) for i in range(len(self.weight_shape))]

    # ---------------------------------------------------------------------------------------
    # resizing

    def _check_tucker(self, core, factors):
        d = len(self.weight_shape)
        if not isinstance(core, torch.Tensor):
            raise TypeError(f"core must be a torch.Tensor, got {type(core).__name__}")
        if core.ndim != d:
            raise ValueError(f"core.ndim={core.ndim} differs from the weight's {d} modes")
        ref = self.core
        if core.dtype != ref.dtype or core.device != ref.device:
            raise ValueError(
                f"core has dtype {core.dtype} on {core.device}, the layer holds "
                f"{ref.dtype} on {ref.device}"
            )
        if not isinstance(factors, Sequence) or len(factors) != d:
            raise ValueError(f"factors must be a list of {d} entries (None for full modes)")
        for i in range(d):
            n, r, u = self.weight_shape[i], core.shape[i], factors[i]
            if i not in self.factorized_modes:
                if u is not None:
                    raise ValueError(f"factors[{i}] must be None: mode {i} is kept full")
                if r != n:
                    raise ValueError(
                        f"core.shape[{i}]={r} differs from weight_shape[{i}]={n} "
                        f"(mode {i} is kept full)"
                    )
                continue
            if not isinstance(u, torch.Tensor):
                raise TypeError(f"factors[{i}] must be a torch.Tensor, got {type(u).__name__}")
            if tuple(u.shape) != (n, r):
                raise ValueError(
                    f"factors[{i}].shape={tuple(u.shape)} differs from "
                    f"(weight_shape[{i}], core.shape[{i}])=({n}, {r})"
                )
            if r < 1 or r > n:
                raise ValueError(f"core.shape[{i}]={r} must lie in 1..weight_shape[{i}]={n}")
            if u.dtype != ref.dtype or u.device != ref.device:
                raise ValueError(
                    f"factors[{i}] has dtype {u.dtype} on {u.device}, the layer holds "
                    f"{ref.dtype} on {ref.device}"
                )

    @torch.no_grad()
    def set_tucker_(self, core, factors):
        """Replace core and factors in place, keeping the same Parameter objects.

        Parameters
        ----------
        core : torch.Tensor
            New core (its shape is the new rank).
        factors : list
            One entry per mode: an ``n_i × r_i`` tensor for a factorized mode, None for a
            mode kept full.

        Notes
        -----
        Validates everything first and changes nothing on error. A Parameter whose shape
        changes loses its ``.grad`` (it no longer fits) and autograd's cached accumulator
        (so graphs still alive from before do not pin the old shape); optimizer state is the
        optimizer's business. The data are stored contiguously (a copy where the given tensor
        is a permuted view). Orthonormality of the factors is the caller's responsibility.
        """
        self._check_tucker(core, factors)
        params = [self.core, *self.factors]
        news = [core] + [factors[i] for i in self.factorized_modes]
        for p, new in zip(params, news):
            # contiguous storage: views from mode products would otherwise give the
            # parameters (and, by autograd's layout rule, their gradients) permuted strides,
            # which NCCL collectives reject and convolutions copy at every call
            _assign(p, new.detach().contiguous())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints of other ranks: resize the (same) Parameters before torch copies into
        # them; a malformed entry of this layer is refused before any of it changes
        stored = self._stored_tucker(state_dict, prefix)
        if stored is not None and tuple(stored[0].shape) != self.ranks:
            ref = self.core
            with torch.no_grad():
                for p, src in zip([self.core, *self.factors], stored):
                    _assign(p, torch.empty(src.shape, dtype=ref.dtype, device=ref.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def load_state_dict(self, state_dict, strict=True, **kwargs):
        """``nn.Module.load_state_dict``, across rank changes, refusing malformed entries.

        The core and factors may be of another rank than the layer's (the parameters are
        resized, and keep their identity). A missing entry (with ``strict``), an entry that
        is not a tensor, a factor of no factorized mode, and shapes that do not fit the
        layer or each other (a factor off its core, an impossible multilinear rank) raise a
        :class:`~tuckerflow.nn.StateDictEntryError` naming the entry, before anything
        changes. Inside a model, torch loads module by module: the layer refuses before it
        changes, modules loaded before it keep what they loaded (call
        :func:`tuckerflow.optim.resize_like` first to check every Tucker layer at once).
        """
        if strict and isinstance(state_dict, Mapping):
            missing = [k for k in self.state_dict(keep_vars=True) if k not in state_dict]
            if missing:
                raise StateDictEntryError(
                    missing[0], f"state_dict has no entry {missing[0]!r} for the Tucker layer"
                )
        return super().load_state_dict(state_dict, strict, **kwargs)

    def _stored_tucker(self, state_dict, prefix):
        """``[core, *factors]`` stored for this layer (checked), or None if none is stored."""
        keys = [prefix + "core"] + [f"{prefix}factors.{k}" for k in range(len(self.factors))]
        present = [k in state_dict for k in keys]
        for k in keys:
            if k in state_dict and not isinstance(state_dict[k], torch.Tensor):
                raise StateDictEntryError(
                    k,
                    f"state_dict[{k!r}] must be a torch.Tensor, got {type(state_dict[k]).__name__}",
                )
        extra = sorted(
            k
            for k in state_dict
            if isinstance(k, str) and k.startswith(prefix + "factors.") and k not in keys
        )
        if extra:
            raise StateDictEntryError(
                extra[0],
                f"state_dict has the entry {extra[0]!r}, but the Tucker layer {prefix[:-1]!r} "
                f"has {len(self.factors)} factors (modes {self.factorized_modes} factorized)",
            )
        if not any(present):
            return None
        # entries left out (strict=False) must fit the ones given at the current ranks
        values = [state_dict[k] if k in state_dict else None for k in keys]
        core_shape = self.ranks if values[0] is None else tuple(values[0].shape)
        factor_shapes = {
            m: (self.weight_shape[m], self.ranks[m]) if u is None else tuple(u.shape)
            for m, u in zip(self.factorized_modes, values[1:])
        }
        check_tucker_shapes(
            self.weight_shape,
            self.factorized_modes,
            core_shape,
            factor_shapes,
            core_entry=keys[0],
            factor_entry=lambda i: keys[1 + self.factorized_modes.index(i)],
        )
        return values if all(present) else None

    # ---------------------------------------------------------------------------------------
    # forward dispatch

    def forward(self, x):
        core, factors = self._tensors()
        mode = self._forward_mode
        if mode == "auto":
            use_factorized = self._auto_choice_for(tuple(x.shape), tuple(core.shape))
        else:
            use_factorized = mode == "factorized"
        if not use_factorized:
            y = self._forward_dense(x, core, factors)
        elif self.recompute_factorized and torch.is_grad_enabled():
            # the factorized forward draws no random numbers: no RNG state to save (fetching
            # the CUDA one would also fail under CUDA-graph capture)
            y = checkpoint(
                self._forward_factorized,
                x,
                core,
                factors,
                use_reentrant=False,
                preserve_rng_state=False,
            )
        elif self._record and torch.is_grad_enabled() and not _is_compiling():
            # a recorded eager forward may keep its intermediates for the Galerkin gradient
            # (a MidGradHook, see tuckerflow.nn.recording)
            self.__dict__["_capture_mid"] = True
            try:
                y = self._forward_factorized(x, core, factors)
            finally:
                self.__dict__["_capture_mid"] = False
                mid = self.__dict__.pop("_mid_hook", None)
            _watch_output(self, y, x, mid)
            return y
        else:
            y = self._forward_factorized(x, core, factors)
        if self._record and torch.is_grad_enabled():
            if _is_compiling():
                _watch_output_eagerly(self, y, x)
            else:
                _watch_output(self, y, x)
        return y

    def _auto_choice_for(self, input_shape, ranks):
        """``forward_mode="auto"``: whether the factorized path is the cheaper one.

        Cached per input and core shape in eager mode; under ``torch.compile`` the estimate
        is recomputed (shape arithmetic, traced away): a cache mutated in ``forward`` would
        invalidate the compiled graph's guards at every new entry.
        """
        if _is_compiling():
            est = self.forward_flops(input_shape, ranks)
            return est["factorized"] < self.auto_threshold * est["dense"]
        key = (input_shape, ranks, self.auto_threshold)
        use_factorized = self._auto_choice.get(key)
        if use_factorized is None:
            est = self.forward_flops(input_shape, ranks)
            use_factorized = est["factorized"] < self.auto_threshold * est["dense"]
            if len(self._auto_choice) > 64:  # many input shapes: keep the cache small
                self._auto_choice.clear()
            self._auto_choice[key] = use_factorized
        return use_factorized

    def forward_flops(self, input_shape, ranks=None):
        """Multiply-adds of both forward paths for an input of ``input_shape``.

        ``ranks`` defaults to the current :attr:`ranks`.

        Returns
        -------
        dict
            ``{"factorized": int, "dense": int}``, each including the (batch-independent)
            cost of assembling the weights it uses.
        """
        raise NotImplementedError

    def _forward_dense(self, x, core, factors):
        raise NotImplementedError

    def _forward_factorized(self, x, core, factors):
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------
    # one-pass Galerkin gradient

    def __setstate__(self, state):
        # copy.deepcopy and unpickling: a fresh record, its hooks on the core before any
        # hook a user registers on the copy
        super().__setstate__(state)
        record = GradientRecord(self)
        record.enabled = self.__dict__.get("_record", False)
        self.__dict__["_gradient_record"] = record

    @property
    def gradient_record(self):
        """The :class:`~tuckerflow.nn.recording.GradientRecord` of this layer (what each
        backward pass gave it, for the one-pass TDLRT step)."""
        record = self.__dict__.get("_gradient_record")
        if record is None or record._layer() is not self:  # a deep copy or an unpickled layer
            record = GradientRecord(self)
            record.enabled = self._record
            self.__dict__["_gradient_record"] = record
        record.ensure_hooks()
        return record

    @property
    def record_for_galerkin(self):
        return self._record

    @record_for_galerkin.setter
    def record_for_galerkin(self, value):
        self._record = bool(value)
        record = self.gradient_record
        record.enabled = self._record
        if not self._record:
            record.clear()

    @property
    def galerkin_record(self):
        """What a recorded batch keeps: ``"output_grad"`` or ``"weight_grad"``.

        ``"output_grad"`` (default) keeps the layer input and the output gradient and forms
        ``G ×_i Û_iᴴ`` from them at the end, without ever forming ``G`` (cheapest in
        arithmetic for low ranks; holds one activation-sized gradient per layer until
        :meth:`clear_galerkin_record`). ``"weight_grad"`` forms the dense weight gradient
        ``G`` as soon as the output gradient arrives and keeps only ``G`` (weight-sized
        memory, the arithmetic of a dense weight gradient; the better choice when ``G`` is
        needed anyway, e.g. through :meth:`full_weight_gradient`).
        """
        return self._record_kind

    @galerkin_record.setter
    def galerkin_record(self, value):
        if value not in ("output_grad", "weight_grad"):
            raise ValueError(
                f"galerkin_record={value!r} is not one of ('output_grad', 'weight_grad')"
            )
        self._record_kind = value

    @property
    def recorded_batches(self):
        """Number of forward/backward pairs recorded since the last clear (see
        :meth:`galerkin_gradient`)."""
        return len(self.gradient_record.contributions())

    def clear_galerkin_record(self):
        """Drop the recorded inputs and gradients (frees their memory)."""
        self.gradient_record.clear()

    def galerkin_gradient(self, U_hats):
        """``G ×_i Û_iᴴ`` for the weight gradient ``G`` of the recorded batches.

        Parameters
        ----------
        U_hats : list
            One entry per mode: an ``n_i × p_i`` matrix, or None (identity: mode not projected).

        Returns
        -------
        torch.Tensor
            Shape ``(p_0, …, p_{d-1})`` (``n_i`` where the entry is None), in the core's dtype.

        Notes
        -----
        ``G`` is the gradient of the loss with respect to the dense weight, summed over every
        forward/backward pair recorded since the last :meth:`clear_galerkin_record` (so
        gradient accumulation and layers used several times are covered). It is never formed
        when projections are given: for a linear layer
        ``G ×_0 Û_0ᴴ ×_1 Û_1ᴴ = (δY Û_0)ᵀ (X Û_1)``; for a convolution, input and output
        gradient are first projected by 1×1 convolutions, then the weight gradient of the
        small convolution is taken and its spatial modes projected. Under
        ``DistributedDataParallel`` the result is the local (per-process) gradient; average
        it over processes as the gradients are. The result equals the gradient of the loss
        with respect to the core ``Ĉ`` of the layer parametrised by ``(Ĉ, Û_i)`` at the same
        weight [1]_. :class:`tuckerflow.optim.TDLRT` reads only the records of the backward
        passes that ``core.grad`` still holds (see :mod:`tuckerflow.nn.recording`).

        References
        ----------
        .. [1] Zangrando, Schotthöfer, Ceruti, Kusch & Tudisco, NeurIPS 2024,
           arXiv:2305.19059, Algorithm 1.
        """
        d = len(self.weight_shape)
        if not isinstance(U_hats, Sequence) or len(U_hats) != d:
            raise ValueError(f"U_hats must be a list of {d} entries (None for identity)")
        for i, u in enumerate(U_hats):
            if u is None:
                continue
            if not isinstance(u, torch.Tensor) or u.ndim != 2:
                raise TypeError(f"U_hats[{i}] must be a 2-d torch.Tensor or None")
            if u.shape[0] != self.weight_shape[i]:
                raise ValueError(
                    f"U_hats[{i}].shape[0]={u.shape[0]} differs from "
                    f"weight_shape[{i}]={self.weight_shape[i]}"
                )
        out = self.gradient_record.weight_gradient(list(U_hats))
        if out is None:
            raise RuntimeError(
                "no recorded batch: set record_for_galerkin = True, then run forward and "
                "backward before asking for the Galerkin gradient"
            )
        return out

    def _weight_grad_of(self, x, grad_out):
        """Dense weight gradient of one batch, in the parameters' precision."""
        ref = self.core
        with torch.no_grad(), torch.autocast(ref.device.type, enabled=False):
            return self._projected_weight_grad(
                x.to(ref.dtype), grad_out.to(ref.dtype), [None] * len(self.weight_shape)
            )

    def full_weight_gradient(self):
        """The dense weight gradient ``G`` of the recorded batches (see galerkin_gradient)."""
        return self.galerkin_gradient([None] * len(self.weight_shape))

    def _projected_weight_grad(self, x, grad_out, U_hats):
        raise NotImplementedError


def _assign(param, data):
    """``param.data = data``; on a shape change also drop ``.grad`` and autograd's cached
    gradient accumulator.

    Autograd keeps one accumulator node per leaf, which remembers the leaf's shape while any
    graph (e.g. the previous iteration's loss) refers to it; the next backward would reject
    gradients of the new shape. Assigning data of another dtype is the public way to make
    PyTorch drop that cache.
    """
    if tuple(param.shape) == tuple(data.shape):
        param.data = data
        return
    param.grad = None
    other = torch.float32 if data.dtype == torch.float64 else torch.float64
    param.data = torch.empty(0, dtype=other, device=data.device)
    param.data = data


def _traced_tensors(layer):
    """Views of the core and factors for a traced forward (see ``TuckerLayer._tensors``)."""
    core = layer.core.view_as(layer.core)
    factors = []
    for i in range(len(layer.weight_shape)):
        u = layer.factor(i)
        if u is not None:
            u = u.view_as(u) if layer.factor_gradients else u.detach()
        factors.append(u)
    return core, factors


def _watch_output(layer, y, x, mid=None):
    """Register the output-gradient record of one forward pass.

    Kept out of ``torch.compile`` graphs: the hook appends to Python state when backward
    arrives, which a traced graph cannot do; dynamo calls this in eager mode between the
    layer's compiled forward and what follows.
    """
    layer.gradient_record.watch_output(y, x, mid)


# run outside dynamo's graphs; ``torch._disable_dynamo`` imports dynamo only when called,
# i.e. under torch.compile (eager forwards call the plain functions: no import cost)
_traced_tensors_eagerly = torch._disable_dynamo(_traced_tensors)
_watch_output_eagerly = torch._disable_dynamo(_watch_output)
