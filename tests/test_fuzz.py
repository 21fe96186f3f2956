"""Bad-input fuzz of the public API (tuckerflow.testing.fuzz): clean errors, no hang, no NaN.

The CI profile makes a few hundred calls, the ``dev`` profile (``HYPOTHESIS_PROFILE=dev``)
5,000; ``python -m tuckerflow.testing.fuzz --calls 10000`` prints the full figures.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import pytest

import tuckerflow as tf
from tuckerflow.testing import fuzz

CALLS = 5000 if os.environ.get("HYPOTHESIS_PROFILE") == "dev" else 300


def test_public_api_fails_cleanly():
    report = fuzz.fuzz(CALLS, timeout=20.0)
    assert report.calls == CALLS
    assert report.ok, report.summary()
    # the draws reach every fuzzed callable and do not only produce errors
    assert len(report.per_target) >= 0.8 * len(fuzz.public_callables())
    assert report.counts["ok"] >= 0.05 * CALLS


def test_every_public_callable_is_fuzzed_or_excluded_with_a_reason():
    everything = fuzz.public_callables(include_excluded=True)
    fuzzed = {t.name for t in fuzz.public_callables()}
    for t in everything:
        if t.name not in fuzzed:
            assert fuzz.exclusion_reason(t), f"{t.name} is excluded without a reason"
    # the core and the geometry are fuzzed in full
    assert {"tuckerflow.hosvd", "tuckerflow.truncate", "tuckerflow.project"} <= fuzzed
    assert not any(n.startswith(("tuckerflow.geometry", "tuckerflow.hosvd")) for n in fuzz.EXCLUDED)
    # ... and so are the layers and the optimizer helpers
    assert not any(n.startswith(("tuckerflow.nn", "tuckerflow.optim")) for n in fuzz.EXCLUDED)


def _target(fn, decision=True):
    return fuzz.Target(f"test.{fn.__name__}", fn, decision, [])


def test_the_harness_can_fail():
    def crashes():
        return [][1]

    def nan_decision():
        return tf.TuckerTensor(np.full((1, 1), np.nan), [np.ones((2, 1)), np.ones((2, 1))])

    def sleeps():
        time.sleep(5)

    def refuses():
        raise ValueError("x must be positive")

    def lapack_failure():
        raise np.linalg.LinAlgError("SVD did not converge")

    cases = [
        (crashes, "crash"),
        (nan_decision, "nan"),
        (sleeps, "hang"),
        (refuses, "clean"),
        (lapack_failure, "crash"),
    ]
    for fn, kind in cases:
        out = fuzz.run_call(_target(fn), (), {}, timeout=0.5)
        assert out.kind == kind, (fn.__name__, out)
    # arithmetic may return NaN
    assert fuzz.run_call(_target(nan_decision, False), (), {}, timeout=5).kind == "ok"
    assert fuzz.classify(None, (1.0, math.nan), True).kind == "nan"
    assert fuzz.classify(None, {"y": [np.zeros(2)]}, True).kind == "ok"


def test_report_counts_and_summary():
    report = fuzz.FuzzReport()
    target = _target(lambda: None)
    report.add(target, (np.zeros(2),), {"rtol": "0.1"}, fuzz.Outcome("clean", "ValueError"))
    report.add(target, (), {}, fuzz.Outcome("crash", "IndexError", "list index out of range"))
    assert report.calls == 2 and not report.ok
    text = report.summary()
    assert "crashes (other exception types): 1" in text and "IndexError: 1" in text


@pytest.mark.parametrize("argv", [["--calls", "40", "--no-torch"]])
def test_command_line_prints_the_figures(argv, capsys):
    assert fuzz.main(argv) == 0
    out = capsys.readouterr().out
    assert "calls: 40" in out and "hangs: 0" in out


def test_integrators_and_operators_are_fuzzed_without_exclusions():
    assert not any(
        n.startswith(("tuckerflow.integrate.", "tuckerflow.operators.")) for n in fuzz.EXCLUDED
    )
    names = {
        "tuckerflow.integrate.KrylovExponential",
        "tuckerflow.operators.Banded",
        "tuckerflow.operators.laplacian",
        "tuckerflow.operators.second_difference",
        "tuckerflow.operators.schrodinger",
        "tuckerflow.integrate.StepInterpolant",
        "tuckerflow.integrate.TuckerOdeSolution",
        "tuckerflow.solve_ivp",
    }
    targets = [t for t in fuzz.public_callables(torch=False) if t.name in names]
    assert {t.name for t in targets} == names
    report = fuzz.fuzz(400, timeout=20.0, targets=targets)
    assert report.ok, report.summary()


def test_the_core_modules_and_the_training_library_are_fuzzed():
    core = (
        "tuckerflow.dlra.",
        "tuckerflow.ranks.",
        "tuckerflow.recompression.",
        "tuckerflow.linalg.",
    )
    assert not any(n.startswith(core) for n in fuzz.EXCLUDED)
    fuzzed = {t.name for t in fuzz.public_callables(torch=False)}
    names = {
        "tuckerflow.dlra.augment_basis",
        "tuckerflow.dlra.augmented_core",
        "tuckerflow.ranks.default_order",
        "tuckerflow.ranks.sequential_budget",
        "tuckerflow.ranks.lower_ranks_certainly",
        "tuckerflow.recompression.recompress",
        "tuckerflow.linalg.flip_signs",
        "tuckerflow.linalg.mode_products",
    }
    assert names <= fuzzed
    targets = [t for t in fuzz.public_callables(torch=False) if t.name.startswith(core)]
    assert len(targets) >= 20
    report = fuzz.fuzz(6 * len(targets), timeout=20.0, targets=targets)
    assert report.ok, report.summary()
    assert len(report.per_target) == len(targets)
    # tuckerflow.train: everything but the callables that train, write files or run the
    # caller's network on its own
    pytest.importorskip("torch")
    train = {t.name for t in fuzz.public_callables() if t.name.startswith("tuckerflow.train.")}
    assert {"tuckerflow.train.split_dataset", "tuckerflow.train.standardize"} <= train
    left_out = {n for n in fuzz.EXCLUDED if n.startswith("tuckerflow.train.")}
    assert left_out == {
        "tuckerflow.train.train",
        "tuckerflow.train.prepare",
        "tuckerflow.train.execute",
        "tuckerflow.train.atomic_save",
        "tuckerflow.train.plot_history",
        "tuckerflow.train.evaluate",
    }
    assert not train & left_out
