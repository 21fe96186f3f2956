"""Every read of device values in the array code goes through ``tuckerflow._host``.

The paths run under TensorLy's PyTorch backend with the value reads of ``torch.Tensor``
watched (``__array__``, which NumPy functions call on a foreign array, ``item``, ``tolist``,
``numpy`` and the implicit conversions ``bool``/``float``/``int``/``index``): a NumPy-only
call on a device array (CuPy and CUDA tensors refuse those, or copy silently) or an
implicit host conversion shows up as a read outside the helper.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import host_reads_outside_the_helper

torch = pytest.importorskip("torch")

import tensorly as tl  # noqa: E402

import tuckerflow as tf  # noqa: E402
from tuckerflow.dlra import augment_basis, augmented_core, core_qr, truncate_core  # noqa: E402
from tuckerflow.linalg import flip_signs, left_singular, orth, svd  # noqa: E402


@pytest.fixture
def torch_backend():
    with tl.backend_context("pytorch"):
        yield


def _tensor(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _reads(fn):
    with host_reads_outside_the_helper() as seen:
        fn()
    return [
        f"{name} at {frame.filename.split('tuckerflow/')[-1]}:{frame.lineno}"
        for name, frame in seen
    ]


def test_the_watch_sees_numpy_calls_and_conversions(torch_backend):
    x = _tensor((3, 3))
    reads = _reads(lambda: (np.asarray(x), float(x[0, 0]), bool(x.any())))
    assert {"__array__", "__float__", "__bool__"} <= {r.split()[0] for r in reads}


def test_truncations_read_only_through_the_helper(torch_backend):
    x = _tensor((8, 7, 6))
    y = tf.random_tucker((8, 7, 6), 3, rng=0)
    y = tf.TuckerTensor(tl.tensor(y.core), [tl.tensor(u) for u in y.factors])
    assert _reads(lambda: tf.hosvd(x, rtol=0.3)) == []
    assert _reads(lambda: tf.st_hosvd(x, rtol=0.3)) == []
    assert _reads(lambda: tf.hosvd(x, rank=(3, 3, 3))) == []
    assert _reads(lambda: tf.truncate(y, rtol=1e-3)) == []
    assert _reads(lambda: tf.add(y, y, rtol=1e-3)) == []


@pytest.mark.parametrize("method", ["svd", "qr", "gram", "randomized"])
def test_factorisations_read_only_through_the_helper(torch_backend, method):
    a = _tensor((6, 20))
    assert _reads(lambda: left_singular(a, method=method, rank_hint=2)) == []
    assert _reads(lambda: (svd(a), orth(a.T), flip_signs(a))) == []


def test_dlra_blocks_read_only_through_the_helper(torch_backend):
    core = _tensor((3, 3, 2))
    u0 = [torch.linalg.qr(_tensor((n, r), 1))[0] for n, r in zip((8, 7, 6), (3, 3, 2))]
    k = _tensor((8, 3), 2)

    def run():
        core_qr(core, 1)
        uh = [augment_basis(u0[0], k)] + u0[1:]
        ch = augmented_core(core, u0, uh)
        truncate_core(ch, uh, rtol=0.1)
        truncate_core(ch, uh, rtol=0.1, method="st_hosvd")

    assert _reads(run) == []


def _integrator_methods():
    from tuckerflow.integrate import METHODS

    return list(METHODS)


@pytest.mark.parametrize("method", _integrator_methods())
def test_integrators_read_only_through_the_helper(torch_backend, method):
    """A few adaptive steps of every method: step-size control, rank decisions and error
    estimates read the device only through the helper."""
    from tuckerflow.integrate import METHODS

    y0 = tf.random_tucker((6, 5, 4), 2, rng=1)
    y0 = tf.TuckerTensor(tl.tensor(y0.core), [tl.tensor(u) for u in y0.factors])
    a = [tl.tensor(m) for m in np.random.default_rng(0).standard_normal((3, 6, 6))]

    def rhs(t, Y):
        x = Y.to_tensor()
        out = -0.5 * x
        for j, n in enumerate((6, 5, 4)):
            out = out + 0.1 * tl.moveaxis(tl.tensordot(a[j][:n, :n], x, axes=([1], [j])), 0, j)
        return out

    extra = {"min_rank": 1} if METHODS[method].rank_adaptive else {}
    sol = None

    def run():
        nonlocal sol
        sol = tf.solve_ivp(rhs, (0.0, 0.2), y0, method=method, rtol=1e-3, atol=1e-8, **extra)

    assert _reads(run) == []
    assert sol.success, sol.message
