"""``make gpu-check`` (backends/gpu_check.py): one line without a GPU, budgets, the summary."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "backends" / "gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", _PATH)
gpu_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_check)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(gpu_check, "_torch_cuda", lambda: None)
    monkeypatch.setattr(gpu_check, "_cupy_device", lambda: None)


def test_without_a_gpu_one_line_and_nothing_run(no_gpu, tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device" in err
    assert list(tmp_path.iterdir()) == []
    assert gpu_check.main(["--out", str(tmp_path), "--require"]) == 2


def test_parts_run_within_the_budget_and_are_summarised(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check, "_torch_cuda", lambda: "Fake GPU")
    monkeypatch.setattr(gpu_check, "_cupy_device", lambda: None)
    py = sys.executable
    fake = [
        ("ok", [py, "-c", "print('table')"], 0.4),
        ("fails", [py, "-c", "import sys; sys.exit(3)"], 0.3),
        ("slow", [py, "-c", "import time; time.sleep(30)"], 0.3),
    ]
    monkeypatch.setattr(gpu_check, "parts", lambda *a: fake)
    assert gpu_check.main(["--out", str(tmp_path), "--budget", "12"]) == 1
    summary = json.loads((tmp_path / "gpu-check.json").read_text())
    status = {r["part"]: r["status"] for r in summary["parts"]}
    assert status["ok"] == "ok" and status["fails"] == "failed (exit 3)"
    assert status["slow"].startswith("timed out") or status["slow"].startswith("skipped")
    assert summary["torch_device"] == "Fake GPU"
    assert (tmp_path / "gpu-check" / "ok.log").read_text().strip() == "table"
    assert "| fails | failed (exit 3) |" in (tmp_path / "gpu-check.md").read_text()


def test_the_real_parts_cover_tests_and_every_gpu_benchmark(tmp_path):
    names = [p[0] for p in gpu_check.parts(sys.executable, tmp_path, "GPU", "GPU")]
    assert {"tests", "training", "truncation-cuda", "integrators-cuda", "integrators-cupy"} <= set(
        names
    )
    tests = dict((p[0], p[1]) for p in gpu_check.parts(sys.executable, tmp_path, "GPU", None))
    assert tests["tests"][-3:] == ["-k", "cuda", "tests"]


def test_bad_budget_and_unknown_part(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(gpu_check, "_torch_cuda", lambda: "Fake GPU")
    assert gpu_check.main(["--budget", "0"]) == 2
    assert gpu_check.main(["--out", str(tmp_path), "--parts", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--budget" in err[0] and "nope" in err[1]


def test_the_parts_see_the_checkout_and_keep_the_callers_path(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check, "_torch_cuda", lambda: "Fake GPU")
    monkeypatch.setattr(gpu_check, "_cupy_device", lambda: None)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/opt/site", str(gpu_check.ROOT)]))
    py = sys.executable
    show = [py, "-c", "import os; print(os.environ['PYTHONPATH'])"]
    monkeypatch.setattr(gpu_check, "parts", lambda *a: [("path", show, 1.0)])
    assert gpu_check.main(["--out", str(tmp_path), "--budget", "30"]) == 0
    seen = (tmp_path / "gpu-check" / "path.log").read_text().strip()
    assert seen.split(os.pathsep) == [str(gpu_check.ROOT), "/opt/site"]


def test_a_missing_package_is_one_line_naming_it_and_nothing_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(gpu_check, "_torch_cuda", lambda: "Fake GPU")
    monkeypatch.setattr(gpu_check, "_cupy_device", lambda: None)
    needed = (*gpu_check.NEEDED, ("no_such_module_xyz", "no-such-dist", "backends/test.txt"))
    monkeypatch.setattr(gpu_check, "NEEDED", needed)
    ran = []
    monkeypatch.setattr(gpu_check, "parts", lambda *a: ran.append(a) or [])
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such-dist" in err and "backends/test.txt" in err
    assert "tensorly," not in err  # what is installed is not named
    assert ran == [] and not (tmp_path / "out").exists()
