"""``tuckerflow train`` on the command line."""

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")

from tuckerflow.cli import main  # noqa: E402


def test_train_command_writes_outputs_and_prints_table(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", "digits", "--epochs", "1", "--device", "cpu", "--out", str(out)]
    assert main([*argv, "--test-fraction", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "compression" in printed and "conv2" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "dense" and summary["epochs"] == 1
    assert (out / "training.png").exists() and (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("tau", ["0", "1", "1.5", "-0.1", "abc"])
def test_tau_outside_open_unit_interval_is_a_usage_error(tau, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--tau", tau])
    assert exit_info.value.code == 2
    assert "tau" in capsys.readouterr().err


def test_mismatched_npz_is_reported_with_exit_status_2(tmp_path, capsys):
    path = tmp_path / "mine.npz"
    np.savez(path, x=np.zeros((4, 1, 8, 8)), y=np.zeros(3, dtype=int))
    out = tmp_path / "run"
    assert main(["train", "--data", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "mine.npz: len(x)=4 differs from len(y)=3" in err
    assert not out.exists()


def test_python_dash_m_tuckerflow_shows_the_train_options():
    result = subprocess.run(
        [sys.executable, "-m", "tuckerflow", "train", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    for option in ("--data", "--model", "--method", "--tau", "--resume", "--device"):
        assert option in result.stdout


def test_demo_prints_dense_and_tdlrt_side_by_side():
    from tuckerflow.demo import format_comparison

    def summary(accuracy, rate, params, ranks, tau, rate_conv=0.0):
        return {
            "test_accuracy": accuracy,
            "compression_rate": rate,
            "compression_rate_conv": rate_conv,
            "parameters": {"model": params},
            "time_s": 12.5,
            "ranks": ranks,
            "tucker_layers": [k for k in ranks if k != "fc2"],
            "tau": tau,
        }

    text = format_comparison(
        {
            "dense": summary(0.981, 0.0, 431080, {"fc1": [500, 800]}, None),
            "tdlrt": summary(0.975, 0.93, 30172, {"fc1": [12, 12], "fc2": [10, 500]}, 0.2, 0.27),
        }
    )
    lines = text.splitlines()
    assert lines[1].split()[-2:] == ["98.10", "97.50"]
    assert lines[2].split()[-2:] == ["0.0", "93.0"]
    assert lines[3].split()[-2:] == ["0.0", "27.0"]
    assert lines[4].split()[-2:] == ["431080", "30172"]
    assert "fc1 (12, 12)" in text and "fc2" not in text.splitlines()[-1]


def test_tdlrt_from_the_command_line_and_resume_checks(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--data", "digits", "--device", "cpu", "--threads", "1", "--quiet"]
    common += ["--test-fraction", "0.7", "--out", str(out)]
    argv = ["train", *common, "--method", "tdlrt", "--tau", "0.2", "--rank", "8"]
    assert main([*argv, "--epochs", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "tdlrt" and summary["tau"] == 0.2
    assert summary["tucker_layers"] == ["conv1", "conv2", "fc1"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # another method cannot continue this run; nothing in the folder changes
    assert main(["train", *common, "--method", "dense", "--epochs", "2", "--resume"]) == 2
    assert "written for another model (method: checkpoint 'tdlrt'" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # the same run continues
    assert main([*argv, "--epochs", "2", "--resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["history"][-1]["epoch"] == 2


def test_diverging_run_exits_with_status_1_and_a_message(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", "digits", "--lr", "1e6", "--epochs", "1", "--quiet"]
    assert main([*argv, "--method", "tdlrt", "--out", str(out)]) == 1
    assert "training diverged in epoch 1" in capsys.readouterr().err
