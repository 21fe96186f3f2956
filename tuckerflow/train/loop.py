"""The training job: configuration, training loop, evaluation, checkpoints and summaries.

One call, :func:`train`, loads the data, builds the network, optionally replaces its layers by
Tucker layers (fixed rank or rank-adaptive TDLRT), trains, evaluates on the held-out test part and
writes ``summary.json``, ``training.png`` and an atomic ``checkpoint.pt`` into the output folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from tuckerflow.train.data import load_dataset, split_dataset
from tuckerflow.train.models import MODELS, build_model, layer_parameter_counts

__all__ = [
    "CHECKPOINT_NAME",
    "METHODS",
    "OPTIMIZERS",
    "TrainConfig",
    "TrainingDiverged",
    "atomic_save",
    "compression_report",
    "evaluate",
    "layer_ranks",
    "load_checkpoint",
    "model_fingerprint",
    "plot_history",
    "train",
]

METHODS = ("dense", "tucker-fixed", "tdlrt")
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
CHECKPOINT_NAME = "checkpoint.pt"
SUMMARY_NAME = "summary.json"
FIGURE_NAME = "training.png"
_CHECKPOINT_FORMAT = 1


class TrainingDiverged(FloatingPointError):
    """A training step met a NaN/Inf loss or gradient; the step was not taken.

    The model and optimizer are left as they were before the step, and the checkpoint of the
    last completed epoch (if ``out`` was given) is kept.
    """


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
    freeze_after : int or None
        TDLRT only: freeze the ranks after this many epochs (fixed-rank steps for a final
        fine-tuning phase); None never freezes.
    factorize : str
        Which layers become Tucker layers: ``"all-but-last"`` (every ``Conv*d``/``Linear``
        except the classifier), ``"all"`` or ``"conv"``.
    seed : int
        Seeds the initialization, the batch order and (unless ``split_seed`` is given) the
        held-out split.
    split_seed : int or None
        Seed of the held-out split alone (to compare initializations on one split).
    val_fraction, test_fraction : float
        Held-out shares of the data.
    out : str or None
        Output folder; None writes nothing.
    resume : bool or str
        Continue from ``out/checkpoint.pt`` (True) or from the given checkpoint path.
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
    """

    data: str = "mnist5k"
    model: str = "lenet5"
    method: str = "dense"
    tau: float = 0.1
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    optimizer: str = "momentum"
    scheduler: str = "none"
    rank: float | int = 32
    ranks: dict | None = None
    min_rank: int = 1
    max_rank: int | None = None
    tdlrt_mode: str = "one-pass"
    freeze_after: int | None = None
    factorize: str = "all-but-last"
    seed: int = 0
    split_seed: int | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    out: str | None = None
    resume: bool | str = False
    overwrite: bool = False
    device: str = "auto"
    autocast: str = "none"
    threads: int | None = None
    quiet: bool = False
    extra: dict = field(default_factory=dict)

    def validate(self):
        """Raise ValueError naming the first invalid option; returns self."""
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not one of {list(METHODS)}")
        if self.model not in MODELS:
            raise ValueError(f"model={self.model!r} is not one of {sorted(MODELS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} is not one of {list(OPTIMIZERS)}")
        if self.scheduler not in ("none", "cosine"):
            raise ValueError(f"scheduler={self.scheduler!r} is not one of ['none', 'cosine']")
        if not (isinstance(self.tau, (int, float)) and 0.0 < self.tau < 1.0):
            raise ValueError(f"tau={self.tau} must lie in the open interval (0, 1)")
        if int(self.epochs) != self.epochs or self.epochs < 1:
            raise ValueError(f"epochs={self.epochs} must be a positive integer")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be a positive integer")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr={self.lr} must be a positive finite number")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum={self.momentum} must lie in [0, 1)")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay} must be non-negative")
        if isinstance(self.rank, float) and not 0.0 < self.rank <= 1.0:
            raise ValueError(f"rank={self.rank} as a fraction must lie in (0, 1]")
        if isinstance(self.rank, int) and self.rank < 1:
            raise ValueError(f"rank={self.rank} as an integer must be at least 1")
        if self.min_rank < 1:
            raise ValueError(f"min_rank={self.min_rank} must be at least 1")
        if self.max_rank is not None and self.max_rank < self.min_rank:
            raise ValueError(f"max_rank={self.max_rank} is below min_rank={self.min_rank}")
        if self.freeze_after is not None and self.freeze_after < 0:
            raise ValueError(f"freeze_after={self.freeze_after} must be non-negative")
        if self.tdlrt_mode not in ("one-pass", "two-pass"):
            raise ValueError(f"tdlrt_mode={self.tdlrt_mode!r} is not 'one-pass' or 'two-pass'")
        if self.factorize not in ("all-but-last", "all", "conv"):
            raise ValueError(
                f"factorize={self.factorize!r} is not one of ['all-but-last', 'all', 'conv']"
            )
        if self.autocast not in ("none", "bf16"):
            raise ValueError(f"autocast={self.autocast!r} is not one of ['none', 'bf16']")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads={self.threads} must be at least 1")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other")
        if self.resume is True and self.out is None:
            raise ValueError("resume=True needs out (the folder holding checkpoint.pt)")
        return self

    def to_dict(self):
        """JSON-able dict of the options (per-layer ranks as lists)."""
        d = dataclasses.asdict(self)
        if self.ranks is not None:
            d["ranks"] = {k: list(v) for k, v in self.ranks.items()}
        return d


# --------------------------------------------------------------------------- model set-up


def _resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} requested but CUDA is not available")
    return device


def _factorizable_names(model, policy):
    """Names of the modules that become Tucker layers under ``policy``."""
    counts = layer_parameter_counts(model)
    names = [name for name, (kind, _) in counts.items() if policy != "conv" or kind == "conv"]
    if policy == "all-but-last" and names:
        last = list(counts)[-1]
        names = [name for name in names if name != last]
    return names


def _tuckerize(model, config, names):
    """Replace the modules ``names`` by Tucker layers initialised from scratch."""
    from tuckerflow.nn import tuckerize

    per_layer = dict(config.ranks or {})
    unknown = sorted(set(per_layer) - set(names))
    if unknown:
        raise ValueError(f"ranks names {unknown}, which are not factorized layers ({names})")
    shared = [name for name in names if name not in per_layer]
    if shared:
        model, _ = tuckerize(model, filter=shared, rank=config.rank, init="random")
    for name, rank in per_layer.items():
        model, _ = tuckerize(model, filter=[name], rank=tuple(rank), init="random")
    return model


def tucker_layers(model):
    """``{name: layer}`` of the Tucker layers of ``model`` (empty for dense models)."""
    try:
        from tuckerflow.nn import TuckerLayer
    except ImportError:  # the nn package is optional for dense training
        return {}
    return {n: m for n, m in model.named_modules() if isinstance(m, TuckerLayer)}


def layer_ranks(model):
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


def compression_report(dense_counts, model, dense_total):
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


def _make_optimizer(config, parameters):
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "momentum":
        return torch.optim.SGD(
            parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)


def model_fingerprint(config, dense_model, input_shape, num_classes):
    """Identity of a run's network: architecture, method and data geometry.

    Two runs with the same fingerprint can exchange checkpoints; anything else (options such as
    the learning rate or the number of epochs) may change on resume.
    """
    identity = {
        "model": config.model,
        "method": config.method,
        "input_shape": [int(v) for v in input_shape],
        "num_classes": int(num_classes),
        "factorize": config.factorize if config.method != "dense" else None,
        "architecture": hashlib.sha256(repr(dense_model).encode()).hexdigest()[:16],
    }
    return identity


# --------------------------------------------------------------------------- checkpoints


def _default_file_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_save(obj, path):
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` onto ``path``.

    A reader sees either the previous file or the complete new one, never a partial write.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write_text(text, path):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path, fingerprint, *, map_location="cpu"):
    """Load a checkpoint and check it was written for the network described by ``fingerprint``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a tuckerflow checkpoint or was written for another model, method or
        data geometry; the message lists the differing entries.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"resume checkpoint {path!r} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not ours"
        raise ValueError(f"{path} is not a readable tuckerflow checkpoint: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a tuckerflow training checkpoint")
    saved = payload["fingerprint"]
    differing = {k: (saved.get(k), v) for k, v in fingerprint.items() if saved.get(k) != v}
    if differing:
        details = ", ".join(
            f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in differing.items()
        )
        raise ValueError(
            f"checkpoint {path} was written for another model ({details}); nothing was changed"
        )
    return payload


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model, x, y, *, batch_size=512):
    """Mean cross-entropy loss and accuracy of ``model`` on tensors ``x``, ``y``."""
    was_training = model.training
    model.eval()
    total_loss = 0.0
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        total_loss += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(dim=1) == target).sum())
    model.train(was_training)
    n = max(len(y), 1)
    return total_loss / n, correct / n


# --------------------------------------------------------------------------- plots and tables


def plot_history(history, path, *, title=None):
    """Write a PNG with accuracy (train/validation) and the ranks of each layer per epoch."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig, (ax_acc, ax_rank) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=90)
    trained = [h for h in history if h["epoch"] > 0]
    ax_acc.plot(
        [h["epoch"] for h in trained], [100 * h["train_accuracy"] for h in trained], label="train"
    )
    ax_acc.plot(epochs, [100 * h["val_accuracy"] for h in history], label="validation")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend(loc="lower right")
    ax_acc.grid(alpha=0.3)
    layers = list(history[-1]["ranks"]) if history else []
    cmap = plt.get_cmap("tab10")
    for k, name in enumerate(layers[:10]):
        for mode, style in ((0, "-"), (1, "--")):
            values = [h["ranks"][name][mode] for h in history]
            label = f"{name or 'model'} r{mode}" if mode == 0 else None
            ax_rank.plot(epochs, values, style, color=cmap(k % 10), label=label)
    ax_rank.set_xlabel("epoch")
    ax_rank.set_ylabel("rank (solid: mode 0, dashed: mode 1)")
    ax_rank.set_yscale("log")
    if layers:
        ax_rank.legend(fontsize=7, loc="upper right")
    ax_rank.grid(alpha=0.3)
    for ax in (ax_acc, ax_rank):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_summary_table(summary):
    """Text table of a summary: accuracy, compression, time and the ranks of each layer."""
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


# --------------------------------------------------------------------------- the loop


def _autocast(kind, device):
    import contextlib

    if kind == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _progress(iterable, *, total, desc, disable):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False, unit="batch")


def _prepare_output(config):
    """Check the output folder before anything is written; returns the checkpoint to resume."""
    resume_path = None
    if config.resume:
        resume_path = (
            os.path.join(config.out, CHECKPOINT_NAME) if config.resume is True else config.resume
        )
        if not os.path.isfile(resume_path):
            raise FileNotFoundError(f"resume checkpoint {resume_path!r} does not exist")
    if config.out is not None:
        existing = os.path.join(config.out, CHECKPOINT_NAME)
        if os.path.exists(existing) and not (config.resume or config.overwrite):
            raise FileExistsError(
                f"{existing} exists; resume it (--resume) or start over (--overwrite)"
            )
    return resume_path


def train(config, *, transform=None):
    """Train a network as described by ``config`` and return its summary.

    Parameters
    ----------
    config : TrainConfig
        The run (see :class:`TrainConfig`); validated first, before anything is written.
    transform : callable, optional
        ``transform(model) -> model`` applied to the freshly built dense network before
        training (with ``method="dense"`` only), e.g. to train a baseline whose layers some
        other library factorizes. Compression is measured against the network before it.

    Returns
    -------
    dict
        The content of ``summary.json``: ``test_accuracy``, ``val_accuracy``, ``test_loss``,
        ``compression_rate`` (all ``Conv*d``/``Linear`` weights), ``compression_rate_conv``,
        ``compression_rate_model``, ``ranks`` (per layer), ``time_s``, ``history`` (per epoch:
        losses, accuracies, ranks) and the options.

    Notes
    -----
    With ``method="tdlrt"`` every optimizer step is one step of the rank-adaptive BUG
    integrator applied to the gradient flow of the loss (Zangrando et al. 2024): basis
    augmentation, a Galerkin step on the augmented core, and truncation of the core with
    relative tolerance ``tau``. The plain optimizer of the other methods also moves all other
    parameters (biases, normalisation layers).

    References
    ----------
    .. [1] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco, "Geometry-aware training
       of factorized layers in tensor Tucker format", NeurIPS 2024, arXiv:2305.19059.
    """
    threads = torch.get_num_threads()
    if config.threads is not None:
        config.validate()
        torch.set_num_threads(config.threads)
    try:
        return _train(config, transform)
    finally:
        torch.set_num_threads(threads)


def _train(config, transform):
    config.validate()
    resume_path = _prepare_output(config)
    device = _resolve_device(config.device)

    x, y = load_dataset(config.data)
    splits = split_dataset(
        x,
        y,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed if config.split_seed is None else config.split_seed,
        name=str(config.data),
    )
    torch.manual_seed(config.seed)
    model = build_model(config.model, splits.input_shape, splits.num_classes)
    dense_counts = layer_parameter_counts(model)
    dense_total = sum(p.numel() for p in model.parameters())
    fingerprint = model_fingerprint(config, model, splits.input_shape, splits.num_classes)

    fingerprint["transform"] = None
    if transform is not None:
        if config.method != "dense":
            raise ValueError(f"transform needs method='dense', got method={config.method!r}")
        fingerprint["transform"] = getattr(transform, "__name__", type(transform).__name__)
    payload = None
    if resume_path is not None:
        payload = load_checkpoint(resume_path, fingerprint)
    if transform is not None:
        model = transform(model)
    factorized = []
    if config.method != "dense":
        factorized = _factorizable_names(model, config.factorize)
        model = _tuckerize(model, config, factorized)
    model = model.to(device)
    optimizer = _make_optimizer(config, model.parameters())
    tdlrt = None
    if config.method == "tdlrt":
        from tuckerflow.optim import TDLRT

        tdlrt = TDLRT(
            model,
            optimizer,
            tau=config.tau,
            min_rank=config.min_rank,
            max_rank=config.max_rank,
            mode=config.tdlrt_mode,
        )
    steps_per_epoch = math.ceil(len(splits.y_train) / config.batch_size)
    scheduler = None
    if config.scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.epochs * steps_per_epoch
        )

    x_train = torch.from_numpy(splits.x_train).to(device)
    y_train = torch.from_numpy(splits.y_train).to(device)
    x_val = torch.from_numpy(splits.x_val).to(device)
    y_val = torch.from_numpy(splits.y_val).to(device)
    x_test = torch.from_numpy(splits.x_test).to(device)
    y_test = torch.from_numpy(splits.y_test).to(device)
    batch_order = torch.Generator().manual_seed(config.seed)

    history = []
    start_epoch = 0
    elapsed = 0.0
    if payload is not None:
        # Tucker layers take the stored ranks while loading; TDLRT's state holds the base
        # optimizer's state (carried across the rank changes).
        model.load_state_dict(payload["model"])
        if tdlrt is not None:
            tdlrt.load_state_dict(payload["tdlrt"])
        else:
            optimizer.load_state_dict(payload["optimizer"])
        if scheduler is not None and payload.get("scheduler") is not None:
            scheduler.load_state_dict(payload["scheduler"])
        batch_order.set_state(payload["batch_order"])
        torch.set_rng_state(payload["torch_rng"])
        history = list(payload["history"])
        start_epoch = int(payload["epoch"])
        elapsed = float(payload["time_s"])
    else:
        val_loss, val_acc = evaluate(model, x_val, y_val)
        history.append(
            {
                "epoch": 0,
                "train_loss": None,
                "train_accuracy": None,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "ranks": layer_ranks(model),
                "lr": optimizer.param_groups[0]["lr"],
                "time_s": 0.0,
            }
        )

    if config.out is not None:
        os.makedirs(config.out, exist_ok=True)

    for epoch in range(start_epoch + 1, config.epochs + 1):
        if tdlrt is not None and config.freeze_after is not None and epoch > config.freeze_after:
            tdlrt.freeze_ranks()
        model.train()
        tick = time.perf_counter()
        order = torch.randperm(len(y_train), generator=batch_order).to(device)
        loss_sum = 0.0
        correct = 0
        seen = 0
        batches = _progress(
            range(steps_per_epoch),
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{config.epochs}",
            disable=config.quiet,
        )
        for step in batches:
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            xb, yb = x_train[index], y_train[index]
            outputs = {}

            def closure(xb=xb, yb=yb, outputs=outputs):
                optimizer.zero_grad(set_to_none=True)
                with _autocast(config.autocast, device):
                    logits = model(xb)
                    loss = nn.functional.cross_entropy(logits.float(), yb)
                loss.backward()
                outputs.setdefault("logits", logits.detach())
                outputs.setdefault("loss", loss.detach())
                return loss

            try:
                if tdlrt is None:
                    closure()
                    if not math.isfinite(float(outputs["loss"])):
                        raise FloatingPointError("the loss is NaN or Inf")
                    optimizer.step()
                elif config.tdlrt_mode == "two-pass":
                    tdlrt.step(closure)
                else:
                    closure()
                    tdlrt.step()
            except FloatingPointError as err:  # includes TDLRT's NonFiniteGradientError
                kept = (
                    f"; {os.path.join(config.out, CHECKPOINT_NAME)} holds epoch {epoch - 1}"
                    if config.out is not None and epoch > 1
                    else ""
                )
                reason = str(err).split(";")[0]  # the cause, without TDLRT's API advice
                raise TrainingDiverged(
                    f"training diverged in epoch {epoch}, step {step + 1}/{steps_per_epoch} "
                    f"(lr={optimizer.param_groups[0]['lr']:g}): {reason}, the step was not "
                    f"taken{kept}; try a smaller learning rate"
                ) from err
            if scheduler is not None:
                scheduler.step()
            loss_sum += float(outputs["loss"]) * len(yb)
            correct += int((outputs["logits"].argmax(dim=1) == yb).sum())
            seen += len(yb)
            if not config.quiet and step % 10 == 0:
                batches.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        elapsed += time.perf_counter() - tick
        val_loss, val_acc = evaluate(model, x_val, y_val)
        history.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum / seen,
                "train_accuracy": correct / seen,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "ranks": layer_ranks(model),
                "lr": optimizer.param_groups[0]["lr"],
                "time_s": elapsed,
            }
        )
        if not config.quiet:
            print(
                f"epoch {epoch:>3}/{config.epochs}  train loss {loss_sum / seen:.4f}  "
                f"train acc {100 * correct / seen:6.2f} %  val acc {100 * val_acc:6.2f} %  "
                f"{elapsed:7.1f} s",
                flush=True,
            )
        if config.out is not None:
            atomic_save(
                {
                    "format": _CHECKPOINT_FORMAT,
                    "fingerprint": fingerprint,
                    "config": json.loads(json.dumps(config.to_dict())),
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict() if tdlrt is None else None,
                    "tdlrt": tdlrt.state_dict() if tdlrt is not None else None,
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "batch_order": batch_order.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "history": history,
                    "time_s": elapsed,
                },
                os.path.join(config.out, CHECKPOINT_NAME),
            )

    test_loss, test_acc = evaluate(model, x_test, y_test)
    summary = {
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "val_accuracy": history[-1]["val_accuracy"],
        **compression_report(dense_counts, model, dense_total),
        "ranks": layer_ranks(model),
        "tucker_layers": sorted(tucker_layers(model)),
        "time_s": elapsed,
        "time_per_epoch_s": elapsed / max(len(history) - 1, 1),
        "epochs": config.epochs,
        "method": config.method,
        "model": config.model,
        "data": str(config.data),
        "split_sizes": splits.sizes(),
        "seed": config.seed,
        "tau": config.tau if config.method == "tdlrt" else None,
        "device": str(device),
        "config": config.to_dict(),
        "history": history,
    }
    if config.out is not None:
        _atomic_write_text(
            json.dumps(summary, indent=2, allow_nan=False), os.path.join(config.out, SUMMARY_NAME)
        )
        plot_history(
            history,
            os.path.join(config.out, FIGURE_NAME),
            title=f"{config.model} / {config.data}: {config.method}",
        )
    return summary
