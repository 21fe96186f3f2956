"""The training job: data sets, model builders and the TDLRT training loop (needs PyTorch).

``tuckerflow train`` on the command line and :func:`tuckerflow.train.train` in Python run the same
code: load a data set, build a network, optionally make its layers Tucker layers, train, and
write a summary, a figure and checkpoints.
"""

from tuckerflow.train.data import (
    DATASETS,
    DataSplits,
    arrays_from_dataset,
    load_dataset,
    load_npz,
    split_dataset,
)
from tuckerflow.train.loop import (
    METHODS,
    OPTIMIZERS,
    TrainConfig,
    TrainingDiverged,
    atomic_save,
    compression_report,
    evaluate,
    layer_ranks,
    load_checkpoint,
    model_fingerprint,
    plot_history,
    train,
)
from tuckerflow.train.models import MODELS, build_model, lenet5, resnet18, vgg_small

__all__ = [
    "DATASETS",
    "METHODS",
    "MODELS",
    "OPTIMIZERS",
    "DataSplits",
    "TrainConfig",
    "TrainingDiverged",
    "arrays_from_dataset",
    "atomic_save",
    "build_model",
    "compression_report",
    "evaluate",
    "layer_ranks",
    "lenet5",
    "load_checkpoint",
    "load_dataset",
    "load_npz",
    "model_fingerprint",
    "plot_history",
    "resnet18",
    "split_dataset",
    "train",
    "vgg_small",
]
