"""The options of a training run, their defaults, their command-line form and their resume rule.

Everything about an option lives in its field of :class:`TrainConfig`: the default, the help
text and argparse settings of its ``tuckerflow train`` flag (``--batch-size`` for
``batch_size``), and whether a resumed run may change it. :mod:`tuckerflow.cli` builds its
parser from these fields, so a default is written once. This module imports neither torch nor
NumPy: ``tuckerflow --help`` stays light.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "AUTOCAST",
    "FACTORIZE",
    "GROUPS",
    "METHODS",
    "MODEL_NAMES",
    "OPTIMIZERS",
    "RESUME_RULES",
    "SCHEDULERS",
    "TDLRT_MODES",
    "TrainConfig",
    "cli_fields",
    "resolve_freeze_after",
]

METHODS = ("dense", "tucker-fixed", "tdlrt")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
SCHEDULERS = ("none", "cosine")
#: Names of :data:`tuckerflow.train.models.MODELS` (kept here so that the parser needs no torch).
MODEL_NAMES = ("lenet5", "resnet18", "vgg_small")
TDLRT_MODES = ("one-pass", "two-pass")
FACTORIZE = ("all-but-last", "all", "conv")
AUTOCAST = ("none", "bf16")

#: Argument groups of ``tuckerflow train --help``, in this order.
GROUPS = ("data and model", "optimization", "Tucker layers", "run")

#: What a resumed run may do with an option (the ``resume`` entry of a field's metadata):
#: ``"fixed"``: must equal the checkpoint's value; ``"free"``: may change;
#: ``"extend"``: may grow (``epochs``: at least the completed epochs, and fixed under a
#: cosine schedule, which spans all epochs); ``"future"``: may change where it acts only on
#: epochs not yet run (``freeze_after``).
RESUME_RULES = ("fixed", "free", "extend", "future")


def _parse_rank(text):
    """``0.25`` → fraction of each mode size, ``8`` → integer cap per mode."""
    try:
        return float(text) if any(c in text for c in ".eEnN") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"rank={text!r} must be a fraction in (0, 1] (e.g. 0.25) or an integer (e.g. 8)"
        ) from None


def _parse_tau(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"tau={text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"tau={value} must lie in the open interval (0, 1)")
    return value


def _parse_update_every(text):
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"update_every={text!r} must be 'auto' or an integer of at least 1"
        )
    return value


def _parse_freeze_after(text):
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"freeze_after={text!r} must be 'auto' or a non-negative number of epochs"
        )
    return value


def resolve_freeze_after(freeze_after, epochs):
    """Epochs of rank-adaptive training before the ranks freeze (None: never).

    ``"auto"``: the first ``⌈0.8 · epochs⌉`` epochs adapt, the rest fine-tune at fixed ranks
    (None for a run of one epoch).
    """
    if freeze_after != "auto":
        return freeze_after
    adaptive = math.ceil(round(0.8 * epochs, 9))
    return adaptive if adaptive < epochs else None


def _option(group, help, *, resume="fixed", cli=True, **argparse_kwargs):
    """Metadata of a :class:`TrainConfig` field: its flag's group, help and argparse kwargs."""
    assert group in GROUPS and resume in RESUME_RULES
    return {"group": group, "help": help, "resume": resume, "cli": cli, "argparse": argparse_kwargs}


@dataclass
class TrainConfig:
    """Everything that defines a training run (the CLI options of ``tuckerflow train``).

    Attributes
    ----------
    data : str
        ``"mnist5k"``, ``"digits"`` or a path to an ``.npz`` file (see
        :func:`tuckerflow.train.data.load_dataset`).
    model : str
        ``"lenet5"``, ``"vgg_small"`` or ``"resnet18"``.
    method : str
        ``"dense"`` (the network as built), ``"tucker-fixed"`` (Tucker layers at a fixed rank
        whose core and factors the optimizer trains directly) or ``"tdlrt"`` (Tucker layers
        trained by :class:`tuckerflow.optim.TDLRT`, rank-adaptive).
    tau : float
        Relative truncation tolerance of TDLRT, in (0, 1).
    epochs, batch_size : int
        Passes over the training part and examples per step.
    lr, momentum, weight_decay : float
        Optimizer settings (``momentum`` is used by ``optimizer="momentum"``).
    optimizer : str
        ``"sgd"``, ``"momentum"`` (SGD with momentum), ``"adam"`` or ``"adamw"``.
    scheduler : str
        ``"none"`` or ``"cosine"`` (cosine annealing over all steps).
    rank : float or int
        Initial rank of the Tucker layers: a fraction in (0, 1] of each mode size, or an
        integer cap per mode. For ``tucker-fixed`` it is the fixed rank.
    ranks : dict or None
        Per-layer ranks ``{layer name: (r_0, r_1, …)}`` overriding ``rank`` (Python API only;
        used to train factors directly at the ranks a TDLRT run ended with).
    min_rank, max_rank : int or None
        Per-mode rank bounds of TDLRT.
    tdlrt_mode : str
        ``"one-pass"`` or ``"two-pass"`` (see :class:`tuckerflow.optim.TDLRT`).
    freeze_after : int, "auto" or None
        TDLRT only: freeze the ranks after this many epochs (fixed-rank steps for a final
        fine-tuning phase); None never freezes; ``"auto"`` (default): after
        ``⌈0.8 · epochs⌉`` epochs (:func:`resolve_freeze_after`; runs of one or two epochs
        never freeze).
    update_every : int or "auto"
        TDLRT's basis-update interval (``"auto"``: the memory length ``⌈1/(1 − β)⌉`` of the
        momentum ``β``, 1 without momentum; see :class:`tuckerflow.optim.TDLRT`).
    defer_truncation, truncation_guard, limit_truncation_rate : bool
        TDLRT's deferred truncation of new directions, its truncation guard and the guard's
        rate limit.
    truncation_budget : bool or None
        TDLRT's removal budget; None (default): on with the guard unless the rate limit is.
    small_weight_tolerance : bool
        TDLRT's small-weight tolerance (``reference_scale="default"``): a layer below the norm
        of its default initialization is truncated with ``τ · (‖Ĉ‖ / s)²``.
    init_scale : float
        Multiplier of the initial Tucker cores (``tdlrt`` and ``tucker-fixed``; 1: PyTorch's
        default variance of the dense weight).
    factorize : str
        Which layers become Tucker layers: ``"all-but-last"`` (every ``Conv*d``/``Linear``
        except the classifier), ``"all"`` or ``"conv"``.
    seed : int
        Seeds the initialization, the batch order and (unless ``split_seed`` is given) the
        held-out split.
    split_seed : int or None
        Seed of the held-out split alone (to compare initializations on one split).
    val_fraction, test_fraction : float
        Held-out shares of the data, each in [0, 1) with a sum below 1; the training job
        refuses a data set whose validation or test part would come out empty.
    out : str or None
        Output folder; None writes nothing.
    resume : bool or str
        Continue from ``out/checkpoint.pt`` (True) or from the given checkpoint (a file, or
        a folder holding ``checkpoint.pt``). The options that define the run must match the
        checkpoint; see :data:`RESUME_RULES` and the training guide.
    overwrite : bool
        Allow starting afresh in a folder that already holds a checkpoint.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, …
    autocast : str
        ``"none"`` or ``"bf16"``: forward and backward under ``torch.autocast`` in bfloat16
        (TDLRT keeps its small linear algebra in float32); evaluation stays in float32.
    threads : int or None
        CPU threads of PyTorch (``torch.set_num_threads``); None keeps PyTorch's default. One
        thread is often fastest for these small networks on a busy machine.
    quiet : bool
        No progress bars and no table.
    extra : dict
        Free-form notes stored with the options (Python API only).
    """

    data: str = field(
        default="mnist5k",
        metadata=_option(
            "data and model",
            "embedded data set (mnist5k, digits) or an .npz file with x (N×C×H×W or N×H×W) "
            "and y (N labels 0..K-1)",
        ),
    )
    model: str = field(
        default="lenet5", metadata=_option("data and model", None, choices=MODEL_NAMES)
    )
    method: str = field(
        default="dense",
        metadata=_option(
            "data and model",
            "dense network, Tucker layers trained directly at a fixed rank, or TDLRT",
            choices=METHODS,
        ),
    )
    tau: float = field(
        default=0.1,
        metadata=_option(
            "Tucker layers",
            "relative truncation tolerance of TDLRT, in (0, 1)",
            type=_parse_tau,
        ),
    )
    epochs: int = field(
        default=5,
        metadata=_option(
            "optimization", "a resumed run may raise it to continue", resume="extend", type=int
        ),
    )
    batch_size: int = field(default=64, metadata=_option("optimization", None, type=int))
    lr: float = field(default=0.05, metadata=_option("optimization", "learning rate", type=float))
    momentum: float = field(default=0.9, metadata=_option("optimization", None, type=float))
    weight_decay: float = field(default=0.0, metadata=_option("optimization", None, type=float))
    optimizer: str = field(
        default="momentum", metadata=_option("optimization", None, choices=OPTIMIZERS)
    )
    scheduler: str = field(
        default="none", metadata=_option("optimization", None, choices=SCHEDULERS)
    )
    rank: float | int = field(
        default=32,
        metadata=_option(
            "Tucker layers",
            "initial (tdlrt) or fixed (tucker-fixed) rank: fraction of each mode size (0.25) "
            "or integer cap per mode (16)",
            type=_parse_rank,
        ),
    )
    ranks: dict | None = field(default=None, metadata=_option("Tucker layers", None, cli=False))
    min_rank: int = field(
        default=1, metadata=_option("Tucker layers", "per-mode lower rank bound", type=int)
    )
    max_rank: int | None = field(
        default=None, metadata=_option("Tucker layers", "per-mode rank cap", type=int)
    )
    tdlrt_mode: str = field(
        default="one-pass",
        metadata=_option(
            "Tucker layers",
            "Galerkin gradient from the first backward pass or from a second evaluation",
            choices=TDLRT_MODES,
        ),
    )
    freeze_after: int | str | None = field(
        default="auto",
        metadata=_option(
            "Tucker layers",
            "TDLRT: fixed ranks after this many epochs (final fine-tuning phase); auto: "
            "after 80 %% of the epochs",
            resume="future",
            type=_parse_freeze_after,
            metavar="EPOCHS",
        ),
    )
    update_every: int | str = field(
        default="auto",
        metadata=_option(
            "Tucker layers",
            "TDLRT: basis update every K-th step; auto: the momentum's memory 1/(1 - momentum)",
            type=_parse_update_every,
            metavar="K",
        ),
    )
    defer_truncation: bool = field(
        default=True,
        metadata=_option(
            "Tucker layers",
            "TDLRT: judge new directions at the end of the update interval",
            action=argparse.BooleanOptionalAction,
        ),
    )
    truncation_guard: bool = field(
        default=True,
        metadata=_option(
            "Tucker layers",
            "TDLRT: a truncation keeps the weight before the update to relative accuracy tau",
            action=argparse.BooleanOptionalAction,
        ),
    )
    limit_truncation_rate: bool = field(
        default=False,
        metadata=_option(
            "Tucker layers",
            "TDLRT: a truncation removes no more of the weight than the update moved it",
            action=argparse.BooleanOptionalAction,
        ),
    )
    truncation_budget: bool | None = field(
        default=None,
        metadata=_option(
            "Tucker layers",
            "TDLRT: the truncations of a run remove no more than tau of a layer's first "
            "weight plus the distance training moved it (default: on with the truncation "
            "guard unless the rate limit is)",
            action=argparse.BooleanOptionalAction,
        ),
    )
    small_weight_tolerance: bool = field(
        default=False,
        metadata=_option(
            "Tucker layers",
            "TDLRT: a layer smaller than the norm s of its default initialization is "
            "truncated with tau * (norm / s)^2 instead of tau (leaves the small-weight "
            "saddle of a small --init-scale as the dense network does)",
            action=argparse.BooleanOptionalAction,
        ),
    )
    init_scale: float = field(
        default=1.0,
        metadata=_option(
            "Tucker layers",
            "multiplier of the initial Tucker cores (1: PyTorch's default variance)",
            type=float,
        ),
    )
    factorize: str = field(
        default="all-but-last",
        metadata=_option(
            "Tucker layers",
            "which Conv/Linear layers become Tucker layers (all-but-last: all but the classifier)",
            choices=FACTORIZE,
        ),
    )
    seed: int = field(
        default=0,
        metadata=_option("optimization", "split, initialization, batch order", type=int),
    )
    split_seed: int | None = field(
        default=None,
        metadata=_option(
            "data and model", "seed of the held-out split alone; default: --seed", type=int
        ),
    )
    val_fraction: float = field(
        default=0.1, metadata=_option("data and model", "held-out validation share", type=float)
    )
    test_fraction: float = field(
        default=0.2, metadata=_option("data and model", "held-out test share", type=float)
    )
    out: str | None = field(
        default=None,
        metadata=_option(
            "run",
            "output folder for summary.json, training.png and checkpoint.pt; "
            "default: runs/MODEL-METHOD-seedSEED",
            resume="free",
        ),
    )
    resume: bool | str = field(
        default=False,
        metadata=_option(
            "run",
            "continue from OUT/checkpoint.pt, or from the given checkpoint; the options that "
            "define the run must match it",
            resume="free",
            nargs="?",
            const=True,
            metavar="CHECKPOINT",
        ),
    )
    overwrite: bool = field(
        default=False,
        metadata=_option(
            "run",
            "start afresh in a folder holding a checkpoint",
            resume="free",
            action="store_true",
        ),
    )
    device: str = field(
        default="auto", metadata=_option("run", "auto, cpu, cuda, cuda:1, …", resume="free")
    )
    autocast: str = field(
        default="none",
        metadata=_option("run", "train under torch.autocast in bfloat16", choices=AUTOCAST),
    )
    threads: int | None = field(
        default=None, metadata=_option("run", "CPU threads of PyTorch", resume="free", type=int)
    )
    quiet: bool = field(
        default=False,
        metadata=_option(
            "run", "no progress bars and no table", resume="free", action="store_true"
        ),
    )
    extra: dict = field(
        default_factory=dict, metadata=_option("run", None, resume="free", cli=False)
    )

    def validate(self) -> TrainConfig:
        """Raise ValueError naming the first invalid option; returns self."""
        if not isinstance(self.data, (str, os.PathLike)):
            raise TypeError(f"data={self.data!r} must be a name or a path")
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not one of {list(METHODS)}")
        if self.model not in MODEL_NAMES:
            raise ValueError(f"model={self.model!r} is not one of {sorted(MODEL_NAMES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} is not one of {list(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler={self.scheduler!r} is not one of {list(SCHEDULERS)}")
        if not (isinstance(self.tau, (int, float)) and 0.0 < self.tau < 1.0):
            raise ValueError(f"tau={self.tau} must lie in the open interval (0, 1)")
        _check_int("epochs", self.epochs, 1, "a positive integer")
        _check_int("batch_size", self.batch_size, 1, "a positive integer")
        if not (_is_real(self.lr) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr={self.lr} must be a positive finite number")
        if not (_is_real(self.momentum) and 0.0 <= self.momentum < 1.0):
            raise ValueError(f"momentum={self.momentum} must lie in [0, 1)")
        if not (
            _is_real(self.weight_decay)
            and math.isfinite(self.weight_decay)
            and self.weight_decay >= 0
        ):
            raise ValueError(f"weight_decay={self.weight_decay} must be non-negative and finite")
        if isinstance(self.rank, bool) or not isinstance(self.rank, (int, float)):
            raise TypeError(f"rank={self.rank!r} must be a float fraction or an integer")
        if isinstance(self.rank, float) and not 0.0 < self.rank <= 1.0:
            raise ValueError(f"rank={self.rank} as a fraction must lie in (0, 1]")
        if isinstance(self.rank, int) and self.rank < 1:
            raise ValueError(f"rank={self.rank} as an integer must be at least 1")
        _check_int("min_rank", self.min_rank, 1, "at least 1")
        if self.max_rank is not None:
            _check_int("max_rank", self.max_rank, None, "an integer")
            if self.max_rank < self.min_rank:
                raise ValueError(f"max_rank={self.max_rank} is below min_rank={self.min_rank}")
        if self.freeze_after is not None and self.freeze_after != "auto":
            _check_int("freeze_after", self.freeze_after, 0, "non-negative (or 'auto')")
        if self.update_every != "auto":
            _check_int("update_every", self.update_every, 1, "'auto' or an integer >= 1")
        for name in (
            "defer_truncation",
            "truncation_guard",
            "limit_truncation_rate",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be True or False")
        if self.limit_truncation_rate and not self.truncation_guard:
            raise ValueError("limit_truncation_rate=True needs truncation_guard=True")
        if self.truncation_budget is not None and not isinstance(self.truncation_budget, bool):
            raise ValueError(
                f"truncation_budget={self.truncation_budget!r} must be True, False or None"
            )
        if self.truncation_budget and not self.truncation_guard:
            raise ValueError("truncation_budget=True needs truncation_guard=True")
        if self.truncation_budget and self.limit_truncation_rate:
            raise ValueError(
                "truncation_budget=True and limit_truncation_rate=True exclude each other"
            )
        if not isinstance(self.small_weight_tolerance, bool):
            raise ValueError(
                f"small_weight_tolerance={self.small_weight_tolerance!r} must be True or False"
            )
        if not (
            _is_real(self.init_scale) and math.isfinite(self.init_scale) and self.init_scale > 0
        ):
            raise ValueError(f"init_scale={self.init_scale} must be a positive finite number")
        if self.tdlrt_mode not in TDLRT_MODES:
            raise ValueError(f"tdlrt_mode={self.tdlrt_mode!r} is not 'one-pass' or 'two-pass'")
        if self.factorize not in FACTORIZE:
            raise ValueError(f"factorize={self.factorize!r} is not one of {list(FACTORIZE)}")
        for name in ("seed", "split_seed"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, 0, "an integer in [0, 2**64)")
                if value >= 2**64:
                    raise ValueError(f"{name}={value} must be an integer in [0, 2**64)")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not (_is_real(value) and 0.0 <= value < 1.0):
                raise ValueError(f"{name}={value} must lie in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction} "
                "leaves no training data"
            )
        if self.autocast not in AUTOCAST:
            raise ValueError(f"autocast={self.autocast!r} is not one of {list(AUTOCAST)}")
        if self.threads is not None:
            _check_int("threads", self.threads, 1, "at least 1")
            cpus = os.cpu_count() or 1
            if self.threads > cpus:
                raise ValueError(f"threads={self.threads} exceeds the {cpus} CPUs of this machine")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device={self.device!r} must name a device, e.g. 'cpu' or 'cuda'")
        if self.out is not None and (not isinstance(self.out, (str, os.PathLike)) or not self.out):
            raise ValueError(f"out={self.out!r} must name a folder (or be None: write nothing)")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other")
        if self.resume is True and self.out is None:
            raise ValueError("resume=True needs out (the folder holding checkpoint.pt)")
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of the options (per-layer ranks as lists)."""
        d = dataclasses.asdict(self)
        if self.ranks is not None:
            d["ranks"] = {k: list(v) for k, v in self.ranks.items()}
        return d


def _is_real(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_integer(value: Any, name: str, minimum: int | None = None) -> int:
    """``value`` as an int: an integer (Python or NumPy, not bool; ``TypeError`` otherwise,
    nothing is rounded) of at least ``minimum`` (``ValueError`` otherwise)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be an integer, not {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value} must be at least {minimum}")
    return value


def _check_int(name, value, minimum, expected):
    if isinstance(value, bool) or not isinstance(value, int):
        if not (isinstance(value, float) and value.is_integer()):
            raise ValueError(f"{name}={value!r} must be {expected}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value} must be {expected}")


def cli_fields() -> list[dataclasses.Field]:
    """The fields of :class:`TrainConfig` that are ``tuckerflow train`` options, in order."""
    return [f for f in dataclasses.fields(TrainConfig) if f.metadata["cli"]]
