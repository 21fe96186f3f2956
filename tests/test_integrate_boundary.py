"""Argument validation at the boundary of tuckerflow.integrate and tuckerflow.operators.

One test per input the bad-input fuzz (tuckerflow.testing.fuzz) used to crash or hang on:
each now gives a ValueError/TypeError naming the argument, or (a step size below the time
resolution) a failed result with a message; the valid corner cases next to them (a mode of
one grid point) are accepted and computed correctly.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import tuckerflow as tf
from tuckerflow.integrate import (
    METHODS,
    KrylovExponential,
    OptionWarning,
    StepInterpolant,
    TuckerOdeSolution,
)
from tuckerflow.operators import Banded, laplacian, schrodinger, second_difference
from tuckerflow.testing import fuzz


def _decay(t, Y):
    return tf.scale(Y, -1.0)


@pytest.fixture(scope="module")
def y0():
    return tf.random_tucker((4, 3, 2), (2, 2, 2), rng=0)


def test_krylov_dim_must_be_a_positive_integer():
    for bad in (math.inf, 2.7, True, "30", None):
        with pytest.raises(TypeError, match="krylov_dim must be an integer >= 1"):
            KrylovExponential(krylov_dim=bad)
    with pytest.raises(ValueError, match="krylov_dim=0 must be at least 1"):
        KrylovExponential(krylov_dim=0)
    for bad in (0.0, 1.0, -1e-3, math.nan):
        with pytest.raises(ValueError, match=r"rtol=.* must lie in \(0, 1\)"):
            KrylovExponential(rtol=bad)
    assert KrylovExponential(krylov_dim=np.int64(5)).krylov_dim == 5


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


@pytest.mark.parametrize("method", list(METHODS))
def test_step_below_the_resolution_of_the_span_ends_with_a_message(method, y0):
    """``step=1e-17`` from 0 to 0.2 is representable at t = 0 but below the resolution near
    0.2: it would take 2·10¹⁶ steps and then stall. The run ends at once, success=False."""
    for span, step in (((0.0, 0.2), 1e-17), ((0.0, 0.2), 1e-300), ((0.0, 1e300), 0.1)):
        sol = tf.solve_ivp(_decay, span, y0, method=method, step=step)
        assert not sol.success and sol.status == -1 and sol.nsteps == 0
        assert f"step={step!r} is below the time resolution" in sol.message
        assert sol.t[-1] == 0.0
    sol = tf.solve_ivp(_decay, (0.0, 0.2), y0, method=method, max_step=1e-17)
    assert not sol.success and "max_step=1e-17 is below the time resolution" in sol.message


def test_step_interpolant_takes_step_data(y0):
    for bad in (None, 3, y0):
        with pytest.raises(TypeError, match="StepInterpolant takes the StepData"):
            StepInterpolant(bad)


def test_ode_solution_checks_its_lists(y0):
    sol = tf.solve_ivp(_decay, (0.0, 0.3), y0, step=0.1, dense_output=True)
    ts, interps = sol.sol.ts, sol.sol.interpolants
    with pytest.raises(ValueError, match="ts must be a non-empty 1-D sequence"):
        TuckerOdeSolution([], [])
    with pytest.raises(ValueError, match=r"len\(interpolants\)=2 must be len\(ts\) - 1 = 3"):
        TuckerOdeSolution(ts, interps[:2])
    with pytest.raises(TypeError, match=r"interpolants\[1\] must be a StepInterpolant"):
        TuckerOdeSolution(ts, [interps[0], None, interps[2]])
    with pytest.raises(ValueError, match="strictly monotonic"):
        TuckerOdeSolution(ts[[0, 2, 1, 3]], interps)
    with pytest.raises(
        ValueError, match=r"interpolants\[0\] covers \[0.2, 0.3.*not the step \[0.0, 0.1"
    ):
        TuckerOdeSolution(ts, interps[::-1])
    # a solution of no step (zero-length span) is valid, and refuses to interpolate
    empty = TuckerOdeSolution([0.0], [])
    with pytest.raises(ValueError, match="no steps to interpolate"):
        empty(0.0)
    rebuilt = TuckerOdeSolution(ts, interps)
    assert np.allclose(rebuilt(0.15).to_tensor(), sol.sol(0.15).to_tensor())


def test_unknown_options_warn_and_have_no_effect(y0):
    with pytest.warns(OptionWarning, match=r"method 'ra-bug' got unknown option\(s\) \['rank_tol'"):
        warned = tf.solve_ivp(_decay, (0.0, 0.2), y0, step=0.1, rank_tol=1e-3)
    plain = tf.solve_ivp(_decay, (0.0, 0.2), y0, step=0.1)
    assert np.array_equal(warned.y[-1].to_tensor(), plain.y[-1].to_tensor())
    # the warning points at the caller's line, and a filter makes it an error
    with pytest.warns(OptionWarning) as record:
        tf.solve_ivp(_decay, (0.0, 0.2), y0, method="bug", step=0.1, max_rank=3)
    assert record[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error", OptionWarning)
        with pytest.raises(OptionWarning, match="its options are: step, rtol"):
            tf.solve_ivp(_decay, (0.0, 0.2), y0, step=0.1, nonsense=1)


def test_vectorized_false_is_accepted_and_true_refused(y0):
    sol = tf.solve_ivp(_decay, (0.0, 0.2), y0, step=0.1, vectorized=False)
    assert sol.success
    with pytest.raises(ValueError, match="vectorized=True is not supported"):
        tf.solve_ivp(_decay, (0.0, 0.2), y0, step=0.1, vectorized=True)
    with pytest.raises(TypeError, match="vectorized must be True or False"):
        tf.solve_ivp(_decay, (0.0, 0.2), y0, step=0.1, vectorized="yes")


def test_integrators_and_operators_are_fuzzed_without_exclusions():
    assert not any(
        n.startswith(("tuckerflow.integrate.", "tuckerflow.operators.")) for n in fuzz.EXCLUDED
    )
    names = {
        "tuckerflow.integrate.KrylovExponential",
        "tuckerflow.operators.Banded",
        "tuckerflow.operators.laplacian",
        "tuckerflow.operators.second_difference",
        "tuckerflow.operators.schrodinger",
        "tuckerflow.integrate.StepInterpolant",
        "tuckerflow.integrate.TuckerOdeSolution",
        "tuckerflow.solve_ivp",
    }
    targets = [t for t in fuzz.public_callables(torch=False) if t.name in names]
    assert {t.name for t in targets} == names
    report = fuzz.fuzz(400, timeout=20.0, targets=targets)
    assert report.ok, report.summary()
