"""Bad-input fuzzing of the public API: clean errors, no hangs, no silent NaN.

Every public callable of :mod:`tuckerflow`, :mod:`tuckerflow.geometry`,
:mod:`tuckerflow.integrate`, :mod:`tuckerflow.operators`, :mod:`tuckerflow.dlra`,
:mod:`tuckerflow.ranks`, :mod:`tuckerflow.recompression`, :mod:`tuckerflow.linalg` (and of
:mod:`tuckerflow.nn`, :mod:`tuckerflow.optim` and :mod:`tuckerflow.train` when PyTorch is
installed; the callables that train a network, write files or run the caller's network
are left out, see :data:`EXCLUDED`) is called with arguments drawn by
Hypothesis from pools keyed by the parameter's name: mostly plausible values (a small Tucker
tensor, a matching matrix, a rank, a tolerance…) mixed with malformed ones (NaN and inf
entries, magnitudes of 1e±300, wrong shapes and types, floats where integers belong,
strings where numbers belong, empty arrays…). Each call runs in a worker thread with a
timeout and ends in one of five outcomes:

``ok``
    it returned (for a *decision* function, see below, with no NaN in what it returned);
``clean``
    it raised a ``ValueError`` or ``TypeError`` (not NumPy's ``LinAlgError``, a
    ``ValueError`` subclass that signals a failed factorisation, not a refused argument), a
    ``MemoryError`` for an allocation beyond the machine's memory, or a
    ``FileNotFoundError`` for a path that names no file (what the data and checkpoint
    loaders document);
``crash``
    it raised any other exception;
``nan``
    a decision function returned NaN (functions that choose ranks, factor, orthonormalise,
    project, step or decompose must refuse non-finite input instead); plain arithmetic and
    containers (``scale``, ``inner``, ``norm``, ``mode_dot``, ``TuckerTensor`` …) may
    propagate NaN as IEEE arithmetic does;
``hang``
    it did not return within the timeout (the thread is abandoned, a daemon).

Run ``python -m tuckerflow.testing.fuzz --calls 10000`` for the figures; the test suite
runs a few hundred calls (``tests/test_fuzz.py``).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib
import importlib.util
import inspect
import math
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorly as tl

import tuckerflow as tf

__all__ = [
    "ARITHMETIC",
    "EXCLUDED",
    "FuzzReport",
    "Outcome",
    "Target",
    "classify",
    "exclusion_reason",
    "fuzz",
    "main",
    "public_callables",
    "run_call",
]

#: Modules whose ``__all__`` is fuzzed (torch-only ones are added when torch is present).
MODULES = (
    "tuckerflow",
    "tuckerflow.geometry",
    "tuckerflow.integrate",
    "tuckerflow.operators",
    "tuckerflow.dlra",
    "tuckerflow.ranks",
    "tuckerflow.recompression",
    "tuckerflow.linalg",
)
TORCH_MODULES = ("tuckerflow.nn", "tuckerflow.optim", "tuckerflow.train")

#: Callables that are plain arithmetic or containers: NaN may propagate through them.
ARITHMETIC = frozenset(
    {
        "tuckerflow.TuckerTensor",
        "tuckerflow.TruncationInfo",
        "tuckerflow.as_tucker",
        "tuckerflow.inner",
        "tuckerflow.mode_dot",
        "tuckerflow.multi_mode_dot",
        "tuckerflow.norm",
        "tuckerflow.scale",
        "tuckerflow.geometry.ambient_shape",
        "tuckerflow.geometry.contract",
        "tuckerflow.geometry.Contractible",
        "tuckerflow.integrate.OdeResult",
        "tuckerflow.integrate.RightHandSideError",
        "tuckerflow.integrate.explicit_euler",
        "tuckerflow.integrate.rk4",
        "tuckerflow.operators.AmbientSum",
        "tuckerflow.operators.AppliedKroneckerSum",
        "tuckerflow.operators.Banded",
        "tuckerflow.operators.KroneckerSum",
        "tuckerflow.operators.OperatorSum",
        "tuckerflow.operators.Pointwise",
        "tuckerflow.operators.pointwise",
        "tuckerflow.nn.AdapterLayerReport",
        "tuckerflow.nn.AdapterReport",
        "tuckerflow.nn.LayerReport",
        "tuckerflow.nn.ParameterCount",
        "tuckerflow.nn.TuckerizeReport",
        "tuckerflow.nn.count_parameters",
        "tuckerflow.nn.compression_rate",
        "tuckerflow.optim.transport_linear",
        "tuckerflow.optim.transport_nonnegative",
        "tuckerflow.optim.transport_state",
        # a change of basis and plain mode products (type and shape checked, values not)
        "tuckerflow.dlra.augmented_core",
        "tuckerflow.linalg.mode_products",
        # containers: a rank request before rank_spec validates it, the training options
        # before TrainConfig.validate, the parts of a run
        "tuckerflow.ranks.RankSpec",
        "tuckerflow.train.DataSplits",
        "tuckerflow.train.Run",
        "tuckerflow.train.TrainConfig",
    }
)

#: Callables left out of the fuzz, with the reason. Only callables whose valid calls do what a
#: fuzz must not (train a network, write files) or whose failures belong to the caller's own
#: network belong here; one left out for a failure would have to name it and its pending fix.
EXCLUDED: dict[str, str] = {
    "tuckerflow.train.train": "trains a network for epochs and writes a run folder",
    "tuckerflow.train.prepare": "loads a data set, builds the network and creates the run folder",
    "tuckerflow.train.execute": "trains the network of a prepared run (a Run from prepare)",
    "tuckerflow.train.atomic_save": "writes a file to the given path",
    "tuckerflow.train.plot_history": "writes a figure file to the given path",
    "tuckerflow.train.evaluate": (
        "runs the caller's network on x: a batch that network refuses (another width or "
        "dtype) raises the network's own torch error; its own arguments are tested in "
        "tests/test_train_loop.py"
    ),
}


@dataclass
class Target:
    """A public callable to fuzz."""

    name: str
    func: Callable
    decision: bool
    params: list

    @property
    def torch(self) -> bool:
        return self.name.startswith(tuple(m + "." for m in TORCH_MODULES))


@dataclass
class Outcome:
    """What one call did."""

    kind: str  # "ok" | "clean" | "crash" | "nan" | "hang"
    error: str = ""
    message: str = ""
    seconds: float = 0.0


@dataclass
class FuzzReport:
    """Counts of outcomes, and the failing calls (callable, arguments, outcome)."""

    calls: int = 0
    counts: collections.Counter = field(default_factory=collections.Counter)
    crashes: collections.Counter = field(default_factory=collections.Counter)
    failures: list = field(default_factory=list)
    per_target: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    seconds: float = 0.0

    def add(self, target: Target, args: tuple, kwargs: dict, out: Outcome) -> None:
        self.calls += 1
        self.counts[out.kind] += 1
        self.per_target[target.name][out.kind] += 1
        if out.kind == "crash":
            self.crashes[out.error] += 1
        if out.kind in ("crash", "nan", "hang"):
            self.failures.append((target.name, _describe(args, kwargs), out))

    @property
    def ok(self) -> bool:
        return not (self.counts["crash"] or self.counts["nan"] or self.counts["hang"])

    def summary(self) -> str:
        c = self.counts
        lines = [
            f"calls: {self.calls} over {len(self.per_target)} callables in {self.seconds:.1f} s",
            f"returned: {c['ok']}",
            f"clean errors (ValueError/TypeError): {c['clean']}",
            f"crashes (other exception types): {c['crash']}",
        ]
        for err, n in self.crashes.most_common():
            lines.append(f"    {err}: {n}")
        lines.append(f"silent NaN from decision functions: {c['nan']}")
        lines.append(f"hangs: {c['hang']}")
        if self.failures:
            lines.append("failing calls (first per callable and kind):")
            seen = set()
            for name, call, out in self.failures:
                if (name, out.kind, out.error) in seen:
                    continue
                seen.add((name, out.kind, out.error))
                lines.append(f"  {name}({call}) -> {out.kind} {out.error}: {out.message[:160]}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# targets


def _torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def _excluded_ids(mods) -> dict:
    """``id(callable) -> reason`` for the EXCLUDED entries of the given modules."""
    out = {}
    for name, reason in EXCLUDED.items():
        modname, _, attr = name.rpartition(".")
        if modname in mods:
            out[id(getattr(importlib.import_module(modname), attr))] = reason
    return out


def exclusion_reason(target: Target) -> str | None:
    """Why ``target`` is left out of the fuzz (None if it is fuzzed)."""
    mods = list(MODULES) + (list(TORCH_MODULES) if _torch_available() else [])
    return _excluded_ids(mods).get(id(target.func))


def public_callables(*, torch: bool | None = None, include_excluded: bool = False) -> list:
    """Every public callable of the fuzzed modules, as :class:`Target` objects."""
    mods = list(MODULES)
    if torch is None:
        torch = _torch_available()
    if torch:
        mods += TORCH_MODULES
    out = []
    seen = set()
    excluded = _excluded_ids(mods)
    for modname in mods:
        mod = importlib.import_module(modname)
        names = list(getattr(mod, "__all__", []))
        if modname == "tuckerflow":
            names += sorted(getattr(mod, "_LAZY_NAMES", {}))
        for n in names:
            obj = getattr(mod, n)
            if not callable(obj) or isinstance(obj, dict):
                continue
            if isinstance(obj, type) and issubclass(obj, BaseException):
                continue
            full = f"{modname}.{n}"
            key = id(obj)
            if key in seen:
                continue
            seen.add(key)
            if not include_excluded and key in excluded:
                continue
            try:
                params = list(inspect.signature(obj).parameters.values())
            except (TypeError, ValueError):
                continue
            params = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            out.append(Target(full, obj, full not in ARITHMETIC, params))
    return out


# --------------------------------------------------------------------------------------------
# value pools


class _Pools:
    """Plausible and malformed argument values, built once on the NumPy backend."""

    def __init__(self, torch: bool):
        with tl.backend_context("numpy", local_threadsafe=True):
            gen = np.random.default_rng(0)
            y = tf.random_tucker((4, 3, 2), (2, 2, 2), rng=0)
            y2 = tf.random_tucker((3, 3), (2, 2), rng=1)
            x = y.to_tensor()
            nan_x = x.copy()
            nan_x[1, 1, 1] = np.nan
            inf_x = x.copy()
            inf_x[0, 0, 0] = np.inf
            nan_core = y.core.copy()
            nan_core[0, 0, 0] = np.nan
            inf_factor = y.factors[1].copy()
            inf_factor[0, 0] = np.inf
            bad_y = tf.TuckerTensor(nan_core, list(y.factors))
            bad_f = tf.TuckerTensor(y.core, [y.factors[0], inf_factor, y.factors[2]])
            skew = tf.TuckerTensor(y.core, [f * 3.0 for f in y.factors])  # not orthonormal
            m = tf.FixedRankTucker((4, 3, 2), (2, 2, 2))
            xi = m.random_tangent(y, rng=1)
            mat_inf = gen.standard_normal((4, 4))
            mat_inf[1, 2] = np.inf
            self.tucker = [
                y,
                y,
                y,
                y2,
                bad_y,
                bad_f,
                skew,
                y * 1e300,
                y * 1e-300,
                (y.core, y.factors),
            ]
            self.dense = [x, x, x2 := gen.standard_normal((4, 3)), nan_x, inf_x, x * 1e300]
            self.dense += [x * 1e-300, np.zeros((4, 3, 2)), np.zeros((0, 3)), np.float64(1.0)]
            self.dense += [x.astype(np.float32), x.astype(np.int64), x + 1j * x, x2 > 0]
            self.matrices = [
                gen.standard_normal((5, 4)),
                np.linalg.qr(gen.standard_normal((4, 2)))[0],
            ]
            self.matrices += [gen.standard_normal((4, 4)), mat_inf, np.full((4, 3), np.nan)]
            self.matrices += [np.zeros((4, 2)), gen.standard_normal((2, 4)), gen.standard_normal(4)]
            self.matrices += [np.eye(4), gen.standard_normal((3, 3)), np.zeros((0, 4))]
            self.core = [y.core, y.core, nan_core, np.ones((2, 3, 4)), gen.standard_normal((4, 4))]
            self.core += [mat_inf, np.zeros((2, 2, 2)), y.core * 1e300, gen.standard_normal(3)]
            self.tangents = [xi, xi, m.zero_tangent(y), xi * float("nan")]
            self.manifold = [m, tf.FixedRankTucker((3, 3), (2, 2))]
            self.lists = [list(y.factors), [y.factors[0], None, y.factors[2]], [None, None, None]]
            self.lists += [[], [np.eye(2)] * 3, [mat_inf, mat_inf], list(y.factors[:2]), "abc"]
        nan, inf = float("nan"), float("inf")
        self.ints = [0, 1, 2, 3, -1, 10**9, True, 2.0, 2.7, nan, inf, "2", None, np.int64(2)]
        # layer sizes: 10**9 inputs make a valid layer whose factors take gigabytes (and a
        # full-rank 3-d convolution of size 16 already 16**5 core entries); not a bad input
        self.sizes = [s for s in self.ints if s != 10**9] + [16]
        self.ranks = self.ints + [(2, 2, 2), (2, 2), (-1, 2, 3), (0, 2, 2), (9, 2, 3), (3, 1, 1)]
        self.ranks += [[2.0, 2, 2], (nan, 2, 2), (inf, 1, 1), (2, 2, 2, 2), [None, 2, 2], "222"]
        self.floats = [0.0, 1e-3, 0.1, 0.5, 1.0, -0.1, nan, inf, -inf, 1e-300, 1e300, 1e-17]
        self.floats += ["0.1", None, 1j, True, np.float32(0.1), np.float64(0.5), 2]
        self.strings = ["hosvd", "st_hosvd", "auto", "qr", "gram", "svd", "randomized", "rk4"]
        self.strings += ["exp", "euler", "ra-bug", "bug", "psi", "parallel-bug", "midpoint-bug"]
        self.strings += ["dirichlet", "periodic", "neumann", "tangent", "factors", "weight"]
        self.strings += ["raise", "skip", "one-pass", "two-pass", "conv", "total", "", "nonsense"]
        self.strings += ["spatial", "none", 0, None]
        self.shapes = [(4, 3, 2), (4, 3, 2), (3, 3), (2.7, 3), (0, 3), (-1, 2), (), 4, "43"]
        self.shapes += [(10**6, 10**6), (1,), [4, 3, 2], (nan, 2), None]
        self.dtypes = ["float32", "float64", "complex64", "complex128", np.float32, "int64"]
        self.dtypes += [np.dtype("float64"), "half", int, None, "float8", 3]
        self.seeds = [None, 0, 1, -1, 2.5, np.random.default_rng(0), "seed", True]
        self.t_spans = [(0.0, 0.2), (0.0, 0.2), (0.0, 0.0), (0.2, 0.0), (0.0, nan), (0.0, inf)]
        self.t_spans += [(0.0,), "01", None, (0.0, 1e300), [0, 0.1]]
        self.callables = [_rhs_zero, _rhs_zero, _rhs_decay, _rhs_nan, _rhs_none, _rhs_raises]
        self.callables += [_rhs_shape, None, 3, "f"]
        self.misc = [None, object(), [], (), {}, b"x", np.float64(2), np.int64(3), 1j, -1]
        self.misc += [nan, inf, "x", [nan], slice(1)]
        self._rank_pools()
        self._train_pools()
        self.torch = torch
        if torch:
            self._torch_pools()

    def _rank_pools(self):
        from tuckerflow.ranks import RankSpec, prepare_tails, rank_spec

        nan = float("nan")
        # rank requests as rank_spec makes them, and malformed ones built by hand (no
        # bounds, a NaN entry or tolerance, float bounds, the wrong length, rank and tolerance)
        self.specs = [
            rank_spec((4, 3, 2), 2),
            rank_spec((4, 3, 2), None, 0.1),
            rank_spec((4, 3, 2), None, 0.1, None, 2),
            rank_spec((2, 2, 2), None, None, 1e-3),
            rank_spec((3, 3), None, 0.5, None, None, 2),
            RankSpec(None, None, None),
            RankSpec((nan, 2, 2), None, None, [1, 1, 1], [2, 2, 2]),
            RankSpec(None, nan, None, [1, 1, 1], [4, 3, 2]),
            RankSpec(None, 0.1, None, [0, 1, 1], [2.5, 3, 2]),
            RankSpec((2, 2), None, None, [1, 1], [2, 2]),
            RankSpec((2, 2, 2), 0.1, None, [1, 1, 1], [2, 2, 2]),
            RankSpec((9, 9, 9), None, None, [1, 1, 1], [9, 9, 9]),
        ]
        self.prepared = [prepare_tails([3.0, 1.0, 0.1]), prepare_tails([]), "prep", None]
        self.error_functions = [_error_zero, _error_sum, _error_nan, _error_str, _error_neg]
        self.error_functions += [_error_inf, _error_raises, None, 3]
        self.names = ["rank", "X", "", "core", None, 3]

    def _train_pools(self):
        gen = np.random.default_rng(2)
        nan = float("nan")
        images = gen.standard_normal((12, 1, 3, 3)).astype(np.float32)
        labels = np.arange(12) % 3
        nan_images = images.copy()
        nan_images[2, 0, 1, 1] = nan
        self.images = [images, images, images.astype(np.float64), images[:, 0], nan_images]
        self.images += [(images * 255).astype(np.uint8), images[:0], images.astype(np.float64)]
        self.images += [images.astype(np.float64) * 1e300, images > 0, images.tolist(), None]
        self.images += [images + 1j, images[:, :, :0], images[0]]
        self.labels = [labels, labels, labels % 2, np.array([0, 1, 1, 5]), np.zeros(12, int)]
        self.labels += [labels.astype(np.float64), labels + 0.5, np.array([], int), labels - 1]
        self.labels += [labels[:7], labels.reshape(3, 4), labels > 0, labels.tolist(), None]
        self.labels += [np.full(12, nan), np.array(["a"] * 12), np.full(12, 2**62)]
        pair = (images[0], 1)
        self.datasets = [[pair, (images[1], 0)], [(images[0, 0], 0), (images[1, 0], 1)]]
        self.datasets += [[(images[0], 2.7)], [(images[0], None)], [(nan_images[2], 0)]]
        self.datasets += [[(images[0], 0), (images[0, 0], 1)], [], "abc", None, [pair, 3]]
        self.datasets += [[((images[0] > 0).astype(np.uint8) * 255, True)], [(images[0], "1")]]
        self.paths = ["x", "", None, 3, "/nonexistent/data.npz", __file__, "."]
        self.sequences = [[2, 3], (4, 8, 16), [], (2.5, 3), (0, 2), (-1,), "abc", None, [nan]]
        self.summaries = [_summary(), {}, None, "summary", dict(_summary(), test_accuracy="x")]
        self.summaries += [dict(_summary(), ranks=None), dict(_summary(), time_s=nan)]

    def _torch_pools(self):
        import torch  # only reached when the torch parts are fuzzed
        from torch import nn

        import tuckerflow.nn as tnn

        g = torch.Generator().manual_seed(0)
        w = torch.randn(6, 4, generator=g, dtype=torch.float64)
        wc = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)
        wn = w.clone()
        wn[0, 0] = float("nan")
        self.weights = [w, w, wc, wn, w * 1e300, torch.zeros(0, 4), torch.tensor(1.0)]
        self.weights += [w.to(torch.float32), w.to(torch.int64)]

        def model():
            return nn.Sequential(tnn.TuckerLinear(4, 4, rank=2, dtype=torch.float64))

        def conv():
            return nn.Sequential(
                tnn.TuckerConv2d(2, 3, 3, padding=1, rank=2, keep_full="none", dtype=torch.float64)
            )

        self.models = [model, model, conv, lambda: nn.Linear(3, 2), lambda: nn.Sequential()]
        self.models += [lambda: None, lambda: "model"]
        self._train_torch_pools()

        def edited(make, key, value):
            sd = dict(make().state_dict())
            if value is None:
                sd.pop(key)
            else:
                sd[key] = value
            return sd

        # state dicts of the pool's models, whole and malformed (a missing factor, a core off
        # its factors, an impossible rank, a non-tensor), to load into another model
        z = torch.zeros
        self.state_dicts = [
            lambda: model().state_dict(),
            lambda: conv().state_dict(),
            lambda: edited(model, "0.factors.1", None),
            lambda: edited(model, "0.core", z(3, 2, dtype=torch.float64)),
            lambda: edited(model, "0.core", z(1, 2, dtype=torch.float64)),
            lambda: edited(conv, "0.core", "core"),
            {},
        ]

    def _train_torch_pools(self):
        import torch  # only reached when the torch parts are fuzzed

        from tuckerflow.train import TrainConfig, lenet5
        from tuckerflow.train.models import layer_parameter_counts

        g = torch.Generator().manual_seed(3)
        self.tensors = [torch.randn(12, 4, generator=g, dtype=torch.float64)]
        self.tensors += [torch.randn(12, 3, generator=g), torch.zeros(0, 4, dtype=torch.float64)]
        self.label_tensors = [torch.arange(12) % 4, torch.arange(12) % 2, torch.zeros(0).long()]
        self.label_tensors += [torch.arange(12) % 9, torch.arange(12.0), torch.arange(7) % 2]
        self.configs = [TrainConfig(), TrainConfig(method="tdlrt"), TrainConfig(model="x")]
        self.configs += [None, "config", {}]
        counts = layer_parameter_counts(lenet5(1, 8, 3))
        self.counts = [counts, counts, {}, {"conv1": ("weird", 3)}, {"conv1": 3}]
        self.counts += [{"conv1": ("conv", -1)}, {"conv1": ("conv", 2.5)}, None, "counts"]

    # -- drawing ------------------------------------------------------------------------------
    def for_param(self, name: str, owner: str):
        """The pool a parameter called ``name`` draws from (lazy entries are callables)."""
        if owner.startswith("tuckerflow.train."):
            pool = self._train_param(name, owner)
            if pool is not None:
                return pool
        if name in ("model", "module") and self.torch:
            return self.models
        if name in ("weight",) and self.torch:
            return self.weights
        if name in ("state_dict",) and self.torch:
            return self.state_dicts
        if name in ("optimizer",) and self.torch:
            return ["optimizer", "optimizer", None, "sgd", 3]
        if name in ("y", "z", "Y", "Z", "X", "x", "y0", "point", "egrad", "tucker_tensor"):
            return self.tucker + self.dense + self.tangents[:1]
        if name in ("xi", "v", "u") and owner.startswith("tuckerflow.geometry"):
            return self.tangents + self.tucker[:2] + self.dense[:2]
        if name in ("matrix", "a", "U0", "K", "vh", "m", "M"):
            return self.matrices
        if name in ("core", "C_hat", "C0", "dcore", "G"):
            return self.core
        if name in ("matrices", "U_hats", "U0s", "factors", "dfactors", "scaled_dfactors"):
            return self.lists
        if name in ("shape", "weight_shape", "old_shape"):
            return self.shapes
        if name in ("rank", "max_rank", "min_rank", "rank_hint", "order", "modes", "full_modes"):
            return self.ranks
        if name in ("in_features", "out_features", "in_channels", "out_channels", "kernel_size"):
            return self.sizes if self.torch else self.ints
        if name in ("n", "sweeps"):
            # random_orthonormal(10**9, 1) (8 GB and a QR) and random_tucker(sweeps=10**9) are
            # valid requests that take minutes, not bad input; a timed-out call's thread keeps
            # running, so such draws would pile up memory
            return self.sizes
        if name in ("mode", "r", "krylov_dim", "update_every"):
            return self.ints
        if name in ("method", "truncation", "kstep", "boundary", "substep", "init", "scope"):
            return self.strings
        if name in ("on_nonfinite", "keep_full", "padding_mode", "kind"):
            return self.strings
        if name in ("dtype",):
            return self.dtypes
        if name in ("rng", "seed"):
            return self.seeds
        if name in ("t_span",):
            return self.t_spans
        if name in ("fun", "f", "callback", "filter"):
            return self.callables
        if name in ("manifold",):
            return self.manifold
        if name in ("s",):
            return [np.array([3.0, 1.0, 0.1]), np.array([np.nan, 1.0]), [1.0, 0.5], "s"]
        if name in ("rtol", "atol", "alpha", "beta", "t", "tau", "lr", "budget2", "margin2"):
            return self.floats
        if name in ("decay", "norm", "step", "h", "t0", "t_bound", "spacing", "first_step"):
            return self.floats
        if name in ("spacing", "diagonals", "potentials", "couplings", "terms", "parts"):
            return self.lists + self.floats[:3]
        if name in ("spec",):
            return self.specs
        if name in ("prep",):
            return self.prepared
        if name in ("theta", "used2", "top"):
            return self.floats
        if name in ("remaining_modes", "size"):
            return self.ints
        if name in ("d",):
            return self.sizes  # per_mode(2, 10**9): a valid list of 10**9 entries
        if name in ("start", "floor", "fixed", "value"):
            return self.ranks + (self.floats if name == "value" else [])
        if name in ("error2", "error_bound"):
            return self.error_functions
        if name in ("u", "vh", "tail2"):
            return self.matrices + self.core[:2]
        if name in ("name",):
            return self.names
        return self.misc

    def _train_param(self, name: str, owner: str):
        """Pools of :mod:`tuckerflow.train`'s parameters (None: the general pools)."""
        evaluate = owner.endswith(".evaluate")
        if name in ("x", "x_train"):
            return self.tensors if evaluate and self.torch else self.images
        if name in ("y",):
            return self.label_tensors if evaluate and self.torch else self.labels
        if name in ("dataset",):
            return self.datasets
        if name in ("path",):
            return self.paths
        if name in ("name", "source"):
            return ["lenet5", "vgg_small", "resnet18", "data", "", "nonsense", None, 3]
        if name in ("val_fraction", "test_fraction"):
            return self.floats
        if name in ("input_shape", "image_size", "widths"):
            return self.sequences + ([8, 0, -1, 2.7, None] if name == "image_size" else [])
        if name in ("num_classes", "width", "batch_size", "dense_total"):
            return self.sizes
        if name in ("summary",):
            return self.summaries
        if self.torch and name in ("config",):
            return self.configs
        if self.torch and name in ("dense_counts",):
            return self.counts
        if self.torch and name in ("dense_model",):
            return self.models
        if name in ("obj",):
            return [{"a": [1, 2.0, "s", None]}, object(), {1: {2}}, b"x", 1j]
        return None


def _rhs_zero(t, y, *args):
    return y * 0.0


def _rhs_decay(t, y, *args):
    return y * -1.0


def _rhs_nan(t, y, *args):
    return y * float("nan")


def _rhs_none(t, y, *args):
    return None


def _rhs_raises(t, y, *args):
    raise ValueError("the right-hand side refuses")


def _rhs_shape(t, y, *args):
    return np.ones((2, 2))


def _error_zero(ranks):
    return 0.0


def _error_sum(ranks):
    return 1.0 / (1.0 + abs(float(sum(ranks))))


def _error_nan(ranks):
    return float("nan")


def _error_str(ranks):
    return "error"


def _error_neg(ranks):
    return -1.0


def _error_inf(ranks):
    return float("inf")


def _error_raises(ranks):
    raise ValueError("the error function refuses")


def _summary():
    """A summary as ``tuckerflow.train`` writes it (the keys its table reads)."""
    return {
        "method": "tdlrt",
        "model": "lenet5",
        "data": "digits",
        "test_accuracy": 0.9,
        "val_accuracy": 0.91,
        "compression_rate": 0.5,
        "compression_rate_conv": 0.4,
        "compression_rate_model": 0.45,
        "time_s": 1.5,
        "epochs": 2,
        "ranks": {"conv1": [4, 1, 3, 3]},
        "tucker_layers": ["conv1"],
    }


def _resolve(value, pools):
    """Build lazy values (fresh models and optimizers for every call)."""
    if callable(value) and getattr(value, "__name__", "") == "<lambda>":
        return value()
    if callable(value) and getattr(value, "__name__", "") in ("model", "conv"):
        return value()
    return value


def draw_call(draw: Callable, target: Target, pools: _Pools):
    """Arguments for one call: ``draw(values) -> value`` picks one entry of a list."""
    args, kwargs = [], {}
    built, arg_names = {}, []
    for p in target.params:
        optional = p.default is not inspect.Parameter.empty
        if optional and draw([True, False, False]) is False:
            continue
        pool = pools.for_param(p.name, target.name)
        source = pool if draw([True, True, True, False]) else pools.misc + pools.floats
        value = _resolve(draw(list(source)), pools)
        built[p.name] = value
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and not optional:
            args.append(value)
            arg_names.append(p.name)
        else:
            kwargs[p.name] = value
    if pools.torch and "optimizer" in built and built["optimizer"] == "optimizer":
        import torch  # only reached when the torch parts are fuzzed

        model = built.get("model")
        params = list(model.parameters()) if hasattr(model, "parameters") else []
        opt = torch.optim.SGD(params or [torch.zeros(1, requires_grad=True)], lr=0.1)
        if "optimizer" in kwargs:
            kwargs["optimizer"] = opt
        else:
            args[arg_names.index("optimizer")] = opt
    return tuple(args), kwargs


# --------------------------------------------------------------------------------------------
# running and classifying


def _has_nan(obj, depth=0) -> bool:
    if depth > 3 or obj is None:
        return False
    if isinstance(obj, float):
        return math.isnan(obj)
    if isinstance(obj, (bool, int, str, bytes)):
        return False
    if getattr(obj, "success", True) is False:
        return False  # a result that reports its failure is not silent
    try:
        if tl.is_tensor(obj) or isinstance(obj, np.ndarray) or hasattr(obj, "detach"):
            a = obj.detach().cpu().numpy() if hasattr(obj, "detach") else np.asarray(obj)
            return a.dtype.kind in "fc" and bool(np.isnan(a).any())
    except (TypeError, ValueError, RuntimeError):
        return False
    parts = []
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        # a result record (TruncationInfo, RankSpec, a report): every field
        parts = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    elif hasattr(obj, "core") and hasattr(obj, "factors"):
        parts = [obj.core, *list(obj.factors)]
    elif hasattr(obj, "dcore") and hasattr(obj, "scaled_dfactors"):
        parts = [obj.dcore, *obj.scaled_dfactors]
    elif isinstance(obj, dict):
        parts = list(obj.values())
    elif isinstance(obj, (tuple, list)):
        parts = list(obj)
    return any(_has_nan(p, depth + 1) for p in parts)


def classify(exc: BaseException | None, result: Any, decision: bool) -> Outcome:
    """Outcome of a call from the exception it raised (or None) and what it returned."""
    if exc is None:
        if decision and _has_nan(result):
            return Outcome("nan", "NaN", "a decision function returned NaN")
        return Outcome("ok")
    if isinstance(exc, (MemoryError, FileNotFoundError)):
        # an allocation beyond the machine's memory (e.g. random_orthonormal(10**9, 10**9)):
        # refused by the array library, as NumPy itself does; a path that names no file:
        # the documented error of the loaders, as open() raises it
        return Outcome("clean", type(exc).__name__, str(exc))
    if isinstance(exc, np.linalg.LinAlgError) or not isinstance(exc, (ValueError, TypeError)):
        return Outcome("crash", type(exc).__name__, str(exc))
    return Outcome("clean", type(exc).__name__, str(exc))


def run_call(target: Target, args: tuple, kwargs: dict, timeout: float) -> Outcome:
    """Call ``target`` in a daemon thread (NumPy backend) and classify what happened."""
    box: dict = {}

    def work():
        try:
            with tl.backend_context("numpy", local_threadsafe=True):
                box["result"] = target.func(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - every exception is an outcome
            box["exc"] = exc

    start = time.perf_counter()
    thread = threading.Thread(target=work, daemon=True, name=f"fuzz:{target.name}")
    thread.start()
    thread.join(timeout)
    seconds = time.perf_counter() - start
    if thread.is_alive():
        return Outcome("hang", "timeout", f"no return within {timeout} s", seconds)
    out = classify(box.get("exc"), box.get("result"), target.decision)
    out.seconds = seconds
    return out


def _describe(args, kwargs) -> str:
    def short(v):
        if isinstance(v, np.ndarray):
            bad = "" if v.dtype.kind not in "fc" or np.isfinite(v).all() else " non-finite"
            return f"array{v.shape}{bad}"
        if hasattr(v, "core") and hasattr(v, "factors"):
            return f"Tucker{tuple(v.shape)}"
        text = repr(v)
        return text if len(text) < 40 else text[:37] + "..."

    parts = [short(a) for a in args] + [f"{k}={short(v)}" for k, v in kwargs.items()]
    return ", ".join(parts)


def fuzz(
    calls: int = 500,
    *,
    timeout: float = 10.0,
    targets: list | None = None,
    derandomize: bool = True,
) -> FuzzReport:
    """Make ``calls`` fuzzed calls spread over ``targets`` (default: every public callable).

    Half of the calls go to the callables in equal shares, the rest to callables drawn at
    random; arguments are drawn by Hypothesis (``st.data()``). The calls do not stop at a
    failure: the report collects every outcome.
    """
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    targets = public_callables() if targets is None else list(targets)
    pools = _Pools(torch=any(t.torch for t in targets) and _torch_available())
    report = FuzzReport()
    start = time.perf_counter()

    def run(pool: list, examples: int) -> None:
        if examples <= 0:
            return

        @settings(
            max_examples=examples,
            derandomize=derandomize,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate],
        )
        @given(data=st.data())
        def one(data):
            if report.calls >= calls:
                return
            target = pool[0] if len(pool) == 1 else data.draw(st.sampled_from(pool))

            def draw(values):
                return data.draw(st.sampled_from(values))

            try:
                args, kwargs = draw_call(draw, target, pools)
            except Exception:  # noqa: BLE001 - building lazy values failed: skip the example
                return
            report.add(target, args, kwargs, run_call(target, args, kwargs, timeout))

        one()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # half of the calls in equal shares per callable (every one is reached), the rest
        # on callables drawn at random
        share = calls // (2 * len(targets)) if targets else 0
        for target in targets:
            run([target], share)
        while report.calls < calls:
            before = report.calls
            run(targets, calls - report.calls)
            if report.calls == before:
                break
    report.seconds = time.perf_counter() - start
    return report


def main(argv=None) -> int:
    """``python -m tuckerflow.testing.fuzz``: run the fuzz and print its figures."""
    parser = argparse.ArgumentParser(
        prog="python -m tuckerflow.testing.fuzz", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--calls", type=int, default=10_000, help="number of calls")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    parser.add_argument("--no-torch", action="store_true", help="skip tuckerflow.nn/optim")
    parser.add_argument(
        "--include-excluded", action="store_true", help="also fuzz the EXCLUDED callables"
    )
    ns = parser.parse_args(argv)
    targets = public_callables(
        torch=False if ns.no_torch else None, include_excluded=ns.include_excluded
    )
    report = fuzz(ns.calls, timeout=ns.timeout, targets=targets)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
