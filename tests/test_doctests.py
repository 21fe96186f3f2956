"""The Examples sections of the docstrings run (on NumPy) and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest
import tensorly as tl

MODULES = [
    "tuckerflow.tucker",
    "tuckerflow.truncation",
    "tuckerflow.random",
    "tuckerflow.linalg",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    with tl.backend_context("numpy", local_threadsafe=True):
        result = doctest.testmod(
            module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
        )
    assert result.failed == 0
    if name != "tuckerflow.linalg":
        assert result.attempted > 0
