"""What a run reports: ranks per layer, compression against the dense network, the table.

The figure lives in :mod:`tuckerflow.train.plot`.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from tuckerflow.nn import TuckerLayer
from tuckerflow.train.config import check_integer

__all__ = ["compression_report", "format_summary_table", "layer_ranks", "tucker_layers"]


def check_module(model: Any, name: str = "model") -> nn.Module:
    """``model`` if it is a ``torch.nn.Module``; ``TypeError`` naming ``name`` otherwise."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    return model


def tucker_layers(model: nn.Module) -> dict[str, TuckerLayer]:
    """``{name: layer}`` of the Tucker layers of ``model`` (empty for dense models)."""
    check_module(model)
    return {n: m for n, m in model.named_modules() if isinstance(m, TuckerLayer)}


def layer_ranks(model: nn.Module) -> dict[str, list[int]]:
    """Current multilinear rank of each Tucker layer, or full shape of each dense layer.

    Returns ``{name: [r_0, r_1, …]}``; a dense ``Conv*d``/``Linear`` layer reports its weight
    shape (its rank cannot exceed it).
    """
    ranks = {}
    tucker = tucker_layers(model)
    for name, module in model.named_modules():
        if name in tucker:
            ranks[name] = [int(r) for r in module.ranks]
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            ranks[name] = [int(n) for n in module.weight.shape]
    return ranks


def compression_report(
    dense_counts: Mapping[str, Any], model: nn.Module, dense_total: int
) -> dict[str, Any]:
    """Compression rates of ``model`` against the dense network it came from.

    Parameters
    ----------
    dense_counts : dict
        ``{name: (kind, parameters)}`` of the dense network (see
        :func:`tuckerflow.train.models.layer_parameter_counts`).
    model : torch.nn.Module
        The trained network (Tucker layers count core + factors).
    dense_total : int
        Parameters of the whole dense network.

    Returns
    -------
    dict
        ``compression_rate`` over the parameters of all ``Conv*d``/``Linear`` layers
        (weights and biases; Tucker layers: core, factors and bias), ``compression_rate_conv``
        over the convolutions only, ``compression_rate_model`` over all parameters, and the
        parameter counts.

    Notes
    -----
    ``c.r. = 1 − (parameters after) / (parameters before)``; the convolution-only rate is the
    definition of Zangrando et al. (2024).

    References
    ----------
    .. [1] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco, "Geometry-aware training
       of factorized layers in tensor Tucker format", NeurIPS 2024, arXiv:2305.19059.
    """
    check_module(model)
    if not isinstance(dense_counts, Mapping):
        raise TypeError(
            f"dense_counts must be a dict {{name: (kind, parameters)}}, got {dense_counts!r}"
        )
    for name, entry in dense_counts.items():
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise TypeError(f"dense_counts[{name!r}]={entry!r} must be a pair (kind, parameters)")
        if entry[0] not in ("conv", "linear"):
            raise ValueError(f"dense_counts[{name!r}]: kind {entry[0]!r} is not 'conv' or 'linear'")
        check_integer(entry[1], f"dense_counts[{name!r}] parameters", 0)
    check_integer(dense_total, "dense_total", 0)
    modules = dict(model.named_modules())
    before = {"conv": 0, "linear": 0}
    after = {"conv": 0, "linear": 0}
    for name, (kind, count) in dense_counts.items():
        before[kind] += count
        module = modules.get(name)
        if module is not None:
            after[kind] += sum(p.numel() for p in module.parameters())
    total_after = sum(p.numel() for p in model.parameters())

    def rate(a, b):
        return 0.0 if b == 0 else 1.0 - a / b

    return {
        "compression_rate": rate(
            after["conv"] + after["linear"], before["conv"] + before["linear"]
        ),
        "compression_rate_conv": rate(after["conv"], before["conv"]),
        "compression_rate_model": rate(total_after, dense_total),
        "parameters": {
            "dense_model": int(dense_total),
            "model": int(total_after),
            "dense_conv": int(before["conv"]),
            "conv": int(after["conv"]),
            "dense_linear": int(before["linear"]),
            "linear": int(after["linear"]),
        },
    }


#: Keys of a summary that :func:`format_summary_table` reads, and whether they are numbers.
_SUMMARY_KEYS = {
    "method": False,
    "model": False,
    "data": False,
    "test_accuracy": True,
    "val_accuracy": True,
    "compression_rate": True,
    "compression_rate_conv": True,
    "compression_rate_model": True,
    "time_s": True,
    "epochs": True,
    "ranks": False,
}


def format_summary_table(summary: Mapping[str, Any]) -> str:
    """Text table of a summary: accuracy, compression, time and the ranks of each layer.

    ``summary`` is a dict as :func:`tuckerflow.train.train` returns it; a missing key, a
    non-numeric accuracy, rate, time or epoch count, or ``ranks`` that is not a dict of rank
    lists is a ``ValueError``/``TypeError`` naming it.
    """
    if not isinstance(summary, Mapping):
        raise TypeError(
            f"summary must be a dict (as train returns it), got {type(summary).__name__}"
        )
    missing = [key for key in _SUMMARY_KEYS if key not in summary]
    if missing:
        raise ValueError(f"summary lacks the key(s) {missing}")
    for key, numeric in _SUMMARY_KEYS.items():
        value = summary[key]
        if numeric and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise TypeError(f"summary[{key!r}]={value!r} must be a number")
    if not isinstance(summary["ranks"], Mapping):
        raise TypeError(
            f"summary['ranks'] must be a dict {{layer: ranks}}, got {summary['ranks']!r}"
        )
    for name, ranks in summary["ranks"].items():
        if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence):
            raise TypeError(f"summary['ranks'][{name!r}]={ranks!r} must be a list of ranks")
    lines = [
        f"method          {summary['method']}  (model {summary['model']}, data {summary['data']})",
        f"test accuracy   {100 * summary['test_accuracy']:.2f} %",
        f"val accuracy    {100 * summary['val_accuracy']:.2f} %",
        f"compression     {100 * summary['compression_rate']:.1f} % (conv+linear layers), "
        f"{100 * summary['compression_rate_conv']:.1f} % (conv only), "
        f"{100 * summary['compression_rate_model']:.1f} % (whole model)",
        f"time            {summary['time_s']:.1f} s ({summary['epochs']} epochs)",
        "",
        f"{'layer':<24}{'ranks':<24}",
    ]
    for name, ranks in summary["ranks"].items():
        kind = "tucker" if name in summary.get("tucker_layers", []) else "dense"
        lines.append(f"{name:<24}{str(tuple(ranks)):<24}{kind}")
    return "\n".join(lines)
