"""The parts of a run built from its options: device, network, optimizer, TDLRT, schedule."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from tuckerflow.nn import tuckerize
from tuckerflow.optim import TDLRT
from tuckerflow.train.models import layer_parameter_counts

if TYPE_CHECKING:
    from tuckerflow.train.config import TrainConfig

__all__ = [
    "factorizable_names",
    "make_optimizer",
    "make_scheduler",
    "make_tdlrt",
    "resolve_device",
    "tuckerize_layers",
]


#: Device types that run the training job (not e.g. "meta", which holds no data).
_TRAINING_DEVICES = frozenset({"cpu", "cuda", "mps", "xpu"})


def resolve_device(name: str) -> torch.device:
    """``torch.device`` of the option ``device``: ``"auto"`` is CUDA when available.

    Raises ValueError for a name PyTorch does not know or a CUDA device that is not there.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(
            f"device={name!r} is not a device name; expected auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type not in _TRAINING_DEVICES:
        raise ValueError(
            f"device={name!r} cannot train a network; expected auto, cpu, cuda, cuda:N, or one "
            f"of {sorted(_TRAINING_DEVICES - {'cpu', 'cuda'})} where available"
        )
    elif device.type != "cpu":
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError):
            raise ValueError(f"device={name!r} is not available on this machine") from None
    return device


def factorizable_names(model: torch.nn.Module, policy: str) -> list[str]:
    """Names of the modules that become Tucker layers under ``policy`` (option ``factorize``)."""
    counts = layer_parameter_counts(model)
    names = [name for name, (kind, _) in counts.items() if policy != "conv" or kind == "conv"]
    if policy == "all-but-last" and names:
        last = list(counts)[-1]
        names = [name for name in names if name != last]
    return names


def tuckerize_layers(
    model: torch.nn.Module, config: TrainConfig, names: Sequence[str]
) -> torch.nn.Module:
    """Replace the modules ``names`` by Tucker layers initialised from scratch at the rank
    ``config.rank``, or at ``config.ranks[name]`` where given."""
    per_layer = dict(config.ranks or {})
    unknown = sorted(set(per_layer) - set(names))
    if unknown:
        raise ValueError(f"ranks names {unknown}, which are not factorized layers ({names})")
    shared = [name for name in names if name not in per_layer]
    if shared:
        model, _ = tuckerize(model, filter=shared, rank=config.rank, init="random")
    for name, rank in per_layer.items():
        model, _ = tuckerize(model, filter=[name], rank=tuple(rank), init="random")
    if config.init_scale != 1.0:
        modules = dict(model.named_modules())
        with torch.no_grad():
            for name in names:
                modules[name].core.mul_(config.init_scale)
    return model


def make_optimizer(config: TrainConfig, parameters: Iterable[Any]) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer of the option ``optimizer``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "momentum":
        return torch.optim.SGD(
            parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)


def make_tdlrt(
    config: TrainConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> TDLRT | None:
    """TDLRT around ``optimizer`` for ``method="tdlrt"``, else None."""
    if config.method != "tdlrt":
        return None
    return TDLRT(
        model,
        optimizer,
        tau=config.tau,
        min_rank=config.min_rank,
        max_rank=config.max_rank,
        mode=config.tdlrt_mode,
        update_every=config.update_every,
        defer_truncation=config.defer_truncation,
        truncation_guard=config.truncation_guard,
        limit_truncation_rate=config.limit_truncation_rate,
        truncation_budget=config.truncation_budget,
        reference_scale="default" if config.small_weight_tolerance else None,
    )


def make_scheduler(config: TrainConfig, optimizer: Any, steps_per_epoch: int) -> Any:
    """Cosine annealing over all steps of the run, or None."""
    if config.scheduler != "cosine":
        return None
    return torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.epochs * steps_per_epoch
    )
