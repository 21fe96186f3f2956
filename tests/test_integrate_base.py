"""What every integrator checks (tuckerflow.integrate.base): times, step sizes, names, rank
caps, a right-hand side of the wrong shape or with non-finite values, a step below the time
resolution (found by the bad-input fuzz, tuckerflow.testing.fuzz), unknown options."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import tensorly as tl

import tuckerflow as tf
from tuckerflow.integrate import METHODS, OptionWarning, RankAdaptiveBUG
from tuckerflow.operators import laplacian

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TestBadInput:
    @pytest.fixture
    def y0(self, backend):
        return tf.random_tucker((5, 4, 3), 2, rng=0, device=backend.device)

    @pytest.fixture
    def op(self):
        return laplacian((5, 4, 3), 0.2)

    def test_time_span_and_step(self, op, y0):
        with pytest.raises(ValueError, match="must be finite"):
            tf.solve_ivp(op, (0.0, math.inf), y0, step=0.1)
        with pytest.raises(ValueError, match="must be finite"):
            tf.solve_ivp(op, (math.nan, 1.0), y0, step=0.1)
        for bad in (0.0, -0.1):
            with pytest.raises(ValueError, match=f"step={bad} must be > 0"):
                tf.solve_ivp(op, (0.0, 1.0), y0, step=bad)
        with pytest.raises(ValueError, match="t_eval must lie within"):
            tf.solve_ivp(op, (0.0, 1.0), y0, step=0.1, t_eval=[0.5, 2.0])

    def test_names(self, op, y0):
        with pytest.raises(ValueError, match=r"method='rk45' is not one of \['bug', 'midpoint"):
            tf.solve_ivp(op, (0, 1), y0, method="rk45", step=0.1)
        with pytest.warns(OptionWarning, match=r"unknown option\(s\) \['rank_tol'\], which"):
            tf.solve_ivp(op, (0, 0.2), y0, step=0.1, rank_tol=1e-3)
        with pytest.warns(OptionWarning, match=r"method 'bug' got unknown option\(s\) \['max_r"):
            tf.solve_ivp(op, (0, 0.2), y0, method="bug", step=0.1, max_rank=3)
        with pytest.raises(ValueError, match=r"substep='rk5' is not one of \['euler', 'exp'"):
            tf.solve_ivp(op, (0, 1), y0, step=0.1, substep="rk5")
        with pytest.raises(ValueError, match="truncation='svd' is not one of"):
            tf.solve_ivp(op, (0, 1), y0, step=0.1, truncation="svd")

    def test_rank_caps(self, op, y0):
        with pytest.raises(ValueError, match=r"max_rank\[0\]=0 must be at least 1"):
            tf.solve_ivp(op, (0, 1), y0, step=0.1, max_rank=0)
        with pytest.raises(ValueError, match=r"min_rank\[1\]=0 must be at least 1"):
            tf.solve_ivp(op, (0, 1), y0, step=0.1, min_rank=(1, 0, 1))
        with pytest.raises(ValueError, match=r"y0.rank\[0\]=2 exceeds max_rank\[0\]=1"):
            tf.solve_ivp(op, (0, 1), y0, step=0.1, max_rank=1)
        with pytest.raises(ValueError, match="rank_rtol must be a finite number >= 0"):
            tf.solve_ivp(op, (0, 1), y0, step=0.1, rank_rtol=-1.0)

    @pytest.mark.parametrize("method", list(METHODS))
    def test_wrong_shape_stops_with_last_good_state(self, backend, op, y0, method):
        def fun(t, Y):
            if t > 0.25:
                return tl.zeros((5, 4, 4), **tl.context(Y.core))
            return op(t, Y)

        sol = tf.solve_ivp(fun, (0, 1), y0, method=method, step=0.2)
        assert not sol.success and sol.status == -1
        assert "returned shape (5, 4, 4), expected Y.shape=(5, 4, 3)" in sol.message
        # the first evaluation past 0.25 is a substep stage of the step from 0.2
        assert "at t=0.3" in sol.message and "last good state is at t=0.2" in sol.message
        assert sol.t[-1] == pytest.approx(0.2) and len(sol.y) == len(sol.t)
        assert np.isfinite(backend.numpy(sol.y[-1].core)).all()

    @pytest.mark.parametrize("method", list(METHODS))
    def test_nonfinite_stops(self, backend, op, y0, method):
        def fun(t, Y):
            out = op(t, Y)
            return out * math.nan if t >= 0.2 else out

        sol = tf.solve_ivp(fun, (0, 1), y0, method=method, step=0.1)
        assert not sol.success
        # the step from 0.1 evaluates at its end point 0.2 and fails
        assert "non-finite" in sol.message and "in the step from t=0.1 to t=0.2" in sol.message
        assert sol.t[-1] == pytest.approx(0.1) and sol.nsteps == 1
        assert np.isfinite(backend.numpy(sol.y[-1].to_tensor())).all()

    def test_step_after_finish(self, op, y0):
        solver = RankAdaptiveBUG(op, 0.0, y0, 0.1, step=0.1)
        solver.step()
        assert solver.status == "finished"
        with pytest.raises(RuntimeError, match="status is 'finished'"):
            solver.step()


# ------------------------------------------------------------------------------------------
# a step below the time resolution, unknown options, `vectorized`


def _decay(t, Y):
    return tf.scale(Y, -1.0)


@pytest.fixture(scope="module")
def y0():
    return tf.random_tucker((4, 3, 2), (2, 2, 2), rng=0)


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
