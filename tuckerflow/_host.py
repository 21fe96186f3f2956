"""The one door from a device to the host: every read of array values goes through here.

A device→host transfer stalls the device pipeline (the host waits for every queued kernel),
so the library reads device values in few, batched transfers: the caller stacks what it needs
(norms, singular values, flags of many layers) and calls :func:`to_host` once. The number of
transfers is counted (:func:`transfers`), so that tests can assert how many a step takes on
any device, CPU included. Imports neither torch nor cupy.
"""

from __future__ import annotations

import contextlib

import numpy as np

__all__ = ["counting", "inside", "to_host", "transfers"]

_count = 0
_depth = 0


def transfers() -> int:
    """Number of :func:`to_host` calls since the process started."""
    return _count


def inside() -> bool:
    """Whether the caller runs inside :func:`to_host` (for tests that watch other reads)."""
    return _depth > 0


def to_host(x, dtype=np.float64) -> np.ndarray:
    """The values of the array ``x`` (NumPy, PyTorch on any device, CuPy) as a NumPy array.

    One device synchronisation; ``dtype`` (default float64, None: keep a NumPy-compatible
    dtype) is applied on the host. Half-precision torch tensors are widened on the device
    first (NumPy has no bfloat16).
    """
    global _count, _depth
    _count += 1
    _depth += 1
    try:
        if hasattr(x, "detach"):  # torch
            t = x.detach()
            if t.is_floating_point() and t.element_size() < 4:
                t = t.float()
            out = t.cpu().numpy()
        elif hasattr(x, "get") and type(x).__module__.startswith("cupy"):
            out = x.get()
        else:
            out = np.asarray(x)
    finally:
        _depth -= 1
    if dtype is not None and not np.iscomplexobj(out):
        out = out.astype(dtype, copy=False)
    return out


@contextlib.contextmanager
def counting():
    """``with counting() as n: …`` then ``n()`` is the number of transfers inside the block."""
    start = _count
    stop = [None]

    def n():
        return (_count if stop[0] is None else stop[0]) - start

    try:
        yield n
    finally:
        stop[0] = _count
