"""The Examples sections of the tuckerflow.nn docstrings run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest

pytest.importorskip("torch")

MODULES = ["tuckerflow.nn.linear", "tuckerflow.nn.conv", "tuckerflow.nn.tuckerize"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0
