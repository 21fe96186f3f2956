"""The recompression kernel: the HOSVD rank rule, scale safety, and refusal of non-finite input."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import tensorly as tl
from conftest import eps, tol
from hypothesis import given, settings
from hypothesis import strategies as st

import tuckerflow as tf
from tuckerflow.dlra import truncate_core
from tuckerflow.linalg import left_singular, svd
from tuckerflow.testing.strategies import seeds, shape_and_rank


def _decaying(shape, seed, dtype="float64", rate=0.5):
    """A dense tensor whose unfoldings have geometrically decaying spectra."""
    gen = np.random.default_rng(seed)
    x = gen.standard_normal(shape)
    if "complex" in dtype:
        x = x + 1j * gen.standard_normal(shape)
    for i, n in enumerate(shape):
        w = rate ** np.arange(n)
        x = np.moveaxis(np.tensordot(np.diag(w), np.moveaxis(x, i, 0), axes=1), 0, i)
    return x / np.linalg.norm(x)


def _hosvd_error(x, rank):
    """‖X − HOSVD_r(X)‖ in float64 on the host (reference implementation)."""
    out = x
    for i, r in enumerate(rank):
        m = np.moveaxis(x, i, 0).reshape(x.shape[i], -1)
        u = np.linalg.svd(m, full_matrices=False)[0][:, :r]
        out = np.moveaxis(np.tensordot(u @ u.conj().T, np.moveaxis(out, i, 0), axes=1), 0, i)
    return float(np.linalg.norm(x - out))


@settings(max_examples=30)
@given(
    sr=shape_and_rank(min_dims=2, max_dims=4, max_side=6), seed=seeds, level=st.floats(1e-3, 0.6)
)
def test_hosvd_tolerance_holds_and_no_rank_can_be_lowered(backend, dtype, sr, seed, level):
    shape, _ = sr
    x = _decaying(shape, seed % 10_000, dtype)
    y, info = tf.hosvd(backend.tensor(x, dtype), rtol=level, return_info=True)
    err = np.linalg.norm(backend.numpy(y.to_tensor()) - x)
    slack = tol(dtype, 100)
    assert err <= level + slack  # ‖X‖ = 1: the guarantee
    # the reported error is the exact error, not the sum of the tails
    assert abs(info.error_bound - err) <= slack
    tf.validate_rank(shape, y.rank)
    if eps(dtype) < 1e-10:
        # greedy minimality: one rank less in any mode leaves the tolerance
        for i in range(len(shape)):
            if y.rank[i] > 1:
                lower = list(y.rank)
                lower[i] -= 1
                lower = tf.largest_valid_rank(lower)
                assert _hosvd_error(x, lower) > level * (1 - 1e-9)


@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64", "complex128"])
@pytest.mark.parametrize("level", [0.3, 0.05, 1e-3])
def test_matrix_hosvd_ranks_equal_the_svd_truncation(backend, dtype, level):
    # d = 2: both unfoldings share their singular values, so the HOSVD of a matrix with
    # tolerance ϑ must keep the rank of the SVD truncation with budget ϑ, not more
    x = _decaying((12, 9), 3, dtype, rate=0.6)
    s = np.linalg.svd(x, compute_uv=False)
    tails = np.sqrt(np.concatenate([np.cumsum((s**2)[::-1])[::-1], [0.0]]))
    expected = int(np.nonzero(tails <= level)[0][0])
    y = tf.hosvd(backend.tensor(x, dtype), rtol=level)
    assert y.rank == (expected, expected)
    # the integrators' and the optimizer's path (an augmented core in orthonormal bases)
    z = tf.hosvd(backend.tensor(x, dtype))
    new, p_list, info = truncate_core(z.core, z.factors, rtol=level, method="hosvd")
    assert new.rank == (expected, expected)
    assert info.error_bound == pytest.approx(tails[expected], rel=1e-3, abs=tol(dtype, 10))


def test_matrix_ranks_in_float32_match_float64(backend):
    x = _decaying((16, 12), 5, rate=0.7)
    for level in (0.2, 0.05, 0.01):
        ranks = {
            dt: tf.hosvd(backend.tensor(x, dt), rtol=level).rank for dt in ("float32", "float64")
        }
        assert ranks["float32"] == ranks["float64"]


@pytest.mark.parametrize("level", [0.2, 0.02])
def test_hosvd_keeps_no_more_than_the_split_rule(backend, level):
    # the previous rule (the budget split alone) is the greedy search's starting point
    x = _decaying((8, 7, 6, 5), 11, rate=0.55)
    y, info = tf.hosvd(backend.tensor(x), rtol=level, return_info=True)
    st_y = tf.st_hosvd(backend.tensor(x), rtol=level)
    split = []
    used2, d = 0.0, 4
    for i in range(d):
        m = np.moveaxis(x, i, 0).reshape(x.shape[i], -1)
        s = np.linalg.svd(m, compute_uv=False)
        r, t2 = tf.select_rank(s, (level**2 - used2) / (d - i))
        split.append(r)
        used2 += t2
    assert all(a <= b for a, b in zip(y.rank, split))
    assert sum(y.rank) < sum(split)  # this example has room to lower
    assert info.error_bound <= level
    assert math.prod(st_y.rank) > 0


@pytest.mark.parametrize("scale", [1e-300, 1e-200, 1e200, 1e300])
@pytest.mark.parametrize("algo", ["hosvd", "st_hosvd", "truncate"])
def test_truncation_is_scale_safe(backend, scale, algo):
    y0 = tf.random_tucker((6, 5, 4), (3, 3, 2), rng=2, decay=0.3, device=backend.device)
    x = y0.to_tensor()

    def run(t):
        if algo == "truncate":
            return tf.truncate(tf.TuckerTensor(y0.core * t, y0.factors), rtol=1e-3)
        return getattr(tf, algo)(x * t, rtol=1e-3)

    ref = run(1.0)
    out = run(scale)
    assert out.rank == ref.rank == (3, 3, 2)
    rel = np.linalg.norm(backend.numpy(out.core) / scale - backend.numpy(ref.core))
    assert rel <= tol("float64", 100)
    assert float(backend.numpy(tf.norm(out))) / scale == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("scale", [1e-300, 1e-200, 1.0, 1e200, 1e300])
def test_norm_is_scale_safe(backend, scale):
    y = tf.random_tucker((5, 4, 3), 2, rng=0, device=backend.device)
    z = tf.TuckerTensor(y.core * scale, y.factors)
    assert float(backend.numpy(tf.norm(z))) == pytest.approx(scale, rel=1e-12)
    # plain arithmetic: non-finite values propagate as IEEE arithmetic does (an inf meets
    # the mixed signs of the factors' R: inf or NaN), they are never turned into a number
    bad = backend.numpy(y.core).copy()
    bad.flat[0] = np.inf
    nrm = tf.norm(tf.TuckerTensor(backend.tensor(bad), y.factors))
    assert not math.isfinite(float(backend.numpy(nrm)))


def _finishes(fn, timeout=20.0):
    """Run ``fn`` in a daemon thread; return its exception (or None) and whether it ended."""
    box = {}

    def target():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            box["exc"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    return box.get("exc"), not t.is_alive()


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_non_finite_input_is_refused_before_lapack(backend, value):
    a = np.random.default_rng(0).standard_normal((4, 4))
    a[1, 2] = value
    # LAPACK's SVD never returns on this 4×4 matrix with one inf: the check must come first
    calls = {
        "left_singular": lambda: left_singular(backend.tensor(a)),
        "svd": lambda: svd(backend.tensor(a)),
        "truncate_core": lambda: truncate_core(backend.tensor(a), [None, None], rtol=0.1),
        "hosvd": lambda: tf.hosvd(backend.tensor(a), rtol=0.1),
        "st_hosvd": lambda: tf.st_hosvd(backend.tensor(a), rank=2),
        "truncate": lambda: tf.truncate(
            tf.TuckerTensor(backend.tensor(a), [backend.tensor(np.eye(4))] * 2)
        ),
    }
    names = {"truncate_core": "C_hat", "hosvd": "X", "st_hosvd": "X", "truncate": "Y.core"}
    for what, fn in calls.items():
        exc, ended = _finishes(fn)
        assert ended, f"{what} hangs on non-finite input"
        assert isinstance(exc, ValueError), f"{what}: {exc!r}"
        assert f"{names.get(what, 'a')} contains non-finite" in str(exc)


def test_truncate_core_refuses_non_finite_factors(backend):
    y = tf.random_tucker((5, 4, 3), 2, rng=0, device=backend.device)
    u = backend.numpy(y.factors[1]).copy()
    u[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"U_hats\[1\] contains non-finite"):
        truncate_core(y.core, [y.factors[0], backend.tensor(u), y.factors[2]], rtol=0.1)


def test_zero_tensor_truncates_to_the_floor(backend):
    x = backend.tensor(np.zeros((4, 3, 2)))
    assert tf.hosvd(x, rtol=0.1).rank == (1, 1, 1)
    assert tf.st_hosvd(x, rtol=0.1, min_rank=2).rank == (2, 2, 2)
    assert float(backend.numpy(tf.norm(tf.hosvd(x)))) == 0.0


def test_kernel_arguments(backend):
    from tuckerflow.ranks import rank_spec
    from tuckerflow.recompression import recompress

    x = backend.tensor(_decaying((5, 4, 3), 1))
    spec = rank_spec((5, 4, 3), rtol=0.1)
    core, p_list, info = recompress(x, spec, method="hosvd", modes=[0, 2])
    assert p_list[1] is None and tl.shape(core)[1] == 4  # mode 1 left alone
    with pytest.raises(ValueError, match="method='cp' is not one of"):
        recompress(x, spec, method="cp")
    with pytest.raises(ValueError, match="must be a permutation of the modes"):
        recompress(x, spec, order=[0, 0, 1])
    with pytest.raises(ValueError, match="method='fast' is not one of"):
        recompress(x, spec, svd_method="fast")
    assert info.tolerance == pytest.approx(0.1 * np.linalg.norm(backend.numpy(x)))


def test_kernel_refuses_a_spec_modes_and_paths_that_do_not_fit(backend):
    from tuckerflow.ranks import RankSpec, rank_spec
    from tuckerflow.recompression import recompress

    x = backend.tensor(_decaying((5, 4, 3), 1))
    spec = rank_spec((5, 4, 3), rank=(2, 2, 2))
    core, _, _ = recompress(x, spec, svd_method=["svd", "qr", "gram"])
    assert tl.shape(core) == (2, 2, 2)
    cases = [
        # recompress(X, [nan]) raised AttributeError, svd_method=[] IndexError
        (dict(spec=[math.nan]), TypeError, "spec must be a RankSpec"),
        (dict(spec=RankSpec(None, 0.1, None)), ValueError, "spec.min_rank has 0 entries"),
        (dict(spec=rank_spec((5, 4), rtol=0.1)), ValueError, "spec.min_rank has 2 entries"),
        (dict(spec=RankSpec((6, 2, 2), None, None, [1] * 3, [9] * 3)), ValueError, "fixed"),
        (dict(svd_method=[]), ValueError, "svd_method has 0 entries but core has 3 modes"),
        (dict(svd_method=b"qr"), TypeError, "svd_method must be a str or a sequence"),
        (dict(modes=[0, 0]), ValueError, r"modes=\[0, 0\] repeats a mode"),
        (dict(modes=[3]), ValueError, r"modes\[0\]=3 is not a mode of a tensor with 3 modes"),
        (dict(modes=[1.0]), TypeError, r"modes\[0\] must be an integer"),  # was int(1.0)
        (dict(modes=slice(1)), TypeError, "modes must be a sequence of mode indices"),
        (dict(order=[0, 1, math.inf]), TypeError, r"order\[2\] must be an integer"),
    ]
    for kwargs, error, message in cases:
        kwargs = {"spec": spec, **kwargs}
        with pytest.raises(error, match=message):
            recompress(x, kwargs.pop("spec"), **kwargs)


def test_absolute_tolerance_far_above_a_tiny_tensor(backend):
    # atol in the caller's units over a tensor of scale 1e-300: ϑ/scale would overflow ϑ²
    x = backend.tensor(_decaying((4, 3, 2), 0) * 1e-300)
    for algo in (tf.hosvd, tf.st_hosvd):
        y, info = algo(x, atol=1.0, return_info=True)
        assert y.rank == (1, 1, 1)
        assert info.tolerance == 1.0
