"""Sphinx configuration for the tuckerflow documentation.

Built by ``make docs`` (``sphinx -W --keep-going``): every warning fails the
build. The build must not touch the network, so intersphinx is loaded but
given no inventories.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document the checkout even when not installed

# -- Project information ------------------------------------------------------

project = "tuckerflow"
author = "tuckerflow developers"
copyright = "2026, tuckerflow developers"
try:
    release = metadata.version("tuckerflow")
except metadata.PackageNotFoundError:
    release = "0.1.0"
version = ".".join(release.split(".")[:2])

# -- General configuration ----------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "sphinx.ext.doctest",
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_enable_extensions = ["dollarmath"]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "api/*", "benchmarks/*", "scripts/*", "results/*"]
nitpicky = False

autosummary_generate = True
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "none"  # numpydoc renders the types from the docstrings

numpydoc_show_class_members = False
numpydoc_class_members_toctree = False

# No network during the build: no remote inventories, no remote images.
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}
intersphinx_disabled_reftypes = ["*"]

# Doctests (``sphinx -b doctest``) run with the usual imports in scope.
doctest_global_setup = """
import numpy as np
import tensorly as tl
import tuckerflow as tf
"""

# -- HTML output --------------------------------------------------------------

html_theme = "alabaster"
html_title = f"tuckerflow {release}"
html_theme_options = {
    "description": "Tucker tensors on TensorLy backends",
    "fixed_sidebar": True,
}
