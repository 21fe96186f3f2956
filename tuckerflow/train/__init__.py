"""The training job: data sets, model builders and the TDLRT training loop (needs PyTorch).

``tuckerflow train`` on the command line and :func:`tuckerflow.train.train` in Python run the same
code: load a data set, build a network, optionally make its layers Tucker layers, train, and
write a summary, a figure and checkpoints.

The package is laid out by concept: :mod:`~tuckerflow.train.config` (the options, torch-free),
:mod:`~tuckerflow.train.data`, :mod:`~tuckerflow.train.models`,
:mod:`~tuckerflow.train.build` (device, network, optimizer), :mod:`~tuckerflow.train.loop`,
:mod:`~tuckerflow.train.divergence`, :mod:`~tuckerflow.train.checkpoint` and
:mod:`~tuckerflow.train.atomic`, :mod:`~tuckerflow.train.report`,
:mod:`~tuckerflow.train.plot` and :mod:`~tuckerflow.train.dependencies`. The names below are
imported on first use, so that the torch-free parts (the options, the data) load without
PyTorch.
"""

from __future__ import annotations

import importlib

from tuckerflow.train.dependencies import PACKAGES, MissingDependencyError

#: Public name -> submodule that defines it.
_EXPORTS = {
    "DATASETS": "data",
    "DataSplits": "data",
    "arrays_from_dataset": "data",
    "check_labels": "data",
    "data_digest": "data",
    "load_dataset": "data",
    "load_npz": "data",
    "split_dataset": "data",
    "standardize": "data",
    "METHODS": "config",
    "OPTIMIZERS": "config",
    "TrainConfig": "config",
    "MissingDependencyError": "dependencies",
    "TrainingDiverged": "divergence",
    "atomic_save": "atomic",
    "CHECKPOINT_NAME": "checkpoint",
    "content_digest": "checkpoint",
    "load_checkpoint": "checkpoint",
    "model_fingerprint": "checkpoint",
    "compression_report": "report",
    "format_summary_table": "report",
    "layer_ranks": "report",
    "tucker_layers": "report",
    "plot_history": "plot",
    "evaluate": "loop",
    "execute": "loop",
    "prepare": "loop",
    "Run": "loop",
    "train": "loop",
    "MODELS": "models",
    "build_model": "models",
    "lenet5": "models",
    "resnet18": "models",
    "vgg_small": "models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
    except ModuleNotFoundError as err:
        # e.g. torch missing: say which extra brings it, as the command line does
        if err.name not in PACKAGES:
            raise
        package, extra = PACKAGES[err.name]
        raise MissingDependencyError(
            f"tuckerflow.train.{name} needs {package}, not installed: "
            f"pip install 'tuckerflow[{extra}]'",
            name=err.name,
        ) from err
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
