"""Hypothesis strategies for Tucker tensors and tangent vectors (shape first, then rank).

Every strategy draws a valid domain constructively: a shape, then a rank ``r_i ≤ n_i``
clamped to the validity rule ``r_i ≤ ∏_{j≠i} r_j``; nothing is filtered away. Arrays are
created on the TensorLy backend active when the example is drawn (draw inside the test).
"""

from __future__ import annotations

from hypothesis import strategies as st

from ..geometry.manifold import FixedRankTucker
from ..random import random_tucker
from ..ranks import largest_valid_rank

__all__ = [
    "DTYPES",
    "dtypes",
    "make_valid",
    "make_valid_rank",
    "seeds",
    "shape_and_rank",
    "shapes",
    "shapes_and_ranks",
    "tangent_vectors",
    "tucker_tensors",
]

DTYPES = ("float32", "float64", "complex64", "complex128")

#: Seeds for ``rng=`` arguments (the full range of a NumPy seed word).
seeds = st.integers(0, 2**32 - 1)


def make_valid_rank(rank):
    """Largest valid multilinear rank below ``rank``: :func:`tuckerflow.largest_valid_rank`."""
    return largest_valid_rank(rank)


#: Short alias of :func:`make_valid_rank`.
make_valid = make_valid_rank


def dtypes(real=True, complex_=True):
    """Strategy over the dtype names (``"float32"`` …)."""
    names = [d for d in DTYPES if (real and "float" in d) or (complex_ and "complex" in d)]
    return st.sampled_from(names)


@st.composite
def shapes(draw, *, min_dims=2, max_dims=4, min_side=1, max_side=6):
    """Tensor shapes with ``min_dims ≤ d ≤ max_dims`` and sides in ``[min_side, max_side]``."""
    d = draw(st.integers(min_dims, max_dims))
    return tuple(draw(st.integers(min_side, max_side)) for _ in range(d))


@st.composite
def shapes_and_ranks(
    draw, *, min_dims=2, max_dims=4, min_side=1, max_side=6, max_rank=None, proper=False
):
    """``(shape, rank)`` with a valid multilinear rank.

    ``proper=True`` asks for ``r_i < n_i`` in every mode (so that every mode has a normal
    direction); sides then start at 2.
    """
    lo = max(min_side, 2) if proper else min_side
    shape = draw(shapes(min_dims=min_dims, max_dims=max_dims, min_side=lo, max_side=max_side))
    top = [n - 1 if proper else n for n in shape]
    if max_rank is not None:
        top = [min(t, max_rank) for t in top]
    rank = tuple(draw(st.integers(1, t)) for t in top)
    return shape, make_valid_rank(rank)


@st.composite
def shape_and_rank(draw, min_dims=2, max_dims=4, max_side=7):
    """``(shape, rank)``: sides in ``[1, max_side]``, each ``r_i`` uniform in ``[1, n_i]`` and
    then lowered to the largest valid rank (the tests' workhorse)."""
    shape = draw(shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side))
    rank = tuple(draw(st.integers(1, n)) for n in shape)
    return shape, make_valid_rank(rank)


@st.composite
def tucker_tensors(draw, *, shape_rank=None, dtype=None, device=None, decay=1.0):
    """Random points of ``M_r`` (orthonormal factors, full-rank core) on the active backend.

    Parameters
    ----------
    shape_rank : strategy of ``(shape, rank)``, optional
        Default :func:`shapes_and_ranks`.
    dtype : str or strategy, optional
        Default: all four float dtypes.
    device : optional
        Device for backends that have one.
    decay : float
        Core spectrum decay (see :func:`tuckerflow.random_tucker`).
    """
    shape, rank = draw(shapes_and_ranks() if shape_rank is None else shape_rank)
    if dtype is None:
        dtype = dtypes()
    name = draw(dtype) if isinstance(dtype, st.SearchStrategy) else dtype
    seed = draw(st.integers(0, 2**31 - 1))
    return random_tucker(shape, rank, rng=seed, dtype=name, device=device, decay=decay)


@st.composite
def tangent_vectors(draw, *, points=None, **kwargs):
    """``(Y, ξ)``: a point from ``points`` (default :func:`tucker_tensors`) and a unit tangent."""
    y = draw(tucker_tensors(**kwargs) if points is None else points)
    seed = draw(st.integers(0, 2**31 - 1))
    return y, FixedRankTucker(y.shape, y.rank).random_tangent(y, rng=seed)
