"""Checkpoints: checksum and version verified, and resume refuses another run's options or data."""

import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tuckerflow import __version__  # noqa: E402
from tuckerflow.train import TrainConfig, load_checkpoint, train  # noqa: E402
from tuckerflow.train.atomic import atomic_save  # noqa: E402
from tuckerflow.train.checkpoint import content_digest, save_checkpoint  # noqa: E402

TINY = {
    "data": "digits",
    "batch_size": 64,
    "quiet": True,
    "device": "cpu",
    "test_fraction": 0.5,
    "threads": 1,
}


def _files(folder):
    return sorted(os.listdir(folder))


def _snapshot(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished one-epoch dense run on digits: its folder and summary (do not modify)."""
    out = tmp_path_factory.mktemp("finished")
    summary = train(TrainConfig(**TINY, epochs=1, out=str(out)))
    return out, summary


@pytest.fixture
def run_copy(finished, tmp_path):
    """A private copy of the finished run's folder."""
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    return out


def test_checkpoint_records_format_version_and_a_content_checksum(finished):
    payload = torch.load(finished[0] / "checkpoint.pt", weights_only=True)
    assert payload["format"] == 2 and payload["tuckerflow_version"] == __version__
    digest = payload.pop("sha256")
    assert len(digest) == 64 and digest == content_digest(payload)
    assert len(payload["data_digest"]) == 64
    assert load_checkpoint(finished[0] / "checkpoint.pt")["epoch"] == 1


def test_content_digest_sees_every_value_and_its_type():
    state = {"w": torch.arange(6.0).reshape(2, 3), "lr": 0.1, "steps": 3, "name": "a"}
    reference = content_digest(state)
    assert content_digest({k: (v.clone() if k == "w" else v) for k, v in state.items()}) == (
        reference
    )
    w = state["w"].clone()
    w.view(torch.int32)[1, 2] ^= 1  # one flipped bit
    variants = [
        {**state, "w": w},
        {**state, "w": state["w"].double()},
        {**state, "w": state["w"].reshape(3, 2)},
        {**state, "lr": 0.1 + 1e-17 + 1e-16},
        {**state, "steps": 3.0},
        {**state, "name": "b"},
        {"lr": 0.1, "w": state["w"], "steps": 3, "name": "a"},  # order of the entries
        {**state, "extra": None},
        {**state, "w": [1.0]},
        {**state, "w": (1.0,)},
        {**state, "w": {1, 2}},
        {**state, "w": 1j},
    ]
    assert content_digest({"s": {"a", "b", 3}}) == content_digest({"s": {3, "b", "a"}})
    digests = {content_digest(v) for v in variants}
    assert reference not in digests and len(digests) == len(variants)
    with pytest.raises(TypeError, match=r"checkpoint\['bad'\] holds a object"):
        content_digest({"bad": object()})


def test_flipped_bytes_are_refused_and_the_summary_is_kept(run_copy):
    before = _snapshot(run_copy)
    path = run_copy / "checkpoint.pt"
    data = bytearray(before["checkpoint.pt"])
    middle = len(data) // 2  # inside the largest tensor (fc1, 400 kB of the file)
    for k in range(16):
        data[middle + k] ^= 0xFF
    path.write_bytes(bytes(data))
    config = TrainConfig(**TINY, epochs=2, out=str(run_copy), resume=True)
    with pytest.raises(ValueError, match=r"checkpoint\.pt is damaged: its content has SHA-256"):
        train(config)
    after = _snapshot(run_copy)
    assert after["summary.json"] == before["summary.json"]
    assert after == {**before, "checkpoint.pt": bytes(data)}


def test_a_damaged_file_never_loads_as_different_content(finished, tmp_path):
    original = (finished[0] / "checkpoint.pt").read_bytes()
    stored = torch.load(finished[0] / "checkpoint.pt", weights_only=True)
    reference = content_digest(stored)
    path = tmp_path / "checkpoint.pt"
    rng = np.random.default_rng(0)
    refused = 0
    for position in [*rng.integers(0, len(original), 24), len(original) - 30, 40]:
        data = bytearray(original)
        data[position] ^= 0x5A
        path.write_bytes(bytes(data))
        try:
            payload = load_checkpoint(path)
        except ValueError as err:
            assert "damaged" in str(err) or "not a readable" in str(err)
            refused += 1
            continue
        # a flip in zip padding leaves the content, and so the checksum, intact
        payload["sha256"] = stored["sha256"]
        assert content_digest(payload) == reference
    assert refused >= 20
    path.write_bytes(original[: len(original) // 3])
    with pytest.raises(ValueError, match=r"is not a readable tuckerflow checkpoint"):
        load_checkpoint(path)


def test_other_version_and_old_format_are_refused(finished, tmp_path):
    payload = torch.load(finished[0] / "checkpoint.pt", weights_only=True)
    del payload["sha256"], payload["format"], payload["tuckerflow_version"]
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(payload, path)
    assert load_checkpoint(path)["epoch"] == 1
    stored = torch.load(path, weights_only=True)
    stored["tuckerflow_version"] = "0.0.1"
    stored["sha256"] = content_digest({k: v for k, v in stored.items() if k != "sha256"})
    atomic_save(stored, path)
    with pytest.raises(ValueError, match=rf"written by tuckerflow 0\.0\.1, this is {__version__}"):
        load_checkpoint(path)
    atomic_save({**payload, "format": 1}, path)
    with pytest.raises(
        ValueError, match=r"has checkpoint format 1; this tuckerflow .* reads format 2"
    ):
        load_checkpoint(path)
    atomic_save({"step": 1}, path)
    with pytest.raises(ValueError, match=r"is not a tuckerflow training checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": 3}, r"seed: checkpoint 0 vs this run 3"),
        ({"split_seed": 5}, r"split_seed: checkpoint None vs this run 5"),
        ({"val_fraction": 0.2}, r"val_fraction: checkpoint 0.1 vs this run 0.2"),
        ({"test_fraction": 0.4}, r"test_fraction: checkpoint 0.5 vs this run 0.4"),
        ({"tau": 0.3}, r"tau: checkpoint 0.1 vs this run 0.3"),
        ({"rank": 16}, r"rank: checkpoint 32 vs this run 16"),
        ({"min_rank": 2}, r"min_rank: checkpoint 1 vs this run 2"),
        ({"max_rank": 9}, r"max_rank: checkpoint None vs this run 9"),
        ({"optimizer": "adam"}, r"optimizer: checkpoint 'momentum' vs this run 'adam'"),
        ({"lr": 0.01}, r"lr: checkpoint 0.05 vs this run 0.01"),
        ({"batch_size": 32}, r"batch_size: checkpoint 64 vs this run 32"),
        ({"scheduler": "cosine"}, r"scheduler: checkpoint 'none' vs this run 'cosine'"),
        ({"model": "vgg_small"}, r"another model \(model: checkpoint 'lenet5' vs this run"),
        ({"method": "tdlrt"}, r"another model \(method: checkpoint 'dense' vs this run 'tdlrt'"),
        ({"epochs": 0.5}, r"epochs=0.5 must be a positive integer"),
        (
            {"seed": 1, "method": "tdlrt"},
            r"for another model \(method: .*\) and with other options \(seed: checkpoint 0",
        ),
    ],
)
def test_resume_refuses_a_change_of_what_defines_the_run(run_copy, change, message):
    before = _snapshot(run_copy)
    config = TrainConfig(**{**TINY, "epochs": 2, **change}, out=str(run_copy), resume=True)
    with pytest.raises(ValueError, match=message):
        train(config)
    assert _snapshot(run_copy) == before


def test_resume_refuses_other_data_but_follows_a_moved_file(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((60, 8, 8)).astype(np.float32)
    y = np.arange(60) % 3
    np.savez(tmp_path / "a.npz", x=x, y=y)
    out = tmp_path / "run"
    options = {**TINY, "test_fraction": 0.3, "batch_size": 16, "data": str(tmp_path / "a.npz")}
    train(TrainConfig(**options, epochs=1, out=str(out)))
    before = _snapshot(out)
    x[0, 0, 0] += 1.0
    np.savez(tmp_path / "changed.npz", x=x, y=y)
    options["data"] = str(tmp_path / "changed.npz")
    config = TrainConfig(**options, epochs=2, out=str(out), resume=True)
    with pytest.raises(ValueError, match=r"other data \(data: checkpoint '.*a\.npz' with SHA-256"):
        train(config)
    assert _snapshot(out) == before
    os.replace(tmp_path / "a.npz", tmp_path / "moved.npz")
    options["data"] = str(tmp_path / "moved.npz")
    config = TrainConfig(**options, epochs=2, out=str(out), resume=True)
    assert train(config)["history"][-1]["epoch"] == 2


def test_epochs_may_grow_but_not_shrink_below_the_completed_or_stretch_a_cosine_schedule(
    tmp_path,
):
    out = tmp_path / "run"
    options = {**TINY, "test_fraction": 0.75}
    train(TrainConfig(**options, epochs=2, out=str(out)))
    before = _snapshot(out)
    with pytest.raises(ValueError, match=r"epochs: checkpoint 2 vs this run 1 \(the checkpoint "):
        train(TrainConfig(**options, epochs=1, out=str(out), resume=True))
    assert _snapshot(out) == before
    # a free option (quiet) may change; a leftover temporary file of a killed write goes
    (out / ".tmp-abcd1234.pt").write_bytes(b"partial")
    config = TrainConfig(**{**options, "quiet": False}, epochs=3, out=str(out))
    config.resume = True
    summary = train(config)
    assert [h["epoch"] for h in summary["history"]] == [0, 1, 2, 3]
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "summary.json", "training.png"]

    cosine = tmp_path / "cosine"
    train(TrainConfig(**options, scheduler="cosine", epochs=1, out=str(cosine)))
    config = TrainConfig(**options, scheduler="cosine", epochs=2, out=str(cosine), resume=True)
    with pytest.raises(ValueError, match=r"epochs: .* \(the cosine schedule spans all epochs\)"):
        train(config)


def test_freeze_after_may_change_only_for_epochs_not_yet_run(tmp_path):
    options = {**TINY, "method": "tdlrt", "rank": 8, "tau": 0.3, "test_fraction": 0.75}
    out = tmp_path / "run"
    train(TrainConfig(**options, epochs=2, freeze_after=None, out=str(out)))
    with pytest.raises(ValueError, match=r"freeze_after: checkpoint None vs this run 1 \(the "):
        train(TrainConfig(**options, epochs=3, freeze_after=1, out=str(out), resume=True))
    summary = train(TrainConfig(**options, epochs=3, freeze_after=2, out=str(out), resume=True))
    ranks = [h["ranks"] for h in summary["history"]]
    assert ranks[3] == ranks[2]  # epoch 3 ran at the ranks frozen after epoch 2
    saved = json.loads((out / "summary.json").read_text())["config"]
    assert saved["freeze_after"] == 2


def test_resume_accepts_the_folder_of_a_checkpoint(finished, tmp_path):
    out = tmp_path / "continued"
    config = TrainConfig(**TINY, epochs=2, out=str(out), resume=str(finished[0]))
    summary = train(config)
    assert [h["epoch"] for h in summary["history"]] == [0, 1, 2]
    assert summary["history"][1] == finished[1]["history"][1]


def test_resume_continues_bit_for_bit(tmp_path):
    straight = train(TrainConfig(**TINY, epochs=2, out=str(tmp_path / "a")))
    train(TrainConfig(**TINY, epochs=1, out=str(tmp_path / "b")))
    resumed = train(TrainConfig(**TINY, epochs=2, out=str(tmp_path / "b"), resume=True))
    # Same seed, same split, same batch order and RNG state after epoch 1: identical results.
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    assert resumed["test_loss"] == straight["test_loss"]
    assert len(resumed["history"]) == 3
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_resume_from_another_model_raises_and_overwrites_nothing(tmp_path):
    train(TrainConfig(**TINY, epochs=1, out=str(tmp_path)))
    before = {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)}
    config = TrainConfig(**TINY, model="vgg_small", epochs=2, out=str(tmp_path), resume=True)
    with pytest.raises(ValueError, match=r"another model \(model: checkpoint 'lenet5' vs"):
        train(config)
    after = {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)}
    assert after == before


def test_existing_checkpoint_is_not_overwritten_by_default(tmp_path):
    train(TrainConfig(**TINY, epochs=1, out=str(tmp_path)))
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        train(TrainConfig(**TINY, epochs=1, out=str(tmp_path), seed=3))
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_tdlrt_resume_across_rank_changes_matches_a_straight_run(tmp_path):
    options = {**TINY, "method": "tdlrt", "rank": 10, "tau": 0.3, "test_fraction": 0.75}
    straight = train(TrainConfig(**options, epochs=2, out=str(tmp_path / "a")))
    first = train(TrainConfig(**options, epochs=1, out=str(tmp_path / "b")))
    assert first["ranks"] != first["history"][0]["ranks"]  # ranks did change before the cut
    resumed = train(TrainConfig(**options, epochs=2, out=str(tmp_path / "b"), resume=True))
    assert resumed["ranks"] == straight["ranks"]
    assert resumed["test_loss"] == pytest.approx(straight["test_loss"], rel=1e-5)


def test_fingerfingerprintarguments_are_checked_not_rounded():
    from tuckerflow.train import lenet5, model_fingerprint

    net = lenet5(1, 8, 3)
    fingerprint = model_fingerprint(TrainConfig(), net, (1, np.int64(8), 8), 3)
    assert fingerprint["input_shape"] == [1, 8, 8] and fingerprint["num_classes"] == 3
    # model_fingerprint(None, ...) raised AttributeError; input_shape (1, 8.5, 8) was [1, 8, 8]
    cases = [
        ((None, net, (1, 8, 8), 3), TypeError, "config must be a TrainConfig"),
        ((TrainConfig(), "net", (1, 8, 8), 3), TypeError, "dense_model must be a torch.nn"),
        ((TrainConfig(), net, (1, 8.5, 8), 3), TypeError, r"input_shape\[1\]=8.5 must be an"),
        ((TrainConfig(), net, None, 3), TypeError, "input_shape=None must be a sequence"),
        ((TrainConfig(), net, (1, 8, 8), 0.5), TypeError, "num_classes=0.5 must be an integer"),
        ((TrainConfig(), net, (1, 8, 8), 1), ValueError, "num_classes=1 must be at least 2"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            model_fingerprint(*args)
