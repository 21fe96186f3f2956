"""Divergence: a training step that meets a NaN/Inf loss or gradient is not taken.

:func:`checked_step` takes one optimizer step (plain, or TDLRT's one-pass or two-pass form) and
raises :class:`FloatingPointError` instead of taking a step from a non-finite loss; TDLRT
raises its own subclass for a non-finite gradient and restores the layers. :func:`diverged`
turns either into the :class:`TrainingDiverged` a run stops with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["TrainingDiverged", "checked_step", "diverged"]


class TrainingDiverged(FloatingPointError):
    """A training step met a NaN/Inf loss or gradient; the step was not taken.

    The model and optimizer are left as they were before the step, and the checkpoint of the
    last completed epoch (if ``out`` was given) is kept.
    """


def checked_step(
    closure: Callable[[], Any], optimizer: Any, tdlrt: Any = None, *, two_pass: bool = False
) -> None:
    """One step: evaluate ``closure`` (loss and backward) and move the parameters.

    Without TDLRT, a non-finite loss raises :class:`FloatingPointError` before
    ``optimizer.step()``; with TDLRT, its step checks loss and gradients itself (the two-pass
    form evaluates ``closure`` inside the step).
    """
    if tdlrt is None:
        loss = closure()
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError("the loss is NaN or Inf")
        optimizer.step()
    elif two_pass:
        tdlrt.step(closure)
    else:
        closure()
        tdlrt.step()


def diverged(
    err: BaseException,
    *,
    epoch: int,
    step: int,
    steps_per_epoch: int,
    lr: float,
    checkpoint: str | None = None,
) -> TrainingDiverged:
    """The :class:`TrainingDiverged` of a step that raised ``err``.

    ``checkpoint`` names the file that holds the last completed epoch (None: nothing kept).
    """
    kept = f"; {checkpoint} holds epoch {epoch - 1}" if checkpoint is not None else ""
    reason = str(err).split(";")[0]  # the cause, without TDLRT's advice on its own API
    return TrainingDiverged(
        f"training diverged in epoch {epoch}, step {step}/{steps_per_epoch} (lr={lr:g}): "
        f"{reason}, the step was not taken{kept}; try a smaller learning rate"
    )
