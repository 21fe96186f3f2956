"""Goal 3's reference: the dense LeNet5 trained from the same initial scales as TDLRT.

The weights of every ``Conv2d``/``Linear`` layer but the classifier (the layers that
``--factorize all-but-last`` turns into Tucker layers) are multiplied by the scale after
PyTorch's default initialization; everything else is ``tuckerflow train``'s defaults (SGD with
momentum 0.9, learning rate 0.05, batch 64, 5 epochs, the split drawn from the seed).

Usage (from the repository root)::

    python docs/scripts/experiments_init_dense.py --data digits --seeds 10
    python docs/scripts/experiments_init_dense.py --data mnist5k --seeds 5

Prints one line per scale and writes ``docs/results/goal3_dense/DATA.json`` (test accuracy in
percent per seed, ``null`` for a run that diverged).
"""

from __future__ import annotations

import argparse
import json
import os

SCALES = (0.01, 0.1, 1.0, 10.0)
OUT = os.path.join(os.path.dirname(__file__), "..", "results", "goal3_dense")


def scaled(scale):
    """A ``train(..., transform=)`` that multiplies the weights of all layers but the last."""

    def transform(model):
        import torch

        layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        with torch.no_grad():
            for m in layers[:-1]:
                m.weight.mul_(scale)
        return model

    return transform


def main(argv=None):
    import numpy as np

    from tuckerflow.train import TrainConfig, TrainingDiverged, train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args(argv)
    results = {}
    for scale in SCALES:
        accs = []
        for seed in range(args.seeds):
            config = TrainConfig(
                data=args.data, model="lenet5", method="dense", seed=seed, threads=1,
                device="cpu", quiet=True,
            )  # fmt: skip
            try:
                accs.append(100 * train(config, transform=scaled(scale))["test_accuracy"])
            except TrainingDiverged:
                accs.append(None)
        results[str(scale)] = accs
        ok = np.array([a for a in accs if a is not None])
        spread = (
            f"{ok.mean():.2f} ± {ok.std(ddof=1):.2f} ({ok.min():.2f} – {ok.max():.2f})"
            if len(ok) > 1
            else "–"
        )
        print(
            f"{args.data} scale {scale}: {len(ok)} runs, {len(accs) - len(ok)} diverged, {spread}"
        )
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, f"{args.data}.json"), "w") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
