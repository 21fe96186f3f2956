"""Smoke run of the training benchmark at a tiny size (its numbers are not asserted)."""

from __future__ import annotations

import argparse

import pytest

torch = pytest.importorskip("torch")

from tuckerflow.bench import training  # noqa: E402


def test_training_benchmark_rows_and_ratios(capsys):
    parser = argparse.ArgumentParser()
    training.add_arguments(parser)
    args = parser.parse_args(
        [
            "--models",
            "vgg16",
            "--batch",
            "2",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--compressions",
            "0.9",
            "--variants",
            "dense",
            "tucker",
            "tdlrt1",
            "--threads",
            "1",
        ]
    )
    args.quick, args.device = False, "cpu"
    threads = torch.get_num_threads()
    try:
        result = training.run(args)
    finally:
        torch.set_num_threads(threads)
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {"dense", "tucker@0.9", "tdlrt1@0.9"}
    assert rows["dense"]["compression"] == 0.0
    # the rank plan reaches the target within one rank step of the channel fraction
    assert 0.9 <= rows["tucker@0.9"]["compression"] < 0.92
    assert rows["tucker@0.9"]["params_state_MB/dense"] < 0.15
    assert rows["tdlrt1@0.9"]["recorded_MB"] > 0
    assert "tdlrt/tucker" in rows["tdlrt1@0.9"]
    paired = rows["tdlrt1@0.9"]["every_step_paired"]
    assert (
        paired["pairs"] == 1 and paired["median"] == rows["tdlrt1@0.9"]["every_step/tucker_paired"]
    )
    assert paired["tucker_ms_median"] > 0 and paired["tdlrt_ms_median"] > 0
    assert "tucker@0.9" in capsys.readouterr().out
