"""The rank rules of tuckerflow.ranks: validity, selection, budget splitting, greedy lowering."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tuckerflow as tf
from tuckerflow.ranks import (
    check_tolerance,
    lower_ranks_greedily,
    per_mode,
    rank_spec,
    select_rank,
    sequential_budget,
)


@given(rank=st.lists(st.integers(1, 12), min_size=1, max_size=5))
def test_largest_valid_rank_is_valid_and_largest(rank):
    out = tf.largest_valid_rank(rank)
    assert all(1 <= a <= b for a, b in zip(out, rank))
    tf.validate_rank(tuple(rank), out)  # valid (and below the input entrywise)
    # largest: raising any entry by one (within the input) breaks validity
    for i in range(len(out)):
        if out[i] < rank[i]:
            up = list(out)
            up[i] += 1
            with pytest.raises(ValueError):
                tf.validate_rank(tuple(rank), up)


@pytest.mark.parametrize("bad", [(-1, 2, 3), (0, 2), (2, -5)])
def test_largest_valid_rank_refuses_non_positive_entries(bad):
    # (-1, 2, 3) used to loop forever: the products of the others kept falling
    with pytest.raises(ValueError, match=r"rank\[\d\]=-?\d+ must be at least 1"):
        tf.largest_valid_rank(bad)


@pytest.mark.parametrize("bad", [(2.5, 3), (float("nan"), 2), (float("inf"), 2), ("2", 2), 3])
def test_largest_valid_rank_refuses_non_integers(bad):
    with pytest.raises(TypeError):
        tf.largest_valid_rank(bad)


@pytest.mark.parametrize(
    "bad", [2.7, (2.0, 2), (float("nan"), 2), (float("inf"), 1), (True, 1), "22", None]
)
def test_ranks_must_be_integers(bad):
    with pytest.raises(TypeError):
        tf.validate_rank((4, 4), bad)
    with pytest.raises(TypeError):
        per_mode(bad, 2, "rank")


def test_numpy_integers_are_integers():
    assert tf.validate_rank((4, 4), (np.int64(2), np.int32(2))) == (2, 2)
    assert tf.validate_rank((4, 4), np.array([3, 3])) == (3, 3)


@pytest.mark.parametrize("bad", ["0.1", b"1", True, [0.1], 1j])
def test_tolerances_must_be_real_numbers(bad):
    with pytest.raises(TypeError, match="rtol must be a real number"):
        check_tolerance(bad, "rtol")


@pytest.mark.parametrize("bad", [-1e-3, float("nan"), float("inf")])
def test_tolerances_must_be_finite_and_non_negative(bad):
    with pytest.raises(ValueError, match="atol must be a finite number >= 0"):
        check_tolerance(bad, "atol")
    assert check_tolerance(np.float32(0.5), "rtol") == 0.5


@given(
    s=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=8).map(
        lambda v: np.sort(np.asarray(v))[::-1]
    ),
    frac=st.floats(0.0, 1.2),
)
def test_select_rank_is_the_smallest_rank_within_budget(s, frac):
    total = float(np.sum(s**2))
    budget2 = frac * total
    rho, tail2 = select_rank(s, budget2)
    tails = [float(np.sum(s[k:] ** 2)) for k in range(s.size + 1)]
    assert tail2 == pytest.approx(tails[rho], rel=1e-12, abs=1e-300)
    assert rho >= min(1, s.size)  # the default floor
    if rho > 1:  # one rank less would exceed the budget
        assert tails[rho - 1] > budget2 * (1 - 1e-12)


@pytest.mark.parametrize("scale", [1e-150, 1e-100, 1.0, 1e100, 1e150])
def test_select_rank_is_scale_invariant(scale):
    # wherever the squared budget is representable, s is squared only after division by s_0
    # (the kernel goes further and hands select_rank unit-scale values, see test_truncation)
    s = np.array([1.0, 0.5, 1e-2, 1e-3])
    budget = 2e-2 * scale
    rho, tail2 = select_rank(s * scale, budget * budget)
    assert rho == 2
    assert math.isclose(tail2, (1e-4 + 1e-6) * scale * scale, rel_tol=1e-12)


def test_select_rank_refuses_non_finite_values():
    with pytest.raises(ValueError, match="s contains non-finite"):
        select_rank([1.0, np.nan], 0.1)
    with pytest.raises(ValueError, match="budget2 must be a number >= 0"):
        select_rank([1.0, 0.5], float("nan"))
    with pytest.raises(TypeError, match="min_rank must be an integer"):
        select_rank([1.0, 0.5], 0.1, min_rank=-math.inf)
    with pytest.raises(TypeError, match="max_rank must be an integer"):
        select_rank([1.0, 0.5], 0.1, max_rank=2.0)


def test_sequential_budget_spends_at_most_the_total():
    theta = 0.3
    used = 0.0
    rng = np.random.default_rng(0)
    for k in range(4):
        b = sequential_budget(theta, used, 4 - k)
        assert b >= theta**2 / 4 - 1e-15  # never less than the even share
        used += b * rng.uniform()
    assert used <= theta**2
    assert sequential_budget(None, 0.0, 2) == math.inf


def test_greedy_lowering_reaches_the_matrix_rank_for_shared_tails():
    tails = {k: v for k, v in zip(range(1, 6), [4.0, 1.0, 0.3, 0.1, 0.0])}

    def err(r):
        return tails[min(r)]  # d = 2: the error of HOSVD is the tail of the smaller rank

    assert lower_ranks_greedily((5, 4), (1, 1), err, 0.35) == (3, 3)
    assert lower_ranks_greedily((5, 4), (4, 1), err, 0.35) == (4, 3)  # a floor binds
    # a start outside the budget is returned as is (max_rank made the tolerance unattainable)
    assert lower_ranks_greedily((1, 1), (1, 1), err, 0.35) == (1, 1)


@given(
    shape=st.lists(st.integers(1, 4), min_size=2, max_size=3),
    seed=st.integers(0, 1000),
    frac=st.floats(0.0, 1.0),
)
def test_greedy_lowering_keeps_the_error_within_budget(shape, seed, frac):
    # an error monotone in every rank: the mass outside the leading block of a random table
    gen = np.random.default_rng(seed)
    mass = gen.uniform(size=shape) ** 4
    total = float(mass.sum())

    def err(r):
        return total - float(mass[tuple(slice(0, k) for k in r)].sum())

    budget = frac * total
    start = tuple(shape)
    out = lower_ranks_greedily(start, (1,) * len(shape), err, budget)
    assert err(out) <= budget + 1e-12
    # a local minimum: lowering any rank further leaves the budget
    for i in range(len(shape)):
        if out[i] > 1:
            lower = list(out)
            lower[i] -= 1
            assert err(tuple(lower)) > budget
    # never above the start, and all ranks explored exist
    assert all(1 <= a <= b for a, b in zip(out, start))


def test_rank_spec_validates_once():
    spec = rank_spec((5, 4, 3), rtol=0.1, max_rank=(9, 2, 3), min_rank=1)
    assert spec.max_rank == [5, 2, 3] and spec.min_rank == [1, 1, 1]
    assert spec.theta(2.0) == pytest.approx(0.2)
    assert rank_spec((5, 4, 3), rtol=0.1, atol=0.05).theta(2.0) == 0.05
    with pytest.raises(ValueError, match="either rank"):
        rank_spec((5, 4, 3), rank=2, rtol=0.1)
    with pytest.raises(ValueError, match=r"rank\[0\]=3 exceeds max_rank\[0\]=2"):
        rank_spec((5, 4, 3), rank=3, max_rank=2)
    with pytest.raises(TypeError, match="rtol must be a real number"):
        rank_spec((5, 4, 3), rtol="0.1")
    for combo in itertools.product([None, 3], [None, 2]):
        rank_spec((5, 4, 3), None, 0.1, None, *combo)


def test_prepared_tails_select_as_select_rank():
    """``select_prepared`` on ``prepare_tails(s)`` is ``select_rank(s, …)``, bit for bit,
    for any budget, margin and bounds (and for all-zero and empty ``s``)."""
    from tuckerflow.ranks import prepare_tails, select_prepared

    rng = np.random.default_rng(0)
    for s in [np.sort(rng.random(12))[::-1] * 1e3, np.zeros(4), np.zeros(0), np.array([1e200])]:
        prep = prepare_tails(s)
        for budget2 in [0.0, 1e-3, 0.5, 1e4, 1e6, math.inf]:
            for margin2, lo, hi in [(0.0, 1, None), (1e-2, 2, 7), (0.0, 3, 3)]:
                want = select_rank(s, budget2, min_rank=lo, max_rank=hi, margin2=margin2)
                assert select_prepared(prep, budget2, lo, hi, margin2) == want
    with pytest.raises(ValueError, match="non-finite"):
        prepare_tails([1.0, np.inf])


def test_default_order_and_the_kernel_take_only_a_spec_that_fits():
    from tuckerflow.ranks import RankSpec, check_spec, default_order

    spec = rank_spec((8, 3, 4), rank=(2, 3, 2))
    # the largest reduction n_i / r_i first: 4 (mode 0), 2 (mode 2), 1 (mode 1)
    assert default_order((8, 3, 4), spec) == [0, 2, 1]
    assert check_spec(spec, (8, 3, 4)) is spec
    # default_order(shape, None) and recompress(X, [nan]) raised AttributeError
    with pytest.raises(TypeError, match="spec must be a RankSpec"):
        default_order((4, 3, 2), None)
    cases = [
        (RankSpec(None, None, None), ValueError, r"spec.min_rank has 0 entries .* 3 modes"),
        (RankSpec(None, math.nan, None, [1] * 3, [4, 3, 2]), ValueError, r"spec.rtol must be"),
        (RankSpec((2, 2, 2), 0.1, None, [1] * 3, [2] * 3), ValueError, "both fixed ranks"),
        (RankSpec((5, 2, 2), None, None, [1] * 3, [4] * 3), ValueError, r"fixed\[0\]=5 must"),
        (RankSpec((math.nan, 2, 2), None, None, [1] * 3, [2] * 3), TypeError, r"fixed\[0\]"),
        (RankSpec(None, 0.1, None, [0, 1, 1], [2] * 3), ValueError, r"min_rank\[0\]=0 must"),
        (RankSpec(None, 0.1, None, [1] * 3, [2.5, 3, 2]), TypeError, r"max_rank\[0\] must"),
    ]
    for bad, error, message in cases:
        with pytest.raises(error, match=message):
            default_order((4, 3, 2), bad)


def test_shapes_are_sequences_of_non_negative_integers():
    # rank_spec((nan, 2), ...) returned a spec whose cap was NaN
    for bad in [(math.nan, 2), (2.7, 3), "43", 4, None]:
        with pytest.raises(TypeError, match="shape"):
            rank_spec(bad, rtol=0.1)
        with pytest.raises(TypeError, match="shape"):
            tf.validate_rank(bad, 1)
    with pytest.raises(ValueError, match=r"shape\[0\]=-1 must be at least 0"):
        rank_spec((-1, 2), rtol=0.1)
    assert rank_spec(np.array([4, 3]), rtol=0.1).max_rank == [4, 3]
    with pytest.raises(ValueError, match=r"d=-1 \(the number of modes\) must be at least 0"):
        per_mode(2, -1, "rank")  # was [] (a list of -1 entries)


def test_sequential_budget_refuses_what_has_no_budget():
    assert sequential_budget(2.0, 1.0, 3) == 1.0
    # theta**2 raised OverflowError above 1e154; the budget of such a tolerance is unbounded
    assert sequential_budget(1e300, 0.0, 2) == math.inf
    assert sequential_budget(0.5, 0.3, 1) == 0.0  # spent beyond the total: nothing left
    assert sequential_budget(1.0, -0.5, 3) == 0.5  # a used2 bracketed below zero is allowed
    cases = [
        ((math.nan, math.nan, math.nan), ValueError, "theta must be a finite number"),
        ((0.1, math.inf, 1), ValueError, "used2 must be a finite number"),
        ((0.1, math.nan, 1), ValueError, "used2 must be a finite number"),
        ((0.1, "0.1", 1), TypeError, "used2 must be a real number"),
        ((0.0, 0.0, 0), ValueError, "remaining_modes=0 must be at least 1"),  # ZeroDivisionError
        ((0.1, 0.0, 2.0), TypeError, "remaining_modes must be an integer"),
        ((0.1, 0.0, True), TypeError, "remaining_modes must be an integer"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            sequential_budget(*args)


def test_greedy_lowering_refuses_bad_ranks_budgets_and_errors():
    from tuckerflow.ranks import lower_ranks_certainly

    def err(r):
        return 1.0 / sum(r)

    assert lower_ranks_greedily((3, 3), (1, 1), err, 0.25) == (1, 3)  # ties: the lowest mode
    cases = [
        (((math.inf, 1), (1, 1), err, 0.2), TypeError, r"start\[0\] must be an integer"),
        (((2.0, 2), (1, 1), err, 0.2), TypeError, r"start\[0\] must be an integer"),
        (((2, 2), (1,), err, 0.2), ValueError, "floor has 1 entries"),
        (((2, 2), (0, 1), err, 0.2), ValueError, r"floor\[0\]=0 must be at least 1"),
        (((2, 2), (1, 1), err, math.nan), ValueError, "budget2 must be a number"),
        (((2, 2), (1, 1), None, 0.2), TypeError, "error2 must be a function"),
        (((2, 2), (1, 1), lambda r: math.nan, 0.2), ValueError, r"error2\(2, 2\) must be"),
        (((2, 2), (1, 1), lambda r: -1.0, 0.2), ValueError, r"error2\(2, 2\)=-1.0 must be"),
        (((2, 2), (1, 1), lambda r: "e", 0.2), TypeError, r"error2\(2, 2\) must be a real"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            lower_ranks_greedily(*args)
    # a NaN bound made every decision look uncertain instead of being refused
    with pytest.raises(ValueError, match=r"error_bound\(3, 3\) must be a number"):
        lower_ranks_certainly((3, 3), (1, 1), err, 0.25, lambda r: math.nan)
    assert lower_ranks_certainly((3, 3), (1, 1), err, 0.25, lambda r: math.inf) == ((1, 3), False)


def test_prepared_tails_hold_what_prepare_tails_makes():
    from tuckerflow.ranks import PreparedTails, prepare_tails, select_prepared

    prep = prepare_tails([3.0, 1.0])
    assert (prep.size, prep.top) == (2, 3.0)
    np.testing.assert_allclose(prep.tail2, [10 / 9, 1 / 9, 0.0])
    with pytest.raises(TypeError, match="prep must be a PreparedTails"):
        select_prepared(math.nan, 1.0)  # AttributeError before
    cases = [
        ((2, math.nan, np.zeros(3)), ValueError, "top must be a finite number"),
        ((2, -1.0, np.zeros(3)), ValueError, r"top=-1.0 \(the largest singular value\)"),
        ((2.0, 1.0, np.zeros(3)), TypeError, "size must be an integer"),
        ((2, 1.0, np.zeros(2)), ValueError, r"tail2 must be a NumPy array of shape \(3,\)"),
        ((1, 1.0, np.array([np.nan, 0.0])), ValueError, "tail2 contains non-finite"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            PreparedTails(*args)


def test_invalid_mode_names_the_first_mode_that_breaks_the_rule():
    from tuckerflow.ranks import invalid_mode

    assert invalid_mode((9, 2, 3)) == (0, 6)
    assert invalid_mode((2, 9, 3)) == (1, 6)
    assert invalid_mode((6, 2, 3)) is None
    assert invalid_mode((5,)) is None  # one mode: any rank
    # only the modes asked about are checked (a mode kept full is a size, not a rank)
    assert invalid_mode((9, 2, 3), modes=[1, 2]) is None
    assert invalid_mode((9, 2, 3), modes=[2, 0]) == (0, 6)
    with pytest.raises(TypeError, match="rank"):
        invalid_mode((2.7, 3))
    with pytest.raises(ValueError, match="modes entry 3"):
        invalid_mode((2, 2, 2), modes=[3])
    with pytest.raises(TypeError, match="modes"):
        invalid_mode((2, 2, 2), modes="01")


def test_largest_valid_rank_lowers_only_the_given_modes():
    from tuckerflow.ranks import invalid_mode, largest_valid_rank

    assert largest_valid_rank((9, 2, 3)) == (6, 2, 3)
    assert largest_valid_rank((9, 2, 3), modes=[0]) == (6, 2, 3)
    # mode 0 kept full: nothing may be lowered there, mode 2 cannot fix it alone
    r = largest_valid_rank((1, 4, 3), modes=[1, 2])
    assert r == (1, 3, 3) and invalid_mode(r, modes=[1, 2]) is None
    assert largest_valid_rank((9, 2, 3), modes=[1, 2]) == (9, 2, 3)
    assert invalid_mode((9, 2, 3)) == (0, 6)


def test_per_mode_minimum_applies_to_ints_and_sequences():
    from tuckerflow.ranks import per_mode

    assert per_mode(2, 3, "r", minimum=1) == [2, 2, 2]
    assert per_mode([None, 1], 2, "r", allow_none=True, minimum=1) == [None, 1]
    with pytest.raises(ValueError, match=r"r\[0\]=0 must be at least 1"):
        per_mode(0, 2, "r", minimum=1)
    with pytest.raises(ValueError, match=r"r\[1\]=0 must be at least 1"):
        per_mode([1, 0], 2, "r", minimum=1)
    assert per_mode(0, 2, "r") == [0, 0]  # without a minimum nothing is refused
