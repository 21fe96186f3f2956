"""Tucker adapters: exact start, frozen bases, rank growth under TDLRT, merging, saving, errors."""

from __future__ import annotations

import copy
import doctest
import io
import math

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

import tuckerflow.nn.adapters as adapters_module  # noqa: E402
from tuckerflow.nn import (  # noqa: E402
    TuckerAdapter,
    TuckerConv2d,
    TuckerLayer,
    TuckerLinear,
    adapter_report,
    adapter_state_dict,
    add_adapters,
    disable_adapters,
    enable_adapters,
    load_adapter_state_dict,
    merge_adapters,
    remove_adapters,
)
from tuckerflow.optim import TDLRT, ddp_ignore_tucker_parameters  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # tiny tensors: with parallel test workers, torch's thread pools only contend
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# one module of each supported kind, with the options the update must copy
KINDS = {
    "linear": (lambda: nn.Linear(12, 10), (5, 12)),
    "conv1d": (lambda: nn.Conv1d(6, 8, 5, stride=2, padding=2, padding_mode="circular"), (3, 6, 9)),
    "conv2d": (
        lambda: nn.Conv2d(8, 6, 3, padding="same", dilation=2, groups=2, padding_mode="reflect"),
        (2, 8, 7, 7),
    ),
    "conv3d": (lambda: nn.Conv3d(4, 6, 3, padding=1, bias=False), (2, 4, 4, 4, 4)),
}


def _pretrained():
    """A small 'pretrained' network: two convolutions, BatchNorm, a classifier head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 16),
        nn.ReLU(),
        nn.Linear(16, 5),
    )


def _snapshot(model):
    """Everything a refused call must leave alone: structure, tensors, trainability flags."""
    return (
        [(name, type(m)) for name, m in model.named_modules()],
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        {n for n, m in model.named_modules() if getattr(m, adapters_module._KEEP_MARK, False)},
    )


def _bits(t):
    """The tensor's bit pattern (NaN payloads and signed zeros included)."""
    if t.is_floating_point():
        return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


def _assert_unchanged(model, snap):
    structure, tensors, flags, kept = _snapshot(model)
    assert structure == snap[0]
    assert tensors.keys() == snap[1].keys()
    for k, v in tensors.items():
        assert v.shape == snap[1][k].shape and torch.equal(_bits(v), _bits(snap[1][k])), k
    assert flags == snap[2]
    assert kept == snap[3]


def _trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


# ------------------------------------------------------------------------------------------
# construction


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_outputs_are_unchanged_exactly_at_initialization(kind, dtype):
    make, shape = KINDS[kind]
    torch.manual_seed(1)
    base = make().to(dtype)
    x = torch.randn(shape, dtype=dtype)
    ref = base(x)
    model, report = add_adapters(nn.Sequential(base), rank=2, rng=0)
    adapter = model[0]
    assert isinstance(adapter, TuckerAdapter) and adapter.base is base
    assert torch.equal(model(x), ref)
    update = adapter.update
    assert type(update).__name__ == "Tucker" + type(base).__name__
    assert update.bias is None and update.core.dtype == dtype
    assert not bool(update.core.any())
    for mode in update.factorized_modes:  # orthonormal random factors, as TDLRT needs
        u = update.factor(mode).detach().double()
        eye = torch.eye(u.shape[1], dtype=torch.float64)
        assert torch.allclose(u.T @ u, eye, atol=8 * torch.finfo(dtype).eps * u.shape[0])
    if kind != "linear":
        for name in ("stride", "padding", "dilation", "groups", "padding_mode", "kernel_size"):
            assert getattr(update, name) == getattr(base, name)
    layer = report.layers[0]
    assert layer.path == "0" and layer.weight_shape == tuple(base.weight.shape)
    assert layer.trainable_params == sum(p.numel() for p in update.parameters())
    assert layer.base_params == sum(p.numel() for p in base.parameters())
    # eval mode and the forward paths of the update give the same exact start
    update.forward_mode = "dense"
    assert torch.equal(model.eval()(x), ref)


def test_adapter_reads_through_the_base_and_says_what_it_is():
    base = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    adapter = TuckerAdapter(base, rank=(2, 3, None, None), rng=0)
    for name in (
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "padding",
        "dilation",
        "groups",
        "padding_mode",
    ):
        assert getattr(adapter, name) == getattr(base, name)
    assert adapter.bias is base.bias
    assert adapter.ranks == (2, 3, 3, 3)
    assert torch.equal(adapter.weight, base.weight)  # ΔW = 0 exactly
    # the adapter hides the Tucker-layer interface: TDLRT sees the update only
    assert not hasattr(adapter, "core") and not hasattr(adapter, "factors")
    assert not hasattr(adapter, "in_features")
    with pytest.raises(AttributeError, match="cannot be assigned"):
        adapter.weight = nn.Parameter(torch.zeros(6, 4, 3, 3))
    text = repr(adapter)
    assert "frozen base" in text and "ranks=(2, 3, 3, 3)" in text and "Conv2d" in text
    assert all(not p.requires_grad for p in base.parameters())
    # a seed gives the same factors; another seed others
    again = TuckerAdapter(copy.deepcopy(base), rank=(2, 3, None, None), rng=0)
    other = TuckerAdapter(copy.deepcopy(base), rank=(2, 3, None, None), rng=1)
    assert torch.equal(again.update.factors[0], adapter.update.factors[0])
    assert not torch.equal(other.update.factors[0], adapter.update.factors[0])
    with torch.no_grad():
        adapter.update.core.normal_()
    w = adapter.weight
    assert torch.allclose(w, base.weight + adapter.delta_weight(), atol=0, rtol=0)
    w.sum().backward()  # the merged weight is differentiable in the update
    assert adapter.update.core.grad is not None and base.weight.grad is None


def test_everything_else_is_frozen_and_the_report_counts():
    model = _pretrained()
    model, report = add_adapters(model, rank=2, modules_to_save=["9"], rng=0)
    assert [r.path for r in report.layers] == ["0", "3", "7"]
    assert [r.ranks for r in report.layers] == [(2, 2, 3, 3), (2, 2, 3, 3), (2, 2)]
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {f"{p}.update.{k}" for p in ("0", "3", "7") for k in ("core", "factors.0")}
    expected |= {f"{p}.update.factors.1" for p in ("0", "3", "7")} | {"9.weight", "9.bias"}
    assert names == expected
    assert not model[1].weight.requires_grad  # BatchNorm frozen too
    assert report.kept == {"9": 16 * 5 + 5}
    params = list(model.parameters())
    assert report.total == sum(p.numel() for p in params)
    assert report.trainable == sum(p.numel() for p in params if p.requires_grad)
    assert report.trainable == report.adapter_params + report.kept["9"]
    assert report.frozen == report.total - report.trainable
    d = report.to_dict()
    assert d["trainable_params"] == report.trainable and d["layers"][2]["ranks"] == [2, 2]
    text = str(report)
    assert "kept trainable" in text and "TuckerConv2d" in text and "trainable parameters" in text


def test_selection_follows_tuckerize():
    model = nn.Sequential(
        nn.ConvTranspose2d(4, 4, 3),
        nn.MultiheadAttention(8, 2),
        TuckerLinear(8, 8, rank=2),
        nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)),
    )
    # default: exact supported types, not inside MultiheadAttention, not in modules_to_save
    _, report = add_adapters(copy.deepcopy(model), rank=1, modules_to_save=["3.1"])
    assert [r.path for r in report.layers] == ["3.0"]
    _, report = add_adapters(copy.deepcopy(model), rank=1, filter=lambda p, m: p == "3.1")
    assert [r.path for r in report.layers] == ["3.1"]
    _, report = add_adapters(copy.deepcopy(model), rank={"3.0": 2, "3.1": 1})
    assert [(r.path, r.ranks) for r in report.layers] == [("3.0", (2, 2)), ("3.1", (1, 1))]


def test_shared_module_and_root_module():
    lin = nn.Linear(6, 6)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    model, report = add_adapters(model, rank=1)
    assert model[0] is model[2] and len(report.layers) == 1
    assert list(adapter_state_dict(model)) == [
        "0.update.core",
        "0.update.factors.0",
        "0.update.factors.1",
    ]
    merged = merge_adapters(model)
    assert merged[0] is merged[2] and type(merged[0]) is nn.Linear
    root, report = add_adapters(nn.Linear(5, 3).eval(), rank=1)
    assert isinstance(root, TuckerAdapter) and report.layers[0].path == ""
    assert not root.training and not root.update.training
    assert type(merge_adapters(root)) is nn.Linear


# ------------------------------------------------------------------------------------------
# training with TDLRT


def _regression_task(base, shift, *, seed):
    """Batches of (x, target) for the weight ``base.weight + shift``, a full-rank change."""
    g = torch.Generator().manual_seed(seed)
    w = (base.weight + shift).detach()
    conv = isinstance(base, nn.Conv2d)

    @torch.no_grad()
    def batch():
        if conv:
            x = torch.randn(16, base.in_channels, 6, 6, generator=g, dtype=w.dtype)
            return x, F.conv2d(x, w, base.bias, base.stride, base.padding)
        x = torch.randn(64, base.in_features, generator=g, dtype=w.dtype)
        return x, F.linear(x, w, base.bias)

    return batch


@pytest.mark.parametrize(
    "kind, optimizer, params",
    [
        ("linear", "sgd", "trainable"),
        ("linear", "adamw", "all"),
        ("conv2d", "sgd", "all"),
        ("conv2d", "adamw", "trainable"),
    ],
)
def test_ranks_grow_from_a_small_start_and_bases_stay_bit_identical(kind, optimizer, params):
    torch.manual_seed(3)
    if kind == "linear":
        base, shift_shape, steps = nn.Linear(16, 12), (12, 16), 25
    else:
        base, shift_shape, steps = nn.Conv2d(6, 8, 3, padding=1), (8, 6, 3, 3), 20
    frozen_extra = nn.Linear(4, 4)  # an unrelated module: frozen, never stepped
    model = nn.ModuleDict({"layer": base, "other": frozen_extra})
    shift = 0.3 * torch.randn(shift_shape)  # full rank in every mode
    batch = _regression_task(base, shift, seed=4)
    model, report = add_adapters(model, rank=1, rng=0)
    assert [r.path for r in report.layers] == ["layer", "other"]
    before = {k: v.clone() for k, v in model.state_dict().items() if ".base." in k}
    assert len(before) == 4
    chosen = _trainable(model) if params == "trainable" else list(model.parameters())
    if optimizer == "sgd":
        opt = torch.optim.SGD(chosen, lr=0.3, momentum=0.9, weight_decay=1e-2)
    else:
        opt = torch.optim.AdamW(chosen, lr=0.05, weight_decay=1e-1)
    tdlrt = TDLRT(model, opt, tau=0.01, update_every=1)
    adapter = model["layer"]
    losses = []
    for _ in range(steps):
        x, y = batch()
        opt.zero_grad()
        loss = F.mse_loss(adapter(x), y)
        loss.backward()
        tdlrt.step()
        losses.append(loss.item())
    ranks = adapter.ranks
    # the change has full rank in each mode: TDLRT must grow well past the start of 1
    assert all(ranks[i] >= 4 for i in adapter.update.factorized_modes), ranks
    assert losses[-1] < 0.25 * losses[0], losses
    for k, v in model.state_dict().items():
        if ".base." in k:
            assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in frozen_extra.parameters())
    assert adapter_report(model).layers[0].ranks == ranks


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_float32_takes_the_rank_decisions_of_float64(kind):
    # the same start in both precisions (built in float64, then cast): float32 round-off
    # must not stop the ranks from growing out of the zero core
    torch.manual_seed(14)
    if kind == "linear":
        base, shift_shape, steps = nn.Linear(48, 40).double(), (40, 48), 15
    else:
        base, shift_shape, steps = nn.Conv2d(16, 12, 3, padding=1).double(), (12, 16, 3, 3), 12
    shift = 0.3 * torch.randn(shift_shape, dtype=torch.float64)
    batch = _regression_task(base, shift, seed=15)
    data = [batch() for _ in range(steps)]
    model64, _ = add_adapters(nn.Sequential(base), rank=2, rng=0)
    model32 = copy.deepcopy(model64).float()
    results = {}
    for name, model in (("64", model64), ("32", model32)):
        dtype = model[0].update.core.dtype
        opt = torch.optim.SGD(_trainable(model), lr=0.3, momentum=0.9)
        tdlrt = TDLRT(model, opt, tau=0.01, update_every=1)
        for x, y in data:
            opt.zero_grad()
            loss = F.mse_loss(model(x.to(dtype)), y.to(dtype))
            loss.backward()
            tdlrt.step()
        x, y = data[-1]
        with torch.no_grad():
            final = F.mse_loss(model(x.to(dtype)).double(), y).item()
        results[name] = (model[0].ranks, final)
    (r64, l64), (r32, l32) = results["64"], results["32"]
    assert all(r32[i] >= 0.75 * r64[i] for i in model64[0].update.factorized_modes), (r32, r64)
    assert min(r64[i] for i in model64[0].update.factorized_modes) >= 6, r64
    assert l32 <= 1.2 * l64, (l32, l64)


@pytest.mark.parametrize("mode", ["one-pass", "two-pass"])
@pytest.mark.parametrize("kstep", ["weight", "factors"])
def test_every_step_form_trains_from_the_zero_core(kstep, mode):
    # kstep="weight" augments by the projected weight gradient: the ranks grow at once.
    # kstep="factors": the factor gradients vanish at a zero core (∇_U L = g Sᴴ, S = 0), so
    # the first step moves the core in the initial bases; the bases follow from step two
    torch.manual_seed(5)
    base = nn.Linear(16, 12)
    batch = _regression_task(base, 0.3 * torch.randn(12, 16), seed=6)
    model, _ = add_adapters(nn.Sequential(base), rank=1, rng=0)
    opt = torch.optim.SGD(_trainable(model), lr=0.3, momentum=0.9)
    tdlrt = TDLRT(model, opt, tau=0.01, kstep=kstep, mode=mode, update_every=1)
    ranks, losses = [], []
    for _ in range(20):
        x, y = batch()

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            return loss

        losses.append(tdlrt.step(closure).item())
        ranks.append(model[0].ranks)
    assert ranks[0] == ((1, 1) if kstep == "factors" else (2, 2))
    assert ranks[1] > ranks[0]
    assert min(ranks[-1]) >= 4 and losses[-1] < 0.25 * losses[0], (ranks, losses)


def test_training_loop_idioms_clipping_scheduler_and_bf16_autocast():
    # adapters are trained as any Tucker layer: the idioms work as they do for Tucker layers
    # (their exact semantics under TDLRT are tested with the optimizer); here they must train
    # the adapters and the kept head and leave every frozen parameter bit-identical
    model = _pretrained()
    x = torch.randn(16, 3, 6, 6, generator=torch.Generator().manual_seed(7))
    target = torch.arange(16) % 5
    model, _ = add_adapters(model, rank=1, modules_to_save=["9"], rng=0)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD(_trainable(model), lr=1.0, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.7)
    tdlrt = TDLRT(model, opt, tau=0.05, update_every=1)
    losses, clipped = [], 0
    for _ in range(12):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), target)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(_trainable(model), 0.05))
        tdlrt.step()
        if norm > 0.05:
            clipped += 1
            # the clipping reached the adapters' update: the uniform edit factor TDLRT
            # applied is the one clip_grad_norm_ applied (up to its 1e-6 guard)
            for edit in tdlrt.last_edits.values():
                assert edit.scale == pytest.approx(0.05 / (norm + 1e-6), rel=1e-4)
        scheduler.step()
        losses.append(loss.item())
    assert clipped >= 6  # the clipping was active
    assert losses[-1] < 0.95 * losses[0], losses
    assert opt.param_groups[0]["lr"] == pytest.approx(0.7**3)
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.dtype == torch.float32 and torch.equal(p, frozen[n]), n
    assert all(p.dtype == torch.float32 for p in _trainable(model))
    assert any(r != (1, 1, 3, 3) for r in tdlrt.ranks().values())


def _head_task(n=16, seed=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=g), torch.arange(n) % 5


def _scaled_fp16_steps(model, tdlrt, scaler, steps, x, y, clip=None):
    for _ in range(steps):
        tdlrt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.unscale_(tdlrt)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(_trainable(model), clip)
        scaler.step(tdlrt)
        scaler.update()


def _adapter_snapshot(model, tdlrt):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        copy.deepcopy(tdlrt.state_dict()),
        tdlrt.ranks(),
    )


def _assert_same_state(a, b, where="state"):
    """Nested dicts/lists/tensors equal, tensors bit for bit."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same_state(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_same_state(u, v, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.is_tensor(b) and a.shape == b.shape, where
        assert torch.equal(_bits(a), _bits(b)), where
    else:
        assert a == b, where


def _assert_same_adapter_snapshot(a, b):
    assert a[2] == b[2]
    _assert_same_state(a[0], b[0], "model")
    _assert_same_state(a[1], b[1], "tdlrt")


def test_fp16_autocast_under_grad_scaler_steps_as_the_unscaled_loss_and_skips_overflow():
    # fp16 autocast on CPU: the scaler multiplies the loss by 2¹²; TDLRT must see the unscaled
    # gradient (scaler.unscale_ edits it uniformly), so the steps equal unscaled fp16 steps
    pretrained = _pretrained()
    x, y = _head_task()
    model, _ = add_adapters(copy.deepcopy(pretrained), rank=1, modules_to_save=["9"], rng=0)
    ref = copy.deepcopy(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD(_trainable(model), lr=0.5, momentum=0.9)
    tdlrt = TDLRT(model, opt, tau=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    _scaled_fp16_steps(model, tdlrt, scaler, 3, x, y, clip=1.0)
    assert tdlrt.steps == 3 and scaler.get_scale() == 2.0**12
    for edit in tdlrt.last_edits.values():
        assert edit.scale <= 2.0**-12  # the unscale, and the clipping on top where it binds
    ref_opt = torch.optim.SGD(_trainable(ref), lr=0.5, momentum=0.9)
    ref_tdlrt = TDLRT(ref, ref_opt, tau=0.05)
    for _ in range(3):
        ref_opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.cross_entropy(ref(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(_trainable(ref), 1.0)
        ref_tdlrt.step()
    assert tdlrt.ranks() == ref_tdlrt.ranks()
    assert any(r not in ((1, 1, 3, 3), (1, 1)) for r in tdlrt.ranks().values())
    # the fp16 output gradients of the scaled and the unscaled loss round differently (the
    # scale is a power of two, but the backward of the fp16 convolutions is not exact):
    # agreement at fp16 round-off, relative to the parameters' size
    eps16 = torch.finfo(torch.float16).eps
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        p, q = p.detach(), q.detach()
        assert p.shape == q.shape, n
        assert (p - q).abs().max() <= 50 * eps16 * max(1.0, float(q.abs().max())), n
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.dtype == torch.float32 and torch.equal(p, frozen[n]), n
    # an overflowing scale: inf gradients, the step is skipped, nothing changes
    before = _adapter_snapshot(model, tdlrt)
    scaler.update(2.0**60)
    _scaled_fp16_steps(model, tdlrt, scaler, 1, x, y)
    assert tdlrt.steps == 3 and scaler.get_scale() < 2.0**60
    after = _adapter_snapshot(model, tdlrt)
    # the frozen BatchNorm's statistics moved in the forward pass: not the step's doing
    for k in [k for k in before[0] if "running" in k or "num_batches" in k]:
        del before[0][k], after[0][k]
    _assert_same_adapter_snapshot(before, after)
    scaler.update(2.0**12)
    _scaled_fp16_steps(model, tdlrt, scaler, 1, x, y)  # and training goes on
    assert tdlrt.steps == 4


# dynamo reads ``.grad`` of its (non-leaf) view inputs and hides the resulting warning by
# overriding ``warnings.showwarning``, which the "error" filter of the test suite bypasses
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
def test_compiled_adapted_model_trains_as_the_eager_one():
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    pretrained = nn.Sequential(nn.Linear(12, 12), nn.Tanh(), nn.Linear(12, 6))
    model, _ = add_adapters(copy.deepcopy(pretrained), rank=1, rng=0)
    eager = copy.deepcopy(model)
    compiles = []

    def backend(gm, example_inputs):  # counts what dynamo compiles, runs it as traced
        compiles.append(len(gm.graph.nodes))
        return gm.forward

    dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend=backend)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 12, generator=g)
    target = pretrained(x).detach() + torch.tanh(x @ torch.randn(12, 6, generator=g))
    runs = []
    for m, fwd in ((model, compiled), (eager, eager)):
        opt = torch.optim.SGD(_trainable(m), lr=0.3, momentum=0.9)
        tdlrt = TDLRT(m, opt, tau=1e-3)
        ranks = [tuple(tdlrt.ranks().values())]
        for _ in range(15):
            opt.zero_grad()
            ((fwd(x) - target) ** 2).mean().backward()
            tdlrt.step()
            ranks.append(tuple(tdlrt.ranks().values()))
        runs.append((ranks, [p.detach().clone() for p in m.parameters()]))
    (ranks, p_compiled), (ranks_eager, p_eager) = runs
    assert compiles, "dynamo compiled nothing"
    assert not counters["unimplemented"], dict(counters["unimplemented"])
    assert counters["frames"]["total"] == counters["frames"]["ok"]
    assert sum(a != b for a, b in zip(ranks, ranks[1:])) >= 2  # ranks grew while compiled
    assert ranks == ranks_eager
    # the traced graph runs the same kernels in the same order: round-off level agreement
    for p, q in zip(p_compiled, p_eager):
        assert p.shape == q.shape
        assert (p - q).abs().max() <= 1e3 * torch.finfo(torch.float32).eps * max(
            1.0, float(q.abs().max())
        )
    for k, v in pretrained.state_dict().items():
        assert torch.equal(model.state_dict()[k.replace(".", ".base.", 1)], v), k
    dynamo.reset()


def _resumable_run(pretrained, steps, *, checkpoint_at=None, state=None, rng=0):
    """Adapters trained with AdamW, a cosine schedule and clipping; optionally a checkpoint.

    ``state``: the bytes of a checkpoint to resume from, into a fresh adapted copy of the
    pretrained model (other initial factors and ranks: everything must come from the file).
    """
    model, _ = add_adapters(copy.deepcopy(pretrained), rank=1, modules_to_save=["9"], rng=rng)
    start = 0
    if state is not None:
        ckpt = torch.load(io.BytesIO(state), weights_only=True)
        load_adapter_state_dict(model, ckpt["adapters"])
        start = ckpt["step"]
    opt = torch.optim.AdamW(_trainable(model), lr=0.05, weight_decay=1e-2)
    tdlrt = TDLRT(model, opt, tau=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(tdlrt, T_max=steps)
    if state is not None:
        tdlrt.load_state_dict(ckpt["tdlrt"])
        sched.load_state_dict(ckpt["sched"])
    saved = None
    for s in range(start, steps):
        x, y = _head_task(8, seed=40 + s)
        tdlrt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(_trainable(model), 0.5)
        tdlrt.step()
        sched.step()
        if checkpoint_at == s + 1:
            buf = io.BytesIO()
            torch.save(
                {
                    "adapters": adapter_state_dict(model),
                    "tdlrt": tdlrt.state_dict(),
                    "sched": sched.state_dict(),
                    "step": s + 1,
                },
                buf,
            )
            saved = buf.getvalue()
            break  # the process is killed here
    return model, tdlrt, saved


def test_kill_and_resume_from_adapter_and_optimizer_state_dicts_is_bit_identical():
    pretrained = _pretrained()
    whole, tdlrt, _ = _resumable_run(pretrained, 8)
    assert any(r not in ((1, 1, 3, 3), (1, 1)) for r in tdlrt.ranks().values())
    _, first, state = _resumable_run(pretrained, 8, checkpoint_at=4)
    assert first.steps == 4 and first.ranks() != {k: (1, 1) for k in first.ranks()}
    resumed, second, _ = _resumable_run(pretrained, 8, state=state, rng=5)
    assert second.steps == tdlrt.steps and second.ranks() == tdlrt.ranks()
    assert second.param_groups[0]["lr"] == tdlrt.param_groups[0]["lr"]
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape and torch.equal(_bits(a[k]), _bits(b[k])), k
    for k, v in pretrained.state_dict().items():  # the frozen weights never moved
        layer, _, name = k.partition(".")
        if layer in ("0", "3", "7"):
            assert torch.equal(b[f"{layer}.base.{name}"], v), k
        elif layer == "1" and name in ("weight", "bias"):
            assert torch.equal(b[k], v), k


# ------------------------------------------------------------------------------------------
# merging


def _abs_forward(module, x):
    """``|module|(|x|)``: the module with its weight and bias replaced by their moduli."""
    m = copy.deepcopy(module)
    with torch.no_grad():
        m.weight.abs_()
        if m.bias is not None:
            m.bias.abs_()
    return m(x.abs())


def _assert_merged_matches(adapter, merged, x):
    """``merged(x)`` equals ``adapter(x)`` up to the float32 round-off of both evaluations.

    Each computes ``Σ_k w_k x_k`` (plus the bias) with sums of at most
    ``m = fan_in + Σ_i r_i + 2`` terms (the dense or factorized contraction, the merge
    ``W_0 + ΔW`` and the bias). The classical bound ``|fl(Σ a_k) − Σ a_k| ≤ γ_m Σ |a_k|``
    with ``γ_m ≈ m·eps`` [Higham, Accuracy and Stability, §3.1] applied to both, with
    ``|W_0| + |U_0||C||U_1|ᵀ…`` bounding the moduli of every intermediate product, gives
    ``|merged(x) − adapter(x)| ≤ 2 γ_m · (|W_0| + |ΔW|_abs)(|x|) + |b|``-terms: the bound
    below. An error in the merge (a missing ΔW, a wrong mode order, the bias twice) is of
    the size of ``ΔW`` itself, orders of magnitude above it.
    """
    update = adapter.update
    eps = torch.finfo(x.dtype).eps
    m = math.prod(update.weight_shape[1:]) + sum(update.ranks) + 2
    abs_update = copy.deepcopy(update)
    with torch.no_grad():
        abs_update.core.abs_()
        for p in abs_update.factors:
            p.abs_()
        bound = 2 * m * eps * (_abs_forward(adapter.base, x) + abs_update(x.abs()))
        diff = (merged(x) - adapter(x)).abs()
        delta = update(x).abs()
    assert bool((diff <= bound).all()), float((diff - bound).max())
    assert float(delta.max()) > 100 * float(bound.max())  # the check can see a wrong ΔW


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_merged_module_equals_the_adapter_to_round_off(kind):
    make, shape = KINDS[kind]
    torch.manual_seed(8)
    model, _ = add_adapters(nn.Sequential(make()), rank=3, rng=0)
    adapter = model[0]
    with torch.no_grad():  # a trained update: a nonzero core of the size of the base weight
        adapter.update.core.normal_(0.0, float(adapter.base.weight.std()) * 4)
    x = torch.randn(shape)
    with torch.no_grad():
        ref = model(x)
    merged = merge_adapters(model)
    assert type(merged[0]) is type(adapter.base)
    assert all(type(m).__module__.startswith("torch.nn") for m in merged.modules())
    assert isinstance(merged[0].weight, nn.Parameter)
    _assert_merged_matches(adapter, merged[0], x)
    with torch.no_grad():
        assert torch.equal(adapter(x), ref)  # the replaced adapter is left unchanged
    for name in ("stride", "padding", "dilation", "groups", "padding_mode"):
        assert getattr(merged[0], name, None) == getattr(adapter.base, name, None)
    assert merged[0].weight.data_ptr() != adapter.base.weight.data_ptr()
    # the merged weight is W_0 + ΔW formed in float64 and rounded once
    delta64 = copy.deepcopy(adapter.update).double().reconstruct().detach()
    want = (adapter.base.weight.detach().double() + delta64).float()
    assert torch.equal(merged[0].weight, want)


@st.composite
def adaptable_modules(draw):
    """A Linear or ConvNd with any options the adapters must copy, an input, a rank."""
    nd = draw(st.integers(0, 3))
    if nd == 0:
        n_in, n_out = draw(st.integers(1, 9)), draw(st.integers(1, 9))
        return {
            "make": lambda: nn.Linear(n_in, n_out, bias=draw(st.booleans())),
            "input": (draw(st.integers(1, 3)), n_in),
            "rank": draw(st.integers(1, 4)),
            "keep_full": draw(st.sampled_from([None, "none", (0,), (1,)])),
        }
    groups = draw(st.sampled_from([1, 2]))
    c_in, c_out = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    k = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    same = draw(st.booleans())
    stride = (1,) * nd if same else tuple(draw(st.integers(1, 2)) for _ in range(nd))
    padding = "same" if same else tuple(draw(st.integers(0, 2)) for _ in range(nd))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    bias = draw(st.booleans())
    # inputs at least as large as the dilated kernel and than any reflect padding
    spatial = tuple(d * (kk - 1) + 3 + draw(st.integers(0, 2)) for kk, d in zip(k, dil))
    cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[nd - 1]
    return {
        "make": lambda: cls(c_in, c_out, k, stride, padding, dil, groups, bias, mode),
        "input": (draw(st.integers(1, 2)), c_in, *spatial),
        "rank": draw(st.integers(1, 4)),
        "keep_full": draw(st.sampled_from([None, "none", "spatial", (0,), (1,)])),
    }


# torch warns once per process about padding="same" with even kernels (a copy of the input)
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths:UserWarning")
@given(cfg=adaptable_modules(), seed=st.integers(0, 2**31 - 1))
def test_any_module_starts_exactly_and_merges_to_round_off(device, cfg, seed):
    torch.manual_seed(seed)
    base = cfg["make"]().to(device)
    x = torch.randn(cfg["input"], device=device)
    with torch.no_grad():
        ref = base(x)
    adapter = TuckerAdapter(base, rank=cfg["rank"], keep_full=cfg["keep_full"], rng=seed)
    with torch.no_grad():
        assert torch.equal(adapter(x), ref)
        for forward_mode in ("dense", "factorized"):
            adapter.update.forward_mode = forward_mode
            assert torch.equal(adapter(x), ref)
        adapter.update.core.normal_(0.0, 1.0)
    _assert_merged_matches(adapter, adapter.merge(), x)


def test_merged_network_matches_layer_by_layer_after_training():
    model = _pretrained()
    model, _ = add_adapters(model, rank=1, modules_to_save=["9"], rng=0)
    opt = torch.optim.SGD(_trainable(model), lr=0.2, momentum=0.9)
    tdlrt = TDLRT(model, opt, tau=0.05)
    x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(9))
    for _ in range(4):
        opt.zero_grad()
        F.cross_entropy(model(x), torch.arange(8) % 5).backward()
        tdlrt.step()
    model.eval()
    inputs = {}
    hooks = [
        m.register_forward_hook(lambda mod, args, out, p=p: inputs.__setitem__(p, args[0]))
        for p, m in model.named_modules()
        if isinstance(m, TuckerAdapter)
    ]
    with torch.no_grad():
        ref = model(x)
    for h in hooks:
        h.remove()
    adapters = {p: m for p, m in model.named_modules() if isinstance(m, TuckerAdapter)}
    merged = merge_adapters(model)
    assert not any(isinstance(m, (TuckerAdapter, TuckerLayer)) for m in merged.modules())
    assert all(type(m).__module__.startswith("torch.nn") for m in merged.modules())
    for path, adapter in adapters.items():
        _assert_merged_matches(adapter, merged.get_submodule(path), inputs[path])
    with torch.no_grad():
        out = merged(x)
    # end to end, through BatchNorm/ReLU/pooling: the layer errors above, amplified by at most
    # the product of the layer norms (here O(10)): far below the logits' scale
    assert torch.allclose(out, ref, rtol=0, atol=1e3 * torch.finfo(torch.float32).eps)
    assert not hasattr(merged[9], adapters_module._KEEP_MARK)


# ------------------------------------------------------------------------------------------
# removing and disabling


def _model_snapshot(model):
    """Structure with module identities, tensors, flags, marks: all remove_adapters restores."""
    return (
        [(name, type(m), id(m)) for name, m in model.named_modules()],
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        {n: sorted(vars(m)) for n, m in model.named_modules()},
    )


def _assert_same_model(a, b):
    assert a[0] == b[0]
    _assert_same_state(a[1], b[1], "state_dict")
    assert a[2] == b[2]
    assert a[3] == b[3]  # no attribute left behind (marks, flags)


def test_remove_adapters_puts_the_original_modules_back_with_their_flags():
    model = _pretrained()
    model[1].weight.requires_grad_(False)  # a flag add_adapters must not lose
    before = _model_snapshot(model)
    originals = {p: model.get_submodule(p) for p in ("0", "3", "7", "9")}
    model, _ = add_adapters(model, rank=1, modules_to_save=["9"], rng=0)
    assert remove_adapters(model) is model
    _assert_same_model(before, _model_snapshot(model))  # exactly as before add_adapters
    # after training: the same module objects, bit-identical bases, the flags of before
    model, _ = add_adapters(model, rank=1, filter=["0", "3"], modules_to_save=["9"], rng=0)
    _train_a_few_steps(model)
    trained_head = model[9].weight.detach().clone()
    removed = remove_adapters(model)
    assert removed is model
    assert all(model.get_submodule(p) is m for p, m in originals.items())
    assert not any(isinstance(m, (TuckerAdapter, TuckerLayer)) for m in model.modules())
    after = _model_snapshot(model)
    assert after[0] == before[0] and after[2] == before[2] and after[3] == before[3]
    for k, v in before[1].items():
        if k.startswith(("0.", "3.", "7.")) or k in ("1.weight", "1.bias"):
            assert torch.equal(_bits(after[1][k]), _bits(v)), k
    # what trained in place stays trained: the kept head and the frozen BatchNorm's statistics
    assert torch.equal(model[9].weight, trained_head)
    assert not torch.equal(model[1].running_mean, before[1]["1.running_mean"])
    # the model can be adapted again
    again, report = add_adapters(model, rank=1, rng=0)
    assert [r.path for r in report.layers] == ["0", "3", "7", "9"]
    # a root adapter gives back its base; a shared adapter comes back as the shared module
    linear = nn.Linear(4, 4)
    adapter, _ = add_adapters(linear, rank=1)
    assert remove_adapters(adapter) is linear and linear.weight.requires_grad
    shared = nn.Linear(4, 4)
    model, _ = add_adapters(nn.Sequential(shared, nn.Tanh(), shared), rank=1)
    model = remove_adapters(model)
    assert model[0] is shared and model[2] is shared
    # a TuckerAdapter built directly gives its base back its flags too
    frozen_bias = nn.Linear(3, 3)
    frozen_bias.bias.requires_grad_(False)
    holder = nn.Sequential(TuckerAdapter(frozen_bias, rank=1))
    remove_adapters(holder)
    assert holder[0] is frozen_bias
    assert frozen_bias.weight.requires_grad and not frozen_bias.bias.requires_grad


def test_remove_errors_change_nothing():
    model, _ = add_adapters(_pretrained(), rank=1, modules_to_save=["9"])
    snap = _snapshot(model)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        remove_adapters("model")
    with pytest.raises(ValueError, match="nothing to remove: the model has no TuckerAdapter"):
        remove_adapters(_pretrained())
    wrapper = nn.DataParallel(model)
    with pytest.raises(TypeError, match=r"remove_adapters needs the model itself.*wrapper\.module"):
        remove_adapters(wrapper)
    _assert_unchanged(model, snap)


def test_disabled_adapters_compute_the_base_model_and_stay_untrained():
    pretrained = _pretrained()
    model, _ = add_adapters(copy.deepcopy(pretrained), rank=1, modules_to_save=["9"], rng=0)
    _train_a_few_steps(model)  # ΔW ≠ 0 now
    model.eval()
    base = remove_adapters(copy.deepcopy(model))  # the same modules without their updates
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        adapted, unadapted = model(x), base(x)
    assert not torch.allclose(adapted, unadapted)
    with disable_adapters(model) as handle:
        assert not any(a.enabled for a in model.modules() if isinstance(a, TuckerAdapter))
        assert "disabled" in repr(model[0])
        with torch.no_grad():
            assert torch.equal(model(x), unadapted)
        with disable_adapters(model):  # nested: the inner exit keeps them off
            pass
        with torch.no_grad():
            assert torch.equal(model(x), unadapted)
    assert handle is not None
    with torch.no_grad():
        assert torch.equal(model(x), adapted)  # switched back on, exactly as before
    # the toggle: off at the call, on again by enable_adapters (or restore())
    off = disable_adapters(model)
    assert not model[0].enabled
    assert enable_adapters(model) is model and model[0].enabled
    off.restore()
    assert model[0].enabled
    # training while disabled: the updates get no gradient and TDLRT leaves them alone,
    # the kept head trains
    model.train()
    updates = {k: v.clone() for k, v in model.state_dict().items() if ".update." in k}
    head = model[9].weight.detach().clone()
    with disable_adapters(model):
        tdlrt = _train_a_few_steps(model, steps=2, seed=21)
        with pytest.raises(ValueError, match="adapter '0' is disabled.*nothing was merged"):
            merge_adapters(model)
    for k, v in model.state_dict().items():
        if ".update." in k:
            assert torch.equal(v, updates[k]), k
    assert tdlrt.steps == 2 and not torch.equal(model[9].weight, head)
    merge_adapters(model)  # enabled again: merging works


def test_disable_and_enable_errors_change_nothing():
    model = _pretrained()
    snap = _snapshot(model)
    for fn in (disable_adapters, enable_adapters):
        with pytest.raises(TypeError, match="model must be an nn.Module, got str"):
            fn("model")
        with pytest.raises(ValueError, match="the model has no TuckerAdapter modules"):
            fn(model)
    _assert_unchanged(model, snap)
    adapted, _ = add_adapters(_pretrained(), rank=1)
    with disable_adapters(nn.DataParallel(adapted)):  # through a wrapper
        assert not adapted[0].enabled
    assert adapted[0].enabled


# ------------------------------------------------------------------------------------------
# saving and loading


def _train_a_few_steps(model, steps=4, seed=10):
    opt = torch.optim.SGD(_trainable(model), lr=0.2, momentum=0.9)
    tdlrt = TDLRT(model, opt, tau=0.05)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 3, 6, 6, generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), torch.arange(8) % 5).backward()
        tdlrt.step()
    return tdlrt


def test_adapter_state_round_trips_after_rank_changes():
    pretrained = _pretrained()
    keep = ["9"]
    trained, _ = add_adapters(copy.deepcopy(pretrained), rank=1, modules_to_save=keep, rng=0)
    tdlrt = _train_a_few_steps(trained)
    assert any(r != (1, 1, 3, 3) and r != (1, 1) for r in tdlrt.ranks().values())
    state = adapter_state_dict(trained)
    # the frozen BatchNorm's parameters stay out, its running statistics (which moved in
    # training mode) travel with the adapters
    stats = {f"1.{k}" for k in ("running_mean", "running_var", "num_batches_tracked")}
    assert set(state) == {
        *(f"{p}.update.{k}" for p in ("0", "3", "7") for k in ("core", "factors.0", "factors.1")),
        *stats,
        "9.weight",
        "9.bias",
    }
    assert not torch.equal(state["1.running_mean"], pretrained[1].running_mean)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    fresh, _ = add_adapters(copy.deepcopy(pretrained), rank=2, modules_to_save=keep, rng=1)
    core_before = fresh[0].update.core
    assert load_adapter_state_dict(fresh, loaded) is fresh
    assert fresh[0].update.core is core_before  # same Parameter objects, new shapes
    for path in ("0", "3", "7"):
        assert fresh.get_submodule(path).ranks == trained.get_submodule(path).ranks
    x = torch.randn(4, 3, 6, 6)
    trained.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), trained(x))
    for k, v in adapter_state_dict(fresh).items():
        assert torch.equal(v, state[k]), k
    # the state is a copy: training on does not change it; the loaded model trains on
    fresh.train()
    _train_a_few_steps(fresh, steps=2, seed=11)
    assert not torch.equal(fresh[9].weight, state["9.weight"])
    # the whole model's state dict also loads across rank changes (as for Tucker layers)
    whole, _ = add_adapters(copy.deepcopy(pretrained), rank=1, modules_to_save=keep)
    whole.load_state_dict(trained.state_dict())
    with torch.no_grad():
        assert torch.equal(whole.eval()(x), trained(x))
    # without buffers: the fresh copy keeps its own statistics; keys with DDP's prefix
    lean = adapter_state_dict(trained, buffers=False)
    assert set(lean) == set(state) - stats
    again, _ = add_adapters(copy.deepcopy(pretrained), rank=1, modules_to_save=keep)
    load_adapter_state_dict(again, {"module." + k: v for k, v in lean.items()})
    assert torch.equal(again[3].update.core, state["3.update.core"])
    assert torch.equal(again[1].running_mean, pretrained[1].running_mean)


def test_kept_module_buffers_travel_with_the_adapters():
    torch.manual_seed(12)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2))
    model, _ = add_adapters(model, rank=1, modules_to_save=["1"], rng=0)
    model(torch.randn(8, 4))  # updates the running statistics of the kept BatchNorm
    state = adapter_state_dict(model, buffers=False)
    assert {"1.weight", "1.running_mean", "1.running_var", "1.num_batches_tracked"} <= set(state)
    fresh, _ = add_adapters(
        nn.Sequential(
            copy.deepcopy(model[0].base), nn.BatchNorm1d(6), copy.deepcopy(model[2].base)
        ),
        rank=1,
        modules_to_save=["1"],
    )
    load_adapter_state_dict(fresh, state)
    assert torch.equal(fresh[1].running_mean, model[1].running_mean)
    assert int(fresh[1].num_batches_tracked) == 1


# ------------------------------------------------------------------------------------------
# bad input: clear errors, nothing changed


@pytest.mark.parametrize(
    "model, kwargs, error, match",
    [
        (
            nn.Sequential(nn.Linear(4, 4), nn.ConvTranspose2d(4, 4, 3)),
            {"filter": ["0", "1"]},
            TypeError,
            "module '1' \\(ConvTranspose2d\\).*transposed",
        ),
        (
            nn.Sequential(nn.Linear(4, 4), nn.Embedding(5, 4)),
            {"filter": ["0", "1"]},
            TypeError,
            "module '1' \\(Embedding\\)",
        ),
        (
            nn.Sequential(nn.Linear(4, 4), TuckerConv2d(4, 4, 3, rank=2)),
            {"filter": ["0", "1"]},
            TypeError,
            "module '1' \\(TuckerConv2d\\).*already a Tucker layer",
        ),
        (
            nn.Sequential(nn.MultiheadAttention(8, 2)),
            {"filter": lambda p, m: True},
            TypeError,
            "module '0.out_proj'.*MultiheadAttention",
        ),
        (nn.Sequential(nn.Linear(4, 4)), {"filter": ["1"]}, ValueError, "filter names.*'1'"),
        (
            nn.Sequential(nn.Linear(4, 4)),
            {"modules_to_save": ["head"]},
            ValueError,
            "modules_to_save names.*'head'",
        ),
        (
            nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)),
            {"filter": ["0", "1"], "modules_to_save": ["1"]},
            ValueError,
            "module '1' is selected.*modules_to_save",
        ),
        (
            nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3)),
            {"rank": {"0": 2, "1": (2, 5)}},
            ValueError,
            "module '1'.*rank\\[1\\]=5 exceeds",
        ),
        (nn.Sequential(nn.ReLU()), {}, ValueError, "no module was selected"),
        (nn.Sequential(nn.Linear(4, 4)), {"rng": "seed"}, TypeError, "rng must be"),
    ],
)
def test_add_errors_name_the_module_and_change_nothing(model, kwargs, error, match):
    kwargs.setdefault("rank", 2)
    snap = _snapshot(model)
    with pytest.raises(error, match=match):
        add_adapters(model, **kwargs)
    _assert_unchanged(model, snap)


def test_adapting_twice_is_refused():
    model, _ = add_adapters(_pretrained(), rank=1, modules_to_save=["9"])
    snap = _snapshot(model)
    with pytest.raises(ValueError, match="already has adapters.*'0'.*merge_adapters"):
        add_adapters(model, rank=1)
    _assert_unchanged(model, snap)
    with pytest.raises(ValueError, match="already has adapters"):
        add_adapters(model[0], rank=1)


def test_merge_errors_change_nothing():
    plain = _pretrained()
    snap = _snapshot(plain)
    with pytest.raises(ValueError, match="no TuckerAdapter modules"):
        merge_adapters(plain)
    _assert_unchanged(plain, snap)
    model, _ = add_adapters(_pretrained(), rank=1)
    with torch.no_grad():
        model[3].update.core.fill_(float("nan"))
    snap = _snapshot(model)
    with pytest.raises(ValueError, match="adapter '3'.*NaN"):
        merge_adapters(model)
    _assert_unchanged(model, snap)
    with pytest.raises(TypeError, match="model must be"):
        merge_adapters("model")


def _saved_state():
    model, _ = add_adapters(_pretrained(), rank=1, modules_to_save=["9"], rng=0)
    _train_a_few_steps(model, steps=2)
    return adapter_state_dict(model)


def _other_shape():
    model = _pretrained()
    model[7] = nn.Linear(32, 12)  # another hidden width
    model[9] = nn.Linear(12, 5)
    return model


@pytest.mark.parametrize(
    "target, edit, error, match",
    [
        ("plain", None, ValueError, "no TuckerAdapter modules"),
        ("other", None, ValueError, "7.update.factors.0 has shape \\(16, .*expected \\(12,"),
        ("no-kept", None, ValueError, "unexpected \\['9.weight', '9.bias'\\]"),
        ("same", "drop", ValueError, "missing \\['3.update.core'\\]"),
        ("same", "nan", ValueError, "7.update.core holds NaN"),
        ("same", "skew", ValueError, "7.update.factors.1 is not orthonormal"),
        ("same", "full-mode", ValueError, "0.update.core has shape.*mode 2 is kept full"),
        ("same", "int", ValueError, "7.update.core has dtype torch.int64"),
        ("same", "head", ValueError, "9.weight has shape \\(5, 8\\), the model's \\(5, 16\\)"),
        ("same", "type", TypeError, "not a str key with a torch.Tensor"),
        ("same", "buffer", ValueError, "1.running_mean has shape \\(3,\\), the model's \\(8,\\)"),
    ],
)
def test_load_errors_name_the_entry_and_change_nothing(target, edit, error, match):
    state = _saved_state()
    if target == "plain":
        model = _pretrained()
    elif target == "other":
        model, _ = add_adapters(_other_shape(), rank=1, modules_to_save=["9"])
    elif target == "no-kept":
        model, _ = add_adapters(_pretrained(), rank=1, filter=["0", "3", "7"])
    else:
        model, _ = add_adapters(_pretrained(), rank=1, modules_to_save=["9"])
    if edit == "drop":
        del state["3.update.core"]
    elif edit == "nan":
        state["7.update.core"] = torch.full_like(state["7.update.core"], float("nan"))
    elif edit == "skew":
        state["7.update.factors.1"] = 2 * state["7.update.factors.1"]
    elif edit == "full-mode":
        c = state["0.update.core"]
        state["0.update.core"] = c[:, :, :2]
    elif edit == "int":
        state["7.update.core"] = state["7.update.core"].long()
    elif edit == "head":
        state["9.weight"] = torch.zeros(5, 8)
    elif edit == "type":
        state["9.bias"] = [0.0] * 5
    elif edit == "buffer":
        state["1.running_mean"] = torch.zeros(3)
    snap = _snapshot(model)
    with pytest.raises(error, match=match):
        load_adapter_state_dict(model, state)
    _assert_unchanged(model, snap)


def test_state_dict_of_a_model_without_adapters_is_refused():
    with pytest.raises(ValueError, match="no TuckerAdapter modules"):
        adapter_state_dict(_pretrained())
    with pytest.raises(TypeError, match="state must be a mapping"):
        load_adapter_state_dict(add_adapters(_pretrained(), rank=1)[0], [1, 2])


# ------------------------------------------------------------------------------------------
# DistributedDataParallel


def test_ddp_ignore_finds_the_update_parameters():
    model, _ = add_adapters(_pretrained(), rank=1, modules_to_save=["9"])
    names = ddp_ignore_tucker_parameters(model)
    assert names == [
        f"{p}.update.{k}" for p in ("0", "3", "7") for k in ("core", "factors.0", "factors.1")
    ]


def test_ddp_wrapped_adapters_train_and_save(tmp_path):
    # one gloo process in this process: DDP wraps the frozen bases, the kept head and the
    # ignored updates; the cross-process averaging and rank consensus are TDLRT's, tested
    # for every Tucker layer in test_optim_ddp.py
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already active in this process")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model, _ = add_adapters(_pretrained(), rank=1, modules_to_save=["9"], rng=0)
        base = {k: v.clone() for k, v in model.state_dict().items() if ".base." in k}
        ddp = nn.parallel.DistributedDataParallel(model)
        with pytest.raises(ValueError, match="ddp_ignore_tucker_parameters"):
            TDLRT(ddp, torch.optim.SGD(_trainable(model), lr=0.1))
        model, _ = add_adapters(_pretrained(), rank=1, modules_to_save=["9"], rng=0)
        ddp_ignore_tucker_parameters(model)
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(_trainable(model), lr=0.2, momentum=0.9)
        tdlrt = TDLRT(ddp, opt, tau=0.05)
        head = model[9].weight.detach().clone()
        g = torch.Generator().manual_seed(13)
        for _ in range(3):
            x = torch.randn(8, 3, 6, 6, generator=g)
            opt.zero_grad()
            F.cross_entropy(ddp(x), torch.arange(8) % 5).backward()
            tdlrt.step()
        assert tdlrt.ranks()["0.update"] != (1, 1, 3, 3)
        assert not torch.equal(model[9].weight, head)  # DDP's gradients reached the head
        for k, v in model.state_dict().items():
            if ".base." in k:
                assert torch.equal(v, base[k]), k
        state = adapter_state_dict(ddp)  # through the wrapper, keys without "module."
        assert set(state) == set(adapter_state_dict(model))
        fresh, _ = add_adapters(_pretrained(), rank=1, modules_to_save=["9"])
        load_adapter_state_dict(fresh, state)
        x = torch.randn(2, 3, 6, 6)
        with torch.no_grad():
            assert torch.equal(fresh.eval()(x), model.eval()(x))
        with pytest.raises(TypeError, match="wrapper.module"):
            merge_adapters(ddp)
    finally:
        dist.destroy_process_group()


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_adapter_worker(rank, world, port, out_dir):
    import os

    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        pretrained = _pretrained()  # the same base weights in every process
        # other initial factors per process: TDLRT starts every process from process 0's
        model, _ = add_adapters(
            copy.deepcopy(pretrained), rank=1, modules_to_save=["9"], rng=100 + rank
        )
        ddp_ignore_tucker_parameters(model)
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(_trainable(model), lr=0.2, momentum=0.9)
        tdlrt = TDLRT(ddp, opt, tau=0.05)
        g = torch.Generator().manual_seed(300 + rank)  # each process sees its own shard
        history = []
        for _ in range(4):
            x = torch.randn(8, 3, 6, 6, generator=g)
            y = torch.randint(0, 5, (8,), generator=g)
            opt.zero_grad()
            F.cross_entropy(ddp(x), y).backward()
            tdlrt.step()
            history.append(tdlrt.ranks())
        torch.save(
            {
                "ranks": history,
                "state": model.state_dict(),
                "adapters": adapter_state_dict(ddp),
                "pretrained": pretrained.state_dict(),
            },
            os.path.join(out_dir, f"{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_train_the_adapters_identically(tmp_path):
    import torch.multiprocessing as mp

    world = 2
    mp.spawn(
        _ddp_adapter_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True
    )
    a, b = (torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(world))
    assert a["ranks"] == b["ranks"]
    assert a["ranks"][-1]["0.update"] != (1, 1, 3, 3)  # the ranks adapted
    # each process's frozen BatchNorm updates its running statistics on its own shard in the
    # last forward pass (DDP broadcasts process 0's buffers before each forward): not compared
    moving = ("running_mean", "running_var", "num_batches_tracked")
    for state in ("state", "adapters"):
        assert a[state].keys() == b[state].keys()
        for k in a[state]:
            if not k.endswith(moving):
                assert torch.equal(_bits(a[state][k]), _bits(b[state][k])), (state, k)
    for k, v in a["pretrained"].items():  # the bases are bit-identical to the pretrained
        layer, _, name = k.partition(".")
        if layer in ("0", "3", "7"):
            assert torch.equal(a["state"][f"{layer}.base.{name}"], v), k
            assert torch.equal(b["state"][f"{layer}.base.{name}"], v), k
    assert not torch.equal(a["state"]["9.weight"], a["pretrained"]["9.weight"])


# ------------------------------------------------------------------------------------------


def test_docstring_examples():
    result = doctest.testmod(
        adapters_module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    assert result.failed == 0 and result.attempted > 0
