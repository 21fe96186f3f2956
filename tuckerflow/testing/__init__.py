"""Testing helpers for code built on tuckerflow: assertions, Hypothesis strategies and a
reusable property suite for the geometry of Tucker manifolds.

``tuckerflow.testing.strategies`` needs Hypothesis (imported on first use).
"""

from __future__ import annotations

import importlib

from .assertions import (
    assert_close,
    assert_in_tangent_space,
    assert_on_manifold,
    assert_orthonormal,
    relative_distance,
    to_numpy,
)
from .suite import ManifoldSuite, fitted_slope

__all__ = [
    "ManifoldSuite",
    "assert_close",
    "assert_in_tangent_space",
    "assert_on_manifold",
    "assert_orthonormal",
    "fitted_slope",
    "relative_distance",
    "strategies",
    "to_numpy",
]


def __getattr__(name):
    if name == "strategies":
        return importlib.import_module(f"{__name__}.strategies")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
