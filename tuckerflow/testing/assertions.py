"""Assertions on Tucker tensors, tangent vectors and points of ``M_r``, scaled by ``eps``."""

from __future__ import annotations

import numpy as np
import tensorly as tl
from tensorly import tucker_tensor as _tl_tucker

from .._backend import eps
from ..geometry._point import orthonormality_error
from ..geometry.manifold import FixedRankTucker
from ..geometry.tangent import TuckerTangent
from ..tucker import TuckerTensor

__all__ = [
    "assert_close",
    "assert_in_tangent_space",
    "assert_on_manifold",
    "assert_orthonormal",
    "relative_distance",
    "to_numpy",
]


def to_numpy(x) -> np.ndarray:
    """A dense NumPy array from a dense tensor, a Tucker tensor or a tangent vector."""
    if isinstance(x, TuckerTangent):
        x = x.to_tensor()
    elif isinstance(x, _tl_tucker.TuckerTensor) or (isinstance(x, (tuple, list)) and len(x) == 2):
        x = TuckerTensor(x).to_tensor() if not isinstance(x, TuckerTensor) else x.to_tensor()
    if hasattr(x, "resolve_conj"):
        x = x.detach().resolve_conj()
    return np.asarray(tl.to_numpy(x))


def relative_distance(a, b) -> float:
    """``‖a − b‖ / max(‖a‖, ‖b‖)`` on the host in double precision (0 when both are 0)."""
    a = to_numpy(a).astype(np.complex128)
    b = to_numpy(b).astype(np.complex128)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    scale = max(np.linalg.norm(a), np.linalg.norm(b))
    return float(np.linalg.norm(a - b) / scale) if scale > 0 else 0.0


def assert_close(actual, desired, *, rtol, what="tensors"):
    """Assert ``‖actual − desired‖ ≤ rtol · max(‖actual‖, ‖desired‖)`` (dense/Tucker/tangent)."""
    dist = relative_distance(actual, desired)
    if not dist <= rtol:
        raise AssertionError(f"{what} differ: relative distance {dist:.3g} exceeds {rtol:.3g}")


def assert_orthonormal(u, *, factor=100.0, what="matrix"):
    """Assert ``‖UᴴU − I‖_F ≤ factor · eps · max(n, r)``."""
    err = orthonormality_error(u)
    tol = factor * eps(u) * max(tl.shape(u))
    if not err <= tol:
        raise AssertionError(f"{what} is not orthonormal: ‖UᴴU − I‖={err:.3g} > {tol:.3g}")


def assert_on_manifold(y, rank=None, *, factor=100.0):
    """Assert that ``y`` has the given rank, orthonormal factors and a full-rank core."""
    y = y if isinstance(y, TuckerTensor) else TuckerTensor(y)
    manifold = FixedRankTucker(y.shape, y.rank if rank is None else rank)
    ok, reason = manifold.check_point_on_manifold(y, explain=True)
    if not ok:
        raise AssertionError(reason)
    for i, u in enumerate(y.factors):
        assert_orthonormal(u, factor=factor, what=f"factors[{i}]")


def assert_in_tangent_space(xi, *, factor=100.0):
    """Assert that a :class:`~tuckerflow.TuckerTangent` satisfies its gauge to round-off."""
    g = xi.gauge_error()
    tol = factor * eps(xi.dcore) * max(xi.shape)
    if not g <= tol:
        raise AssertionError(f"gauge violated: max_i ‖U_iᴴ δK_i‖/‖ξ‖={g:.3g} > {tol:.3g}")
