"""CPU time of one ``ra-bug`` step at ``n = 256``, ``r = 16``, ``d = 3``.

Run from the repository root (or with ``PYTHONPATH`` pointing at another tree to compare
two versions back to back):
``OMP_NUM_THREADS=1 python docs/scripts/integrators_step_cost.py [numpy|pytorch] [n r]``
(``n = 24``, ``r = 4``: the step's fixed cost, the arithmetic being negligible).
Prints the minimum and the median over 20 steps (after 3 warm-up steps) in milliseconds and
the rank: the operator and the settings of ``python -m tuckerflow.bench integrators``
(``--parts steps``), RK4 substeps, ``h = 0.1``, ``max_rank = r``.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import tensorly as tl

from tuckerflow.bench.integrators import scaling_operator
from tuckerflow.integrate import METHODS
from tuckerflow.random import random_tucker


def main(backend="numpy", n=256, r=16, steps=20):
    if backend == "pytorch":
        import torch

        torch.set_num_threads(1)
    with tl.backend_context(backend):
        y0 = random_tucker((n, n, n), r, rng=n)
        solver = METHODS["ra-bug"](
            scaling_operator(n), 0.0, y0, 1e9, step=0.1, substep="rk4", max_rank=r
        )
        for _ in range(3):
            solver.step()
        times = []
        for _ in range(steps):
            t0 = time.process_time()
            solver.step()
            times.append(time.process_time() - t0)
    print(f"{1e3 * min(times):.2f} {1e3 * float(np.median(times)):.2f} {solver.rank}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(*args[:1], *(int(v) for v in args[1:3]))
