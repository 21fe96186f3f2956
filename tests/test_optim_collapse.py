"""TDLRT's protection against rank collapse: the truncation guard, the deferred truncation of
new directions, ``update_every="auto"``, and their state across checkpoints.

The collapse seen on small image data (SGD, momentum 0.9, learning rate 0.05): one early step
is many times larger than the layer's weight, so the relative tolerance ``τ‖Ĉ‖`` of the
published rule exceeds everything the layer held before and the truncation keeps only the
step's own directions. The synthetic cases below reproduce it with one dominating step.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from test_optim_helpers import WeightTucker, tucker_tensor

from tuckerflow.optim import TDLRT
from tuckerflow.optim.transport import mode_products

DTYPES = [torch.float32, torch.float64]


def _basis_direction(layer, dtype, *, new_mode=None, columns=(0, 0, 0), seed=2):
    """Unit rank-1 tensor ``v_0 ∘ v_1 ∘ v_2``, ``v_i`` the basis vector ``columns[i]`` of mode
    ``i``, except ``v_{new_mode}``, orthogonal to the basis of that mode (None: none).

    A K-step sees a gradient only through the bases of the other modes, so a new direction
    must lie in the bases of all modes but one to be found.
    """
    g = torch.Generator().manual_seed(seed)
    vectors = []
    for mode, n in enumerate(layer.weight_shape):
        u = layer.factor(mode).detach().to(torch.float64)
        if mode == new_mode:
            v = torch.randn(n, generator=g, dtype=torch.float64)
            v = v - u @ (u.T @ v)
        else:
            v = u[:, columns[mode]].clone()
        vectors.append((v / v.norm()).to(dtype))
    return torch.einsum("i,j,k->ijk", *vectors)


def _diagonal_layer(rank, dtype=torch.float64):
    """Tucker layer of norm 1 whose core unfoldings have equal singular values."""
    layer = WeightTucker((8, 6, 5), (rank,) * 3, seed=1, dtype=dtype)
    core = torch.zeros((rank,) * 3, dtype=dtype)
    for k in range(rank):
        core[k, k, k] = rank**-0.5
    with torch.no_grad():
        layer.core.copy_(core)
    return layer


def _projected(layer, tensor):
    """``tensor ×_i U_iU_iᵀ`` onto the layer's current bases."""
    us = [layer.factor(i).detach().to(tensor.dtype) for i in range(len(layer.weight_shape))]
    return mode_products(mode_products(tensor, [u.T for u in us]), us)


def _dominating_step(dtype, guard, *, spike=10.0, tau=0.3):
    """One SGD step ``spike`` times the size of the layer, along its leading direction."""
    layer = _diagonal_layer(3, dtype)
    before = layer().detach().clone()
    direction = _basis_direction(layer, dtype)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    tdlrt = TDLRT(layer, opt, tau=tau, update_every=1, truncation_guard=guard)
    opt.zero_grad()
    loss = -spike * (layer() * direction).sum()  # gradient −spike·B: the step is +spike·B
    loss.backward()
    tdlrt.step()
    return layer, tdlrt, before, direction


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_dominating_step_collapses_the_published_rule(dtype):
    layer, tdlrt, before, direction = _dominating_step(dtype, guard=False)
    # τ‖Ĉ‖ ≈ 0.3 · 10 exceeds the whole earlier weight (norm 1): only the step survives
    assert tdlrt.ranks()[""] == (1, 1, 1)
    earlier = before - (before * direction).sum() * direction  # Y₀ without the spike's axis
    lost = float((earlier - _projected(layer, earlier)).norm())
    assert lost > 0.99 * float(earlier.norm())
    assert tdlrt.guarded_truncations == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_guard_keeps_the_weight_from_before_the_step(dtype):
    tau = 0.3
    layer, tdlrt, before, direction = _dominating_step(dtype, guard=True, tau=tau)
    assert tdlrt.ranks()[""] == (3, 3, 3)
    assert tdlrt.guarded_truncations >= 1
    norm = float(before.norm())
    # the promise of the guard: the kept bases hold the earlier weight to relative accuracy τ
    # (round-off of the products: ~1e-6 of the norm in float32, far below the margin)
    lost = float((before - _projected(layer, before)).norm())
    assert lost <= tau * norm
    # the spike's direction is kept as well, so the truncation removed from Y₀ + 10·B only
    # what it removed from Y₀
    stepped = before + 10.0 * direction
    assert float((layer().detach() - stepped).norm()) <= tau * norm


def test_the_guard_takes_the_same_decisions_in_float32_and_float64():
    ranks = {dtype: _dominating_step(dtype, guard=True)[1].ranks()[""] for dtype in DTYPES}
    assert ranks[torch.float32] == ranks[torch.float64]


_QUADRATIC_TARGET = tucker_tensor((8, 6, 5), (3, 2, 2), seed=1)


def _quadratic_tdlrt(guard=True, **options):
    """A rank-(3, 3, 3) weight pulled towards a rank-(3, 2, 2) target by SGD."""
    layer = WeightTucker((8, 6, 5), (3, 3, 3), seed=3, scale=2.0)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    tdlrt = TDLRT(layer, opt, tau=0.05, update_every=1, truncation_guard=guard, **options)
    return layer, tdlrt


def _quadratic_steps(layer, tdlrt, steps):
    for _ in range(steps):
        tdlrt.zero_grad()
        (0.5 * ((layer() - _QUADRATIC_TARGET) ** 2).sum()).backward()
        tdlrt.step()


def _quadratic_run(guard, steps=40, **options):
    layer, tdlrt = _quadratic_tdlrt(guard, **options)
    _quadratic_steps(layer, tdlrt, steps)
    return layer, tdlrt


def test_the_guard_changes_little_in_ordinary_training():
    # steps of a tenth of the distance to the target: the guard binds only at the margin
    # (a tail just under τ‖Ĉ‖ that holds a little more than τ‖Y₀‖ of the earlier weight)
    # and the runs end at the same ranks and nearly the same distance to the target
    target = _QUADRATIC_TARGET
    guarded, tdlrt = _quadratic_run(True, truncation_budget=False)
    plain, tdlrt_plain = _quadratic_run(False)
    assert tdlrt.ranks() == tdlrt_plain.ranks()
    error = float((guarded().detach() - target).norm())
    error_plain = float((plain().detach() - target).norm())
    assert abs(error - error_plain) <= 0.01 * error_plain


def test_a_zero_weight_is_not_guarded():
    # nothing before the step to keep: the step's small directions are truncated as usual
    layer = WeightTucker((8, 6, 5), (1, 1, 1), seed=1, scale=0.0)
    target = tucker_tensor((8, 6, 5), (2, 2, 2), seed=4)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    tdlrt = TDLRT(layer, opt, tau=0.3, update_every=1)
    opt.zero_grad()
    (0.5 * ((layer() - target) ** 2).sum()).backward()
    tdlrt.step()
    assert tdlrt.guarded_truncations == 0
    assert max(tdlrt.ranks()[""]) <= 2


def _growth_run(defer, *, steps=11, every=5, tau=0.3):
    """Constant gradient in a new direction of mode 0, a tenth of the layer per step."""
    layer = _diagonal_layer(2)
    # new in mode 0, and off the core's diagonal in modes 1 and 2: rank (3, 2, 2) if kept
    direction = _basis_direction(layer, torch.float64, new_mode=0, columns=(0, 0, 1))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    tdlrt = TDLRT(layer, opt, tau=tau, update_every=every, defer_truncation=defer)
    seen = []
    for _ in range(steps):
        opt.zero_grad()
        (-(layer() * direction).sum()).backward()
        tdlrt.step()
        seen.append(tdlrt.ranks()[""])
    return tdlrt, seen


def test_without_deferral_a_new_direction_is_cut_after_one_step():
    # after one step the new direction has size 0.1 against ϑ = 0.3‖Ĉ‖ ≈ 0.3 (0.17 per
    # mode), and the core steps in between cannot reach it: the rank never grows
    tdlrt, seen = _growth_run(False)
    assert set(seen) == {(2, 2, 2)}


def test_deferred_truncation_lets_ranks_grow():
    tdlrt, seen = _growth_run(True, steps=1)
    # the augmented bases stay for the interval (modes 1 and 2 gain directions of zero
    # weight, which the truncation at the end of the interval removes)
    assert seen[0][0] > 2 and tdlrt.pending_truncation == [""]
    tdlrt, seen = _growth_run(True)
    # judged at the end of the interval, after 5 steps, at size 0.5: kept
    assert seen[4] == (3, 2, 2)
    assert tdlrt.pending_truncation == [""]  # the update of step 10 waits again
    assert tdlrt.apply_pending_truncation() == [""]
    assert tdlrt.ranks()[""] == (3, 2, 2)
    assert tdlrt.guarded_truncations == 0


def _one_step(defer, then=None):
    layer = WeightTucker((8, 6, 5), (2, 2, 2), seed=1)
    target = tucker_tensor((8, 6, 5), (3, 2, 2), seed=4)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5, momentum=0.5)
    tdlrt = TDLRT(layer, opt, tau=0.1, update_every=4, defer_truncation=defer)
    opt.zero_grad()
    (0.5 * ((layer() - target) ** 2).sum()).backward()
    tdlrt.step()
    if then is not None:
        then(tdlrt)
    return layer, opt, tdlrt


@pytest.mark.parametrize("then", ["apply_pending_truncation", "freeze_ranks"])
def test_apply_pending_truncation_and_freeze_truncate_at_once(then):
    layer, opt, tdlrt = _one_step(True)
    assert tdlrt.pending_truncation == [""]
    layer, opt, tdlrt = _one_step(True, lambda t: getattr(t, then)())
    assert tdlrt.pending_truncation == []
    assert tdlrt.apply_pending_truncation() == []
    # the same truncation as the immediate one, momentum buffer included (up to the
    # round-off of the extra rotation by the cap truncation, float64)
    ref_layer, ref_opt, ref = _one_step(False)
    assert tdlrt.ranks() == ref.ranks()
    torch.testing.assert_close(layer().detach(), ref_layer().detach(), rtol=0, atol=1e-13)

    # the momentum buffer lives in the core's coordinates, fixed up to the signs of the
    # kept singular vectors: compare it in the weight's coordinates
    def ambient(lay, o):
        us = [lay.factor(i).detach() for i in range(3)]
        return mode_products(o.state[lay.core]["momentum_buffer"], us)

    torch.testing.assert_close(ambient(layer, opt), ambient(ref_layer, ref_opt), rtol=0, atol=1e-13)


def _pending_model():
    layer = WeightTucker((8, 6, 5), (2, 2, 2), seed=1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.2, momentum=0.5)
    return layer, opt, TDLRT(layer, opt, tau=0.1, update_every=3)


def test_a_pending_truncation_survives_a_checkpoint():
    target = tucker_tensor((8, 6, 5), (3, 2, 2), seed=4)

    def step(layer, opt, tdlrt):
        opt.zero_grad()
        (0.5 * ((layer() - target) ** 2).sum()).backward()
        tdlrt.step()

    layer, opt, tdlrt = _pending_model()
    step(layer, opt, tdlrt)
    assert tdlrt.pending_truncation == [""]
    buffer = io.BytesIO()
    torch.save({"model": layer.state_dict(), "tdlrt": tdlrt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    layer2, opt2, tdlrt2 = _pending_model()
    tdlrt2.load_state_dict(saved["tdlrt"])
    layer2.load_state_dict(saved["model"])
    assert tdlrt2.pending_truncation == [""]
    for _ in range(5):
        step(layer, opt, tdlrt)
        step(layer2, opt2, tdlrt2)
    assert tdlrt.ranks() == tdlrt2.ranks()
    torch.testing.assert_close(layer2().detach(), layer().detach(), rtol=0, atol=0)


def test_a_state_dict_with_a_foreign_pending_layer_is_refused():
    layer, opt, tdlrt = _pending_model()
    state = copy.deepcopy(tdlrt.state_dict())
    state["pending"] = {"nope": torch.zeros(2, 2, 2)}
    with pytest.raises(ValueError, match="unknown layers"):
        tdlrt.load_state_dict(state)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: torch.optim.SGD(p, lr=0.1), 1),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), 10),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5), 2),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.99), 100),
        (lambda p: torch.optim.Adam(p, lr=1e-3), 10),
        (lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.8, 0.999)), 5),
        (lambda p: torch.optim.RMSprop(p, lr=1e-3), 1),
    ],
)
def test_update_every_auto_is_the_momentum_memory(make, expected):
    layer = WeightTucker((8, 6, 5), (2, 2, 2), seed=1)
    tdlrt = TDLRT(layer, make(layer.parameters()))
    assert tdlrt.update_every == expected
    assert [tdlrt.next_step for _ in range(1)] == ["adapt"]


def test_bad_collapse_options_are_refused():
    layer = WeightTucker((8, 6, 5), (2, 2, 2), seed=1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="update_every='sometimes' must be 'auto' or an int"):
        TDLRT(layer, opt, update_every="sometimes")
    with pytest.raises(TypeError, match="defer_truncation=1 must be True or False"):
        TDLRT(layer, opt, defer_truncation=1)
    with pytest.raises(TypeError, match="truncation_guard='weight' must be True or False"):
        TDLRT(layer, opt, truncation_guard="weight")


def _unchanged_weight_run(rate, steps=8):
    """Basis updates of a weight that does not move (zero gradient), spectrum 0.8^k."""
    layer, tdlrt = _still_weight_tdlrt(limit_truncation_rate=rate, truncation_budget=False)
    return _still_steps(layer, tdlrt, steps)


def test_the_relative_rule_drains_a_weight_that_does_not_move():
    # re-applied to an already truncated weight, ϑ = τ‖Ĉ‖ finds a new tail below it: the
    # rank falls twice although nothing changed (the guard without the removal budget allows
    # it: each update removes less than τ of the weight before it)
    seen = _unchanged_weight_run(False)
    assert seen[0] < 8 and seen[-1] < seen[0]


def test_the_rate_limit_removes_nothing_from_a_weight_that_does_not_move():
    assert _unchanged_weight_run(True) == [8] * 8


def test_the_rate_limit_needs_the_guard():
    layer = WeightTucker((8, 6, 5), (2, 2, 2), seed=1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="limit_truncation_rate=True needs truncation_guard"):
        TDLRT(layer, opt, truncation_guard=False, limit_truncation_rate=True)
    with pytest.raises(TypeError, match="limit_truncation_rate=1 must be True or False"):
        TDLRT(layer, opt, limit_truncation_rate=1)


def _still_weight_tdlrt(dtype=torch.float64, **options):
    """A weight of spectrum 0.8^k (rank 8) that the steps do not move (zero gradient);
    built in float64, then cast (the same starting point in every precision)."""
    layer = WeightTucker((10, 10, 10), (8, 8, 8), seed=1)
    core = torch.zeros(8, 8, 8, dtype=torch.float64)
    for k in range(8):
        core[k, k, k] = 0.8**k
    with torch.no_grad():
        layer.core.copy_(core / core.norm())
    layer.to(dtype)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    return layer, TDLRT(layer, opt, tau=0.3, update_every=1, **options)


def _still_steps(layer, tdlrt, steps):
    seen = []
    for _ in range(steps):
        tdlrt.zero_grad()
        (0.0 * layer().sum()).backward()
        tdlrt.step()
        seen.append(tdlrt.ranks()[""][0])
    return seen


def test_the_budget_truncates_a_weight_that_does_not_move_once():
    # the first truncation may take τ of the weight it is given (as the guard alone); after
    # it the budget holds only what the steps moved the layer, here nothing: the rank stays,
    # where the relative rule alone goes on falling (test above)
    layer, tdlrt = _still_weight_tdlrt()  # the budget is on by default
    assert tdlrt.truncation_budget is True
    before = layer().detach().clone()
    seen = _still_steps(layer, tdlrt, 8)
    drained = _unchanged_weight_run(False)
    assert seen[0] == drained[0] < 8
    assert seen == [seen[0]] * 8 and drained[-1] < seen[-1]
    # all truncations together removed at most τ of the first weight (float64 round-off)
    lost = float((before - layer().detach()).norm())
    assert lost <= 0.3 * float(before.norm()) * (1 + 1e-12)
    assert 0.0 <= tdlrt.removal_budget[""] <= 0.3 * float(before.norm())


def test_the_budget_decides_in_float32_as_in_float64():
    # the budget's bookkeeping reads norms of the quantities computed; from the same start the
    # float32 run keeps the same ranks at every update and charges the same budget up to
    # float32 round-off of those norms
    runs = {}
    for dtype in (torch.float64, torch.float32):
        layer, tdlrt = _still_weight_tdlrt(dtype)
        runs[dtype] = (_still_steps(layer, tdlrt, 8), tdlrt.removal_budget[""], layer)
    assert runs[torch.float32][0] == runs[torch.float64][0]
    assert runs[torch.float64][0][0] < 8  # the first update did truncate
    norm = float(runs[torch.float64][2]().detach().norm())
    tol = 100 * torch.finfo(torch.float32).eps * norm
    assert abs(runs[torch.float32][1] - runs[torch.float64][1]) <= tol


def test_the_budget_grows_with_the_movement_and_survives_a_checkpoint():
    layer, tdlrt = _quadratic_tdlrt(truncation_budget=True)
    _quadratic_steps(layer, tdlrt, 5)
    assert tdlrt.removal_budget[""] > 0.0
    state = copy.deepcopy(tdlrt.state_dict())
    assert state["removal_budget"] == tdlrt.removal_budget
    layer2, tdlrt2 = _quadratic_tdlrt(truncation_budget=True)
    tdlrt2.load_state_dict(state)
    layer2.load_state_dict(layer.state_dict())
    assert tdlrt2.removal_budget == tdlrt.removal_budget
    _quadratic_steps(layer, tdlrt, 10)
    _quadratic_steps(layer2, tdlrt2, 10)
    assert tdlrt2.removal_budget == tdlrt.removal_budget
    torch.testing.assert_close(layer2().detach(), layer().detach(), rtol=0, atol=0)
    # where training moves the layer, the ranks are those of the guard alone
    plain, tdlrt_plain = _quadratic_run(True, steps=15, truncation_budget=False)
    assert tdlrt.ranks() == tdlrt_plain.ranks()
    state["removal_budget"] = {"nope": 1.0}
    with pytest.raises(ValueError, match="removal budget of unknown layers"):
        tdlrt2.load_state_dict(state)


def test_bad_budget_options_are_refused():
    layer = WeightTucker((8, 6, 5), (2, 2, 2), seed=1)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="truncation_budget=True needs truncation_guard"):
        TDLRT(layer, opt, truncation_guard=False, truncation_budget=True)
    with pytest.raises(ValueError, match="exclude each other"):
        TDLRT(layer, opt, truncation_budget=True, limit_truncation_rate=True)
    with pytest.raises(TypeError, match="truncation_budget=1 must be True, False or None"):
        TDLRT(layer, opt, truncation_budget=1)
    # the default follows the guard and the rate limit
    assert TDLRT(layer, opt).truncation_budget is True
    assert TDLRT(layer, opt, truncation_guard=False).truncation_budget is False
    assert TDLRT(layer, opt, limit_truncation_rate=True).truncation_budget is False
