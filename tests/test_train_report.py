"""What a run reports: ranks, compression rates and the summary table, and their arguments."""

import math

import pytest

torch = pytest.importorskip("torch")

from tuckerflow.train import (  # noqa: E402
    compression_report,
    format_summary_table,
    layer_ranks,
    lenet5,
    tucker_layers,
)
from tuckerflow.train.models import layer_parameter_counts  # noqa: E402


def _summary(**changes):
    summary = {
        "method": "tdlrt",
        "model": "lenet5",
        "data": "digits",
        "test_accuracy": 0.9,
        "val_accuracy": 0.875,
        "compression_rate": 0.5,
        "compression_rate_conv": 0.25,
        "compression_rate_model": 0.125,
        "time_s": 1.5,
        "epochs": 2,
        "ranks": {"conv1": [4, 1, 3, 3]},
        "tucker_layers": ["conv1"],
    }
    return {**summary, **changes}


def test_reports_refuse_what_is_no_module():
    net = lenet5(1, 8, 3)
    assert tucker_layers(net) == {}
    assert layer_ranks(net)["fc2"] == [3, 500]
    # each raised AttributeError on the missing named_modules
    for report in (tucker_layers, layer_ranks):
        with pytest.raises(TypeError, match="model must be a torch.nn.Module, got NoneType"):
            report(None)


def test_compression_report_checks_the_dense_counts():
    net = lenet5(1, 8, 3)
    counts = layer_parameter_counts(net)
    total = sum(p.numel() for p in net.parameters())
    report = compression_report(counts, net, total)
    assert report["compression_rate"] == 0.0 and report["parameters"]["model"] == total
    # None and an unknown kind raised AttributeError and KeyError, an inf total OverflowError
    cases = [
        ((None, net, total), TypeError, "dense_counts must be a dict"),
        (({"conv1": ("weird", 3)}, net, total), ValueError, "kind 'weird' is not 'conv' or"),
        (({"conv1": 3}, net, total), TypeError, r"dense_counts\['conv1'\]=3 must be a pair"),
        (({"conv1": ("conv", -1)}, net, total), ValueError, "parameters=-1 must be at least 0"),
        (({"conv1": ("conv", 2.5)}, net, total), TypeError, "parameters=2.5 must be an integer"),
        ((counts, net, math.inf), TypeError, "dense_total=inf must be an integer"),
        ((counts, net, math.nan), TypeError, "dense_total=nan must be an integer"),  # NaN rate
        ((counts, "net", total), TypeError, "model must be a torch.nn.Module"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            compression_report(*args)


def test_summary_table_names_what_the_summary_lacks():
    text = format_summary_table(_summary())
    assert "test accuracy   90.00 %" in text and "conv1" in text and "tucker" in text
    # {} raised KeyError, a string accuracy printed a hundred copies of it, ranks=None
    # AttributeError
    cases = [
        (None, TypeError, "summary must be a dict"),
        ({}, ValueError, r"summary lacks the key\(s\) \['method', 'model'"),
        (_summary(test_accuracy="x"), TypeError, r"summary\['test_accuracy'\]='x' must be a"),
        (_summary(epochs=True), TypeError, r"summary\['epochs'\]=True must be a number"),
        (_summary(ranks=None), TypeError, r"summary\['ranks'\] must be a dict"),
        (_summary(ranks={"conv1": 4}), TypeError, r"summary\['ranks'\]\['conv1'\]=4 must be"),
    ]
    for summary, error, message in cases:
        with pytest.raises(error, match=message):
            format_summary_table(summary)
