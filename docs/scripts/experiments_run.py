"""LeNet5 on mnist5k: dense, TDLRT at three tolerances, directly trained Tucker factors and
tensorly-torch ``FactorizedConv`` at the ranks TDLRT found; several initializations each.

Usage (from the repository root)::

    python docs/scripts/experiments_run.py --out runs/experiments            # run + figures
    python docs/scripts/experiments_run.py --out runs/experiments --plot-only

Writes ``OUT/results.json`` (one record per run), ``OUT/table.md`` and the figures
``docs/figures/experiments_accuracy_compression.png`` and ``docs/figures/experiments_spread.png``.
The held-out split is the same for every run (``split_seed=0``); the seed changes the
initialization and the batch order only.

Studies (``--study``) run grids with the CLI defaults of ``tuckerflow train`` instead, one JSON
file per run in ``OUT/runs`` (reused when present), and write ``OUT/STUDY.json`` and
``OUT/STUDY.md``::

    python docs/scripts/experiments_run.py --study ablation --out runs/study --seeds 3 --epochs 5
    python docs/scripts/experiments_run.py --study goal1 --out runs/study --seeds 10 --epochs 5
    python docs/scripts/experiments_run.py --study init --out runs/study --seeds 2 --epochs 5
"""

from __future__ import annotations

import argparse
import json
import math
import os
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


def tltorch_transform(ranks):
    """Replace conv1/conv2 by tensorly-torch Tucker ``FactorizedConv`` and fc1 by ``B A``."""

    def tensorly_torch_factorized(model):
        import tltorch
        import torch
        from torch import nn

        for name in ("conv1", "conv2"):
            conv = getattr(model, name)
            layer = tltorch.FactorizedConv.from_conv(
                conv,
                rank=tuple(ranks[name]),
                factorization="tucker",
                implementation="factorized",
                decompose_weights=False,
            )
            fan_in = conv.in_channels * math.prod(conv.kernel_size)
            layer.weight.normal_(0.0, _std_like_pytorch(fan_in))
            with torch.no_grad():
                layer.bias.copy_(conv.bias)
            setattr(model, name, layer)
        if "fc1" not in ranks:  # convolutions only
            return model
        fc = model.fc1
        r = int(ranks["fc1"][0])
        low_rank = nn.Sequential(
            nn.Linear(fc.in_features, r, bias=False), nn.Linear(r, fc.out_features)
        )
        with torch.no_grad():
            # product B A with the entry variance of PyTorch's default init of fc
            target = _std_like_pytorch(fc.in_features)
            scale = math.sqrt(target / math.sqrt(r))
            low_rank[0].weight.normal_(0.0, scale)
            low_rank[1].weight.normal_(0.0, scale)
            low_rank[1].bias.copy_(fc.bias)
        model.fc1 = low_rank
        return model

    return tensorly_torch_factorized


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


def run_seed(
    seed,
    epochs,
    folder,
    taus=TAUS,
    baselines=("dense", "direct", "tltorch"),
    factorize="all-but-last",
    reference_tau=REFERENCE_TAU,
    published=False,
):
    """All runs of one initialization seed (TDLRT first: the baselines reuse its ranks).

    Each finished run is written to ``folder/seed{seed}-{label}.json`` at once; runs found
    there already are not repeated, so an interrupted experiment continues where it stopped.
    """
    from tuckerflow.train import TrainConfig, train

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

    records = []
    reference = None
    common = {**COMMON, "factorize": factorize}
    for tau in sorted(set(taus) | {reference_tau}):
        label = f"TDLRT τ={tau}"
        record = done(label)
        if record is None:
            options = PUBLISHED if published else {}
            config = TrainConfig(
                **common, **options, method="tdlrt", tau=tau, epochs=epochs, seed=seed
            )
            summary = train(config)
            record = keep(_record(label, "tdlrt", seed, summary, {"tau": tau}))
        records.append(record)
        if tau == reference_tau:
            reference = {k: v for k, v in record["ranks"].items() if k in record["tucker_layers"]}
    runs = {
        "dense": ("dense", "dense", {}, None),
        "direct": ("Tucker factors (direct)", "tucker-fixed", {"ranks": reference}, None),
        "tltorch": (
            "tensorly-torch FactorizedConv",
            "dense",
            {},
            tltorch_transform(reference),
        ),
    }
    for label, method, options, transform in (runs[name] for name in baselines):
        record = done(label)
        if record is None:
            config = TrainConfig(**common, method=method, epochs=epochs, seed=seed, **options)
            summary = train(config, transform=transform)
            kind = "tltorch" if transform is not None else method
            record = keep(_record(label, kind, seed, summary))
        records.append(record)
    return records


BASELINE_LABELS = ["Tucker factors (direct)", "tensorly-torch FactorizedConv"]


def _order(records):
    """Labels present in ``records``: dense, TDLRT by increasing τ, then the baselines."""
    present = {r["label"] for r in records}
    taus = sorted({r["tau"] for r in records if r["method"] == "tdlrt"})
    labels = ["dense", *(f"TDLRT τ={t}" for t in taus), *BASELINE_LABELS]
    return [label for label in labels if label in present]


def table(records):
    """Markdown table: mean, std, min and max of test accuracy, compression, time."""
    import numpy as np

    lines = [
        "| method | runs | test accuracy (%) mean ± std | min – max | compression (%) | "
        "conv-only c.r. (%) | time per run (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in _order(records):
        rows = [r for r in records if r["label"] == label]
        acc = 100 * np.array([r["test_accuracy"] for r in rows])
        cr = 100 * np.array([r["compression_rate"] for r in rows])
        crc = 100 * np.array([r["compression_rate_conv"] for r in rows])
        t = np.array([r["time_s"] for r in rows])
        lines.append(
            f"| {label} | {len(rows)} | {acc.mean():.2f} ± {_std(acc):.2f} | "
            f"{acc.min():.2f} – {acc.max():.2f} | {cr.mean():.1f} ± {_std(cr):.1f} | "
            f"{crc.mean():.1f} | {t.mean():.0f} |"
        )
    return "\n".join(lines)


def plot(records, folder, prefix="experiments", epochs=None, conv_only=False):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    order = _order(records)
    colors = dict(zip(order, plt.get_cmap("tab10").colors))
    key = "compression_rate_conv" if conv_only else "compression_rate"
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for label in order:
        rows = [r for r in records if r["label"] == label]
        cr = 100 * np.array([r[key] for r in rows])
        acc = 100 * np.array([r["test_accuracy"] for r in rows])
        if label == "dense":
            # the dense network has no compression: a band (mean ± std) across the plot
            ax.axhline(acc.mean(), color=colors[label], label=f"dense ({len(rows)} seeds)")
            ax.axhspan(
                acc.mean() - _std(acc), acc.mean() + _std(acc), color=colors[label], alpha=0.15
            )
            continue
        ax.scatter(cr, acc, s=12, alpha=0.35, color=colors[label])
        ax.errorbar(
            cr.mean(),
            acc.mean(),
            xerr=_std(cr),
            yerr=_std(acc),
            fmt="o",
            capsize=3,
            color=colors[label],
            label=label,
        )
    ax.set_xlabel(
        "compression rate, convolutions only (%)"
        if conv_only
        else "compression rate, all Conv/Linear layers (%)"
    )
    ax.set_ylabel("test accuracy (%)")
    seeds = len({r["seed"] for r in records})
    ax.set_title(
        f"LeNet5 on mnist5k, {epochs} epochs: test accuracy, mean ± std over {seeds} seeds",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(os.path.join(folder, f"{prefix}_accuracy_compression.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=100)
    present = order
    data = [[100 * r["test_accuracy"] for r in records if r["label"] == lb] for lb in present]
    ax.boxplot(data, whis=(0, 100))
    ax.set_xticks(range(1, len(present) + 1))
    ax.set_xticklabels([lb.replace(" ", "\n", 1) for lb in present], fontsize=7)
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


def run_study_job(job, folder, epochs):
    """One run of a study; returns its record (read from ``folder`` when done already)."""
    from tuckerflow.train import TrainConfig, TrainingDiverged, train

    data, arm, tau, seed, options = job
    key = _study_key(data, arm, tau, seed, options.get("_tag", ""))
    path = os.path.join(folder, key + ".json")
    if os.path.exists(path):
        with open(path) as handle:
            return json.load(handle)
    options = {k: v for k, v in {**ARMS.get(arm, {}), **options}.items() if k != "_tag"}
    base = {"quiet": True, "device": "cpu", "threads": 1, "epochs": epochs}
    if tau is not None:
        options["tau"] = tau
    config = TrainConfig(**base, data=data, seed=seed, **options)
    try:
        summary = train(config)
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
    meta["data"] = list(data_sets)
    meta["wall_s"] = time.perf_counter() - tick
    text = init_table(records)
    with open(os.path.join(out, "init.json"), "w") as handle:
        json.dump({"meta": meta, "runs": records}, handle, indent=1)
    with open(os.path.join(out, "init.md"), "w") as handle:
        handle.write(text + "\n")
    print(text)
    print(json.dumps(meta))
    return records


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
    with open(os.path.join(out, f"{study}.json"), "w") as handle:
        json.dump({"meta": meta, "runs": records}, handle, indent=1)
    with open(os.path.join(out, f"{study}.md"), "w") as handle:
        handle.write(text + "\n")
    print(text)
    print(json.dumps(meta))
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
        help="dense direct tltorch",
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
        choices=[*sorted(STUDIES), "init"],
        help="run a study grid with the CLI defaults instead (see STUDIES)",
    )
    parser.add_argument(
        "--published",
        action="store_true",
        help="TDLRT in the published form (update_every=1, no deferral, no guard)",
    )
    parser.add_argument("--first-seed", type=int, default=0, help="studies: seeds from here")
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), help="studies: arms")
    parser.add_argument("--data", nargs="+", help="studies: data sets")
    args = parser.parse_args(argv)
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
                )
                for seed in range(args.seeds)
            ]
            for job in jobs:
                job.result()
                print(f"seed done, {time.perf_counter() - tick:.0f} s", flush=True)
        meta = {"epochs": args.epochs, "seeds": args.seeds, "wall_s": time.perf_counter() - tick}
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
    payload = {"meta": meta, "common": {**COMMON, "factorize": args.factorize}, "runs": records}
    with open(results, "w") as handle:
        json.dump(payload, handle, indent=1)
    records = payload["runs"]
    text = table(records)
    with open(os.path.join(args.out, "table.md"), "w") as handle:
        handle.write(text + "\n")
    print(text)
    print(json.dumps(payload.get("meta", {})))
    plot(records, FIGURES, args.figure_prefix, args.epochs, conv_only=args.factorize == "conv")


if __name__ == "__main__":
    main()
