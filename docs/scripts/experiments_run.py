"""The accuracy–compression frontier: dense, TDLRT at several tolerances, and at the ranks one
TDLRT run found (``--reference-tau``) directly trained Tucker factors, tensorly-torch's
``FactorizedConv`` and a matrix low-rank baseline on the reshaped kernels; several
initializations each, for ``--model lenet5`` (default) or ``vgg_small``.

Usage (from the repository root)::

    python docs/scripts/experiments_run.py --out runs/experiments            # run + figures
    python docs/scripts/experiments_run.py --out runs/experiments --plot-only
    python docs/scripts/experiments_run.py --check        # the baseline transforms, asserted

Writes ``OUT/results.json`` (one record per run), ``OUT/table.md`` and the figures
``docs/figures/PREFIX_accuracy_compression.png`` and ``docs/figures/PREFIX_spread.png``.
With ``--settings common`` (default: the settings of the earlier tables, :data:`COMMON`) the
held-out split is the same for every run (``split_seed=0``) and the seed changes the
initialization and the batch order only; ``--settings cli`` runs the defaults of
``tuckerflow train`` (lr 0.05, batch 64; the split drawn from the seed, so the table's gap to
dense is taken against the dense run of the same seed)::

    python docs/scripts/experiments_run.py --settings cli --epochs 5 --seeds 5 --workers 1 \
        --taus 0.05 0.1 0.2 0.3 0.4 --baselines dense direct tltorch matrix \
        --out docs/results/frontier/lenet5_mnist5k_all-but-last --figure-prefix frontier_lenet5

Studies (``--study``) run grids with the CLI defaults of ``tuckerflow train`` instead, one JSON
file per run in ``OUT/runs`` (reused when present), and write ``OUT/STUDY.json`` and
``OUT/STUDY.md``::

    python docs/scripts/experiments_run.py --study ablation --out runs/study --seeds 3 --epochs 5
    python docs/scripts/experiments_run.py --study goal1 --out runs/study --seeds 10 --epochs 5
    python docs/scripts/experiments_run.py --study init --out runs/study --seeds 2 --epochs 5
    python docs/scripts/experiments_run.py --study saddle --out runs/study --seeds 5 --epochs 5 \
        --taus 0.001 0.01 0.05 0.2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor

FIGURES = os.path.join(os.path.dirname(__file__), "..", "figures")
TAUS = (0.1, 0.2, 0.3)
REFERENCE_TAU = 0.2  # the TDLRT run whose final ranks the fixed-rank baselines reuse

COMMON = {
    "data": "mnist5k",
    "model": "lenet5",
    "split_seed": 0,
    "val_fraction": 0.1,
    "test_fraction": 0.2,
    "batch_size": 128,
    "optimizer": "momentum",
    "momentum": 0.9,
    "lr": 0.02,
    "rank": 32,
    "quiet": True,
    "device": "cpu",
    "threads": 1,
}


def _std_like_pytorch(fan_in):
    # PyTorch's default Conv/Linear init is uniform(±1/√fan_in): standard deviation 1/√(3 fan_in)
    return 1.0 / math.sqrt(3.0 * fan_in)


def _set_module(model, name, module):
    """Install ``module`` at the dotted path ``name`` of ``model`` (``features.3``, ``fc1``)."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _product_factor_std(fan_in, r):
    """Entry std of each factor of a rank-``r`` product ``B A`` whose entries have the
    variance of PyTorch's default init of the dense layer: ``Var (B A)_ij = r s⁴``."""
    return math.sqrt(_std_like_pytorch(fan_in) / math.sqrt(r))


def _low_rank_linear(fc, r):
    """``fc`` (out × in) as ``B A``: ``Linear(in, r, bias=False)`` then ``Linear(r, out)``."""
    import torch
    from torch import nn

    low_rank = nn.Sequential(
        nn.Linear(fc.in_features, r, bias=False),
        nn.Linear(r, fc.out_features, bias=fc.bias is not None),
    )
    with torch.no_grad():
        scale = _product_factor_std(fc.in_features, r)
        low_rank[0].weight.normal_(0.0, scale)
        low_rank[1].weight.normal_(0.0, scale)
        if fc.bias is not None:
            low_rank[1].bias.copy_(fc.bias)
    return low_rank


def _low_rank_conv(conv, r):
    """``conv`` with its kernel reshaped to out × (in·kh·kw) as ``B A``: a kh×kw convolution
    in → r (the stride, padding and dilation of ``conv``, no bias) then a 1×1 convolution
    r → out carrying the bias."""
    import torch
    from torch import nn

    if conv.groups != 1:
        raise ValueError(f"groups={conv.groups}: the matrix baseline needs groups=1")
    first = nn.Conv2d(
        conv.in_channels,
        r,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=False,
        padding_mode=conv.padding_mode,
    )
    second = nn.Conv2d(r, conv.out_channels, 1, bias=conv.bias is not None)
    with torch.no_grad():
        scale = _product_factor_std(conv.in_channels * math.prod(conv.kernel_size), r)
        first.weight.normal_(0.0, scale)
        second.weight.normal_(0.0, scale)
        if conv.bias is not None:
            second.bias.copy_(conv.bias)
    return nn.Sequential(first, second)


def tltorch_transform(ranks):
    """Replace each Tucker layer of ``ranks`` (``{name: TDLRT's ranks}``, any model): a
    ``Conv2d`` by tensorly-torch's Tucker ``FactorizedConv`` at those ranks, a ``Linear`` by
    ``B A`` at rank ``ranks[name][0]``."""

    def tensorly_torch_factorized(model):
        import tltorch
        import torch
        from torch import nn

        for name, rank in ranks.items():
            module = model.get_submodule(name)
            if isinstance(module, nn.Conv2d):
                layer = tltorch.FactorizedConv.from_conv(
                    module,
                    rank=tuple(rank),
                    factorization="tucker",
                    implementation="factorized",
                    decompose_weights=False,
                )
                fan_in = module.in_channels * math.prod(module.kernel_size)
                layer.weight.normal_(0.0, _std_like_pytorch(fan_in))
                if module.bias is not None:
                    with torch.no_grad():
                        layer.bias.copy_(module.bias)
            elif isinstance(module, nn.Linear):
                layer = _low_rank_linear(module, int(rank[0]))
            else:
                raise TypeError(f"{name}: {type(module).__name__} is neither Conv2d nor Linear")
            _set_module(model, name, layer)
        return model

    return tensorly_torch_factorized


def tucker_parameter_counts(model, ranks):
    """``{name: parameters}`` of the Tucker layers (core, factors, bias) that ``model``'s
    layers ``ranks`` become at those ranks, the way TDLRT stores them (full modes kept full).

    Built on a copy with the global RNG restored after, so a transform calling this draws
    the same initialization as one that does not.
    """
    import copy

    import torch

    from tuckerflow.nn import tuckerize

    with torch.random.fork_rng(devices=[]):
        _, report = tuckerize(
            copy.deepcopy(model), rank={k: tuple(v) for k, v in ranks.items()}, init="random"
        )
    return {layer.path: layer.params_after for layer in report.layers}


def matrix_rank(module, budget):
    """Rank ``r`` of the two-factor form of ``module`` whose parameter count
    ``r · (out + fan_in) + bias`` is nearest to ``budget`` (ties: the smaller rank), within
    ``[1, min(out, fan_in)]``; ``fan_in = in · kh · kw`` for a convolution."""
    out = module.weight.shape[0]
    fan_in = math.prod(module.weight.shape[1:])
    bias = out if module.bias is not None else 0
    r = math.ceil((budget - bias) / (out + fan_in) - 0.5)
    return max(1, min(min(out, fan_in), r))


def matrix_transform(ranks):
    """Matrix low-rank baseline: each layer of ``ranks`` (``{name: TDLRT's Tucker ranks}``)
    becomes a product of two directly trained factors of its matricized weight (out × in·kh·kw;
    see :func:`_low_rank_conv`, :func:`_low_rank_linear`) with the parameter count of the
    Tucker layer at those ranks (:func:`matrix_rank`): equal compression per layer."""

    def matrix_low_rank(model):
        from torch import nn

        budgets = tucker_parameter_counts(model, ranks)
        for name in ranks:
            module = model.get_submodule(name)
            r = matrix_rank(module, budgets[name])
            if isinstance(module, nn.Conv2d):
                layer = _low_rank_conv(module, r)
            elif isinstance(module, nn.Linear):
                layer = _low_rank_linear(module, r)
            else:
                raise TypeError(f"{name}: {type(module).__name__} is neither Conv2d nor Linear")
            _set_module(model, name, layer)
        return model

    return matrix_low_rank


def _std(values):
    """Sample standard deviation (0 for a single run)."""
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _record(label, method, seed, summary, extra=None):
    return {
        "label": label,
        "method": method,
        "seed": seed,
        "test_accuracy": summary["test_accuracy"],
        "val_accuracy": summary["val_accuracy"],
        "compression_rate": summary["compression_rate"],
        "compression_rate_conv": summary["compression_rate_conv"],
        "ranks": summary["ranks"],
        "tucker_layers": summary["tucker_layers"],
        "time_s": summary["time_s"],
        "val_curve": [h["val_accuracy"] for h in summary["history"]],
        **(extra or {}),
    }


def _slug(label):
    return "".join(c if c.isalnum() else "-" for c in label).strip("-").lower()


#: TDLRT options of the published form (the defaults before the collapse protection).
PUBLISHED = {"update_every": 1, "defer_truncation": False, "truncation_guard": False}


def base_settings(settings="common", *, model="lenet5", data="mnist5k", factorize="all-but-last"):
    """Options shared by every run of an experiment.

    ``"common"``: :data:`COMMON` (the settings of the earlier tables: lr 0.02, batch 128, the
    split fixed by ``split_seed=0``); ``"cli"``: the defaults of ``tuckerflow train`` (lr 0.05,
    momentum 0.9, batch 64, rank ≤ 32, the split drawn from the seed), one CPU thread.
    """
    if settings == "common":
        return {**COMMON, "model": model, "data": data, "factorize": factorize}
    if settings == "cli":
        return {
            "model": model,
            "data": data,
            "factorize": factorize,
            "quiet": True,
            "device": "cpu",
            "threads": 1,
        }
    raise ValueError(f"settings={settings!r} must be 'common' or 'cli'")


#: Baselines of :func:`run_seed`: name -> (label, recorded method, TrainConfig method).
BASELINES = {
    "dense": ("dense", "dense", "dense"),
    "direct": ("Tucker factors (direct)", "tucker-fixed", "tucker-fixed"),
    "tltorch": ("tensorly-torch FactorizedConv", "tltorch", "dense"),
    "matrix": ("matrix low-rank (reshaped kernels)", "matrix", "dense"),
}


def run_seed(
    seed,
    epochs,
    folder,
    taus=TAUS,
    baselines=("dense", "direct", "tltorch"),
    factorize="all-but-last",
    reference_tau=REFERENCE_TAU,
    published=False,
    settings="common",
    model="lenet5",
    data="mnist5k",
    baseline_lr=None,
    scheduler=None,
):
    """All runs of one initialization seed (TDLRT first: the baselines reuse its ranks).

    ``baseline_lr``: the learning rate of the fixed-rank baselines (direct factors,
    ``FactorizedConv``, matrix low-rank) when it is not the settings' one (each method at a
    learning rate it tolerates; dense and TDLRT keep the settings').

    Each finished run is written to ``folder/seed{seed}-{label}.json`` at once; runs found
    there already are not repeated, so an interrupted experiment continues where it stopped.
    A run that diverges is recorded as such (``test_accuracy`` None); when the reference
    TDLRT run diverges, the fixed-rank baselines of that seed are not run (no ranks to reuse).
    """
    from tuckerflow.train import TrainConfig, TrainingDiverged, train

    def done(label):
        path = os.path.join(folder, f"seed{seed}-{_slug(label)}.json")
        if os.path.exists(path):
            with open(path) as handle:
                return json.load(handle)
        return None

    def keep(record):
        path = os.path.join(folder, f"seed{seed}-{_slug(record['label'])}.json")
        with open(path + ".tmp", "w") as handle:
            json.dump(record, handle)
        os.replace(path + ".tmp", path)
        return record

    def attempt(label, kind, config, transform=None, extra=None):
        try:
            summary = train(config, transform=transform)
        except TrainingDiverged as err:
            record = {"label": label, "method": kind, "seed": seed, "diverged": str(err)}
            record.update({"test_accuracy": None, "ranks": {}, "tucker_layers": []})
            return keep({**record, **(extra or {})})
        return keep(_record(label, kind, seed, summary, extra))

    records = []
    reference = None
    common = base_settings(settings, model=model, data=data, factorize=factorize)
    if scheduler is not None:
        common["scheduler"] = scheduler
    for tau in sorted(set(taus) | {reference_tau}):
        label = f"TDLRT τ={tau}"
        record = done(label)
        if record is None:
            options = PUBLISHED if published else {}
            config = TrainConfig(
                **common, **options, method="tdlrt", tau=tau, epochs=epochs, seed=seed
            )
            record = attempt(label, "tdlrt", config, extra={"tau": tau})
        records.append(record)
        if tau == reference_tau and not record.get("diverged"):
            reference = {k: v for k, v in record["ranks"].items() if k in record["tucker_layers"]}
    transforms = {"tltorch": tltorch_transform, "matrix": matrix_transform}
    for name in baselines:
        label, kind, method = BASELINES[name]
        if name != "dense" and reference is None:
            continue  # the reference TDLRT run diverged: no ranks for the fixed-rank baselines
        record = done(label)
        if record is None:
            options = {"ranks": reference} if name == "direct" else {}
            extra = None
            if baseline_lr is not None and name != "dense":
                options["lr"] = baseline_lr
                extra = {"lr": baseline_lr}
            transform = transforms[name](reference) if name in transforms else None
            config = TrainConfig(**{**common, **options}, method=method, epochs=epochs, seed=seed)
            record = attempt(label, kind, config, transform, extra)
        records.append(record)
    return records


def check_transforms(shapes=((1, 28, 28), (1, 8, 8))):
    """Assert-based check of the baseline transforms (``--check``; no training).

    For lenet5 and vgg_small, both factorization policies and each input shape: every
    transformed network maps a batch to ``(batch, classes)``; the matrix baseline's layers
    hold ``r (out + fan_in) + bias`` parameters, within half a rank step of the Tucker layer
    they stand for (unless the rank is clamped to [1, min(out, fan_in)]); its two-factor
    convolution computes the convolution with the product kernel ``B A`` (float64, to
    round-off); its product entries have the variance of PyTorch's default init; counting
    the Tucker parameters leaves the global RNG as it was. Prints the per-layer ranks.
    """
    import copy

    import torch
    import torch.nn.functional as F
    from torch import nn

    from tuckerflow.nn import tuckerize
    from tuckerflow.train.build import factorizable_names
    from tuckerflow.train.models import build_model, layer_parameter_counts

    torch.manual_seed(0)
    for model_name in ("lenet5", "vgg_small"):
        for shape in shapes:
            for policy in ("all-but-last", "conv"):
                model = build_model(model_name, shape, 10)
                names = factorizable_names(model, policy)
                # Tucker ranks as TDLRT would report them: about half of each mode
                _, report = tuckerize(copy.deepcopy(model), filter=names, rank=0.5, init="random")
                ranks = {layer.path: list(layer.ranks) for layer in report.layers}
                tucker = {layer.path: layer.params_after for layer in report.layers}
                state = torch.get_rng_state()
                assert tucker_parameter_counts(model, ranks) == tucker
                assert torch.equal(state, torch.get_rng_state()), "RNG state changed"
                x = torch.randn(3, *shape)
                for transform in (matrix_transform, tltorch_transform):
                    out = transform(ranks)(copy.deepcopy(model))
                    assert out(x).shape == (3, 10), (model_name, transform.__name__)
                out = matrix_transform(ranks)(copy.deepcopy(model))
                dense_counts = layer_parameter_counts(model)
                for name, rank in ranks.items():
                    dense = model.get_submodule(name)
                    pair = out.get_submodule(name)
                    first, second = pair[0], pair[1]
                    r = first.weight.shape[0]
                    o, fan_in = dense.weight.shape[0], math.prod(dense.weight.shape[1:])
                    bias = o if dense.bias is not None else 0
                    count = sum(p.numel() for p in pair.parameters())
                    assert count == r * (o + fan_in) + bias, name
                    if 1 < r < min(o, fan_in):
                        assert abs(count - tucker[name]) <= (o + fan_in) / 2, name
                    b = second.weight.reshape(o, r).double()
                    a = first.weight.reshape(r, fan_in).double()
                    product = b @ a
                    if product.numel() >= 10_000:  # the init variance, to sampling error
                        ratio = product.pow(2).mean().item() * 3 * fan_in
                        assert abs(ratio - 1) < 0.2, (name, ratio)
                    if isinstance(dense, nn.Conv2d):
                        kernel = product.reshape(dense.weight.shape)
                        h = torch.randn(2, dense.in_channels, *shape[1:], dtype=torch.float64)
                        b_ = None if second.bias is None else second.bias.double()
                        want = F.conv2d(h, kernel, b_, dense.stride, dense.padding, dense.dilation)
                        got = pair.double()(h)
                        scale = want.abs().max().item() * fan_in
                        tol = 8 * torch.finfo(torch.float64).eps * scale
                        assert (got - want).abs().max().item() <= tol, name
                    print(
                        f"{model_name} {shape} {policy}: {name} dense "
                        f"{dense_counts[name][1]}, Tucker {tuple(rank)} {tucker[name]}, "
                        f"matrix rank {r} {count}"
                    )
    print("check_transforms: all assertions hold")


BASELINE_LABELS = [BASELINES[name][0] for name in ("direct", "tltorch", "matrix")]


def _order(records):
    """Labels present in ``records``: dense, TDLRT by increasing τ, then the baselines."""
    present = {r["label"] for r in records}
    taus = sorted({r["tau"] for r in records if r["method"] == "tdlrt"})
    labels = ["dense", *(f"TDLRT τ={t}" for t in taus), *BASELINE_LABELS]
    return [label for label in labels if label in present]


def _gaps(rows, records):
    """Points below the dense run of the same seed, for each finished run of ``rows``."""
    dense = {r["seed"]: r["test_accuracy"] for r in records if r["label"] == "dense"}
    return [
        100 * (dense[r["seed"]] - r["test_accuracy"])
        for r in rows
        if r["seed"] in dense and r.get("test_accuracy") is not None
    ]


def table(records):
    """Markdown table: mean, std, min and max of test accuracy, the gap to the dense run of
    the same seed, compression, time; diverged runs counted, left out of the means."""
    import numpy as np

    lines = [
        "| method | runs | test accuracy (%) mean ± std | min – max | below dense, same seed "
        "(points) mean ± std | compression (%) | conv-only c.r. (%) | time per run (s) | "
        "diverged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label in _order(records):
        every = [r for r in records if r["label"] == label]
        rows = [r for r in every if r.get("test_accuracy") is not None]
        failed = len(every) - len(rows)
        if not rows:
            lines.append(f"| {label} | {len(every)} | – | – | – | – | – | – | {failed} |")
            continue
        acc = 100 * np.array([r["test_accuracy"] for r in rows])
        cr = 100 * np.array([r["compression_rate"] for r in rows])
        crc = 100 * np.array([r["compression_rate_conv"] for r in rows])
        t = np.array([r["time_s"] for r in rows])
        gaps = np.array(_gaps(rows, records))
        gap = "–" if label == "dense" or not len(gaps) else f"{gaps.mean():.2f} ± {_std(gaps):.2f}"
        lines.append(
            f"| {label} | {len(every)} | {acc.mean():.2f} ± {_std(acc):.2f} | "
            f"{acc.min():.2f} – {acc.max():.2f} | {gap} | {cr.mean():.1f} ± {_std(cr):.1f} | "
            f"{crc.mean():.1f} ± {_std(crc):.1f} | {t.mean():.0f} | {failed} |"
        )
    return "\n".join(lines)


def versus(records, reference_tau):
    """Markdown table: TDLRT at ``reference_tau`` minus each baseline, per seed (points; the
    baselines run at that TDLRT run's ranks, so the pairs share seed and compression)."""
    import numpy as np

    tdlrt = {
        r["seed"]: r["test_accuracy"]
        for r in records
        if r["label"] == f"TDLRT τ={reference_tau}" and r.get("test_accuracy") is not None
    }
    lines = [
        f"| baseline | pairs | TDLRT τ={reference_tau} minus baseline (points) mean ± std | "
        "min – max | seeds TDLRT ahead |",
        "|---|---|---|---|---|",
    ]
    for label in ["dense", *BASELINE_LABELS]:
        pairs = [
            100 * (tdlrt[r["seed"]] - r["test_accuracy"])
            for r in records
            if r["label"] == label and r["seed"] in tdlrt and r.get("test_accuracy") is not None
        ]
        if not pairs:
            continue
        d = np.array(pairs)
        lines.append(
            f"| {label} | {len(d)} | {d.mean():+.2f} ± {_std(d):.2f} | {d.min():+.2f} – "
            f"{d.max():+.2f} | {int((d > 0).sum())} of {len(d)} |"
        )
    return "\n".join(lines)


def plot(records, folder, prefix="experiments", epochs=None, conv_only=False, title=None):
    """Accuracy against compression (mean ± std per method, each run a dot) and the spread
    of each method over seeds; ``title`` names the model and data (default LeNet5 on mnist5k)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    every = records
    records = [r for r in records if r.get("test_accuracy") is not None]
    # colours fixed by the labels of all runs, diverged ones included
    colors = dict(zip(_order(every), plt.get_cmap("tab10").colors))
    order = _order(records)
    key = "compression_rate_conv" if conv_only else "compression_rate"
    # the axis shows TDLRT and dense; runs further down are drawn as ▼ on the lower edge
    band = [
        (a.mean() - _std(a), a.mean() + _std(a))
        for a in (
            100 * np.array([r["test_accuracy"] for r in records if r["label"] == label])
            for label in order
            if label == "dense" or label.startswith("TDLRT")
        )
    ]
    lo = min(b[0] for b in band) - 3.0 if band else 0.0
    hi = max(b[1] for b in band) + 1.0 if band else 100.0
    edge = lo + 0.02 * (hi - lo)
    fig, ax = plt.subplots(figsize=(9.0, 4.0), dpi=100)
    for label in _order(every):
        failed = sum(r["label"] == label and r.get("test_accuracy") is None for r in every)
        rows = [r for r in records if r["label"] == label]
        notes = [f"{failed} diverged"] if failed else []
        if not rows:
            ax.plot([], [], "x", color=colors[label], label=f"{label} ({', '.join(notes)})")
            continue
        cr = 100 * np.array([r[key] for r in rows])
        acc = 100 * np.array([r["test_accuracy"] for r in rows])
        if label == "dense":
            # the dense network has no compression: a band (mean ± std) across the plot
            ax.axhline(acc.mean(), color=colors[label], label=f"dense ({len(rows)} seeds)")
            ax.axhspan(
                acc.mean() - _std(acc), acc.mean() + _std(acc), color=colors[label], alpha=0.15
            )
            continue
        low = acc < lo
        if low.any():
            notes.append(f"{int(low.sum())} below the axis")
            ax.scatter(cr[low], np.full(int(low.sum()), edge), marker="v", color=colors[label])
        ax.scatter(cr[~low], acc[~low], s=12, alpha=0.35, color=colors[label])
        legend = f"{label} ({', '.join(notes)})" if notes else label
        if acc.mean() < lo:  # the mean itself is off the axis: its marker on the edge
            ax.scatter([cr.mean()], [edge], marker="v", s=60, color=colors[label], label=legend)
            continue
        ax.errorbar(
            cr.mean(),
            acc.mean(),
            xerr=_std(cr),
            yerr=_std(acc),
            fmt="o",
            capsize=3,
            color=colors[label],
            label=legend,
        )
    ax.set_ylim(lo, hi)
    # the TDLRT frontier: the means of its τ values, joined in order of compression
    means = sorted(
        (
            float(np.mean([100 * r[key] for r in records if r["label"] == label])),
            float(np.mean([100 * r["test_accuracy"] for r in records if r["label"] == label])),
        )
        for label in order
        if label.startswith("TDLRT")
    )
    if len(means) > 1:
        ax.plot(*zip(*means), color="0.5", lw=0.8, zorder=0)
    ax.set_xlabel(
        "compression rate, convolutions only (%)"
        if conv_only
        else "compression rate, all Conv/Linear layers (%)"
    )
    ax.set_ylabel("test accuracy (%)")
    seeds = len({r["seed"] for r in records})
    ax.set_title(
        f"{title or 'LeNet5 on mnist5k'}, {epochs} epochs: test accuracy, "
        f"mean ± std over {seeds} seeds (▼: below the axis)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(os.path.join(folder, f"{prefix}_accuracy_compression.png"))
    plt.close(fig)

    present = order
    fig, ax = plt.subplots(figsize=(max(7.5, 0.9 * len(present)), 3.6), dpi=100)
    data = [[100 * r["test_accuracy"] for r in records if r["label"] == lb] for lb in present]
    ax.boxplot(data, whis=(0, 100))
    ax.set_xticks(range(1, len(present) + 1))
    ax.set_xticklabels([textwrap.fill(lb, 14) for lb in present], fontsize=7)
    for k, values in enumerate(data, start=1):
        ax.scatter([k] * len(values), values, s=10, color="k", alpha=0.5, zorder=3)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        f"{epochs} epochs: spread over initializations (box: min, quartiles, max)", fontsize=9
    )
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(os.path.join(folder, f"{prefix}_spread.png"))
    plt.close(fig)


# ----------------------------------------------------------------------------- studies
#
# A study is a grid of (data, arm, τ, seed) runs of ``tuckerflow train`` with the CLI
# defaults (lr 0.05, momentum 0.9, batch 64, rank 32, 5 epochs, all layers but the
# classifier factorized) unless the arm says otherwise; each run is one JSON file in
# OUT/runs, so an interrupted study continues and studies sharing OUT share runs.

#: TDLRT option sets compared by the ablation (``None``: the TrainConfig default).
ARMS = {
    # the arms measured before ``--freeze-after auto`` and the removal budget became defaults
    # keep them off, so that they mean what they meant when they were measured
    "dense": {"method": "dense"},
    "published": {
        "method": "tdlrt",
        "update_every": 1,
        "defer_truncation": False,
        "truncation_guard": False,
        "freeze_after": None,
    },
    "guard only": {
        "method": "tdlrt",
        "update_every": 1,
        "truncation_guard": True,
        "truncation_budget": False,
        "freeze_after": None,
    },
    "auto interval": {
        "method": "tdlrt",
        "update_every": "auto",
        "defer_truncation": False,
        "truncation_guard": False,
        "freeze_after": None,
    },
    "auto + defer": {
        "method": "tdlrt",
        "update_every": "auto",
        "defer_truncation": True,
        "truncation_guard": False,
        "freeze_after": None,
    },
    # auto + defer + guard
    "defaults": {"method": "tdlrt", "truncation_budget": False, "freeze_after": None},
    "defaults + freeze": {"method": "tdlrt", "freeze_after": "auto", "truncation_budget": False},
    "defaults + rate limit": {
        "method": "tdlrt",
        "limit_truncation_rate": True,
        "freeze_after": None,
    },
    # the CLI defaults with TDLRT's small-weight tolerance (goal 3's saddle)
    "defaults + freeze + budget + small-weight": {
        "method": "tdlrt",
        "freeze_after": "auto",
        "truncation_budget": True,
        "small_weight_tolerance": True,
    },
    # TDLRT's constructor defaults since the removal budget became one (no freeze)
    "defaults + budget": {"method": "tdlrt", "truncation_budget": True, "freeze_after": None},
    # the CLI defaults since the removal budget became a default
    "defaults + freeze + budget": {
        "method": "tdlrt",
        "freeze_after": "auto",
        "truncation_budget": True,
    },
}

STUDIES = {
    "ablation": {
        "data": ["mnist5k"],
        "arms": ["published", "guard only", "auto interval", "auto + defer", "defaults"],
        # ``--arms`` selects a subset; the runs are shared with the other studies
        "taus": [0.1, 0.2, 0.3],
    },
    "goal1": {"data": ["mnist5k", "digits"], "arms": ["defaults"], "taus": [0.1, 0.2, 0.3]},
    "freeze": {"data": ["mnist5k"], "arms": ["defaults + freeze"], "taus": [0.1, 0.2, 0.3]},
}


def _study_key(data, arm, tau, seed, extra=""):
    tau_part = "" if arm == "dense" else f"-tau{tau}"
    return _slug(f"{data}-{arm}{tau_part}{extra}-seed{seed}")


#: Options added to every TDLRT run of the init and saddle studies
#: (``--small-weight-tolerance``); set in the main process before the workers start.
TDLRT_EXTRA = {}


def run_study_job(job, folder, epochs):
    """One run of a study; returns its record (read from ``folder`` when done already)."""
    from tuckerflow.train import TrainConfig, TrainingDiverged, train

    data, arm, tau, seed, options = job
    if options.get("method") == "tdlrt" and TDLRT_EXTRA:
        options = {**options, **TDLRT_EXTRA, "_tag": options.get("_tag", "") + "-swt"}
    key = _study_key(data, arm, tau, seed, options.get("_tag", ""))
    path = os.path.join(folder, key + ".json")
    if os.path.exists(path):
        with open(path) as handle:
            return json.load(handle)
    options = {k: v for k, v in {**ARMS.get(arm, {}), **options}.items() if k != "_tag"}
    # the dense network's weights scaled as TDLRT's cores are by init_scale (goal 3)
    weight_scale = options.pop("_weight_scale", None)
    transform = None
    if weight_scale is not None:
        from experiments_init_dense import scaled

        transform = scaled(weight_scale)
    base = {"quiet": True, "device": "cpu", "threads": 1, "epochs": epochs}
    if tau is not None:
        options["tau"] = tau
    config = TrainConfig(**base, data=data, seed=seed, **options)
    try:
        summary = train(config, transform=transform)
    except TrainingDiverged as err:  # a result too: recorded, left out of the means
        record = {"label": arm, "method": config.method, "seed": seed, "tau": tau}
        record.update({"data": data, "diverged": str(err), "test_accuracy": None, "ranks": {}})
        record["tucker_layers"] = []
        with open(path + ".tmp", "w") as handle:
            json.dump(record, handle)
        os.replace(path + ".tmp", path)
        return record
    record = _record(arm, config.method, seed, summary, {"tau": tau, "data": data})
    record["options"] = {k: v for k, v in options.items() if k != "ranks"}
    record["tdlrt_ranks_from"] = options.get("_from")
    with open(path + ".tmp", "w") as handle:
        json.dump(record, handle)
    os.replace(path + ".tmp", path)
    return record


def study_jobs(study, seeds, *, first_seed=0, arms=None, taus=None, data_sets=None):
    spec = dict(STUDIES[study])
    spec.update({k: v for k, v in (("arms", arms), ("taus", taus), ("data", data_sets)) if v})
    jobs = []
    for seed in range(first_seed, first_seed + seeds):
        for data in spec["data"]:
            jobs.append((data, "dense", None, seed, {}))
            for tau in spec["taus"]:
                for arm in spec["arms"]:
                    jobs.append((data, arm, tau, seed, {}))
    return jobs


def study_table(records, dense_by_seed):
    """Markdown table per (data, arm, τ): accuracy, gap to dense of the same seed, collapses."""
    import numpy as np

    groups = {}
    for r in records:
        groups.setdefault((r["data"], r["label"], r.get("tau")), []).append(r)
    lines = [
        "| data | arm | τ | runs | test accuracy (%) mean ± std | min | worst gap to dense "
        "(points) | runs > 3 below dense | compression (%) | runs with a layer at output rank 1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def order(key):
        data, arm, tau = key
        arms = list(ARMS)
        return (data, -1 if arm == "dense" else 0, tau or 0, arms.index(arm) if arm in arms else 99)

    for key in sorted(groups, key=order):
        data, arm, tau = key
        rows = groups[key]
        # a diverged run (no accuracy) counts as a run far below dense
        done = [r for r in rows if r.get("test_accuracy") is not None]
        acc = 100 * np.array([r["test_accuracy"] for r in done])
        cr = 100 * np.array([r["compression_rate"] for r in done])
        gaps = [
            math.inf
            if r.get("test_accuracy") is None
            else 100 * (dense_by_seed[(data, r["seed"])] - r["test_accuracy"])
            for r in rows
            if (data, r["seed"]) in dense_by_seed
        ]
        worst = f"{max(gaps):.2f}" if gaps and arm != "dense" else "–"
        # accuracies are multiples of 1/test size: a gap of exactly 3 points is not above 3
        bad = sum(g > 3 + 1e-9 for g in gaps) if arm != "dense" else "–"
        # collapse: a Tucker layer left with a single output channel / feature
        ones = sum(
            any(v[0] == 1 for k, v in r["ranks"].items() if k in r["tucker_layers"]) for r in rows
        )
        lines.append(
            f"| {data} | {arm} | {'–' if tau is None else tau} | {len(rows)} | "
            f"{acc.mean():.2f} ± {_std(acc):.2f} | {acc.min():.2f} | {worst} | {bad} | "
            f"{cr.mean():.1f} | {ones if arm != 'dense' else '–'} |"
        )
    return "\n".join(lines)


INIT_SCALES = (0.01, 0.1, 1.0, 10.0)


def run_init_pair(job, folder, epochs):
    """Goal 3: TDLRT at one initial core scale, then the same Tucker layers (same seed and
    scale) trained directly at the ranks that TDLRT run ended with."""
    data, scale, seed, tau, factorize = job
    tag = f"-scale{scale}-{factorize}"
    tdlrt = run_study_job(
        (
            data,
            "TDLRT",
            tau,
            seed,
            {"method": "tdlrt", "init_scale": scale, "factorize": factorize, "_tag": tag},
        ),
        folder,
        epochs,
    )
    if tdlrt.get("diverged"):
        tdlrt.update(init_scale=scale, factorize=factorize)
        return [tdlrt]
    ranks = {k: v for k, v in tdlrt["ranks"].items() if k in tdlrt["tucker_layers"]}
    direct = run_study_job(
        (
            data,
            "direct",
            tau,
            seed,
            {
                "method": "tucker-fixed",
                "init_scale": scale,
                "factorize": factorize,
                "ranks": ranks,
                "_tag": tag,
            },
        ),
        folder,
        epochs,
    )
    for record in (tdlrt, direct):
        record["init_scale"] = scale
        record["factorize"] = factorize
    return [tdlrt, direct]


def init_table(records):
    """Goal 3: per method and setting, spread of test accuracy over seeds × scales."""
    import numpy as np

    lines = [
        "| setting | method | init scale | runs | test accuracy (%) mean ± std | min – max | "
        "diverged |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["factorize"], r["label"]) for r in records})
    for factorize, label in keys:
        rows = [r for r in records if (r["factorize"], r["label"]) == (factorize, label)]
        for scale in [*INIT_SCALES, "all"]:
            sel = rows if scale == "all" else [r for r in rows if r["init_scale"] == scale]
            if not sel:
                continue
            failed = sum(r.get("diverged") is not None for r in sel)
            acc = 100 * np.array([r["test_accuracy"] for r in sel if not r.get("diverged")])
            if not len(acc):
                lines.append(f"| {factorize} | {label} | {scale} | {len(sel)} | – | – | {failed} |")
                continue
            lines.append(
                f"| {factorize} | {label} | {scale} | {len(sel)} | {acc.mean():.2f} ± "
                f"{_std(acc):.2f} | {acc.min():.2f} – {acc.max():.2f} | {failed} |"
            )
    return "\n".join(lines)


def _write_study(out, name, meta, records, text):
    """``OUT/NAME.json`` (meta and runs) and ``OUT/NAME.md`` (the table); both printed."""
    with open(os.path.join(out, f"{name}.json"), "w") as handle:
        json.dump({"meta": meta, "runs": records}, handle, indent=1)
    with open(os.path.join(out, f"{name}.md"), "w") as handle:
        handle.write(text + "\n")
    print(text)
    print(json.dumps(meta))


def run_init_study(
    out, seeds, epochs, workers, *, tau=0.2, settings=("all-but-last",), data_sets=("mnist5k",)
):
    folder = os.path.join(out, "runs")
    os.makedirs(folder, exist_ok=True)
    jobs = [
        (data, scale, seed, tau, factorize)
        for data in data_sets
        for seed in range(seeds)
        for factorize in settings
        for scale in INIT_SCALES
    ]
    tick = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_init_pair, job, folder, epochs) for job in jobs]
        records = [r for f in futures for r in f.result()]
    meta = {"study": "init", "seeds": seeds, "epochs": epochs, "tau": tau, "jobs": len(jobs)}
    meta["tdlrt_extra"] = dict(TDLRT_EXTRA)
    meta["data"] = list(data_sets)
    meta["wall_s"] = time.perf_counter() - tick
    text = init_table(records)
    _write_study(out, "init", meta, records, text)
    return records


#: Initial scales of the saddle study (those at which TDLRT trained later than dense).
SADDLE_SCALES = (0.01, 0.1)


def _escape_epoch(curve, level=0.5):
    """First epoch whose validation accuracy exceeds ``level`` (None: not within the run)."""
    return next((k for k, a in enumerate(curve) if a > level), None)


def run_saddle_study(out, seeds, epochs, workers, *, taus, data_sets=("mnist5k",)):
    """Goal 3's saddle: from small initial scales, when TDLRT (CLI defaults) leaves chance
    level against τ, next to the dense network from the same scale (its weights scaled as
    the cores are)."""
    folder = os.path.join(out, "runs")
    os.makedirs(folder, exist_ok=True)
    jobs = []
    for data in data_sets:
        for scale in SADDLE_SCALES:
            for seed in range(seeds):
                tag = f"-scale{scale}"
                jobs.append((data, "dense", None, seed, {"_weight_scale": scale, "_tag": tag}))
                for tau in taus:
                    jobs.append(
                        (
                            data,
                            "TDLRT",
                            tau,
                            seed,
                            {"method": "tdlrt", "init_scale": scale, "_tag": tag},
                        )
                    )
    tick = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_study_job, job, folder, epochs) for job in jobs]
        records = [f.result() for f in futures]
    for job, record in zip(jobs, records):
        record["init_scale"] = float(job[4]["_tag"][len("-scale") :])
    meta = {
        "study": "saddle",
        "seeds": seeds,
        "epochs": epochs,
        "taus": list(taus),
        "jobs": len(jobs),
        "data": list(data_sets),
        "wall_s": time.perf_counter() - tick,
        "tdlrt_extra": dict(TDLRT_EXTRA),
    }
    text = saddle_table(records)
    _write_study(out, "saddle", meta, records, text)
    return records


def _shown(epoch):
    return "–" if epoch is None else str(epoch)


def saddle_table(records):
    """Per data set, scale and method: test accuracy, the epoch that leaves chance level."""
    import numpy as np

    lines = [
        "| data | init scale | method | τ | runs | test accuracy (%) mean ± std | "
        "first epoch above 50 % validation, per seed | final ranks (median of seeds) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted(
        {(r["data"], r["init_scale"], r["label"], r.get("tau") or 0.0) for r in records},
        key=lambda k: (k[0], k[1], k[2] != "dense", k[3]),
    )
    for data, scale, label, tau in keys:
        sel = [
            r
            for r in records
            if (r["data"], r["init_scale"], r["label"], r.get("tau") or 0.0)
            == (data, scale, label, tau)
        ]
        sel.sort(key=lambda r: r["seed"])
        ok = [r for r in sel if not r.get("diverged")]
        acc = 100 * np.array([r["test_accuracy"] for r in ok])
        spread = f"{acc.mean():.2f} ± {_std(acc):.2f}" if len(acc) else "–"
        escapes = ", ".join(
            "div." if r.get("diverged") else _shown(_escape_epoch(r["val_curve"])) for r in sel
        )
        ranks = "–"
        if label != "dense" and ok:
            layers = [n for n in ok[0]["tucker_layers"]]
            ranks = "; ".join(
                f"{n} "
                + "×".join(
                    str(int(np.median([r["ranks"][n][k] for r in ok])))
                    for k in range(len(ok[0]["ranks"][n]))
                )
                for n in layers
            )
        shown_tau = "–" if label == "dense" else f"{tau:g}"
        lines.append(
            f"| {data} | {scale:g} | {label} | {shown_tau} | {len(sel)} | {spread} | {escapes} "
            f"| {ranks} |"
        )
    return "\n".join(lines)


def run_study(study, out, seeds, epochs, workers, *, cached_only=False, **selection):
    folder = os.path.join(out, "runs")
    os.makedirs(folder, exist_ok=True)
    jobs = study_jobs(study, seeds, **selection)
    if cached_only:  # tables from the runs already there
        jobs = [
            j for j in jobs if os.path.exists(os.path.join(folder, _study_key(*j[:4]) + ".json"))
        ]
    tick = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_study_job, job, folder, epochs) for job in jobs]
        records = [f.result() for f in futures]
    wall = time.perf_counter() - tick
    dense = {(r["data"], r["seed"]): r["test_accuracy"] for r in records if r["label"] == "dense"}
    text = study_table(records, dense)
    meta = {"study": study, "seeds": seeds, "epochs": epochs, "wall_s": wall, "jobs": len(jobs)}
    if cached_only:
        meta["cached_only"] = True
    _write_study(out, study, meta, records, text)
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/experiments")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--taus", type=float, nargs="+", default=list(TAUS))
    parser.add_argument(
        "--baselines",
        nargs="*",
        default=["dense", "direct", "tltorch"],
        choices=sorted(BASELINES),
        help="dense direct tltorch matrix",
    )
    parser.add_argument(
        "--settings",
        default="common",
        choices=("common", "cli"),
        help="common: the settings of the earlier tables (COMMON); cli: tuckerflow train's "
        "defaults",
    )
    parser.add_argument("--model", default="lenet5", help="lenet5 or vgg_small")
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the baseline transforms on lenet5 and vgg_small (no training) and exit",
    )
    parser.add_argument(
        "--factorize",
        default="all-but-last",
        choices=("all-but-last", "all", "conv"),
        help="which layers are factorized (conv: convolutions only, the paper's setting)",
    )
    parser.add_argument(
        "--reference-tau",
        type=float,
        default=REFERENCE_TAU,
        help="TDLRT run whose final ranks the fixed-rank baselines reuse",
    )
    parser.add_argument(
        "--figure-prefix", default="experiments", help="figures: PREFIX_accuracy_compression.png …"
    )
    parser.add_argument(
        "--study",
        choices=[*sorted(STUDIES), "init", "saddle"],
        help="run a study grid with the CLI defaults instead (see STUDIES)",
    )
    parser.add_argument(
        "--published",
        action="store_true",
        help="TDLRT in the published form (update_every=1, no deferral, no guard)",
    )
    parser.add_argument(
        "--first-seed", type=int, default=0, help="first seed (studies and the frontier)"
    )
    parser.add_argument(
        "--baseline-lr",
        type=float,
        help="learning rate of the fixed-rank baselines (default: the settings' own)",
    )
    parser.add_argument(
        "--scheduler",
        help="learning-rate schedule of every run (tuckerflow train --scheduler; default: "
        "the settings' own)",
    )
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), help="studies: arms")
    parser.add_argument(
        "--small-weight-tolerance",
        action="store_true",
        help="init and saddle studies: TDLRT runs with --small-weight-tolerance",
    )
    parser.add_argument(
        "--data", nargs="+", help="studies: data sets; otherwise one data set (mnist5k)"
    )
    args = parser.parse_args(argv)
    if args.small_weight_tolerance:
        TDLRT_EXTRA["small_weight_tolerance"] = True
    if args.check:
        check_transforms()
        return
    if args.study == "init":
        run_init_study(
            args.out,
            args.seeds,
            args.epochs,
            args.workers,
            tau=args.reference_tau,
            settings=[args.factorize],
            data_sets=args.data or ["mnist5k"],
        )
        return
    if args.study == "saddle":
        run_saddle_study(
            args.out,
            args.seeds,
            args.epochs,
            args.workers,
            taus=args.taus,
            data_sets=args.data or ["mnist5k"],
        )
        return
    if args.study:
        run_study(
            args.study,
            args.out,
            args.seeds,
            args.epochs,
            args.workers,
            first_seed=args.first_seed,
            arms=args.arms,
            taus=args.taus if args.taus != list(TAUS) else None,
            data_sets=args.data,
            cached_only=args.plot_only,
        )
        return
    if args.data and len(args.data) != 1:
        parser.error("--data: give one data set (several are for --study)")
    data = args.data[0] if args.data else "mnist5k"
    folder = os.path.join(args.out, "runs")
    os.makedirs(folder, exist_ok=True)
    results = os.path.join(args.out, "results.json")
    if not args.plot_only:
        tick = time.perf_counter()
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            jobs = [
                pool.submit(
                    run_seed,
                    seed,
                    args.epochs,
                    folder,
                    args.taus,
                    args.baselines,
                    args.factorize,
                    args.reference_tau,
                    args.published,
                    args.settings,
                    args.model,
                    data,
                    args.baseline_lr,
                    args.scheduler,
                )
                for seed in range(args.first_seed, args.first_seed + args.seeds)
            ]
            for job in jobs:
                job.result()
                print(f"seed done, {time.perf_counter() - tick:.0f} s", flush=True)
        meta = {"epochs": args.epochs, "seeds": args.seeds, "wall_s": time.perf_counter() - tick}
        meta["workers"] = args.workers
        meta["baseline_lr"] = args.baseline_lr
        meta["scheduler"] = args.scheduler
    else:
        meta = {"epochs": args.epochs, "seeds": args.seeds, "plot_only": True}
        if os.path.exists(results):
            with open(results) as handle:
                meta = json.load(handle).get("meta", meta)
    records = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as handle:
                records.append(json.load(handle))
    common = base_settings(args.settings, model=args.model, data=data, factorize=args.factorize)
    common["settings"] = args.settings
    payload = {"meta": meta, "common": common, "runs": records}
    with open(results, "w") as handle:
        json.dump(payload, handle, indent=1)
    records = payload["runs"]
    text = table(records) + "\n\n" + versus(records, args.reference_tau)
    with open(os.path.join(args.out, "table.md"), "w") as handle:
        handle.write(text + "\n")
    print(text)
    print(json.dumps(payload.get("meta", {})))
    names = {"lenet5": "LeNet5", "vgg_small": "vgg_small"}
    title = f"{names.get(args.model, args.model)} on {data}"
    plot(
        records,
        FIGURES,
        args.figure_prefix,
        args.epochs,
        conv_only=args.factorize == "conv",
        title=title,
    )


if __name__ == "__main__":
    main()
