"""Benchmarks: ``python -m tuckerflow.bench NAME [--out DIR] [--quick]``.

Each benchmark is a module ``tuckerflow.bench.NAME`` with ``add_arguments(parser)`` and
``run(args) -> dict``; it prints a table and its results are written as JSON to
``DIR/NAME.json``. Benchmarks report ratios against a peer measured in the same run and are
never part of the test suite.
"""

BENCHMARKS = ("truncation", "geometry", "integrators", "training")
