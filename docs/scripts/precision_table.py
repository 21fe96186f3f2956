"""Print the float32 / bf16-autocast / float64 table of docs/guide/precision.rst.

Runs the problems of ``tests/test_precision.py`` (same float64-built start for every
precision) on one CPU thread: ``python docs/scripts/precision_table.py`` (about 10 s).
"""

from __future__ import annotations

import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tests"))
import test_precision as tp  # noqa: E402


def main():
    torch.set_num_threads(1)
    print("| layer | lr | precision | ranks, step 3 | ranks, end | loss | move |")
    for problem in ("linear", "conv2d"):
        for lr_scale, steps in ((1.0, tp.STEPS), (1e-4, 10)):
            lr = tp.PROBLEMS[problem][1] * lr_scale
            for precision in ("float64", "float32", "bf16-autocast"):
                if lr_scale != 1.0 and precision == "bf16-autocast":
                    continue
                ranks, loss, moves = tp._train(problem, precision, "cpu", lr=lr, steps=steps)
                move = ", ".join(f"{m:.3g}" for m in moves)
                print(
                    f"| {problem} | {lr:g} | {precision} | {ranks[2]} | {ranks[-1]} "
                    f"| {loss:.4g} | {move} |"
                )


if __name__ == "__main__":
    main()
