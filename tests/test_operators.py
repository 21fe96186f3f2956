"""Kronecker-sum operators act on Tucker tensors exactly and without densifying."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorly as tl
from conftest import tol
from hypothesis import given
from hypothesis import strategies as st

import tuckerflow as tf
from tuckerflow.geometry import contract
from tuckerflow.operators import (
    AmbientSum,
    Banded,
    KroneckerSum,
    laplacian,
    pointwise,
    schrodinger,
    second_difference,
)
from tuckerflow.testing.strategies import seeds, shape_and_rank


def _dense_apply(terms, x, t=0.0):
    out = np.zeros_like(x, dtype=np.result_type(x, complex) if _is_c(terms) else x.dtype)
    for c, mats in terms:
        c = c(t) if callable(c) else c
        y = x
        for j, a in enumerate(mats):
            if isinstance(a, Banded):
                a = a.to_dense()
            if a is not None:
                y = np.moveaxis(np.tensordot(a, y, axes=(1, j)), 0, j)
        out = out + c * y
    return out


def _is_c(terms):
    return any(
        isinstance(c, complex) or (m.is_complex if isinstance(m, Banded) else np.iscomplexobj(m))
        for c, ms in terms
        for m in ms
    )


@given(sr=shape_and_rank(min_dims=2, max_dims=4, max_side=6), seed=seeds, k=st.integers(1, 3))
def test_kronecker_sum_is_exact_and_low_rank(backend, dtype, sr, seed, k):
    shape, rank = sr
    gen = np.random.default_rng(seed % 1000)
    d = len(shape)
    terms = []
    for _ in range(k):
        mats = [gen.standard_normal((n, n)) if gen.random() < 0.6 else None for n in shape]
        terms.append((float(gen.standard_normal()), mats))
    op = KroneckerSum(shape, terms)
    y = tf.random_tucker(shape, rank, rng=seed % 1000, dtype=dtype, device=backend.device)
    lazy = op(0.0, y)
    out = lazy.to_tucker()
    x = backend.numpy(y.to_tensor())
    ref = _dense_apply(op.terms, x)
    # a few products of O(1) matrices: round-off relative to the largest entry
    scale = max(np.abs(ref).max(), 1.0)
    np.testing.assert_allclose(backend.numpy(out.to_tensor()), ref, atol=tol(dtype, 1e3) * scale)
    np.testing.assert_allclose(
        backend.numpy(op.apply_dense(y.to_tensor())), ref, atol=tol(dtype, 1e3) * scale
    )
    # rank in mode j is (number of distinct matrices in mode j) * r_j
    np.testing.assert_allclose(backend.numpy(lazy.to_tensor()), ref, atol=tol(dtype, 1e3) * scale)
    # contractions with small matrices (the only access the integrators use)
    mats = [backend.tensor(gen.standard_normal((2, n)), dtype) for n in shape]
    mats[0] = None
    np.testing.assert_allclose(
        backend.numpy(contract(lazy, mats)),
        backend.numpy(contract(out, mats)),
        atol=tol(dtype, 1e4) * scale,
    )
    for j in range(d):
        distinct = {id(m) if m is not None else None for _, ms in op.terms for m in [ms[j]]}
        assert out.rank[j] == len(distinct) * rank[j]


def test_laplacian_matches_dense_stencil(backend):
    shape, h = (6, 5, 4), 0.3
    y = tf.random_tucker(shape, (2, 2, 2), rng=0, device=backend.device)
    x = backend.numpy(y.to_tensor())
    ref = np.zeros_like(x)
    padded = np.pad(x, 1)
    core = padded[1:-1, 1:-1, 1:-1]
    for j in range(3):
        lo = [slice(1, -1)] * 3
        hi = [slice(1, -1)] * 3
        lo[j], hi[j] = slice(0, -2), slice(2, None)
        ref += (padded[tuple(lo)] - 2 * core + padded[tuple(hi)]) / h**2
    out = laplacian(shape, h)(0.0, y)
    np.testing.assert_allclose(backend.numpy(out.to_tensor()), ref, atol=1e-10)
    per = second_difference(5, 1.0, boundary="periodic")
    assert per[0, -1] == 1.0 and np.allclose(per.sum(axis=1), 0)
    # the banded form applied to Tucker factors equals the dense matrix, periodic or not
    for boundary in ("dirichlet", "periodic"):
        op = laplacian((5, 4, 3), 1.0, boundary=boundary)
        for j, n in enumerate((5, 4, 3)):
            banded = op.terms[j][1][j]
            np.testing.assert_array_equal(
                banded.to_dense(), second_difference(n, 1.0, boundary=boundary)
            )
        y5 = tf.random_tucker((5, 4, 3), 2, rng=0, device=backend.device)
        dense = _dense_apply(
            [
                (
                    1.0,
                    [
                        second_difference(n, 1.0, boundary=boundary) if k == j else None
                        for k, n in enumerate((5, 4, 3))
                    ],
                )
                for j in range(3)
            ],
            backend.numpy(y5.to_tensor()),
        )
        np.testing.assert_allclose(backend.numpy(op(0.0, y5).to_tensor()), dense, atol=1e-10)


def test_schrodinger_is_skew_hermitian(backend):
    x = np.linspace(-3, 3, 7)
    op = schrodinger((7, 7, 7), x[1] - x[0], [x**2, None, x], couplings=[(0.5, [x, x, None])])
    a = tf.random_tucker((7, 7, 7), 2, rng=1, dtype="complex128", device=backend.device)
    b = tf.random_tucker((7, 7, 7), 2, rng=2, dtype="complex128", device=backend.device)
    # F = -iH with H Hermitian: <A, F B> = -<F A, B>, so Re <Y, F Y> = 0 (norm conserved)
    lhs = complex(backend.numpy(tf.inner(a, op(0.0, b).to_tucker())))
    rhs = complex(backend.numpy(tf.inner(op(0.0, a).to_tucker(), b)))
    assert abs(lhs + rhs) <= 1e-10 * max(abs(lhs), 1.0)
    assert abs(complex(backend.numpy(tf.inner(a, op(0.0, a).to_tucker()))).real) <= 1e-10
    with pytest.raises(TypeError, match="complex coefficient cannot act on a real tensor"):
        op(0.0, tf.random_tucker((7, 7, 7), 2, rng=1, device=backend.device))


def test_time_dependent_coefficients_and_algebra(backend):
    shape = (4, 5, 3)
    lap = laplacian(shape, 0.5)
    drive = KroneckerSum(shape, [(lambda t: 2.0 * t, [None, None, None])])
    op = -0.5 * lap + drive
    y = tf.random_tucker(shape, 2, rng=0, device=backend.device)
    x = backend.numpy(y.to_tensor())
    ref = -0.5 * _dense_apply(lap.terms, x) + 2.0 * 0.7 * x
    np.testing.assert_allclose(backend.numpy(op(0.7, y).to_tensor()), ref, atol=1e-10)


def test_pointwise_sum_contracts_term_by_term(backend):
    shape = (5, 4, 3)
    lap = laplacian(shape, 0.5)
    op = lap + pointwise(lambda t, x: x * x)
    y = tf.random_tucker(shape, 2, rng=3, device=backend.device)
    out = op(0.0, y)
    assert isinstance(out, AmbientSum) and out.shape == shape
    x = backend.numpy(y.to_tensor())
    dense = _dense_apply(lap.terms, x) + x * x
    np.testing.assert_allclose(backend.numpy(out.to_tensor()), dense, atol=1e-10)
    mats = [
        backend.tensor(np.random.default_rng(j).standard_normal((2, n)))
        for j, n in enumerate(shape)
    ]
    mats[1] = None
    ref = contract(backend.tensor(dense), mats)
    np.testing.assert_allclose(backend.numpy(contract(out, mats)), backend.numpy(ref), atol=1e-9)


def test_bad_input(backend):
    with pytest.raises(ValueError, match="terms must hold at least one"):
        KroneckerSum((3, 3), [])
    with pytest.raises(
        ValueError, match=r"terms\[0\] matrix for mode 1 has shape \(2, 2\), expected \(3, 3\)"
    ):
        KroneckerSum((3, 3), [(1.0, [None, np.eye(2)])])
    with pytest.raises(
        ValueError, match=r"terms\[0\] has 1 matrices but shape=\(3, 3\) has 2 modes"
    ):
        KroneckerSum((3, 3), [(1.0, [None])])
    y = tf.random_tucker((4, 4), 2, rng=0, device=backend.device)
    with pytest.raises(ValueError, match=r"Y.shape=\(4, 4\) differs from operator shape=\(3, 3\)"):
        laplacian((3, 3), 0.1)(0.0, y)
    with pytest.raises(ValueError, match="boundary='neumann' is not one of"):
        laplacian((3, 3), 0.1, boundary="neumann")
    assert tl.shape(laplacian((4, 4), 0.1)(0.0, y).to_tucker().core) == (4, 4)


@given(sr=shape_and_rank(min_dims=2, max_dims=4, max_side=6), seed=seeds)
def test_unfolded_contract_matches_contract_then_unfold(backend, dtype, sr, seed):
    from tuckerflow.ambient import unfolded_contract

    shape, rank = sr
    gen = np.random.default_rng(seed % 1000)
    op = laplacian(shape, 0.5) + KroneckerSum(
        shape, [(0.3, [gen.standard_normal((n, n)) for n in shape])]
    )
    y = tf.random_tucker(shape, rank, rng=seed % 1000, dtype=dtype, device=backend.device)
    lazy = op(0.0, y)
    mode = int(gen.integers(len(shape)))
    mats = [backend.tensor(gen.standard_normal((2, n)), dtype) for n in shape]
    mats[mode] = None
    right = backend.tensor(gen.standard_normal((2 ** (len(shape) - 1), 3)), dtype)
    scale = max(1.0, float(np.abs(backend.numpy(lazy.to_tensor())).max()))
    for F in (lazy, lazy.to_tucker(), lazy.to_tensor(), AmbientSum([lazy, y.to_tensor()])):
        ref = tl.dot(tl.unfold(contract(F, mats), mode), right)
        np.testing.assert_allclose(
            backend.numpy(unfolded_contract(F, mats, mode, right)),
            backend.numpy(ref),
            atol=tol(dtype, 1e4) * scale,
        )


def test_schrodinger_accepts_a_mode_of_size_one(backend):
    x = np.linspace(-1, 1, 4)
    op = schrodinger((4, 1, 3), 0.5, [x, np.ones(1), None], boundary="periodic")
    y = tf.random_tucker((4, 1, 3), 1, rng=0, dtype="complex128", device=backend.device)
    dense = backend.numpy(op(0.0, y).to_tensor())
    np.testing.assert_allclose(
        dense, backend.numpy(op.apply_dense(y.to_tensor())), atol=tol("complex128", 100)
    )
    # a single point has no neighbours: H = -½D₂ + V is 1/h² + V in mode 0 (4 + 1) plus
    # 1/h² = 4 in mode 1
    one = schrodinger((1, 1), 0.5, [np.ones(1), None])
    y1 = tf.random_tucker((1, 1), 1, rng=0, dtype="complex128", device=backend.device)
    np.testing.assert_allclose(
        backend.numpy(one(0.0, y1).to_tensor()), -1j * backend.numpy(y1.to_tensor()) * 9.0
    )


# ------------------------------------------------------------------------------------------
# argument validation found by the fuzz (tuckerflow.testing.fuzz); a mode of one point


def test_banded_validates_size_diagonals_and_periodic():
    with pytest.raises(TypeError, match="n must be an integer >= 1, got inf"):
        Banded(math.inf, {0: 1.0})
    with pytest.raises(ValueError, match="n=0 must be >= 1"):
        Banded(0, {0: 1.0})
    with pytest.raises(TypeError, match=r"diagonals must be a dict \{offset: values\}"):
        Banded(3, [np.ones(3)])
    with pytest.raises(ValueError, match="offset 3 is outside an 3 x 3 matrix"):
        Banded(3, {3: 1.0})
    with pytest.raises(TypeError, match="offset 1.5 must be an integer"):
        Banded(3, {1.5: 1.0})
    with pytest.raises(ValueError, match=r"diagonals\[0\] has shape \(2,\); expected"):
        Banded(3, {0: [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"diagonals\[-1\] has non-finite entries"):
        Banded(3, {-1: [1.0, math.nan, 0.0]})
    with pytest.raises(TypeError, match="periodic must be True or False"):
        Banded(3, {0: 1.0}, periodic=-1)
    # a 1 x 1 matrix is valid
    assert np.array_equal(Banded(1, {0: 2.5}).to_dense(), [[2.5]])


def test_laplacian_spacing_magnitudes_and_a_mode_of_one_point():
    for bad in (1e-300, 1e300):
        with pytest.raises(ValueError, match=r"spacing=.*: the finite-difference weight"):
            laplacian((4, 4), bad)
    with pytest.raises(ValueError, match=r"spacing\[1\]=0.0 must be a finite number > 0"):
        laplacian((4, 4), [0.1, 0.0])
    with pytest.raises(ValueError, match=r"shape\[0\]=0 must be >= 1"):
        laplacian((0, 4), 0.1)
    with pytest.raises(TypeError, match=r"shape\[0\] must be an integer >= 1, got 2.7"):
        laplacian((2.7, 4), 0.1)
    # one grid point in mode 0: D = [-2/h²] there (Dirichlet), the usual matrix in mode 1
    h = 0.25
    op = laplacian((1, 4), h)
    Y = tf.random_tucker((1, 4), (1, 1), rng=1)
    x = Y.to_tensor()
    expected = second_difference(1, h) @ x + x @ second_difference(4, h).T
    assert np.allclose(op(0.0, Y).to_tensor(), expected, rtol=1e-13, atol=0)
    assert np.array_equal(second_difference(1, h), [[-2 / h**2]])


def test_second_difference_spacing_magnitudes():
    for bad in (1e300, 1e-300):
        with pytest.raises(ValueError, match=r"h=.*: the finite-difference weight 1/h²"):
            second_difference(4, bad)
    with pytest.raises(TypeError, match="n must be an integer >= 1"):
        second_difference(2.0, 0.1)
    with pytest.raises(TypeError, match="h must be a real number > 0"):
        second_difference(4, "0.1")


def test_schrodinger_spacing_and_a_mode_of_one_point():
    with pytest.raises(ValueError, match=r"shape\[0\]=0 must be >= 1"):
        schrodinger((0, 3), 0.1)
    for bad in (0.0, 1e300):
        with pytest.raises(ValueError, match="spacing="):
            schrodinger((3, 3), bad)
    with pytest.raises(TypeError, match="couplings must be a sequence"):
        schrodinger((3, 3), 0.1, couplings=np.int64(3))
    with pytest.raises(ValueError, match=r"couplings\[0\] coefficient λ=nan"):
        schrodinger((3, 3), 0.1, couplings=[(math.nan, [None, None])])
    with pytest.raises(ValueError, match=r"potentials\[1\] has non-finite entries"):
        schrodinger((3, 3), 0.1, [None, [0.0, math.inf, 0.0]])
    # a mode of one point is valid: H = 1/h² + V there (no neighbours), -i H Y exactly
    h, v = 0.5, np.array([0.3])
    op = schrodinger((1, 3), h, [v, None])
    Y = tf.random_tucker((1, 3), (1, 1), rng=2, dtype="complex128")
    x = Y.to_tensor()
    d3 = second_difference(3, h)
    hx = (1 / h**2 + v[0]) * x - 0.5 * x @ d3.T
    assert np.allclose(op(0.0, Y).to_tensor(), -1j * hx, rtol=1e-13, atol=0)
