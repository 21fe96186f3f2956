"""TDLRT's small-weight tolerance (``reference_scale``): a layer below its reference scale ``s``
is truncated with ``τ_l = τ · min(1, ‖Ĉ‖/s)²``; at or above ``s`` the step is the one
without the option, bit for bit."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_optim_host import batches, chain, run_steps

import tuckerflow.nn as tnn
from tuckerflow.optim import TDLRT
from tuckerflow.optim.tdlrt import REFERENCE_SCALE_POWER, default_scale
from tuckerflow.train import TrainConfig
from tuckerflow.train.build import make_tdlrt
from tuckerflow.train.checkpoint import check_resume_options


def _scaled_chain(scale, dtype=torch.float64):
    model = chain(3, dtype=dtype)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, tnn.TuckerLayer):
                m.core.mul_(scale)
    return model


def _tdlrt(model, **options):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    options.setdefault("update_every", 1)
    return TDLRT(model, opt, tau=0.3, **options)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_default_scale_is_the_norm_of_pytorchs_default_initialization():
    torch.manual_seed(0)
    lin = tnn.TuckerLinear(300, 200, rank=200, keep_full="none", dtype=torch.float64)
    assert default_scale(lin) == pytest.approx(math.sqrt(300 * 200 / (3 * 300)))
    dense = torch.nn.Linear(300, 200, dtype=torch.float64)  # kaiming_uniform_(a=√5)
    # 60,000 entries: the norm of one draw is within a few 1/√N of its expected value
    assert float(dense.weight.detach().norm()) == pytest.approx(default_scale(lin), rel=0.02)
    assert float(lin.core.detach().norm()) == pytest.approx(default_scale(lin), rel=0.02)
    conv = tnn.TuckerConv2d(8, 16, 3, rank=2)
    assert default_scale(conv) == pytest.approx(math.sqrt(16 * 8 * 9 / (3 * 8 * 9)))


def test_a_layer_at_or_above_its_scale_steps_exactly_as_without_the_option():
    data = batches()
    ref_model = _scaled_chain(1.0)
    model = copy.deepcopy(ref_model)
    ref = _tdlrt(ref_model)
    names = list(ref._layers)
    tdlrt = _tdlrt(model, reference_scale={n: 1e-9 for n in names})
    run_steps(ref_model, ref, data, 4)
    run_steps(model, tdlrt, data, 4)
    a, b = _state(ref_model), _state(model)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert tdlrt.last_tolerance == {n: 0.3 for n in names}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_tolerance_of_a_small_layer_is_tau_times_its_squared_share(dtype):
    model = _scaled_chain(0.2, dtype)
    tdlrt = _tdlrt(model, reference_scale="default")
    layers = dict(tdlrt._layers)
    want = {}
    for name, layer in layers.items():
        share = min(1.0, float(layer.core.detach().double().norm()) / default_scale(layer))
        want[name] = 0.3 * share**REFERENCE_SCALE_POWER
    got = tdlrt._small_weight_tolerances({n: None for n in layers})
    # the norm in the core's dtype: relative error about √N eps of a sum of N squares
    eps = torch.finfo(dtype).eps
    for name in layers:
        n = layers[name].core.numel()
        assert got[name] == pytest.approx(want[name], rel=4 * math.sqrt(n) * eps + 1e-15)
        assert 0 < got[name] < 0.3 * 0.5  # well below τ at a fifth of the scale


@pytest.mark.parametrize("truncation", ["hosvd", "st_hosvd"])  # batched and per-layer paths
def test_the_small_layer_step_is_the_plain_step_at_its_own_tolerance(truncation):
    # same start, one Tucker layer: the option's step equals that of a TDLRT without it
    # whose τ is the layer's τ_l (truncation, guard and removal budget alike)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), tnn.TuckerLinear(75, 6, rank=3, dtype=torch.float64)
    )
    with torch.no_grad():
        model[1].core.mul_(0.3)
    twin = copy.deepcopy(model)
    untouched = copy.deepcopy(model)
    data = batches()
    tdlrt = _tdlrt(model, reference_scale="default", truncation=truncation)
    run_steps(model, tdlrt, data, 1)
    (tau_l,) = tdlrt.last_tolerance.values()
    assert 0 < tau_l < 0.3 * 0.3
    plain = TDLRT(
        twin,
        torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9),
        tau=tau_l,
        update_every=1,
        truncation=truncation,
    )
    run_steps(twin, plain, data, 1)
    assert model[1].ranks == twin[1].ranks
    a, b = _state(model), _state(twin)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert tdlrt.removal_budget == plain.removal_budget
    # and the tolerance matters here: the plain rule at τ keeps fewer directions
    run_steps(untouched, _tdlrt(untouched, truncation=truncation), data, 1)
    assert math.prod(untouched[1].ranks) < math.prod(model[1].ranks)


def test_float32_takes_the_rank_decisions_of_float64_from_the_same_start():
    data = batches()
    m64 = _scaled_chain(0.4)
    m32 = copy.deepcopy(m64).to(torch.float32)
    t64 = _tdlrt(m64, reference_scale="default")
    t32 = _tdlrt(m32, reference_scale="default")
    run_steps(m64, t64, data, 3)
    run_steps(m32, t32, [(x.float(), y) for x, y in data], 3)
    plain = _tdlrt(copy.deepcopy(_scaled_chain(0.4)))
    run_steps(plain.model, plain, data, 3)
    for name in t64._layers:
        assert t32._layers[name].ranks == t64._layers[name].ranks
        # τ_l ∝ ‖Ĉ‖²: three float32 steps from the same start differ from float64 by
        # round-off (2–6 eps32 measured here); 128 eps32 leaves a margin for other BLAS
        eps32 = torch.finfo(torch.float32).eps
        assert t32.last_tolerance[name] == pytest.approx(t64.last_tolerance[name], rel=128 * eps32)
        assert t64.last_tolerance[name] < 0.3
    # the option keeps more than the plain rule where the layers are small
    kept = sum(math.prod(layer.ranks) for layer in t64._layers.values())
    kept_plain = sum(math.prod(layer.ranks) for layer in plain._layers.values())
    assert kept > kept_plain


def test_one_more_host_transfer_per_truncation():
    data = batches()
    counts_plain, counts = [], []
    model = _scaled_chain(0.2)
    twin = copy.deepcopy(model)
    run_steps(model, _tdlrt(model), data, 2, counts=counts_plain)
    run_steps(twin, _tdlrt(twin, reference_scale="default"), data, 2, counts=counts)
    assert [n for _, n in counts] == [n + 1 for _, n in counts_plain]


@pytest.mark.parametrize(
    "value, error, match",
    [
        ("small", ValueError, "reference_scale='small' is not None, 'default'"),
        (1.0, TypeError, "reference_scale must be None, 'default' or a dict"),
        ({"nope": 1.0}, ValueError, r"reference_scale names \['nope'\]"),
        ({"0": -1.0}, ValueError, r"reference_scale\['0'\]=-1.0 must be finite and > 0"),
        ({"0": math.nan}, ValueError, "must be finite and > 0"),
        ({"0": "1"}, TypeError, r"reference_scale\['0'\] must be a real number"),
        ({"0": True}, TypeError, "must be a real number"),
    ],
)
def test_bad_reference_scales_are_refused_before_anything_changes(value, error, match):
    model = _scaled_chain(1.0)
    before = _state(model)
    with pytest.raises(error, match=match):
        _tdlrt(model, reference_scale=value)
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_training_option_builds_the_default_reference_scale():
    model = _scaled_chain(1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    on = make_tdlrt(TrainConfig(method="tdlrt", small_weight_tolerance=True), model, opt)
    assert on.reference_scales == {n: default_scale(layer) for n, layer in on._layers.items()}
    off = make_tdlrt(TrainConfig(method="tdlrt"), model, opt)
    assert off.reference_scales == {}
    with pytest.raises(ValueError, match="small_weight_tolerance=1 must be True or False"):
        TrainConfig(method="tdlrt", small_weight_tolerance=1).validate()


def test_a_checkpoint_from_before_the_option_resumes_without_it(tmp_path):
    config = TrainConfig(method="tdlrt")
    saved = config.to_dict()
    saved.pop("small_weight_tolerance")
    check_resume_options(saved, config, epochs_done=1, path=tmp_path / "c.pt")
    on = TrainConfig(method="tdlrt", small_weight_tolerance=True)
    refused = "small_weight_tolerance: checkpoint False vs this run True"
    with pytest.raises(ValueError, match=refused):
        check_resume_options(saved, on, epochs_done=1, path=tmp_path / "c.pt")
