"""Figure of one TDLRT training run: ``docs/figures/experiments_demo_training.png``.

Runs the demo (``python -m tuckerflow.demo``: LeNet5 on mnist5k, dense and TDLRT τ = 0.2,
10 epochs) with ``--out runs/demo`` and copies the TDLRT run's ``training.png``.

Usage (from the repository root)::

    python docs/scripts/experiments_demo_figure.py
"""

import os
import shutil

from tuckerflow.demo import format_comparison, run_demo

FIGURE = os.path.join(os.path.dirname(__file__), "..", "figures", "experiments_demo_training.png")

if __name__ == "__main__":
    summaries = run_demo(out=os.path.join("runs", "demo"), quiet=True)
    print(format_comparison(summaries))
    shutil.copyfile(os.path.join("runs", "demo", "tdlrt", "training.png"), FIGURE)
