"""Backend and dtype fixtures, tolerances scaled by eps(dtype), Hypothesis profiles.

Every test that takes the ``backend`` fixture runs once per available backend: NumPy always,
PyTorch (CPU) when torch is installed, and PyTorch-CUDA and CuPy when a GPU is present. The
backend is activated with ``tl.backend_context`` for the duration of the test only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from dataclasses import dataclass

import numpy as np
import pytest
import tensorly as tl
from hypothesis import HealthCheck, settings

if importlib.util.find_spec("torch") is not None:
    import torch

    # pytest-xdist already runs one process per core; torch's intra-op thread pool only adds
    # start-up latency to the many tiny factorizations of the tests
    torch.set_num_threads(1)

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DTYPES = ("float32", "float64", "complex64", "complex128")


def _torch_cuda():
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def _cupy_gpu():
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any CUDA failure means "no usable GPU"
        return False


@dataclass(frozen=True)
class Backend:
    """A TensorLy backend plus device; converts NumPy arrays in and out."""

    name: str
    device: str | None = None

    @property
    def id(self):
        return self.name if self.device in (None, "cpu") else f"{self.name}-{self.device}"

    def tensor(self, a, dtype=None):
        a = np.asarray(a)
        dtype = a.dtype.name if dtype is None else dtype
        kw = {"dtype": getattr(tl.backend.current_backend(), dtype)}
        if self.device is not None:
            kw["device"] = self.device
        return tl.tensor(a, **kw)

    def numpy(self, x):
        return np.asarray(tl.to_numpy(x))


def available_backends():
    out = [Backend("numpy")]
    if importlib.util.find_spec("torch") is not None:
        out.append(Backend("pytorch", "cpu"))
        if _torch_cuda():
            out.append(Backend("pytorch", "cuda"))
    if _cupy_gpu():
        out.append(Backend("cupy"))
    return out


BACKENDS = available_backends()


@pytest.fixture(params=BACKENDS, ids=lambda b: b.id)
def backend(request):
    b = request.param
    with tl.backend_context(b.name, local_threadsafe=True):
        yield b


@pytest.fixture(params=DTYPES)
def dtype(request):
    return request.param


@pytest.fixture(params=("float64", "complex128"))
def dtype64(request):
    return request.param


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small-matrix work is latency-bound: extra intra-op threads only contend with the
    other test workers. Restored after the module that uses it (``pytestmark``)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is optional
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def eps(dtype) -> float:
    """Machine epsilon of the real part of ``dtype``."""
    name = str(dtype).rsplit(".", 1)[-1]
    name = {"complex64": "float32", "complex128": "float64"}.get(name, name)
    return float(np.finfo(name).eps)


def tol(dtype, factor: float = 100.0) -> float:
    """``factor * eps(dtype)``: the tolerance a round-off-exact identity is tested at."""
    return factor * eps(dtype)


def manifold_suite(backend, dtype, sr, seed, ambient="dense"):
    """:class:`tuckerflow.testing.ManifoldSuite` of ``FixedRankTucker(*sr)`` on ``backend``."""
    import tuckerflow as tf
    from tuckerflow.testing import ManifoldSuite

    shape, rank = sr
    return ManifoldSuite(
        tf.FixedRankTucker(shape, rank),
        dtype=dtype,
        device=backend.device,
        rng=seed,
        ambient=ambient,
    )


#: The ``torch.Tensor`` methods that read values to the host (``__array__``: what NumPy
#: functions call on a foreign array; the rest: explicit reads and implicit conversions).
HOST_READS = (
    "__array__",
    "item",
    "tolist",
    "numpy",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
)


@contextlib.contextmanager
def host_reads_outside_the_helper():
    """Record ``(method, caller frame)`` for every read of tensor values (meta tensors aside)
    that does not go through ``tuckerflow._host``."""
    import traceback

    import torch

    from tuckerflow import _host

    seen = []
    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def watch(name, fn):
        def wrapper(self, *args, **kwargs):
            if not _host.inside() and self.device.type != "meta":
                seen.append((name, traceback.extract_stack(limit=4)[0]))
            return fn(self, *args, **kwargs)

        return wrapper

    try:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, watch(name, fn))
        yield seen
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
