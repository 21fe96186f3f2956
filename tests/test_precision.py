"""TDLRT takes the same rank decisions in float32, under bf16 autocast and in float64.

Every run starts from the *same* point: the layer, the data and the target are built in
float64 and then converted, so that the only difference between two runs is the precision
of the arithmetic. The targets have full rank, so the ranks have to grow from 2, and the bases
have to rotate: a drop level of the basis augmentation that is above the size of a real
gradient step (as ``100 · eps · n · ‖K‖`` was in float32 for a 512-wide mode) shows up here
as a rank that grows more slowly or a basis that does not move.

Each comparison first checks that float64 itself makes it informative: that its ranks are
decided by the truncation (not capped by a mode's size or by the doubling of the
augmentation) at some step, and that its bases rotate by far more than round-off.
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import pytest
import tensorly as tl
import torch

from tuckerflow.dlra import core_qr
from tuckerflow.nn import TuckerConv2d, TuckerLinear
from tuckerflow.optim import TDLRT
from tuckerflow.optim.basis import partial_contraction

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
STEPS = 25
U32 = torch.finfo(torch.float32).eps  # 2⁻²³
U_BF16 = 2.0**-8  # unit round-off of bfloat16 (eps/2): relative error of its gradients


def _linear_problem(seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layer = TuckerLinear(512, 64, rank=2, dtype=torch.float64)
    x = torch.randn(256, 512, generator=g, dtype=torch.float64)
    target = torch.randn(64, 512, generator=g, dtype=torch.float64) / math.sqrt(512)
    return layer, x, x @ target.T


def _conv_problem(seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    layer = TuckerConv2d(256, 32, 3, padding=1, rank=2, dtype=torch.float64)
    x = torch.randn(16, 256, 6, 6, generator=g, dtype=torch.float64)
    target = torch.randn(32, 256, 3, 3, generator=g, dtype=torch.float64) / math.sqrt(256 * 9)
    return layer, x, torch.nn.functional.conv2d(x, target, padding=1)


#: problem -> (builder, learning rate). The rates are chosen so that float64 does not reach
#: full rank: at lr 0.1 the conv layer ends at (32, 256, 3, 3) in every precision, where
#: neither the ranks nor the bases (a full basis spans everything) can differ.
PROBLEMS = {"linear": (_linear_problem, 0.2), "conv2d": (_conv_problem, 0.02)}

#: problem -> learning rate of the small steps: the new directions of the first K-step,
#: ``λ σ_j((I − U_iU_iᴴ) g_i)``, lie between 0.23 and 17 times ``16 u₃₂ ‖K_i‖``
#: (:func:`_new_direction_levels`, printed by ``docs/scripts/precision_table.py``): far
#: below the earlier drop level ``100 u n ‖K_i‖`` (1600 times that at n = 256), around the
#: round-off of ``K_i = U_i S_i − λ g_i`` itself, yet rotating a float32 basis by several
#: u₃₂ per step.
SMALL_LR = {"linear": 2e-5, "conv2d": 1e-5}
SMALL_STEPS = 30


class Run(NamedTuple):
    start_ranks: tuple
    ranks: list  # ranks of all modes after every step
    loss: float  # final loss, evaluated in float64
    start_loss: float
    moves: list  # per factorized mode, ‖(I − U₁U₁ᴴ) U₀‖₂
    sizes: tuple  # weight shape
    modes: tuple  # the factorized modes (conv: the spatial modes are kept full)


def _subspace_moves(start, layer):
    """``‖(I − U₁U₁ᴴ) U₀‖₂`` per factor: the sine of the largest angle by which span U₀ left."""
    out = []
    for u0, u1 in zip(start, layer.factors):
        u1 = u1.detach().to(torch.float64)
        out.append(float(torch.linalg.matrix_norm(u0 - u1 @ (u1.T @ u0), ord=2)))
    return out


@contextlib.contextmanager
def _no_tf32_convolutions(device):
    """float32 means float32: cuDNN's default TF32 convolutions are a lower precision."""
    if device != "cuda":
        yield
        return
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = old


def _loss64(layer, x, y):
    with torch.no_grad():
        out = layer(x.to(torch.float64))
        return float(0.5 * ((out - y.to(torch.float64)) ** 2).mean() * out.shape[1])


def _train(problem, precision, device, *, lr=None, tau=1e-3, steps=STEPS):
    """One run: ranks after every step, final loss (in float64) and subspace moves."""
    build, default_lr = PROBLEMS[problem]
    layer, x, y = build(0)
    start_loss = _loss64(layer, x, y)
    dtype = torch.float64 if precision == "float64" else torch.float32
    layer = layer.to(device=device, dtype=dtype)
    x, y = x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)
    start = [u.detach().to(torch.float64).clone() for u in layer.factors]
    opt = torch.optim.SGD(layer.parameters(), lr=default_lr if lr is None else lr)
    tdlrt = TDLRT(layer, opt, tau=tau)

    def arithmetic():
        if precision == "bf16-autocast":
            return torch.autocast(device_type=device, dtype=torch.bfloat16)
        return _no_tf32_convolutions(device)

    start_ranks, ranks = tuple(layer.ranks), []
    for _ in range(steps):
        tdlrt.zero_grad()
        with arithmetic():
            out = layer(x)
        # in the parameters' precision (autocast returns bf16 outputs)
        loss = 0.5 * ((out.to(dtype) - y) ** 2).mean() * out.shape[1]
        loss.backward()
        tdlrt.step()
        ranks.append(tuple(layer.ranks))
    w = layer.to(torch.float64)
    moves = _subspace_moves(start, w)
    loss = _loss64(w, x, y)
    return Run(start_ranks, ranks, loss, start_loss, moves, w.weight_shape, w.factorized_modes)


def _new_direction_levels(problem, lr):
    """Per factorized mode, ``λ σ_j((I − U_iU_iᴴ) g_i) / (16 u₃₂ ‖K_i‖)`` of the first K-step
    (in float64): below 1, a new direction is under the float32 round-off level of ``K_i``."""
    layer, x, y = PROBLEMS[problem][0](0)
    layer.record_for_galerkin = True
    out = layer(x)
    (0.5 * ((out - y) ** 2).mean() * out.shape[1]).backward()
    levels = []
    with torch.no_grad(), tl.backend_context("pytorch", local_threadsafe=True):
        G, core = layer.full_weight_gradient(), layer.core.detach()
        factors = [layer.factor(i) for i in range(len(layer.weight_shape))]
        factors = [None if u is None else u.detach() for u in factors]
        for i in layer.factorized_modes:
            u = factors[i]
            q, s = core_qr(core, i)
            g = tl.unfold(partial_contraction(G, factors, i), i) @ q
            k = u @ s - lr * g
            sigma = torch.linalg.svdvals(g - u @ (u.T @ g))
            levels.append((lr * sigma / (16 * U32 * torch.linalg.norm(k))).tolist())
    return levels


@pytest.fixture(scope="module")
def reference():
    """float64 runs, shared by the float32 and bf16 tests of a problem."""
    cache = {}

    def get(problem, device, **kw):
        key = (problem, device, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = _train(problem, "float64", device, **kw)
        return cache[key]

    return get


def _decided_by_truncation(run, modes):
    """(step, mode) pairs whose rank lies below every cap: the size of the mode, twice the
    previous rank (the augmentation adds at most ``r`` directions) and the product of the
    other modes' augmented ranks (the rank of the core unfolding)."""
    out, prev = [], run.start_ranks
    for s, ranks in enumerate(run.ranks):
        aug = [min(n, 2 * r) for n, r in zip(run.sizes, prev)]
        for i in modes:
            others = math.prod(a for j, a in enumerate(aug) if j != i)
            if ranks[i] < min(aug[i], others):
                out.append((s, i))
        prev = ranks
    return out


def _moving_modes(run, modes):
    """Factorized modes below full size at the end (a full basis spans everything)."""
    return [k for k, i in enumerate(modes) if run.ranks[-1][i] < run.sizes[i]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("precision", ["float32", "bf16-autocast"])
def test_ranks_and_loss_follow_float64(reference, problem, precision, device):
    ref = reference(problem, device)
    run = _train(problem, precision, device)
    modes = ref.modes
    # float64 takes rank decisions of its own at several steps: the comparison below tests them
    assert len(_decided_by_truncation(ref, modes)) >= 4, ref.ranks
    # and rotates a basis far beyond round-off (float32 factors: about √n u₃₂ ≤ 4e-6)
    moving = _moving_modes(ref, modes)
    assert max(ref.moves[k] for k in moving) > 1e-3, ref.moves
    for s, (r, r64) in enumerate(zip(run.ranks, ref.ranks)):
        for i in modes:
            if precision == "float32":
                # the same decisions: a rank can differ only by a direction whose singular
                # value lies within round-off of the truncation level (measured: never)
                assert abs(r[i] - r64[i]) <= 1, (s, run.ranks, ref.ranks)
            else:
                # bf16 rounding of the output gradients (2⁻⁸ relative) adds directions above
                # the drop level: ranks grow at least as fast, up to directions at the cut
                # (measured at lr 0.005 … 0.1: at most one fewer)
                assert r[i] >= r64[i] - 2, (s, run.ranks, ref.ranks)
    if precision == "float32":
        # 25 steps amplify round-off (measured: 3e-3 of the loss, 3e-4 of the move)
        assert abs(run.loss - ref.loss) <= 0.02 * ref.loss, (run.loss, ref.loss)
        move_tol = 0.02
    else:
        # more directions descend at least as far (measured: 0.88 and 1.0003 times)
        assert run.loss <= 1.05 * ref.loss, (run.loss, ref.loss)
        move_tol = 16 * U_BF16  # measured 1.7 %: 4.4 u_bf16
    for k in moving:
        m, m64 = run.moves[k], ref.moves[k]
        assert abs(m - m64) <= move_tol * m64, (run.moves, ref.moves)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("precision", ["float32", "bf16-autocast"])
def test_small_steps_rotate_the_bases_as_in_float64(reference, problem, precision, device):
    # steps around the round-off of the K-step matrix K = U S − λ g in float32 (SMALL_LR):
    # the bases still rotate, by what they rotate in float64
    lr, steps = SMALL_LR[problem], SMALL_STEPS
    levels = [v for mode in _new_direction_levels(problem, lr) for v in mode]
    # some new directions lie below the float32 round-off of K (an augmentation of K at
    # 16 u₃₂ ‖K‖ would drop them), all of them far below the earlier 100 u n ‖K‖
    assert min(levels) < 1 and max(levels) < 100, levels
    ref = reference(problem, device, lr=lr, steps=steps)
    run = _train(problem, precision, device, lr=lr, steps=steps)
    assert run.ranks == ref.ranks  # the steps are far below τ: nothing new is kept
    # float64 rotates every basis by far more than a float32 basis can resolve (u₃₂): a
    # float32 drop level above the step leaves a basis at a few u₃₂ (the earlier code: 1–6 u₃₂)
    assert min(ref.moves) > 200 * U32, ref.moves
    # float32 stores the factors rounded every step: errors of about u₃₂ per step add up to
    # about √steps u₃₂ (measured: at most 0.8 u₃₂); bf16 gradients steer each step with a
    # relative error of about u_bf16 (measured: at most 1.1 %)
    tol = 2 * math.sqrt(steps) * U32
    rel = 8 * U_BF16 if precision == "bf16-autocast" else 0.0
    for m, m64 in zip(run.moves, ref.moves):
        assert abs(m - m64) <= tol + rel * m64, (run.moves, ref.moves)
    # the same descent: float32 weights round by u₃₂ per step, bf16 gradients change the
    # descent by their relative error (measured: at most 5 and 15 u₃₂ of the loss)
    descent = ref.start_loss - ref.loss
    assert descent > 0
    assert abs(run.loss - ref.loss) <= 64 * U32 * ref.loss + rel * descent, (
        run.loss,
        ref.loss,
        descent,
    )
