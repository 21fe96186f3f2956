"""Print the float32 / bf16-autocast / float64 table of docs/guide/precision.rst.

Runs the problems of ``tests/test_precision.py`` (same float64-built start for every
precision) on one CPU thread and prints the table as reStructuredText:
``python docs/scripts/precision_table.py`` (about 20 s), followed by the size of the first
K-step's new directions at the small learning rates. ``--conv-lr 0.01 0.005`` prints the
conv layer's rows at those learning rates only. The ``tuckerflow`` imported is the first on
the path, so ``PYTHONPATH=<other checkout> python docs/scripts/precision_table.py`` prints
the same table for another version of the library.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tests"))
import test_precision as tp  # noqa: E402

PRECISIONS = ("float64", "float32", "bf16-autocast")


def cases(conv_lrs=None):
    """(problem, lr, steps): the tests' learning rates, and conv at 0.1 (full rank)."""
    if conv_lrs:
        for lr in conv_lrs:
            yield "conv2d", lr, tp.STEPS
        return
    for problem in ("linear", "conv2d"):
        lrs = [tp.PROBLEMS[problem][1]] + ([0.1] if problem == "conv2d" else [])
        for lr in sorted(lrs, reverse=True):
            yield problem, lr, tp.STEPS
        yield problem, tp.SMALL_LR[problem], tp.SMALL_STEPS


def rows(conv_lrs=None):
    for problem, lr, steps in cases(conv_lrs):
        for precision in PRECISIONS:
            run = tp._train(problem, precision, "cpu", lr=lr, steps=steps)
            # a basis of full size spans everything: its move is round-off only
            moves = ", ".join(
                "—" if run.ranks[-1][i] == run.sizes[i] else f"{m:.4g}"
                for i, m in zip(run.modes, run.moves)
            )
            yield (
                "linear" if problem == "linear" else "conv",
                f"{lr:g}",
                str(steps),
                "bf16 autocast" if precision == "bf16-autocast" else precision,
                str(run.ranks[2]),
                str(run.ranks[-1]),
                f"{run.loss:.6g}",
                moves,
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conv-lr", type=float, nargs="+", help="conv rows at these rates only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    head = ("layer", "lr", "steps", "precision", "ranks, step 3", "ranks, end", "loss", "move")
    table = [head, *rows(args.conv_lr)]
    widths = [max(len(r[j]) for r in table) for j in range(len(head))]
    rule = "  ".join("=" * w for w in widths)
    print(rule)
    print("  ".join(c.ljust(w) for c, w in zip(head, widths)).rstrip())
    print(rule)
    for r in table[1:]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(rule)
    if not args.conv_lr:
        print()
        print("first K-step at the small rates, λ σ_j((I − UUᴴ) g) / (16 u32 ‖K‖):")
        for problem, lr in tp.SMALL_LR.items():
            levels = [v for mode in tp._new_direction_levels(problem, lr) for v in mode]
            print(f"  {problem} lr {lr:g}: {min(levels):.3g} to {max(levels):.3g}")


if __name__ == "__main__":
    main()
