"""The optimizer-state transport rule across basis and rank changes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tuckerflow.optim import (
    NONNEGATIVE_STATE_KEYS,
    transport_linear,
    transport_nonnegative,
    transport_state,
)


@st.composite
def state_and_bases(draw):
    d = draw(st.integers(1, 4))
    old = [draw(st.integers(1, 4)) for _ in range(d)]
    new = [draw(st.integers(1, 5)) for _ in range(d)]
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    mats = []
    for a, b in zip(old, new):
        # B = U'ᴴ U with orthonormal U (n × a) and U' (n × b): rows of norm at most one
        n = a + b
        u = torch.linalg.qr(torch.randn(n, a, generator=g, dtype=torch.float64))[0]
        w = torch.linalg.qr(torch.randn(n, b, generator=g, dtype=torch.float64))[0]
        mats.append(w.T @ u)
    m = torch.randn(old, generator=g, dtype=torch.float64)
    v = torch.rand(old, generator=g, dtype=torch.float64)
    return m, v, mats


@given(case=state_and_bases())
def test_linear_transport_is_the_mode_product(case):
    m, _, mats = case
    out = transport_linear(m, mats)
    expected = m
    for i, b in enumerate(mats):
        expected = torch.movedim(torch.tensordot(b, expected, dims=([1], [i])), 0, i)
    assert torch.allclose(out, expected, rtol=0, atol=1e-13)
    assert out.shape == tuple(b.shape[0] for b in mats)


@given(case=state_and_bases())
def test_second_moments_stay_nonnegative_finite_and_bounded(case):
    _, v, mats = case
    out = transport_nonnegative(v, mats)
    assert out.shape == tuple(b.shape[0] for b in mats)
    assert bool(torch.isfinite(out).all())
    assert float(out.min()) >= 0.0
    # a convex mixture of old variances and their mean never exceeds the old maximum
    assert float(out.max()) <= float(v.max()) * (1 + 1e-12)


def test_augmentation_pads_first_moments_with_zeros_and_second_with_the_mean():
    m = torch.arange(6.0, dtype=torch.float64).reshape(2, 3)
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0]], dtype=torch.float64)
    B0, B1 = torch.eye(4, 2, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
    mo = transport_linear(m, [B0, B1])
    assert torch.equal(mo[:2], m) and torch.equal(mo[2:], torch.zeros(2, 3, dtype=m.dtype))
    vo = transport_nonnegative(v, [B0, B1])
    assert torch.equal(vo[:2], v)
    assert torch.allclose(vo[2:], torch.full((2, 3), float(v.mean()), dtype=v.dtype))


def test_truncation_with_a_permutation_permutes_second_moments_exactly():
    v = torch.rand(3, 4, dtype=torch.float64)
    perm = torch.eye(3, dtype=torch.float64)[[2, 0, 1]]
    out = transport_nonnegative(v, [perm, None])
    assert torch.allclose(out, v[[2, 0, 1]], rtol=0, atol=1e-15)


def test_state_dict_transport_keeps_counters_and_foreign_shapes():
    shape = (2, 3)
    state = {
        "step": torch.tensor(7.0),
        "exp_avg": torch.ones(shape),
        "exp_avg_sq": torch.full(shape, 4.0),
        "other_shape": torch.ones(5),
        "lr_factor": 0.5,
    }
    B = [torch.eye(3, 2), None]
    out = transport_state(state, shape, B)
    assert out["step"] is state["step"] and out["other_shape"] is state["other_shape"]
    assert out["lr_factor"] == 0.5
    assert out["exp_avg"].shape == (3, 3) and out["exp_avg_sq"].shape == (3, 3)
    assert float(out["exp_avg"][2].abs().max()) == 0.0
    assert torch.allclose(out["exp_avg_sq"][2], torch.full((3,), 4.0))
    assert state["exp_avg"].shape == shape  # the input is not modified
    assert {"exp_avg_sq", "max_exp_avg_sq", "square_avg"} <= NONNEGATIVE_STATE_KEYS


def test_transport_arguments_are_checked_naming_them():
    m = torch.ones(2, 3, dtype=torch.float64)
    b = torch.eye(3, 2, dtype=torch.float64)
    for fn, name in ((transport_linear, "m"), (transport_nonnegative, "v")):
        with pytest.raises(TypeError, match=f"{name} must be a torch.Tensor"):
            fn(m.numpy(), [b, None])
        with pytest.raises(ValueError, match="matrices has 1 entries"):
            fn(m, [b])
        with pytest.raises(TypeError, match="matrices\\[1\\] must be a torch.Tensor"):
            fn(m, [b, m.numpy()])
        with pytest.raises(ValueError, match="matrices\\[0\\].shape=\\(3, 3\\)"):
            fn(m, [torch.eye(3, dtype=m.dtype), None])
        with pytest.raises(TypeError, match="matrices must be a list"):
            fn(m, "ab")
    with pytest.raises(TypeError, match="state must be a dict"):
        transport_state(None, (2, 3), [b, None])
    with pytest.raises(ValueError, match="old_shape\\[0\\]"):
        transport_state({}, (float("inf"), 3), [None, None])
    with pytest.raises(ValueError, match="matrices has 1 entries"):
        transport_state({"momentum_buffer": m}, (2, 3), [b])


def test_factored_second_moments_follow_the_core_shape():
    g = torch.Generator().manual_seed(3)
    full = torch.rand(2, 3, 4, generator=g, dtype=torch.float64) + 0.1
    state = {
        "step": torch.tensor(3.0),
        "row_var": full.mean(dim=-1, keepdim=True),
        "col_var": full.mean(dim=-2, keepdim=True),
    }
    B = [torch.eye(3, 2, dtype=torch.float64), None, torch.eye(5, 4, dtype=torch.float64)]
    out = transport_state(state, (2, 3, 4), B)
    assert out["row_var"].shape == (3, 3, 1) and out["col_var"].shape == (3, 1, 5)
    for key in ("row_var", "col_var"):
        assert bool(torch.isfinite(out[key]).all()) and float(out[key].min()) > 0.0
    # Adafactor's estimate row ⊗ col / mean(row) in the new coordinates stays within the
    # range of the old one's entries up to the factoring (a convex mixture, then means)
    old = state["row_var"] @ state["col_var"] / state["row_var"].mean(dim=-2, keepdim=True)
    new = out["row_var"] @ out["col_var"] / out["row_var"].mean(dim=-2, keepdim=True)
    lo, hi = float(old.min()), float(old.max())
    assert lo**2 / hi <= float(new.min()) and float(new.max()) <= hi**2 / lo


@pytest.mark.parametrize("embedded", [(0,), (1,), (0, 1), (0, 2)])
def test_an_embedded_mode_pads_as_the_product_with_the_identity_block(embedded):
    from tuckerflow.optim.transport import basis_change, embedding

    g = torch.Generator().manual_seed(len(embedded))
    m = torch.randn(3, 4, 2, generator=g, dtype=torch.float64)
    mats = []
    for i, n in enumerate(m.shape):
        if i in embedded:
            mats.append(embedding(n + i % 2 + 1, n, m))  # [I; 0] with one or two new rows
        else:
            mats.append(torch.linalg.qr(torch.randn(n, n, generator=g, dtype=m.dtype))[0])
    out = basis_change(m, mats, embedded)
    # the padding is the product with [I; 0] exactly; the other modes' products see the
    # same numbers up to the order of the sums (a few eps of the entries)
    want = transport_linear(m, mats)
    tol = 16 * torch.finfo(m.dtype).eps * float(m.abs().max())
    assert out.shape == want.shape and torch.allclose(out, want, rtol=0, atol=tol)
    pads = transport_linear(m, [b if i in embedded else None for i, b in enumerate(mats)])
    only = [b if i in embedded else None for i, b in enumerate(mats)]
    assert torch.equal(basis_change(m, only, embedded), pads)
    state = {"momentum_buffer": m, "step": 3}
    moved = transport_state(state, tuple(m.shape), mats, embedded=embedded)
    assert torch.allclose(moved["momentum_buffer"], want, rtol=0, atol=tol)
    assert moved["step"] == 3


def test_an_unchanged_embedding_still_gives_a_new_tensor():
    from tuckerflow.optim.transport import basis_change, embedding

    m = torch.ones(2, 3)
    out = basis_change(m, [embedding(2, 2, m), None], (0,))
    assert torch.equal(out, m) and out.data_ptr() != m.data_ptr()
