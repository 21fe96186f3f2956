"""solve_ivp's contract (tuckerflow.integrate.ivp): each behaviour compared with SciPy.

The reference problem is a dense tensor ODE small enough for ``scipy.integrate.solve_ivp``:
``Y' = A·Y`` (a Kronecker sum, mode-wise skew plus a damping) ``+ b sin(t) Y⊙Y`` on a
``4 × 3 × 3`` tensor. A Tucker state of full multilinear rank spans the whole space, so
every low-rank method solves the same ODE as SciPy and must agree with it to the tolerances.
The facts every method satisfies through ``solve_ivp`` (exactness on constant-rank data,
robustness, order, dtype and device) use the manufactured problems of
``integrate_problems.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import tensorly as tl
from integrate_problems import RotatingTucker, gauss_quadrature, rel_error

import tuckerflow as tf
from tuckerflow.integrate import METHODS, FixedRankBUG, KrylovExponential
from tuckerflow.operators import Banded, KroneckerSum, laplacian, schrodinger

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (4, 3, 3)
N = math.prod(SHAPE)


def _mats(seed=0):
    gen = np.random.default_rng(seed)
    out = []
    for n in SHAPE:
        w = gen.standard_normal((n, n))
        out.append((w - w.T) / 2 - 0.2 * np.eye(n))
    return out


MATS = _mats()


def dense_rhs(t, x, b):
    out = b * math.sin(t) * x * x
    for j, a in enumerate(MATS):
        out = out + np.moveaxis(np.tensordot(a, x, axes=(1, j)), 0, j)
    return out


def tucker_rhs(t, Y, b, *_):
    """The same right-hand side on a Tucker state (dense, it is tiny): uses ``args``."""
    x = Y.to_tensor()
    out = b * math.sin(t) * x * x
    for j, a in enumerate(MATS):
        out = out + tl.tensor(
            np.moveaxis(np.tensordot(a, tl.to_numpy(x), axes=(1, j)), 0, j), **tl.context(x)
        )
    return out


def scipy_reference(t_span, x0, b=0.5, **kw):
    return scipy.integrate.solve_ivp(
        lambda t, v: dense_rhs(t, v.reshape(SHAPE), b).ravel(),
        t_span,
        x0.ravel(),
        method="DOP853",
        rtol=1e-12,
        atol=1e-14,
        **kw,
    )


@pytest.fixture(scope="module")
def y0():
    return tf.random_tucker(SHAPE, SHAPE, rng=3)


def _full(method):
    return {"min_rank": SHAPE} if METHODS[method].rank_adaptive else {}


@pytest.mark.parametrize("method", list(METHODS))
def test_full_rank_adaptive_agrees_with_scipy(method, y0):
    """Adaptive steps at two tolerances: the error follows rtol (order of the global error
    bound ``C · rtol · ‖Y‖``) and tightening rtol by 100 shrinks it."""
    x0 = y0.to_tensor()
    ref = scipy_reference((0.0, 1.0), x0)
    end = ref.y[:, -1].reshape(SHAPE)
    errs = []
    for rtol in (1e-2, 1e-4):
        sol = tf.solve_ivp(
            tucker_rhs, (0.0, 1.0), y0, method=method, rtol=rtol, atol=1e-12, args=(0.5,),
            **_full(method),
        )  # fmt: skip
        assert sol.success and sol.status == 0, sol.message
        assert sol.t[-1] == 1.0 and sol.t_steps[-1] == 1.0
        err = np.linalg.norm(sol.y[-1].to_tensor() - end) / np.linalg.norm(end)
        errs.append(err)
        assert err <= 30 * rtol, (rtol, err)
        assert sol.nfev > 0 and sol.nsteps == len(sol.t_steps) - 1
    assert errs[1] <= errs[0] / 10


def test_backward_integration_agrees_with_scipy(y0):
    x0 = y0.to_tensor()
    ref = scipy_reference((1.0, -0.5), x0)
    end = ref.y[:, -1].reshape(SHAPE)
    for step in (None, 0.05):
        sol = tf.solve_ivp(
            tucker_rhs, (1.0, -0.5), y0, step=step, rtol=1e-5, atol=1e-12, args=(0.5,),
            min_rank=SHAPE, substep="rk4",
        )  # fmt: skip
        assert sol.success
        assert np.all(np.diff(sol.t) < 0) and sol.t[0] == 1.0 and sol.t[-1] == -0.5
        err = np.linalg.norm(sol.y[-1].to_tensor() - end) / np.linalg.norm(end)
        assert err <= (3e-4 if step is None else 1e-5), err


def test_dense_output_agrees_with_scipy_and_has_the_methods_order(y0):
    x0 = y0.to_tensor()
    times = np.linspace(0.0, 1.0, 23)
    ref = scipy_reference((0.0, 1.0), x0, dense_output=True)
    sol = tf.solve_ivp(
        tucker_rhs, (0.0, 1.0), y0, rtol=1e-6, atol=1e-12, args=(0.5,), min_rank=SHAPE,
        dense_output=True,
    )  # fmt: skip
    assert sol.sol is not None
    for t in times:
        want = ref.sol(t).reshape(SHAPE)
        got = sol.sol(t)
        assert isinstance(got, tf.TuckerTensor)
        assert np.linalg.norm(got.to_tensor() - want) <= 3e-5 * np.linalg.norm(want)
    # fixed steps, second-order method: the interpolant between the steps converges like
    # the method (error at the midpoints of the steps / 4 when h halves)
    errs = []
    for h in (0.1, 0.05):
        sol = tf.solve_ivp(
            tucker_rhs, (0.0, 1.0), y0, method="midpoint-bug", step=h, args=(0.5,),
            rank_atol=1e-13, dense_output=True,
        )  # fmt: skip
        mids = np.arange(h / 2, 1.0, h)
        errs.append(
            max(np.linalg.norm(sol.sol(t).to_tensor() - ref.sol(t).reshape(SHAPE)) for t in mids)
        )
    assert errs[0] / errs[1] >= 3.0, errs  # at least second order
    with pytest.raises(ValueError, match="outside the integrated span"):
        sol.sol(1.5)


def _component(t, Y, *args):
    """An event: the (0, 0, 0) entry of Y minus a level (a scalar functional)."""
    x = Y.to_tensor()
    return float(tl.to_numpy(x[0, 0, 0])) - args[-1]


@pytest.mark.parametrize("step", [None, 0.05])
def test_events_agree_with_scipy(y0, step):
    x0 = y0.to_tensor()
    level = 0.03  # x[0, 0, 0](t) crosses it three times in (0, 2.5)

    def ev_scipy(t, v):
        return v[0] - level

    def ev(t, Y, b, lev):
        return _component(t, Y, lev)

    ref = scipy_reference((0.0, 2.5), x0, events=ev_scipy)
    assert ref.t_events[0].size == 3
    kw = dict(step=step, rtol=1e-5, atol=1e-12, args=(0.5, level), min_rank=SHAPE)
    sol = tf.solve_ivp(tucker_rhs, (0.0, 2.5), y0, events=ev, **kw)
    assert sol.success and sol.status == 0
    assert len(sol.t_events) == 1 and len(sol.y_events) == 1
    np.testing.assert_allclose(sol.t_events[0], ref.t_events[0], atol=2e-3)
    for te, ye in zip(sol.t_events[0], sol.y_events[0]):
        assert abs(_component(te, ye, level)) <= 1e-5
    # a terminal event stops there: status 1, the last output is the event time and state
    ev.terminal = True
    ev.direction = 0
    sol = tf.solve_ivp(tucker_rhs, (0.0, 2.5), y0, events=ev, **kw)
    assert sol.status == 1 and sol.success and "termination event" in sol.message
    assert sol.t[-1] == pytest.approx(ref.t_events[0][0], abs=2e-3)
    assert sol.t[-1] == sol.t_events[0][-1]
    assert abs(_component(sol.t[-1], sol.y[-1], level)) <= 1e-5
    # terminal after two occurrences, only crossings in one direction
    ev.terminal = 2
    ev.direction = 1.0
    ev_scipy.terminal, ev_scipy.direction = 2, ev.direction
    ref = scipy_reference((0.0, 2.5), x0, events=ev_scipy)
    sol = tf.solve_ivp(tucker_rhs, (0.0, 2.5), y0, events=ev, **kw)
    assert sol.status == ref.status == 1
    np.testing.assert_allclose(sol.t_events[0], ref.t_events[0], atol=2e-3)
    # with t_eval given, the outputs are the requested times up to the event, then the event
    t_eval = np.linspace(0.0, 2.5, 11)
    sol = tf.solve_ivp(tucker_rhs, (0.0, 2.5), y0, events=ev, t_eval=t_eval, **kw)
    assert sol.t[-1] == sol.t_events[0][-1]
    np.testing.assert_array_equal(sol.t[:-1], t_eval[t_eval < sol.t[-1]])


def test_t_eval_adaptive_uses_the_dense_output(y0):
    x0 = y0.to_tensor()
    t_eval = np.linspace(0.0, 1.0, 41)
    ref = scipy_reference((0.0, 1.0), x0, t_eval=t_eval)
    sol = tf.solve_ivp(
        tucker_rhs, (0.0, 1.0), y0, rtol=1e-6, atol=1e-12, args=(0.5,), min_rank=SHAPE,
        t_eval=t_eval,
    )  # fmt: skip
    np.testing.assert_array_equal(sol.t, t_eval)
    # the steps do not land on the output times
    assert not set(sol.t_steps[1:-1].tolist()) & set(t_eval.tolist())
    for k in range(len(t_eval)):
        want = ref.y[:, k].reshape(SHAPE)
        assert np.linalg.norm(sol.y[k].to_tensor() - want) <= 3e-5 * np.linalg.norm(want)


def test_adaptive_needs_fewer_evaluations_than_fixed_at_equal_error():
    """Heat flow with a product potential from rough rank-2 data: a fast transient, then
    slow smooth decay. Adaptive ``ra-bug`` reaches the error of the fixed-step run with a
    fraction of the evaluations of fun (measured: error 7.9e-4 with 443 evaluations against
    3.0e-3 with 1600)."""
    n = 10
    x = np.linspace(-1, 1, n)
    op = 0.02 * laplacian((n,) * 3, 2 / (n + 1)) + KroneckerSum(
        (n,) * 3, [(-1.0, [Banded(n, {0: x})] * 3)]
    )
    y0 = tf.random_tucker((n,) * 3, 2, rng=0)
    exact = KrylovExponential(rtol=1e-13)(lambda t, v: op.apply_dense(v), 0.0, y0.to_tensor(), 2.0)
    fixed = tf.solve_ivp(op, (0.0, 2.0), y0, step=0.02, rank_atol=1e-10)
    adaptive = tf.solve_ivp(op, (0.0, 2.0), y0, rtol=1e-3, atol=1e-12)
    err_fixed, err_adaptive = (
        np.linalg.norm(s.y[-1].to_tensor() - exact) / np.linalg.norm(exact)
        for s in (fixed, adaptive)
    )
    assert err_adaptive <= err_fixed
    assert adaptive.nfev * 3 < fixed.nfev
    steps = np.diff(adaptive.t_steps)
    assert steps[-2] > 20 * steps[0]  # the step size grew as the transient decayed


@pytest.mark.parametrize("method", list(METHODS))
def test_step_below_time_resolution_fails_cleanly(method, y0):
    sol = tf.solve_ivp(tucker_rhs, (1.0, 2.0), y0, method=method, step=1e-17, args=(0.5,))
    assert not sol.success and sol.status == -1
    assert "below the time resolution" in sol.message and sol.nsteps == 0
    assert sol.t[-1] == 1.0


def test_adaptive_step_collapse_fails_cleanly():
    """``‖Y‖' = ‖Y‖²`` blows up at t = 1: the step size collapses; the run ends with
    success=False and a finite last state, never an endless loop."""
    y0 = tf.random_tucker((3, 3), (1, 1), rng=0)

    def fun(t, Y):
        return tf.scale(Y, float(tf.norm(Y)))

    sol = tf.solve_ivp(fun, (0.0, 2.0), y0, method="bug", rtol=1e-2)
    assert not sol.success and sol.status == -1
    blowup = 1.0 / float(tf.norm(y0))
    assert 0.99 * blowup < sol.t[-1] < 1.01 * blowup
    assert np.all(np.isfinite(sol.y[-1].to_tensor()))


@pytest.mark.parametrize("method", list(METHODS))
def test_nan_in_a_substep_keeps_the_last_good_state(method, y0):
    def fun(t, Y, b):
        out = tucker_rhs(t, Y, b)
        return out * math.nan if t > 0.25 else out

    for step in (0.1, None):
        sol = tf.solve_ivp(fun, (0.0, 1.0), y0, method=method, step=step, args=(0.5,))
        assert not sol.success and sol.status == -1
        assert "non-finite" in sol.message
        assert sol.t[-1] <= 0.25 + 1e-12
        assert np.all(np.isfinite(sol.y[-1].to_tensor()))


@pytest.mark.parametrize("method", list(METHODS))
def test_contraction_of_the_wrong_shape_fails_cleanly(method, y0):
    class Liar:
        shape = SHAPE

        def contract(self, matrices):
            return tl.zeros((1, 1, 1))

    sol = tf.solve_ivp(lambda t, Y: Liar(), (0.0, 1.0), y0, method=method, step=0.1)
    assert not sol.success and "returned shape (1, 1, 1), expected" in sol.message
    assert sol.t[-1] == 0.0


class TestBadInput:
    def test_tolerances(self, y0):
        for bad in (0.0, -1e-3, math.nan, math.inf):
            with pytest.raises(ValueError, match="rtol=.* must be a finite number > 0"):
                tf.solve_ivp(tucker_rhs, (0, 1), y0, rtol=bad, args=(0.5,))
        for bad in (-1e-6, math.nan):
            with pytest.raises(ValueError, match="atol=.* must be a finite number >= 0"):
                tf.solve_ivp(tucker_rhs, (0, 1), y0, atol=bad, args=(0.5,))
        with pytest.raises(TypeError, match="rtol must be a real number"):
            tf.solve_ivp(tucker_rhs, (0, 1), y0, rtol="0.1", args=(0.5,))

    def test_step_sizes(self, y0):
        for name in ("first_step", "max_step", "step"):
            for bad in (0.0, -0.1):
                with pytest.raises(ValueError, match=f"{name}={bad} must be > 0"):
                    tf.solve_ivp(tucker_rhs, (1, 0), y0, args=(0.5,), **{name: bad})
        with pytest.raises(ValueError, match="first_step=2.0 exceeds the length of t_span"):
            tf.solve_ivp(tucker_rhs, (1, 0), y0, args=(0.5,), first_step=2.0)

    def test_t_eval(self, y0):
        with pytest.raises(ValueError, match="t_eval must lie within"):
            tf.solve_ivp(tucker_rhs, (1, 0), y0, args=(0.5,), t_eval=[0.5, 1.5])
        with pytest.raises(ValueError, match="strictly decreasing"):
            tf.solve_ivp(tucker_rhs, (1, 0), y0, args=(0.5,), t_eval=[0.2, 0.5])
        with pytest.raises(ValueError, match="strictly increasing"):
            tf.solve_ivp(tucker_rhs, (0, 1), y0, args=(0.5,), t_eval=[0.5, 0.2])

    def test_events_and_args(self, y0):
        with pytest.raises(TypeError, match=r"events\[1\]=3 is not callable"):
            tf.solve_ivp(tucker_rhs, (0, 1), y0, args=(0.5,), events=[lambda t, Y, b: 1.0, 3])
        with pytest.raises(TypeError, match="events must be a callable"):
            tf.solve_ivp(tucker_rhs, (0, 1), y0, args=(0.5,), events=3)
        # a string is a sequence, but not of events: refused as a whole, not as events[0]='a'
        for bad in ("abc", b"abc"):
            refused = rf"events must be a callable .* got the {type(bad).__name__} {bad!r}"
            with pytest.raises(TypeError, match=refused):
                tf.solve_ivp(tucker_rhs, (0, 1), y0, args=(0.5,), events=bad)

        def ev(t, Y, b):
            return 1.0

        ev.terminal = -1
        with pytest.raises(ValueError, match="terminal=-1 must be a bool or a positive"):
            tf.solve_ivp(tucker_rhs, (0, 1), y0, args=(0.5,), events=ev)
        with pytest.raises(TypeError, match="args must be a tuple"):
            tf.solve_ivp(tucker_rhs, (0, 1), y0, args=0.5)

    def test_y0(self, y0):
        core = tl.copy(y0.core)
        core[0, 0, 0] = math.nan
        with pytest.raises(ValueError, match="y0.core contains non-finite values"):
            tf.solve_ivp(tucker_rhs, (0, 1), tf.TuckerTensor(core, y0.factors), args=(0.5,))


def test_float32_adaptive_follows_float64():
    """The adaptive run in float32 from the same start follows the float64 one: both are
    within the tolerance of the exact solution; float32 refuses an rtol it cannot resolve."""
    n = 8
    op = 0.02 * laplacian((n,) * 3, 2 / (n + 1))
    y64 = tf.random_tucker((n,) * 3, 2, rng=1, dtype="float64")
    y32 = tf.TuckerTensor(y64.core.astype(np.float32), [u.astype(np.float32) for u in y64.factors])
    exact = KrylovExponential(rtol=1e-13)(lambda t, v: op.apply_dense(v), 0.0, y64.to_tensor(), 0.5)
    errs = {}
    for name, y in (("float32", y32), ("float64", y64)):
        sol = tf.solve_ivp(op, (0.0, 0.5), y, rtol=1e-3, atol=1e-7)
        assert sol.success and sol.y[-1].core.dtype == y.core.dtype
        errs[name] = np.linalg.norm(sol.y[-1].to_tensor() - exact) / np.linalg.norm(exact)
    # the float32 run adds its round-off (eps32 ~ 6e-8 per operation, a few hundred
    # operations) to the float64 run's time and truncation error
    assert errs["float32"] <= 2 * errs["float64"] + 1e-4, errs
    assert errs["float64"] <= 3e-3
    with pytest.raises(ValueError, match="rtol=1e-07 is below 100·eps of y0's dtype float32"):
        tf.solve_ivp(op, (0.0, 0.5), y32, rtol=1e-7)


def test_backward_exponential_substep_inverts_the_forward_run():
    n = 8
    op = 0.02 * laplacian((n,) * 3, 2 / (n + 1))
    y0 = tf.random_tucker((n,) * 3, 2, rng=2)
    fwd = tf.solve_ivp(op, (0.0, 0.2), y0, method="bug", step=0.05, substep="exp")
    back = tf.solve_ivp(op, (0.2, 0.0), fwd.y[-1], method="bug", step=0.05, substep="exp")
    import scipy.linalg

    x0 = y0.to_tensor()
    eye = np.eye(n**3)
    a = np.stack([op.apply_dense(e.reshape((n,) * 3)).ravel() for e in eye], axis=1)
    exact_fwd = (scipy.linalg.expm(0.2 * a) @ x0.ravel()).reshape(x0.shape)
    # the backward run with the exact substep solves the backward problem: the dense
    # backward exponential of the forward result, to the method's error
    x1 = fwd.y[-1].to_tensor()
    exact_back = (scipy.linalg.expm(-0.2 * a) @ x1.ravel()).reshape(x0.shape)
    assert np.linalg.norm(fwd.y[-1].to_tensor() - exact_fwd) <= 1e-2 * np.linalg.norm(exact_fwd)
    assert np.linalg.norm(back.y[-1].to_tensor() - exact_back) <= 1e-2 * np.linalg.norm(x0)
    assert np.linalg.norm(back.y[-1].to_tensor() - fwd.y[-1].to_tensor()) > 1e-3


def test_adaptive_dense_output_and_events_on_every_backend(backend):
    """The adaptive controller, the dense output and the event location give the NumPy
    results on every backend (the same arithmetic in another array library)."""
    n = 6
    op = 0.05 * laplacian((n,) * 3, 2 / (n + 1))
    y0 = tf.random_tucker((n,) * 3, 2, rng=3, device=backend.device)
    level = 0.5 * float(backend.numpy(tf.norm(y0)))

    def half(t, Y):
        return float(backend.numpy(tf.norm(Y))) - level

    half.terminal = True
    sol = tf.solve_ivp(op, (0.0, 5.0), y0, rtol=1e-4, atol=1e-10, events=half, dense_output=True)
    assert sol.status == 1 and len(sol.t_events[0]) == 1
    core, factors = backend.numpy(y0.core), [backend.numpy(u) for u in y0.factors]
    mid = 0.5 * sol.t[-1]

    def half_np(t, Y):
        return float(tf.norm(Y)) - level

    half_np.terminal = True
    with tl.backend_context("numpy"):
        ref = tf.solve_ivp(
            op, (0.0, 5.0), tf.TuckerTensor(core, factors), rtol=1e-4, atol=1e-10,
            events=half_np, dense_output=True,
        )  # fmt: skip
        want = ref.sol(mid).to_tensor()
    # other summation orders in the other library: the same steps, results to round-off
    assert sol.nsteps == ref.nsteps and sol.t_events[0][0] == pytest.approx(ref.t_events[0][0])
    got = backend.numpy(sol.sol(mid).to_tensor())
    assert np.linalg.norm(got - want) <= 1e-8 * np.linalg.norm(want)
    assert abs(half(sol.t[-1], sol.y[-1])) <= 1e-6 * level
    with pytest.raises(ValueError, match=r"events\[0\]\(t, Y\) returned nan"):
        tf.solve_ivp(op, (0.0, 1.0), y0, events=lambda t, Y: math.nan)


# ------------------------------------------------------------------------------------------
# facts of every method: exactness, robustness, order, dtype and device

FIXED = ("psi", "bug")


@pytest.mark.parametrize("method", ["psi", "bug", "ra-bug"])
def test_exact_for_constant_rank_data(backend, dtype64, method):
    prob = RotatingTucker(backend, (7, 8, 6), (2, 3, 2), dtype64, seed=3)
    kw = {} if method in FIXED else {"rank_atol": 1e-12}
    sol = tf.solve_ivp(
        prob, (0.0, 0.4), prob.A(0.0), method=method, step=0.1, substep=gauss_quadrature, **kw
    )
    assert sol.success and sol.status == 0
    # float64 round-off accumulated over a few steps with condition ~ 1/decay^r
    assert rel_error(backend, sol.y[-1], prob.dense(0.4)) < 1e-10
    assert sol.ranks[-1] == (2, 3, 2)


@pytest.mark.parametrize("method", ["psi", "bug", "ra-bug"])
def test_robust_to_small_singular_values(backend, method):
    """Over-approximated rank: singular values 1e-6 below the data must not blow up."""
    prob = RotatingTucker(backend, (7, 7, 7), (2, 2, 2), "float64", seed=5, extra=2.0)
    a0 = prob.A(0.0)
    noise = tf.random_tucker((7, 7, 7), (2, 2, 2), rng=9, device=backend.device)
    y0 = tf.add(a0, noise, beta=1e-6, rtol=None)  # rank (4, 4, 4), four σ ~ 1e-6
    assert y0.rank == (4, 4, 4)
    kw = {} if method in FIXED else {"rank_atol": 1e-12, "max_rank": 4}
    ref = prob.dense(0.5)
    errs = {}
    for start, name in ((a0, "exact rank"), (y0, "over-approximated")):
        sol = tf.solve_ivp(prob, (0.0, 0.5), start, method=method, step=0.05, **kw)
        assert sol.success
        errs[name] = rel_error(backend, sol.y[-1], ref)
    # the over-approximated run stays at the level of the exact-rank run (no 1/σ growth):
    # the difference is bounded by the 1e-6 model error plus the method's own error
    assert errs["over-approximated"] <= 2 * errs["exact rank"] + 1e-4


@pytest.mark.parametrize("method", list(METHODS))
def test_observed_order(backend, method):
    """Manufactured problem ``F = Ȧ + 2(Y⊙Y − A⊙A)``, exact solution A(t) of rank 2."""
    prob = RotatingTucker(backend, (6, 6, 6), (2, 2, 2), "float64", seed=1, extra=2.0)
    kw = {} if method in FIXED else {"rank_atol": 1e-12, "max_rank": 2}
    # the parallel BUG's error constant is large at coarse steps (coupling blocks dropped):
    # it reaches its asymptotic regime only below h ~ 1/32 on this problem
    end, steps = (
        (0.25, [1 / 32, 1 / 64, 1 / 128])
        if method == "parallel-bug"
        else (
            0.5,
            [1 / 8, 1 / 16, 1 / 32],
        )
    )
    errs = []
    for h in steps:
        sol = tf.solve_ivp(prob, (0.0, end), prob.A(0.0), method=method, step=h, **kw)
        assert sol.success
        errs.append(rel_error(backend, sol.y[-1], prob.dense(end)))
    order = np.polyfit(np.log(steps), np.log(errs), 1)[0]
    if METHODS[method].order == 2:
        assert order >= 1.8, errs
    else:
        # first-order methods: the fitted slope over three halvings lies near 1
        assert 0.8 <= order <= 1.4, errs


@pytest.mark.parametrize("low", ["float32", "complex64"])
@pytest.mark.parametrize("method", list(METHODS))
def test_dtype_and_device_preserved(backend, low, method):
    dtype = low
    shape = (5, 4, 3)
    x = np.linspace(-1, 1, 5)
    op = 0.1 * laplacian(shape, 0.5)
    if "complex" in dtype:
        op = op + schrodinger(shape, 0.5, [x, None, None])
    y0 = tf.random_tucker(shape, 2, rng=0, dtype=dtype, device=backend.device)
    sol = tf.solve_ivp(op, (0, 0.2), y0, method=method, step=0.1, substep="exp")
    assert sol.success
    for y in sol.y:
        for a in (y.core, *y.factors):
            assert str(a.dtype).rsplit(".", 1)[-1] == dtype
            assert tf._backend.device_of(a) == tf._backend.device_of(y0.core)
    # the low-precision run follows the float64/complex128 one to its own precision
    ref = tf.solve_ivp(
        op,
        (0, 0.2),
        tf.random_tucker(
            shape,
            2,
            rng=0,
            dtype={"float32": "float64", "complex64": "complex128"}[dtype],
            device=backend.device,
        ),
        method=method,
        step=0.1,
        substep="exp",
    )
    diff = np.linalg.norm(
        backend.numpy(sol.y[-1].to_tensor()) - backend.numpy(ref.y[-1].to_tensor())
    )
    # a few hundred operations with relative error eps32 ~ 1e-7 on a tensor of norm 1, plus,
    # for the rank-adaptive methods, two truncations at the default sqrt(eps32) ~ 3e-4
    assert diff <= 1e-3


# ------------------------------------------------------------------------------------------
# result object, output times, callback


def test_t_eval_callback_and_counters(backend):
    op = 0.05 * laplacian((6, 5, 4), 0.25)
    y0 = tf.random_tucker((6, 5, 4), 2, rng=0, device=backend.device)
    sol = tf.solve_ivp(op, (0, 0.5), y0, method="ra-bug", step=0.2, t_eval=[0.0, 0.25, 0.5])
    np.testing.assert_allclose(sol.t, [0.0, 0.25, 0.5])
    assert len(sol.y) == 3 and sol.status == 0 and sol.success
    # steps are shortened to land on the output times: 0.2, 0.25, 0.45, 0.5
    np.testing.assert_allclose(sol.t_steps, [0.0, 0.2, 0.25, 0.45, 0.5])
    assert len(sol.ranks) == len(sol.t_steps) and sol.nsteps == 4
    assert sol.nfev == 4 * (3 * 4 + 4)  # RK4: 4 evaluations per substep, 4 substeps per step
    seen = []
    sol = tf.solve_ivp(
        op, (0, 1), y0, method="bug", step=0.1, callback=lambda t, y: seen.append(t) or t >= 0.3
    )
    assert sol.status == 1 and sol.success and sol.t[-1] == pytest.approx(0.3)
    assert seen == pytest.approx([0.1, 0.2, 0.3])
    assert tf.solve_ivp(op, (0.5, 0.5), y0, method="bug", step=0.1).nsteps == 0


def test_method_accepts_a_subclass(backend):
    class CountingBUG(FixedRankBUG):
        steps_taken = 0

        def _advance(self, t, y, h):
            CountingBUG.steps_taken += 1
            return super()._advance(t, y, h)

    op = 0.05 * laplacian((6, 5, 4), 0.25)
    y0 = tf.random_tucker((6, 5, 4), 2, rng=0, device=backend.device)
    sol = tf.solve_ivp(op, (0, 0.3), y0, method=CountingBUG, step=0.1)
    ref = tf.solve_ivp(op, (0, 0.3), y0, method="bug", step=0.1)
    assert CountingBUG.steps_taken == 3 and sol.nsteps == 3
    np.testing.assert_array_equal(
        backend.numpy(sol.y[-1].to_tensor()), backend.numpy(ref.y[-1].to_tensor())
    )
    with pytest.raises(TypeError, match="method must be a name in"):
        tf.solve_ivp(op, (0, 0.3), y0, method=int, step=0.1)
