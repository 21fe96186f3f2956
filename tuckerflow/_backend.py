"""Small helpers on top of TensorLy's backend abstraction.

Everything here works on whatever backend is active (``tl.get_backend()``) and never changes it.
Array-library specific code is confined to the few places where TensorLy has no primitive
(dtype introspection, device comparison); heavy libraries are never imported here.
"""

from __future__ import annotations

import math

import numpy as np
import tensorly as tl

from ._host import to_host

__all__ = [
    "FLOAT_DTYPES",
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
    "max_abs",
    "normalize_dtype",
    "real_dtype_name",
    "safe_norm",
    "scale_pow2",
    "to_float",
]

#: The floating dtypes tuckerflow's constructors create.
FLOAT_DTYPES = ("float32", "float64", "complex64", "complex128")


#: dtype object -> name, filled on first use (``str`` of a NumPy dtype costs microseconds,
#: and the integrators ask for it dozens of times per step).
_DTYPE_NAMES: dict = {}
#: dtype object -> machine epsilon of its real part.
_EPS: dict = {}


def dtype_name(x) -> str:
    """Name of the dtype of ``x`` (``'float32'``, ``'complex128'`` …) on any backend."""
    dt = x.dtype
    try:
        return _DTYPE_NAMES[dt]
    except KeyError:
        name = _DTYPE_NAMES[dt] = str(dt).rsplit(".", 1)[-1]
        return name
    except TypeError:  # an unhashable dtype object
        return str(dt).rsplit(".", 1)[-1]


def is_complex(x) -> bool:
    return "complex" in dtype_name(x)


def real_dtype_name(x) -> str:
    name = dtype_name(x)
    return {"complex64": "float32", "complex128": "float64"}.get(name, name)


def eps(x) -> float:
    """Machine epsilon of the (real part of the) dtype of the array ``x``."""
    dt = x.dtype
    try:
        return _EPS[dt]
    except (KeyError, TypeError):
        pass
    name = real_dtype_name(x)
    value = 2.0**-7 if name in ("bfloat16",) else float(np.finfo(name).eps)
    try:
        _EPS[dt] = value
    except TypeError:  # an unhashable dtype object
        pass
    return value


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


def max_abs(x) -> float:
    """``max |x|`` as a Python float (0 for an empty array; NaN if ``x`` holds a NaN)."""
    if not tl.shape(x):
        return abs(to_float(tl.abs(x)))
    if int(np.prod(tl.shape(x))) == 0:
        return 0.0
    # NumPy, PyTorch and CuPy all propagate NaN through max
    return to_float(tl.max(tl.abs(x)))


def check_finite(x, name: str) -> float:
    """Raise a ``ValueError`` if ``x`` holds NaN or Inf; return ``max |x|`` (one host sync)."""
    m = max_abs(x)
    if not math.isfinite(m):
        raise ValueError(f"{name} contains non-finite values (NaN or Inf)")
    return m


def safe_norm(x):
    """Frobenius norm of ``x`` without overflow or underflow (a 0-d backend tensor).

    ``‖x‖ = m · ‖x / m‖`` with ``m = max |x|``, as LAPACK's ``nrm2`` scales before squaring,
    so that entries from about 1e-300 to 1e300 give the right norm. No host synchronisation;
    NaN propagates and an infinite entry gives ``inf``.
    """
    a = tl.abs(x)
    if not tl.shape(a):
        return a
    if int(np.prod(tl.shape(a))) == 0:
        return tl.norm(a)
    m = tl.max(a)
    one = tl.ones(tl.shape(m), **context(m))
    safe = tl.where(m > 0, m, one)
    safe = tl.where(m == math.inf, one, safe)
    out = safe * tl.norm(a / safe)
    return tl.where(m == math.inf, m, out)


def scale_pow2(x, e: int):
    """``x · 2**e``, exact unless the result under- or overflows, in steps the dtype can hold."""
    if e == 0:
        return x
    name = real_dtype_name(x)
    try:
        step = int(np.finfo(name).maxexp) - 2
    except (TypeError, ValueError):  # bfloat16 and other non-NumPy dtypes
        step = 125
    while e != 0:
        k = max(-step, min(step, e))
        x = x * math.ldexp(1.0, k)
        e -= k
    return x


def normalize_dtype(dtype, name: str = "dtype", allowed=FLOAT_DTYPES) -> str:
    """The name of a floating dtype given as a string, NumPy type/dtype or backend dtype.

    ``"float32"``, ``np.float32``, ``np.dtype("float32")`` and ``torch.float32`` all give
    ``"float32"``. Anything outside ``allowed`` is a ``ValueError`` (``TypeError`` if it is no
    dtype at all).
    """
    if isinstance(dtype, str):
        label = dtype
    else:
        try:
            label = np.dtype(dtype).name
        except TypeError:
            text = str(dtype)
            if not text.startswith(("torch.", "cupy.", "<class")):
                raise TypeError(f"{name} must be a dtype or its name, got {dtype!r}") from None
            label = text.rsplit(".", 1)[-1].rstrip("'>")
    if label not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {dtype!r}")
    return label


def to_float(x) -> float:
    """A Python float from a 0-d backend array (one host transfer, see :mod:`tuckerflow._host`)."""
    return float(to_host(x))


def conj_t(a):
    """Conjugate transpose of a matrix (a plain transpose for real dtypes)."""
    at = tl.transpose(a)
    return tl.conj(at) if is_complex(a) else at
