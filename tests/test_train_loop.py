"""The training loop: summaries, figures, Tucker methods and options (tiny runs on digits)."""

import json
import math
import os

import pytest

torch = pytest.importorskip("torch")

from tuckerflow.train import TrainConfig, train  # noqa: E402

# Tiny runs: 8×8 digits, one or two epochs, a few hundred training images.
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


def test_dense_run_writes_summary_figure_and_checkpoint(tmp_path):
    threads = torch.get_num_threads()
    other = 1 if threads > 1 else 2
    summary = train(TrainConfig(**{**TINY, "threads": other}, epochs=1, out=str(tmp_path)))
    assert torch.get_num_threads() == threads  # the thread count is restored
    assert _files(tmp_path) == ["checkpoint.pt", "summary.json", "training.png"]
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for key in ("test_accuracy", "val_accuracy", "compression_rate", "ranks", "time_s"):
        assert key in on_disk
    # Ten classes: one epoch of SGD with momentum does far better than chance (10 %).
    assert 0.3 < on_disk["test_accuracy"] <= 1.0
    assert on_disk["test_accuracy"] == summary["test_accuracy"]
    assert on_disk["compression_rate"] == 0.0 and on_disk["compression_rate_model"] == 0.0
    assert on_disk["ranks"]["conv2"] == [50, 20, 5, 5]
    assert [h["epoch"] for h in on_disk["history"]] == [0, 1]
    assert (tmp_path / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"tau": 0.0}, r"tau=0.0 must lie in the open interval \(0, 1\)"),
        ({"tau": 1.0}, r"tau=1.0 must lie in the open interval \(0, 1\)"),
        ({"tau": -0.2}, r"tau=-0.2 must lie"),
        ({"method": "lora"}, r"method='lora' is not one of"),
        ({"optimizer": "lbfgs"}, r"optimizer='lbfgs' is not one of"),
        ({"epochs": 0}, r"epochs=0 must be a positive integer"),
        ({"rank": 1.5}, r"rank=1.5 as a fraction must lie in \(0, 1\]"),
        ({"max_rank": 0}, r"max_rank=0 is below min_rank=1"),
    ],
)
def test_bad_options_raise_before_anything_is_written(tmp_path, option, message):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        train(TrainConfig(**{**TINY, **option}, out=str(out)))
    assert not out.exists()


def test_bad_data_file_raises_before_anything_is_written(tmp_path):
    import numpy as np

    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((6, 8, 8)), y=np.zeros(5, dtype=int))
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"bad\.npz: len\(x\)=6 differs from len\(y\)=5"):
        train(TrainConfig(**{**TINY, "data": str(path)}, out=str(out)))
    assert not out.exists()


def test_tucker_fixed_keeps_its_ranks_and_reports_compression(tmp_path):
    ranks = {"conv1": (4, 1, 3, 3), "conv2": (8, 6, 3, 3), "fc1": (10, 10)}
    summary = train(TrainConfig(**TINY, method="tucker-fixed", epochs=1, ranks=ranks))
    assert summary["tucker_layers"] == ["conv1", "conv2", "fc1"]
    for name, rank in ranks.items():
        assert summary["ranks"][name] == list(rank)
        assert [h["ranks"][name] for h in summary["history"]] == [list(rank)] * 2
    # conv parameters: dense 20·25+20 + 50·20·25+50; Tucker: core + factors + the same biases.
    conv_after = (4 * 9 + 20 * 4 + 5 * 3 * 2 + 20) + (8 * 6 * 9 + 50 * 8 + 20 * 6 + 5 * 3 * 2 + 50)
    conv_before = 20 * 25 + 20 + 50 * 20 * 25 + 50
    assert summary["parameters"]["conv"] == conv_after
    assert summary["compression_rate_conv"] == pytest.approx(1 - conv_after / conv_before)
    assert 0.0 < summary["compression_rate"] < 1.0
    assert summary["test_loss"] < 2.4  # below the ≈ ln 10 = 2.30 of chance plus a margin


def test_tdlrt_run_adapts_ranks_within_bounds(tmp_path):
    summary = train(
        TrainConfig(
            **TINY, method="tdlrt", epochs=2, rank=8, max_rank=12, tau=0.2, out=str(tmp_path)
        )
    )
    shapes = {"conv1": (20, 1, 5, 5), "conv2": (50, 20, 5, 5), "fc1": (500, 200)}
    for name, shape in shapes.items():
        ranks = summary["ranks"][name]
        # modes of size > 3 are factorized: the cap 12 holds there.
        assert all(1 <= r <= min(n, 12) or r == n == 1 for r, n in zip(ranks, shape))
    assert summary["history"][0]["ranks"]["fc1"] == [8, 8]
    assert 0.5 < summary["compression_rate"] < 1.0
    assert summary["tau"] == 0.2
    assert summary["test_accuracy"] > 0.2


def test_tdlrt_trains_under_bfloat16_autocast():
    # vgg_small: 3×3 kernels, whose spatial modes Tucker layers keep full by default
    options = {**TINY, "model": "vgg_small", "test_fraction": 0.7, "lr": 0.05}
    config = TrainConfig(**options, method="tdlrt", rank=8, epochs=1, autocast="bf16")
    summary = train(config)
    assert math.isfinite(summary["test_loss"])
    assert len(summary["tucker_layers"]) == 7  # six convolutions and the hidden Linear
    assert 0.0 < summary["compression_rate"] < 1.0


def test_transform_baseline_and_conv_only_factorization():
    def low_rank_fc1(model):
        fc = model.fc1
        model.fc1 = torch.nn.Sequential(
            torch.nn.Linear(fc.in_features, 4, bias=False), torch.nn.Linear(4, fc.out_features)
        )
        return model

    summary = train(TrainConfig(**TINY, epochs=1), transform=low_rank_fc1)
    dense_fc1 = 500 * 200 + 500
    after_fc1 = 200 * 4 + 4 * 500 + 500
    assert summary["parameters"]["dense_linear"] - summary["parameters"]["linear"] == (
        dense_fc1 - after_fc1
    )
    assert summary["compression_rate_conv"] == 0.0 and summary["compression_rate"] > 0.5
    with pytest.raises(ValueError, match=r"transform needs method='dense'"):
        train(TrainConfig(**TINY, method="tdlrt", epochs=1), transform=low_rank_fc1)

    summary = train(TrainConfig(**TINY, method="tucker-fixed", factorize="conv", rank=4, epochs=1))
    assert summary["tucker_layers"] == ["conv1", "conv2"]
    assert summary["ranks"]["fc1"] == [500, 200]


def test_frozen_ranks_stay_fixed_after_freeze_after_epochs():
    options = {**TINY, "method": "tdlrt", "rank": 10, "tau": 0.3, "test_fraction": 0.75}
    summary = train(TrainConfig(**options, epochs=2, freeze_after=1))
    ranks = [h["ranks"] for h in summary["history"]]
    assert ranks[1] != ranks[0]  # epoch 1 adapts
    assert ranks[2] == ranks[1]  # epoch 2 runs at frozen ranks
    with pytest.raises(ValueError, match="freeze_after=-1 must be non-negative"):
        train(TrainConfig(**options, freeze_after=-1))


def test_evaluate_checks_its_arguments():
    from tuckerflow.train import evaluate

    net = torch.nn.Linear(4, 3, dtype=torch.float64)
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    loss, accuracy = evaluate(net, x, y, batch_size=4)
    with torch.no_grad():
        logits = net(x)
    want = float(torch.nn.functional.cross_entropy(logits, y))
    assert loss == pytest.approx(want, rel=1e-12)
    assert accuracy == float((logits.argmax(1) == y).double().mean())
    # batch_size=-1 returned (0.0, 0.0) (no batch ran), labels beyond the outputs raised an
    # IndexError inside cross_entropy, model=None an AttributeError
    cases = [
        ((net, x, y), {"batch_size": -1}, ValueError, "batch_size=-1 must be at least 1"),
        ((net, x, y), {"batch_size": 2.7}, TypeError, "batch_size=2.7 must be an integer"),
        ((None, x, y), {}, TypeError, "model must be a torch.nn.Module"),
        ((net, x.numpy(), y), {}, TypeError, "evaluate: x must be a torch.Tensor"),
        ((net, x, y[:5]), {}, ValueError, r"x has shape \(6, 4\) but y holds 5 labels"),
        ((net, x, y.double()), {}, ValueError, "y must hold integer class labels"),
        ((net, x, y + 1), {}, ValueError, r"labels in \[1, 3\] but the model scores 3 classes"),
        ((net, x[:0], y[:0]), {}, ValueError, "the set holds no examples"),
    ]
    for args, kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            evaluate(*args, **kwargs)
    assert net.training  # the mode the model had before the refused calls
