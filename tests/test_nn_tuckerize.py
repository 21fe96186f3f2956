"""tuckerize: which modules are replaced, exactness from weights, reports, errors."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

from tuckerflow.nn import (  # noqa: E402
    TuckerConv1d,
    TuckerConv2d,
    TuckerLayer,
    TuckerLinear,
    compression_rate,
    count_parameters,
    tuckerize,
)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # these tensors are tiny: with parallel test workers, torch's thread pools only contend
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(16, 32, 3, padding="same", groups=2), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).double()


def test_replaces_supported_modules_and_keeps_outputs_exact_at_zero_tolerance():
    model = _model()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    ref = model(x)
    before = count_parameters(model)
    out, report = tuckerize(model, rtol=0.0)
    assert out is model
    assert [r.path for r in report.layers] == ["0", "2.0", "5"]
    assert isinstance(model[0], TuckerConv2d) and isinstance(model[2][0], TuckerConv2d)
    assert isinstance(model[5], TuckerLinear)
    assert model[2][0].groups == 2 and model[2][0].padding == "same"
    assert torch.allclose(model(x), ref, atol=1e-12)
    assert report.before == before
    assert report.after == count_parameters(model)


@given(rank=st.integers(1, 6))
def test_report_counts_and_compression_rates(rank):
    model = _model()
    before = count_parameters(model)
    dense_conv = sum(p.numel() for m in (model[0], model[2][0]) for p in m.parameters())
    assert before.conv == dense_conv
    model, report = tuckerize(model, rank=rank, filter=lambda path, m: path != "0")
    assert [r.path for r in report.layers] == ["2.0", "5"]
    conv_after = sum(p.numel() for p in model[0].parameters()) + model[2][0].parameter_count()
    assert report.after.conv == conv_after
    rate = 1 - conv_after / dense_conv
    assert report.conv_compression_rate == pytest.approx(rate)
    assert compression_rate(before, model) == pytest.approx(rate)
    total_rate = 1 - report.after.total / before.total
    assert compression_rate(before, model, scope="model") == pytest.approx(total_rate)
    assert report.compression_rate == pytest.approx(total_rate)
    layer = report.layers[0]
    assert layer.ranks == model[2][0].ranks
    assert layer.params_after == model[2][0].parameter_count()
    text = str(report)
    assert "2.0" in text and f"{100 * rate:.2f}%" in text
    assert report.to_dict()["conv_compression_rate"] == pytest.approx(rate)


def test_filter_by_names_and_random_init():
    model = _model()
    bias = model[5].bias.detach().clone()
    model, report = tuckerize(model, filter=["5"], rank=3, init="random")
    assert [r.path for r in report.layers] == ["5"]
    assert isinstance(model[0], nn.Conv2d)
    assert model[5].ranks == (3, 3)
    assert torch.equal(model[5].bias, bias)
    assert model[5].core.dtype == torch.float64


def test_shared_module_is_replaced_once():
    conv = nn.Conv1d(4, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    model, report = tuckerize(model, rank=2)
    assert model[0] is model[2] and isinstance(model[0], TuckerConv1d)
    assert len(report.layers) == 1


def test_training_flag_and_root_module():
    lin = nn.Linear(6, 5).eval()
    new, report = tuckerize(lin, rank=2)
    assert isinstance(new, TuckerLinear) and not new.training
    assert report.layers[0].path == ""


@pytest.mark.parametrize(
    "model, kwargs, error, match",
    [
        (
            nn.Sequential(nn.Linear(4, 4), nn.ConvTranspose2d(4, 4, 3)),
            {"filter": lambda p, m: True, "rank": 2},
            TypeError,
            "module '1'.*transposed",
        ),
        (
            nn.Sequential(nn.MultiheadAttention(8, 2)),
            {"filter": lambda p, m: True, "rank": 2},
            TypeError,
            "module '0.out_proj'.*MultiheadAttention",
        ),
        (nn.Sequential(nn.Linear(4, 4)), {"filter": ["1"], "rank": 2}, ValueError, "'1'"),
        (nn.Sequential(nn.ReLU()), {"filter": ["0"], "rank": 2}, TypeError, "module '0'.*ReLU"),
        (
            nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3)),
            {"rank": (2, 5)},
            ValueError,
            "module '0'.*rank\\[1\\]=5 exceeds",
        ),
        (nn.Linear(4, 4), {"rank": 2, "rtol": 0.1}, ValueError, "exactly one"),
        (nn.Linear(4, 4), {"rtol": 0.1, "init": "random"}, ValueError, "init='weight'"),
        (nn.Linear(4, 4), {"rank": 2, "init": "svd"}, ValueError, "init='svd'"),
        (nn.Linear(4, 4), {"rtol": 1.5}, ValueError, "rtol=1.5"),
        (
            nn.Sequential(nn.Linear(4, 3)),
            {"rtol": 0.1, "max_rank": 0},
            ValueError,
            r"module '0': max_rank\[0\]=0 must be at least 1",
        ),
        (
            nn.Sequential(nn.Linear(4, 3)),
            {"rank": 2, "max_rank": (2, 0)},
            ValueError,
            r"module '0': max_rank\[1\]=0 must be at least 1",
        ),
    ],
)
def test_errors_name_the_module_and_leave_the_model_unchanged(model, kwargs, error, match):
    before = [(n, type(m)) for n, m in model.named_modules()]
    with pytest.raises(error, match=match):
        tuckerize(model, **kwargs)
    assert [(n, type(m)) for n, m in model.named_modules()] == before
    assert not any(isinstance(m, TuckerLayer) for m in model.modules())


def test_default_filter_skips_unsupported_modules():
    model = nn.Sequential(nn.ConvTranspose2d(4, 4, 3), nn.MultiheadAttention(8, 2), nn.Linear(8, 2))
    model, report = tuckerize(model, rank=2)
    assert [r.path for r in report.layers] == ["2"]
    assert isinstance(model[0], nn.ConvTranspose2d)


def test_compression_rate_arguments():
    with pytest.raises(ValueError, match="no conv parameters"):
        compression_rate(nn.Linear(3, 3), nn.Linear(3, 3))
    with pytest.raises(TypeError, match="before must be"):
        compression_rate(3, nn.Linear(3, 3))
    with pytest.raises(ValueError, match="scope"):
        compression_rate(nn.Linear(3, 3), nn.Linear(3, 3), scope="all")
    assert compression_rate(nn.Linear(3, 3), nn.Linear(3, 3), scope="model") == 0.0


def test_count_parameters_refuses_a_non_module():
    for bad in (None, 3.0, [nn.Linear(2, 2)]):
        with pytest.raises(TypeError, match="model must be an nn.Module"):
            count_parameters(bad)


def test_per_module_ranks_from_a_mapping():
    model = _model()
    model, report = tuckerize(model, rank={"2.0": (4, 2, None, None), "5": 3}, init="random")
    assert [r.path for r in report.layers] == ["2.0", "5"]
    assert model[2][0].ranks == (4, 2, 3, 3) and model[5].ranks == (3, 3)
    assert isinstance(model[0], nn.Conv2d)
    with pytest.raises(ValueError, match="no entry for the selected module '0'"):
        tuckerize(_model(), rank={"5": 3}, filter=["0", "5"], init="random")
