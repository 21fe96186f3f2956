"""Print what ``torch.compile`` compiles in the 40-step run of docs/guide/loops.rst.

The run of ``test_compiled_model_does_not_recompile_between_rank_changes`` in
``tests/test_optim_loops.py`` (two small ``TuckerLinear`` layers from rank 2, TDLRT around
SGD at lr 0.2, float32), with a backend that counts the graphs dynamo hands it and runs them
as traced: the rank changes, the graphs compiled and at which step, dynamo's recompilations
with the reason each cached entry did not fit, and whether any frame fell back to eager.
Then the same run with the layers' parameters traced directly instead of the views the
layers hand the graph. One CPU thread: ``python docs/scripts/compile_counts.py`` (about
15 s; dynamo's own warning of the recompile limit goes to stderr).
"""

from __future__ import annotations

import logging
import pathlib
import sys
import warnings

import torch
import torch._dynamo  # noqa: F401  (configures torch's logging: before the handler below)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tests"))
import test_optim_loops as tl  # noqa: E402

from tuckerflow.nn.layer import TuckerLayer  # noqa: E402

STEPS = 40


def _parameters_directly(self):
    """``TuckerLayer._tensors`` as in eager mode: the parameters themselves."""
    return self.core, [self._forward_factor(i) for i in range(len(self.weight_shape))]


def _kind(failure):
    """A guard failure of dynamo's log, in a word."""
    if "requires_grad mismatch" in failure:
        return "requires_grad"  # the second layer's input requires grad, the first's not
    if "size mismatch" in failure:
        return "size"  # a rank changed and the entry has static sizes
    if "use_factorized" in failure:
        return "forward path"  # forward_mode="auto" chose the other (dense/factorized) path
    return failure[:60]


class _Recompiles(logging.Handler):
    """dynamo's ``recompiles`` log (``TORCH_LOGS=recompiles``), kept instead of printed:
    per recompilation the step, the function and why each cached entry did not fit."""

    def __init__(self, step):
        super().__init__()
        self.step, self.seen = step, []

    def emit(self, record):
        lines = [ln.strip() for ln in record.getMessage().splitlines()]
        where = lines[0].replace("Recompiling function ", "").split(" in ")[0]
        entries = [ln[2:].split(": ", 1) for ln in lines if ln.startswith("- ")]
        why = ", ".join(f"{e[0]} {_kind(e[-1])}" for e in sorted(entries))
        self.seen.append((self.step(), where, why))


def run(direct):
    model, x, target = tl.compile_problem(torch.float32)
    calls = []
    logger = logging.getLogger("torch._dynamo.guards.__recompiles")
    torch._logging.set_logs(recompiles=True)
    handler = _Recompiles(lambda: len(calls) + 1)
    saved = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [handler], False
    original = TuckerLayer._tensors
    if direct:
        TuckerLayer._tensors = _parameters_directly
    try:
        with tl.counting_compile() as cc:
            compiled = cc(model)
            at = []

            def forward(inp):
                out = compiled(inp)
                calls.append(None)
                at.append(len(cc.graphs))
                return out

            ranks, _ = tl.tdlrt_run(model, forward, "sgd", STEPS, x, target)
    finally:
        TuckerLayer._tensors = original
        logger.handlers, logger.propagate = saved
        torch._logging.set_logs()
    new = [(s + 1, b - a) for s, (a, b) in enumerate(zip([0, *at], at)) if b > a]
    return ranks, cc, new, handler.seen


def report(title, ranks, cc, new, recompiles):
    changes = [s for s in range(1, len(ranks)) if ranks[s] != ranks[s - 1]]
    print(title)
    print(f"  rank changes: {len(changes)}, after steps {changes}")
    print(f"    ranks: {' -> '.join(str(r) for r in dict.fromkeys(ranks))}")
    per_step = ", ".join(f"{n} at step {s}" for s, n in new)
    print(f"  graphs compiled: {len(cc.graphs)} ({per_step})")
    print(f"  dynamo recompilations: {len(recompiles)}")
    for step, where, why in recompiles:
        print(f"    step {step}: {where} (cached entries: {why})")
    frames = cc.seen["frames"]
    print(f"  frames compiled: {frames.get('ok', 0)} of {frames.get('total', 0)}")
    fallback = [k.splitlines()[0] for k in cc.seen["unimplemented"]]
    print(f"  fallback to eager: {'; '.join(fallback) if fallback else 'none'}")


def main():
    torch.set_num_threads(1)
    # dynamo reads .grad of the views it is handed (see the test)
    warnings.filterwarnings("ignore", "The .grad attribute of a Tensor that is not a leaf")
    lr = tl.OPTIMIZERS["sgd"]([torch.zeros(1)]).defaults["lr"]
    print(f"torch {torch.__version__}, {STEPS} TDLRT steps (SGD at lr {lr:g}, float32)")
    report("views of the core and factors (the layers as they are):", *run(direct=False))
    report("the parameters traced directly:", *run(direct=True))


if __name__ == "__main__":
    main()
