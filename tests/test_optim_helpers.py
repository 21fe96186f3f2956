"""A minimal Tucker layer following the layer contract, and small models for the optimizer tests.

``WeightTucker`` keeps the interface of ``tuckerflow.nn.TuckerLayer`` that TDLRT relies on
(``tuckerflow.optim.protocol.TuckerLayerProtocol``: core, factors, factorized_modes, factor,
weight_shape, ranks, set_tucker_, record_for_galerkin, factor_gradients, gradient_record;
here recording the gradient of the reconstructed dense weight) while
letting a test use the weight itself as the model output (``layer()`` returns ``W``), which is
what the facts on ``L = ½‖W − A‖²`` need.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tuckerflow.nn.recording import GradientRecord
from tuckerflow.optim.transport import mode_products


def orthonormal(n, r, generator, dtype):
    q, _ = torch.linalg.qr(torch.randn(n, r, generator=generator, dtype=torch.float64))
    return q.to(dtype)


def tucker_tensor(shape, rank, *, seed, dtype=torch.float64, decay=0.7):
    """Dense tensor of exact multilinear rank ``rank`` with a controlled core spectrum."""
    g = torch.Generator().manual_seed(seed)
    core = torch.randn(rank, generator=g, dtype=torch.float64)
    for i, r in enumerate(rank):
        scale = torch.tensor([decay**k for k in range(r)], dtype=torch.float64)
        shp = [1] * len(rank)
        shp[i] = r
        core = core * scale.reshape(shp)
    factors = [orthonormal(n, r, g, torch.float64) for n, r in zip(shape, rank)]
    return mode_products(core, factors).to(dtype)


class WeightTucker(nn.Module):
    """Tucker layer: ``forward()`` returns the weight, ``forward(x)`` applies it.

    A 2-mode weight acts as ``F.linear``; a 3-mode weight ``(C_out, C_in, k)`` as a
    ``'same'``-padded ``F.conv1d``.
    """

    def __init__(self, shape, rank, *, keep_full=(), seed=0, dtype=torch.float64, scale=1.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight_shape = tuple(shape)
        d = len(shape)
        self.factorized_modes = tuple(i for i in range(d) if i not in keep_full)
        ranks = [shape[i] if i in keep_full else rank[i] for i in range(d)]
        core = torch.randn(ranks, generator=g, dtype=torch.float64)
        core = core * (scale / core.norm())
        self.core = nn.Parameter(core.to(dtype))
        self.factors = nn.ParameterList(
            [nn.Parameter(orthonormal(shape[i], ranks[i], g, dtype)) for i in self.factorized_modes]
        )
        self.bias = None
        self.factor_gradients = True
        self.gradient_record = GradientRecord(self)

    @property
    def record_for_galerkin(self):
        return self.gradient_record.enabled

    @record_for_galerkin.setter
    def record_for_galerkin(self, value):
        self.gradient_record.enabled = bool(value)
        if not value:
            self.gradient_record.clear()

    @property
    def ranks(self):
        return tuple(self.core.shape)

    def factor(self, mode):
        if mode not in self.factorized_modes:
            return None
        return self.factors[self.factorized_modes.index(mode)]

    def reconstruct(self):
        mats = [self.factor(i) for i in range(len(self.weight_shape))]
        return mode_products(self.core, mats)

    @torch.no_grad()
    def set_tucker_(self, core, factors):
        news = [core] + [factors[i] for i in self.factorized_modes]
        for i in self.factorized_modes:
            if tuple(factors[i].shape) != (self.weight_shape[i], core.shape[i]):
                raise ValueError(f"factors[{i}] has shape {tuple(factors[i].shape)}")
        for p, new in zip([self.core, *self.factors], news):
            if p.grad is not None and p.grad.shape != new.shape:
                p.grad = None
            # stored contiguously, as TuckerLayer.set_tucker_ does: a permuted view would give
            # a resumed run another memory layout, hence other round-off, than the original
            p.data = new.detach().contiguous()

    def forward(self, x=None):
        w = self.reconstruct()
        if self.record_for_galerkin and torch.is_grad_enabled():
            self.gradient_record.watch_weight(w)
        if x is None:
            return w
        if len(self.weight_shape) == 2:
            return F.linear(x, w)
        return F.conv1d(x, w, padding="same")

    def full_weight_gradient(self):
        G = self.gradient_record.weight_gradient([None] * len(self.weight_shape))
        if G is None:
            raise RuntimeError("no recorded batch")
        return G


class SmallNet(nn.Module):
    """conv1d (Tucker, 3 modes) → ReLU → linear (Tucker) → ReLU → linear (dense head)."""

    def __init__(self, *, ranks=((3, 2, 2), (3, 3)), seed=0, dtype=torch.float64, length=6):
        super().__init__()
        g = torch.Generator().manual_seed(seed + 100)
        self.conv = WeightTucker((6, 4, 3), ranks[0], seed=seed, dtype=dtype)
        self.fc = WeightTucker((8, 6 * length), ranks[1], seed=seed + 1, dtype=dtype)
        self.head = nn.Linear(8, 3, dtype=dtype)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(3, 8, generator=g, dtype=dtype) / math.sqrt(8))
            self.head.bias.zero_()

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(1)
        return self.head(torch.relu(self.fc(h)))


def batch(seed, *, n=16, length=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, length, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y
