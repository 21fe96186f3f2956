"""The K-step of ``kstep="weight"`` from the records: partial contractions instead of ``G``.

The batched basis update forms ``c · G ×_{j≠i} U_jᴴ`` per factorized mode from the recorded
passes (small projected weight gradients) and never the dense weight gradient ``G``; the
per-layer path (``TDLRT._reference_path``) still forms ``G``. Both must take the same
steps to round-off, with the same number of host transfers, and the bound of ``‖G‖`` that
keeps the Galerkin gradient free of a finite check must hold.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_optim_host import batches, chain, run_steps
from torch import nn

import tuckerflow.nn as tnn
from tuckerflow.nn.recording import GradientRecord
from tuckerflow.optim import TDLRT, _batched

DTYPES = [torch.float64, torch.float32]


def _eps(dtype):
    return torch.finfo(dtype).eps


@pytest.mark.parametrize(
    "options",
    [
        {"stride": 1, "padding": 1},
        {"stride": 2, "padding": 2, "dilation": 2},
        {"stride": 1, "padding": 0, "groups": 2},
        {"stride": 1, "padding": "same"},
    ],
)
def test_the_record_bound_is_at_least_the_norm_of_the_weight_gradient(options):
    torch.manual_seed(0)
    layer = tnn.TuckerConv2d(4, 6, 3, rank=2, dtype=torch.float64, **options)
    layer.record_for_galerkin = True
    record = layer.gradient_record
    for _ in range(2):  # two passes: the bound adds up
        x = torch.randn(5, 4, 9, 9, dtype=torch.float64)
        layer(x).square().sum().backward()
    G = record.weight_gradient([None] * 4)
    bound = record.weight_gradient_bound()
    assert bound is not None and bound.dtype == torch.float64
    assert float(torch.linalg.vector_norm(G)) <= float(bound) < math.inf


def test_the_record_bound_of_a_linear_layer_and_its_refusals():
    torch.manual_seed(0)
    layer = tnn.TuckerLinear(7, 5, rank=2, dtype=torch.float64)
    layer.record_for_galerkin = True
    x = torch.randn(3, 4, 7, dtype=torch.float64)  # leading batch dimensions
    layer(x).square().sum().backward()
    G = layer.gradient_record.weight_gradient([None, None])
    assert float(torch.linalg.vector_norm(G)) <= float(
        layer.gradient_record.weight_gradient_bound()
    )
    # padding that repeats entries of x states no bound; an empty record has none
    conv = tnn.TuckerConv2d(2, 3, 3, padding=1, padding_mode="reflect", rank=2)
    conv.record_for_galerkin = True
    conv(torch.randn(2, 2, 6, 6)).sum().backward()
    assert conv.gradient_record.weight_gradient_bound() is None
    assert GradientRecord(tnn.TuckerLinear(3, 3, rank=1)).weight_gradient_bound() is None


def test_a_non_finite_record_makes_the_bound_non_finite():
    layer = tnn.TuckerLinear(4, 3, rank=2, dtype=torch.float64)
    layer.record_for_galerkin = True
    x = torch.randn(6, 4, dtype=torch.float64)
    x[2, 1] = math.inf
    layer(x).sum().backward()
    assert not math.isfinite(float(layer.gradient_record.weight_gradient_bound()))


def _conv_net(dtype, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        tnn.TuckerConv2d(3, 8, 3, padding=1, rank=2, dtype=dtype),
        nn.Tanh(),
        tnn.TuckerConv2d(8, 8, 3, stride=2, padding=1, rank=(3, 2, 3, 3), dtype=dtype),
        nn.Tanh(),
        nn.Flatten(),
        tnn.TuckerLinear(8 * 3 * 3, 4, rank=2, dtype=dtype),
    )


def _data(dtype, n=4):
    g = torch.Generator().manual_seed(3)
    return [
        (
            torch.randn(12, 3, 5, 5, generator=g, dtype=torch.float64).to(dtype),
            torch.randint(0, 4, (12,), generator=g),
        )
        for _ in range(n)
    ]


def _weights(model):
    """The layers' weights ``C ×_i U_i`` and the biases (the factors themselves are unique
    only up to rotations inside degenerate singular subspaces)."""
    out = []
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, tnn.TuckerLayer):
                out.append(m.reconstruct().clone())
                if m.bias is not None:
                    out.append(m.bias.detach().clone())
    return out


def _train(reference, dtype, *, steps=4, **options):
    model = _conv_net(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    tdlrt = TDLRT(model, opt, tau=0.05, update_every=1, **options)
    tdlrt._reference_path = reference
    start = tdlrt.ranks()
    counts = []
    dense_calls = []
    for m in model.modules():
        if isinstance(m, tnn.TuckerLayer):
            record = m.gradient_record

            def spy(U_hats, groups=None, leading=(), _f=record.weight_gradient):
                if all(u is None for u in U_hats):
                    dense_calls.append(len(U_hats))
                return _f(U_hats, groups, leading)

            record.weight_gradient = spy
    run_steps(model, tdlrt, _data(dtype), steps, counts=counts)
    weights = _weights(model)
    assert tdlrt.ranks() != start  # the ranks did move
    return tdlrt.ranks(), weights, counts, dense_calls


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_batched_k_step_never_forms_G_and_steps_as_the_per_layer_path(dtype, monkeypatch):
    # the float32 certificates may add a transfer where a decision is a near-tie (not what
    # is counted here): the float64 factorisations throughout
    monkeypatch.setattr(_batched, "_FLOAT32_GRAM", False)
    monkeypatch.setattr(_batched, "_FLOAT32_AUGMENT", False)
    ranks, weights, counts, dense = _train(False, dtype)
    ranks_ref, weights_ref, _, dense_ref = _train(True, dtype)
    assert dense == [] and dense_ref  # the per-layer path forms G, the batched one never
    assert ranks == ranks_ref
    for a, b in zip(weights, weights_ref):
        scale = max(float(b.abs().max()), 1.0)
        assert float((a - b).abs().max()) <= 1e3 * _eps(dtype) * scale
    # two transfers per basis update, as with G: the Galerkin gradient is bounded
    assert [n for _, n in counts] == [2] * len(counts)


def test_an_inf_in_the_records_refuses_the_step_and_changes_nothing():
    model = _conv_net(torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    tdlrt = TDLRT(model, opt, tau=0.05, update_every=1)
    x, y = _data(torch.float64)[0]
    F.cross_entropy(model(x), y).backward()
    before = [p.detach().clone() for p in model.parameters()]
    record = model[2].gradient_record
    record.contributions()[0].grad[0, 0, 0, 0] = math.inf  # what a raw overflow leaves
    with pytest.raises(Exception, match="NaN or Inf"):
        tdlrt.step()
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p.detach(), q)
    assert not opt.state or all(not s for s in opt.state.values())


def test_the_existing_chain_with_all_modes_factorized_takes_the_partial_path():
    """The host tests' chain factorizes the spatial modes too: the partial contraction
    then projects them as well, and the trajectory is the per-layer path's."""
    out = []
    for reference in (False, True):
        model = chain(3)
        opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
        tdlrt = TDLRT(model, opt, tau=0.05, update_every=1)
        tdlrt._reference_path = reference
        run_steps(model, tdlrt, batches(), 3)
        out.append((tdlrt.ranks(), _weights(model)))
    assert out[0][0] == out[1][0]
    for a, b in zip(out[0][1], out[1][1]):
        assert float((a - b).abs().max()) <= 1e3 * _eps(torch.float64) * max(
            float(b.abs().max()), 1.0
        )
