"""Gap to dense against whole-model compression for every knob measured on the second CPU.

Reads the run summaries of ``docs/results/goal1_rerun/`` (LeNet5 on mnist5k, 5 epochs, 10
seeds per point; the gap of each run is taken against the dense run of its seed, from
``goal1.json``: dense without weight decay), prints one table row per configuration and
writes ``docs/figures/experiments_knobs_second_cpu.png``: the mean gap (with its standard
error) against the mean whole-model compression, one marker per knob.

Usage (from the repository root)::

    python docs/scripts/experiments_knobs_figure.py
"""

import glob
import json
import os
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(__file__)
RESULTS = os.path.join(HERE, "..", "results", "goal1_rerun")
FIGURE = os.path.join(HERE, "..", "figures", "experiments_knobs_second_cpu.png")
ARM = "defaults + freeze + budget"


def _summaries(folder, prefix):
    """The run summaries ``folder/prefix_s<seed>.json`` as a list of dicts."""
    return [
        json.load(open(path))
        for path in sorted(glob.glob(os.path.join(RESULTS, folder, f"{prefix}_s*.json")))
    ]


def _points():
    """(knob, label, runs) for every configuration, runs as (seed, accuracy, compression)."""
    runs = json.load(open(os.path.join(RESULTS, "goal1.json")))["runs"]
    runs += json.load(open(os.path.join(RESULTS, "goal2_taus", "goal1.json")))["runs"]
    points = []
    for tau in (0.1, 0.12, 0.15, 0.2, 0.3):
        chosen = [
            r for r in runs if r["label"] == ARM and r["data"] == "mnist5k" and r["tau"] == tau
        ]
        points.append(("τ (rank 32)", f"τ {tau}", chosen))
    for rank in (16, 64):
        points.append(
            ("initial rank (τ 0.2)", f"rank {rank}", _summaries("initial_rank", f"r{rank}"))
        )
    for rank in (64, 128):
        for tau in (0.3, 0.4):
            points.append(
                (
                    "initial rank × τ",
                    f"rank {rank}, τ {tau}",
                    _summaries("initial_rank_tau", f"r{rank}_t{tau}"),
                )
            )
    for every in (3, 5, 20):
        points.append(
            ("update interval (τ 0.2)", f"every {every}", _summaries("dynamics", f"ue{every}"))
        )
    for lr in (0.08, 0.1):
        points.append(("learning rate (τ 0.2)", f"lr {lr}", _summaries("dynamics", f"lr{lr}")))
    for after in (2, 3):
        points.append(
            ("freeze after (τ 0.2)", f"freeze {after}", _summaries("freeze", f"fa{after}"))
        )
    for tau, decay in (
        (0.1, "1e-3"),
        (0.1, "5e-3"),
        (0.1, "1e-2"),
        (0.25, "1e-3"),
        (0.25, "5e-3"),
        (0.3, "1e-3"),
        (0.3, "5e-3"),
        (0.4, "5e-3"),
    ):
        prefix = f"wd{decay}" if tau == 0.1 else f"t{tau}_wd{decay}"
        points.append(("weight decay", f"τ {tau}, wd {decay}", _summaries("weight_decay", prefix)))
    points.append(
        ("weight decay", "rank 64, τ 0.1, wd 5e-3", _summaries("weight_decay", "r64_wd5e-3"))
    )
    return points


def main():
    runs = json.load(open(os.path.join(RESULTS, "goal1.json")))["runs"]
    dense = {
        r["seed"]: r["test_accuracy"]
        for r in runs
        if r["label"] == "dense" and r["data"] == "mnist5k"
    }
    rows = []
    for knob, label, chosen in _points():
        if not chosen:
            continue
        gaps = [100 * (dense[r["seed"]] - r["test_accuracy"]) for r in chosen]
        rates = [100 * r.get("compression_rate_model", r["compression_rate"]) for r in chosen]
        sem = statistics.stdev(gaps) / len(gaps) ** 0.5 if len(gaps) > 1 else 0.0
        rows.append(
            (knob, label, len(gaps), statistics.mean(rates), statistics.mean(gaps), sem, max(gaps))
        )
    print("| knob | configuration | runs | compression (%) | mean gap (points) | s.e. | worst |")
    print("|---|---|---|---|---|---|---|")
    for knob, label, n, rate, gap, sem, worst in rows:
        print(f"| {knob} | {label} | {n} | {rate:.1f} | {gap:.2f} | {sem:.2f} | {worst:.1f} |")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = iter("osD^vPX*h")
    for knob in dict.fromkeys(row[0] for row in rows):
        chosen = [row for row in rows if row[0] == knob and row[1] != "lr 0.1"]
        if not chosen:
            continue
        ax.errorbar(
            [row[3] for row in chosen],
            [row[4] for row in chosen],
            yerr=[row[5] for row in chosen],
            fmt=next(markers),
            capsize=3,
            label=knob,
        )
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.axvline(90.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("whole-model compression (%)")
    ax.set_ylabel("mean gap to dense (points)")
    ax.set_title("LeNet5, mnist5k, 5 epochs, 10 seeds per point (lr 0.1 left out)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=120)
    print(f"wrote {os.path.normpath(FIGURE)}")


if __name__ == "__main__":
    main()
