"""Small helpers on top of TensorLy's backend abstraction.

Everything here works on whatever backend is active (``tl.get_backend()``) and never changes it.
Array-library specific code is confined to the few places where TensorLy has no primitive
(dtype introspection, device comparison); heavy libraries are never imported here.
"""

from __future__ import annotations

import math

import numpy as np
import tensorly as tl

__all__ = [
    "astype",
    "backend_dtype",
    "check_tensor",
    "check_finite",
    "conj_t",
    "context",
    "device_of",
    "dtype_name",
    "eps",
    "is_complex",
    "real_dtype_name",
    "to_float",
]


def dtype_name(x) -> str:
    """Name of the dtype of ``x`` (``'float32'``, ``'complex128'`` …) on any backend."""
    return str(x.dtype).rsplit(".", 1)[-1]


def is_complex(x) -> bool:
    return "complex" in dtype_name(x)


def real_dtype_name(x) -> str:
    name = dtype_name(x)
    return {"complex64": "float32", "complex128": "float64"}.get(name, name)


def eps(x) -> float:
    """Machine epsilon of the (real part of the) dtype of the array ``x``."""
    name = real_dtype_name(x)
    if name in ("bfloat16",):
        return 2.0**-7
    return float(np.finfo(name).eps)


def device_of(x) -> str:
    """A comparable device string (``'cpu'`` for NumPy arrays)."""
    dev = getattr(x, "device", "cpu")
    return str(dev)


def context(x) -> dict:
    """``tl.context`` of ``x`` without ``requires_grad``: creates constant arrays like ``x``."""
    ctx = dict(tl.context(x))
    ctx.pop("requires_grad", None)
    return ctx


def backend_dtype(name: str):
    """The active backend's dtype object called ``name`` (``tl.float64`` is not reliable)."""
    return getattr(tl.backend.current_backend(), name)


def astype(x, name: str):
    """``x`` cast to the dtype called ``name``, keeping device and autograd history."""
    dtype = backend_dtype(name)
    if hasattr(x, "astype"):
        return x.astype(dtype)
    return x.to(dtype)


def check_tensor(x, name: str) -> None:
    """Raise a ``TypeError`` unless ``x`` is an array of the active TensorLy backend."""
    if not tl.is_tensor(x):
        kind = f"{type(x).__module__}.{type(x).__qualname__}"
        raise TypeError(
            f"{name} is a {kind}, but the active TensorLy backend is {tl.get_backend()!r}, "
            f"which expects its own array type; convert it with tl.tensor(...) or select the "
            f"matching backend (tl.set_backend / tl.backend_context)"
        )


def check_finite(x, name: str) -> None:
    """Raise a ``ValueError`` if ``x`` holds NaN or Inf (one reduction, one host sync)."""
    m = to_float(tl.max(tl.abs(x))) if tl.shape(x) and int(np.prod(tl.shape(x))) else 0.0
    if not math.isfinite(m):
        raise ValueError(f"{name} contains non-finite values (NaN or Inf)")


def to_float(x) -> float:
    """A Python float from a 0-d backend array (host sync)."""
    return float(tl.to_numpy(x))


def conj_t(a):
    """Conjugate transpose of a matrix (a plain transpose for real dtypes)."""
    at = tl.transpose(a)
    return tl.conj(at) if is_complex(a) else at
