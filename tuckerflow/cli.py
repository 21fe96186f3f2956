"""Command line of tuckerflow: ``tuckerflow train …`` (also ``python -m tuckerflow train …``).

The options of ``tuckerflow train`` are the fields of :class:`tuckerflow.train.TrainConfig`
(``batch_size`` is ``--batch-size``), with the defaults and help written there.

Examples
--------
Rank-adaptive training of LeNet5 on the 5000 embedded MNIST digits::

    tuckerflow train --model lenet5 --method tdlrt --tau 0.1 --epochs 10 --out runs/lenet5-tdlrt
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from tuckerflow.train.config import GROUPS, TrainConfig, cli_fields
from tuckerflow.train.dependencies import MissingDependencyError, check_dependencies

__all__ = ["build_parser", "main"]

#: Where a file or folder cannot be read or written: the user's to fix, also while training.
_FILE_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)

#: Exceptions that are the user's to fix: one line on stderr, exit status 2. ValueError and
#: TypeError are only before the first training step (bad options, data or checkpoint); one
#: raised while training is a fault and keeps its traceback.
_USER_ERRORS = (ValueError, TypeError, MissingDependencyError, *_FILE_ERRORS)

_EPILOG = (
    "A run writes OUT/checkpoint.pt after every epoch. --resume continues it exactly; the "
    "options that define the run (data, split, seeds, model, method, Tucker options, "
    "optimizer and its settings, batch size, schedule, autocast) must be those of the "
    "checkpoint; --epochs may grow (not under --scheduler cosine), --freeze-after may change "
    "for epochs not yet run, and --out, --device, --threads, --quiet are free. "
    "Exit status: 0 done, 1 training diverged, 2 usage error."
)


def _help(f):
    text = f.metadata["help"]
    default = f.default
    if f.metadata["argparse"].get("action") == "store_true" or default is None or default is False:
        return text
    shown = f"default: {default}"
    return shown if text is None else f"{text}; {shown}"


def _add_train_arguments(parser):
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for f in cli_fields():
        groups[f.metadata["group"]].add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=f.default,
            help=_help(f),
            **f.metadata["argparse"],
        )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tuckerflow`` with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="tuckerflow", description="Tucker tensors and rank-adaptive training of Tucker layers."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = sub.add_parser(
        "train",
        help="train a CNN, dense or with Tucker layers (fixed rank or TDLRT)",
        description="Train a CNN on an image classification data set, dense or with Tucker "
        "layers (fixed rank, or rank-adaptive TDLRT), and write summary.json, training.png "
        "and checkpoint.pt.",
        epilog=_EPILOG,
    )
    _add_train_arguments(train)
    return parser


def _config_from_args(args):
    options = {f.name: getattr(args, f.name) for f in cli_fields()}
    if options["out"] is None:
        options["out"] = os.path.join("runs", f"{args.model}-{args.method}-seed{args.seed}")
    return TrainConfig(**options)


def _one_line(err):
    return " ".join(str(err).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    0 on success, 1 when training diverged (NaN/Inf loss or gradient), 2 on a usage error
    (one line on stderr: bad options or data, a damaged or mismatching checkpoint, a missing
    package), 130 when interrupted.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    prefix = f"tuckerflow {args.command}: error:"
    try:
        config = _config_from_args(args).validate()
        check_dependencies(config)
    except _USER_ERRORS as err:
        print(f"{prefix} {_one_line(err)}", file=sys.stderr)
        return 2
    # imported after the checks: --help and usage errors do not pay for importing torch
    from tuckerflow.train.loop import TrainingDiverged, execute, prepare, threads_of
    from tuckerflow.train.report import format_summary_table

    try:
        with threads_of(config):
            try:
                run = prepare(config)
            except _USER_ERRORS as err:
                print(f"{prefix} {_one_line(err)}", file=sys.stderr)
                return 2
            summary = execute(run)
    except _FILE_ERRORS as err:
        print(f"{prefix} {_one_line(err)}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"{prefix} {_one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        kept = os.path.join(config.out, "checkpoint.pt")
        where = f"{kept} holds the last completed epoch" if os.path.exists(kept) else "no epoch"
        print(f"\n{prefix} interrupted; {where}", file=sys.stderr)
        return 130
    if not config.quiet:
        print()
        print(format_summary_table(summary))
        print(f"\nwrote {os.path.join(config.out, 'summary.json')}, training.png, checkpoint.pt")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
