"""TDLRT end to end: facts of algorithms.md §5, any torch.optim optimizer, state transport,
checkpoints across rank changes, non-finite gradients, autocast, bad input."""

from __future__ import annotations

import copy
import io
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from test_optim_helpers import WeightTucker, tucker_tensor
from torch import nn

import tuckerflow.nn as tnn
from tuckerflow import validate_rank
from tuckerflow.optim import TDLRT, NonFiniteGradientError, StateDictEntryError, resize_like
from tuckerflow.testing.strategies import shape_and_rank

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.2),
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.9),
    "adafactor": lambda p: torch.optim.Adafactor(p, lr=1e-2),
}


EPS64 = torch.finfo(torch.float64).eps

# CUDA runs the same tests when a GPU is present (CPU only otherwise)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def conv_net(seed=0, *, dtype=torch.float64, ranks=(4, 3), device="cpu"):
    torch.manual_seed(seed)
    return nn.Sequential(
        tnn.TuckerConv2d(3, 6, 3, padding=1, rank=ranks[0], keep_full="none", dtype=dtype),
        nn.ReLU(),
        nn.Flatten(),
        tnn.TuckerLinear(6 * 5 * 5, 4, rank=ranks[1], dtype=dtype),
    ).to(device)


def data(seed=0, *, n=24, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 5, 5, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randint(0, 4, (n,), generator=g)
    return x.to(device), y.to(device)


def make_closure(model, opt, x, y):
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def tucker_modules(model):
    return [m for m in model.modules() if isinstance(m, tnn.TuckerLayer)]


def snapshot(model, opt):
    params = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    return params, state


def assert_same_snapshot(a, b):
    for p, q in zip(a[0], b[0]):
        assert p.shape == q.shape and torch.equal(p, q)
    sa, sb = a[1]["state"], b[1]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for key, val in sa[k].items():
            other = sb[k][key]
            if isinstance(val, torch.Tensor):
                assert val.shape == other.shape and torch.equal(val, other)
            else:
                assert val == other


# ------------------------------------------------------------------------- facts of §5


@pytest.mark.parametrize("scale", [1.0, 1e-8])
def test_rank_recovery_on_a_quadratic_loss(scale):
    rho = (3, 2, 2)
    A = tucker_tensor((8, 6, 5), rho, seed=1)
    layer = WeightTucker((8, 6, 5), (1, 1, 1), seed=3, scale=scale)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    tdlrt = TDLRT(layer, opt, tau=1e-3)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = 0.5 * ((layer() - A) ** 2).sum()
        loss.backward()
        tdlrt.step()
        losses.append(float(loss.detach()))
    assert tdlrt.ranks()[""] == rho
    # the error contracts by (1 − λ) = 1/2 per step once the subspaces are found; 30 steps
    # from O(1) bring the loss to ~1e-16 · ‖A‖², far below this threshold
    assert losses[-1] <= 1e-12 * float((A**2).sum())


@settings(max_examples=10)
@given(
    sr=shape_and_rank(min_dims=2, max_dims=4, max_side=6),
    seed=st.integers(0, 2**31 - 1),
    tau=st.sampled_from([0.01, 0.2, 0.5]),
    cap=st.integers(1, 6),
)
def test_every_step_returns_valid_ranks_that_at_most_double(sr, seed, tau, cap):
    shape, rank = sr
    A = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    layer = WeightTucker(shape, rank, seed=seed)
    opt = torch.optim.SGD(layer.parameters(), lr=0.3)
    tdlrt = TDLRT(layer, opt, tau=tau, max_rank=cap)
    before = layer.ranks
    for _ in range(2):
        opt.zero_grad()
        (0.5 * ((layer() - A) ** 2).sum()).backward()
        tdlrt.step()
        after = layer.ranks
        validate_rank(shape, after)
        for b, a, n in zip(before, after, shape):
            assert a <= min(2 * b, n)
            assert a <= cap  # the cap holds from the first step on
        for u in layer.factors:
            eye = torch.eye(u.shape[1], dtype=u.dtype)
            assert torch.allclose(u.T @ u, eye, atol=1e3 * torch.finfo(u.dtype).eps)
        before = after


def test_tiny_core_converges_like_a_unit_core():
    A = tucker_tensor((7, 6, 5), (2, 3, 2), seed=4)
    curves = {}
    for scale in (1.0, 1e-8):
        layer = WeightTucker((7, 6, 5), (2, 2, 2), seed=5, scale=scale)
        opt = torch.optim.SGD(layer.parameters(), lr=0.5)
        tdlrt = TDLRT(layer, opt, tau=1e-4)
        curve = []
        for _ in range(20):
            opt.zero_grad()
            loss = 0.5 * ((layer() - A) ** 2).sum()
            loss.backward()
            tdlrt.step()
            curve.append(float(loss.detach()))
        curves[scale] = curve
    a, b = curves[1.0], curves[1e-8]
    # same linear rate: after the subspaces are found the loss falls by 4 per step in both
    # runs; the curves differ only by the initial loss (tiny core: loss starts at ½‖A‖²)
    for k in range(8, 19):
        assert b[k + 1] / b[k] == pytest.approx(0.25, rel=0.2)
        assert a[k + 1] / a[k] == pytest.approx(0.25, rel=0.2)
    assert b[-1] <= 10 * a[-1] + 1e-20


@pytest.mark.parametrize(
    ("opt_name", "kstep"), [("sgd-momentum", "weight"), ("adam", "weight"), ("adam", "factors")]
)
def test_one_pass_equals_two_pass_on_the_same_batch(opt_name, kstep, device):
    base = conv_net(1, device=device)
    x, y = data(1, device=device)
    weights = {}
    for mode in ("one-pass", "two-pass"):
        model = copy.deepcopy(base)
        opt = OPTIMIZERS[opt_name](model.parameters())
        tdlrt = TDLRT(model, opt, tau=0.2, mode=mode, kstep=kstep)
        for _ in range(2):
            tdlrt.step(make_closure(model, opt, x, y))
        weights[mode] = (
            [m.reconstruct().detach() for m in tucker_modules(model)],
            [p.detach() for n, p in model.named_parameters() if n.endswith("bias")],
            tdlrt.ranks(),
        )
    (w1, b1, r1), (w2, b2, r2) = weights["one-pass"], weights["two-pass"]
    assert r1 == r2
    # both forms evaluate the same gradient at the same weights (Ĉ ×_i Û_i = Y to round-off);
    # round-off (~1e-16) is amplified by the SVDs of the truncation by at most ~1e4 here
    for a, b in zip(w1 + b1, w2 + b2):
        assert torch.linalg.norm(a - b) <= 1e-11 * torch.linalg.norm(a)


def test_kstep_from_factor_gradients_takes_the_same_step():
    base = conv_net(15)
    x, y = data(15)
    out = {}
    for kstep in ("weight", "factors"):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        tdlrt = TDLRT(model, opt, tau=0.2, kstep=kstep)
        for _ in range(2):
            tdlrt.step(make_closure(model, opt, x, y))
        out[kstep] = ([m.reconstruct().detach() for m in tucker_modules(model)], tdlrt.ranks())
    assert out["weight"][1] == out["factors"][1]
    # same augmented spaces (the core unfoldings are well conditioned here), hence the same
    # Galerkin step and truncation; only round-off in the bases differs
    for a, b in zip(out["weight"][0], out["factors"][0]):
        assert torch.linalg.norm(a - b) <= 1e-9 * torch.linalg.norm(a)


# ------------------------------------------------------------------------- optimizers


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_any_optimizer_trains_and_keeps_parameter_identity(opt_name, device):
    model = conv_net(2, device=device)
    x, y = data(2, device=device)
    opt = OPTIMIZERS[opt_name](model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    tdlrt = TDLRT(model, opt, tau=0.3)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    layers = tucker_modules(model)
    cores = [layer.core for layer in layers]
    closure = make_closure(model, opt, x, y)
    seen = {tuple(tdlrt.ranks().values())}
    first = float(tdlrt.step(closure).detach())
    seen.add(tuple(tdlrt.ranks().values()))
    for _ in range(7):
        loss = float(tdlrt.step(closure).detach())
        sched.step()
        seen.add(tuple(tdlrt.ranks().values()))
    assert loss < first
    assert len(seen) > 1  # ranks did change: the transport was exercised
    assert [id(p) for g in opt.param_groups for p in g["params"]] == ids
    assert all(layer.core is c for layer, c in zip(layers, cores))
    for name, rank in tdlrt.ranks().items():
        layer = dict(model.named_modules())[name]
        validate_rank(layer.weight_shape, rank)
        for u in layer.factors:
            eye = torch.eye(u.shape[1], dtype=u.dtype, device=u.device)
            assert torch.allclose(u.T @ u, eye, atol=1e-12)
    for p in model.parameters():
        for key, value in opt.state.get(p, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                if key == "row_var":  # Adafactor's factored second moment
                    assert value.shape == p.shape[:-1] + (1,)
                elif key == "col_var":
                    assert value.shape == p.shape[:-2] + (1,) + p.shape[-1:]
                else:
                    assert value.shape == p.shape, key
                assert bool(torch.isfinite(value).all()), key
    assert all(len(opt.state.get(u, {})) == 0 for layer in layers for u in layer.factors)


def _weight_gradient(model, x, y, layer_index):
    """Dense weight gradient of one Tucker layer at the current weights (on a copy)."""
    twin = copy.deepcopy(model)
    layer = tucker_modules(twin)[layer_index]
    layer.record_for_galerkin = True
    F.cross_entropy(twin(x), y).backward()
    return layer.full_weight_gradient().detach()


def test_momentum_is_carried_across_basis_and_rank_changes():
    model = conv_net(3)
    x, y = data(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tdlrt = TDLRT(model, opt, tau=0.1)
    closure = make_closure(model, opt, x, y)
    tdlrt.step(closure)
    layer = tucker_modules(model)[1]
    U0, U1 = (u.detach().clone() for u in layer.factors)
    old = U0 @ opt.state[layer.core]["momentum_buffer"] @ U1.T  # the buffer in weight space
    G = _weight_gradient(model, x, y, 1)
    tdlrt.step(closure)
    V0, V1 = (u.detach() for u in layer.factors)
    new = V0 @ opt.state[layer.core]["momentum_buffer"] @ V1.T
    # exact transport at augmentation (Û ⊇ U) and projection at truncation give, in weight
    # space, buf' = Π(0.9 · buf + G) with Π the projection onto the new bases
    expected = V0 @ V0.T @ (0.9 * old + G) @ V1 @ V1.T
    assert torch.linalg.norm(new - expected) <= 1e-12 * torch.linalg.norm(expected)


def test_full_square_ranks_reproduce_dense_sgd_with_momentum():
    # with square orthogonal factors the tangent space is everything and every basis change
    # is a rotation: TDLRT must be dense SGD (momentum carried exactly) to round-off
    torch.manual_seed(0)
    dt = torch.float64
    tucker = nn.Sequential(
        tnn.TuckerConv2d(2, 4, 3, padding=1, rank=1.0, keep_full="none", dtype=dt),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 6, dtype=dt),
        tnn.TuckerLinear(6, 6, rank=1.0, dtype=dt),
    )
    dense = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, dtype=dt),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 6, dtype=dt),
        nn.Linear(6, 6, dtype=dt),
    )
    with torch.no_grad():
        for i in (0, 4):
            dense[i].weight.copy_(tucker[i].reconstruct())
            dense[i].bias.copy_(tucker[i].bias)
        dense[3].load_state_dict(tucker[3].state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 2, 5, 5, generator=g, dtype=dt)
    y = torch.randint(0, 6, (16,), generator=g)
    opt_t = torch.optim.SGD(tucker.parameters(), lr=0.1, momentum=0.9)
    opt_d = torch.optim.SGD(dense.parameters(), lr=0.1, momentum=0.9)
    tdlrt = TDLRT(tucker, opt_t, tau=1e-13)
    for _ in range(6):
        tdlrt.step(make_closure(tucker, opt_t, x, y))
        make_closure(dense, opt_d, x, y)()
        opt_d.step()
    for i in (0, 4):
        w = dense[i].weight.detach()
        assert torch.linalg.norm(tucker[i].reconstruct().detach() - w) <= 1e-12 * torch.linalg.norm(
            w
        )


# ------------------------------------------------------------------------- checkpoints


def test_state_dict_round_trip_across_rank_changes(device):
    model = conv_net(4, device=device)
    x, y = data(4, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tdlrt = TDLRT(model, opt, tau=0.3)
    for _ in range(3):
        tdlrt.step(make_closure(model, opt, x, y))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "tdlrt": tdlrt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)

    fresh = conv_net(5, ranks=(2, 2), device=device)
    opt2 = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    tdlrt2 = TDLRT(fresh, opt2, tau=0.3)
    ids = [id(p) for p in fresh.parameters()]
    resize_like(fresh, ckpt["model"])
    fresh.load_state_dict(ckpt["model"])
    tdlrt2.load_state_dict(ckpt["tdlrt"])
    assert tdlrt2.ranks() == tdlrt.ranks()
    assert [id(p) for p in fresh.parameters()] == ids
    assert_same_snapshot(snapshot(model, opt), snapshot(fresh, opt2))
    x2, y2 = data(6, device=device)
    for _ in range(2):
        tdlrt.step(make_closure(model, opt, x2, y2))
        tdlrt2.step(make_closure(fresh, opt2, x2, y2))
    assert tdlrt2.ranks() == tdlrt.ranks()
    assert_same_snapshot(snapshot(model, opt), snapshot(fresh, opt2))


def test_load_state_dict_resizes_before_the_model_is_loaded():
    model = conv_net(7)
    x, y = data(7)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tdlrt = TDLRT(model, opt, tau=0.3)
    for _ in range(2):
        tdlrt.step(make_closure(model, opt, x, y))
    fresh = conv_net(8, ranks=(3, 4))
    opt2 = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    tdlrt2 = TDLRT(fresh, opt2, tau=0.3)
    tdlrt2.load_state_dict(tdlrt.state_dict())
    fresh.load_state_dict(model.state_dict())
    assert_same_snapshot(snapshot(model, opt), snapshot(fresh, opt2))
    assert tdlrt2.steps == tdlrt.steps == 2


def test_load_state_dict_of_another_model_is_rejected_and_changes_nothing():
    model = conv_net(9)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tdlrt = TDLRT(model, opt)
    other = nn.Sequential(tnn.TuckerLinear(4, 4, rank=2, dtype=torch.float64))
    sd = TDLRT(other, torch.optim.SGD(other.parameters(), lr=0.1)).state_dict()
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match="Tucker layers"):
        tdlrt.load_state_dict(sd)
    assert_same_snapshot(before, snapshot(model, opt))


def _trained_state(seed=11):
    model = conv_net(seed)
    x, y = data(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tdlrt = TDLRT(model, opt, tau=0.3)
    for _ in range(2):
        tdlrt.step(make_closure(model, opt, x, y))
    return tdlrt.state_dict()


def _bad_tdlrt_state_dicts():
    """(what is wrong, edit of a good TDLRT state dict, entry named in the error)."""

    def drop(key):
        return lambda sd: sd.pop(key)

    def core_of(layer, shape):
        return lambda sd: sd["shapes"][layer].__setitem__("core", shape)

    def factor_of(layer, mode, shape):
        return lambda sd: sd["shapes"][layer]["factors"].__setitem__(mode, shape)

    def momentum(index, shape):
        def edit(sd):
            buf = sd["optimizer"]["state"][index]["momentum_buffer"]
            sd["optimizer"]["state"][index]["momentum_buffer"] = torch.zeros(shape, dtype=buf.dtype)

        return edit

    def linear_ranks(r0, r1):  # layer "3" is a TuckerLinear(150, 4): weight (4, 150)
        def edit(sd):
            sd["shapes"]["3"] = {"core": (r0, r1), "factors": [(4, r0), (150, r1)]}

        return edit

    def groups(sd):
        sd["optimizer"]["param_groups"].append(dict(sd["optimizer"]["param_groups"][0]))

    return [
        ("no shapes", drop("shapes"), "shapes"),
        ("no optimizer", drop("optimizer"), "optimizer"),
        ("layers missing", lambda sd: sd["shapes"].pop("3"), "shapes"),
        ("core of 3 modes", core_of("0", (2, 2, 3)), "['core']"),
        ("core not a shape", core_of("0", "2233"), "['core']"),
        ("factor off the core", factor_of("0", 1, (3, 1)), "['factors'][1]"),
        ("factor of a kept-full mode", factor_of("3", 0, None), "['factors'][0]"),
        ("impossible rank", linear_ranks(1, 2), "['core']"),
        ("rank above the size", linear_ranks(5, 5), "['core']"),
        ("momentum of another rank", momentum(0, (7, 7, 7, 7)), "momentum_buffer"),
        ("a parameter group more", groups, "param_groups"),
        ("steps not a count", lambda sd: sd.__setitem__("steps", -1), "steps"),
    ]


@pytest.mark.parametrize(("what", "edit", "entry"), _bad_tdlrt_state_dicts())
def test_malformed_state_dict_is_refused_naming_the_entry_and_changes_nothing(what, edit, entry):
    sd = _trained_state()
    edit(sd)
    fresh = conv_net(12, ranks=(2, 2))
    opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    tdlrt = TDLRT(fresh, opt, tau=0.3)
    x, y = data(12)
    tdlrt.step(make_closure(fresh, opt, x, y))
    before, ranks, steps = snapshot(fresh, opt), tdlrt.ranks(), tdlrt.steps
    with pytest.raises(StateDictEntryError, match=re.escape(entry)) as info:
        tdlrt.load_state_dict(sd)
    assert isinstance(info.value, ValueError) and entry.strip("[]'") in info.value.entry, what
    assert tdlrt.ranks() == ranks and tdlrt.steps == steps
    assert_same_snapshot(before, snapshot(fresh, opt))


def test_resize_like_refuses_a_malformed_model_state_dict_and_changes_nothing():
    src = conv_net(13)
    fresh = conv_net(14, ranks=(2, 2))
    ranks = [m.ranks for m in tucker_modules(fresh)]
    params = [p.detach().clone() for p in fresh.parameters()]
    good = src.state_dict()
    cases = [
        ({k: v for k, v in good.items() if k != "3.factors.1"}, "3.factors.1"),
        ({**good, "3.core": good["3.core"][:2, :2].clone().T.contiguous()[:1]}, "3.factors.0"),
        ({**good, "0.core": "core"}, "0.core"),
        ({**good, "3.core": torch.zeros(4, 3, 1)}, "3.core"),
    ]
    for sd, entry in cases:
        with pytest.raises(StateDictEntryError, match=re.escape(entry)):
            resize_like(fresh, sd)
        assert [m.ranks for m in tucker_modules(fresh)] == ranks  # not even layer "0"
        assert all(torch.equal(p, q) for p, q in zip(params, fresh.parameters()))
    with pytest.raises(KeyError):  # the missing entry stays a KeyError, as documented before
        resize_like(fresh, cases[0][0])
    with pytest.raises(TypeError, match="state_dict must be a dict"):
        resize_like(fresh, [("0.core", good["0.core"])])


# ------------------------------------------------------------------------- robustness


@pytest.mark.parametrize("mode", ["one-pass", "two-pass"])
def test_nonfinite_gradient_leaves_everything_unchanged(mode, device):
    model = conv_net(10, device=device)
    x, y = data(10, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tdlrt = TDLRT(model, opt, tau=0.2, mode=mode)
    tdlrt.step(make_closure(model, opt, x, y))
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    before = snapshot(model, opt)
    ranks = tdlrt.ranks()
    with pytest.raises(NonFiniteGradientError):
        tdlrt.step(make_closure(model, opt, bad, y))
    assert_same_snapshot(before, snapshot(model, opt))
    assert tdlrt.ranks() == ranks and tdlrt.steps == 1

    tdlrt.on_nonfinite = "skip"
    assert tdlrt.step(make_closure(model, opt, bad, y)) is None
    assert_same_snapshot(before, snapshot(model, opt))
    assert tdlrt.skipped_steps == 1
    # and training goes on afterwards
    tdlrt.step(make_closure(model, opt, x, y))
    assert tdlrt.steps == 2


def test_nonfinite_second_evaluation_rolls_back_the_augmentation():
    model = conv_net(16)
    x, y = data(16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tdlrt = TDLRT(model, opt, tau=0.2, mode="two-pass", update_every=1)
    tdlrt.step(make_closure(model, opt, x, y))
    bad = x.clone()
    bad[:, 0] = float("inf")
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = F.cross_entropy(model(x if len(calls) == 1 else bad), y)
        loss.backward()
        return loss

    before = snapshot(model, opt)
    ranks = tdlrt.ranks()
    with pytest.raises(NonFiniteGradientError, match="Galerkin"):
        tdlrt.step(closure)
    assert len(calls) == 2
    assert tdlrt.ranks() == ranks
    assert_same_snapshot(before, snapshot(model, opt))


def test_zero_grad_discards_a_recorded_backward_pass():
    base = conv_net(17)
    x, y = data(17)
    x_other, y_other = data(18)
    weights = []
    for discard in (False, True):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        tdlrt = TDLRT(model, opt, tau=0.2)
        if discard:
            F.cross_entropy(model(x_other), y_other).backward()
        tdlrt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        tdlrt.step()
        weights.append([m.reconstruct().detach() for m in tucker_modules(model)])
    for a, b in zip(*weights):
        assert torch.equal(a, b)


def test_a_failing_second_evaluation_leaves_the_model_unchanged():
    model = conv_net(19)
    x, y = data(19)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tdlrt = TDLRT(model, opt, tau=0.2, mode="two-pass", update_every=1)
    tdlrt.step(make_closure(model, opt, x, y))
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("data loader failed")
        return make_closure(model, opt, x, y)()

    before = snapshot(model, opt)
    ranks = tdlrt.ranks()
    with pytest.raises(RuntimeError, match="data loader failed"):
        tdlrt.step(closure)
    assert tdlrt.ranks() == ranks and tdlrt.steps == 1
    assert_same_snapshot(before, snapshot(model, opt))


def test_frozen_ranks_take_fixed_rank_steps():
    model = conv_net(11)
    x, y = data(11)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    tdlrt = TDLRT(model, opt, tau=0.5)
    tdlrt.freeze_ranks()
    ranks = tdlrt.ranks()
    layer = tucker_modules(model)[0]
    U0 = layer.factor(0).detach().clone()
    for _ in range(3):
        tdlrt.step(make_closure(model, opt, x, y))
    assert tdlrt.ranks() == ranks and tdlrt.frozen
    U1 = layer.factor(0).detach()
    assert not torch.allclose(U0, U1)  # the basis moves (BUG), only the rank is fixed
    assert torch.allclose(U1.T @ U1, torch.eye(U1.shape[1], dtype=U1.dtype), atol=1e-12)


def test_rank_cap_falls_back_to_moving_fixed_rank_bases():
    model = conv_net(12, ranks=(2, 2))
    x, y = data(12)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    tdlrt = TDLRT(model, opt, tau=1e-6, max_rank=2)
    layer = tucker_modules(model)[1]
    U0 = layer.factor(1).detach().clone()
    for _ in range(3):
        tdlrt.step(make_closure(model, opt, x, y))
    for name, rank in tdlrt.ranks().items():
        assert max(rank) <= 2, name
    U1 = layer.factor(1).detach()
    overlap = torch.linalg.svdvals(U0.T @ U1)
    assert float(overlap.min()) < 1 - 1e-6  # the capped basis is not frozen


def test_update_every_amortizes_basis_updates():
    model = conv_net(13)
    x, y = data(13)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tdlrt = TDLRT(model, opt, tau=0.2, update_every=3)
    layer = tucker_modules(model)[0]
    closure = make_closure(model, opt, x, y)
    assert layer.record_for_galerkin  # the first step updates the bases
    assert tdlrt.next_step == "adapt"
    tdlrt.step(closure)
    assert not layer.record_for_galerkin  # steps in between need no record
    assert tdlrt.next_step == "core"
    U, C = layer.factor(0).detach().clone(), layer.core.detach().clone()
    tdlrt.step(closure)
    assert torch.equal(layer.factor(0).detach(), U)  # in between: core steps only
    assert not torch.equal(layer.core.detach(), C)
    tdlrt.step(closure)
    assert layer.record_for_galerkin and tdlrt.next_step == "adapt"
    tdlrt.step(closure)  # step 3: augmentation and truncation again
    tdlrt.freeze_ranks()
    assert tdlrt.next_step == "bug"
    assert layer.factor(0).shape != U.shape or not torch.equal(layer.factor(0).detach(), U)


@pytest.mark.parametrize("kstep", ["weight", "factors"])
@pytest.mark.parametrize("mode", ["one-pass", "two-pass"])
def test_factor_gradients_are_formed_only_when_a_step_reads_them(kstep, mode):
    def run(force):
        model = conv_net(17)
        x, y = data(17)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        tdlrt = TDLRT(model, opt, tau=0.2, update_every=3, kstep=kstep, mode=mode)
        layers = tucker_modules(model)
        closure = make_closure(model, opt, x, y)
        seen = []
        for _ in range(7):
            if force:  # the behaviour without the switch: every backward forms them
                for layer in layers:
                    layer.factor_gradients = True
            seen.append(layers[0].factor_gradients)
            tdlrt.step(closure)
        return [p.detach().clone() for p in model.parameters()], seen

    params, seen = run(False)
    forced, _ = run(True)
    # steps 0, 3, 6 update the bases: only there, and only for kstep="factors"
    assert seen == [kstep == "factors" and k % 3 == 0 for k in range(7)]
    for p, q in zip(params, forced):
        # the factor gradients only ever fed the K-step: the trajectory is the same
        assert p.shape == q.shape
        assert (p - q).abs().max().item() <= 1e3 * EPS64 * (1.0 + q.abs().max().item())


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_autocast_on_cpu(half):
    torch.manual_seed(14)
    model = nn.Sequential(
        tnn.TuckerConv2d(3, 6, 3, padding=1, rank=4),
        nn.ReLU(),
        nn.Flatten(),
        tnn.TuckerLinear(6 * 5 * 5, 4, rank=3),
    )
    for layer in tucker_modules(model):
        layer.forward_mode = "factorized"
    x, y = data(14, dtype=torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    tdlrt = TDLRT(model, opt, tau=0.2)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=half):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            tdlrt.step()  # called inside the autocast region on purpose
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    for layer in tucker_modules(model):
        assert layer.core.dtype == torch.float32
        assert all(bool(torch.isfinite(p).all()) for p in layer.parameters())
        u = layer.factor(0).detach()
        # small linear algebra in float32: orthonormal to float32 round-off
        assert torch.allclose(u.T @ u, torch.eye(u.shape[1]), atol=1e-5)


def test_half_precision_parameters_train():
    # parameters stored in bfloat16 (not autocast): checks and linear algebra in float32
    model = conv_net(21, dtype=torch.float32).to(torch.bfloat16)
    x, y = data(21, dtype=torch.bfloat16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tdlrt = TDLRT(model, opt, tau=0.2, kstep="factors")
    for _ in range(4):
        tdlrt.step(make_closure(model, opt, x, y))
    eps = torch.finfo(torch.bfloat16).eps
    for layer in tucker_modules(model):
        assert layer.core.dtype == torch.bfloat16
        validate_rank(layer.weight_shape, layer.ranks)
        for u in layer.factors:
            u32 = u.detach().float()
            assert (u32.T @ u32 - torch.eye(u.shape[1])).abs().max() <= 2 * eps


def test_parameters_and_their_gradients_stay_contiguous_across_steps():
    model = conv_net(22)
    x, y = data(22)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tdlrt = TDLRT(model, opt, tau=0.2, kstep="factors", update_every=2)
    closure = make_closure(model, opt, x, y)
    for _ in range(4):
        closure()
        for p in model.parameters():
            assert p.is_contiguous() and (p.grad is None or p.grad.is_contiguous())
        tdlrt.step()


def test_process_average_accepts_non_contiguous_tensors():
    from tuckerflow.optim.distributed import average_

    class TwoProcesses:  # what NCCL does: contiguous tensors only; the other process agrees
        @staticmethod
        def all_reduce(t, op=None):
            if not t.is_contiguous():
                raise ValueError("Tensors must be contiguous")
            t.mul_(2)

        @staticmethod
        def get_world_size():
            return 2

    t = torch.arange(24.0, dtype=torch.float64).reshape(2, 3, 4).permute(2, 0, 1)
    expect = t.clone()
    assert average_(t, TwoProcesses) is t and torch.equal(t, expect)


def test_an_error_forming_the_weight_gradient_is_not_taken_for_an_absent_layer(monkeypatch):
    model = conv_net(24)
    x, y = data(24)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tdlrt = TDLRT(model, opt, tau=0.2)  # kstep="weight": reads the recorded gradient
    layer = tucker_modules(model)[0]

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(layer.gradient_record, "weight_gradient", out_of_memory)
    make_closure(model, opt, x, y)()
    before = snapshot(model, opt)
    with pytest.raises(torch.OutOfMemoryError):
        tdlrt.step()
    assert_same_snapshot(before, snapshot(model, opt))


def test_small_linear_algebra_runs_without_tf32_and_restores_the_setting():
    from tuckerflow.optim.precision import plain_precision as _plain_precision

    matmul = torch.backends.cuda.matmul
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # TF32 enabled by the user
        with _plain_precision():
            if hasattr(matmul, "fp32_precision"):  # torch >= 2.9
                assert matmul.fp32_precision == "ieee"
            else:
                assert torch.get_float32_matmul_precision() == "highest"
        assert torch.get_float32_matmul_precision() == "high" and matmul.allow_tf32
    finally:
        torch.set_float32_matmul_precision(old)


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("tau", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_tau_outside_the_open_unit_interval_is_rejected(tau):
    model = conv_net(0)
    with pytest.raises(ValueError, match="tau"):
        TDLRT(model, torch.optim.SGD(model.parameters(), lr=0.1), tau=tau)


def test_rank_bounds_and_tau_are_not_coerced():
    model = conv_net(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="tau must be a real number"):
        TDLRT(model, opt, tau="0.1")
    with pytest.raises(TypeError, match="max_rank must be an int, a sequence"):
        TDLRT(model, opt, max_rank=float("inf"))
    with pytest.raises(TypeError, match="max_rank must be an int, a sequence"):
        TDLRT(model, opt, max_rank="4")
    with pytest.raises(TypeError, match=r"max_rank\[1\] for layer '3' must be an int or None"):
        TDLRT(model, opt, max_rank={"3": (4, 2.7)})
    with pytest.raises(TypeError, match=r"min_rank\[0\] for layer '3'"):
        TDLRT(model, opt, min_rank={"3": (float("nan"), 1)})
    # NumPy integers are integers (a TypeError before), compared as such
    with pytest.raises(ValueError, match="min_rank"):
        TDLRT(model, opt, min_rank=np.int64(3), max_rank=np.int64(2))
    TDLRT(model, opt, max_rank={"3": (np.int64(3), None)}, min_rank=np.int64(1))


def test_bad_options_are_rejected_with_clear_messages():
    model = conv_net(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"max_rank\[0\]=9 for layer '3' exceeds the size 4"):
        TDLRT(model, opt, max_rank={"3": (9, 9)})
    with pytest.raises(ValueError, match="min_rank"):
        TDLRT(model, opt, min_rank=3, max_rank=2)
    with pytest.raises(ValueError, match="not Tucker layers"):
        TDLRT(model, opt, max_rank={"nope": 2})
    with pytest.raises(ValueError, match="mode="):
        TDLRT(model, opt, mode="three-pass")
    with pytest.raises(ValueError, match="on_nonfinite"):
        TDLRT(model, opt, on_nonfinite="ignore")
    with pytest.raises(ValueError, match="update_every"):
        TDLRT(model, opt, update_every=0)
    with pytest.raises(ValueError, match="no Tucker layers"):
        TDLRT(nn.Linear(2, 2), opt)
    head_only = torch.optim.SGD(model[3].parameters(), lr=0.1)
    with pytest.raises(ValueError, match="not among the optimizer's parameters"):
        TDLRT(model, head_only)
    with torch.no_grad():
        model[0].factors[0].mul_(2.0)
    with pytest.raises(ValueError, match="factor of mode 0 of layer '0' is not orthonormal"):
        TDLRT(model, opt)
    model = conv_net(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    two = TDLRT(model, opt, mode="two-pass")
    with pytest.raises(ValueError, match="closure"):
        two.step()
