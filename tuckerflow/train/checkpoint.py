"""Checkpoints of a training run: atomic writes, a content checksum, and the rules of resume.

A checkpoint is one ``torch.save`` file (a dict, readable with
``torch.load(path, weights_only=True)``) that holds, besides the training state, the
checkpoint format, the tuckerflow version that wrote it and the SHA-256 of its content
(:func:`content_digest`). :func:`load_checkpoint` verifies all three and the network's
fingerprint; :func:`check_resume_options` compares the run's options with the checkpoint's
under the rule each option carries (:data:`tuckerflow.train.config.RESUME_RULES`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from tuckerflow import __version__
from tuckerflow.train.atomic import atomic_save
from tuckerflow.train.config import TrainConfig, check_integer, resolve_freeze_after

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "check_fingerprint",
    "check_resume_data",
    "check_resume_options",
    "content_digest",
    "load_checkpoint",
    "model_fingerprint",
    "save_checkpoint",
]

CHECKPOINT_NAME = "checkpoint.pt"
#: Version of the checkpoint layout (1: without checksum and library version).
CHECKPOINT_FORMAT = 2
_DIGEST_KEY = "sha256"


# --------------------------------------------------------------------------- checksum


def content_digest(obj: Any) -> str:
    """SHA-256 (hex) of a checkpoint's content: its nested dicts, lists, numbers, strings and
    tensors (dtype, shape and bytes), in order.

    The digest covers what :func:`torch.load` returns, not the bytes of the file: it is the
    same on every device and for every serialization of the same content, and any change of a
    value (a flipped bit in a tensor, an edited number) changes it.
    """
    digest = hashlib.sha256()
    _feed(digest, obj, "checkpoint")
    return digest.hexdigest()


def _feed(digest, obj, where):
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach().resolve_conj().resolve_neg().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, Mapping):
        digest.update(b"D%d;" % len(obj))
        for key, value in obj.items():
            _feed(digest, key, where)
            _feed(digest, value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        digest.update(b"L%d;" % len(obj) if isinstance(obj, list) else b"U%d;" % len(obj))
        for index, value in enumerate(obj):
            _feed(digest, value, f"{where}[{index}]")
    elif isinstance(obj, (set, frozenset)):  # no order: the sorted digests of the elements
        digest.update(b"E%d;" % len(obj))
        for element in sorted(content_digest(value) for value in obj):
            digest.update(element.encode())
    elif obj is None or isinstance(obj, bool):
        digest.update(f"B{obj};".encode())
    elif isinstance(obj, int):
        digest.update(f"I{obj};".encode())
    elif isinstance(obj, float):
        digest.update(b"F" + struct.pack("<d", obj))
    elif isinstance(obj, complex):
        digest.update(b"C" + struct.pack("<dd", obj.real, obj.imag))
    elif isinstance(obj, str):
        data = obj.encode("utf-8", "surrogatepass")
        digest.update(b"S%d;" % len(data) + data)
    elif isinstance(obj, (bytes, bytearray)):
        digest.update(b"Y%d;" % len(obj) + bytes(obj))
    elif isinstance(obj, (torch.dtype, torch.device)):
        digest.update(f"O{obj};".encode())
    else:
        raise TypeError(f"{where} holds a {type(obj).__name__}, which a checkpoint cannot hold")


# --------------------------------------------------------------------------- save and load


def model_fingerprint(
    config: TrainConfig,
    dense_model: torch.nn.Module,
    input_shape: Sequence[int],
    num_classes: int,
) -> dict[str, Any]:
    """Identity of a run's network: architecture, method and data geometry.

    Two runs with the same fingerprint build the same network; whether the other options may
    change on resume is decided by :func:`check_resume_options`. ``input_shape`` holds
    positive integers and ``num_classes`` is an integer ``≥ 2`` (nothing is rounded).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(dense_model, torch.nn.Module):
        raise TypeError(f"dense_model must be a torch.nn.Module, got {type(dense_model).__name__}")
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise TypeError(f"input_shape={input_shape!r} must be a sequence of positive ints")
    input_shape = [check_integer(v, f"input_shape[{i}]", 1) for i, v in enumerate(input_shape)]
    num_classes = check_integer(num_classes, "num_classes", 2)
    return {
        "model": config.model,
        "method": config.method,
        "input_shape": [int(v) for v in input_shape],
        "num_classes": int(num_classes),
        "factorize": config.factorize if config.method != "dense" else None,
        "architecture": hashlib.sha256(repr(dense_model).encode()).hexdigest()[:16],
    }


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the training state ``state`` (a dict) atomically to ``path``, with the format,
    the library version and the content checksum that :func:`load_checkpoint` verifies."""
    payload = {"format": CHECKPOINT_FORMAT, "tuckerflow_version": __version__, **state}
    payload[_DIGEST_KEY] = content_digest(payload)
    atomic_save(payload, path)


def load_checkpoint(
    path: str | os.PathLike[str],
    fingerprint: Mapping[str, Any] | None = None,
    *,
    map_location: Any = "cpu",
) -> dict[str, Any]:
    """Load a checkpoint and verify its checksum, version and (if given) network fingerprint.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file.
    fingerprint : dict, optional
        :func:`model_fingerprint` of the network that is to continue; None skips the check.
    map_location : str or torch.device
        Where the tensors go (as for :func:`torch.load`).

    Returns
    -------
    dict
        The checkpoint's content.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not a readable tuckerflow checkpoint, its content does not match its
        checksum (a damaged file), it was written by another tuckerflow version or in another
        format, or for another model, method or data geometry (the message lists the
        differing entries).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"resume checkpoint {path!r} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not ours"
        # the type only: torch's message advises weights_only=False, unsafe for such a file
        raise ValueError(
            f"{path} is not a readable tuckerflow checkpoint ({type(err).__name__})"
        ) from None
    if not isinstance(payload, dict) or "format" not in payload:
        raise ValueError(f"{path} is not a tuckerflow training checkpoint")
    if payload["format"] != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} has checkpoint format {payload['format']!r}; this tuckerflow "
            f"{__version__} reads format {CHECKPOINT_FORMAT} (with checksum): resume it with "
            "the version that wrote it, or start over with --overwrite"
        )
    stored = payload.pop(_DIGEST_KEY, None)
    try:
        actual = content_digest(payload)
    except TypeError as err:
        raise ValueError(f"{path} is not a tuckerflow training checkpoint ({err})") from None
    if stored != actual:
        raise ValueError(
            f"{path} is damaged: its content has SHA-256 {actual[:16]}…, its checksum says "
            f"{str(stored)[:16]}…; nothing was changed (start over with --overwrite, or "
            "resume from a good copy)"
        )
    version = payload.get("tuckerflow_version")
    if version != __version__:
        raise ValueError(
            f"{path} was written by tuckerflow {version}, this is {__version__}: a run "
            "continues with the version that started it (or start over with --overwrite)"
        )
    if fingerprint is not None:
        check_fingerprint(payload, fingerprint, path=path)
    return payload


# --------------------------------------------------------------------------- resume rules


def check_fingerprint(
    payload: Mapping[str, Any], fingerprint: Mapping[str, Any], *, path: str | os.PathLike[str]
) -> None:
    """Refuse a checkpoint written for another network than :func:`model_fingerprint`
    ``fingerprint`` describes; the message lists the differing entries."""
    saved = payload["fingerprint"]
    differing = {k: (saved.get(k), v) for k, v in fingerprint.items() if saved.get(k) != v}
    if differing:
        details = ", ".join(
            f"{k}: checkpoint {a!r} vs this run {b!r}" for k, (a, b) in differing.items()
        )
        raise ValueError(
            f"checkpoint {path} was written for another model ({details}); nothing was changed"
        )


def _resume_rule(name):
    return TrainConfig.__dataclass_fields__[name].metadata["resume"]


def _json(value):
    return json.loads(json.dumps(value))


#: Options added after checkpoints were first written: the value a checkpoint without the
#: entry ran with (its behaviour before the option existed).
_ADDED_OPTIONS = {"small_weight_tolerance": False}


def _same(name, saved, current):
    if name == "rank":  # 8 (a cap per mode) and 8.0 (invalid) or 1 and 1.0 differ in meaning
        return type(saved) is type(current) and saved == current
    return saved == current


def check_resume_options(
    saved: Mapping[str, Any], config: TrainConfig, *, epochs_done: int, path: str | os.PathLike[str]
) -> None:
    """Refuse to resume when ``config`` changes an option the checkpoint's run depends on.

    Parameters
    ----------
    saved : dict
        The options stored in the checkpoint (``TrainConfig.to_dict()`` of the run that wrote
        it).
    config : TrainConfig
        The options of the run that is to continue.
    epochs_done : int
        Epochs the checkpoint has completed.
    path : str
        The checkpoint, named in the message.

    Raises
    ------
    ValueError
        Listing every option that differs against its rule, with both values; nothing has been
        written when it is raised.

    Notes
    -----
    Every option is ``fixed`` unless its field says otherwise (see
    :data:`tuckerflow.train.config.RESUME_RULES`): the data (compared by content elsewhere),
    the split, the seeds, the network, the method and its Tucker options, the optimizer and
    its settings, the batch size, the schedule and autocast. ``epochs`` may grow (a finished
    run continues) but not below the completed epochs, and not under a cosine schedule,
    whose learning rates depend on the total; ``freeze_after`` may change where the epochs
    already run do not see the difference; ``out``, ``resume``, ``overwrite``, ``device``,
    ``threads``, ``quiet`` and ``extra`` are free.
    """
    current = _json(config.to_dict())
    saved = _json(dict(saved))
    identity, options = [], []
    for name, value in current.items():
        rule = _resume_rule(name)
        before = saved.get(name, _ADDED_OPTIONS.get(name))
        if rule == "free" or name == "data" or _same(name, before, value):
            continue
        entry = f"{name}: checkpoint {before!r} vs this run {value!r}"
        if rule == "extend":
            if value < epochs_done:
                options.append(f"{entry} (the checkpoint has completed {epochs_done} epochs)")
            elif current["scheduler"] == "cosine":
                options.append(f"{entry} (the cosine schedule spans all epochs)")
            continue
        if rule == "future":
            # freeze_after="auto" stands for the epoch it resolves to under each run's epochs
            past = [
                resolve_freeze_after(before, saved.get("epochs", epochs_done)),
                resolve_freeze_after(value, current["epochs"]),
            ]
            resolved = past
            past = [math.inf if v is None else v for v in past]
            if min(past[0], epochs_done) == min(past[1], epochs_done):
                continue
            if "auto" in (before, value):
                entry += f" (ranks frozen after {resolved[0]} vs {resolved[1]} epochs)"
            entry += f" (the checkpoint has completed {epochs_done} epochs)"
        if name in ("model", "method", "factorize"):
            identity.append(entry)
        else:
            options.append(entry)
    if identity or options:
        parts = []
        if identity:
            parts.append(f"for another model ({', '.join(identity)})")
        if options:
            parts.append(f"with other options ({', '.join(options)})")
        raise ValueError(
            f"checkpoint {path} was written {' and '.join(parts)}; nothing was changed "
            "(a resumed run keeps the options that define it; start over with --overwrite)"
        )


def check_resume_data(
    saved_digest: str | None,
    saved_data: str | None,
    digest: str,
    data: str,
    *,
    path: str | os.PathLike[str],
) -> None:
    """Refuse to resume on other data: the content digests must agree (a moved file is fine)."""
    if saved_digest != digest:
        raise ValueError(
            f"checkpoint {path} was written with other data (data: checkpoint {saved_data!r} "
            f"with SHA-256 {str(saved_digest)[:16]}… vs this run {data!r} with SHA-256 "
            f"{digest[:16]}…); nothing was changed"
        )
