"""The docstring examples of the integrators and the modules they build on."""

from __future__ import annotations

import doctest
import importlib

import pytest
import tensorly as tl


@pytest.mark.parametrize(
    "name",
    ["tuckerflow.dlra", "tuckerflow.operators", "tuckerflow.integrate.ivp", "tuckerflow.ambient"],
)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    with tl.backend_context("numpy", local_threadsafe=True):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
