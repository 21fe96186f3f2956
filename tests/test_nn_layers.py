"""Tucker layers: equality with the dense torch layer, gradients, Galerkin gradient, resizing."""

from __future__ import annotations

import math
import re
import warnings

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

from tuckerflow.nn import (  # noqa: E402
    FORWARD_MODES,
    PADDING_MODES,
    StateDictEntryError,
    TuckerConv1d,
    TuckerConv2d,
    TuckerConv3d,
    TuckerLinear,
    tucker_from_weight,
)
from tuckerflow.nn.layer import mode_dot  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CONVS = {1: (TuckerConv1d, nn.Conv1d), 2: (TuckerConv2d, nn.Conv2d), 3: (TuckerConv3d, nn.Conv3d)}
EPS64 = torch.finfo(torch.float64).eps


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # these tensors are tiny: with parallel test workers, torch's thread pools only contend
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def _dense_twin(layer, dense_cls, **kwargs):
    """The dense torch layer holding ``layer.reconstruct()`` and the same bias."""
    w = layer.reconstruct().detach()
    dense = dense_cls(**kwargs, bias=layer.bias is not None, dtype=w.dtype, device=w.device)
    with torch.no_grad():
        dense.weight.copy_(w)
        if layer.bias is not None:
            dense.bias.copy_(layer.bias)
    return dense


def _run_dense(dense, x):
    with warnings.catch_warnings():
        # torch warns that padding='same' with an even kernel copies the input; expected here
        warnings.simplefilter("ignore", UserWarning)
        return dense(x)


@st.composite
def conv_configs(draw):
    nd = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2, 3]))
    c_in = groups * draw(st.integers(1, 3))
    c_out = groups * draw(st.integers(1, 3))
    k = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    dil = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    pad_kind = draw(st.sampled_from(["int", "tuple", "same", "valid"]))
    stride = (1,) * nd if pad_kind == "same" else tuple(draw(st.integers(1, 2)) for _ in range(nd))
    padding = {
        "int": draw(st.integers(0, 2)),
        "tuple": tuple(draw(st.integers(0, 2)) for _ in range(nd)),
        "same": "same",
        "valid": "valid",
    }[pad_kind]
    # inputs at least as large as the dilated kernel (and than any reflect padding)
    spatial = tuple(d * (kk - 1) + 3 + draw(st.integers(0, 2)) for kk, d in zip(k, dil))
    keep_full = draw(st.sampled_from([None, "none", "spatial", (0,), (1,)]))
    frac = draw(st.floats(0.2, 1.0))
    return {
        "nd": nd,
        "in_channels": c_in,
        "out_channels": c_out,
        "kernel_size": k,
        "stride": stride,
        "padding": padding,
        "dilation": dil,
        "groups": groups,
        "bias": draw(st.booleans()),
        "padding_mode": draw(st.sampled_from(PADDING_MODES)),
        "keep_full": keep_full,
        "rank": frac,
        "spatial": spatial,
        "batch": draw(st.integers(1, 2)),
    }


def _make_conv(cfg, device="cpu", dtype=torch.float64):
    nd = cfg["nd"]
    cls, dense_cls = CONVS[nd]
    opts = {
        k: cfg[k]
        for k in (
            "in_channels",
            "out_channels",
            "kernel_size",
            "stride",
            "padding",
            "dilation",
            "groups",
            "padding_mode",
        )
    }
    layer = cls(
        **opts,
        bias=cfg["bias"],
        rank=cfg["rank"],
        keep_full=cfg["keep_full"],
        device=device,
        dtype=dtype,
    )
    dense = _dense_twin(layer, dense_cls, **opts)
    x = torch.randn(cfg["batch"], cfg["in_channels"], *cfg["spatial"], dtype=dtype, device=device)
    return layer, dense, x


@given(cfg=conv_configs(), seed=st.integers(0, 2**31 - 1))
def test_conv_equals_dense_layer_of_reconstructed_weight(device, cfg, seed):
    torch.manual_seed(seed)
    layer, dense, x = _make_conv(cfg, device)
    ref = _run_dense(dense, x)
    scale = ref.abs().max().item() + 1.0
    for mode in FORWARD_MODES:
        layer.forward_mode = mode
        y = layer(x)
        assert y.shape == ref.shape
        # a few hundred multiply-adds per output entry in float64
        assert (y - ref).abs().max().item() <= 1e3 * EPS64 * scale


@given(
    n_out=st.integers(1, 9),
    n_in=st.integers(1, 9),
    frac=st.floats(0.1, 1.0),
    keep_full=st.sampled_from([None, (0,), (1,)]),
    bias=st.booleans(),
    lead=st.lists(st.integers(1, 3), max_size=2),
)
def test_linear_equals_dense_layer_of_reconstructed_weight(
    device, n_out, n_in, frac, keep_full, bias, lead
):
    torch.manual_seed(n_out * 10 + n_in)
    layer = TuckerLinear(
        n_in, n_out, bias, rank=frac, keep_full=keep_full, device=device, dtype=torch.float64
    )
    dense = _dense_twin(layer, nn.Linear, in_features=n_in, out_features=n_out)
    x = torch.randn(*lead, n_in, dtype=torch.float64, device=device)
    ref = dense(x)
    for mode in FORWARD_MODES:
        layer.forward_mode = mode
        # n_in + r terms per entry in float64
        assert torch.allclose(
            layer(x), ref, rtol=0, atol=1e3 * EPS64 * (1 + ref.abs().max().item())
        )


@pytest.mark.parametrize("mode", ["factorized", "dense"])
def test_bias_is_added_exactly_once(mode):
    torch.manual_seed(0)
    layer = TuckerConv2d(4, 6, 3, padding=1, rank=2, dtype=torch.float64)
    layer.forward_mode = mode
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        layer.bias.copy_(torch.arange(6, dtype=torch.float64) + 10.0)
        with_bias = layer(x)
        saved = layer.bias.clone()
        layer.bias.zero_()
        without = layer(x)
        layer.bias.copy_(saved)
    diff = (with_bias - without).permute(1, 0, 2, 3).reshape(6, -1)
    assert torch.allclose(diff, saved[:, None].expand_as(diff), atol=1e-12)


@given(cfg=conv_configs(), seed=st.integers(0, 2**31 - 1))
def test_gradients_of_factorized_and_dense_forward_agree(cfg, seed):
    torch.manual_seed(seed)
    layer, _, x = _make_conv(cfg)
    x.requires_grad_(True)
    grads = {}
    for mode in ("factorized", "dense"):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer.forward_mode = mode
        y = layer(x)
        torch.manual_seed(seed + 1)
        (y * torch.randn_like(y)).sum().backward()
        grads[mode] = [p.grad.clone() for p in layer.parameters()] + [x.grad.clone()]
    for a, b in zip(grads["factorized"], grads["dense"]):
        # same sums in another order: round-off relative to the largest entry
        assert (a - b).abs().max().item() <= 1e4 * EPS64 * (1.0 + b.abs().max().item())


@given(cfg=conv_configs(), seed=st.integers(0, 2**31 - 1))
def test_factor_gradients_off_leaves_every_other_gradient_unchanged(cfg, seed):
    torch.manual_seed(seed)
    layer, _, x = _make_conv(cfg)
    x.requires_grad_(True)
    for mode in ("factorized", "dense"):
        layer.forward_mode = mode
        grads = {}
        for flag in (True, False):
            layer.zero_grad(set_to_none=True)
            x.grad = None
            layer.factor_gradients = flag
            y = layer(x)
            torch.manual_seed(seed + 1)
            (y * torch.randn_like(y)).sum().backward()
            grads[flag] = [layer.core.grad, x.grad] + (
                [layer.bias.grad] if layer.bias is not None else []
            )
            if not flag:
                assert all(p.grad is None for p in layer.factors)
            else:
                assert all(p.grad is not None for p in layer.factors)
        for a, b in zip(grads[True], grads[False]):
            # the same products; only the (skipped) factor branches differ
            assert (a - b).abs().max().item() <= 16 * EPS64 * (1.0 + b.abs().max().item())
    layer.factor_gradients = True


def test_linear_factor_gradients_off():
    torch.manual_seed(3)
    layer = TuckerLinear(7, 5, rank=2, dtype=torch.float64)
    x = torch.randn(4, 7, dtype=torch.float64)
    for mode in ("factorized", "dense"):
        layer.forward_mode = mode
        layer.zero_grad(set_to_none=True)
        layer.factor_gradients = True
        layer(x).square().sum().backward()
        core_grad = layer.core.grad.clone()
        layer.zero_grad(set_to_none=True)
        layer.factor_gradients = False
        y = layer(x)
        y.square().sum().backward()
        assert all(p.grad is None for p in layer.factors)
        assert torch.allclose(layer.core.grad, core_grad, rtol=16 * EPS64, atol=0)
        # the reconstruction still carries the core's graph
        assert layer.reconstruct().requires_grad


def _random_projections(shape, gen, *, none_modes=()):
    out = []
    for i, n in enumerate(shape):
        if i in none_modes:
            out.append(None)
            continue
        p = int(torch.randint(1, n + 1, (1,), generator=gen))
        q, _ = torch.linalg.qr(torch.randn(n, p, generator=gen, dtype=torch.float64))
        out.append(q)
    return out


def _project(g, u_hats):
    for i, u in enumerate(u_hats):
        if u is not None:
            g = mode_dot(g, u.t(), i)
    return g


@given(
    cfg=conv_configs(),
    seed=st.integers(0, 2**31 - 1),
    n_batches=st.integers(1, 2),
    kind=st.sampled_from(["output_grad", "weight_grad"]),
)
def test_conv_galerkin_gradient_matches_autograd_of_dense_layer(cfg, seed, n_batches, kind):
    torch.manual_seed(seed)
    layer, dense, _ = _make_conv(cfg)
    layer.record_for_galerkin = True
    layer.galerkin_record = kind
    for _ in range(n_batches):
        x = torch.randn(cfg["batch"], cfg["in_channels"], *cfg["spatial"], dtype=torch.float64)
        y = layer(x)
        t = torch.randn_like(y)
        (y * t).sum().backward()
        (_run_dense(dense, x) * t).sum().backward()
    g_ref = dense.weight.grad
    scale = 1.0 + g_ref.abs().max().item()
    assert (layer.full_weight_gradient() - g_ref).abs().max().item() <= 1e3 * EPS64 * scale
    gen = torch.Generator().manual_seed(seed)
    none_modes = {i for i in range(len(layer.weight_shape)) if seed >> i & 1}
    u_hats = _random_projections(layer.weight_shape, gen, none_modes=none_modes)
    got = layer.galerkin_gradient(u_hats)
    want = _project(g_ref, u_hats)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e3 * EPS64 * scale


@given(seed=st.integers(0, 2**31 - 1), lead=st.lists(st.integers(1, 3), max_size=2))
def test_linear_galerkin_gradient_is_core_gradient_in_augmented_bases(seed, lead):
    torch.manual_seed(seed)
    layer = TuckerLinear(7, 5, rank=2, dtype=torch.float64)
    layer.record_for_galerkin = True
    x = torch.randn(*lead, 7, dtype=torch.float64)
    t = torch.randn(*lead, 5, dtype=torch.float64)
    (layer(x) * t).sum().backward()
    gen = torch.Generator().manual_seed(seed)
    # augmented bases containing the current ones, as TDLRT builds them
    u_hats = []
    for i, n in enumerate(layer.weight_shape):
        u = layer.factor(i).detach()
        extra = torch.randn(n, min(2, n - u.shape[1]), generator=gen, dtype=torch.float64)
        q, _ = torch.linalg.qr(torch.cat([u, extra], dim=1))
        u_hats.append(q)
    # the layer parametrised by (C_hat, U_hat) at the same weight: autograd w.r.t. C_hat
    c_hat = _project(layer.reconstruct().detach(), u_hats).requires_grad_(True)
    w = _project(c_hat, [u.t() for u in u_hats])
    (torch.nn.functional.linear(x, w, layer.bias) * t).sum().backward()
    got = layer.galerkin_gradient(u_hats)
    assert torch.allclose(got, c_hat.grad, atol=1e3 * EPS64 * (1 + c_hat.grad.abs().max().item()))


def _augmented(u, extra, gen):
    """``[U, V]``: ``U`` exactly, then ``extra`` orthonormal columns orthogonal to it."""
    v = torch.randn(u.shape[0], extra, generator=gen, dtype=u.dtype)
    v = v - u @ (u.T @ v)
    v = v - u @ (u.T @ v)
    return torch.cat([u, torch.linalg.qr(v)[0]], dim=1)


@pytest.mark.parametrize(
    "options",
    [
        {"padding": 1},
        {"padding": 1, "stride": 2},
        {"padding": "same", "dilation": 2},
        {"padding": 1, "padding_mode": "reflect"},
        {"padding": 0, "stride": (2, 1)},
    ],
)
@pytest.mark.parametrize(("new_out", "new_in"), [(3, 2), (0, 2), (3, 0), (0, 0)])
def test_galerkin_gradient_in_augmented_bases_from_the_recorded_intermediates(
    options, new_out, new_in
):
    """Bases that start with the factors: the old block is the raw core gradient and only
    the new directions are formed, with the same result as projecting the recorded batch."""
    torch.manual_seed(3)
    layer = TuckerConv2d(8, 10, 3, rank=(3, 4, 3, 3), dtype=torch.float64, **options)
    layer.forward_mode = "factorized"
    layer.record_for_galerkin = True
    for _ in range(2):  # two backward passes into the same record
        y = layer(torch.randn(2, 8, 9, 9, dtype=torch.float64))
        (y * torch.randn_like(y)).sum().backward()
    record = layer.gradient_record
    gen = torch.Generator().manual_seed(4)
    u_hats = [
        _augmented(layer.factor(0).detach(), new_out, gen),
        _augmented(layer.factor(1).detach(), new_in, gen),
        None,
        None,
    ]
    for group in record.groups:
        parts = layer._projected_weight_grad_parts(
            group.contributions, group.core_grad, u_hats, {0, 1}
        )
        assert parts is not None  # the intermediates were recorded
    got = record.weight_gradient(u_hats, leading=(0, 1))
    want = record.weight_gradient(u_hats)
    scale = want.abs().max().item()
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e2 * EPS64 * scale


def test_the_galerkin_gradient_from_intermediates_falls_back_where_they_are_missing():
    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(6)
    cases = [
        (TuckerConv2d(8, 10, 3, padding=1, rank=(3, 4, 3, 3), groups=2, dtype=torch.float64), None),
        (TuckerConv2d(8, 10, 3, padding=1, rank=(3, 4, 3, 3), dtype=torch.float64), "dense"),
        (TuckerConv2d(8, 10, 5, padding=2, rank=(3, 4, 3, 3), dtype=torch.float64), None),
    ]
    for layer, forward_mode in cases:
        if forward_mode is not None:
            layer.forward_mode = forward_mode
        layer.record_for_galerkin = True
        y = layer(torch.randn(2, 8, 9, 9, dtype=torch.float64))
        (y * torch.randn_like(y)).sum().backward()
        u_hats = [
            None if layer.factor(i) is None else _augmented(layer.factor(i).detach(), 1, gen)
            for i in range(4)
        ]
        group = layer.gradient_record.groups[0]
        leading = set(layer.factorized_modes)
        assert (
            layer._projected_weight_grad_parts(
                group.contributions, group.core_grad, u_hats, leading
            )
            is None
        )
        got = layer.gradient_record.weight_gradient(u_hats, leading=tuple(leading))
        want = layer.gradient_record.weight_gradient(u_hats)
        assert torch.equal(got, want)


def test_galerkin_record_lifecycle():
    torch.manual_seed(0)
    layer = TuckerConv2d(3, 4, 3, rank=2, dtype=torch.float64)
    record = layer.gradient_record
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="record_for_galerkin"):
        layer.full_weight_gradient()
    layer(x).sum().backward()  # recording off: nothing kept
    assert record.groups == [] and layer.recorded_batches == 0
    layer.record_for_galerkin = True
    with torch.no_grad():
        layer(x)  # no autograd: nothing to record
    layer(x)  # no backward: nothing to record
    assert record.groups == []
    layer(x).sum().backward()
    assert len(record.groups) == 1 and layer.recorded_batches == 1
    g1 = layer.full_weight_gradient()
    layer(x).sum().backward()
    # accumulates like .grad until cleared, one group per backward pass
    assert len(record.groups) == 2
    assert torch.allclose(layer.full_weight_gradient(), 2 * g1)
    # the raw core gradient of each pass is G ×_i U_iᴴ
    core_grad = layer.galerkin_gradient(layer.factor_list())
    assert torch.allclose(record.groups[0].core_grad + record.groups[1].core_grad, core_grad)
    layer.clear_galerkin_record()
    assert record.groups == []
    layer(x).sum().backward()
    layer.record_for_galerkin = False
    assert record.groups == []
    # weight_grad: only G is kept once the output gradient has arrived
    layer.record_for_galerkin = True
    layer.galerkin_record = "weight_grad"
    layer(x).sum().backward()
    ((entry,),) = [g.contributions for g in record.groups]
    assert entry.x is None and entry.grad is None and entry.weight_grad.shape == (4, 3, 3, 3)
    assert torch.allclose(layer.full_weight_gradient(), g1)
    with pytest.raises(ValueError, match="galerkin_record='dense'"):
        layer.galerkin_record = "dense"
    layer.record_for_galerkin = False
    with pytest.raises(ValueError, match="weight_shape\\[1\\]=3"):
        layer.record_for_galerkin = True
        layer(x).sum().backward()
        layer.galerkin_gradient([None, torch.eye(4, dtype=torch.float64), None, None])
    with pytest.raises(ValueError, match="4 entries"):
        layer.galerkin_gradient([None])


def test_set_tucker_keeps_parameter_identity_and_changes_rank():
    torch.manual_seed(0)
    layer = TuckerConv2d(6, 8, 3, padding=1, rank=3, dtype=torch.float64)
    params = list(layer.parameters())
    ids = [id(p) for p in params]
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    # a graph still alive from before the resize must not pin the old shapes
    old_loss = layer(x).sum()
    old_loss.backward()
    core = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    u0, _ = torch.linalg.qr(torch.randn(8, 5, dtype=torch.float64))
    u1, _ = torch.linalg.qr(torch.randn(6, 4, dtype=torch.float64))
    bias_grad = layer.bias.grad.clone()
    layer.set_tucker_(core, [u0, u1, None, None])
    assert [id(p) for p in layer.parameters()] == ids
    assert layer.ranks == (5, 4, 3, 3)
    assert layer.core.grad is None and layer.factor(0).grad is None  # shape changed
    assert torch.equal(layer.bias.grad, bias_grad)
    assert torch.equal(layer.core, core) and torch.equal(layer.factor(1), u1)
    assert all(p is q for p, q in zip(opt.param_groups[0]["params"], layer.parameters()))
    want = _project(core, [u0.t(), u1.t(), None, None])
    assert torch.allclose(layer.reconstruct(), want)
    for mode in ("factorized", "dense"):
        layer.forward_mode = mode
        layer(x).sum().backward()
    opt.step()  # the optimizer sees the resized parameters
    assert old_loss.grad_fn is not None


@pytest.mark.parametrize(
    "core_shape, factors, match",
    [
        ((5, 4, 3), "ok", "core.ndim=3"),
        ((5, 4, 3, 3), "short", "list of 4"),
        ((5, 4, 3, 3), "full_given", "factors\\[2\\] must be None"),
        ((5, 4, 2, 3), "ok", "core.shape\\[2\\]=2 differs"),
        ((5, 4, 3, 3), "wrong_shape", "factors\\[0\\].shape=\\(8, 4\\)"),
        ((5, 4, 3, 3), "float32", "dtype torch.float32"),
        ((9, 4, 3, 3), "ok", "factors\\[0\\].shape=\\(8, 5\\)"),
    ],
)
def test_set_tucker_validates_and_changes_nothing_on_error(core_shape, factors, match):
    torch.manual_seed(0)
    layer = TuckerConv2d(6, 8, 3, rank=3, dtype=torch.float64)
    before = [p.detach().clone() for p in layer.parameters()]
    core = torch.randn(core_shape, dtype=torch.float64)
    u0 = torch.randn(8, 5, dtype=torch.float64)
    u1 = torch.randn(6, 4, dtype=torch.float64)
    facs = {
        "ok": [u0, u1, None, None],
        "short": [u0, u1],
        "full_given": [u0, u1, torch.eye(3, dtype=torch.float64), None],
        "wrong_shape": [torch.randn(8, 4, dtype=torch.float64), u1, None, None],
        "float32": [u0.float(), u1, None, None],
    }[factors]
    with pytest.raises((ValueError, TypeError), match=match):
        layer.set_tucker_(core, facs)
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))


def test_load_state_dict_across_rank_change():
    torch.manual_seed(0)
    src = TuckerLinear(9, 7, rank=4, dtype=torch.float64)
    dst = TuckerLinear(9, 7, rank=2, dtype=torch.float64)
    ids = [id(p) for p in dst.parameters()]
    dst.load_state_dict(src.state_dict())
    assert dst.ranks == (4, 4)
    assert [id(p) for p in dst.parameters()] == ids
    assert torch.equal(dst.reconstruct(), src.reconstruct())
    # a checkpoint of another layer shape still fails loudly
    other = TuckerLinear(9, 6, rank=4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="size mismatch"):
        dst.load_state_dict(other.state_dict())
    # a full mode of another size is not resized either
    conv = TuckerConv2d(4, 6, 3, rank=2, dtype=torch.float64)
    wider = TuckerConv2d(4, 6, 5, rank=(2, 2, 5, 5), keep_full="spatial", dtype=torch.float64)
    with pytest.raises(RuntimeError, match="size mismatch"):
        conv.load_state_dict(wider.state_dict())
    assert conv.ranks == (2, 2, 3, 3)


def _layer_state(layer):
    return [(p.shape, p.detach().clone()) for p in layer.parameters()]


def _same_state(a, b):
    return len(a) == len(b) and all(s == t and torch.equal(x, y) for (s, x), (t, y) in zip(a, b))


def _malformed_layer_state_dicts():
    """(edit of a good TuckerConv2d(4, 6, 3, rank=3, keep_full="none") state dict, entry)."""

    def put(key, value):
        return lambda sd: sd.__setitem__(key, value)

    return [
        (lambda sd: sd.pop("factors.2"), "factors.2"),  # a missing factor
        (lambda sd: sd.pop("core"), "core"),  # factors without their core
        (put("core", [[1.0]]), "core"),  # not a tensor
        (put("factors.4", torch.zeros(3, 3)), "factors.4"),  # a factor of no mode
        (put("core", torch.zeros(2, 2, 2)), "core"),  # three modes for four
        (put("factors.1", torch.zeros(4, 2)), "factors.1"),  # off its core's rank
        (put("core", torch.zeros(1, 3, 3, 3)), "factors.0"),  # core off its factors
    ]


@pytest.mark.parametrize(("edit", "entry"), _malformed_layer_state_dicts())
def test_malformed_layer_state_dict_is_refused_before_anything_changes(edit, entry):
    torch.manual_seed(3)
    src = TuckerConv2d(4, 6, 3, rank=3, keep_full="none", dtype=torch.float64)
    dst = TuckerConv2d(4, 6, 3, rank=2, keep_full="none", dtype=torch.float64)
    sd = dict(src.state_dict())
    edit(sd)
    before = _layer_state(dst)
    with pytest.raises(StateDictEntryError, match=re.escape(entry)) as info:
        dst.load_state_dict(sd)
    # a ValueError naming the entry, and torch's RuntimeError of load_state_dict
    assert isinstance(info.value, ValueError) and isinstance(info.value, RuntimeError)
    assert info.value.entry == entry
    assert _same_state(before, _layer_state(dst)) and dst.ranks == (2, 2, 2, 2)


def test_impossible_stored_rank_is_refused_and_a_partial_non_strict_load_still_works():
    torch.manual_seed(4)
    dst = TuckerLinear(9, 7, rank=2, dtype=torch.float64)
    before = _layer_state(dst)
    sd = {"core": torch.zeros(1, 3), "factors.0": torch.zeros(7, 1), "factors.1": torch.zeros(9, 3)}
    with pytest.raises(StateDictEntryError, match="product of the other ranks"):
        dst.load_state_dict(sd, strict=False)
    assert _same_state(before, _layer_state(dst))
    # strict=False without the core: the factors of the current rank load, as torch does
    u = torch.linalg.qr(torch.randn(7, 2, dtype=torch.float64))[0]
    dst.load_state_dict({"factors.0": u}, strict=False)
    assert torch.equal(dst.factor(0).detach(), u) and dst.ranks == (2, 2)
    # ... and factors of another rank without their core are refused
    with pytest.raises(StateDictEntryError, match="factors.0"):
        dst.load_state_dict({"factors.0": torch.zeros(7, 3)}, strict=False)


_BAD_SIZES = [
    (float("inf"), ValueError),
    (float("nan"), ValueError),
    (1e300, ValueError),
    (2.7, ValueError),
    (0, ValueError),
    ("4", TypeError),
    (True, TypeError),
    (None, TypeError),
]


@pytest.mark.parametrize(("size", "error"), _BAD_SIZES)
def test_layer_sizes_are_refused_naming_the_argument(size, error):
    with pytest.raises(error, match="in_features"):
        TuckerLinear(size, 3, rank=2)
    with pytest.raises(error, match="out_features"):
        TuckerLinear(4, size, rank=2)
    with pytest.raises(error, match="in_channels"):
        TuckerConv1d(size, 4, 3, rank=2)
    with pytest.raises(error, match="out_channels"):
        TuckerConv3d(4, size, 3, rank=2)
    with pytest.raises(error, match="groups"):
        TuckerConv2d(4, 4, 3, groups=size, rank=2)
    # kernel sizes, strides and paddings are ints (as for torch's ConvNd): a float is a
    # TypeError, whatever its value
    kernel_error = TypeError if isinstance(size, float) else error
    with pytest.raises(kernel_error, match="kernel_size"):
        TuckerConv2d(4, 4, size, rank=2)
    with pytest.raises(kernel_error, match="kernel_size\\[1\\]"):
        TuckerConv2d(4, 4, (3, size), rank=2)
    with pytest.raises(kernel_error, match="stride\\[1\\]"):
        TuckerConv2d(4, 4, 3, stride=(1, size), rank=2)


def test_layer_ranks_paddings_dtypes_and_devices_are_refused_naming_the_argument():
    with pytest.raises(TypeError, match="padding\\[0\\]"):
        TuckerConv2d(4, 4, 3, padding=(float("inf"), 1), rank=2)
    with pytest.raises(TypeError, match="padding\\[1\\]"):
        TuckerConv2d(4, 4, 3, padding=(1, 1.5), rank=2)
    with pytest.raises(ValueError, match="padding\\[0\\]=-1"):
        TuckerConv2d(4, 4, 3, padding=(-1, 1), rank=2)
    assert TuckerConv2d(4, 4, 3, padding=(0, 1), rank=2).padding == (0, 1)
    for bad in (float("inf"), float("nan"), "2"):
        with pytest.raises(TypeError, match="rank\\[0\\]"):
            TuckerLinear(4, 3, rank=(bad, 2))
    with pytest.raises(ValueError, match="fraction"):
        TuckerLinear(4, 3, rank=float("inf"))
    with pytest.raises(TypeError, match="rank must be an int, a float or a sequence"):
        TuckerLinear(4, 3, rank="22")
    with pytest.raises(TypeError, match="dtype must be a torch.dtype"):
        TuckerLinear(4, 3, rank=2, dtype="float32")
    with pytest.raises(TypeError, match="dtype must be a torch.dtype"):
        TuckerConv2d(4, 4, 3, rank=2, dtype=int)
    with pytest.raises(ValueError, match="device='x' is not a torch device"):
        TuckerLinear(4, 3, rank=2, device="x")
    with pytest.raises(TypeError, match="device must be"):
        TuckerLinear(4, 3, rank=2, device=[])
    assert TuckerLinear(4.0, np_int(3), rank=2).in_features == 4  # integral values as before


def np_int(v):
    import numpy as np

    return np.int64(v)


def test_tucker_from_weight_refuses_bad_arguments_naming_them():
    w = torch.randn(6, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        tucker_from_weight(w.numpy(), (), rank=2)
    with pytest.raises(ValueError, match="floating point"):
        tucker_from_weight(w.to(torch.int64), (), rank=2)
    with pytest.raises(ValueError, match="full_modes contains mode 2"):
        tucker_from_weight(w, (2,), rank=2)
    with pytest.raises(TypeError, match="full_modes"):
        tucker_from_weight(w, None, rank=2)
    with pytest.raises(TypeError, match="rtol"):
        tucker_from_weight(w, (), rtol="0.1")
    with pytest.raises(ValueError, match="rtol"):
        tucker_from_weight(w, (), rtol=float("nan"))
    with pytest.raises(TypeError, match="max_rank"):
        tucker_from_weight(w, (), rtol=0.1, max_rank=float("inf"))
    with pytest.raises(ValueError, match="min_rank\\[1\\]=0"):
        tucker_from_weight(w, (), rtol=0.1, min_rank=(1, 0))
    core, factors = tucker_from_weight(w, (), rtol=0.1, max_rank=(None, 2))
    assert core.shape[1] <= 2 and factors[1].shape == (4, core.shape[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_are_honoured(device, dtype):
    layer = TuckerConv3d(4, 6, (3, 5, 5), rank=2, device=device, dtype=dtype)
    assert layer.factorized_modes == (0, 1, 3, 4)  # 5-wide spatial modes are factorized
    for p in layer.parameters():
        assert p.dtype == dtype and p.device.type == torch.device(device).type
    x = torch.randn(1, 4, 4, 6, 6, dtype=dtype, device=device)
    assert layer(x).dtype == dtype
    lin = TuckerLinear(5, 3, rank=2, device=device, dtype=dtype)
    assert (
        lin.core.dtype == dtype
        and lin(torch.randn(2, 5, dtype=dtype, device=device)).dtype == dtype
    )
    with pytest.raises(TypeError, match="floating point"):
        TuckerLinear(5, 3, rank=2, dtype=torch.int64)


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_layers_start_orthonormal_at_their_precision(half):
    layer = TuckerConv2d(8, 12, 5, rank=4, dtype=half)  # QR in float32, stored in half
    for u in layer.factors:
        assert u.dtype == half
        u32 = u.detach().float()
        # rounding each entry by eps/2 moves UᵀU by at most eps per entry
        assert (u32.T @ u32 - torch.eye(u.shape[1])).abs().max() <= torch.finfo(half).eps
    assert layer(torch.randn(2, 8, 9, 9, dtype=half)).dtype == half


def test_set_tucker_stores_contiguous_data_and_gradients():
    torch.manual_seed(4)
    layer = TuckerConv2d(4, 6, 3, rank=2, keep_full="none", dtype=torch.float64)
    core = torch.randn(2, 3, 2, 2, dtype=torch.float64).permute(1, 0, 3, 2)  # a permuted view
    assert not core.is_contiguous()
    factors = [
        torch.linalg.qr(torch.randn(n, r, dtype=torch.float64))[0]
        for n, r in zip(layer.weight_shape, core.shape)
    ]
    layer.set_tucker_(core, factors)
    assert torch.equal(layer.core.detach(), core)
    layer(torch.randn(1, 4, 5, 5, dtype=torch.float64)).sum().backward()
    for p in layer.parameters():
        assert p.is_contiguous() and (p.grad is None or p.grad.is_contiguous())


def test_initialisation_matches_torch_default_variance_with_orthonormal_factors():
    torch.manual_seed(0)
    layer = TuckerConv2d(64, 96, 3, rank=(16, 24, None, None))
    for i in layer.factorized_modes:
        u = layer.factor(i).detach()
        assert torch.allclose(u.t() @ u, torch.eye(u.shape[1]), atol=1e-5)
    w = layer.reconstruct().detach()
    fan_in = 64 * 9
    # torch's kaiming_uniform_(a=sqrt(5)) has variance 1/(3 fan_in); the mean of 96*64*9
    # squared entries of a Gaussian core of 16*24*9 entries is within ~5 % (chi-square)
    ratio = w.pow(2).mean().item() * 3 * fan_in
    assert abs(ratio - 1.0) < 0.15
    bound = 1 / math.sqrt(fan_in)
    assert layer.bias.abs().max().item() <= bound


def test_rank_arguments():
    assert TuckerLinear(10, 4, rank=8).ranks == (4, 4)  # int caps, lowered to a valid rank
    assert TuckerLinear(10, 4, rank=0.5).ranks == (2, 2)
    assert TuckerConv2d(8, 16, 3, rank=0.25).ranks == (4, 2, 3, 3)
    assert TuckerConv2d(8, 16, 1, rank=4).factorized_modes == (0, 1)  # size-1 modes are full
    assert TuckerConv2d(8, 16, 3, rank=2, keep_full="none").ranks == (2, 2, 2, 2)
    assert TuckerConv2d(8, 16, 3, rank=(4, None, None, None), keep_full=(1, 2, 3)).ranks == (
        4,
        8,
        3,
        3,
    )
    with pytest.raises(ValueError, match="rank\\[0\\]=17 exceeds weight_shape\\[0\\]=16"):
        TuckerConv2d(8, 16, 3, rank=(17, 4, None, None))
    with pytest.raises(ValueError, match="mode 2 is kept full"):
        TuckerConv2d(8, 16, 3, rank=(4, 4, 2, None))
    with pytest.raises(ValueError, match="product of the other ranks"):
        TuckerLinear(10, 4, rank=(3, 2))
    with pytest.raises(ValueError, match="fraction"):
        TuckerLinear(10, 4, rank=1.5)
    with pytest.raises(ValueError, match="4 modes"):
        TuckerConv2d(8, 16, 3, rank=(4, 4))
    with pytest.raises(ValueError, match="keep_full contains mode 5"):
        TuckerConv2d(8, 16, 3, rank=2, keep_full=(5,))
    with pytest.raises(ValueError, match="divisible by groups=3"):
        TuckerConv2d(8, 16, 3, groups=3, rank=2)
    with pytest.raises(ValueError, match="stride 1"):
        TuckerConv2d(8, 16, 3, stride=2, padding="same", rank=2)
    with pytest.raises(ValueError, match="padding_mode='mirror'"):
        TuckerConv2d(8, 16, 3, padding_mode="mirror", rank=2)
    with pytest.raises(ValueError, match="forward_mode='fast'"):
        TuckerLinear(10, 4, rank=2).forward_mode = "fast"


def test_auto_mode_takes_the_cheaper_path(monkeypatch):
    low = TuckerConv2d(64, 64, 3, padding=1, rank=4)
    full = TuckerConv2d(64, 64, 3, padding=1, rank=64)
    # batch large enough that assembling the dense kernel does not dominate
    x = torch.randn(16, 64, 8, 8)
    assert low.forward_flops(x.shape)["factorized"] < low.forward_flops(x.shape)["dense"]
    assert full.forward_flops(x.shape)["factorized"] > full.forward_flops(x.shape)["dense"]
    calls = []
    for layer in (low, full):
        monkeypatch.setattr(layer, "_forward_dense", lambda x, *a, c=calls: c.append("dense"))
        monkeypatch.setattr(layer, "_forward_factorized", lambda x, *a, c=calls: c.append("fact"))
        layer(x)
    assert calls == ["fact", "dense"]


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_from_dense_recovers_low_rank_weight_and_honours_rtol(nd):
    torch.manual_seed(nd)
    cls, dense_cls = CONVS[nd]
    k = (5,) + (3,) * (nd - 1)
    dense = dense_cls(6, 8, k, padding=1, dtype=torch.float64)
    layer = cls(6, 8, k, padding=1, rank=(3, 2, 2) + (None,) * (nd - 1), dtype=torch.float64)
    with torch.no_grad():
        dense.weight.copy_(layer.reconstruct())
    rebuilt = cls.from_dense(dense, rtol=1e-10)
    assert rebuilt.ranks == layer.ranks
    assert torch.allclose(rebuilt.reconstruct(), dense.weight, atol=1e-12)
    assert torch.equal(rebuilt.bias, dense.bias)
    assert rebuilt.padding == dense.padding and rebuilt.stride == dense.stride
    # a noisy weight: the tolerance bounds the relative error
    with torch.no_grad():
        dense.weight.add_(0.1 * torch.randn_like(dense.weight))
    for rtol in (0.05, 0.3, 0.7):
        approx = cls.from_dense(dense, rtol=rtol)
        err = torch.linalg.vector_norm(approx.reconstruct() - dense.weight)
        assert err <= rtol * torch.linalg.vector_norm(dense.weight) * (1 + 1e-12)
    fixed = cls.from_dense(dense, rank=2)
    assert fixed.ranks[:2] == (2, 2)
    with pytest.raises(ValueError, match="exactly one"):
        cls.from_dense(dense, rank=2, rtol=0.1)


def test_linear_from_dense():
    torch.manual_seed(0)
    dense = nn.Linear(12, 9, dtype=torch.float64)
    exact = TuckerLinear.from_dense(dense, rtol=0.0)
    assert exact.ranks == (9, 9)
    x = torch.randn(3, 12, dtype=torch.float64)
    assert torch.allclose(exact(x), dense(x), atol=1e-12)
    half = TuckerLinear.from_dense(dense, rank=4, keep_full=(1,))
    assert half.factorized_modes == (0,) and half.ranks == (4, 12)
    s = torch.linalg.svdvals(dense.weight.detach())
    err = torch.linalg.matrix_norm(half.reconstruct() - dense.weight)
    # best rank-4 approximation of the rows (Eckart-Young)
    assert torch.allclose(err, s[4:].pow(2).sum().sqrt(), rtol=1e-10)
    with pytest.raises(TypeError, match="nn.Linear"):
        TuckerLinear.from_dense(nn.Conv1d(3, 3, 1), rank=1)


def _saved_bytes(fn):
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


def test_recomputed_factorized_forward_gives_same_gradients_with_less_saved_memory():
    torch.manual_seed(0)
    layer = TuckerConv2d(8, 8, 3, padding=1, rank=3, dtype=torch.float64)
    layer.forward_mode = "factorized"
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    results = {}
    for recompute in (False, True):
        layer.recompute_factorized = recompute
        layer.zero_grad(set_to_none=True)
        x.grad = None
        y, saved = _saved_bytes(lambda: layer(x))
        y.pow(2).sum().backward()
        grads = [p.grad.clone() for p in layer.parameters()] + [x.grad.clone()]
        results[recompute] = (y.detach(), saved, grads)
    assert torch.equal(results[True][0], results[False][0])
    for a, b in zip(results[True][2], results[False][2]):
        assert torch.allclose(a, b, rtol=0, atol=1e3 * EPS64 * (1 + b.abs().max().item()))
    # only the input (and the small weights) are kept: no r-channel intermediate maps
    weights = sum(p.numel() * 8 for p in layer.parameters())
    assert results[True][1] <= x.numel() * 8 + weights
    assert results[False][1] > results[True][1]


@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d-groups", "conv3d"])
def test_galerkin_gradient_in_current_bases_is_the_core_gradient(kind):
    torch.manual_seed(0)
    f64 = {"dtype": torch.float64}
    layer, x = {
        "linear": lambda: (TuckerLinear(6, 5, rank=2, **f64), torch.randn(3, 6, **f64)),
        "conv1d": lambda: (
            TuckerConv1d(4, 6, 5, padding="same", rank=2, **f64),
            torch.randn(2, 4, 9, **f64),
        ),
        "conv2d-groups": lambda: (
            TuckerConv2d(
                4, 6, 3, stride=2, groups=2, padding_mode="reflect", padding=1, rank=2, **f64
            ),
            torch.randn(2, 4, 7, 7, **f64),
        ),
        "conv3d": lambda: (
            TuckerConv3d(3, 4, (1, 3, 5), rank=2, keep_full="none", **f64),
            torch.randn(1, 3, 4, 5, 6, **f64),
        ),
    }[kind]()
    layer.record_for_galerkin = True
    y = layer(x)
    (y * torch.randn_like(y)).sum().backward()
    got = layer.galerkin_gradient(
        [u.detach() if u is not None else None for u in layer.factor_list()]
    )
    # the core gradient of C ×_i U_i is G ×_i U_iᵀ
    assert torch.allclose(
        got, layer.core.grad, rtol=0, atol=1e3 * EPS64 * (1 + got.abs().max().item())
    )


@pytest.mark.parametrize("forward_mode", ["factorized", "dense"])
def test_factorized_spatial_modes_under_bf16_autocast(forward_mode):
    # 5×5 kernels: the spatial modes carry factors, whose mode products meet bf16 activations
    torch.manual_seed(0)
    layer = TuckerConv2d(4, 6, 5, padding=2, rank=3)
    assert layer.factor(2) is not None and layer.factor(3) is not None
    layer.forward_mode = forward_mode
    x = torch.randn(2, 4, 7, 7)
    ref = nn.functional.conv2d(x, layer.reconstruct().detach(), layer.bias.detach(), padding=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.float().sum().backward()
    assert layer.core.grad is not None and torch.isfinite(layer.core.grad).all()
    # bf16 keeps 8 significant bits: a few percent of the largest output
    assert (y.float() - ref).abs().max() <= 5e-2 * ref.abs().max()


def test_galerkin_gradient_under_bf16_autocast_and_eval_mode():
    torch.manual_seed(0)
    layer = TuckerConv2d(8, 8, 3, padding=1, rank=4)
    layer.record_for_galerkin = True
    x = torch.randn(2, 8, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().pow(2).sum().backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer.galerkin_gradient(layer.factor_list())
    assert got.dtype == torch.float32 and not got.requires_grad
    # bf16 has 8 significant bits: agreement to a few percent of the largest entry
    err = (got - layer.core.grad).abs().max() / layer.core.grad.abs().max()
    assert err < 5e-2
    layer.clear_galerkin_record()
    layer.eval()  # a validation pass without no_grad() records nothing: no backward arrives
    layer(x)
    assert layer.recorded_batches == 0
    layer(x).sum().backward()  # training in eval mode (frozen batch norms) is recorded
    assert layer.recorded_batches == 1


@given(
    shape=st.lists(st.integers(1, 6), min_size=2, max_size=4).map(tuple),
    full_bits=st.integers(0, 15),
    rtol=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**31 - 1),
)
def test_tucker_from_weight_meets_tolerance_with_orthonormal_factors(shape, full_bits, rtol, seed):
    from tuckerflow.nn import tucker_from_weight

    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen, dtype=torch.float64)
    full = tuple(i for i in range(len(shape)) if full_bits >> i & 1)
    core, factors = tucker_from_weight(w, full, rtol=rtol)
    approx = _project(core, [None if u is None else u.t() for u in factors])
    # ST-HOSVD: ‖W − W_ST‖² = Σ tails² ≤ ϑ² (up to round-off of the SVDs)
    assert torch.linalg.vector_norm(approx - w) <= rtol * torch.linalg.vector_norm(w) + 1e-12
    for i, n in enumerate(shape):
        u = factors[i]
        if i in full:
            assert u is None and core.shape[i] == n
        else:
            assert u.shape == (n, core.shape[i])
            assert torch.allclose(u.t() @ u, torch.eye(u.shape[1], dtype=u.dtype), atol=1e-12)
            other = math.prod(core.shape[:i] + core.shape[i + 1 :])
            assert core.shape[i] <= other


def test_unbatched_input_and_input_checks():
    torch.manual_seed(0)
    layer = TuckerConv2d(3, 4, 3, padding=1, padding_mode="reflect", rank=2, dtype=torch.float64)
    x = torch.randn(3, 5, 5, dtype=torch.float64)
    for mode in FORWARD_MODES:
        layer.forward_mode = mode
        assert torch.allclose(layer(x), layer(x[None])[0], atol=1e-14)
    with pytest.raises(ValueError, match="x.shape\\[1\\]=2 differs from in_channels=3"):
        layer(torch.randn(1, 2, 5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="4-d"):
        layer(torch.randn(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="in_features=5"):
        TuckerLinear(5, 3, rank=2)(torch.randn(2, 4))
