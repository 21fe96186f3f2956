#!/usr/bin/env python
"""The GPU check: CUDA and CuPy parametrizations of the tests, then the GPU benchmarks.

Usage::

    python backends/gpu_check.py [--out bench-results] [--budget 450] [--require]
                                 [--python PATH] [--parts probe tests training ...]

Designed to finish in under 8 minutes on one H100/H200-class GPU: every part runs as its own
process with a time limit taken from the remaining budget (a part the budget cannot hold is
reported as skipped, never silently dropped). Writes ``<out>/gpu-check.json`` (machine,
device, per part: command, exit status, seconds, the part's own JSON) and
``<out>/gpu-check.md`` (one table), and each part's output to ``<out>/gpu-check/<part>.log``.

Without a CUDA device (``torch.cuda.is_available()`` false and no CuPy device) it prints one
line on stderr and exits 0 without running anything (exit 2 with ``--require``). The exit
status is 1 when a part failed or timed out.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Where each benchmark part writes its JSON, under ``<out>/gpu-check/``.
RESULTS = {
    "training": "training.json",
    "training-compile": "compile/training.json",
    "truncation-cuda": "cuda/truncation.json",
    "integrators-cuda": "cuda/integrators.json",
    "integrators-cupy": "cupy/integrators.json",
    "integrators-cpu": "cpu/integrators.json",
}


def _torch_cuda():
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def _cupy_device():
    if importlib.util.find_spec("cupy") is None:
        return None
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception:  # noqa: BLE001 - any CUDA failure means "no usable device"
        return None


def parts(py, out, torch_gpu, cupy_gpu):
    """``(name, command, share of the budget)`` of every part this machine can run."""
    bench = [py, "-m", "tuckerflow.bench"]
    res = str(out / "gpu-check")
    table = []
    if torch_gpu:
        table.append(
            (
                "probe-cuda",
                [py, "backends/probe.py", "--backend", "pytorch", "--device", "cuda"],
                0.03,
            )
        )
    if cupy_gpu:
        table.append(("probe-cupy", [py, "backends/probe.py", "--backend", "cupy"], 0.03))
    marks = " or ".join(m for m, ok in (("cuda", torch_gpu), ("cupy", cupy_gpu)) if ok)
    xdist = ["-n", "8"] if importlib.util.find_spec("xdist") else []
    table.append(("tests", [py, "-m", "pytest", "-q", *xdist, "-k", marks, "tests"], 0.30))
    if torch_gpu:
        table.append(
            (
                "training",
                [*bench, "training", "--device", "cuda", "--out", res, "--models", "vgg16",
                 "resnet18", "--compressions", "0.9", "0.95", "--precisions", "fp32", "bf16",
                 "--variants", "dense", "tltorch", "tucker", "tdlrt1", "--steps", "20",
                 "--warmup", "5"],
                0.30,
            )
        )  # fmt: skip
        table.append(
            (
                "training-compile",
                [*bench, "training", "--device", "cuda", "--out", res + "/compile", "--models",
                 "vgg16", "resnet18", "--compressions", "0.95", "--precisions", "fp32",
                 "--variants", "dense", "tucker", "--compile", "--steps", "20", "--warmup", "5"],
                0.12,
            )
        )  # fmt: skip
        table.append(
            (
                "truncation-cuda",
                [*bench, "truncation", "--backend", "pytorch", "--device", "cuda", "--out",
                 res + "/cuda"],
                0.06,
            )
        )  # fmt: skip
        table.append(
            (
                "integrators-cuda",
                [*bench, "integrators", "--backend", "pytorch", "--device", "cuda", "--out",
                 res + "/cuda", "--sizes", "256", "2048", "--repeat", "3", "--parts", "steps"],
                0.06,
            )
        )  # fmt: skip
    if cupy_gpu:
        table.append(
            (
                "integrators-cupy",
                [*bench, "integrators", "--backend", "cupy", "--out", res + "/cupy", "--sizes",
                 "256", "2048", "--repeat", "3", "--parts", "steps"],
                0.05,
            )
        )  # fmt: skip
    # the CPU reference of the integrator ratios, same sizes, same run
    table.append(
        (
            "integrators-cpu",
            [*bench, "integrators", "--backend", "numpy", "--out", res + "/cpu", "--sizes", "256",
             "2048", "--repeat", "1", "--parts", "steps"],
            0.05,
        )
    )  # fmt: skip
    return table


#: (module, distribution, requirements file) that the parts import besides torch / CuPy
NEEDED = (
    ("tensorly", "tensorly", "backends/numpy.txt"),
    ("tltorch", "tensorly-torch", "backends/test.txt"),
    ("pytest", "pytest", "backends/test.txt"),
    ("hypothesis", "hypothesis", "backends/test.txt"),
)


def _missing(python, env):
    """The distributions of :data:`NEEDED` that ``python`` cannot import, with their files."""
    probe = (
        "import importlib.util, sys; "
        "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))"
    )
    names = [module for module, _, _ in NEEDED]
    done = subprocess.run(
        [python, "-c", probe, *names], env=env, capture_output=True, text=True, check=False
    )
    absent = set(done.stdout.split()) if done.returncode == 0 else set(names)
    return [(dist, req) for module, dist, req in NEEDED if module in absent]


def _pythonpath(environ):
    """The checkout first, then whatever the caller's ``PYTHONPATH`` already holds (packages
    installed into a target folder rather than into the interpreter stay importable)."""
    kept = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([str(ROOT)] + [p for p in kept if p != str(ROOT)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="backends/gpu_check.py", description=__doc__)
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all parts")
    parser.add_argument("--require", action="store_true", help="no GPU is an error (exit 2)")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--parts", nargs="*", default=None, help="run only these parts")
    args = parser.parse_args(argv)
    if args.budget <= 0:
        print(f"gpu-check: --budget={args.budget} must be > 0 seconds", file=sys.stderr)
        return 2
    torch_gpu, cupy_gpu = _torch_cuda(), _cupy_device()
    if not torch_gpu and not cupy_gpu:
        print(
            "gpu-check: skipped, no CUDA device (torch.cuda.is_available() is false and CuPy "
            "sees no GPU); nothing was run",
            file=sys.stderr,
        )
        return 2 if args.require else 0
    env = dict(os.environ, HYPOTHESIS_PROFILE="ci", PYTHONPATH=_pythonpath(os.environ))
    missing = _missing(args.python, env)
    if missing:
        files = sorted({req for _, req in missing})
        print(
            f"gpu-check: {args.python} cannot import {', '.join(d for d, _ in missing)}; "
            f"install them first (pip install -r {' -r '.join(files)}, keeping the machine's "
            "CUDA build of torch); nothing was run",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    logs = out / "gpu-check"
    logs.mkdir(parents=True, exist_ok=True)
    table = parts(args.python, out, torch_gpu, cupy_gpu)
    if args.parts:
        unknown = sorted(set(args.parts) - {name for name, _, _ in table})
        if unknown:
            names = [name for name, _, _ in table]
            print(f"gpu-check: --parts {unknown} not among {names}", file=sys.stderr)
            return 2
        table = [p for p in table if p[0] in args.parts]
    start = time.monotonic()
    results, failed = [], False
    total_share = sum(share for _, _, share in table)
    for name, cmd, share in table:
        left = args.budget - (time.monotonic() - start)
        limit = min(left, args.budget * share / total_share * 1.5)
        row = {"part": name, "command": " ".join(cmd), "limit_s": round(limit, 1)}
        if limit < 5:
            row.update(status="skipped (budget spent)", seconds=0.0)
            results.append(row)
            print(f"gpu-check: {name}: skipped (budget spent)", flush=True)
            continue
        t0 = time.monotonic()
        with open(logs / f"{name}.log", "w") as log:
            try:
                rc = subprocess.run(
                    cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=limit
                ).returncode
                status = "ok" if rc == 0 else f"failed (exit {rc})"
            except subprocess.TimeoutExpired:
                rc, status = None, f"timed out after {limit:.0f} s"
        row.update(status=status, rc=rc, seconds=round(time.monotonic() - t0, 1))
        failed |= status != "ok"
        results.append(row)
        print(f"gpu-check: {name}: {status} in {row['seconds']:.0f} s", flush=True)
    for row in results:
        path = RESULTS.get(row["part"])
        if path is not None and (logs / path).exists():
            row["result_json"] = str(logs / path)
    summary = {
        "machine": platform.node(),
        "python": sys.version.split()[0],
        "torch_device": torch_gpu,
        "cupy_device": cupy_gpu,
        "budget_s": args.budget,
        "seconds": round(time.monotonic() - start, 1),
        "parts": results,
    }
    (out / "gpu-check.json").write_text(json.dumps(summary, indent=2))
    lines = [
        f"GPU check on {torch_gpu or cupy_gpu}, {summary['seconds']:.0f} s",
        "",
        "| part | status | seconds | log |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['part']} | {r['status']} | {r['seconds']} | gpu-check/{r['part']}.log |"
        for r in results
    ]
    (out / "gpu-check.md").write_text("\n".join(lines) + "\n")
    print(f"gpu-check: wrote {out / 'gpu-check.md'} and {out / 'gpu-check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
