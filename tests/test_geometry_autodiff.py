"""Riemannian gradients from one PyTorch backward pass, on every PyTorch device present."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl
from conftest import BACKENDS, tol

import tuckerflow as tf
from tuckerflow.geometry import AUTODIFF_METHODS, autodiff_riemannian_gradient
from tuckerflow.testing import ManifoldSuite, relative_distance

torch = pytest.importorskip("torch")
TORCH_BACKENDS = [b for b in BACKENDS if b.name == "pytorch"]


@pytest.fixture(params=TORCH_BACKENDS, ids=lambda b: b.id)
def torch_backend(request):
    with tl.backend_context("pytorch", local_threadsafe=True):
        yield request.param


def _problem(dtype, device, seed, decay=1.0):
    y = tf.random_tucker((6, 5, 4), (3, 2, 2), rng=seed, dtype=dtype, device=device, decay=decay)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((6, 5, 4))
    if "complex" in dtype:
        a = a + 1j * rng.standard_normal((6, 5, 4))
    a = torch.tensor(a, dtype=getattr(torch, dtype), device=device)

    def dense_f(x):
        # a non-quadratic real function: ½‖X − A‖² + ¼ Σ |X|⁴
        return 0.5 * torch.linalg.vector_norm(x - a) ** 2 + 0.25 * (x.abs() ** 4).sum()

    return y, dense_f


@pytest.mark.parametrize("method", AUTODIFF_METHODS)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_projected_dense_gradient(torch_backend, dtype, method, seed):
    y, dense_f = _problem(dtype, torch_backend.device, seed)
    x = y.to_tensor().detach().requires_grad_(True)
    dense_f(x).backward()
    ref = tf.project(y, x.grad)
    grad, value = autodiff_riemannian_gradient(
        lambda t: dense_f(t.to_tensor()), y, method=method, return_value=True
    )
    assert relative_distance(grad, ref) <= tol(dtype, 1000)
    assert abs(float(value) - float(dense_f(y.to_tensor()))) <= tol(dtype) * abs(float(value))
    assert grad.point is not None and grad.dcore.dtype == y.core.dtype


def test_tangent_method_is_inverse_free(torch_backend):
    # a core with singular values down to 1e-9 relative: the tangent parametrisation stays at
    # round-off; the factor parametrisation divides by S_i and may lose digits (not asserted)
    y, dense_f = _problem("float64", torch_backend.device, 3, decay=1e-3)
    x = y.to_tensor().detach().requires_grad_(True)
    dense_f(x).backward()
    ref = tf.project(y, x.grad)
    grad = autodiff_riemannian_gradient(lambda t: dense_f(t.to_tensor()), y, method="tangent")
    assert relative_distance(grad, ref) <= tol("float64", 1000)


def test_taylor_with_autodiff_gradient(torch_backend, dtype):
    suite = ManifoldSuite(
        tf.FixedRankTucker((5, 4, 3), (2, 2, 2)), dtype=dtype, device=torch_backend.device, rng=4
    )
    a = suite.tensor(np.linspace(-1, 1, 60).reshape(5, 4, 3))

    def f_torch(x):
        return torch.real(torch.sum(a.conj() * x)) + 0.25 * torch.linalg.vector_norm(x) ** 4

    out = suite.check_gradient_taylor(
        lambda x: float(f_torch(x)),
        gradient=lambda f, y: autodiff_riemannian_gradient(lambda t: f_torch(t.to_tensor()), y),
    )
    assert 2.4 >= out["slope"] >= 1.7


def test_bad_input(torch_backend):
    y, dense_f = _problem("float64", torch_backend.device, 0)
    with pytest.raises(ValueError, match="method='auto' is not one of"):
        autodiff_riemannian_gradient(dense_f, y, method="auto")
    with pytest.raises(TypeError, match="0-d real torch tensor"):
        autodiff_riemannian_gradient(lambda t: t.to_tensor(), y)
    with tl.backend_context("numpy"):
        z = tf.random_tucker((6, 5, 4), 2, rng=0)
        with pytest.raises(ValueError, match="needs the PyTorch TensorLy backend"):
            autodiff_riemannian_gradient(lambda t: 0.0, z)
