import sys, torch
import tuckerflow.optim.tdlrt as T
from tuckerflow.train import TrainConfig, train
log = []
orig = T.TDLRT._truncate
def wrapped(self, plans, references, carry=None):
    before = {n: tuple(self._layers[n].core.shape) for n in plans}
    norms = {n: float(self._layers[n].core.norm()) for n in plans}
    refn = {n: (None if references is None or references.get(n) is None else float(references[n].norm())) for n in plans}
    g0 = self.guarded_truncations
    out = orig(self, plans, references, carry)
    after = {n: tuple(self._layers[n].core.shape) for n in plans}
    if references is not None:
        print(self._steps, "conv2", before["conv2"], "->", after["conv2"], "|C|=%.3g ref=%.3g" % (norms["conv2"], refn["conv2"] or -1),
              "conv1", after["conv1"], "fc1", after["fc1"], "guarded", self.guarded_truncations - g0, flush=True)
    return out
T.TDLRT._truncate = wrapped
tau = float(sys.argv[1]); extra = eval(sys.argv[2]) if len(sys.argv) > 2 else {}
s = train(TrainConfig(method="tdlrt", tau=tau, seed=0, quiet=True, device="cpu", threads=1, **extra))
print("acc", s["test_accuracy"], [h["val_accuracy"] for h in s["history"]])
