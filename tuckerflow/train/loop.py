"""The training loop: one call, :func:`train`, runs a whole training job.

It loads the data, builds the network, optionally replaces its layers by Tucker layers (fixed
rank or rank-adaptive TDLRT), trains, evaluates on the held-out test part and writes
``summary.json``, ``training.png`` and an atomic, checksummed ``checkpoint.pt`` into the output
folder. Every check (options, packages, output folder, checkpoint, data) runs before anything
is written.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from tuckerflow.train.atomic import atomic_write_text, remove_stale_temporaries
from tuckerflow.train.build import (
    factorizable_names,
    make_optimizer,
    make_scheduler,
    make_tdlrt,
    resolve_device,
    tuckerize_layers,
)
from tuckerflow.train.checkpoint import (
    CHECKPOINT_NAME,
    check_fingerprint,
    check_resume_data,
    check_resume_options,
    load_checkpoint,
    model_fingerprint,
    save_checkpoint,
)
from tuckerflow.train.config import TrainConfig, check_integer, resolve_freeze_after
from tuckerflow.train.data import DataSplits, data_digest, load_dataset, split_dataset
from tuckerflow.train.dependencies import check_dependencies
from tuckerflow.train.divergence import TrainingDiverged, checked_step, diverged
from tuckerflow.train.models import build_model, layer_parameter_counts
from tuckerflow.train.plot import plot_history
from tuckerflow.train.report import check_module, compression_report, layer_ranks, tucker_layers

__all__ = [
    "SUMMARY_NAME",
    "FIGURE_NAME",
    "TrainConfig",
    "TrainingDiverged",
    "evaluate",
    "execute",
    "prepare",
    "train",
]

SUMMARY_NAME = "summary.json"
FIGURE_NAME = "training.png"


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on tensors ``x``, ``y``.

    ``y`` holds one integer class label per example of ``x``, each below the number of
    outputs of ``model``; ``batch_size`` is an integer ``≥ 1``. Raises ValueError for an
    empty set (whose accuracy is undefined, not 0), and ValueError/TypeError naming the
    argument for anything else above.
    """
    check_module(model)
    for name, value in (("x", x), ("y", y)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"evaluate: {name} must be a torch.Tensor, got {type(value).__name__}")
    batch_size = check_integer(batch_size, "batch_size", 1)
    if y.ndim != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(
            f"evaluate: y must hold integer class labels of shape (N,), got {y.dtype} of "
            f"shape {tuple(y.shape)}"
        )
    if x.ndim == 0 or len(x) != len(y):
        raise ValueError(f"evaluate: x has shape {tuple(x.shape)} but y holds {len(y)} labels")
    if len(y) == 0:
        raise ValueError("evaluate: the set holds no examples")
    was_training = model.training
    model.eval()
    total_loss = 0.0
    correct = 0
    try:
        for start in range(0, len(y), batch_size):
            logits = model(x[start : start + batch_size])
            target = y[start : start + batch_size]
            if start == 0:
                _check_outputs(logits, y)
            total_loss += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(dim=1) == target).sum())
    finally:
        # the model's mode is restored whether the evaluation finished or raised
        model.train(was_training)
    return total_loss / len(y), correct / len(y)


def _check_outputs(logits, y):
    """The model's outputs are one row of class scores per example, a score per label."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"evaluate: the model must return class scores (N, K), got {shape}")
    classes = logits.shape[1]
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        raise ValueError(
            f"evaluate: y holds labels in [{low}, {high}] but the model scores {classes} classes "
            f"(labels 0..{classes - 1})"
        )


def train(config: TrainConfig, *, transform: Callable[[Any], Any] | None = None) -> dict[str, Any]:
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

    Raises
    ------
    ValueError, TypeError
        For invalid options, data, an output folder under a file, or a checkpoint that is
        damaged, from another version, or from a run with other defining options; all
        raised by :func:`prepare`, before the first training step.
    FileNotFoundError, FileExistsError
        For a missing data file or checkpoint, or an existing checkpoint without ``resume``
        or ``overwrite``.
    tuckerflow.train.MissingDependencyError
        If a package the run needs is not installed (the message names the extra).
    TrainingDiverged
        If a step meets a NaN/Inf loss or gradient.

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
    config.validate()
    with threads_of(config):
        return execute(prepare(config, transform=transform))


@contextlib.contextmanager
def threads_of(config: TrainConfig):
    """PyTorch's CPU threads set to ``config.threads`` (when given) inside, restored after."""
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class Run:
    """A run in flight, from :func:`prepare` to :func:`execute`: its parts and where it stands."""

    config: TrainConfig
    device: torch.device
    splits: DataSplits
    tensors: dict
    model: nn.Module
    optimizer: torch.optim.Optimizer
    tdlrt: object
    scheduler: object
    steps_per_epoch: int
    batch_order: torch.Generator
    state: dict  # what the checkpoint stores besides the training state
    dense_counts: dict
    dense_total: int
    history: list = field(default_factory=list)
    epochs_done: int = 0
    elapsed: float = 0.0

    @property
    def checkpoint_path(self):
        out = self.config.out
        return None if out is None else os.path.join(out, CHECKPOINT_NAME)


def prepare(config: TrainConfig, *, transform: Callable[[Any], Any] | None = None) -> Run:
    """Everything of :func:`train` before the first training step: the checks of options,
    packages, output folder, checkpoint and data, the data loaded, the network and the
    optimizers built (and restored from the checkpoint when resuming).

    Every error the user has to fix is raised here (the exceptions of :func:`train` but
    ``TrainingDiverged``); only then is the output folder created. :func:`execute` trains.
    """
    config.validate()
    check_dependencies(config)
    if transform is not None and config.method != "dense":
        raise ValueError(f"transform needs method='dense', got method={config.method!r}")
    resume_path = _prepare_output(config)
    device = resolve_device(config.device)
    payload = None
    if resume_path is not None:
        payload = load_checkpoint(resume_path)
        check_resume_options(
            payload["config"], config, epochs_done=int(payload["epoch"]), path=resume_path
        )
    splits, digest = _load_data(config)
    if payload is not None:
        check_resume_data(
            payload["data_digest"],
            payload["config"]["data"],
            digest,
            str(config.data),
            path=resume_path,
        )
    run = _build_run(config, transform, device, splits, digest)
    if payload is not None:
        check_fingerprint(payload, run.state["fingerprint"], path=resume_path)
        _restore(run, payload)
    else:
        run.history.append(_history_entry(run, 0, None, None))
    if config.out is not None:
        os.makedirs(config.out, exist_ok=True)
        remove_stale_temporaries(config.out)
    return run


def execute(run: Run) -> dict[str, Any]:
    """Train a run that :func:`prepare` built: the remaining epochs (a checkpoint after each),
    then the test evaluation, ``summary.json`` and ``training.png``; returns the summary.

    Raises ``TrainingDiverged`` for a NaN/Inf loss or gradient, ``OSError`` where the output
    cannot be written; any other exception here is not the user's input (a fault).
    """
    config = run.config
    for epoch in range(run.epochs_done + 1, config.epochs + 1):
        _train_epoch(run, epoch)
        if config.out is not None:
            save_checkpoint(_checkpoint_state(run), run.checkpoint_path)
    return _finish(run)


def _prepare_output(config):
    """Check the output folder before anything is written; returns the checkpoint to resume."""
    resume_path = None
    if config.resume:
        resume_path = (
            os.path.join(config.out, CHECKPOINT_NAME) if config.resume is True else config.resume
        )
        resume_path = os.fspath(resume_path)
        if os.path.isdir(resume_path):
            resume_path = os.path.join(resume_path, CHECKPOINT_NAME)
        if not os.path.isfile(resume_path):
            raise FileNotFoundError(f"resume checkpoint {resume_path!r} does not exist")
    if config.out is not None:
        _check_folder(os.fspath(config.out))
        existing = os.path.join(config.out, CHECKPOINT_NAME)
        if os.path.exists(existing) and not (config.resume or config.overwrite):
            raise FileExistsError(
                f"{existing} exists; resume it (--resume) or start over (--overwrite)"
            )
    return resume_path


def _check_folder(out):
    """``out`` is, or can become, a writable folder: no part of it is a file."""
    probe = os.path.abspath(out)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"out={out!r} cannot be a folder: {probe!r} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"out={out!r}: the folder {probe!r} is not writable")


def _load_data(config):
    """The split data set and the digest of its content."""
    x, y = load_dataset(config.data)
    splits = split_dataset(
        x,
        y,
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        seed=config.seed if config.split_seed is None else config.split_seed,
        name=str(config.data),
        require_all_parts=True,
    )
    return splits, data_digest(x, y)


def _build_run(config, transform, device, splits, digest):
    torch.manual_seed(config.seed)
    model = build_model(config.model, splits.input_shape, splits.num_classes)
    dense_counts = layer_parameter_counts(model)
    dense_total = sum(p.numel() for p in model.parameters())
    fingerprint = model_fingerprint(config, model, splits.input_shape, splits.num_classes)
    fingerprint["transform"] = None
    if transform is not None:
        fingerprint["transform"] = getattr(transform, "__name__", type(transform).__name__)
        model = transform(model)
    if config.method != "dense":
        model = tuckerize_layers(model, config, factorizable_names(model, config.factorize))
    model = model.to(device)
    optimizer = make_optimizer(config, model.parameters())
    tdlrt = make_tdlrt(config, model, optimizer)
    steps_per_epoch = math.ceil(len(splits.y_train) / config.batch_size)
    names = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
    return Run(
        config=config,
        device=device,
        splits=splits,
        tensors={k: torch.from_numpy(getattr(splits, k)).to(device) for k in names},
        model=model,
        optimizer=optimizer,
        tdlrt=tdlrt,
        scheduler=make_scheduler(config, optimizer, steps_per_epoch),
        steps_per_epoch=steps_per_epoch,
        batch_order=torch.Generator().manual_seed(config.seed),
        state={"fingerprint": fingerprint, "data_digest": digest},
        dense_counts=dense_counts,
        dense_total=dense_total,
    )


def _checkpoint_state(run):
    cuda = run.device.type == "cuda"
    return {
        **run.state,
        "config": json.loads(json.dumps(run.config.to_dict())),
        "epoch": run.epochs_done,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict() if run.tdlrt is None else None,
        "tdlrt": run.tdlrt.state_dict() if run.tdlrt is not None else None,
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "batch_order": run.batch_order.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(run.device) if cuda else None,
        "history": run.history,
        "time_s": run.elapsed,
    }


def _restore(run, payload):
    """Continue from a verified checkpoint: model, optimizer, schedule, RNG states, history."""
    # Tucker layers take the stored ranks while loading; TDLRT's state holds the base
    # optimizer's state (carried across the rank changes).
    run.model.load_state_dict(payload["model"])
    # Optimizer.load_state_dict replaces the param-group dicts, but TDLRT reads the learning
    # rate from the dicts it was built with: load the values into those dicts instead, so
    # that a schedule's learning rate reaches TDLRT after resume too.
    groups = list(run.optimizer.param_groups)
    if run.tdlrt is not None:
        run.tdlrt.load_state_dict(payload["tdlrt"])
    else:
        run.optimizer.load_state_dict(payload["optimizer"])
    for group, loaded in zip(groups, run.optimizer.param_groups):
        group.update(loaded)
    run.optimizer.param_groups[:] = groups
    if run.scheduler is not None:
        run.scheduler.load_state_dict(payload["scheduler"])
    run.batch_order.set_state(payload["batch_order"])
    torch.set_rng_state(payload["torch_rng"])
    if run.device.type == "cuda" and payload.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(payload["cuda_rng"], run.device)
    run.history = list(payload["history"])
    run.epochs_done = int(payload["epoch"])
    run.elapsed = float(payload["time_s"])


def _history_entry(run, epoch, train_loss, train_accuracy):
    val_loss, val_accuracy = evaluate(run.model, run.tensors["x_val"], run.tensors["y_val"])
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "train_accuracy": train_accuracy,
        "val_loss": val_loss,
        "val_accuracy": val_accuracy,
        "ranks": layer_ranks(run.model),
        "lr": run.optimizer.param_groups[0]["lr"],
        "time_s": run.elapsed,
    }


def _autocast(kind, device):
    if kind == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _train_epoch(run, epoch):
    """One pass over the training part in the order drawn from the run's batch generator."""
    config, model, optimizer = run.config, run.model, run.optimizer
    freeze_after = resolve_freeze_after(config.freeze_after, config.epochs)
    if run.tdlrt is not None and freeze_after is not None and epoch > freeze_after:
        run.tdlrt.freeze_ranks()
    model.train()
    tick = time.perf_counter()
    x_train, y_train = run.tensors["x_train"], run.tensors["y_train"]
    order = torch.randperm(len(y_train), generator=run.batch_order).to(run.device)
    loss_sum = 0.0
    correct = 0
    seen = 0
    steps = run.steps_per_epoch
    batches = tqdm(
        range(steps),
        total=steps,
        desc=f"epoch {epoch}/{config.epochs}",
        disable=config.quiet,
        leave=False,
        unit="batch",
    )
    for step in batches:
        index = order[step * config.batch_size : (step + 1) * config.batch_size]
        xb, yb = x_train[index], y_train[index]
        outputs: dict[str, Any] = {}

        def closure(xb=xb, yb=yb, outputs=outputs):
            optimizer.zero_grad(set_to_none=True)
            with _autocast(config.autocast, run.device):
                logits = model(xb)
                loss = nn.functional.cross_entropy(logits.float(), yb)
            loss.backward()
            outputs.setdefault("logits", logits.detach())
            outputs.setdefault("loss", loss.detach())
            return loss

        try:
            checked_step(closure, optimizer, run.tdlrt, two_pass=config.tdlrt_mode == "two-pass")
        except FloatingPointError as err:  # includes TDLRT's NonFiniteGradientError
            kept = run.checkpoint_path if run.epochs_done > 0 else None
            raise diverged(
                err,
                epoch=epoch,
                step=step + 1,
                steps_per_epoch=steps,
                lr=optimizer.param_groups[0]["lr"],
                checkpoint=kept,
            ) from err
        if run.scheduler is not None:
            run.scheduler.step()
        loss_sum += float(outputs["loss"]) * len(yb)
        correct += int((outputs["logits"].argmax(dim=1) == yb).sum())
        seen += len(yb)
        if not config.quiet and step % 10 == 0:
            batches.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
    if run.tdlrt is not None:
        # an epoch may end inside an update interval: the epoch's ranks (history, checkpoint,
        # evaluation) are those after the truncation that the interval holds back
        run.tdlrt.apply_pending_truncation()
    run.elapsed += time.perf_counter() - tick
    run.epochs_done = epoch
    entry = _history_entry(run, epoch, loss_sum / seen, correct / seen)
    run.history.append(entry)
    if not config.quiet:
        print(
            f"epoch {epoch:>3}/{config.epochs}  train loss {loss_sum / seen:.4f}  "
            f"train acc {100 * correct / seen:6.2f} %  val acc {100 * entry['val_accuracy']:6.2f} %"
            f"  {run.elapsed:7.1f} s",
            flush=True,
        )


def _finish(run):
    """Evaluate on the test part; write ``summary.json`` and ``training.png``; the summary."""
    config, model = run.config, run.model
    test_loss, test_acc = evaluate(model, run.tensors["x_test"], run.tensors["y_test"])
    summary = {
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "val_accuracy": run.history[-1]["val_accuracy"],
        **compression_report(run.dense_counts, model, run.dense_total),
        "ranks": layer_ranks(model),
        "tucker_layers": sorted(tucker_layers(model)),
        "time_s": run.elapsed,
        "time_per_epoch_s": run.elapsed / max(len(run.history) - 1, 1),
        "epochs": config.epochs,
        "method": config.method,
        "model": config.model,
        "data": str(config.data),
        "split_sizes": run.splits.sizes(),
        "seed": config.seed,
        "tau": config.tau if config.method == "tdlrt" else None,
        "device": str(run.device),
        "config": config.to_dict(),
        "history": run.history,
    }
    if config.out is not None:
        atomic_write_text(
            json.dumps(summary, indent=2, allow_nan=False), os.path.join(config.out, SUMMARY_NAME)
        )
        plot_history(
            run.history,
            os.path.join(config.out, FIGURE_NAME),
            title=f"{config.model} / {config.data}: {config.method}",
        )
    return summary
