"""Replace the dense ``Linear``/``Conv*d`` modules of a model by Tucker layers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from torch import nn

from .conv import TuckerConv1d, TuckerConv2d, TuckerConv3d
from .layer import TuckerLayer
from .linear import TuckerLinear

__all__ = [
    "LayerReport",
    "ParameterCount",
    "TuckerizeReport",
    "compression_rate",
    "count_parameters",
    "tuckerize",
]

_REPLACEMENTS = {
    nn.Linear: TuckerLinear,
    nn.Conv1d: TuckerConv1d,
    nn.Conv2d: TuckerConv2d,
    nn.Conv3d: TuckerConv3d,
}
_CONV_TYPES = (nn.modules.conv._ConvNd, TuckerConv1d, TuckerConv2d, TuckerConv3d)


@dataclass(frozen=True)
class ParameterCount:
    """Parameters of a model: in convolutions (dense or Tucker) and in total."""

    conv: int
    total: int


def count_parameters(model):
    """:class:`ParameterCount` of ``model`` (shared parameters counted once)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    seen, conv, total = set(), 0, 0
    conv_ids = set()
    for m in model.modules():
        if isinstance(m, _CONV_TYPES):
            conv_ids |= {id(p) for p in m.parameters(recurse=False)}
            if isinstance(m, TuckerLayer):
                conv_ids |= {id(p) for p in m.parameters()}
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if id(p) in conv_ids:
            conv += p.numel()
    return ParameterCount(conv, total)


def _as_count(value, name):
    if isinstance(value, ParameterCount):
        return value
    if isinstance(value, nn.Module):
        return count_parameters(value)
    raise TypeError(f"{name} must be an nn.Module or a ParameterCount, got {type(value).__name__}")


def compression_rate(before, after, *, scope="conv"):
    """``1 − parameters after / parameters before``.

    Parameters
    ----------
    before, after : nn.Module or ParameterCount
        Models (or their :func:`count_parameters`); :func:`tuckerize` changes a model in
        place, so count it before.
    scope : {"conv", "model"}
        ``"conv"``: convolution parameters only (weights and biases of dense and Tucker
        convolutions), the compression rate of Zangrando et al. (NeurIPS 2024);
        ``"model"``: every parameter.

    Examples
    --------
    >>> from torch import nn
    >>> from tuckerflow.nn import compression_rate, count_parameters, tuckerize
    >>> model = nn.Sequential(nn.Conv2d(32, 32, 3), nn.Flatten(), nn.Linear(32, 2))
    >>> before = count_parameters(model)
    >>> model, report = tuckerize(model, rank=4)
    >>> round(compression_rate(before, model), 3)
    0.953
    """
    if scope not in ("conv", "model"):
        raise ValueError(f"scope={scope!r} is not one of ('conv', 'model')")
    b, a = _as_count(before, "before"), _as_count(after, "after")
    nb, na = (b.conv, a.conv) if scope == "conv" else (b.total, a.total)
    if nb == 0:
        raise ValueError(f"the model before has no {scope} parameters: no compression rate")
    return 1.0 - na / nb


@dataclass
class LayerReport:
    """One replaced module."""

    path: str
    kind: str
    weight_shape: tuple
    ranks: tuple
    params_before: int
    params_after: int

    @property
    def compression_rate(self):
        return 1.0 - self.params_after / self.params_before


@dataclass
class TuckerizeReport:
    """What :func:`tuckerize` did: per-layer ranks and parameter counts, compression rates."""

    layers: list = field(default_factory=list)
    before: ParameterCount = ParameterCount(0, 0)
    after: ParameterCount = ParameterCount(0, 0)

    @property
    def conv_compression_rate(self):
        """``1 − conv params after / conv params before`` (None without convolutions)."""
        return None if self.before.conv == 0 else 1.0 - self.after.conv / self.before.conv

    @property
    def compression_rate(self):
        """Whole-model rate ``1 − params after / params before``."""
        return 1.0 - self.after.total / self.before.total if self.before.total else None

    def to_dict(self):
        return {
            "layers": [
                {
                    "path": r.path,
                    "kind": r.kind,
                    "weight_shape": list(r.weight_shape),
                    "ranks": list(r.ranks),
                    "params_before": r.params_before,
                    "params_after": r.params_after,
                }
                for r in self.layers
            ],
            "params_before": self.before.total,
            "params_after": self.after.total,
            "conv_params_before": self.before.conv,
            "conv_params_after": self.after.conv,
            "conv_compression_rate": self.conv_compression_rate,
            "compression_rate": self.compression_rate,
        }

    def __str__(self):
        head = ("layer", "type", "weight shape", "ranks", "params", "tucker", "c.r.")
        rows = [
            (
                r.path,
                r.kind,
                "×".join(map(str, r.weight_shape)),
                "×".join(map(str, r.ranks)),
                str(r.params_before),
                str(r.params_after),
                f"{100 * r.compression_rate:.1f}%",
            )
            for r in self.layers
        ]
        widths = [max(len(h), *(len(row[j]) for row in rows)) for j, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]

        def pct(v):
            return "n/a" if v is None else f"{100 * v:.2f}%"

        lines.append(
            f"conv parameters {self.before.conv} -> {self.after.conv} "
            f"(compression {pct(self.conv_compression_rate)}); "
            f"all parameters {self.before.total} -> {self.after.total} "
            f"(compression {pct(self.compression_rate)})"
        )
        return "\n".join(lines)


def _is_candidate(module):
    return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))


def _selected(filter, name, module):
    if filter is None:
        return type(module) in _REPLACEMENTS
    if callable(filter):
        return _is_candidate(module) and bool(filter(name, module))
    return name in filter


def _unsupported_reason(module, parent):
    if isinstance(parent, nn.MultiheadAttention):
        return "it belongs to an nn.MultiheadAttention, which reads its weight directly"
    kind = type(module)
    if kind not in _REPLACEMENTS:
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            return f"{kind.__name__} (transposed convolutions) is not supported"
        supported = ", ".join(t.__name__ for t in _REPLACEMENTS)
        return f"type {kind.__name__} is not one of the supported {supported}"
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) or isinstance(
        module.weight, nn.parameter.UninitializedParameter
    ):
        return "its weight is not initialised yet (lazy module): run a forward pass first"
    if not module.weight.is_floating_point() or module.weight.is_complex():
        return f"its weight has dtype {module.weight.dtype}; real floating dtypes only"
    return None


def tuckerize(
    model,
    *,
    filter: Callable | Iterable[str] | None = None,
    rank=None,
    rtol=None,
    init="weight",
    keep_full=None,
    max_rank=None,
    min_rank=1,
):
    """Replace ``Linear``/``Conv1d``/``Conv2d``/``Conv3d`` modules by Tucker layers, in place.

    Parameters
    ----------
    model : nn.Module
    filter : callable, iterable of str or None
        ``filter(path, module) -> bool`` or the set of module paths (as in
        ``model.named_modules()``) to replace. Default: every module whose type is exactly
        one of the four supported ones (subclasses and modules inside
        ``nn.MultiheadAttention`` are left alone). A module selected explicitly that cannot
        be replaced raises an error naming its path.
    rank : int, float, sequence or mapping, optional
        Ranks as in the layer constructors (an int caps each factorized mode, a float is a
        fraction of each mode size), or a mapping ``{path: rank}`` with one entry per replaced
        module (without ``filter``, its keys select the modules). Required for
        ``init="random"``.
    rtol : float, optional
        With ``init="weight"`` only: relative Frobenius error of each weight's truncated
        HOSVD (ranks chosen per mode). Exclusive with ``rank``.
    init : {"weight", "random"}
        ``"weight"``: decompose each trained weight (compressing a pretrained model);
        ``"random"``: fresh orthonormal factors and a core with PyTorch's default variance
        (training from scratch). Biases are copied in both cases.
    keep_full : optional
        Modes kept full, as in the constructors (default: spatial modes of size ≤ 3).
    max_rank, min_rank : optional
        Caps and floors for ranks chosen by ``rtol``.

    Returns
    -------
    model : nn.Module
        The same object (or the new layer if ``model`` itself is replaced).
    report : TuckerizeReport
        Per-layer path, weight shape, ranks and parameter counts; convolution-only and
        whole-model compression rates; ``print(report)`` shows a table.

    Raises
    ------
    TypeError, ValueError
        Naming the module path. All replacements are built before any is installed: on
        error the model is unchanged.

    Notes
    -----
    The convolution compression rate is ``1 − conv params after / conv params before``, as
    in Zangrando et al. (NeurIPS 2024, arXiv:2305.19059); the decomposition from a trained
    weight is the truncated ST-HOSVD of :func:`tuckerflow.nn.decompose.tucker_from_weight`.
    A module reachable under several paths is replaced once (the new layer is shared too).

    Examples
    --------
    >>> from torch import nn
    >>> from tuckerflow.nn import tuckerize
    >>> model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 4))
    >>> model, report = tuckerize(model, rank=2, filter=lambda path, m: path == "0")
    >>> [r.path for r in report.layers], report.layers[0].ranks
    (['0'], (2, 2, 3, 3))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if init not in ("weight", "random"):
        raise ValueError(f"init={init!r} is not one of ('weight', 'random')")
    if init == "random":
        if rtol is not None:
            raise ValueError("rtol needs init='weight' (a tolerance is relative to a weight)")
        if rank is None:
            raise ValueError("init='random' needs rank")
    elif (rank is None) == (rtol is None):
        raise ValueError("give exactly one of rank and rtol with init='weight'")
    per_path = isinstance(rank, Mapping)
    if per_path and filter is None:
        filter = list(rank)
    if filter is not None and not callable(filter):
        filter = {filter} if isinstance(filter, str) else set(filter)
        missing = sorted(filter - {name for name, _ in model.named_modules()})
        if missing:
            raise ValueError(f"filter names module {missing[0]!r}, which the model does not have")
    before = count_parameters(model)
    parents = {"": None}
    for name, module in model.named_modules():
        for child_name, _ in module.named_children():
            parents.setdefault(f"{name}.{child_name}" if name else child_name, module)
    plan, built, reports = [], {}, []
    for path, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, TuckerLayer) or not _selected(filter, path, module):
            continue
        parent = parents.get(path)
        if filter is None and isinstance(parent, nn.MultiheadAttention):
            continue
        reason = _unsupported_reason(module, parent)
        if reason is not None:
            raise TypeError(f"cannot tuckerize module {path!r}: {reason}")
        if id(module) not in built:
            cls = _REPLACEMENTS[type(module)]
            try:
                if per_path and path not in rank:
                    raise ValueError(f"rank has no entry for the selected module {path!r}")
                r = rank[path] if per_path else rank
                new = _build(cls, module, init, r, rtol, keep_full, max_rank, min_rank)
            except (TypeError, ValueError) as err:
                raise type(err)(f"cannot tuckerize module {path!r}: {err}") from err
            new.train(module.training)
            built[id(module)] = new
            reports.append(
                LayerReport(
                    path,
                    cls.__name__,
                    new.weight_shape,
                    new.ranks,
                    sum(p.numel() for p in module.parameters()),
                    new.parameter_count(),
                )
            )
        plan.append((path, built[id(module)]))
    for path, new in plan:
        if path == "":
            model = new
            continue
        parent_path, _, child = path.rpartition(".")
        owner = model.get_submodule(parent_path) if parent_path else model
        setattr(owner, child, new)
    return model, TuckerizeReport(reports, before, count_parameters(model))


def _build(cls, module, init, rank, rtol, keep_full, max_rank, min_rank):
    if init == "weight":
        return cls.from_dense(
            module,
            rank=rank,
            rtol=rtol,
            keep_full=keep_full,
            max_rank=max_rank,
            min_rank=min_rank,
        )
    return cls._like(module, rank=rank, keep_full=keep_full)
