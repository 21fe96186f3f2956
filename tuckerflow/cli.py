"""Command line of tuckerflow: ``tuckerflow train …`` (also ``python -m tuckerflow train …``).

Examples
--------
Rank-adaptive training of LeNet5 on the 5000 embedded MNIST digits::

    tuckerflow train --model lenet5 --method tdlrt --tau 0.1 --epochs 10 --out runs/lenet5-tdlrt
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["build_parser", "main"]

_USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError)


def _rank(text):
    """``0.25`` → fraction of each mode size, ``8`` → integer cap per mode."""
    try:
        value = float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"rank={text!r} must be a fraction in (0, 1] (e.g. 0.25) or an integer (e.g. 8)"
        ) from None
    return value


def _tau(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"tau={text!r} is not a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"tau={value} must lie in the open interval (0, 1)")
    return value


def _add_train_arguments(parser):
    from tuckerflow.train.loop import METHODS, OPTIMIZERS
    from tuckerflow.train.models import MODELS

    data = parser.add_argument_group("data and model")
    data.add_argument(
        "--data",
        default="mnist5k",
        help="embedded data set (mnist5k, digits) or an .npz file with x (N×C×H×W or N×H×W) "
        "and y (N labels); default: mnist5k",
    )
    data.add_argument("--model", default="lenet5", choices=sorted(MODELS))
    data.add_argument(
        "--method",
        default="dense",
        choices=METHODS,
        help="dense network, Tucker layers trained directly at a fixed rank, or TDLRT",
    )
    data.add_argument("--val-fraction", type=float, default=0.1, help="default: 0.1")
    data.add_argument("--test-fraction", type=float, default=0.2, help="default: 0.2")

    opt = parser.add_argument_group("optimization")
    opt.add_argument("--epochs", type=int, default=5, help="default: 5")
    opt.add_argument("--batch-size", type=int, default=64, help="default: 64")
    opt.add_argument("--lr", type=float, default=0.05, help="learning rate; default: 0.05")
    opt.add_argument("--optimizer", default="momentum", choices=OPTIMIZERS)
    opt.add_argument("--momentum", type=float, default=0.9, help="default: 0.9")
    opt.add_argument("--weight-decay", type=float, default=0.0, help="default: 0")
    opt.add_argument("--scheduler", default="none", choices=("none", "cosine"))
    opt.add_argument("--seed", type=int, default=0, help="split, initialization, batch order")

    tucker = parser.add_argument_group("Tucker layers")
    tucker.add_argument(
        "--tau",
        type=_tau,
        default=0.1,
        help="relative truncation tolerance of TDLRT, in (0, 1); default: 0.1",
    )
    tucker.add_argument(
        "--rank",
        type=_rank,
        default=32,
        help="initial (tdlrt) or fixed (tucker-fixed) rank: fraction of each mode size (0.25) "
        "or integer cap per mode (16); default: 32",
    )
    tucker.add_argument("--min-rank", type=int, default=1, help="per-mode lower rank bound")
    tucker.add_argument("--max-rank", type=int, default=None, help="per-mode rank cap")
    tucker.add_argument(
        "--tdlrt-mode",
        default="one-pass",
        choices=("one-pass", "two-pass"),
        help="Galerkin gradient from the first backward pass or from a second evaluation",
    )
    tucker.add_argument(
        "--freeze-after",
        type=int,
        default=None,
        metavar="EPOCHS",
        help="TDLRT: fixed ranks after this many epochs (final fine-tuning phase)",
    )
    tucker.add_argument(
        "--factorize",
        default="all-but-last",
        choices=("all-but-last", "all", "conv"),
        help="which Conv/Linear layers become Tucker layers; default: all but the classifier",
    )

    run = parser.add_argument_group("run")
    run.add_argument(
        "--out",
        default=None,
        help="output folder for summary.json, training.png and checkpoint.pt; "
        "default: runs/MODEL-METHOD-seedSEED",
    )
    run.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue from OUT/checkpoint.pt, or from the given checkpoint",
    )
    run.add_argument(
        "--overwrite", action="store_true", help="start afresh in a folder holding a checkpoint"
    )
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, …")
    run.add_argument(
        "--autocast",
        default="none",
        choices=("none", "bf16"),
        help="train under torch.autocast in bfloat16; default: none",
    )
    run.add_argument("--threads", type=int, default=None, help="CPU threads of PyTorch")
    run.add_argument("--quiet", action="store_true", help="no progress bars and no table")


def build_parser():
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
    )
    _add_train_arguments(train)
    return parser


def _config_from_args(args):
    from tuckerflow.train.loop import TrainConfig

    out = args.out
    if out is None:
        out = os.path.join("runs", f"{args.model}-{args.method}-seed{args.seed}")
    return TrainConfig(
        data=args.data,
        model=args.model,
        method=args.method,
        tau=args.tau,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        scheduler=args.scheduler,
        rank=args.rank,
        min_rank=args.min_rank,
        max_rank=args.max_rank,
        tdlrt_mode=args.tdlrt_mode,
        freeze_after=args.freeze_after,
        factorize=args.factorize,
        seed=args.seed,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        out=out,
        resume=args.resume,
        overwrite=args.overwrite,
        device=args.device,
        autocast=args.autocast,
        threads=args.threads,
        quiet=args.quiet,
    )


def main(argv=None):
    """Run the command line; returns the exit status.

    0 on success, 1 when training diverged (NaN/Inf loss or gradient), 2 on a usage error.

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
    from tuckerflow.train.loop import TrainingDiverged, format_summary_table, train

    try:
        config = _config_from_args(args)
        summary = train(config)
    except _USER_ERRORS as err:
        print(f"tuckerflow {args.command}: error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"tuckerflow {args.command}: error: {err}", file=sys.stderr)
        return 1
    if not config.quiet:
        print()
        print(format_summary_table(summary))
        print(f"\nwrote {os.path.join(config.out, 'summary.json')}, training.png, checkpoint.pt")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
