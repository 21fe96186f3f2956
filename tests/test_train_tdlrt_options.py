"""The training job's options for TDLRT's collapse protection and the initial core scale."""

import pytest

torch = pytest.importorskip("torch")

from tuckerflow.cli import build_parser, main  # noqa: E402
from tuckerflow.nn import TuckerLayer  # noqa: E402
from tuckerflow.train import TrainConfig, train  # noqa: E402
from tuckerflow.train.build import tuckerize_layers  # noqa: E402
from tuckerflow.train.config import resolve_freeze_after  # noqa: E402
from tuckerflow.train.models import build_model  # noqa: E402

TINY = {
    "data": "digits",
    "batch_size": 64,
    "quiet": True,
    "device": "cpu",
    "test_fraction": 0.5,
    "threads": 1,
}


def _parse(*flags):
    return build_parser().parse_args(["train", *flags])


def test_the_flags_reach_the_config():
    args = _parse(
        "--update-every",
        "5",
        "--no-defer-truncation",
        "--no-truncation-guard",
        "--init-scale",
        "0.1",
        "--freeze-after",
        "auto",
        "--limit-truncation-rate",
    )
    assert args.limit_truncation_rate is True
    assert (args.update_every, args.defer_truncation, args.truncation_guard) == (5, False, False)
    assert (args.init_scale, args.freeze_after) == (0.1, "auto")
    defaults = _parse()
    assert (defaults.update_every, defaults.defer_truncation, defaults.truncation_guard) == (
        "auto",
        True,
        True,
    )
    assert defaults.init_scale == 1.0 and defaults.freeze_after == "auto"
    assert _parse("--truncation-budget").truncation_budget is True
    assert defaults.truncation_budget is None and defaults.limit_truncation_rate is False
    assert _parse("--no-truncation-budget").truncation_budget is False


@pytest.mark.parametrize(
    ("flags", "name"),
    [
        (["--update-every", "0"], "update_every"),
        (["--update-every", "often"], "update_every"),
        (["--freeze-after", "-1"], "freeze_after"),
        (["--init-scale", "x"], "init-scale"),
    ],
)
def test_bad_flags_are_usage_errors(flags, name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *flags])
    assert exit_info.value.code == 2
    assert name in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"init_scale": 0.0}, "init_scale=0.0 must be a positive finite number"),
        ({"init_scale": float("inf")}, "init_scale=inf must be a positive finite number"),
        ({"update_every": 0}, "update_every=0 must be 'auto' or an integer >= 1"),
        ({"defer_truncation": "yes"}, "defer_truncation='yes' must be True or False"),
        ({"truncation_guard": 1}, "truncation_guard=1 must be True or False"),
        (
            {"truncation_guard": False, "limit_truncation_rate": True},
            "limit_truncation_rate=True needs truncation_guard=True",
        ),
        (
            {"truncation_guard": False, "truncation_budget": True},
            "truncation_budget=True needs truncation_guard=True",
        ),
        (
            {"limit_truncation_rate": True, "truncation_budget": True},
            "truncation_budget=True and limit_truncation_rate=True exclude each other",
        ),
        ({"freeze_after": "later"}, "freeze_after='later' must be non-negative"),
    ],
)
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**options).validate()


def test_freeze_after_auto_keeps_the_last_fifth_of_the_epochs_at_fixed_ranks():
    assert [resolve_freeze_after("auto", e) for e in (1, 2, 5, 6, 10, 15)] == [
        None,
        None,
        4,
        5,
        8,
        12,
    ]
    assert resolve_freeze_after(3, 10) == 3 and resolve_freeze_after(None, 10) is None


@pytest.mark.parametrize("scale", [0.01, 10.0])
def test_init_scale_multiplies_the_initial_cores(scale):
    def cores(config):
        torch.manual_seed(0)
        model = build_model("lenet5", (1, 8, 8), 10)
        model = tuckerize_layers(model, config, ["conv1", "fc1"])
        return {
            n: m.core.detach().clone()
            for n, m in model.named_modules()
            if isinstance(m, TuckerLayer)
        }

    plain = cores(TrainConfig(rank=4))
    scaled = cores(TrainConfig(rank=4, init_scale=scale))
    assert sorted(plain) == ["conv1", "fc1"]
    for name in plain:
        torch.testing.assert_close(scaled[name], scale * plain[name], rtol=1e-6, atol=0)


def test_an_epoch_ending_inside_an_update_interval_reports_truncated_ranks(tmp_path):
    # 12 steps per epoch on digits with update_every=5: the basis update of step 10 would
    # hold augmented bases past the end of the epoch; the epoch ends with its truncation, so
    # the history, the summary and the checkpoint hold the truncated ranks, and resume
    # continues exactly as a straight run does
    options = {**TINY, "method": "tdlrt", "rank": 8, "tau": 0.3, "update_every": 5}
    straight = train(TrainConfig(**options, epochs=2, out=str(tmp_path / "a")))
    first = train(TrainConfig(**options, epochs=1, out=str(tmp_path / "b")))
    saved = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["tdlrt"]
    assert saved["pending"] == {}
    stored = {name: list(s["core"]) for name, s in saved["shapes"].items()}
    assert stored == {n: first["ranks"][n] for n in stored}
    assert first["history"][-1]["ranks"] == first["ranks"]
    # without the truncation at the end of the epoch the ranks would be the augmented ones
    ranks = straight["history"][1]["ranks"]
    assert all(max(ranks[n]) <= 8 for n in stored), ranks
    resumed = train(TrainConfig(**options, epochs=2, out=str(tmp_path / "b"), resume=True))
    assert resumed["ranks"] == straight["ranks"]
    assert resumed["test_loss"] == pytest.approx(straight["test_loss"], rel=1e-5)
