"""geometry.contract: dense, Tucker and Contractible ambient tensors agree; bad input raises."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
from conftest import tol
from hypothesis import given, settings
from hypothesis import strategies as st

import tuckerflow as tf
from tuckerflow.geometry import Contractible, ambient_shape, contract
from tuckerflow.testing.strategies import shapes_and_ranks


class DenseBacked:
    """A Contractible that counts its calls (stands in for a structured operator)."""

    def __init__(self, x):
        self.x = x
        self.shape = tuple(tl.shape(x))
        self.calls = 0

    def contract(self, matrices):
        self.calls += 1
        return contract(self.x, matrices)


@settings(max_examples=10)
@given(sr=shapes_and_ranks(max_side=5), seed=st.integers(0, 10_000), data=st.data())
def test_contract_agrees_on_all_kinds(backend, dtype, sr, seed, data):
    shape, rank = sr
    y = tf.random_tucker(shape, rank, rng=seed, dtype=dtype, device=backend.device)
    dense = y.to_tensor()
    rng = np.random.default_rng(seed)
    mats = []
    for n in shape:
        if data.draw(st.booleans()):
            m = rng.standard_normal((data.draw(st.integers(1, 3)), n))
            mats.append(backend.tensor(m, dtype))
        else:
            mats.append(None)
    ref = backend.numpy(contract(dense, mats))
    expected_shape = tuple(n if m is None else tl.shape(m)[0] for n, m in zip(shape, mats))
    assert ref.shape == expected_shape
    wrapped = DenseBacked(dense)
    assert isinstance(wrapped, Contractible)
    for z in (y, (y.core, y.factors), wrapped):
        out = backend.numpy(contract(z, mats))
        # factor-wise and dense contraction are two summation orders: round-off in the norms
        assert np.linalg.norm(out - ref) <= tol(dtype, 100) * max(np.linalg.norm(ref), 1.0) * 10
    assert wrapped.calls == 1
    assert ambient_shape(y) == shape == ambient_shape(wrapped)


def test_contract_bad_input(backend):
    y = tf.random_tucker((4, 3, 2), (2, 2, 2), rng=0, device=backend.device)
    m = backend.tensor(np.ones((2, 5)), "float64")
    with pytest.raises(ValueError, match=r"matrices\[1\]\.shape=\(2, 5\) must be \(m, 3\)"):
        contract(y, [None, m, None])
    with pytest.raises(ValueError, match="len\\(matrices\\)=2 differs from Z.ndim=3"):
        contract(y, [None, None])
    with pytest.raises(TypeError, match="Z must be a dense tensor"):
        contract("abc", [None])

    class Liar:
        shape = (4, 3, 2)

        def contract(self, matrices):
            return backend.tensor(np.ones((1, 1, 1)), "float64")

    with pytest.raises(ValueError, match=r"returned shape \(1, 1, 1\), expected \(4, 3, 2\)"):
        contract(Liar(), [None, None, None])
