"""Demo: LeNet5 on the 5000 embedded MNIST digits, dense versus rank-adaptive TDLRT.

``python -m tuckerflow.demo`` (or ``make demo``) trains both networks with the defaults of
``tuckerflow train`` (SGD with momentum 0.9, learning rate 0.05, batch 64, 5 epochs, the
split drawn from the seed) on the same held-out split and batch order, and prints accuracy,
compression and time side by side. It takes about 25 s of CPU time in one thread;
``--epochs`` trades time for accuracy.
"""

from __future__ import annotations

import argparse
import os

from tuckerflow.train import TrainConfig, train

__all__ = ["main", "run_demo"]

#: Settings shared by both runs; everything else is a default of :class:`TrainConfig` (the
#: CLI's defaults), so that the demo shows what ``tuckerflow train`` does out of the box.
#: One CPU thread: the fastest setting for this small network on a two-core machine.
DEMO_SETTINGS = {
    "data": "mnist5k",
    "model": "lenet5",
    "seed": 0,
    "threads": 1,
    "device": "cpu",
}


def run_demo(*, epochs=5, tau=0.2, factorize="all-but-last", out=None, quiet=False):
    """Train the dense and the TDLRT LeNet5; returns ``{"dense": summary, "tdlrt": summary}``.

    Parameters
    ----------
    epochs : int
        Epochs of each run.
    tau : float
        Relative truncation tolerance of TDLRT.
    factorize : {"all-but-last", "conv", "all"}
        Which layers TDLRT factorizes (``"conv"``: the convolutions only, the setting of
        Zangrando et al.).
    out : str, optional
        Folder receiving ``dense/`` and ``tdlrt/`` run outputs (overwritten); None writes
        nothing.
    quiet : bool
        No progress bars.
    """
    summaries = {}
    for method in ("dense", "tdlrt"):
        if not quiet:
            print(f"--- {method} ---", flush=True)
        config = TrainConfig(
            **DEMO_SETTINGS,
            method=method,
            tau=tau,
            factorize=factorize,
            epochs=epochs,
            out=None if out is None else os.path.join(out, method),
            overwrite=out is not None,
            quiet=quiet,
        )
        summaries[method] = train(config)
    return summaries


def format_comparison(summaries):
    """Side-by-side table of the dense and TDLRT summaries."""
    dense, tdlrt = summaries["dense"], summaries["tdlrt"]
    rows = [
        ("test accuracy (%)", "{:.2f}", 100 * dense["test_accuracy"], 100 * tdlrt["test_accuracy"]),
        (
            "compression (%)",
            "{:.1f}",
            100 * dense["compression_rate"],
            100 * tdlrt["compression_rate"],
        ),
        (
            "conv-only c.r. (%)",
            "{:.1f}",
            100 * dense["compression_rate_conv"],
            100 * tdlrt["compression_rate_conv"],
        ),
        (
            "parameters",
            "{:d}",
            dense["parameters"]["model"],
            tdlrt["parameters"]["model"],
        ),
        ("training time (s)", "{:.1f}", dense["time_s"], tdlrt["time_s"]),
    ]
    lines = [f"{'LeNet5 / mnist5k':<22}{'dense':>12}{'TDLRT':>12}"]
    for label, fmt, a, b in rows:
        lines.append(f"{label:<22}{fmt.format(a):>12}{fmt.format(b):>12}")
    ranks = ", ".join(
        f"{k} {tuple(v)}" for k, v in tdlrt["ranks"].items() if k in tdlrt["tucker_layers"]
    )
    lines.append(f"TDLRT ranks (tau={tdlrt['tau']}): {ranks}")
    return "\n".join(lines)


def main(argv=None):
    """Entry point of ``python -m tuckerflow.demo``."""
    parser = argparse.ArgumentParser(prog="python -m tuckerflow.demo", description=__doc__)
    parser.add_argument("--epochs", type=int, default=5, help="default: 5")
    parser.add_argument("--tau", type=float, default=0.2, help="default: 0.2")
    parser.add_argument(
        "--factorize",
        default="all-but-last",
        choices=("all-but-last", "conv", "all"),
        help="layers TDLRT factorizes; default: all-but-last",
    )
    parser.add_argument("--out", default=None, help="write run outputs here (overwritten)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    summaries = run_demo(
        epochs=args.epochs, tau=args.tau, factorize=args.factorize, out=args.out, quiet=args.quiet
    )
    print()
    print(format_comparison(summaries))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
