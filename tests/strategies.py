"""Re-export of :mod:`tuckerflow.testing.strategies` for test modules that import ``strategies``.

The strategies live in the library (``tuckerflow.testing.strategies``) so that downstream
projects draw the same domains; new tests import them from there.
"""

from __future__ import annotations

from tuckerflow.testing.strategies import make_valid, seeds, shape_and_rank

__all__ = ["make_valid", "seeds", "shape_and_rank"]
