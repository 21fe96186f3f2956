"""Rank-adaptive Tucker adapters: a frozen pretrained module plus a trainable Tucker update.

:func:`add_adapters` wraps the selected ``Linear``/``Conv1d``/``Conv2d``/``Conv3d`` modules of
a pretrained model in :class:`TuckerAdapter` modules, ``y = base(x) + update(x)``, where
``base`` is the original (frozen) module and ``update`` a bias-free Tucker layer of the same
kind whose weight ``ΔW = C ×_i U_i`` starts at zero. :class:`tuckerflow.optim.TDLRT` finds
the updates as it finds any Tucker layer and trains them with adaptive ranks;
:func:`merge_adapters` folds them into plain ``torch.nn`` modules for deployment, and
:func:`adapter_state_dict` / :func:`load_adapter_state_dict` save and restore the adapters
alone.

References
----------
.. [ZSCKT24] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch and F. Tudisco,
   "Geometry-aware training of factorized layers in tensor Tucker format", NeurIPS 2024
   (arXiv:2305.19059).
.. [HSW22] E. J. Hu, Y. Shen, P. Wallis et al., "LoRA: Low-rank adaptation of large language
   models", ICLR 2022 (arXiv:2106.09685).
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .layer import TuckerLayer, mode_dot, orthonormal_
from .tuckerize import _REPLACEMENTS, _selected, _unsupported_reason

__all__ = [
    "AdapterLayerReport",
    "AdapterReport",
    "AdaptersDisabled",
    "TuckerAdapter",
    "adapter_report",
    "adapter_state_dict",
    "add_adapters",
    "disable_adapters",
    "enable_adapters",
    "load_adapter_state_dict",
    "merge_adapters",
    "remove_adapters",
]

#: Attributes of the base module that a :class:`TuckerAdapter` reads through (read-only).
FORWARDED_ATTRIBUTES = frozenset(
    {
        "in_features",
        "out_features",
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
        "output_padding",
        "transposed",
        "bias",
    }
)

# marks a module that add_adapters keeps trainable (its state travels with the adapters)
_KEEP_MARK = "_tuckerflow_adapter_keep"
# {own parameter name: requires_grad} of a module before add_adapters froze it
_FLAGS_MARK = "_tuckerflow_requires_grad"


def _generator(rng):
    if rng is None or isinstance(rng, torch.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool):
        return torch.Generator().manual_seed(int(rng))
    raise TypeError(f"rng must be None, an int seed or a torch.Generator, got {rng!r}")


def _zero_update(base, *, rank, keep_full, generator):
    """A bias-free Tucker layer of the kind, options, dtype and device of ``base``, zero core."""
    cls = _REPLACEMENTS[type(base)]
    w = base.weight
    factory = {"device": w.device, "dtype": w.dtype}
    if cls is _REPLACEMENTS[nn.Linear]:
        update = cls(
            base.in_features, base.out_features, False, rank=rank, keep_full=keep_full, **factory
        )
    else:
        update = cls(
            base.in_channels,
            base.out_channels,
            base.kernel_size,
            stride=base.stride,
            padding=base.padding,
            dilation=base.dilation,
            groups=base.groups,
            bias=False,
            padding_mode=base.padding_mode,
            rank=rank,
            keep_full=keep_full,
            **factory,
        )
    with torch.no_grad():
        update.core.zero_()
        if generator is not None:
            # drawn on the generator's (CPU) device, then moved: a seed gives the same
            # factors on every device
            for p in update.factors:
                u = orthonormal_(p.shape[0], p.shape[1], dtype=torch.float64, generator=generator)
                p.copy_(u.to(device=p.device, dtype=p.dtype))
    update.train(base.training)
    return update


class TuckerAdapter(nn.Module):
    """A frozen module plus a rank-adaptive Tucker update: ``y = base(x) + update(x)``.

    The effective weight is ``W = W_0 + ΔW`` with the frozen pretrained ``W_0 = base.weight``
    and ``ΔW = C ×_i U_i``, the weight of ``update``, a bias-free
    :class:`~tuckerflow.nn.TuckerLinear` / ``TuckerConv1d/2d/3d`` with the options (stride,
    padding, dilation, groups, padding mode) of the base; the base adds its bias once.

    Parameters
    ----------
    base : nn.Linear, nn.Conv1d, nn.Conv2d or nn.Conv3d
        The pretrained module (exactly one of these types). Its parameters are frozen
        (``requires_grad = False``).
    rank : int, float or sequence
        Initial rank of the update, as in the Tucker layer constructors.
    keep_full : optional
        Modes of the update kept full, as in the Tucker layer constructors (default: none for
        a linear layer, spatial modes of size ≤ 3 for a convolution).
    rng : None, int or torch.Generator
        Source of the random orthonormal factors: torch's global generator (default), or a
        seed or CPU generator, whose draws are moved to the base's device (the same factors
        on every device).

    Attributes
    ----------
    base : nn.Module
    update : TuckerLayer
        Core initialised to zero, so the adapter computes exactly what ``base`` does until
        the update is trained; factors are Haar-random with orthonormal columns.
    enabled : bool
        While False (see :func:`disable_adapters`), ``forward`` returns ``base(x)`` alone:
        the update takes no part in the output and receives no gradient.

    Notes
    -----
    ``in_features``, ``out_features``, ``in_channels``, ``out_channels``, ``kernel_size``,
    ``stride``, ``padding``, ``dilation``, ``groups``, ``padding_mode`` and ``bias`` read
    through to the base; :attr:`weight` is the merged weight ``W_0 + ΔW``, a new tensor on
    every access (not a Parameter: assign to ``base.weight`` or train ``update``). The
    adapter deliberately does not present the Tucker-layer interface (``core``,
    ``factors``): :class:`tuckerflow.optim.TDLRT` trains ``update`` (named ``<path>.update``)
    as any Tucker layer, and ``base`` stays out of its reach. Unlike LoRA [1]_, whose
    update ``B A`` has a fixed rank and treats a convolution kernel as a matrix, the update
    keeps the kernel a tensor and TDLRT adapts its rank per mode [2]_.

    With a zero core the factor gradients vanish (``∇_{U_i} L = g_i S_iᴴ`` with ``S_i = 0``):
    under ``TDLRT(..., kstep="factors")`` the first step trains the core in the initial
    random bases, and the bases rotate and grow from the second step on. The default
    ``kstep="weight"`` forms the K-step from the weight gradient and grows the ranks from
    the first step.

    References
    ----------
    .. [1] E. J. Hu, Y. Shen, P. Wallis et al., "LoRA: Low-rank adaptation of large language
       models", ICLR 2022 (arXiv:2106.09685).
    .. [2] Zangrando, Schotthöfer, Ceruti, Kusch & Tudisco, NeurIPS 2024, arXiv:2305.19059.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from tuckerflow.nn import TuckerAdapter
    >>> base = nn.Linear(16, 8)
    >>> adapter = TuckerAdapter(base, rank=2, rng=0)
    >>> x = torch.randn(3, 16)
    >>> torch.equal(adapter(x), base(x)), adapter.ranks, adapter.out_features
    (True, (2, 2), 8)
    """

    def __init__(self, base, *, rank, keep_full=None, rng=None):
        super().__init__()
        if not isinstance(base, nn.Module):
            raise TypeError(f"base must be an nn.Module, got {type(base).__name__}")
        reason = _unsupported_reason(base, None)
        if reason is not None:
            raise TypeError(f"base cannot take an adapter: {reason}")
        update = _zero_update(base, rank=rank, keep_full=keep_full, generator=_generator(rng))
        self.base = base
        self.update = update
        self.enabled = True
        # the base's flags before freezing, which remove_adapters restores
        self._base_requires_grad = {n: p.requires_grad for n, p in base.named_parameters()}
        self.base.requires_grad_(False)
        self.train(base.training)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__.get("_modules", {}).get("base")
            if name in FORWARDED_ATTRIBUTES and base is not None and hasattr(base, name):
                return getattr(base, name)
            raise

    def __setattr__(self, name, value):
        if name == "weight":
            raise AttributeError(
                "TuckerAdapter.weight is the merged weight base.weight + ΔW and cannot be "
                "assigned: assign adapter.base.weight, or train adapter.update"
            )
        super().__setattr__(name, value)

    @property
    def ranks(self):
        """Current multilinear rank of the update ``ΔW``."""
        return self.update.ranks

    def delta_weight(self):
        """``ΔW = C ×_i U_i`` (differentiable in the update), shape of ``base.weight``."""
        return self.update.reconstruct()

    @property
    def weight(self):
        """The effective weight ``base.weight + ΔW`` (a new tensor on every access)."""
        return self.base.weight + self.delta_weight()

    def merged_weight(self):
        """``base.weight + ΔW``, formed in float64 and rounded once to the base's dtype."""
        w0, update = self.base.weight, self.update
        with torch.no_grad():
            work = torch.float64 if w0.dtype in _WIDENED else w0.dtype
            delta = update.core.detach().to(work)
            for i in update.factorized_modes:
                delta = mode_dot(delta, update.factor(i).detach().to(work), i)
            return (w0.detach().to(work) + delta).to(w0.dtype)

    def merge(self):
        """A plain copy of ``base`` whose weight is :meth:`merged_weight` (self unchanged)."""
        merged = copy.deepcopy(self.base)
        with torch.no_grad():
            merged.weight.copy_(self.merged_weight())
        return merged

    def trainable_parameter_count(self):
        """Scalars of the update (core and factors): what training changes and saving keeps."""
        return sum(p.numel() for p in self.update.parameters())

    def forward(self, x):
        if not self.enabled:
            return self.base(x)
        return self.base(x) + self.update(x)

    def extra_repr(self):
        return (
            f"frozen base + Tucker update ΔW = C ×_i U_i: ranks={self.ranks}, "
            f"factorized_modes={self.update.factorized_modes}, "
            f"trainable={self.trainable_parameter_count()}" + ("" if self.enabled else ", disabled")
        )


_WIDENED = (torch.float16, torch.bfloat16, torch.float32)


# ---------------------------------------------------------------------------------------------
# report


@dataclass
class AdapterLayerReport:
    """One adapted module: its update's ranks and parameter counts."""

    path: str
    kind: str
    weight_shape: tuple
    ranks: tuple
    factorized_modes: tuple
    base_params: int
    trainable_params: int


@dataclass
class AdapterReport:
    """Adapted modules with ranks and trainable-parameter counts; totals of the model.

    ``trainable`` counts every parameter with ``requires_grad`` (the updates' cores and
    factors plus the modules kept trainable), ``total`` every parameter of the model (shared
    ones once). The counts are those of the moment the report was made: call
    :func:`adapter_report` again after training, when the ranks have changed.
    """

    layers: list = field(default_factory=list)
    kept: dict = field(default_factory=dict)
    trainable: int = 0
    total: int = 0

    @property
    def adapter_params(self):
        """Scalars in the updates (cores and factors)."""
        return sum(r.trainable_params for r in self.layers)

    @property
    def frozen(self):
        return self.total - self.trainable

    @property
    def trainable_fraction(self):
        """``trainable / total`` (None for a model without parameters)."""
        return self.trainable / self.total if self.total else None

    def to_dict(self):
        return {
            "layers": [
                {
                    "path": r.path,
                    "kind": r.kind,
                    "weight_shape": list(r.weight_shape),
                    "ranks": list(r.ranks),
                    "factorized_modes": list(r.factorized_modes),
                    "base_params": r.base_params,
                    "trainable_params": r.trainable_params,
                }
                for r in self.layers
            ],
            "kept": dict(self.kept),
            "adapter_params": self.adapter_params,
            "trainable_params": self.trainable,
            "frozen_params": self.frozen,
            "total_params": self.total,
            "trainable_fraction": self.trainable_fraction,
        }

    def __str__(self):
        head = ("layer", "type", "weight shape", "ranks", "base params", "trainable")
        rows = [
            (
                r.path or "(root)",
                r.kind,
                "×".join(map(str, r.weight_shape)),
                "×".join(map(str, r.ranks)),
                str(r.base_params),
                str(r.trainable_params),
            )
            for r in self.layers
        ]
        rows += [
            (path or "(root)", "kept trainable", "", "", "", str(n))
            for path, n in self.kept.items()
        ]
        widths = [max(len(h), *(len(row[j]) for row in rows)) for j, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        frac = self.trainable_fraction
        lines.append(
            f"trainable parameters {self.trainable} of {self.total} "
            f"({'n/a' if frac is None else f'{100 * frac:.2f}%'}); "
            f"in adapters {self.adapter_params}"
        )
        return "\n".join(lines)


def _unwrap(model):
    while hasattr(model, "module") and type(model).__name__ in (
        "DistributedDataParallel",
        "DataParallel",
    ):
        model = model.module
    return model


def _adapters(model):
    """``{path: adapter}`` in module order (a shared adapter once, under its first path)."""
    return {p: m for p, m in model.named_modules() if isinstance(m, TuckerAdapter)}


def _kept(model):
    """``{path: module}`` of the modules :func:`add_adapters` keeps trainable."""
    return {p: m for p, m in model.named_modules() if getattr(m, _KEEP_MARK, False)}


def adapter_report(model):
    """:class:`AdapterReport` of the current state of an adapted model.

    Examples
    --------
    >>> from torch import nn
    >>> from tuckerflow.nn import adapter_report, add_adapters
    >>> model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> model, report = add_adapters(model, rank=2, modules_to_save=["2"])
    >>> [(r.path, r.ranks, r.trainable_params) for r in adapter_report(model).layers]
    [('0', (2, 2), 68)]
    >>> report.kept, report.trainable, report.total
    ({'2': 68}, 136, 408)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    model = _unwrap(model)
    layers = [
        AdapterLayerReport(
            path,
            type(a.update).__name__,
            tuple(a.update.weight_shape),
            tuple(a.ranks),
            tuple(a.update.factorized_modes),
            sum(p.numel() for p in a.base.parameters()),
            a.trainable_parameter_count(),
        )
        for path, a in _adapters(model).items()
    ]
    kept = {path: sum(p.numel() for p in m.parameters()) for path, m in _kept(model).items()}
    params = list(model.parameters())  # shared parameters once
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return AdapterReport(layers, kept, trainable, sum(p.numel() for p in params))


# ---------------------------------------------------------------------------------------------
# adding, merging


def _paths(value, name, model_paths):
    if value is None:
        return set()
    paths = {value} if isinstance(value, str) else set(value)
    bad = [p for p in paths if not isinstance(p, str)]
    if bad:
        raise TypeError(f"{name} must hold module paths (str), got {bad[0]!r}")
    missing = sorted(paths - model_paths)
    if missing:
        raise ValueError(f"{name} names module {missing[0]!r}, which the model does not have")
    return paths


def _inside(path, roots):
    return any(path == r or r == "" or path.startswith(r + ".") for r in roots)


def add_adapters(
    model,
    *,
    filter: Callable | Iterable[str] | None = None,
    rank,
    keep_full=None,
    modules_to_save: Iterable[str] | None = None,
    rng=None,
):
    """Wrap modules of a pretrained model in :class:`TuckerAdapter`\\ s and freeze the rest.

    In place. Each selected module becomes ``TuckerAdapter(module)``: the module itself is
    the frozen ``base``, the Tucker update starts at zero, so the model's outputs are
    unchanged (exactly) until it is trained. Every other parameter of the model is frozen
    (``requires_grad = False``) except those of ``modules_to_save``.

    Parameters
    ----------
    model : nn.Module
    filter : callable, iterable of str or None
        As for :func:`tuckerflow.nn.tuckerize`: ``filter(path, module) -> bool`` over the
        ``Linear``/``Conv*d`` modules, or the set of module paths to adapt. Default: every
        module whose type is exactly ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` or
        ``nn.Conv3d`` (outside ``nn.MultiheadAttention`` and outside ``modules_to_save``).
        A module selected explicitly that cannot take an adapter raises an error naming its
        path and type.
    rank : int, float, sequence or mapping
        Initial rank of each update, as in the Tucker layer constructors (an int caps each
        factorized mode, a float is a fraction of each mode size), or ``{path: rank}``
        (without ``filter``, its keys select the modules). TDLRT adapts it during training,
        but the truncation is relative to the whole core, so directions that enter late are
        cut again: in a short fine-tuning run start above the rank the task needs (8 in the
        fine-tuning experiments, from which TDLRT truncates) rather than at 1.
    keep_full : optional
        Modes of the updates kept full, as in the Tucker layer constructors.
    modules_to_save : iterable of str, optional
        Paths of modules trained in full, as PEFT's option of this name (e.g. a new
        classification head): their parameters stay trainable and their state
        (parameters and buffers) is part of :func:`adapter_state_dict`.
    rng : None, int or torch.Generator
        Source of the random orthonormal factors of the updates (default: torch's global
        generator).

    Returns
    -------
    model : nn.Module
        The same object (or the adapter, if ``model`` itself is a supported module).
    report : AdapterReport
        Per adapted module: path, type, weight shape, ranks and trainable parameters; the
        modules kept trainable; trainable and total parameters of the model.

    Raises
    ------
    TypeError, ValueError
        Naming the module path (and type): a selected module that cannot take an adapter, a
        model that already has adapters, a path in ``filter``/``modules_to_save`` that the
        model lacks, a module both adapted and kept trainable. Every adapter is built before
        any is installed: on error the model is unchanged.

    Notes
    -----
    Train with :class:`tuckerflow.optim.TDLRT` over the trainable parameters::

        params = [p for p in model.parameters() if p.requires_grad]
        tdlrt = TDLRT(model, torch.optim.SGD(params, lr=...), tau=...)

    The updates are the Tucker layers ``<path>.update`` (the names for TDLRT's ``min_rank``
    and ``max_rank`` dicts). A module reachable under several paths gets one adapter.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from tuckerflow.nn import add_adapters
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    >>> x = torch.randn(1, 3, 3, 3)
    >>> before = model(x)
    >>> model, report = add_adapters(model, rank=1, filter=["0"], modules_to_save=["3"])
    >>> torch.equal(model(x), before), report.layers[0].ranks
    (True, (1, 1, 3, 3))
    >>> [n for n, p in model.named_parameters() if p.requires_grad]
    ['0.update.core', '0.update.factors.0', '0.update.factors.1', '3.weight', '3.bias']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    existing = _adapters(model)
    if existing:
        path = next(iter(existing))
        raise ValueError(
            f"model already has adapters (module {path or '(root)'!r} is a TuckerAdapter); "
            "merge them first (merge_adapters) or load new adapter weights into these "
            "(load_adapter_state_dict)"
        )
    model_paths = {name for name, _ in model.named_modules()}
    keep = _paths(modules_to_save, "modules_to_save", model_paths)
    per_path = isinstance(rank, Mapping)
    if per_path and filter is None:
        filter = list(rank)
    if filter is not None and not callable(filter):
        filter = _paths(filter, "filter", model_paths)
    generator = _generator(rng)
    # building an adapter freezes its base: restore the flags if a later module fails
    flags = [(p, p.requires_grad) for p in model.parameters()]
    marks = [
        (m, {n: p.requires_grad for n, p in m.named_parameters(recurse=False)})
        for m in model.modules()
    ]
    try:
        plan = _plan(model, filter, keep, rank, per_path, keep_full, generator)
    except BaseException:
        for p, flag in flags:
            p.requires_grad_(flag)
        raise
    if not plan:
        raise ValueError(
            "no module was selected for an adapter (the default filter takes modules of type "
            "exactly nn.Linear, nn.Conv1d, nn.Conv2d or nn.Conv3d)"
        )
    # nothing below can fail: the model changes only now
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, _KEEP_MARK, False):
                delattr(m, _KEEP_MARK)
        for m, own in marks:
            if own:
                setattr(m, _FLAGS_MARK, own)
        model.requires_grad_(False)
        for path in keep:
            module = model.get_submodule(path)
            module.requires_grad_(True)
            setattr(module, _KEEP_MARK, True)
    for path, adapter in plan:
        adapter.update.requires_grad_(True)
        if path == "":
            model = adapter
            continue
        parent_path, _, child = path.rpartition(".")
        owner = model.get_submodule(parent_path) if parent_path else model
        setattr(owner, child, adapter)
    return model, adapter_report(model)


def _plan(model, filter, keep, rank, per_path, keep_full, generator):
    """``[(path, new adapter)]`` for the selected modules (validated; model not rewired)."""
    parents = {"": None}
    for name, module in model.named_modules():
        for child_name, _ in module.named_children():
            parents.setdefault(f"{name}.{child_name}" if name else child_name, module)
    plan, built = [], {}
    for path, module in model.named_modules(remove_duplicate=False):
        if not _selected(filter, path, module):
            continue
        parent = parents.get(path)
        explicit = filter is not None and not callable(filter)
        if _inside(path, keep):
            if explicit:
                raise ValueError(
                    f"module {path!r} is selected for an adapter and kept trainable by "
                    "modules_to_save; choose one"
                )
            continue
        if filter is None and isinstance(parent, nn.MultiheadAttention):
            continue
        if isinstance(module, TuckerLayer):
            reason = f"{type(module).__name__} is already a Tucker layer (train it with TDLRT)"
        else:
            reason = _unsupported_reason(module, parent)
        if reason is not None:
            raise TypeError(
                f"cannot add an adapter to module {path!r} ({type(module).__name__}): {reason}"
            )
        if id(module) not in built:
            try:
                if per_path and path not in rank:
                    raise ValueError(f"rank has no entry for the selected module {path!r}")
                r = rank[path] if per_path else rank
                built[id(module)] = TuckerAdapter(
                    module, rank=r, keep_full=keep_full, rng=generator
                )
            except (TypeError, ValueError) as err:
                raise type(err)(f"cannot add an adapter to module {path!r}: {err}") from err
        plan.append((path, built[id(module)]))
    return plan


def _no_adapters_error(what):
    return ValueError(
        f"{what}: the model has no TuckerAdapter modules (add them with tuckerflow.nn.add_adapters)"
    )


def _refuse_wrapper(model, what):
    if model is not _unwrap(model):
        raise TypeError(
            f"{what} needs the model itself, not its {type(model).__name__} wrapper: pass "
            "wrapper.module"
        )


def merge_adapters(model):
    """Fold every adapter into a plain ``torch.nn`` module with weight ``base.weight + ΔW``.

    In place: each :class:`TuckerAdapter` of ``model`` is replaced by a copy of its base
    module (same type, options, bias, hooks and ``requires_grad`` flags) whose weight is
    ``W_0 + ΔW``, formed in float64 (``ΔW`` included) and rounded once to the weight's
    dtype. The model then holds no tuckerflow module and computes what the adapted model
    computed, to the round-off of the weight's dtype. The replaced adapters themselves are
    left unchanged.

    Parameters
    ----------
    model : nn.Module
        A model with adapters (not a DDP/DataParallel wrapper).

    Returns
    -------
    nn.Module
        The same object (or the merged module, if ``model`` itself is an adapter).

    Raises
    ------
    ValueError
        When the model has no adapters, or a merged weight is not finite (naming the
        path); the model is unchanged.

    Examples
    --------
    >>> from torch import nn
    >>> from tuckerflow.nn import add_adapters, merge_adapters
    >>> model, _ = add_adapters(nn.Sequential(nn.Linear(4, 4)), rank=1)
    >>> merge_adapters(model)
    Sequential(
      (0): Linear(in_features=4, out_features=4, bias=True)
    )
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _refuse_wrapper(model, "merge_adapters")
    found = list(model.named_modules(remove_duplicate=False))
    found = [(p, m) for p, m in found if isinstance(m, TuckerAdapter)]
    if not found:
        raise _no_adapters_error("nothing to merge")
    off = [p for p, a in found if not a.enabled]
    if off:
        raise ValueError(
            f"adapter {off[0] or '(root)'!r} is disabled: enable it (enable_adapters) to merge "
            "its update, or drop the updates with remove_adapters; nothing was merged"
        )
    merged = {}
    for path, adapter in found:
        if id(adapter) in merged:
            continue
        w = adapter.merged_weight()
        if not bool(torch.isfinite(w).all()):
            raise ValueError(
                f"the merged weight of adapter {path!r} holds NaN or Inf; nothing was merged"
            )
        module = copy.deepcopy(adapter.base)
        with torch.no_grad():
            module.weight.copy_(w)
        merged[id(adapter)] = module
    for path, adapter in found:
        module = merged[id(adapter)]
        if path == "":
            model = module
            continue
        parent_path, _, child = path.rpartition(".")
        owner = model.get_submodule(parent_path) if parent_path else model
        setattr(owner, child, module)
    _drop_marks(model)
    return model


def _drop_marks(model):
    for m in model.modules():
        if getattr(m, _KEEP_MARK, False):
            delattr(m, _KEEP_MARK)
        m.__dict__.pop(_FLAGS_MARK, None)


def remove_adapters(model):
    """Undo :func:`add_adapters`: put the original modules back, without their updates.

    In place: each :class:`TuckerAdapter` is replaced by its ``base`` (the very module that
    was adapted, bit-identical, since it was frozen) and the ``requires_grad`` flags of the
    whole model return to what they were before :func:`add_adapters`. The trained updates
    are dropped (save them first with :func:`adapter_state_dict`, or fold them in with
    :func:`merge_adapters` instead). What was trained in place stays: the modules kept
    trainable by ``modules_to_save`` keep their trained weights, and the buffers of the
    frozen part (a ``BatchNorm``'s running statistics) keep their values.

    Parameters
    ----------
    model : nn.Module
        A model with adapters (not a DDP/DataParallel wrapper).

    Returns
    -------
    nn.Module
        The same object (or the base module, if ``model`` itself is an adapter).

    Raises
    ------
    TypeError
        When ``model`` is not a module, or is a DDP/DataParallel wrapper.
    ValueError
        When the model has no adapters; the model is unchanged.

    Examples
    --------
    >>> from torch import nn
    >>> from tuckerflow.nn import add_adapters, remove_adapters
    >>> linear = nn.Linear(4, 4)
    >>> model, _ = add_adapters(nn.Sequential(linear), rank=1)
    >>> model = remove_adapters(model)
    >>> model[0] is linear, linear.weight.requires_grad
    (True, True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _refuse_wrapper(model, "remove_adapters")
    found = [
        (p, m)
        for p, m in model.named_modules(remove_duplicate=False)
        if isinstance(m, TuckerAdapter)
    ]
    if not found:
        raise _no_adapters_error("nothing to remove")
    # nothing below can fail
    for path, adapter in found:
        if path == "":
            model = adapter.base
            continue
        parent_path, _, child = path.rpartition(".")
        owner = model.get_submodule(parent_path) if parent_path else model
        setattr(owner, child, adapter.base)
    for adapter in {id(a): a for _, a in found}.values():
        flags = adapter.__dict__.get("_base_requires_grad", {})
        for n, p in adapter.base.named_parameters():
            p.requires_grad_(flags.get(n, p.requires_grad))
    for m in model.modules():
        own = m.__dict__.get(_FLAGS_MARK)
        if own:
            for n, flag in own.items():
                p = m._parameters.get(n)
                if p is not None:
                    p.requires_grad_(flag)
    _drop_marks(model)
    return model


class AdaptersDisabled:
    """What :func:`disable_adapters` returns: a context manager that re-enables on exit.

    Leaving the ``with`` block (or calling :meth:`restore`) gives each adapter back the
    ``enabled`` state it had when :func:`disable_adapters` was called, so blocks nest.
    """

    def __init__(self, previous):
        self._previous = previous

    def restore(self):
        """Give each adapter back the ``enabled`` state it had before."""
        for adapter, enabled in self._previous:
            adapter.enabled = enabled

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.restore()
        return False


def _all_adapters(model, what):
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    adapters = list(_adapters(_unwrap(model)).values())
    if not adapters:
        raise _no_adapters_error(what)
    return adapters


def disable_adapters(model):
    """Switch every adapter of ``model`` off: the model computes what its base model computes.

    While disabled, an adapter's ``forward`` is its base's alone (the same modules, so the
    outputs equal the unadapted model's bit for bit); the updates keep their values, take no
    part in the output and receive no gradient, so a training step (TDLRT included) leaves
    them unchanged. The switch takes effect at the call; use the result as a context manager
    to switch back on leaving the block, or call :func:`enable_adapters`.

    Parameters
    ----------
    model : nn.Module
        A model with adapters (a DDP/DataParallel wrapper is accepted).

    Returns
    -------
    AdaptersDisabled
        A context manager restoring, on exit, the states the adapters had before the call.

    Raises
    ------
    TypeError
        When ``model`` is not a module.
    ValueError
        When the model has no adapters (nothing is changed).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from tuckerflow.nn import add_adapters, disable_adapters
    >>> base = nn.Linear(4, 2)
    >>> model, _ = add_adapters(nn.Sequential(base), rank=1)
    >>> with torch.no_grad():
    ...     _ = model[0].update.core.fill_(1.0)  # as if trained
    >>> x = torch.randn(3, 4)
    >>> with disable_adapters(model):
    ...     torch.equal(model(x), base(x))
    True
    >>> torch.equal(model(x), base(x)), model[0].enabled
    (False, True)
    """
    adapters = _all_adapters(model, "nothing to disable")
    previous = [(a, a.enabled) for a in adapters]
    for a in adapters:
        a.enabled = False
    return AdaptersDisabled(previous)


def enable_adapters(model):
    """Switch every adapter of ``model`` back on (after :func:`disable_adapters`).

    Parameters
    ----------
    model : nn.Module
        A model with adapters (a DDP/DataParallel wrapper is accepted).

    Returns
    -------
    nn.Module
        ``model``.

    Raises
    ------
    TypeError, ValueError
        As :func:`disable_adapters`.
    """
    for a in _all_adapters(model, "nothing to enable"):
        a.enabled = True
    return model


# ---------------------------------------------------------------------------------------------
# saving and loading


def _update_tensors(update):
    """``{key: tensor}`` of an update's core and factors (its state dict: no bias)."""
    return dict(update.state_dict())


def _frozen_buffers(model, adapters, kept):
    """``{key: buffer}``: the persistent buffers outside the adapters and the kept modules."""
    roots = list(adapters) + list(kept)
    out = {}
    for key, v in model.state_dict(keep_vars=True).items():
        if not isinstance(v, torch.Tensor) or isinstance(v, nn.Parameter):
            continue
        owner = key.rpartition(".")[0]
        if _inside(owner, roots):
            continue
        out[key] = v
    return out


def adapter_state_dict(model, *, buffers=True):
    """The adapters alone: updates (at their current ranks) and modules kept trainable.

    Parameters
    ----------
    model : nn.Module
        An adapted model (a DDP/DataParallel wrapper is accepted).
    buffers : bool
        Also save the persistent buffers of the frozen rest of the model (default True).
        Frozen parameters never change, but buffers do: a frozen ``BatchNorm`` in training
        mode still updates its running statistics, and the fine-tuned model computes with
        the updated ones. They are small; without them a fresh copy of the base model
        reproduces the adapted one only if its buffers did not move (modules in eval mode).

    Returns
    -------
    dict
        A flat ``{key: tensor}`` with the keys of ``model.state_dict()`` (without a DDP
        ``module.`` prefix): ``<path>.update.core`` and ``<path>.update.factors.<k>`` per
        adapter, every parameter and buffer of the ``modules_to_save``, and the buffers
        above. The tensors are detached copies; ``torch.save`` it and load with
        ``torch.load(..., weights_only=True)``.

    Raises
    ------
    ValueError
        When the model has no adapters.

    Examples
    --------
    >>> from torch import nn
    >>> from tuckerflow.nn import adapter_state_dict, add_adapters
    >>> model, _ = add_adapters(nn.Sequential(nn.Linear(6, 4)), rank=2)
    >>> {k: tuple(v.shape) for k, v in adapter_state_dict(model).items()}
    {'0.update.core': (2, 2), '0.update.factors.0': (4, 2), '0.update.factors.1': (6, 2)}
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    model = _unwrap(model)
    adapters = _adapters(model)
    if not adapters:
        raise _no_adapters_error("no adapter state")
    kept = _kept(model)
    out = {}
    for path, adapter in adapters.items():
        prefix = f"{path}.update." if path else "update."
        for k, v in _update_tensors(adapter.update).items():
            out[prefix + k] = v.detach().clone()
    for path, module in kept.items():
        prefix = f"{path}." if path else ""
        for k, v in module.state_dict().items():
            out[prefix + k] = v.detach().clone()
    if buffers:
        for k, v in _frozen_buffers(model, adapters, kept).items():
            out[k] = v.detach().clone()
    return out


#: Largest ``max |UᴴU − I|`` accepted for a loaded factor (the orthonormality TDLRT needs;
#: float32 round-off of an orthonormal factor is far below it).
ORTHONORMALITY_TOLERANCE = 1e-4


def _check_update(key, update, core, factors):
    """Validate the stored core and factors of one update against its layer."""
    shape, d = tuple(update.weight_shape), len(update.weight_shape)
    if core.ndim != d:
        raise ValueError(
            f"{key}core has {core.ndim} modes, the adapter's weight {d} (shape {shape})"
        )
    for i in range(d):
        if i not in update.factorized_modes and core.shape[i] != shape[i]:
            raise ValueError(
                f"{key}core has shape {tuple(core.shape)}: mode {i} is kept full, so its size "
                f"must be {shape[i]}"
            )
    for k, i in enumerate(update.factorized_modes):
        u = factors[k]
        want = (shape[i], core.shape[i])
        if tuple(u.shape) != want or not 1 <= core.shape[i] <= shape[i]:
            raise ValueError(
                f"{key}factors.{k} has shape {tuple(u.shape)}, expected {want} "
                f"(weight_shape[{i}]={shape[i]}, core.shape[{i}]={core.shape[i]})"
            )
    for name, t in [("core", core)] + [(f"factors.{k}", u) for k, u in enumerate(factors)]:
        if not t.is_floating_point():
            raise ValueError(f"{key}{name} has dtype {t.dtype}; a floating dtype is needed")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{key}{name} holds NaN or Inf")
    for k, u in enumerate(factors):
        u = u.detach().to(torch.float64)
        err = float((u.T @ u - torch.eye(u.shape[1], dtype=u.dtype)).abs().max())
        tol = max(ORTHONORMALITY_TOLERANCE, 2.0 * torch.finfo(factors[k].dtype).eps)
        if not err <= tol:
            raise ValueError(
                f"{key}factors.{k} is not orthonormal (max |UᵀU − I| = {err:.2e} > {tol:g})"
            )


def load_adapter_state_dict(model, state):
    """Load what :func:`adapter_state_dict` saved into an adapted model, ranks included.

    The model is typically a fresh copy of the same pretrained model passed through
    :func:`add_adapters` with the same ``filter``, ``keep_full`` and ``modules_to_save``
    (the initial rank does not matter: each update is resized to the stored ranks, keeping
    its Parameter objects).

    Parameters
    ----------
    model : nn.Module
        An adapted model (a DDP/DataParallel wrapper is accepted).
    state : Mapping[str, torch.Tensor]
        Keys as :func:`adapter_state_dict` makes them (a ``module.`` prefix on every key is
        accepted). The updates and the modules kept trainable must all be there; buffers of
        the frozen part are loaded where present (``adapter_state_dict(..., buffers=False)``
        leaves them out).

    Raises
    ------
    ValueError
        When the model has no adapters, keys are missing or unexpected (the first few are
        named), a stored shape does not fit (the key and both shapes are named), a tensor is
        not finite, or a factor is not orthonormal. Everything is checked before anything is
        written: on error the model is unchanged.

    Notes
    -----
    Build the optimizer (and :class:`tuckerflow.optim.TDLRT`) after loading, or restore its
    own state with ``TDLRT.load_state_dict``: an update whose rank changed has
    Parameters of new shapes.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping of str to tensors, got {type(state).__name__}")
    model = _unwrap(model)
    adapters = _adapters(model)
    if not adapters:
        raise _no_adapters_error("cannot load adapter state")
    state = dict(state)
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"state entry {bad[0]!r} is not a str key with a torch.Tensor value")
    kept = _kept(model)
    expected = {}
    for path, adapter in adapters.items():
        prefix = f"{path}.update." if path else "update."
        for k in _update_tensors(adapter.update):
            expected[prefix + k] = ("adapter", path)
    for path, module in kept.items():
        prefix = f"{path}." if path else ""
        for k in module.state_dict():
            expected[prefix + k] = ("kept", path)
    optional = _frozen_buffers(model, adapters, kept)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and k not in optional]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}" + (" …" if len(missing) > 3 else ""))
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}" + (" …" if len(unexpected) > 3 else ""))
        raise ValueError(
            "adapter state does not fit the model (" + "; ".join(parts) + "): the model must be "
            "adapted like the one saved (same filter, keep_full and modules_to_save)"
        )
    # validate everything, then write
    updates = []
    for path, adapter in adapters.items():
        prefix = f"{path}.update." if path else "update."
        core = state[prefix + "core"]
        factors = [state[f"{prefix}factors.{k}"] for k in range(len(adapter.update.factors))]
        _check_update(prefix, adapter.update, core, factors)
        ref = adapter.update.core
        full = [None] * len(adapter.update.weight_shape)
        for k, i in enumerate(adapter.update.factorized_modes):
            full[i] = factors[k].detach().to(device=ref.device, dtype=ref.dtype).clone()
        updates.append(
            (adapter, core.detach().to(device=ref.device, dtype=ref.dtype).clone(), full)
        )
    kept_states = []
    for path, module in kept.items():
        prefix = f"{path}." if path else ""
        own = module.state_dict()
        sub = {}
        for k, v in own.items():
            stored = state[prefix + k]
            if tuple(stored.shape) != tuple(v.shape):
                raise ValueError(
                    f"{prefix + k} has shape {tuple(stored.shape)}, the model's {tuple(v.shape)}"
                )
            sub[k] = stored
        kept_states.append((module, sub))
    frozen = []
    for k, buf in optional.items():
        if k in state:
            if tuple(state[k].shape) != tuple(buf.shape):
                raise ValueError(
                    f"{k} has shape {tuple(state[k].shape)}, the model's {tuple(buf.shape)}"
                )
            frozen.append((buf, state[k]))
    for adapter, core, factors in updates:
        adapter.update.set_tucker_(core, factors)
    with torch.no_grad():
        for buf, value in frozen:
            buf.copy_(value)
    for module, sub in kept_states:
        module.load_state_dict(sub, strict=True)
    return model
