"""The truncation guard in the batched truncation: the same decisions as the per-layer guard,
and no host transfer of its own.

The batched truncation (:func:`tuckerflow.optim._batched.truncate_cores`) carries what the
guard decides with in the transfer of the singular values; the per-layer path
(``TDLRT._reference_path``) computes it from the tensors, layer by layer.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorly as tl
import torch
from conftest import host_reads_outside_the_helper
from test_optim_helpers import WeightTucker, tucker_tensor
from test_optim_host import (
    EPS32,
    EPS64,
    _weights,
    batches,
    chain,
    run_steps,
)

from tuckerflow import _host
from tuckerflow.dlra import truncate_core
from tuckerflow.optim import TDLRT, _batched


def _run(reference, *, steps=5, lr=3.0, dtype=torch.float64, **options):
    """Steps large against the weights (lr 3, momentum 0.9): the guard acts in most layers."""
    torch.manual_seed(0)
    model = chain(4, dtype=dtype)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    options.setdefault("update_every", 1)
    tdlrt = TDLRT(model, opt, tau=0.2, **options)
    tdlrt._reference_path = reference
    history, counts = [], []
    data = batches(dtype)
    for _ in range(steps):
        run_steps(model, tdlrt, data, 1, counts=counts)
        history.append((tdlrt.ranks(), tdlrt.guarded_truncations, _weights(model)))
    return history, counts


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"limit_truncation_rate": True},
        {"truncation_budget": True},
        {"update_every": 2},  # deferred: the guard acts at the end of the interval
        {"max_rank": 3},
    ],
)
def test_the_batched_guard_takes_the_per_layer_guards_decisions(options):
    """float64: at every step the same ranks and the same number of guarded truncations,
    and the same weights to round-off."""
    ref, _ = _run(True, **options)
    new, _ = _run(False, **options)
    for (r0, g0, w0), (r1, g1, w1) in zip(ref, new):
        assert r0 == r1
        assert g0 == g1
        for a, b in zip(w0, w1):
            # 5 steps of a map with Lipschitz constant O(1): a few hundred eps of the scale
            assert torch.linalg.vector_norm(a - b) <= 1e3 * EPS64 * (
                1 + torch.linalg.vector_norm(a)
            )
    # the guard did act (otherwise the comparison says nothing about it)
    assert new[-1][1] > 0


@pytest.mark.parametrize("options", [{}, {"update_every": 2}])
def test_the_batched_guard_in_float32_takes_the_per_layer_decisions(options):
    """float32, what users run: the batched guard reads its norms in float64, the per-layer
    one in float32; in these runs no decision lies within that round-off of its bound, so
    ranks and guarded counts agree and the weights stay within float32 round-off."""
    ref, _ = _run(True, dtype=torch.float32, **options)
    new, _ = _run(False, dtype=torch.float32, **options)
    for (r0, g0, w0), (r1, g1, w1) in zip(ref, new):
        assert (r0, g0) == (r1, g1)
        for a, b in zip(w0, w1):
            err = torch.linalg.vector_norm((a - b).double())
            assert err <= 1e3 * EPS32 * (1 + torch.linalg.vector_norm(a.double()))
    assert new[-1][1] > 0


@pytest.mark.parametrize("guard", [True, False])
def test_transfers_per_basis_update_with_the_guard(guard):
    """One transfer for the K-steps, one for the truncation of all layers, guard included,
    whether or not the guard acts (the per-layer path takes dozens)."""
    history, counts = _run(False, truncation_guard=guard)
    assert counts == [("adapt", 2)] * len(counts)
    if guard:
        assert history[-1][1] > 0
    _, per_layer = _run(True, truncation_guard=guard)
    assert all(n > 2 for _, n in per_layer)


def test_deferred_truncation_with_the_guard_transfers_once_per_truncation():
    history, counts = _run(False, steps=6, update_every=3)
    assert [k for k, _ in counts] == ["adapt", "core", "core"] * 2
    # K-step + rank-cap truncation; core steps: the finite flag, and at the end of the
    # interval the guarded truncation of all layers
    assert [n for _, n in counts] == [2, 1, 2] * 2
    assert history[-1][1] > 0


# ------------------------------------------------------- what the transfer carries


def _case(shape, rank, ref_scale, *, seed, fixed=()):
    """An augmented core ``Ĉ = Y₀ + S``: a step ``S`` of low rank and norm 1, a weight ``Y₀``
    of norm ``ref_scale`` (random, so of full rank), and orthonormal bases ``Û``."""
    g = torch.Generator().manual_seed(seed)
    y0 = torch.randn(*shape, generator=g, dtype=torch.float64)
    y0 = ref_scale * y0 / y0.norm()
    step = torch.randn(*rank, generator=g, dtype=torch.float64)
    for i, n in enumerate(shape):
        m = torch.randn(n, rank[i], generator=g, dtype=torch.float64)
        step = torch.movedim(torch.tensordot(m, step, dims=([1], [i])), 0, i)
    c_hat = y0 + step / step.norm()
    U = [
        None
        if i in fixed
        else torch.linalg.qr(torch.randn(2 * n, n, generator=g, dtype=torch.float64))[0]
        for i, n in enumerate(shape)
    ]
    return c_hat, U, y0


CASES = [
    ((6, 6, 4, 3), (1, 1, 1, 1), 0.1, (2, 3)),  # a conv core, two full modes
    ((6, 5, 4), (1, 1, 1), 0.1, ()),
    ((8, 6), (2, 2), 0.05, ()),
    ((9, 3, 3), (1, 1, 1), 0.3, ()),  # mode 0 at its bound 9 = 3·3
    ((12, 2, 3), (1, 1, 1), 0.1, ()),  # 12 > 2·3: a thin basis of mode 0, rows formed per mode
]


@pytest.mark.parametrize(("shape", "rank", "scale", "fixed"), CASES)
def test_guard_data_equal_the_norms_from_the_tensors(shape, rank, scale, fixed):
    c_hat, U, y0 = _case(shape, rank, scale, seed=sum(shape), fixed=fixed)
    with _host.counting() as n:
        ((new, P_list, _, data),) = _batched.truncate_cores([(c_hat, U, 1, None)], 0.3, [y0])
    assert n() == 1
    free = [i for i, u in enumerate(U) if u is not None]
    assert data.free == free
    norm = float(y0.norm())
    assert math.isclose(data.norm_reference, norm, rel_tol=1e-12)
    assert math.isclose(data.norm_change, float((c_hat - y0).norm()), rel_tol=1e-12)
    # ‖Y₀ − Y₀ ×_i P_iP_iᴴ‖ from the prefix table, against the projection itself
    back = y0
    for i in free:
        back = torch.movedim(torch.tensordot(P_list[i] @ P_list[i].T, back, dims=([1], [i])), 0, i)
    discarded = float((y0 - back).norm())
    # a difference of squares: absolute round-off ~ N eps ‖Y₀‖² in the square
    assert abs(data.discarded**2 - discarded**2) <= 1e2 * y0.numel() * EPS64 * norm**2
    # the remainders against the rank-cap HOSVD's bases (the per-layer guard's P_full)
    with tl.backend_context("pytorch"):
        _, P_full, _ = truncate_core(c_hat, U, min_rank=1, method="hosvd")
    for i in free:
        unfolded = torch.movedim(y0, i, 0).reshape(shape[i], -1)
        rest = data.remainders[i]
        assert len(rest) == P_full[i].shape[1] + 1
        for r in range(len(rest)):
            p = P_full[i][:, :r]
            want = float((unfolded - p @ (p.T @ unfolded)).norm()) ** 2
            assert abs(rest[r] - want) <= 1e2 * y0.numel() * EPS64 * norm**2


@pytest.mark.parametrize(("shape", "rank", "scale", "fixed"), CASES)
def test_a_reference_given_by_its_leading_block_gives_the_same_guard_data(
    shape, rank, scale, fixed
):
    """The weight before an augmentation is the old core zero-padded: the guard's tables from
    that block equal those from the padded tensor."""
    c_hat, U, _ = _case(shape, rank, scale, seed=sum(shape) + 1, fixed=fixed)
    g = torch.Generator().manual_seed(7)
    lead = tuple(n if u is None else max(1, n // 2) for n, u in zip(shape, U))
    block = torch.randn(*lead, generator=g, dtype=torch.float64)
    y0 = torch.zeros(shape, dtype=torch.float64)
    y0[tuple(slice(0, n) for n in lead)] = block
    with _host.counting() as n:
        ((new_a, _, _, a),) = _batched.truncate_cores([(c_hat, U, 1, None)], 0.3, [y0])
        ((new_b, _, _, b),) = _batched.truncate_cores([(c_hat, U, 1, None)], 0.3, [y0], [block])
    assert n() == 2
    assert new_a.rank == new_b.rank
    norm2 = float(y0.norm()) ** 2
    tol = 1e2 * y0.numel() * EPS64 * norm2
    assert math.isclose(a.norm_reference, b.norm_reference, rel_tol=1e2 * EPS64)
    assert math.isclose(a.norm_change, b.norm_change, rel_tol=1e2 * EPS64)
    assert (a.discarded is None) == (b.discarded is None)
    if a.discarded is not None:
        assert abs(a.discarded**2 - b.discarded**2) <= tol
    for i in a.free:
        assert np.allclose(a.remainders[i], b.remainders[i], rtol=0, atol=tol)


def test_the_guard_acts_in_these_cases_and_the_retruncation_needs_no_transfer():
    c_hat, U, y0 = _case((6, 5, 4), (1, 1, 1), 0.1, seed=15)
    ((new, _, _, data),) = _batched.truncate_cores([(c_hat, U, 1, None)], 0.3, [y0])
    # the relative rule keeps the step only; the guard's pre-check sees Y₀ lost
    assert new.rank == (1, 1, 1)
    assert data.discarded > 0.3 * data.norm_reference
    floor = [3, 3, 3]
    with _host.counting() as n:
        again, _, _ = data.retruncate(floor)
    assert n() == 0
    with tl.backend_context("pytorch"):
        want, _, _ = truncate_core(c_hat, U, rtol=0.3, min_rank=floor, method="hosvd")
    assert again.rank == want.rank
    assert torch.linalg.vector_norm(again.core - want.core) <= 1e3 * EPS64 * float(c_hat.norm())


def test_a_rank_cap_that_rotates_the_bases_falls_back_to_the_tensors():
    """Caps that break ``r_0 ≤ r_1 r_2`` make the rank-cap HOSVD rotate mode 0 (an exact
    lowering): its leading singular vectors are then not the per-layer guard's bases, and
    the batched guard reads those tails from the tensors instead (one transfer more)."""
    c_hat, U, y0 = _case((9, 3, 3), (1, 1, 1), 0.3, seed=4)
    ((_, _, _, data),) = _batched.truncate_cores([(c_hat, U, 1, (9, 2, 2))], 0.3, [y0])
    assert data.remainders is None
    ((_, _, _, data),) = _batched.truncate_cores([(c_hat, U, 1, None)], 0.3, [y0])
    assert data.remainders is not None


def test_the_fallback_takes_the_per_layer_decisions_and_counts_its_transfers():
    """A layer whose caps break validity of the rank-cap HOSVD (augmented core (16, 4, 4),
    caps (16, 3, 3): 16 > 3·3): the guard acts at the first step, reading those tails from
    the tensors (counted), with the per-layer path's decisions."""
    out = {}
    for reference in (True, False):
        layer = WeightTucker((16, 6, 6), (8, 2, 2), seed=1)
        target = tucker_tensor((16, 6, 6), (6, 3, 3), seed=4)
        target = 20.0 * target / target.norm()  # a first step that dominates the layer
        opt = torch.optim.SGD(layer.parameters(), lr=1.0)
        tdlrt = TDLRT(layer, opt, tau=0.3, update_every=1, max_rank=(16, 3, 3))
        tdlrt._reference_path = reference
        seen = []
        for _ in range(3):
            opt.zero_grad()
            (0.5 * ((layer() - target) ** 2).sum()).backward()
            with _host.counting() as n:
                tdlrt.step()
            seen.append((tdlrt.ranks()[""], tdlrt.guarded_truncations, n()))
        out[reference] = seen
    assert [s[:2] for s in out[True]] == [s[:2] for s in out[False]]
    assert out[False][0][1] == 1  # the guard acted at the first step
    # the fallback's transfers are counted: the rank-cap HOSVD (3) and the tails (1)
    assert out[False][0][2] == 2 + 4
    assert [s[2] for s in out[False][1:]] == [2, 2]


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("options", [{}, {"update_every": 2}, {"max_rank": (16, 3, 3)}])
def test_every_read_of_a_guarded_step_goes_through_the_helper(reference, options):
    """The guard's reads are counted on both paths (no ``float(t)`` or ``.tolist()`` beside
    the helper), also where it acts and where the batched path falls back to the tensors."""
    layer = WeightTucker((16, 6, 6), (8, 2, 2), seed=1)
    target = tucker_tensor((16, 6, 6), (6, 3, 3), seed=4)
    target = 20.0 * target / target.norm()
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    options = {"update_every": 1, **options}
    tdlrt = TDLRT(layer, opt, tau=0.3, **options)
    tdlrt._reference_path = reference
    for _ in range(3):
        opt.zero_grad()
        (0.5 * ((layer() - target) ** 2).sum()).backward()
        with host_reads_outside_the_helper() as seen:
            tdlrt.step()
        assert seen == []
    assert tdlrt.guarded_truncations >= 1


@pytest.mark.parametrize(("shape", "rank", "scale", "fixed"), CASES)
def test_unformed_truncation_forms_the_same_tucker_tensor(shape, rank, scale, fixed):
    """``truncate_cores(…, form=False)`` leaves the guarded items' kept bases unformed: the
    same ranks, core, bases, info and guard data, and ``form()`` is the formed result bit
    for bit, in the same one transfer."""
    c_hat, U, y0 = _case(shape, rank, scale, seed=sum(shape), fixed=fixed)
    items = [(c_hat, U, 1, None), (c_hat, U, 1, None)]
    ((a, Pa, ia, da), (a2, _, _, none)) = _batched.truncate_cores(items, 0.3, [y0, None])
    with _host.counting() as n:
        ((b, Pb, ib, db), (b2, _, _, _)) = _batched.truncate_cores(
            items, 0.3, [y0, None], form=False
        )
    assert n() == 1 and none is None
    assert isinstance(b, _batched.Unformed) and not isinstance(b2, _batched.Unformed)
    assert b.rank == a.rank and torch.equal(b.core, a.core)
    assert ia.error_bound == ib.error_bound and ia.tails == ib.tails
    assert (da.norm_reference, da.norm_change, da.discarded) == (
        db.norm_reference,
        db.norm_change,
        db.discarded,
    )
    formed = b.form()
    for x, y in zip(formed.factors, a.factors):
        assert torch.equal(x, y)
    for x, y in zip(b2.factors, a2.factors):
        assert torch.equal(x, y)
    for p, q in zip(Pa, Pb):
        assert (p is None and q is None) or torch.equal(p, q)
