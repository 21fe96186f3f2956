import sys, torch
import tuckerflow.optim.tdlrt as T
from tuckerflow.optim.transport import mode_products
from tuckerflow.train import TrainConfig, train
orig = T.TDLRT._truncate
def wrapped(self, plans, references, carry=None):
    if references is None:
        return orig(self, plans, references, carry)
    n = "conv2"
    C = self._layers[n].core.detach().clone()
    ref = references[n]
    U = plans[n][0]
    out = orig(self, plans, references, carry)
    L = self._layers[n]
    P = [None if u is None else u.T @ L.factor(i).detach() for i, u in enumerate(U)]
    kept = mode_products(mode_products(ref, [None if p is None else p.T for p in P]), P)
    keptC = mode_products(mode_products(C, [None if p is None else p.T for p in P]), P)
    print(self._steps, tuple(C.shape), "->", tuple(L.core.shape), "|Y0|=%.2f |dY|=%.2f lostY0=%.2f lostC=%.2f" % (
        ref.norm(), (C - ref).norm(), (ref - kept).norm(), (C - keptC).norm()), flush=True)
    return out
T.TDLRT._truncate = wrapped
tau = float(sys.argv[1]); extra = eval(sys.argv[2]) if len(sys.argv) > 2 else {}
s = train(TrainConfig(method="tdlrt", tau=tau, seed=0, quiet=True, device="cpu", threads=1, epochs=2, **extra))
print("acc", s["test_accuracy"], [h["val_accuracy"] for h in s["history"]])
