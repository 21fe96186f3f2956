"""The options of a run: one definition feeds TrainConfig, its validation and the CLI parser."""

import dataclasses
import math

import pytest

from tuckerflow.cli import build_parser
from tuckerflow.train.config import MODEL_NAMES, RESUME_RULES, TrainConfig, cli_fields

# The flags of `tuckerflow train` as they were when the parser was written by hand: a contract.
FLAGS = {
    "--data": "mnist5k",
    "--model": "lenet5",
    "--method": "dense",
    "--val-fraction": 0.1,
    "--test-fraction": 0.2,
    "--epochs": 5,
    "--batch-size": 64,
    "--lr": 0.05,
    "--optimizer": "momentum",
    "--momentum": 0.9,
    "--weight-decay": 0.0,
    "--scheduler": "none",
    "--seed": 0,
    "--tau": 0.1,
    "--rank": 32,
    "--min-rank": 1,
    "--max-rank": None,
    "--tdlrt-mode": "one-pass",
    "--freeze-after": "auto",  # was None: the best configuration measured (experiments page)
    "--factorize": "all-but-last",
    "--out": None,
    "--resume": False,
    "--overwrite": False,
    "--device": "auto",
    "--autocast": "none",
    "--threads": None,
    "--quiet": False,
}


def _train_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["train"]


def test_every_flag_keeps_its_name_and_default_and_matches_the_config():
    actions = {a.option_strings[0]: a for a in _train_parser()._actions if a.option_strings}
    for flag, default in FLAGS.items():
        assert flag in actions, flag
        assert actions[flag].default == default, flag
        assert type(actions[flag].default) is type(default), flag
    defaults = TrainConfig()
    for f in cli_fields():
        action = actions["--" + f.name.replace("_", "-")]
        assert action.dest == f.name
        assert action.default == getattr(defaults, f.name)
        assert f.metadata["resume"] in RESUME_RULES
    # the Python-only fields stay off the command line
    assert {f.name for f in dataclasses.fields(TrainConfig)} - {f.name for f in cli_fields()} == {
        "ranks",
        "extra",
    }


def test_parsed_values_reach_the_config_unchanged():
    from tuckerflow.cli import _config_from_args

    argv = ["train", "--data", "digits", "--rank", "0.25", "--max-rank", "12", "--lr", "1e-3"]
    argv += ["--resume", "--out", "x", "--quiet", "--freeze-after", "3", "--tau", "0.3"]
    config = _config_from_args(build_parser().parse_args(argv))
    assert (config.rank, config.max_rank, config.lr, config.tau) == (0.25, 12, 1e-3, 0.3)
    assert (config.resume, config.out, config.quiet, config.freeze_after) == (True, "x", True, 3)
    assert config.overwrite is False and config.epochs == 5
    default_out = _config_from_args(build_parser().parse_args(["train", "--seed", "4"])).out
    assert default_out.replace("\\", "/") == "runs/lenet5-dense-seed4"
    assert build_parser().parse_args(["train", "--rank", "8"]).rank == 8
    assert isinstance(build_parser().parse_args(["train", "--rank", "1.0"]).rank, float)


def test_model_names_are_those_of_the_builders():
    pytest.importorskip("torch")
    from tuckerflow.train.models import MODELS

    assert sorted(MODELS) == list(MODEL_NAMES)


@pytest.mark.parametrize(
    ("option", "error", "message"),
    [
        ({"weight_decay": math.nan}, ValueError, r"weight_decay=nan must be non-negative"),
        ({"weight_decay": -1.0}, ValueError, r"weight_decay=-1.0 must be non-negative"),
        ({"lr": math.inf}, ValueError, r"lr=inf must be a positive finite"),
        ({"momentum": math.nan}, ValueError, r"momentum=nan must lie in \[0, 1\)"),
        ({"val_fraction": -0.1}, ValueError, r"val_fraction=-0.1 must lie in \[0, 1\)"),
        ({"test_fraction": math.nan}, ValueError, r"test_fraction=nan must lie"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, ValueError, "leaves no training data"),
        ({"batch_size": 2.5}, ValueError, r"batch_size=2.5 must be a positive integer"),
        ({"epochs": "3"}, ValueError, r"epochs='3' must be a positive integer"),
        ({"rank": True}, TypeError, r"rank=True must be a float fraction or an integer"),
        ({"seed": 0.5}, ValueError, r"seed=0.5 must be an integer"),
        ({"split_seed": 2**64}, ValueError, r"split_seed=18446744073709551616 must be an integer"),
        ({"out": ""}, ValueError, r"out='' must name a folder"),
        ({"threads": 0}, ValueError, r"threads=0 must be at least 1"),
        ({"device": ""}, ValueError, r"device='' must name a device"),
        ({"data": 3}, TypeError, r"data=3 must be a name or a path"),
        ({"resume": True}, ValueError, r"resume=True needs out"),
        ({"resume": True, "overwrite": True, "out": "x"}, ValueError, "exclude each other"),
    ],
)
def test_validate_names_the_option_and_the_expected_range(option, error, message):
    with pytest.raises(error, match=message):
        TrainConfig(**option).validate()


def test_defaults_validate_and_round_trip_through_a_dict():
    config = TrainConfig(ranks={"fc1": (3, 4)}).validate()
    d = config.to_dict()
    assert d["ranks"] == {"fc1": [3, 4]}
    assert TrainConfig(**{**d, "ranks": {"fc1": (3, 4)}}) == config
