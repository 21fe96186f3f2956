"""Facts of algorithms.md §5 about one TDLRT step: exact augmented core, tangent space
containment, rank at most doubling, truncation error bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorly as tl
import torch
from conftest import eps
from hypothesis import given
from hypothesis import strategies as st

from tuckerflow.dlra import truncate_core
from tuckerflow.optim import kstep_bases
from tuckerflow.optim.basis import partial_contraction
from tuckerflow.optim.transport import mode_products
from tuckerflow.testing.strategies import shape_and_rank

EPS64 = eps("float64")


def _point(shape, rank, seed):
    g = torch.Generator().manual_seed(seed)
    core = torch.randn(rank, generator=g, dtype=torch.float64)
    factors = [
        torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))[0]
        for n, r in zip(shape, rank)
    ]
    G = torch.randn(shape, generator=g, dtype=torch.float64)
    return core, factors, G


def _tangent_projection(core, factors, Z):
    """Inverse-free P_Y Z = Z ×_j U_jU_jᴴ + Σ_i Ten_i[(I − U_iU_iᴴ) Mat_i(Z) V_i V_iᴴ]."""
    d = core.dim()
    out = mode_products(Z, [u @ u.T for u in factors])
    with tl.backend_context("pytorch", local_threadsafe=True):
        for i in range(d):
            q, _ = torch.linalg.qr(tl.unfold(core, i).T)
            small = tl.unfold(partial_contraction(Z, factors, i), i) @ q  # Mat_i(Z) V_i
            small = small - factors[i] @ (factors[i].T @ small)
            other = list(core.shape)
            other[i] = Z.shape[i]
            term = tl.fold(small @ q.T, i, other)
            out = out + mode_products(term, [None if j == i else u for j, u in enumerate(factors)])
    return out


@given(sr=shape_and_rank(min_dims=2, max_dims=4, max_side=6), seed=st.integers(0, 2**31 - 1))
def test_augmented_core_reproduces_the_weight(sr, seed):
    shape, rank = sr
    core, factors, G = _point(shape, rank, seed)
    U_hats, C_hat, M_hats = kstep_bases(core, factors, G, 0.3)
    Y = mode_products(core, factors)
    Y_hat = mode_products(C_hat, U_hats)
    # one mode product per mode with orthonormal matrices: error ~ d · max(n) · eps · ‖Y‖
    assert torch.linalg.norm(Y_hat - Y) <= 100 * max(shape) * EPS64 * torch.linalg.norm(Y)
    for u, uh, m in zip(factors, U_hats, M_hats):
        r = u.shape[1]
        assert torch.equal(uh[:, :r], u)  # the old basis is kept as is
        assert uh.shape[1] <= min(2 * r, u.shape[0])  # the rank at most doubles
        gram = uh.T @ uh
        assert torch.allclose(gram, torch.eye(uh.shape[1], dtype=gram.dtype), atol=1e3 * EPS64)
        assert m.shape == (uh.shape[1], r)


@given(sr=shape_and_rank(min_dims=2, max_dims=4, max_side=6), seed=st.integers(0, 2**31 - 1))
def test_augmented_space_contains_the_tangent_space(sr, seed):
    shape, rank = sr
    core, factors, G = _point(shape, rank, seed)
    U_hats, _, _ = kstep_bases(core, factors, G, 0.1)
    PY = _tangent_projection(core, factors, G)
    PU = mode_products(G, [u @ u.T for u in U_hats])
    lhs = torch.linalg.norm(PU - PY)
    rhs = torch.linalg.norm(G - PY)
    # equality-type bound: allow round-off of the projections, ~ d · n · eps · ‖G‖
    assert lhs <= rhs + 1e3 * max(shape) * EPS64 * torch.linalg.norm(G)


@given(sr=shape_and_rank(min_dims=2, max_dims=4, max_side=6), seed=st.integers(0, 2**31 - 1))
def test_fixed_modes_take_the_bug_update(sr, seed):
    shape, rank = sr
    core, factors, G = _point(shape, rank, seed)
    lr = 0.2
    U_hats, C_hat, _ = kstep_bases(core, factors, G, lr, fixed_modes=range(len(shape)))
    with tl.backend_context("pytorch", local_threadsafe=True):
        for i, (u, uh) in enumerate(zip(factors, U_hats)):
            assert uh.shape == u.shape
            q, s = torch.linalg.qr(tl.unfold(core, i).T)
            k = u @ s.T - lr * tl.unfold(partial_contraction(G, factors, i), i) @ q
            # span Û_i = span K_i: the residual of K_i outside span Û_i vanishes
            resid = k - uh @ (uh.T @ k)
            assert torch.linalg.norm(resid) <= 1e3 * EPS64 * torch.linalg.norm(k)
    assert C_hat.shape == core.shape


@given(
    sr=shape_and_rank(min_dims=2, max_dims=4, max_side=6),
    seed=st.integers(0, 2**31 - 1),
    tau=st.sampled_from([0.01, 0.1, 0.3, 0.6]),
)
def test_truncation_error_is_below_sqrt_d_theta(sr, seed, tau):
    shape, rank = sr
    core, factors, G = _point(shape, rank, seed)
    lr = 0.5
    U_hats, C_hat, _ = kstep_bases(core, factors, G, lr)
    C_hat = C_hat - lr * mode_products(G, [u.T for u in U_hats])  # the Galerkin step
    with tl.backend_context("pytorch", local_threadsafe=True):
        new, P_list, info = truncate_core(C_hat, U_hats, rtol=tau)
    before = mode_products(C_hat, U_hats)
    after = mode_products(new.core, list(new.factors))
    theta = tau * float(torch.linalg.norm(C_hat))
    err = float(torch.linalg.norm(before - after))
    assert err <= math.sqrt(len(shape)) * theta * (1 + 1e-12) + 1e3 * EPS64 * float(
        torch.linalg.norm(before)
    )
    for u, p, n in zip(U_hats, P_list, new.rank):
        assert p.shape == (u.shape[1], n)
    assert np.isclose(info.tolerance, theta)


def test_kstep_arguments_are_checked_naming_them():
    g = torch.Generator().manual_seed(0)
    U = [torch.linalg.qr(torch.randn(n, 2, generator=g, dtype=torch.float64))[0] for n in (5, 4)]
    C = torch.randn(2, 2, generator=g, dtype=torch.float64)
    G = torch.randn(5, 4, generator=g, dtype=torch.float64)
    cases = [
        ((float("nan"), (), G, 0.1), {}, TypeError, "core must be a torch.Tensor"),
        ((C, U[:1], G, 0.1), {}, ValueError, "factors has 1 entries"),
        ((C, "ab", G, 0.1), {}, TypeError, "factors must be a list"),
        ((C, [U[0], U[1].T], G, 0.1), {}, ValueError, "factors\\[1\\].shape"),
        ((C, U, G.T, 0.1), {}, ValueError, "G must be a torch.Tensor of shape \\(5, 4\\)"),
        ((C, U, None, 0.1), {"factor_grads": "x"}, TypeError, "factor_grads"),
        ((C, U, G, float("inf")), {}, ValueError, "lr must be a finite"),
        ((C, U, G, "0.1"), {}, ValueError, "lr must be a finite"),
        ((C, U, G, 0.1), {"fixed_modes": (2,)}, ValueError, "fixed_modes contains 2"),
        # non-finite tensors: refused by the factorizations (no NaN bases come back)
        ((C, U, G * float("nan"), 0.1), {}, ValueError, "non-finite"),
        ((C * float("inf"), U, G, 0.1), {}, ValueError, "non-finite"),
    ]
    for args, kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            kstep_bases(*args, **kwargs)


@given(sr=shape_and_rank(min_dims=2, max_dims=4, max_side=6), seed=st.integers(0, 2**31 - 1))
def test_kstep_from_factor_gradients_spans_the_same_space(sr, seed):
    shape, rank = sr
    core, factors, G = _point(shape, rank, seed)
    # autograd gradient of ⟨G, C ×_i U_i⟩ with respect to each factor
    leaves = [u.clone().requires_grad_(True) for u in factors]
    torch.sum(G * mode_products(core, leaves)).backward()
    lr = 0.3
    by_weight, _, _ = kstep_bases(core, factors, G, lr)
    by_factors, c_hat, _ = kstep_bases(
        core, factors, None, lr, factor_grads=[u.grad for u in leaves]
    )
    with tl.backend_context("pytorch", local_threadsafe=True):
        conds = [torch.linalg.cond(tl.unfold(core, i)) for i in range(len(shape))]
    for u, a, b, cond in zip(factors, by_weight, by_factors, conds):
        assert torch.equal(b[:, : u.shape[1]], u)
        # same subspace (directions of size ≲ eps · cond(Mat_i C) may be kept by one only)
        pa, pb = a @ a.T, b @ b.T
        if a.shape == b.shape:
            assert torch.linalg.norm(pa - pb) <= 1e4 * EPS64 * float(cond) ** 2
    assert torch.linalg.norm(mode_products(c_hat, by_factors) - mode_products(core, factors)) <= (
        100 * max(shape) * EPS64 * torch.linalg.norm(core)
    )
