"""Divergence: a NaN/Inf loss or gradient stops the run without taking the step."""

import pytest

torch = pytest.importorskip("torch")

from tuckerflow.train import TrainConfig, TrainingDiverged, train  # noqa: E402

TINY = {
    "data": "digits",
    "batch_size": 64,
    "quiet": True,
    "device": "cpu",
    "test_fraction": 0.5,
    "threads": 1,
}


@pytest.mark.parametrize("method", ["dense", "tucker-fixed", "tdlrt"])
def test_divergence_stops_with_a_clear_error_and_keeps_the_last_checkpoint(
    tmp_path, method, monkeypatch
):
    import tuckerflow.train.loop as loop

    build = loop.build_model
    seen = {"train": 0}

    def build_poisoned(*args, **kwargs):
        # the 15th training forward (epoch 2: 12 steps per epoch) returns NaN logits
        model = build(*args, **kwargs)

        def hook(module, inputs, output):
            if module.training:
                seen["train"] += 1
                if seen["train"] >= 15:
                    return output * float("nan")
            return output

        model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(loop, "build_model", build_poisoned)
    out = tmp_path / "run"
    config = TrainConfig(**TINY, method=method, epochs=3, out=str(out))
    with pytest.raises(TrainingDiverged, match=r"diverged in epoch 2, step 3/12") as info:
        train(config)
    assert "holds epoch 1" in str(info.value) and "smaller learning rate" in str(info.value)
    payload = torch.load(out / "checkpoint.pt", weights_only=False)
    assert payload["epoch"] == 1
