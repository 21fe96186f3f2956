"""Atomic file writes: a reader sees the previous file or the complete new one, never a part.

Each write goes to a temporary file ``.tmp-*`` in the target's folder, is flushed to disk and
moved onto the target with :func:`os.replace`. Only a killed process leaves a temporary file
behind; :func:`remove_stale_temporaries` clears them when a run starts writing again.
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "TEMPORARY_PREFIX",
    "atomic_save",
    "atomic_write",
    "atomic_write_text",
    "remove_stale_temporaries",
]

#: Prefix of the temporary files of an atomic write.
TEMPORARY_PREFIX = ".tmp-"
_TEMPORARY_SUFFIXES = (".pt", ".json", ".png")


def _default_file_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[Any], Any], *, suffix: str, mode: str = "wb"
) -> None:
    """Write through ``write(handle)`` to a temporary file in the folder of ``path``, then
    ``os.replace`` it onto ``path``; the temporary file is removed if anything fails."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` onto ``path``.

    A reader sees either the previous file or the complete new one, never a partial write.
    """
    atomic_write(path, lambda handle: torch.save(obj, handle), suffix=".pt")


def atomic_write_text(text: str, path: str | os.PathLike[str]) -> None:
    """Write ``text`` to ``path`` atomically (as :func:`atomic_save` does)."""
    suffix = os.path.splitext(os.fspath(path))[1]
    atomic_write(path, lambda handle: handle.write(text), suffix=suffix, mode="w")


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[str]:
    """Remove the temporary files (``.tmp-*.pt``, ``.json``, ``.png``) a killed write left in
    ``folder``; returns their names. Nothing reads them, so removing them loses nothing."""
    removed = []
    for suffix in _TEMPORARY_SUFFIXES:
        for path in glob.glob(
            os.path.join(glob.escape(os.fspath(folder)), f"{TEMPORARY_PREFIX}*{suffix}")
        ):
            try:
                os.unlink(path)
            except FileNotFoundError:  # removed meanwhile
                continue
            removed.append(os.path.basename(path))
    return sorted(removed)
