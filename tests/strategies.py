"""Hypothesis strategies for the foundation tests: shape first, then a rank that fits it."""

from __future__ import annotations

from hypothesis import strategies as st

from tuckerflow import largest_valid_rank

make_valid = largest_valid_rank


@st.composite
def shapes(draw, min_dims=2, max_dims=4, min_side=1, max_side=7):
    d = draw(st.integers(min_dims, max_dims))
    return tuple(draw(st.integers(min_side, max_side)) for _ in range(d))


@st.composite
def shape_and_rank(draw, min_dims=2, max_dims=4, max_side=7):
    shape = draw(shapes(min_dims=min_dims, max_dims=max_dims, max_side=max_side))
    rank = tuple(draw(st.integers(1, n)) for n in shape)
    return shape, make_valid(rank)


seeds = st.integers(0, 2**32 - 1)
