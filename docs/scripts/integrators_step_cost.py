"""CPU time of one ra-bug step at n=256, r=16, d=3 (min and median of 20 steps)."""
import sys, time
import numpy as np
import tensorly as tl
backend = sys.argv[1] if len(sys.argv) > 1 else "numpy"
if backend == "pytorch":
    import torch; torch.set_num_threads(1)
from tuckerflow.bench.integrators import scaling_operator
from tuckerflow.integrate import METHODS
from tuckerflow.random import random_tucker
with tl.backend_context(backend):
    n, r = 256, 16
    op = scaling_operator(n)
    y0 = random_tucker((n, n, n), r, rng=n)
    s = METHODS["ra-bug"](op, 0.0, y0, 1e9, step=0.1, substep="rk4", max_rank=r)
    for _ in range(3): s.step()
    ts = []
    for _ in range(20):
        t = time.process_time(); s.step(); ts.append(time.process_time() - t)
    print(f"{1e3*min(ts):.2f} {1e3*np.median(ts):.2f} {s.rank}")
