"""Host transfers of a TDLRT step: how many, through which door, and the same trajectory as
the per-layer path; the batched small factorisations against the per-matrix ones."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import tensorly as tl
import torch
import torch.nn.functional as F
from conftest import host_reads_outside_the_helper
from torch import nn

import tuckerflow.nn as tnn
from tuckerflow import _host
from tuckerflow.dlra import truncate_core
from tuckerflow.linalg import _gram_left, _left_singular, _orth, _svd, flip_signs
from tuckerflow.optim import TDLRT, _batched
from tuckerflow.optim.basis import HostBatch, KStepJob, kstep_bases, kstep_finish, kstep_prepare
from tuckerflow.optim.transport import mode_products


def chain(n_layers, *, dtype=torch.float64, seed=0):
    """A Tucker convolution (all four modes factorized) followed by Tucker linear layers."""
    torch.manual_seed(seed)
    layers = [
        tnn.TuckerConv2d(3, 6, 3, padding=1, rank=3, keep_full="none", dtype=dtype),
        nn.Tanh(),
        nn.Flatten(),
    ]
    width = 6 * 5 * 5
    for _ in range(n_layers - 2):
        layers += [tnn.TuckerLinear(width, 12, rank=4, dtype=dtype), nn.Tanh()]
        width = 12
    layers += [tnn.TuckerLinear(width, 4, rank=3, dtype=dtype)]
    model = nn.Sequential(*layers)
    assert sum(isinstance(m, tnn.TuckerLayer) for m in model.modules()) == n_layers
    return model


def batches(dtype=torch.float64, n=3):
    g = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(16, 3, 5, 5, generator=g, dtype=torch.float64).to(dtype),
            torch.randint(0, 4, (16,), generator=g),
        )
        for _ in range(n)
    ]


def run_steps(model, tdlrt, data, steps, *, counts=None):
    opt = tdlrt.optimizer
    for k in range(steps):
        x, y = data[k % len(data)]

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        kind = tdlrt.next_step
        if tdlrt.mode == "two-pass":
            with _host.counting() as n:
                tdlrt.step(closure)
        else:
            closure()
            with _host.counting() as n:
                tdlrt.step()
        if counts is not None:
            counts.append((kind, n()))


def make(n_layers, *, dtype=torch.float64, reference=False, **options):
    # the published schedule (a basis update at every step) unless a test asks otherwise
    options.setdefault("update_every", 1)
    model = chain(n_layers, dtype=dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    tdlrt = TDLRT(model, opt, tau=0.05, **options)
    tdlrt._reference_path = reference
    return model, tdlrt


@pytest.mark.parametrize(
    ("options", "per_update"),
    [
        ({}, 2),  # one-pass, K-step from the weight gradient: the Galerkin gradient is bounded
        ({"kstep": "factors"}, 3),  # + the finite check of the record-formed Galerkin gradient
        ({"mode": "two-pass"}, 3),  # + the finite check of the second evaluation's gradient
    ],
)
def test_transfers_per_step_do_not_depend_on_the_number_of_layers(options, per_update):
    seen = {}
    for n_layers in (2, 8):
        model, tdlrt = make(n_layers, **options)
        counts = []
        run_steps(model, tdlrt, batches(), 4, counts=counts)
        assert all(kind == "adapt" for kind, _ in counts)
        seen[n_layers] = [n for _, n in counts]
        # the ranks did change (the count is not that of a trivial step)
        assert any(r != (4, 4) for r in tdlrt.ranks().values())
    assert seen[2] == seen[8] == [per_update] * 4


@pytest.mark.parametrize("defer", [False, True])
def test_core_steps_read_only_the_finite_flag(defer):
    for n_layers in (2, 8):
        model, tdlrt = make(n_layers, update_every=3, defer_truncation=defer)
        counts = []
        run_steps(model, tdlrt, batches(), 6, counts=counts)
        assert [k for k, _ in counts] == ["adapt", "core", "core"] * 2
        # one flag: NaN/Inf in any gradient (what on_nonfinite acts on at this very step);
        # with deferred truncation the step that ends the interval also truncates all
        # layers, guard included, with one more transfer
        last = 2 if defer else 1
        assert [n for k, n in counts if k == "core"] == [1, last] * 2
        # K-step, then the truncation (deferred: to the rank cap only), one transfer each
        assert [n for k, n in counts if k == "adapt"] == [2, 2]


def test_frozen_ranks_take_one_transfer():
    model, tdlrt = make(8, freeze_ranks=True)
    counts = []
    run_steps(model, tdlrt, batches(), 3, counts=counts)
    assert counts == [("bug", 1)] * 3


@pytest.mark.parametrize("options", [{}, {"kstep": "factors"}, {"update_every": 2}])
def test_every_read_of_a_step_goes_through_the_helper(options):
    model, tdlrt = make(3, **options)
    data = batches()
    run_steps(model, tdlrt, data, 1)  # warm: the first step builds lazy state
    x, y = data[1]
    for _ in range(2):
        tdlrt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        with host_reads_outside_the_helper() as seen:
            tdlrt.step()
        assert seen == []


def test_the_watch_sees_a_read():
    t = torch.ones(2)
    with host_reads_outside_the_helper() as seen:
        float(t.sum())
        bool(t.any())
    assert [name for name, _ in seen] == ["__float__", "__bool__"]


# ------------------------------------------------------- same trajectory as per layer


def _weights(model):
    """The weight ``C ×_i U_i`` of every Tucker layer (independent of the representation)."""
    out = []
    for module in model.modules():
        if isinstance(module, tnn.TuckerLayer):
            factors = [None] * len(module.weight_shape)
            for mode_ in module.factorized_modes:
                factors[mode_] = module.factor(mode_).detach()
            out.append(mode_products(module.core.detach(), factors))
    return out


def _trajectory(reference, dtype, **options):
    model, tdlrt = make(8, dtype=dtype, reference=reference, **options)
    history = []
    data = batches(dtype)
    for _ in range(6):
        run_steps(model, tdlrt, data, 1)
        history.append(
            (
                tdlrt.ranks(),
                [p.detach().clone() for p in model.parameters()],
                {n: list(i.tails) for n, i in tdlrt.last_truncation.items()},
                _weights(model),
            )
        )
    return history


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"kstep": "factors"},
        {"mode": "two-pass"},
        {"update_every": 2, "defer_truncation": False},
        {"update_every": 2},
        {"max_rank": 4},
        {"truncation_guard": False},
        {"limit_truncation_rate": True},
        {"truncation_budget": True},
    ],
)
def test_batched_step_follows_the_per_layer_trajectory(options):
    """float64: the same ranks at every step and the weights to round-off (the two paths
    call the same factorisations, batched or one by one)."""
    ref = _trajectory(True, torch.float64, **options)
    new = _trajectory(False, torch.float64, **options)
    # A deferred truncation first rotates the untruncated augmented core to its HOSVD bases:
    # singular vectors of close singular values are fixed only up to a rotation that
    # round-off decides, so cores and factors are compared through the weights they form.
    deferred = options.get("update_every", 1) > 1 and options.get("defer_truncation", True)
    changed = False
    for (r0, p0, t0, w0), (r1, p1, t1, w1) in zip(ref, new):
        assert r0 == r1
        changed |= any(r != (3, 3, 3, 3) and r != (4, 4) and r != (3, 3) for r in r1.values())
        pairs = list(zip(w0, w1))
        if not deferred:
            pairs += list(zip(p0, p1))
        for a, b in pairs:
            assert a.shape == b.shape
            # 6 steps of a map with Lipschitz constant O(1): a few hundred eps of the scale
            assert torch.linalg.vector_norm(a - b) <= 1e3 * EPS64 * (
                1 + torch.linalg.vector_norm(a)
            )
        for n in t0:
            for x, y in zip(t0[n], t1[n]):
                assert abs(x - y) <= 1e-8 * (1 + abs(x))
    assert changed


EPS64 = torch.finfo(torch.float64).eps
EPS32 = torch.finfo(torch.float32).eps


def test_batched_step_in_float32_follows_the_per_layer_path():
    """float32, what users run: the batched path takes the per-layer path's decisions and
    stays within float32 round-off of it."""
    ref = _trajectory(True, torch.float32)
    new = _trajectory(False, torch.float32)
    for (r0, p0, _, _), (r1, p1, _, _) in zip(ref, new):
        assert r0 == r1
        for a, b in zip(p0, p1):
            err = torch.linalg.vector_norm((a - b).double())
            assert err <= 1e3 * EPS32 * (1 + torch.linalg.vector_norm(a.double()))


def test_a_pass_zeroed_away_costs_one_more_transfer_and_changes_nothing():
    """``model.zero_grad()`` between two backward passes: the K-step formed with every
    recorded pass is formed again with the passes ``core.grad`` still holds."""
    out = {}
    for reference in (True, False):
        model, tdlrt = make(4, reference=reference)
        (x0, y0), (x1, y1) = batches()[:2]
        F.cross_entropy(model(x0), y0).backward()
        model.zero_grad(set_to_none=False)  # records stay, the gradient of pass 1 is gone
        F.cross_entropy(model(x1), y1).backward()
        with _host.counting() as n:
            tdlrt.step()
        out[reference] = (n(), tdlrt.ranks(), [p.detach().clone() for p in model.parameters()])
    assert out[False][0] == 3
    assert out[True][1] == out[False][1]
    for a, b in zip(out[True][2], out[False][2]):
        assert torch.linalg.vector_norm(a - b) <= 100 * EPS64 * (1 + torch.linalg.vector_norm(a))


# ------------------------------------------------------- the batched factorisations


def _mats(dtype, shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]


SHAPES = [(7, 3), (7, 3), (5, 9), (7, 3), (5, 9), (4, 4), (12, 2)]


def _close(a, b, dtype, scale=1.0, cond=1.0):
    """Equal up to round-off: ``50 eps`` of the scale, times a condition number (singular
    vectors move by ``eps ‖A‖ / gap``)."""
    eps = torch.finfo(dtype).eps
    return torch.linalg.vector_norm((a - b).double()) <= 50 * eps * max(scale, 1.0) * cond


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batched_factorisations_equal_the_per_matrix_ones(dtype):
    mats = _mats(dtype, SHAPES)
    with tl.backend_context("pytorch"):
        for a, (u, s, vh) in zip(mats, _batched.svd(mats)):
            u0, s0, vh0 = _svd(a)
            scale = float(torch.linalg.vector_norm(a.double()))
            assert _close(u, u0, dtype) and _close(vh, vh0, dtype)
            assert _close(s, s0, dtype, scale)
        for a, q in zip(mats, _batched.orth(mats)):
            assert _close(q, _orth(a), dtype)
        wide = [a.T if a.shape[0] > a.shape[1] else a for a in mats]
        for a, (u, s) in zip(wide, _batched.gram_left(wide)):
            u0, s0 = _gram_left(a)
            assert _close(u, u0, dtype) and _close(s, s0, dtype, float(s0[0]))
        methods = ["qr", "svd", "qr", "gram", "qr", "svd", "qr"]
        for a, m, (u, s) in zip(wide, methods, _batched.left_singular(wide, methods)):
            u0, s0 = _left_singular(a, method=m)
            assert _close(u, u0, dtype) and _close(s, s0, dtype, float(s0[0]))


def test_one_batched_call_per_shape(monkeypatch):
    calls = []
    real = torch.linalg.svd

    def counted(a, *args, **kwargs):
        calls.append(tuple(a.shape))
        return real(a, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", counted)
    _batched.svd(_mats(torch.float64, SHAPES))
    assert sorted(calls) == sorted([(3, 7, 3), (2, 5, 9), (1, 4, 4), (1, 12, 2)])


@pytest.mark.parametrize(
    ("dtype", "fast"), [(torch.float64, True), (torch.float32, False), (torch.float32, True)]
)
def test_batched_k_steps_equal_kstep_bases(monkeypatch, dtype, fast):
    """The batched K-steps are the per-layer ones; the float32 Gram path of the augmentation
    (``fast``) spans the same augmented spaces, in another basis of the new directions."""
    monkeypatch.setattr(_batched, "_FLOAT32_AUGMENT", fast)
    g = torch.Generator().manual_seed(3)

    def orthonormal(n, r):
        return torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))[0].to(dtype)

    jobs, expected = [], []
    for shape, ranks, fixed in [
        ((6, 5, 4), (2, 2, 2), ()),
        ((6, 5, 4), (2, 2, 2), (1,)),
        ((8, 7), (3, 3), ()),
        ((8, 7), (8, 3), ()),  # a full mode: nothing to add
    ]:
        factors = [orthonormal(n, r) for n, r in zip(shape, ranks)]
        core = torch.randn(*ranks, generator=g, dtype=torch.float64).to(dtype)
        G = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
        jobs.append(KStepJob(core, factors, G, 0.1, fixed_modes=fixed))
        expected.append(kstep_bases(core, factors, G, 0.1, fixed_modes=fixed))
    batch = HostBatch()
    kstep_prepare(jobs, batch)
    got = kstep_finish(jobs, batch.fetch())
    rotated = fast and dtype == torch.float32
    for job, (U1, C1, _), (U0, C0, _) in zip(jobs, got, expected):
        for i, (a, b) in enumerate(zip(U1, U0)):
            assert a.shape == b.shape
            if rotated and job.modes[i]["kind"] == "augment":
                # the old basis exactly, then the new directions: an orthonormal basis of the
                # same span (random data: well conditioned, so round-off moves it by a few eps)
                r = job.factors[i].shape[1]
                assert torch.equal(a[:, :r], b[:, :r])
                assert _projector_gap(a, b) <= 50 * FLOAT32_EPS
                assert _close(a.T @ a, torch.eye(a.shape[1], dtype=dtype), dtype)
            else:
                assert _close(a, b, dtype)
        assert _close(C1, C0, dtype, float(torch.linalg.vector_norm(C0)))


FLOAT32_EPS = float(torch.finfo(torch.float32).eps)


def _augmentation_case(n, r, sigma, inside, seed, dtype, k=None):
    """A one-mode K-step job whose new directions ``w = (I − UUᴴ) g`` (``n × k``, default
    ``k = len(sigma)``) have the singular values ``sigma`` (and zeros), with ``g = w + U A``,
    ``‖UA‖ = inside · ‖w‖``."""
    g = torch.Generator().manual_seed(seed)
    p = len(sigma)
    k = p if k is None else k
    q = torch.linalg.qr(torch.randn(n, r + p, generator=g, dtype=torch.float64))[0]
    u, perp = q[:, :r], q[:, r:]
    v = torch.linalg.qr(torch.randn(k, p, generator=g, dtype=torch.float64))[0]
    w = perp @ torch.diag(torch.tensor(sigma, dtype=torch.float64)) @ v.T
    a = torch.randn(r, k, generator=g, dtype=torch.float64)
    a *= inside * float(torch.linalg.vector_norm(w)) / float(torch.linalg.vector_norm(a))
    grad = (w + u @ a).to(dtype)
    core = torch.randn(r, 3, generator=g, dtype=torch.float64).to(dtype)
    return core, [u.to(dtype), None], [grad, None]


def _augment_both_paths(monkeypatch, case):
    """``Û`` of the case's K-step by the float32 Gram path and by the float64 one, with the
    transfers of each (``kstep_prepare`` + ``kstep_finish``) and ``w`` as the step formed it."""
    out = []
    for flag in (True, False):
        monkeypatch.setattr(_batched, "_FLOAT32_AUGMENT", flag)
        core, factors, grads = case
        job = KStepJob(core, factors, None, 0.1, factor_grads=grads)
        batch = HostBatch()
        with _host.counting() as n:
            kstep_prepare([job], batch)
            ((U_hats, _, _),) = kstep_finish([job], batch.fetch())
        out.append((U_hats[0], n(), job.modes[0]))
    return out


# singular values of w (n = 40, r = 5; k columns, default one per value; whether the
# certificate holds with g = w), against the threshold rtol·‖g‖ = 16 eps32 ‖g‖ ≈ 2e-6 ‖g‖
# and the float32 Gram error δ ≈ 6e-7 ‖w‖² (k = 6; σ_min ≳ 7.9e-4 ‖w‖ is certain, and
# σ_min ≳ 1.1e-3 ‖w‖ takes the Cholesky basis w R⁻¹)
_SPECTRA = {
    "well conditioned": ([1.0, 0.8, 0.5, 0.3, 0.2, 0.1], None, True),
    "decaying to 3e-3": ([1.0, 0.1, 0.03, 1e-2, 3e-3], None, True),
    "decaying to 1e-3": ([1.0, 0.1, 0.03, 1e-2, 3e-3, 1e-3], None, True),
    "decaying to 6e-4": ([1.0, 0.1, 0.03, 1e-2, 3e-3, 6e-4], None, False),
    "rank-deficient": ([1.0, 0.5, 0.2, 0.0, 0.0], None, False),
    "rank 2 of 5 columns": ([1.0, 0.5], 5, False),
    "one at round-off": ([1.0, 0.5, 0.2, 1e-9], None, False),
    "spread to 1e-6": ([1.0, 1e-2, 1e-4, 1e-6], None, False),
}


@pytest.mark.parametrize("name", list(_SPECTRA))
@pytest.mark.parametrize("inside", [0.0, 1.0, 30.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_float32_augmentation_takes_the_float64_path_decisions(monkeypatch, name, inside, seed):
    """The K-step's float32 Gram path keeps the float64 path's number of new directions
    in every case, in one transfer where its certificate holds (all directions kept with
    room for the float32 Gram error); otherwise the mode is decided by the float64 path
    with a second transfer. ``inside``: the part of ``g`` in ``span U`` (it raises the
    threshold ``rtol·‖g‖`` against ``w``)."""
    sigma, k, certain = _SPECTRA[name]
    case = _augmentation_case(40, 5, sigma, inside, seed, torch.float32, k=k)
    (fast, n_fast, entry), (wide, n_wide, _) = _augment_both_paths(monkeypatch, case)
    assert "chol" in entry  # the float32 Gram path was taken
    assert n_wide == 1
    thr = entry["rtol"] * entry["norm_k"]
    s = torch.linalg.svdvals(entry["w"].double())
    if inside <= 1.0:
        assert n_fast == (1 if certain else 2)
        # the Cholesky basis w R⁻¹ where λ_min > 2δ, a QR of w first just above δ
        route = {"well conditioned": True, "decaying to 1e-3": False}
        if name in route:
            assert entry["certain"] is route[name]
    if n_fast == 1:
        # certified: every singular value of w lies above the threshold by the Gram error
        assert float(s[-1]) > thr
        assert fast.shape[1] == 5 + entry["w"].shape[1]
    else:
        assert n_fast == 2
    assert fast.shape == wide.shape
    kept = fast.shape[1] - 5
    assert torch.equal(fast[:, :5], wide[:, :5])
    assert _close(fast.T @ fast, torch.eye(fast.shape[1]), torch.float32)
    if kept:
        # both paths hold an orthonormal basis of the kept directions of the same float32
        # w: the spans of w + Δ₁ and w + Δ₂ with ‖Δ_j‖ of about √n · eps32/2 · ‖w‖ (the
        # Householder QRs of n-row columns; the k-term products and triangular solve err
        # less). By Wedin they differ by at most (‖Δ₁‖ + ‖Δ₂‖) / gap, gap = σ_kept − σ_next
        # (all kept: σ_min); the bound below is twice that (measured: at most 0.04 of it)
        tail = float(s[kept]) if kept < len(s) else 0.0
        gap = float(s[kept - 1]) - tail
        norm_w = float(torch.linalg.vector_norm(entry["w"].double()))
        tol = 2 * math.sqrt(40) * FLOAT32_EPS * norm_w / gap
        assert _projector_gap(fast, wide) <= tol
    if n_fast == 2:
        # refused: the float64 path's own computation
        assert torch.equal(fast, wide)


@pytest.mark.parametrize(("sigma", "certain"), [([1.0, 0.5, 0.2, 0.1], True), ([1.0, 0.0], False)])
def test_complex64_augmentation_takes_the_float64_path_decisions(monkeypatch, sigma, certain):
    """complex64 modes take the same path as float32 ones (Hermitian Gram matrices)."""
    g = torch.Generator().manual_seed(7)
    re = _augmentation_case(30, 4, sigma, 1.0, 0, torch.float64)
    im = torch.randn(30, len(sigma), generator=g, dtype=torch.float64)
    u = re[1][0]
    # a complex w: the real one plus i·(I − UUᴴ)·(a rank-1 part of the same span)
    w_re = re[2][0] - u @ (u.T @ re[2][0])
    w_im = w_re @ (im[: len(sigma)] / 10)
    grad = (re[2][0] + 1j * w_im).to(torch.complex64)
    case = (re[0].to(torch.complex64), [u.to(torch.complex64), None], [grad, None])
    (fast, n_fast, entry), (wide, n_wide, _) = _augment_both_paths(monkeypatch, case)
    assert "chol" in entry and n_wide == 1 and n_fast == (1 if certain else 2)
    assert fast.shape == wide.shape
    eye = torch.eye(fast.shape[1], dtype=torch.complex128)
    f = fast.to(torch.complex128)
    defect = torch.linalg.vector_norm(f.conj().T @ f - eye)
    assert defect <= 50 * FLOAT32_EPS
    s = torch.linalg.svdvals(entry["w"].to(torch.complex128))
    kept = fast.shape[1] - 4
    gap = float(s[kept - 1]) - (float(s[kept]) if kept < len(s) else 0.0)
    norm_w = float(torch.linalg.vector_norm(entry["w"].to(torch.complex128)))
    a, b = f, wide.to(torch.complex128)
    angle = float(torch.linalg.matrix_norm(a @ a.conj().T - b @ b.conj().T, ord=2))
    assert angle <= 2 * math.sqrt(30) * FLOAT32_EPS * norm_w / gap


def test_float32_augmentation_near_the_threshold_falls_back(monkeypatch):
    """A singular value of w within a part in 1e3 of the threshold: never certain in float32
    (the Gram error is far above the squared threshold); the float64 path decides."""
    for factor in (0.999, 1.001):
        probe = _augmentation_case(40, 5, [1.0, 0.5], 0.0, 0, torch.float32)
        norm = float(torch.linalg.vector_norm(probe[2][0].double()))
        level = 16 * FLOAT32_EPS * norm * factor
        case = _augmentation_case(40, 5, [1.0, 0.5, level], 0.0, 0, torch.float32)
        (fast, n_fast, _), (wide, _, _) = _augment_both_paths(monkeypatch, case)
        assert n_fast == 2
        assert torch.equal(fast, wide)


def test_float32_augmentation_beyond_the_room_takes_the_float64_path(monkeypatch):
    """``k`` above the room ``n − r``: the leading directions are chosen, which the float32
    path never does (the float64 path from the start, one transfer)."""
    case = _augmentation_case(12, 8, [1.0, 0.5, 0.3, 0.2], 0.5, 0, torch.float32, k=6)
    (fast, n_fast, entry), (wide, _, _) = _augment_both_paths(monkeypatch, case)
    assert "chol" not in entry and n_fast == 1
    assert fast.shape[1] == 12 and torch.equal(fast, wide)


def test_float32_augmentation_keeps_the_tdlrt_trajectory(monkeypatch):
    """A float32 TDLRT run through the K-step's float32 Gram path takes the ranks of the
    same run through the float64 path, step by step, with the same transfers per step
    (every mode certain) and the weights to float32 round-off."""
    runs, refused = {}, []
    gram_left = _batched.gram_left

    def counted(mats):
        refused.append(len(mats))
        return gram_left(mats)

    monkeypatch.setattr(_batched, "gram_left", counted)
    for flag in (True, False):
        monkeypatch.setattr(_batched, "_FLOAT32_AUGMENT", flag)
        model, tdlrt = make(4, dtype=torch.float32)
        ranks, counts, weights = [], [], []
        refused.clear()
        run_steps(model, tdlrt, batches(torch.float32), 6, counts=counts)
        ranks.append(tdlrt.ranks())
        weights = _weights(model)
        runs[flag] = (ranks, counts, weights, list(refused))
    (r1, c1, w1, g1), (r0, c0, w0, g0) = runs[True], runs[False]
    assert r1 == r0 and c1 == c0
    # the float64 path factored the augmented modes of all layers at every step; the float32
    # one only the last layer's output mode (4 rows, rank 3: k = 3 above the room 1)
    assert g1 == [1] * 6 and len(g0) == 6 and all(n > 1 for n in g0)
    for a, b in zip(w1, w0):
        # 6 steps of a map with Lipschitz constant O(1): a few hundred eps32 of the scale
        assert torch.linalg.vector_norm((a - b).double()) <= 1e3 * FLOAT32_EPS * (
            1 + torch.linalg.vector_norm(b.double())
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_double_precision_augmentation_is_unchanged(monkeypatch, dtype):
    """float64 (complex128) modes never take the float32 Gram path: bit-identical bases."""
    case = _augmentation_case(40, 5, [1.0, 0.5, 0.2, 1e-3], 1.0, 0, torch.float64)
    case = tuple([None if t is None else t.to(dtype) for t in part] for part in case[1:])
    core = torch.randn(5, 3, dtype=torch.float64).to(dtype)
    (fast, n_fast, entry), (wide, n_wide, _) = _augment_both_paths(monkeypatch, (core, *case))
    assert "chol" not in entry and n_fast == n_wide == 1
    assert torch.equal(fast, wide)


def _vector_condition(s, r):
    """``σ_1 / min gap`` of the leading ``r + 1`` singular values: how far round-off of the
    matrix moves the kept singular vectors, relative to ``eps``."""
    if s is None:
        return 1.0
    s = list(s[: r + 1])
    gaps = [a - b for a, b in zip(s, s[1:])]
    return float(s[0] / min(gaps)) if gaps and min(gaps) > 0 else 1.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batched_truncation_equals_truncate_core(dtype):
    g = torch.Generator().manual_seed(5)
    items, expected = [], []
    for shape, low in [((6, 6, 3, 3), (2, 2, 3, 3)), ((8, 6), (3, 2)), ((8, 6), (3, 2))]:
        # a core with a decaying spectrum, so that the tolerance has ranks to choose
        base = torch.randn(*low, generator=g, dtype=torch.float64)
        mats = [torch.randn(n, r, generator=g, dtype=torch.float64) for n, r in zip(shape, low)]
        core = base
        for i, m in enumerate(mats):
            core = torch.movedim(torch.tensordot(m, core, dims=([1], [i])), 0, i)
        core = (core + 1e-2 * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)
        U = [
            torch.linalg.qr(torch.randn(2 * n, n, generator=g, dtype=torch.float64))[0].to(dtype)
            for n in shape
        ]
        if len(shape) == 4:
            U[2] = U[3] = None
        items.append((core, U, 1, None))
        with tl.backend_context("pytorch"):
            expected.append(truncate_core(core, U, rtol=0.05, method="hosvd"))
    with _host.counting() as n:
        got = _batched.truncate_cores(items, 0.05)
    assert n() == 1
    for (core, _, _, _), (Y1, _, i1, guard), (Y0, _, i0) in zip(items, got, expected):
        assert guard is None  # no weight before the update given: nothing for the guard
        assert Y1.rank == Y0.rank
        assert _close(Y1.core, Y0.core, dtype, float(torch.linalg.vector_norm(Y0.core)))
        for i, (a, b) in enumerate(zip(Y1.factors, Y0.factors)):
            assert _close(a, b, dtype, cond=_vector_condition(i0.singular_values[i], Y0.rank[i]))
        for i, (a, b) in enumerate(zip(i1.tails, i0.tails)):
            if dtype == torch.float32 and i1.methods[i] == "gram":
                # the Gram matrix formed and decomposed in float32: the certificate's bound
                assert abs(a**2 - b**2) <= _gram_tail_bound(core, i)
            else:
                assert math.isclose(a, b, rel_tol=1e-4 if dtype == torch.float32 else 1e-10)
        # the error bound from the prefix sums: within its round-off, 4 N eps64 ‖Ĉ‖²
        norm2 = float(torch.linalg.vector_norm(items[0][0].double())) ** 2
        assert abs(i1.error_bound**2 - i0.error_bound**2) <= 4 * 1e3 * EPS64 * norm2 + 1e-3 * (
            i0.error_bound**2
        )


def _gram_delta(core, mode):
    """The certificate's estimate ``δ_i`` of the float32 Gram error of ``Mat_i(core)``."""
    m, size = core.shape[mode], core.numel()
    norm2 = float(torch.linalg.vector_norm(core.double())) ** 2
    return _batched.FAST_GRAM_MARGIN * math.sqrt(size / m**2) * FLOAT32_EPS * norm2


def _gram_tail_bound(core, mode):
    """``√m_i · δ_i``: how far a tail² of the float32 Gram path may be from float64's."""
    return math.sqrt(core.shape[mode]) * _gram_delta(core, mode)


def _cores(shapes, seed):
    """TDLRT-like augmented cores in float64: a low-rank block plus a small dense part (the
    Galerkin step fills the new rows and columns), bases of twice the core's size."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for shape, low, free in shapes:
        core = torch.randn(*low, generator=g, dtype=torch.float64)
        for i, (n, r) in enumerate(zip(shape, low)):
            m = torch.randn(n, r, generator=g, dtype=torch.float64)
            core = torch.movedim(torch.tensordot(m, core, dims=([1], [i])), 0, i)
        core = core + 1e-2 * torch.randn(*shape, generator=g, dtype=torch.float64)
        U = [
            torch.linalg.qr(torch.randn(2 * n, n, generator=g, dtype=torch.float64))[0]
            if i in free
            else None
            for i, n in enumerate(shape)
        ]
        items.append((core, U))
    return items


def _expand(core, P_list):
    """``core ×_i P_i``: the truncation in the coordinates of the augmented core."""
    for i, p in enumerate(P_list):
        if p is not None:
            core = torch.movedim(torch.tensordot(p, core, dims=([1], [i])), 0, i)
    return core


@pytest.mark.parametrize("seed", [0, 1])
def test_batched_truncation_in_float32_takes_the_float64_decisions(seed):
    """From the same augmented cores, float32 chooses the ranks float64 chooses, and in both
    precisions the truncation error stays within the tolerance ``τ‖Ĉ‖`` and is what
    ``info.error_bound`` reports. Margin: a few rounding errors of the working precision per
    inner product of the mode products (length ``n_i``), to the core and back; the bound,
    read as ``‖G‖² − ‖G[:r]‖²`` from float64 prefix sums, errs by ``4 N eps64 ‖Ĉ‖²`` more in
    the square (``N`` entries)."""
    shapes = [
        ((24, 20, 3, 3), (6, 5, 3, 3), (0, 1)),
        ((24, 20, 3, 3), (6, 5, 3, 3), (0, 1)),
        ((30, 12), (4, 4), (0, 1)),
        ((16, 18, 3, 3), (5, 6, 3, 3), (1,)),
    ]
    tau = 0.05
    ref = _cores(shapes, seed)
    ranks = {}
    for dtype in (torch.float64, torch.float32):
        items = [
            (c.to(dtype), [None if u is None else u.to(dtype) for u in U], 1, None) for c, U in ref
        ]
        got = _batched.truncate_cores(items, tau)
        ranks[dtype] = [Y.rank for Y, _, _, _ in got]
        u = torch.finfo(dtype).eps
        for (c64, _), (Y, P_list, info, _guard) in zip(ref, got):
            norm = float(torch.linalg.vector_norm(c64))
            P64 = [None if p is None else p.double() for p in P_list]
            # Y.core is in the units of Ĉ; P_i = Û_iᴴ (Û_i P_i) are the kept directions
            err = float(torch.linalg.vector_norm(c64 - _expand(Y.core.double(), P64)))
            margin = 10 * sum(c64.shape) * u * norm
            assert err <= tau * norm + margin
            slack2 = 4 * c64.numel() * EPS64 * norm**2 + 2 * margin * norm
            assert abs(err**2 - info.error_bound**2) <= slack2
    assert ranks[torch.float32] == ranks[torch.float64]
    with tl.backend_context("pytorch"):
        for (c, U), r in zip(ref, ranks[torch.float64]):
            assert truncate_core(c, U, rtol=tau, method="hosvd")[0].rank == r


def _projector_gap(a, b):
    """``‖aaᴴ − bbᴴ‖₂`` of two orthonormal bases: the sine of their largest angle."""
    a, b = a.double(), b.double()
    return float(torch.linalg.matrix_norm(a @ a.conj().T - b @ b.conj().T, ord=2))


def _angle_bound(core, s, mode, r):
    """The certificate's angle bound ``δ_i / (σ_{r−1}² − σ_r² − 2δ_i)`` (0 for a full mode)."""
    lam = [float(v) ** 2 for v in s]
    if r >= len(lam):
        return 0.0
    delta = _gram_delta(core, mode)
    return delta / (lam[r - 1] - lam[r] - 2 * delta)


def _run_both_paths(monkeypatch, items, tau, references=None, blocks=None):
    """``truncate_cores`` by the float32 Gram path and by the float64 one, with the number
    of transfers of each: ``(fast, n_fast), (wide, n_wide)``."""
    out = []
    for flag in (True, False):
        monkeypatch.setattr(_batched, "_FLOAT32_GRAM", flag)
        with _host.counting() as n:
            got = _batched.truncate_cores(items, tau, references, blocks)
        out.append((got, n()))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1])
def test_float32_gram_path_takes_the_float64_path_decisions(monkeypatch, dtype, seed):
    """TDLRT-like augmented cores (a low-rank block and a small dense part) whose Gram
    matrices are formed in the core's dtype where certified: the same ranks as the float64
    path, in one transfer; bases within the certificate's angle bound, cores and the
    reported error within the table bound, tails within theirs, and the guard's norms as
    the float64 path's. float64 cores take the float64 path (the same results)."""
    shapes = [
        ((24, 20, 3, 3), (6, 5, 3, 3), (0, 1)),
        ((32, 32, 3, 3), (8, 8, 3, 3), (0, 1)),
        ((16, 18, 3, 3), (5, 6, 3, 3), (1,)),
        ((40, 30), (6, 5), (0, 1)),  # the QR path (m² ≥ size): unchanged
    ]
    tau = 0.1
    ref = _cores(shapes, seed)
    items = [
        (c.to(dtype), [None if u is None else u.to(dtype) for u in U], 1, None) for c, U in ref
    ]
    g = torch.Generator().manual_seed(seed + 10)
    refs = [
        c.to(dtype) + 1e-3 * torch.randn(c.shape, generator=g, dtype=torch.float64).to(dtype)
        for c, _ in ref
    ]
    (fast, n_fast), (wide, n_wide) = _run_both_paths(monkeypatch, items, tau, refs)
    assert n_fast == 1 and n_wide == 1
    for (core, _, _, _), (Y1, P1, i1, g1), (Y0, P0, i0, g0) in zip(items, fast, wide):
        assert Y1.rank == Y0.rank
        free = [i for i, p in enumerate(P0) if p is not None]
        if dtype == torch.float64:
            assert torch.equal(Y1.core, Y0.core)
            assert all(torch.equal(a, b) for a, b in zip(Y1.factors, Y0.factors))
            continue
        norm = float(torch.linalg.vector_norm(core.double()))
        angles = {}
        for i in free:
            if i1.methods[i] != "gram":
                assert _close(
                    P1[i], P0[i], dtype, cond=_vector_condition(i0.singular_values[i], Y0.rank[i])
                )
                angles[i] = 0.0
                continue
            angles[i] = _angle_bound(core, i0.singular_values[i], i, Y0.rank[i])
            assert 0.0 <= angles[i] < 1.0
            # the kept subspaces, and the factors' (Û_i orthonormal)
            margin = 50 * FLOAT32_EPS
            assert _projector_gap(P1[i], P0[i]) <= angles[i] + margin
            assert _projector_gap(Y1.factors[i], Y0.factors[i]) <= angles[i] + margin
            assert abs(i1.tails[i] ** 2 - i0.tails[i] ** 2) <= _gram_tail_bound(core, i)
        # the truncated tensors in the augmented coordinates, and the reported error
        x1 = _expand(Y1.core.double(), [None if p is None else p.double() for p in P1])
        x0 = _expand(Y0.core.double(), [None if p is None else p.double() for p in P0])
        assert (
            torch.linalg.vector_norm(x1 - x0)
            <= (2 * sum(angles.values()) + 100 * FLOAT32_EPS) * norm
        )
        delta_t = sum(_gram_delta(core, i) for i in free if i1.methods[i] == "gram")
        delta_t += sum(2 * a * norm**2 + a * a * norm**2 for a in angles.values())
        assert abs(i1.error_bound**2 - i0.error_bound**2) <= delta_t + 1e3 * FLOAT32_EPS * norm**2
        assert i1.error_bound <= i1.tolerance * (1 + 1e-6)
        # the guard's norms: those of Y₀ exactly as float64's, the discarded part within the
        # subspace angles
        assert g1.norm_reference == g0.norm_reference and g1.norm_change == g0.norm_change
        if g0.discarded is not None:
            d2 = abs(g1.discarded**2 - g0.discarded**2)
            assert d2 <= (2 * sum(angles.values()) + 100 * FLOAT32_EPS) * g0.norm_reference**2


def _core_with_spectrum(sigma, rotations_seed, dtype):
    """A ``(m, m, 3, 3)`` core whose mode-0 and mode-1 unfoldings have the singular values
    ``sigma`` (``C[a, b] = δ_ab σ_a W_a``, ``W_a`` of unit norm, rotated in both modes)."""
    g = torch.Generator().manual_seed(rotations_seed)
    m = len(sigma)
    core = torch.zeros(m, m, 3, 3, dtype=torch.float64)
    for a, s in enumerate(sigma):
        w = torch.randn(3, 3, generator=g, dtype=torch.float64)
        core[a, a] = s * w / torch.linalg.vector_norm(w)
    for i in (0, 1):
        q = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))[0]
        core = torch.movedim(torch.tensordot(q, core, dims=([1], [i])), 0, i)
    U = [
        torch.linalg.qr(torch.randn(2 * m, m, generator=g, dtype=torch.float64))[0]
        for _ in range(2)
    ]
    return core.to(dtype), [u.to(dtype) for u in U] + [None, None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_float32_gram_path_falls_back_at_a_near_tie(monkeypatch, dtype):
    """A mode-0 tail equal to its budget ``ϑ²/2`` up to ``1e-9 ‖Ĉ‖²``, far inside the
    float32 Gram error: the certificate refuses that core, which is factored again in
    float64 (a second transfer); the result is the float64 path's. The other core, with
    well separated values, keeps the float32 path (the same ranks as float64)."""
    tau, m, k = 0.1, 16, 6
    # k values of 1, then m − k equal small values whose tail² is exactly (τ‖Ĉ‖)²/2 when
    # ‖Ĉ‖² = k + tail² (the per-mode budget of the first mode)
    tail2 = tau**2 * k / 2 / (1 - tau**2 / 2)
    small = math.sqrt(tail2 * (1 + 1e-9) / (m - k))
    near, U_near = _core_with_spectrum([1.0] * k + [small] * (m - k), 0, torch.float64)
    apart = [2.0**-j for j in range(m)]
    far, U_far = _core_with_spectrum(apart, 1, torch.float64)
    items = [
        (near.to(dtype), [None if u is None else u.to(dtype) for u in U_near], 1, None),
        (far.to(dtype), [None if u is None else u.to(dtype) for u in U_far], 1, None),
    ]
    redone = []
    again = _batched._wide_again

    def record(q):
        redone.append(q.c_hat)
        return again(q)

    monkeypatch.setattr(_batched, "_wide_again", record)
    refs = [0.9 * c for c, _, _, _ in items]
    (fast, n_fast), (wide, n_wide) = _run_both_paths(monkeypatch, items, tau, refs)
    assert n_wide == 1 and n_fast == 2
    assert len(redone) == 1 and redone[0] is items[0][0]
    for (Y1, _, i1, _), (Y0, _, _, _) in zip(fast, wide):
        assert Y1.rank == Y0.rank
        assert i1.methods[:2] == ["gram", "gram"]
    # the refused core: the float64 path's numbers (up to the batch composition)
    Y1, _, i1, _ = fast[0]
    Y0, _, i0, _ = wide[0]
    scale = float(torch.linalg.vector_norm(Y0.core))
    assert float(torch.linalg.vector_norm(Y1.core - Y0.core)) <= 50 * EPS64 * scale
    assert i1.error_bound == pytest.approx(i0.error_bound, rel=1e-12)
    # and what the guard reads, from the second transfer
    g1, g0 = fast[0][3], wide[0][3]
    assert g1.norm_reference == pytest.approx(g0.norm_reference, rel=1e-12)
    assert g1.norm_change == pytest.approx(g0.norm_change, rel=1e-12)
    assert g1.discarded == pytest.approx(g0.discarded, rel=1e-9)
    for i in g0.remainders:
        assert np.allclose(g1.remainders[i], g0.remainders[i], rtol=1e-9, atol=0)


def test_float32_gram_retruncation_falls_back_when_not_certain(monkeypatch):
    """The guard's truncation with a raised floor is certified like the first one; when it
    is not certain, the core is factored again in float64 (one transfer) and the result is
    the float64 path's truncation with that floor."""
    ref = _cores([((24, 20, 3, 3), (6, 5, 3, 3), (0, 1))], 0)
    items = [(c.float(), [None if u is None else u.float() for u in U], 1, None) for c, U in ref]
    refs = [c for c, _, _, _ in items]
    (fast, _), (wide, _) = _run_both_paths(monkeypatch, items, 0.1, refs)
    floor = [r + 2 if i < 2 else r for i, r in enumerate(fast[0][0].rank)]
    want = wide[0][3].retruncate(floor)
    monkeypatch.setattr(_batched, "_FLOAT32_GRAM", True)
    monkeypatch.setattr(_batched._Certificate, "per_mode", lambda self, ranks, floors: False)
    with _host.counting() as n:
        got = fast[0][3].retruncate(floor)
    assert n() == 1
    assert got[0].rank == want[0].rank == tuple(floor)
    scale = float(torch.linalg.vector_norm(want[0].core))
    assert float(torch.linalg.vector_norm(got[0].core - want[0].core)) <= 50 * EPS64 * scale
    assert got[2].error_bound == pytest.approx(want[2].error_bound, rel=1e-12)


def test_float32_gram_path_keeps_the_tdlrt_trajectory(monkeypatch):
    """A float32 TDLRT run whose convolution (augmented to 6 × 3 × 3 × 3, truncated to
    rank 3 in its first mode) and last layer truncate through the float32 Gram path takes
    the ranks and guard decisions of the same run through the float64 path, step by step,
    with the same transfers per step."""
    runs, certified = {}, []
    lower = _batched._lower_ranks_certainly

    def counted(*args):
        out = lower(*args)
        certified.append(out[1])
        return out

    monkeypatch.setattr(_batched, "_lower_ranks_certainly", counted)
    for flag in (True, False):
        monkeypatch.setattr(_batched, "_FLOAT32_GRAM", flag)
        model, tdlrt = make(3, dtype=torch.float32)
        ranks, counts, losses = [], [], []
        data = batches(torch.float32)
        for k in range(6):
            run_steps(model, tdlrt, data[k % len(data) :] + data[: k % len(data)], 1, counts=counts)
            ranks.append(tdlrt.ranks())
            x, y = data[0]
            losses.append(float(F.cross_entropy(model(x), y).detach()))
        runs[flag] = (ranks, counts, tdlrt.guarded_truncations, losses)
    (r1, c1, g1, l1), (r0, c0, g0, l0) = runs[True], runs[False]
    assert r1 == r0 and c1 == c0 and g1 == g0
    # two layers per step (the convolution and the last linear layer) took the float32
    # Gram path, certain every time, and their truncations lowered ranks
    assert len(certified) == 12 and all(certified)
    assert r0[-1]["0"] == (3, 3, 3, 3) and r0[-1]["5"] == (3, 3)
    assert l1 == pytest.approx(l0, rel=1e-3)


def test_certain_greedy_lowering_is_the_greedy_lowering():
    """The certificate's copy of the greedy lowering takes the same ranks as
    :func:`tuckerflow.ranks.lower_ranks_greedily` on random monotone error tables; it is
    certain with no error allowed (no ties), and not certain once the allowed error
    exceeds the smallest gap of its comparisons."""
    from tuckerflow.ranks import lower_ranks_greedily

    rng = torch.Generator().manual_seed(0)
    for trial in range(30):
        shape = (7, 6, 5)[: 2 + trial % 2]
        w = torch.rand(*shape, generator=rng, dtype=torch.float64) ** 3
        table = w
        for ax in range(w.dim()):
            table = torch.cumsum(table, dim=ax)
        total = float(w.sum())

        def error2(r, table=table, total=total):
            return max(total - float(table[tuple(v - 1 for v in r)]), 0.0)

        start = tuple(shape)
        floor = tuple(1 + trial % 2 for _ in shape)
        budget2 = float(torch.rand((), generator=rng)) * 0.5 * total
        want = lower_ranks_greedily(start, floor, error2, budget2)
        got, certain = _batched._lower_ranks_certainly(start, floor, error2, budget2, lambda r: 0.0)
        assert got == want and certain
        got, certain = _batched._lower_ranks_certainly(
            start, floor, error2, budget2, lambda r, total=total: total
        )
        assert got == want and not certain


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.complex128])
def test_batched_signs_break_ties_as_the_per_matrix_rule(dtype):
    """The first entry of largest modulus decides the sign, also when the maximum and minus
    the minimum tie, when the maximum repeats, and for a zero column."""
    g = torch.Generator().manual_seed(2)
    u = torch.randn(3, 7, 5, generator=g, dtype=torch.float64).to(dtype)
    top = float(u.abs().max()) + 1
    u[0, 4, 1], u[0, 2, 1] = top, -top  # -min == max: the lower row (2) wins
    u[1, 1, 3], u[1, 5, 3] = top, -top  # the lower row (1) wins, the maximum
    u[2, 3, 0] = u[2, 6, 0] = top  # the maximum twice
    u[1, :, 2] = 0  # no sign to fix
    got, _ = _batched.flip_signs(u)
    with tl.backend_context("pytorch"):
        for k in range(u.shape[0]):
            want, _ = flip_signs(u[k])
            assert torch.equal(got[k], want)


# ------------------------------------------------------- static phases compile


class PlainSGD(torch.optim.Optimizer):
    """A base optimizer without the deliberate graph breaks of ``torch.optim``'s steps."""

    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

    def step(self, closure=None):
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-group["lr"])


def _compile_or_skip(fn, **kwargs):
    try:
        with warnings.catch_warnings():
            # torch's compiler stack emits its own deprecation warnings
            warnings.simplefilter("ignore")
            compiled = torch.compile(fn, **kwargs)
            compiled()
    except Exception as err:  # noqa: BLE001 - the platform's compiler, not our code
        text = f"{type(err).__name__}: {err}"
        if "Unsupported" in type(err).__name__ or "graph break" in text.lower():
            raise
        pytest.skip(f"torch.compile does not run on this platform ({text.splitlines()[0]})")
    return compiled


def _core_phase(optimizer):
    torch.manual_seed(0)
    model = chain(3, dtype=torch.float32)
    tdlrt = TDLRT(model, optimizer(model.parameters()), tau=0.05, update_every=100)
    data = batches(torch.float32)
    run_steps(model, tdlrt, data, 1)  # the basis update; every step after it is a core step
    x, y = data[1]
    tdlrt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    assert tdlrt.next_step == "core"
    return model, tdlrt


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile needs torch >= 2.0")
def test_a_core_step_compiles_with_fullgraph():
    """The step between basis updates, TDLRT's part and a graph-friendly base optimizer's
    step, is one graph: no host read, no Python-side decision on tensor values."""
    eager_model, eager = _core_phase(lambda p: PlainSGD(p, lr=0.1))
    model, tdlrt = _core_phase(lambda p: PlainSGD(p, lr=0.1))
    eager._core_step()
    _compile_or_skip(tdlrt._core_step, fullgraph=True)
    for a, b in zip(eager_model.parameters(), model.parameters()):
        a, b = a.detach(), b.detach()
        assert torch.allclose(a, b, rtol=0, atol=4 * EPS32 * float(a.abs().max()))
    # and differs from the start: the step moved the cores
    _, fresh = _core_phase(lambda p: PlainSGD(p, lr=0.1))
    assert not torch.equal(next(fresh.model.parameters()), next(model.parameters()))


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="torch.compile needs torch >= 2.0")
def test_tdlrt_adds_no_graph_break_to_a_torch_optim_step():
    """``torch.optim`` steps break the graph on purpose (grad mode); TDLRT adds none."""
    _, tdlrt = _core_phase(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    _, plain = _core_phase(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's compiler stack warns about itself
        ours = torch._dynamo.explain(tdlrt._core_step)()
        base = torch._dynamo.explain(plain.optimizer.step)()
    assert ours.graph_break_count == base.graph_break_count
    _compile_or_skip(tdlrt._core_prologue, fullgraph=True)


def _fused(n_layers, on_nonfinite, dtype=torch.float64, defer=False):
    model = chain(n_layers, dtype=dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, fused=True)
    return model, TDLRT(
        model, opt, tau=0.05, update_every=3, on_nonfinite=on_nonfinite, defer_truncation=defer
    )


def _snapshot(model, tdlrt):
    params = [p.detach().clone() for p in model.parameters()]
    state = [
        {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
        for s in tdlrt.optimizer.state.values()
    ]
    return params, state


def _same(a, b):
    (pa, sa), (pb, sb) = a, b
    return (
        len(pa) == len(pb)
        and all(torch.equal(x, y) for x, y in zip(pa, pb))
        and len(sa) == len(sb)
        and all(
            x.keys() == y.keys()
            and all(torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k] for k in x)
            for x, y in zip(sa, sb)
        )
    )


@pytest.mark.parametrize("defer", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_core_steps_of_a_fused_optimizer_read_nothing_and_skip_on_the_device(dtype, defer):
    data = batches(dtype)
    for n_layers in (2, 8):
        model, tdlrt = _fused(n_layers, "skip", dtype, defer)
        ref_model, ref = _fused(n_layers, "raise", dtype, defer)
        ref_model.load_state_dict(model.state_dict())
        counts, ref_counts = [], []
        run_steps(model, tdlrt, data, 6, counts=counts)
        run_steps(ref_model, ref, data, 6, counts=ref_counts)
        assert [k for k, _ in counts] == ["adapt", "core", "core"] * 2
        # no read between basis updates (a deferred truncation, the basis update's own
        # work, reads once at the end of the interval); the basis updates read as before
        assert [n for k, n in counts if k == "core"] == [0, int(defer)] * 2
        assert [n for k, n in counts if k == "adapt"] == [n for k, n in ref_counts if k == "adapt"]
        # the same steps as the host-checked path, bit for bit
        assert _same(_snapshot(model, tdlrt), _snapshot(ref_model, ref))
        assert tdlrt.skipped_steps == 0
        # a NaN gradient at a core step: nothing changes, nothing is read, the skip is counted
        run_steps(model, tdlrt, data, 1)  # the basis update that opens the next interval
        assert tdlrt.next_step == "core"
        x, y = data[0]
        tdlrt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        next(iter(model.parameters())).grad.view(-1)[0] = float("nan")
        before = _snapshot(model, tdlrt)
        with _host.counting() as n:
            tdlrt.step()
        assert n() == 0 and _same(_snapshot(model, tdlrt), before)
        with _host.counting() as n:
            assert tdlrt.skipped_steps == 1
        assert n() == 1
        assert tdlrt.state_dict()["skipped_steps"] == 1


def test_device_side_skipping_needs_a_fused_optimizer_and_skip_mode():
    # plain SGD: host check
    model, tdlrt = make(2, update_every=3, on_nonfinite="skip", defer_truncation=False)
    counts = []
    run_steps(model, tdlrt, batches(), 3, counts=counts)
    assert [n for k, n in counts if k == "core"] == [1, 1]
    model, tdlrt = _fused(2, "raise")  # raise must read the flag to raise at this step
    counts = []
    run_steps(model, tdlrt, batches(), 3, counts=counts)
    assert [n for k, n in counts if k == "core"] == [1, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_lower_gram_panels_are_the_full_product(dtype):
    """The panels of the single-precision Gram product fill the lower triangle of ``a aᴴ``
    (to round-off; the upper one may be left zero: ``eigh`` reads the lower one) and give
    the eigenpairs of one product."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(150, 700, generator=g, dtype=dtype)
    bounds = _batched._gram_panels(150, dtype, dtype, a.device)
    assert bounds is not None and len(bounds) > 2
    out = torch.zeros(150, 150, dtype=dtype)
    _batched._lower_gram(a, bounds, out)
    full = a @ a.conj().T
    scale = float(full.abs().amax())
    assert float((torch.tril(out) - torch.tril(full)).abs().amax()) <= 1e-5 * scale
    lam_p, _ = torch.linalg.eigh(out)
    lam_f, _ = torch.linalg.eigh(full)
    assert torch.allclose(lam_p, lam_f, rtol=0, atol=1e-5 * scale)
    # not for float64 (its bits stay those of one product), small matrices or float64 work
    assert _batched._gram_panels(150, torch.float64, torch.float64, a.device) is None
    assert _batched._gram_panels(150, torch.float32, torch.float64, a.device) is None
    assert _batched._gram_panels(_batched.GRAM_PANEL_MIN - 1, dtype, dtype, a.device) is None


def test_gram_panels_keep_the_truncation(monkeypatch):
    """Cores large enough for the panelled Gram product truncate as with one product: the
    same ranks, cores and bases to round-off, the same number of transfers."""
    shapes = [((160, 150, 3, 3), (30, 28, 3, 3), (0, 1))]
    ((core, U),) = _cores(shapes, 0)
    items = [(core.float(), [None if u is None else u.float() for u in U], 1, None)]
    out, used = [], []
    lower = _batched._lower_gram
    monkeypatch.setattr(_batched, "_lower_gram", lambda *a: (used.append(1), lower(*a))[1])
    for lowest in (_batched.GRAM_PANEL_MIN, 10**9):
        monkeypatch.setattr(_batched, "GRAM_PANEL_MIN", lowest)
        with _host.counting() as n:
            got = _batched.truncate_cores(items, 0.1)
        out.append((got, n()))
    assert len(used) == 2  # both modes panelled, then neither
    ((t0, P0, i0, _),), n0 = out[0]
    ((t1, P1, i1, _),), n1 = out[1]
    assert n0 == n1 and t0.rank == t1.rank
    for p, q in zip(P0, P1):
        if p is not None:
            assert torch.allclose(p, q, atol=1e-4)
    with tl.backend_context("pytorch"):
        x0, x1 = t0.to_tensor(), t1.to_tensor()
    assert torch.allclose(x0, x1, atol=1e-4 * float(core.abs().max()))
