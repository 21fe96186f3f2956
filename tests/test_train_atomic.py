"""Atomic writes: a reader sees the old file or the complete new one; killed writes are swept."""

import os

import pytest

torch = pytest.importorskip("torch")

from tuckerflow.train import atomic_save, plot_history  # noqa: E402
from tuckerflow.train.atomic import atomic_write_text, remove_stale_temporaries  # noqa: E402


def _files(folder):
    return sorted(os.listdir(folder))


def test_atomic_save_leaves_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "state.pt"
    atomic_save({"step": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        atomic_save({"step": 2, "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert _files(tmp_path) == ["state.pt"]


def test_text_and_figure_writes_are_atomic_too(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    atomic_write_text("{}", path)
    with pytest.raises(TypeError):
        atomic_write_text(None, path)  # fails inside the write
    assert path.read_text() == "{}"
    history = [{"epoch": 0, "val_accuracy": 0.1, "ranks": {"fc": [3, 2]}}]
    history.append({**history[0], "epoch": 1, "train_accuracy": 0.5})
    figure = tmp_path / "training.png"
    figure.write_bytes(b"old")
    matplotlib = pytest.importorskip("matplotlib.figure")

    def disk_full(self, handle, **kwargs):
        handle.write(b"partial")
        raise OSError("no space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(matplotlib.Figure, "savefig", disk_full)
        with pytest.raises(OSError, match="no space"):
            plot_history(history, figure)
    assert figure.read_bytes() == b"old"
    plot_history(history, figure)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _files(tmp_path) == ["summary.json", "training.png"]


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    for name in (".tmp-a1.pt", ".tmp-b2.json", ".tmp-c3.png", ".tmp-notes.txt", "keep.pt"):
        (tmp_path / name).write_bytes(b"x")
    assert remove_stale_temporaries(str(tmp_path)) == [".tmp-a1.pt", ".tmp-b2.json", ".tmp-c3.png"]
    assert _files(tmp_path) == [".tmp-notes.txt", "keep.pt"]
    assert remove_stale_temporaries(str(tmp_path)) == []
