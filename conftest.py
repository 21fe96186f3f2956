"""Collection rules for the one doctest run (``--doctest-modules`` over ``tuckerflow/``).

The Examples sections of every module run on NumPy (TensorLy's default backend); modules that
need PyTorch at import time are skipped when it is not installed, and ``python -m
tuckerflow``'s entry module, which runs the command line on import, is never collected.
"""

from __future__ import annotations

import importlib.util

import pytest
import tensorly as tl
from _pytest.doctest import DoctestItem

collect_ignore = ["tuckerflow/__main__.py", "docs"]

if importlib.util.find_spec("torch") is None:
    collect_ignore_glob = [
        "tuckerflow/nn/*.py",
        "tuckerflow/optim/*.py",
        "tuckerflow/train/*.py",
        "tuckerflow/bench/training.py",
    ]


@pytest.fixture(autouse=True)
def _doctests_run_on_numpy(request):
    """Docstring examples are written for NumPy arrays: run them on that backend."""
    if isinstance(request.node, DoctestItem):
        with tl.backend_context("numpy", local_threadsafe=True):
            yield
    else:
        yield
