"""Dense output (tuckerflow.integrate.dense_output): the interpolant and solution objects
check what they are built from."""

from __future__ import annotations

import numpy as np
import pytest

import tuckerflow as tf
from tuckerflow.integrate import StepInterpolant, TuckerOdeSolution


def _decay(t, Y):
    return tf.scale(Y, -1.0)


@pytest.fixture(scope="module")
def y0():
    return tf.random_tucker((4, 3, 2), (2, 2, 2), rng=0)


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
