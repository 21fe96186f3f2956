"""tuckerflow: the geometry of Tucker tensors, made practical.

Tucker tensors and their truncation (HOSVD, ST-HOSVD, tolerance-based ranks), written once
against TensorLy's backend abstraction so that the same code runs on NumPy, PyTorch and CuPy.
The active TensorLy backend decides the array type; tuckerflow never changes it.

The PyTorch-only parts (``tuckerflow.nn``, ``tuckerflow.optim``) are imported on first use,
so ``import tuckerflow`` imports neither torch nor cupy.
"""

from __future__ import annotations

import importlib

from .linalg import left_singular
from .random import random_orthonormal, random_tucker
from .truncation import (
    TruncationInfo,
    hosvd,
    largest_valid_rank,
    select_rank,
    st_hosvd,
    truncate,
    validate_rank,
)
from .tucker import (
    TuckerTensor,
    TuckerZeroDivisionError,
    add,
    as_tucker,
    inner,
    mode_dot,
    multi_mode_dot,
    norm,
    orthonormalize,
    scale,
)

__version__ = "0.1.0"

__all__ = [
    "TruncationInfo",
    "TuckerTensor",
    "TuckerZeroDivisionError",
    "add",
    "as_tucker",
    "hosvd",
    "inner",
    "largest_valid_rank",
    "left_singular",
    "mode_dot",
    "multi_mode_dot",
    "norm",
    "orthonormalize",
    "random_orthonormal",
    "random_tucker",
    "scale",
    "select_rank",
    "st_hosvd",
    "truncate",
    "validate_rank",
]

_LAZY_SUBMODULES = (
    "bench",
    "geometry",
    "integrate",
    "linalg",
    "nn",
    "operators",
    "optim",
    "testing",
    "train",
)

# Public names living in submodules, imported on first access (keeps ``import tuckerflow``
# light; nothing here imports torch or cupy).
_LAZY_NAMES = {
    "TuckerTangent": "geometry",
    "project": "geometry",
    "retract": "geometry",
    "transport": "geometry",
    "riemannian_gradient": "geometry",
    "FixedRankTucker": "geometry",
    "solve_ivp": "integrate",
    "OdeResult": "integrate",
    "METHODS": "integrate",
}


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY_NAMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_NAMES) | set(_LAZY_SUBMODULES))
