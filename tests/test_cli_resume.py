"""A killed ``tuckerflow train --method tdlrt --scheduler cosine`` run resumes bit for bit."""

import json
import shutil
import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch")

from tuckerflow.cli import main  # noqa: E402

ARGS = [
    "train",
    "--data",
    "digits",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--quiet",
    "--test-fraction",
    "0.8",
    "--method",
    "tdlrt",
    "--tau",
    "0.2",
    "--rank",
    "8",
    "--optimizer",
    "momentum",
    "--scheduler",
    "cosine",
    "--epochs",
    "3",
]

# wall-clock bookkeeping differs between runs; everything else must be identical
_TIMES = {"time_s", "time_per_epoch_s"}


def _without_times(summary):
    out = {k: v for k, v in summary.items() if k not in _TIMES | {"config", "history"}}
    out["history"] = [{k: v for k, v in h.items() if k != "time_s"} for h in summary["history"]]
    out["config"] = {k: v for k, v in summary["config"].items() if k not in ("out", "resume")}
    return out


def _epoch_of(path):
    try:
        return torch.load(path, weights_only=True)["epoch"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return 0


def _assert_same_tensors(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same_tensors(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same_tensors(x, y)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    else:
        assert a == b


def test_a_killed_cosine_run_resumes_bit_identical(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main([*ARGS, "--out", str(straight)]) == 0
    cmd = [sys.executable, "-m", "tuckerflow", *ARGS, "--out", str(killed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    saved = tmp_path / "epoch1.pt"
    try:
        deadline = time.monotonic() + 120
        while _epoch_of(killed / "checkpoint.pt") < 1:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.01)
        # the checkpoint is replaced atomically after each epoch: keep the one of epoch 1+
        shutil.copy(killed / "checkpoint.pt", saved)
        proc.kill()
    finally:
        proc.wait()
        proc.stderr.close()
    cut = torch.load(saved, weights_only=True)["epoch"]
    assert cut in (1, 2)
    assert main([*ARGS, "--out", str(killed), "--resume", str(saved)]) == 0
    a = json.loads((straight / "summary.json").read_text())
    b = json.loads((killed / "summary.json").read_text())
    assert _without_times(a) == _without_times(b)
    assert [h["lr"] for h in a["history"]] == [h["lr"] for h in b["history"]]
    ca = torch.load(straight / "checkpoint.pt", weights_only=True)
    cb = torch.load(killed / "checkpoint.pt", weights_only=True)
    for key in ("model", "tdlrt", "scheduler", "batch_order", "torch_rng"):
        _assert_same_tensors(ca[key], cb[key])
