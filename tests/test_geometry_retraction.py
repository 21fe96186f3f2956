"""Facts of the retraction (algorithms.md §3, tuckerflow.geometry.retraction) on every
backend and dtype, through tuckerflow.testing's suite (tolerances live in the suite).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import tuckerflow as tf
from tuckerflow.testing import ManifoldSuite
from tuckerflow.testing.strategies import shapes_and_ranks

SEEDS = st.integers(0, 2**31 - 1)


def _suite(backend, dtype, sr, seed, ambient="dense"):
    shape, rank = sr
    return ManifoldSuite(
        tf.FixedRankTucker(shape, rank),
        dtype=dtype,
        device=backend.device,
        rng=seed,
        ambient=ambient,
    )


@settings(max_examples=5)
@given(sr=shapes_and_ranks(max_side=5), seed=SEEDS)
def test_retraction_facts(backend, dtype, sr, seed):
    suite = _suite(backend, dtype, sr, seed)
    suite.check_retraction_at_zero()
    suite.check_retraction_on_manifold()


@settings(max_examples=4)
@given(
    sr=shapes_and_ranks(max_side=5, proper=True),
    seed=SEEDS,
    method=st.sampled_from(tf.geometry.RETRACTION_METHODS),
)
def test_retraction_is_second_order(backend, dtype, sr, seed, method):
    out = _suite(backend, dtype, sr, seed).check_retraction_orders(method)
    assert 2.3 >= out["defect_slope"] >= 1.75
    assert out["tangential_slope"] >= 2.6
