"""TDLRT takes the same rank decisions in float32, under bf16 autocast and in float64.

Every run starts from the *same* point: the layer, the data and the target are built in
float64 and then converted, so that the only difference between two runs is the precision
of the arithmetic. The targets have full rank, so the ranks have to grow from 2, and the bases
have to rotate: a drop level of the basis augmentation that is above the size of a real
gradient step (as ``100 · eps · n · ‖K‖`` was in float32 for a 512-wide mode) shows up here
as a rank that does not grow or a basis that does not move.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from tuckerflow.nn import TuckerConv2d, TuckerLinear
from tuckerflow.optim import TDLRT

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
STEPS = 25


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


PROBLEMS = {"linear": (_linear_problem, 0.2), "conv2d": (_conv_problem, 0.1)}


def _subspace_moves(start, layer):
    """``‖(I − U₁U₁ᴴ) U₀‖₂`` per factor: the sine of the largest angle by which span U₀ left."""
    out = []
    for u0, u1 in zip(start, layer.factors):
        u1 = u1.detach().to(torch.float64)
        out.append(float(torch.linalg.matrix_norm(u0 - u1 @ (u1.T @ u0), ord=2)))
    return out


def _train(problem, precision, device, *, lr=None, tau=1e-3, steps=STEPS):
    """Ranks after every step, final loss (in float64) and subspace moves of one run."""
    build, default_lr = PROBLEMS[problem]
    layer, x, y = build(0)
    dtype = torch.float64 if precision == "float64" else torch.float32
    layer = layer.to(device=device, dtype=dtype)
    x, y = x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)
    start = [u.detach().to(torch.float64).clone() for u in layer.factors]
    opt = torch.optim.SGD(layer.parameters(), lr=default_lr if lr is None else lr)
    tdlrt = TDLRT(layer, opt, tau=tau)
    autocast = (
        torch.autocast(device_type=device, dtype=torch.bfloat16)
        if precision == "bf16-autocast"
        else contextlib.nullcontext()
    )
    ranks = []
    for _ in range(steps):
        tdlrt.zero_grad()
        with autocast:
            out = layer(x)
        # in the parameters' precision (autocast returns bf16 outputs)
        loss = 0.5 * ((out.to(dtype) - y) ** 2).mean() * out.shape[1]
        loss.backward()
        tdlrt.step()
        ranks.append(tuple(layer.ranks))
    with torch.no_grad():
        w = layer.to(torch.float64)
        out = w(x.to(torch.float64))
        final = float(0.5 * ((out - y.to(torch.float64)) ** 2).mean() * out.shape[1])
    return ranks, final, _subspace_moves(start, w)


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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("precision", ["float32", "bf16-autocast"])
def test_ranks_and_loss_follow_float64(reference, problem, precision, device):
    ranks64, loss64, moves64 = reference(problem, device)
    ranks, loss, moves = _train(problem, precision, device)
    # the rank has to grow in both (full-rank target), and to the same extent
    assert max(ranks64[-1]) > 8
    for r, r64 in zip(ranks[-1], ranks64[-1]):
        assert r >= 0.75 * r64, (ranks[-1], ranks64[-1])
    # the same descent: the loss at most 20 % above the float64 one
    assert loss <= 1.2 * loss64, (loss, loss64)
    # and the same rotation of the bases
    for m, m64 in zip(moves, moves64):
        assert m >= 0.5 * m64, (moves, moves64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_small_steps_rotate_the_bases_in_float32(reference, problem, device):
    # steps far below the round-off of the factors' K-step matrix K = U S − λ g in float32
    # (λ‖g‖ about 1e-6 ‖K‖): the bases still rotate, by what they rotate in float64
    lr = PROBLEMS[problem][1] * 1e-4
    ranks64, loss64, moves64 = reference(problem, device, lr=lr, steps=10)
    ranks, loss, moves = _train(problem, "float32", device, lr=lr, steps=10)
    assert ranks[-1] == ranks64[-1]
    for m, m64 in zip(moves, moves64):
        assert m64 > 1e-5
        assert abs(m - m64) <= 0.05 * m64, (moves, moves64)
    assert abs(loss - loss64) <= 1e-4 * loss64
