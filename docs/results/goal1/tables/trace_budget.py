# Per basis update of a mnist5k LeNet5 run with the CLI defaults (and the options given):
# ranks of conv2 and fc1 and, with truncation_budget, their removal budgets.
# python trace_budget.py TAU SEED "{'truncation_budget': True}"
import sys

import tuckerflow.optim.tdlrt as T
from tuckerflow.train import TrainConfig, train

orig = T.TDLRT._truncate


def wrapped(self, plans, references, carry=None):
    out = orig(self, plans, references, carry)
    if references is not None:
        r = {n: tuple(self._layers[n].core.shape) for n in ("conv1", "conv2", "fc1")}
        b = {n: round(v, 2) for n, v in self.removal_budget.items()}
        print(self._steps, r, "budget", b, flush=True)
    return out


T.TDLRT._truncate = wrapped
tau, seed = float(sys.argv[1]), int(sys.argv[2])
extra = eval(sys.argv[3]) if len(sys.argv) > 3 else {}
s = train(TrainConfig(method="tdlrt", tau=tau, seed=seed, quiet=True, device="cpu", threads=1, **extra))
print("acc", s["test_accuracy"], [h["val_accuracy"] for h in s["history"]], s["compression_rate"])
