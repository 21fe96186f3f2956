"""Timing and table helpers shared by the benchmarks."""

from __future__ import annotations

import platform
import statistics
import time

import numpy as np


def timeit(fn, *, repeat=5, warmup=1, sync=None):
    """Median, p10 and p90 wall time in seconds of ``fn()`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return {"median": statistics.median(times), "p10": q[0], "p90": q[-1], "n": len(times)}


def _cpu_model():
    """The CPU's name (``platform.processor()`` is empty on Linux): ``/proc/cpuinfo``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment():
    """Versions and machine facts recorded with every result."""
    import numpy
    import scipy
    import tensorly

    env = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "tensorly": tensorly.__version__,
    }
    try:
        import os

        env["cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        pass
    model = _cpu_model()
    if model:
        env["cpu_model"] = model
    import sys

    if "torch" in sys.modules:
        import torch

        env["torch"] = torch.__version__
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name()
    return env


def print_table(rows, columns):
    """Print ``rows`` (list of dicts) as an aligned text table with the given columns."""

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def sync_for(backend, device):
    """A function that waits for queued GPU work of ``backend`` (None on the CPU)."""
    if backend == "pytorch" and device and str(device).startswith("cuda"):
        import torch

        target = torch.device(device)
        # the device itself, not the current one (they differ for cuda:1 and up)
        return lambda: torch.cuda.synchronize(target)
    if backend == "cupy":
        import cupy

        return cupy.cuda.Device().synchronize
    return None


def fitted_exponent(sizes, times):
    """Least-squares slope of ``log time`` against ``log n`` (nan with fewer than 2 sizes)."""
    if len(sizes) < 2:
        return float("nan")
    return float(np.polyfit(np.log(sizes), np.log(times), 1)[0])
