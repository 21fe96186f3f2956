"""TDLRT inside the training loops PyTorch users write, each checked against plain PyTorch.

Every idiom of the "Training loops" guide: TDLRT as a ``torch.optim.Optimizer``, gradient
edits, accumulation, ``zero_grad`` by every route, closures and LBFGS, AMP, schedulers and
resume, ``torch.compile``, weight averaging; parametrized over base optimizers and
float32/float64 on tiny layers (a few steps each).
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tuckerflow.nn as tnn
from tuckerflow.optim import (
    TDLRT,
    GradientEditError,
    TuckerAveragedModel,
    ddp_ignore_tucker_parameters,
    resize_like,
    tucker_layers,
)

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.2),
    "momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
}
DTYPES = [torch.float32, torch.float64]
#: the AMP idioms run on every device present (CUDA where a GPU is, CPU always)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def eps(dtype):
    return torch.finfo(dtype).eps


def net(dtype, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        tnn.TuckerConv2d(2, 4, 3, padding=1, rank=2, keep_full="none", dtype=dtype),
        nn.ReLU(),
        nn.Flatten(),
        tnn.TuckerLinear(4 * 4 * 4, 3, rank=2, dtype=dtype),
    )


def batch(dtype, seed=1, n=12):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 4, 4, generator=g, dtype=torch.float64).to(dtype)
    return x, torch.randint(0, 3, (n,), generator=g)


def loss_of(model, x, y):
    return F.cross_entropy(model(x), y)


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_equal_params(a, b):
    assert len(a) == len(b)
    for p, q in zip(a, b):
        assert p.shape == q.shape and torch.equal(p, q)


def assert_close_params(a, b, tol):
    for p, q in zip(a, b):
        assert p.shape == q.shape
        err = (p - q).abs().max().item()
        assert err <= tol * max(1.0, q.abs().max().item()), err


def snapshot(model, opt):
    return params(model), copy.deepcopy(opt.state_dict())


def assert_same_value(a, b):
    """Equal bit for bit, through the dicts, lists and tuples of an optimizer state."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            assert_same_value(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_value(x, y)
    else:
        assert a == b


def assert_same_snapshot(a, b):
    assert_equal_params(a[0], b[0])
    assert_same_value(a[1], b[1])


def assert_step_refused(model, opt, tdlrt, error, match):
    """``tdlrt.step()`` raises ``error`` and leaves model, optimizer, ranks and count as
    they were, bit for bit."""
    before = snapshot(model, opt)
    ranks, steps = tdlrt.ranks(), tdlrt.steps
    with pytest.raises(error, match=match):
        tdlrt.step()
    assert tdlrt.ranks() == ranks and tdlrt.steps == steps
    assert_same_snapshot(before, snapshot(model, opt))


def train(model, opt, tdlrt, steps, *, edit=None, loss_scale=1.0, seed=1):
    for s in range(steps):
        x, y = batch(next(model.parameters()).dtype, seed=seed + s)
        tdlrt.zero_grad()
        (loss_scale * loss_of(model, x, y)).backward()
        if edit is not None:
            edit(model)
        tdlrt.step()


# --------------------------------------------------------------- the Optimizer interface


def test_tdlrt_is_an_optimizer_sharing_the_base_optimizers_groups_and_state():
    model = net(torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tdlrt = TDLRT(model, opt, tau=0.1)
    assert isinstance(tdlrt, torch.optim.Optimizer)
    assert tdlrt.param_groups is opt.param_groups and tdlrt.state is opt.state
    assert tdlrt.defaults is opt.defaults
    train(model, opt, tdlrt, 1)
    # load_state_dict replaces the base optimizer's group dicts: still the same objects
    opt.load_state_dict(opt.state_dict())
    assert tdlrt.param_groups is opt.param_groups
    calls = []
    pre = tdlrt.register_step_pre_hook(lambda o, a, k: calls.append(("pre", o)))
    post = tdlrt.register_step_post_hook(lambda o, a, k: calls.append(("post", o)))
    train(model, opt, tdlrt, 1)
    assert calls == [("pre", tdlrt), ("post", tdlrt)]
    pre.remove()
    post.remove()
    extra = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    tdlrt.add_param_group({"params": [extra], "lr": 0.5})
    assert opt.param_groups[-1]["params"][0] is extra and len(tdlrt.param_groups) == 2
    assert "TDLRT" in repr(tdlrt) and "Adam" in repr(tdlrt)
    copy.deepcopy(tdlrt)  # pickling protocol of an optimizer


def test_bad_model_and_optimizer_are_type_errors_naming_them():
    model = net(torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        TDLRT(None, opt)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        TDLRT(model, [opt])
    with pytest.raises(TypeError, match="already a TDLRT"):
        TDLRT(model, TDLRT(model, opt))


def test_model_helpers_refuse_a_non_module_naming_it():
    model = net(torch.float64)
    for bad in (None, "model", [model]):
        for fn in (tucker_layers, ddp_ignore_tucker_parameters):
            with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
                fn(bad)
        with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
            resize_like(bad, model.state_dict())
        with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
            TuckerAveragedModel(bad)


def test_averaged_model_arguments_are_checked_naming_them():
    model = net(torch.float64)
    with pytest.raises(TypeError, match="decay"):
        TuckerAveragedModel(model, decay="0.9")
    with pytest.raises(ValueError, match="decay"):
        TuckerAveragedModel(model, decay=float("nan"))
    with pytest.raises(ValueError, match="rtol"):
        TuckerAveragedModel(model, rtol=float("inf"))
    with pytest.raises(TypeError, match="max_rank"):
        TuckerAveragedModel(model, max_rank=(float("nan"), 2))
    with pytest.raises(ValueError, match="max_rank"):
        TuckerAveragedModel(model, max_rank=0)
    with pytest.raises(ValueError, match="device='x' is not a torch device"):
        TuckerAveragedModel(model, device="x")
    assert TuckerAveragedModel(model, max_rank=(None, 3)).max_rank == (None, 3)


def test_a_layer_missing_part_of_the_contract_is_named():
    class Half(nn.Module):  # found as a Tucker layer, lacks the recording interface
        def __init__(self):
            super().__init__()
            self.core = nn.Parameter(torch.ones(2, 2))
            self.factors = nn.ParameterList([nn.Parameter(torch.eye(3)[:, :2])])
            self.factorized_modes = (0,)
            self.weight_shape = (3, 2)
            self.ranks = (2, 2)

        def factor(self, mode):
            return self.factors[0] if mode == 0 else None

        def set_tucker_(self, core, factors):
            pass

    model = nn.Sequential(Half())
    with pytest.raises(TypeError, match="'0'.*lacks 'record_for_galerkin'"):
        TDLRT(model, torch.optim.SGD(model.parameters(), lr=0.1))


# --------------------------------------------------------------------- gradient edits


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kstep", ["weight", "factors"])
def test_halving_the_gradients_equals_half_the_learning_rate_under_sgd(kstep, dtype):
    base = net(dtype)
    out = []
    for lr, edit in ((0.2, 0.5), (0.1, None)):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        tdlrt = TDLRT(model, opt, tau=0.05, kstep=kstep)

        def halve(m, edit=edit):
            for p in m.parameters():
                if p.grad is not None:
                    p.grad.mul_(edit)

        train(model, opt, tdlrt, 3, edit=halve if edit else None)
        if edit:
            assert all(r.scale == 0.5 for r in tdlrt.last_edits.values())
        out.append(params(model))
    # scaling by 1/2 is exact in binary floating point: the two runs agree bit for bit
    assert_equal_params(*out)


def _mul(c):
    def edit(model):
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(c)

    return edit


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("how", ["mul", "hook"])
def test_a_uniform_edit_steps_as_the_scaled_loss_does(how, name, dtype):
    base = net(dtype)
    out = []
    for edited in (True, False):
        model = copy.deepcopy(base)
        handles = []
        if edited and how == "hook":
            handles = [p.register_hook(lambda g: 0.5 * g) for p in model.parameters()]
        opt = OPTIMIZERS[name](model.parameters())
        tdlrt = TDLRT(model, opt, tau=0.05)
        if edited:
            train(model, opt, tdlrt, 2, edit=_mul(0.5) if how == "mul" else None)
        else:
            train(model, opt, tdlrt, 2, loss_scale=0.5)
        for h in handles:
            h.remove()
        out.append(params(model))
    # (0.5 L)'s gradients are exactly half of L's: whatever the optimizer, the same bits
    assert_equal_params(*out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_clip_grad_norm_acts_as_on_a_dense_model(name, dtype):
    base = net(dtype)
    x, y = batch(dtype)
    model = copy.deepcopy(base)
    opt = OPTIMIZERS[name](model.parameters())
    tdlrt = TDLRT(model, opt, tau=0.05)
    loss_of(model, x, y).backward()
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e30)
    coef = 0.3 / (float(total) + 1e-6)  # clip_grad_norm_'s coefficient
    tdlrt.zero_grad()
    loss_of(model, x, y).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.3)
    tdlrt.step()
    for r in tdlrt.last_edits.values():
        # the uniform factor is found to round-off of the gradient's dtype
        assert abs(r.scale - coef) <= 10 * eps(dtype) * coef
        assert r.residual <= r.tolerance
    ref = copy.deepcopy(base)
    ref_opt = OPTIMIZERS[name](ref.parameters())
    ref_tdlrt = TDLRT(ref, ref_opt, tau=0.05)
    (coef * loss_of(ref, x, y)).backward()
    ref_tdlrt.step()
    # the same step up to the round-off of forming the gradients in another order
    assert_close_params(params(model), params(ref), 1e3 * eps(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_clipping_to_a_tiny_norm_stops_the_tucker_layers_too(dtype):
    model = net(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    tdlrt = TDLRT(model, opt, tau=1e-6, max_rank=2)
    layers = [m for m in model.modules() if isinstance(m, tnn.TuckerLayer)]
    before = [m.reconstruct().detach().clone() for m in layers]
    x, y = batch(dtype)
    loss_of(model, x, y).backward()
    G = [m.full_weight_gradient().norm().item() for m in layers]
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-9)
    tdlrt.step()
    names = list(tdlrt.ranks())
    for m, w, g, name in zip(layers, before, G, names):
        c = tdlrt.last_edits[name].scale
        assert c <= 1e-9 / tdlrt.last_edits[name].tolerance  # a tiny factor was found
        moved = (m.reconstruct().detach() - w).norm().item()
        # the step of the weight gradient c·G: each of the d basis updates and the Galerkin
        # step moves W by at most lr·c·‖G‖ (plus the round-off of new bases)
        d = len(m.weight_shape)
        assert moved <= (d + 1) * 0.2 * c * g + 100 * eps(dtype) * w.norm().item()


def _clip_value(model):
    torch.nn.utils.clip_grad_value_(model.parameters(), 1e-3)


def _entry_hook(model):
    core = model[0].core
    core.grad[(0,) * core.dim()] += 1.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("edit", [_clip_value, _entry_hook], ids=["clip_value", "one_entry"])
def test_a_non_uniform_edit_is_refused_before_anything_changes(edit, name, dtype):
    model = net(dtype)
    opt = OPTIMIZERS[name](model.parameters())
    tdlrt = TDLRT(model, opt, tau=0.05, update_every=1)
    train(model, opt, tdlrt, 1)  # optimizer state exists
    x, y = batch(dtype, seed=7)
    tdlrt.zero_grad()
    loss_of(model, x, y).backward()
    edit(model)
    assert_step_refused(model, opt, tdlrt, GradientEditError, r"'0\.core'.*mode='two-pass'")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_non_uniform_gradient_hook_is_refused_before_anything_changes(name, dtype):
    model = net(dtype)
    opt = OPTIMIZERS[name](model.parameters())
    tdlrt = TDLRT(model, opt, tau=0.05, update_every=1)
    train(model, opt, tdlrt, 1)  # optimizer state exists
    core = model[0].core
    mask = torch.ones_like(core)
    mask[(0,) * core.dim()] = 0.0  # one entry masked out: no scalar c gives c · R
    handle = core.register_hook(lambda g: g * mask)
    x, y = batch(dtype, seed=7)
    tdlrt.zero_grad()
    loss_of(model, x, y).backward()
    handle.remove()
    assert core.grad[(0,) * core.dim()] == 0  # the hook ran
    assert_step_refused(model, opt, tdlrt, GradientEditError, r"'0\.core'.*mode='two-pass'")


def test_a_gradient_no_backward_explains_is_refused():
    model = net(torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tdlrt = TDLRT(model, opt, tau=0.05)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    with pytest.raises(GradientEditError, match="no recorded backward pass explains"):
        tdlrt.step()


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_pass_mode_takes_a_non_uniform_edit_into_the_galerkin_step(dtype):
    model = net(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    tdlrt = TDLRT(model, opt, tau=0.05, mode="two-pass")
    x, y = batch(dtype)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(model[0].core.grad.clone()))

    def closure():
        opt.zero_grad()
        loss = loss_of(model, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 1e-3)
        return loss

    tdlrt.step(closure)
    (g,) = seen
    # the base optimizer stepped the clipped gradient of the augmented core
    assert g.shape != (2, 2, 3, 3) and g.abs().max() <= torch.tensor(1e-3, dtype=dtype)


# ------------------------------------------------------- accumulation and zero_grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_accumulated_micro_batches_step_as_the_full_batch(name, dtype):
    base = net(dtype)
    out = []
    for micro in (1, 3):
        model = copy.deepcopy(base)
        opt = OPTIMIZERS[name](model.parameters())
        tdlrt = TDLRT(model, opt, tau=0.05)
        for s in range(2):
            x, y = batch(dtype, seed=10 + s)
            tdlrt.zero_grad()
            for xs, ys in zip(x.chunk(micro), y.chunk(micro)):
                (loss_of(model, xs, ys) / micro).backward()
            tdlrt.step()
        out.append(params(model))
    # the same gradient summed in another order: agreement to round-off
    assert_close_params(out[0], out[1], 1e3 * eps(dtype))


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("route", ["optimizer", "tdlrt", "model"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_discarded_backward_leaves_nothing_behind(dtype, name, route, set_to_none):
    base = net(dtype)
    x, y = batch(dtype)
    x_other, y_other = batch(dtype, seed=99)
    out = []
    for discard in (True, False):
        model = copy.deepcopy(base)
        opt = OPTIMIZERS[name](model.parameters())
        tdlrt = TDLRT(model, opt, tau=0.05)
        zero = {"optimizer": opt, "tdlrt": tdlrt, "model": model}[route].zero_grad
        if discard:
            loss_of(model, x_other, y_other).backward()
        zero(set_to_none=set_to_none)
        loss_of(model, x, y).backward()
        tdlrt.step()
        out.append(params(model))
    assert_equal_params(*out)


# ------------------------------------------------------------------ closures, LBFGS


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_step_with_a_closure_evaluates_it_once_and_equals_backward_then_step(name, dtype):
    base = net(dtype)
    x, y = batch(dtype)
    out = []
    for use_closure in (True, False):
        model = copy.deepcopy(base)
        opt = OPTIMIZERS[name](model.parameters())
        tdlrt = TDLRT(model, opt, tau=0.05)
        calls = []

        def closure(model=model, opt=opt, calls=calls):
            calls.append(None)
            opt.zero_grad()
            loss = loss_of(model, x, y)
            loss.backward()
            return loss

        for _ in range(2):
            if use_closure:
                loss = tdlrt.step(closure)
                assert torch.is_tensor(loss)
            else:
                closure()
                tdlrt.step()
        assert len(calls) == 2
        out.append(params(model))
    assert_equal_params(*out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lbfgs_trains_through_step_closure_across_rank_changes(dtype):
    model = net(dtype)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    tdlrt = TDLRT(model, opt, tau=1e-3, update_every=2, defer_truncation=False)
    x, y = batch(dtype, n=24)

    def closure():
        opt.zero_grad()
        loss = loss_of(model, x, y)
        loss.backward()
        return loss

    with pytest.raises(ValueError, match="LBFGS re-evaluates the loss"):
        tdlrt.step()
    first = float(closure().detach())
    seen = {tuple(tdlrt.ranks().values())}
    for _ in range(6):
        kind = tdlrt.next_step
        tdlrt.step(closure)
        seen.add(tuple(tdlrt.ranks().values()))
        history = opt.state[opt._params[0]]
        if kind == "adapt":  # the flattened history cannot follow new bases: reset
            assert "old_dirs" not in history
        else:  # a core-only step keeps shapes and bases: L-BFGS builds its history
            assert len(history["old_dirs"]) > 0
    assert len(seen) > 1
    assert float(closure().detach()) < 0.5 * first


def _lbfgs_setup(dtype, update_every=2):
    model = net(dtype)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    tdlrt = TDLRT(model, opt, tau=1e-3, update_every=update_every, defer_truncation=False)
    x, y = batch(dtype, n=24)

    def closure(model=model, opt=opt):
        opt.zero_grad()
        loss = loss_of(model, x, y)
        loss.backward()
        return loss

    return model, opt, tdlrt, closure


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["adapt", "core"])
def test_lbfgs_step_without_a_closure_is_refused_before_anything_changes(kind, dtype):
    runs = []
    for refuse in (True, False):
        model, opt, tdlrt, closure = _lbfgs_setup(dtype)
        tdlrt.step(closure)  # an L-BFGS history and recorded passes exist
        if kind == "adapt":
            tdlrt.step(closure)
        assert tdlrt.next_step == kind
        if refuse:
            closure()  # a backward pass, as a loop written for SGD would do
            assert_step_refused(model, opt, tdlrt, ValueError, "LBFGS re-evaluates the loss")
        tdlrt.step(closure)  # and the next step is the step it would have been
        runs.append(params(model))
    assert_equal_params(*runs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lbfgs_step_between_basis_updates_is_plain_lbfgs_with_the_factors_fixed(dtype):
    model, opt, tdlrt, closure = _lbfgs_setup(dtype, update_every=3)
    tdlrt.step(closure)  # a basis update: the history starts afresh at the new bases
    tdlrt.step(closure)  # a core step: L-BFGS builds its history
    assert tdlrt.next_step == "core"
    assert len(opt.state[opt._params[0]]["old_dirs"]) > 0
    # the same point and the same history, in a plain model and optimizer
    ref_model = copy.deepcopy(model)
    ref_opt = torch.optim.LBFGS(ref_model.parameters(), lr=0.5, max_iter=4)
    # (copied: the state dict holds the history's tensors, which L-BFGS updates in place)
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    factors = {id(p) for m in tucker_layers(ref_model).values() for p in m.factors}
    x, y = batch(dtype, n=24)

    def ref_closure():
        ref_opt.zero_grad()
        loss = loss_of(ref_model, x, y)
        loss.backward()
        for p in ref_model.parameters():
            if id(p) in factors:
                p.grad = None  # L-BFGS reads a missing gradient as zero: the factor stays
        return loss

    loss = tdlrt.step(closure)
    ref_loss = ref_opt.step(ref_closure)
    # the same iterations on the same gradients: bit for bit, history included
    assert float(loss.detach()) == float(ref_loss.detach())
    assert_equal_params(params(model), params(ref_model))
    assert_same_value(opt.state_dict(), ref_opt.state_dict())
    assert float(closure().detach()) < float(loss.detach())


# ------------------------------------------------------------------------------- AMP


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_trains_float32_parameters(device):
    def run(autocast):
        model = net(torch.float32).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.2)
        tdlrt = TDLRT(model, opt, tau=0.05)
        x, y = (t.to(device) for t in batch(torch.float32))
        losses = []
        for _ in range(4):
            tdlrt.zero_grad()
            with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
                loss = loss_of(model, x, y)
            loss.backward()
            tdlrt.step()
            losses.append(float(loss.detach()))
        with torch.no_grad():
            final = float(loss_of(model, x, y))
        ranks = [tuple(m.ranks) for m in model if isinstance(m, tnn.TuckerLayer)]
        return model, losses, final, ranks

    model, losses, final, ranks = run(True)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert losses[-1] < losses[0]
    # against float32 from the same start: bf16 gradients carry a relative error of about
    # u_bf16 = 2⁻⁸ per step; over 4 steps the loss may move by a few u_bf16 (margin 2), and a
    # rank decision at the truncation level by one direction per mode
    _, _, final32, ranks32 = run(False)
    assert abs(final - final32) <= 8 * 2.0**-8 * final32
    for r, r32 in zip(ranks, ranks32):
        assert all(abs(a - b) <= 1 for a, b in zip(r, r32)), (ranks, ranks32)


def _scaled_steps(model, opt, tdlrt, scaler, steps, x, y, clip=None):
    device = x.device.type
    for _ in range(steps):
        tdlrt.zero_grad()
        with torch.autocast(device, dtype=torch.float16):
            loss = loss_of(model, x, y)
        scaler.scale(loss).backward()
        scaler.unscale_(tdlrt)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        scaler.step(tdlrt)
        scaler.update()


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_autocast_with_grad_scaler_steps_as_the_unscaled_loss(device):
    base = net(torch.float32).to(device)
    x, y = (t.to(device) for t in batch(torch.float32))
    model = copy.deepcopy(base)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    tdlrt = TDLRT(model, opt, tau=0.05)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**12)
    _scaled_steps(model, opt, tdlrt, scaler, 2, x, y, clip=1.0)
    assert tdlrt.steps == 2
    for r in tdlrt.last_edits.values():
        assert r.scale <= 2.0**-12  # unscale, and clipping on top when it binds
    ref = copy.deepcopy(base)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.2)
    ref_tdlrt = TDLRT(ref, ref_opt, tau=0.05)
    for _ in range(2):
        ref_tdlrt.zero_grad()
        with torch.autocast(device, dtype=torch.float16):
            loss = loss_of(ref, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_tdlrt.step()
    # fp16 output gradients, scaled or not, round differently: agreement at fp16 level
    assert_close_params(params(model), params(ref), 20 * eps(torch.float16))


@pytest.mark.parametrize("device", DEVICES)
def test_grad_scaler_skips_an_overflowing_step_and_leaves_everything_unchanged(device):
    model = net(torch.float32).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tdlrt = TDLRT(model, opt, tau=0.05)
    x, y = (t.to(device) for t in batch(torch.float32))
    scaler = torch.amp.GradScaler(device, init_scale=2.0**4)
    _scaled_steps(model, opt, tdlrt, scaler, 1, x, y)
    before = snapshot(model, opt)
    scaler.update(2.0**60)  # overflows fp16: inf gradients
    _scaled_steps(model, opt, tdlrt, scaler, 1, x, y)
    assert scaler.get_scale() < 2.0**60 and tdlrt.steps == 1
    assert_same_snapshot(before, snapshot(model, opt))
    scaler.update(2.0**4)
    _scaled_steps(model, opt, tdlrt, scaler, 1, x, y)  # and training goes on
    assert tdlrt.steps == 2


# ---------------------------------------------------------- schedulers and resume


def _cosine_run(name, dtype, steps, *, state=None, seed=0):
    model = net(dtype, seed=seed)
    opt = OPTIMIZERS[name](model.parameters())
    tdlrt = TDLRT(model, opt, tau=0.02)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(tdlrt, T_max=8)
    start = 0
    if state is not None:
        ckpt = torch.load(io.BytesIO(state), weights_only=True)
        model.load_state_dict(ckpt["model"])
        tdlrt.load_state_dict(ckpt["tdlrt"])
        sched.load_state_dict(ckpt["sched"])
        start = ckpt["step"]
    for s in range(start, steps):
        x, y = batch(dtype, seed=20 + s)
        tdlrt.zero_grad()
        loss_of(model, x, y).backward()
        tdlrt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "tdlrt": tdlrt.state_dict(),
            "sched": sched.state_dict(),
            "step": steps,
        },
        buf,
    )
    return model, tdlrt, buf.getvalue()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_resuming_a_cosine_schedule_is_bit_identical(name, dtype):
    whole, tdlrt, _ = _cosine_run(name, dtype, 6)
    assert tdlrt.param_groups[0]["lr"] < OPTIMIZERS[name]([torch.zeros(1)]).defaults["lr"]
    _, first, state = _cosine_run(name, dtype, 3)
    # a fresh model of other weights and ranks: everything comes from the checkpoint
    resumed, second, _ = _cosine_run(name, dtype, 6, state=state, seed=5)
    assert second.ranks() == tdlrt.ranks()
    assert_equal_params(params(resumed), params(whole))


# -------------------------------------------------------------------- torch.compile


def compile_problem(dtype):
    """Two small ``TuckerLinear`` layers at rank 2 and a full-rank target (built in float32
    and converted)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        tnn.TuckerLinear(12, 12, rank=2), nn.Tanh(), tnn.TuckerLinear(12, 6, rank=2)
    ).to(dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 12, generator=g)
    w1, w2 = torch.randn(12, 12, generator=g), torch.randn(12, 6, generator=g)
    return model, x.to(dtype), (torch.tanh(x @ w1) @ w2).to(dtype)


def tdlrt_run(model, forward, name, steps, x, target):
    """Ranks after every step (and before the first) and the final parameters."""
    opt = OPTIMIZERS[name](model.parameters())
    tdlrt = TDLRT(model, opt, tau=1e-3)
    ranks = [tuple(tdlrt.ranks().values())]
    for _ in range(steps):
        opt.zero_grad()
        ((forward(x) - target) ** 2).mean().backward()
        tdlrt.step()
        ranks.append(tuple(tdlrt.ranks().values()))
    return ranks, params(model)


class counting_compile:
    """``torch.compile`` with a backend that counts what dynamo compiles (node counts in
    ``graphs``) and runs it as traced; dynamo's counters in ``seen`` on exit."""

    def __enter__(self):
        import torch._dynamo as dynamo
        from torch._dynamo.utils import counters

        self.graphs, self._counters = [], counters
        dynamo.reset()
        counters.clear()
        return self

    def __call__(self, model):
        def backend(gm, example_inputs):
            self.graphs.append(len(gm.graph.nodes))
            return gm.forward

        return torch.compile(model, backend=backend)

    def __exit__(self, *exc):
        import torch._dynamo as dynamo

        self.seen = {k: dict(self._counters[k]) for k in ("frames", "unimplemented", "stats")}
        dynamo.reset()


def compiled_and_eager(name, dtype, steps):
    """The same TDLRT run with the model compiled and eager: ``(compiled, eager, graphs,
    seen)``, each run ``(ranks, parameters)`` (:func:`tdlrt_run`), ``graphs[s]`` the number
    of graphs dynamo had compiled after the forward pass of step ``s + 1``, ``seen`` its
    frame and fallback counters."""
    model, x, target = compile_problem(dtype)
    eager = copy.deepcopy(model)
    graphs = []
    with counting_compile() as cc:
        compiled_model = cc(model)

        def forward(inp):
            out = compiled_model(inp)
            graphs.append(len(cc.graphs))
            return out

        compiled = tdlrt_run(model, forward, name, steps, x, target)
    return compiled, tdlrt_run(eager, eager, name, steps, x, target), graphs, cc.seen


def rank_changes(ranks):
    return sum(a != b for a, b in zip(ranks, ranks[1:]))


# dynamo reads ``.grad`` of its (non-leaf) view inputs and hides the resulting warning by
# overriding ``warnings.showwarning``, which the "error" filter of the test suite bypasses
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_compiled_model_does_not_recompile_between_rank_changes():
    # the 40-step run of the "Training loops" guide (docs/scripts/compile_counts.py): at
    # SGD's lr 0.2 five rank changes, three of them after the sizes became symbolic
    (ranks, p_compiled), (ranks_eager, p_eager), graphs, seen = compiled_and_eager(
        "sgd", torch.float32, 40
    )
    changes = rank_changes(ranks)
    first = 2  # one graph per layer kind of input (with and without grad) before a change
    assert changes >= 3
    assert graphs[-1] - first <= changes + 2, (graphs[-1], changes)
    # once the sizes are symbolic, rank changes compile nothing: the forward passes after
    # the last graph see at least two of them (parameters traced directly: none)
    last = graphs.index(graphs[-1])  # the step (0-based) whose forward compiled it
    assert rank_changes(ranks[last:-1]) >= 2, (graphs, ranks)
    # no graph dropped back to eager (recompile limit) and no frame failed
    assert not seen["unimplemented"], seen["unimplemented"]
    assert seen["frames"]["total"] == seen["frames"]["ok"]
    assert ranks == ranks_eager
    assert_close_params(p_compiled, p_eager, 1e3 * eps(torch.float32))


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
@pytest.mark.parametrize("dtype", DTYPES)
def test_compiled_model_steps_as_the_eager_one_for_every_optimizer(dtype):
    model, x, target = compile_problem(dtype)
    start = copy.deepcopy(model)
    with counting_compile() as cc:
        compiled = cc(model)
        for name in sorted(OPTIMIZERS):
            # one compiled model for all: load_state_dict resizes it back to rank 2
            model.load_state_dict(start.state_dict())
            ranks, p_compiled = tdlrt_run(model, compiled, name, 2, x, target)
            eager = copy.deepcopy(start)
            ranks_eager, p_eager = tdlrt_run(eager, eager, name, 2, x, target)
            # the first step changes the ranks and the optimizer state follows the new
            # bases; the second runs the compiled forward at the new shapes
            assert ranks[1] != ranks[0]
            assert ranks == ranks_eager, name
            # the traced graph runs the operations of the eager forward: round-off at most
            assert_close_params(p_compiled, p_eager, 1e3 * eps(dtype))
    # no graph dropped back to eager (recompile limit) and no frame failed
    assert not cc.seen["unimplemented"], cc.seen["unimplemented"]
    assert cc.seen["frames"]["total"] == cc.seen["frames"]["ok"]


# ---------------------------------------------------------------- weight averaging


@pytest.mark.parametrize("decay", [None, 0.5])
def test_averaging_across_rank_changes_equals_the_dense_average(decay):
    dtype = torch.float64
    model = net(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tdlrt = TDLRT(model, opt, tau=1e-3)
    avg = TuckerAveragedModel(model, decay=decay)
    dense = None
    ranks = {tuple(tdlrt.ranks().values())}
    for s in range(4):
        train(model, opt, tdlrt, 1, seed=30 + s)
        ranks.add(tuple(tdlrt.ranks().values()))
        avg.update_parameters(model)
        weights = [m.reconstruct().detach() for m in model.modules() if hasattr(m, "core")]
        weights += [model[3].bias.detach(), model[0].bias.detach()]
        alpha = 1.0 / (s + 1) if decay is None else 1.0 - decay
        dense = (
            [w.clone() for w in weights]
            if dense is None
            else [d + alpha * (w - d) for d, w in zip(dense, weights)]
        )
    assert len(ranks) > 1  # the ranks changed along the way
    got = [m.reconstruct().detach() for m in avg.module.modules() if hasattr(m, "core")]
    got += [avg.module[3].bias.detach(), avg.module[0].bias.detach()]
    for a, b in zip(got, dense):
        assert (a - b).abs().max().item() <= 1e3 * eps(dtype) * b.abs().max().item()
    x, _ = batch(dtype)
    assert avg(x).shape == (12, 3)
