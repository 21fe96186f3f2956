"""Facts of the retraction (algorithms.md §3, tuckerflow.geometry.retraction) on every
backend and dtype, through tuckerflow.testing's suite (tolerances live in the suite).
"""

from __future__ import annotations

from conftest import manifold_suite
from hypothesis import given, settings
from hypothesis import strategies as st

import tuckerflow as tf
from tuckerflow.testing.strategies import seeds, shapes_and_ranks


@settings(max_examples=5)
@given(sr=shapes_and_ranks(max_side=5), seed=seeds)
def test_retraction_facts(backend, dtype, sr, seed):
    suite = manifold_suite(backend, dtype, sr, seed)
    suite.check_retraction_at_zero()
    suite.check_retraction_on_manifold()


@settings(max_examples=4)
@given(
    sr=shapes_and_ranks(max_side=5, proper=True),
    seed=seeds,
    method=st.sampled_from(tf.geometry.RETRACTION_METHODS),
)
def test_retraction_is_second_order(backend, dtype, sr, seed, method):
    out = manifold_suite(backend, dtype, sr, seed).check_retraction_orders(method)
    assert 2.3 >= out["defect_slope"] >= 1.75
    assert out["tangential_slope"] >= 2.6
