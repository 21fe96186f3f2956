"""Fine-tuning with adapters: TDLRT Tucker adapters against PEFT LoRA / AdaLoRA, full and head-only.

A network is pretrained densely on the mnist5k digits 0–4, its head replaced by a new one for
the digits 5–9, and fine-tuned on 5–9 by each method on the same modules (every convolution
and every hidden linear layer; the new head is trained in full by every method):

- ``full``: every parameter trained;
- ``head``: the new head only;
- ``lora r``: PEFT LoRA of rank ``r`` (PEFT's default ``lora_alpha=8``);
- ``adalora r``: PEFT AdaLoRA from ``init_r = 1.5 r`` to an average ``target_r = r``
  (its orthogonal regularisation, weight 0.5, added to the loss as PEFT does for its own models);
- ``tdlrt τ``: :func:`tuckerflow.nn.add_adapters` at rank 1, trained by
  :class:`tuckerflow.optim.TDLRT` with truncation tolerance ``τ``;
- ``tdlrt r0=8 τ``: the same from initial rank 8 (ranks then adapt down or up).

With ``--task digits`` the network is pretrained on all ten mnist5k digits instead and
fine-tuned, with a new ten-class head, on the 1797 scikit-learn 8×8 digits upsampled to
28×28 (bilinear) and standardized with the mnist5k pixel statistics: another source of
images of the same classes.

Every method uses Adam (batch 64, no weight decay, no schedule) and takes its learning rate from
a small grid, chosen on the validation images by the mean accuracy of the selection seeds; the
other seeds then run at that rate. Accuracies are on held-out test images after the last epoch.

Usage (from the repository root)::

    python docs/scripts/experiments_adapters.py --model lenet5 --out runs/adapters_lenet5
    python docs/scripts/experiments_adapters.py --model lenet5 --out runs/adapters_lenet5 \
        --report-only
    python docs/scripts/experiments_adapters.py --model lenet5 --task digits \
        --out runs/adapters_lenet5_digits

Writes ``OUT/results.json`` (one record per run, rewritten after every run; copied to
``docs/results/experiments_adapters_<model>[_digits].json``), ``OUT/table.md`` and the figure
``docs/figures/experiments_adapters_<model>[_digits].png``. Runs already in ``results.json`` are not
repeated.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FIGURES = os.path.join(os.path.dirname(__file__), "..", "figures")
RESULTS = os.path.join(os.path.dirname(__file__), "..", "results")

SPLIT = {"val_fraction": 0.2, "test_fraction": 0.3, "seed": 0}
BATCH = 64
PRETRAIN = {"lenet5": {"epochs": 6, "lr": 1e-3}, "vgg_small": {"epochs": 4, "lr": 1e-3}}
LR_GRID = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
LORA_RANKS = (1, 2, 4, 8, 16)
ADALORA_RANKS = (2, 4, 8)
TAUS = (0.05, 0.1, 0.2, 0.3)
TAUS_FROM_8 = (0.1, 0.2, 0.3)
#: the transfer tasks: pretraining classes, fine-tuning classes, the name's suffix, the title
TASKS = {
    "5-9": {"pre_classes": 5, "classes": 5, "suffix": "",
            "title": "pretrained on 0–4, fine-tuned on 5–9", "ylabel": "digits 5–9"},
    "digits": {"pre_classes": 10, "classes": 10, "suffix": "_digits",
               "title": "pretrained on mnist5k, fine-tuned on the 8×8 digits",
               "ylabel": "the 8×8 digits"},
}  # fmt: skip
TASK = "5-9"  # set by --task


# ------------------------------------------------------------------------------------ data


def task():
    """``{"pre": (x, y), "train": ..., "val": ..., "test": ...}`` as torch tensors.

    One stratified split of mnist5k (50 % train, 20 % validation, 30 % test, seed 0). ``pre``
    is the training part's digits 0–4; the fine-tuning parts hold the digits 5–9, relabelled
    0–4. With ``TASK == "digits"``: ``pre`` is the whole training part of mnist5k, and the
    fine-tuning parts are the same split of the 8×8 digits, upsampled to 28×28.
    """
    from tuckerflow.train import load_dataset, split_dataset

    x, y = load_dataset("mnist5k")
    s = split_dataset(x, y, **SPLIT, name="mnist5k")
    if TASK == "digits":
        return _digits_task(s)

    def part(xs, ys, new):
        keep = ys >= 5 if new else ys < 5
        return torch.from_numpy(xs[keep]), torch.from_numpy(ys[keep] - (5 if new else 0))

    return {
        "pre": part(s.x_train, s.y_train, False),
        "pre_val": part(s.x_val, s.y_val, False),
        "train": part(s.x_train, s.y_train, True),
        "val": part(s.x_val, s.y_val, True),
        "test": part(s.x_test, s.y_test, True),
    }


def _digits_task(s):
    """mnist5k's training part for pretraining, the 8×8 digits (upsampled) for fine-tuning."""
    from tuckerflow.train import load_dataset, split_dataset

    xd, yd = load_dataset("digits")
    big = F.interpolate(torch.from_numpy(xd), size=(28, 28), mode="bilinear", align_corners=False)
    # the pixel statistics of the mnist5k images the network was pretrained on
    x_pre = torch.from_numpy(s.x_train)
    big = (big - big.mean()) / big.std() * x_pre.std() + x_pre.mean()
    d = split_dataset(big.numpy(), yd, **SPLIT, name="digits")

    def both(xs, ys):
        return torch.from_numpy(xs), torch.from_numpy(ys)

    return {
        "pre": both(s.x_train, s.y_train),
        "pre_val": both(s.x_val, s.y_val),
        "train": both(d.x_train, d.y_train),
        "val": both(d.x_val, d.y_val),
        "test": both(d.x_test, d.y_test),
    }


@torch.no_grad()
def accuracy(model, x, y):
    model.eval()
    correct = sum(
        int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(500), y.split(500))
    )
    model.train()
    return 100.0 * correct / len(y)


# ---------------------------------------------------------------------------------- models


def build(name):
    from tuckerflow.train import build_model

    return build_model(name, (1, 28, 28), TASKS[TASK]["pre_classes"])


def head_path(name):
    return "fc2" if name == "lenet5" else "classifier.2"


def adapted_paths(model, name):
    """The convolutions and hidden linear layers: every ``Conv2d``/``Linear`` but the head."""
    head = head_path(name)
    return [
        p for p, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and p != head
    ]


def new_head(model, name):
    head = head_path(name)
    parent, _, child = head.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    old = getattr(owner, child)
    setattr(owner, child, nn.Linear(old.in_features, TASKS[TASK]["classes"]))


def pretrained(name, folder):
    """The dense network trained on digits 0–4 (all ten with ``--task digits``; seed 0),
    cached in ``folder``."""
    path = os.path.join(folder, f"pretrained_{name}{TASKS[TASK]['suffix']}.pt")
    model = build(name)
    if os.path.exists(path):
        model.load_state_dict(torch.load(path, weights_only=True))
        return model, json.load(open(path + ".json"))
    data = task()
    torch.manual_seed(0)
    model = build(name)
    opt = torch.optim.Adam(model.parameters(), lr=PRETRAIN[name]["lr"])
    start = time.perf_counter()
    x, y = data["pre"]
    for _ in range(PRETRAIN[name]["epochs"]):
        for b in torch.randperm(len(y)).split(BATCH):
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    info = {
        ("val_accuracy_0_4" if TASK == "5-9" else "val_accuracy_pretraining"): accuracy(
            model, *data["pre_val"]
        ),
        "wall_s": time.perf_counter() - start,
        **PRETRAIN[name],
    }
    torch.save(model.state_dict(), path)
    with open(path + ".json", "w") as handle:
        json.dump(info, handle)
    return model, info


# --------------------------------------------------------------------------------- methods


def methods():
    out = [("full", None), ("head", None)]
    out += [("lora", r) for r in LORA_RANKS]
    out += [("adalora", r) for r in ADALORA_RANKS]
    out += [("tdlrt", tau) for tau in TAUS]
    out += [("tdlrt8", tau) for tau in TAUS_FROM_8]
    return out


def label(method, value):
    if value is None:
        return method
    if method == "tdlrt8":
        return f"tdlrt r0=8 τ={value}"
    return f"{method} τ={value}" if method == "tdlrt" else f"{method} r={value}"


def _is_conv_path(model, path):
    return isinstance(model.get_submodule(path), nn.Conv2d)


def prepare(method, value, base, name, steps):
    """``(model, params, step, extra_loss, count)`` for one method on a copy of ``base``.

    ``count()`` gives the parameters the fine-tuned model keeps on top of the base (after
    training): ``{"trainable": …, "adapter": …, "conv_adapter": …, "ranks": …}``.
    """
    model = copy.deepcopy(base)
    new_head(model, name)
    paths = adapted_paths(model, name)
    conv_paths = {p for p in paths if _is_conv_path(model, p)}
    head = head_path(name)
    head_params = sum(p.numel() for p in model.get_submodule(head).parameters())
    if method in ("full", "head"):
        if method == "head":
            model.requires_grad_(False)
            model.get_submodule(head).requires_grad_(True)
        params = [p for p in model.parameters() if p.requires_grad]
        n = sum(p.numel() for p in params)
        return model, params, None, None, lambda: {"trainable": n, "adapter": 0, "conv_adapter": 0}
    if method in ("tdlrt", "tdlrt8"):
        from tuckerflow.nn import adapter_report, add_adapters

        start = 1 if method == "tdlrt" else 8
        model, _ = add_adapters(model, filter=paths, rank=start, modules_to_save=[head])
        params = [p for p in model.parameters() if p.requires_grad]

        def count_tdlrt():
            rep = adapter_report(model)
            return {
                "trainable": rep.trainable,
                "adapter": rep.adapter_params,
                "conv_adapter": sum(r.trainable_params for r in rep.layers if r.path in conv_paths),
                "ranks": {r.path: list(r.ranks) for r in rep.layers},
            }

        return model, params, ("tdlrt", value), None, count_tdlrt
    from peft import AdaLoraConfig, LoraConfig, get_peft_model

    if method == "lora":
        config = LoraConfig(r=value, target_modules=paths, modules_to_save=[head])
    else:
        config = AdaLoraConfig(
            init_r=math.ceil(1.5 * value),
            target_r=value,
            tinit=steps // 10,
            tfinal=steps // 4,
            deltaT=max(1, steps // 50),
            total_step=steps,
            target_modules=paths,
            modules_to_save=[head],
        )
    peft_model = get_peft_model(model, config)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    trainable_head = head_params

    def lora_layers():
        for path in paths:
            yield path, peft_model.base_model.model.get_submodule(path)

    def count_peft():
        adapter, conv, ranks = 0, 0, {}
        for path, layer in lora_layers():
            if method == "lora":
                a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
                n, r = a.numel() + b.numel(), a.shape[0]
            else:  # AdaLoRA keeps the triplets whose singular value survived the pruning
                a, b = layer.lora_A["default"], layer.lora_B["default"]
                r = int(torch.count_nonzero(layer.lora_E["default"]))
                n = r * (a.shape[1] + b.shape[0] + 1)
            adapter += n
            conv += n if path in conv_paths else 0
            ranks[path] = [r]
        return {
            "trainable": adapter + trainable_head,
            "adapter": adapter,
            "conv_adapter": conv,
            "ranks": ranks,
        }

    extra = None
    if method == "adalora":
        weight = config.orth_reg_weight

        def extra():  # what AdaLoraModel.forward adds to a model output's loss
            reg, num = 0.0, 0
            for n, p in peft_model.named_parameters():
                if ("lora_A" in n or "lora_B" in n) and p.requires_grad:
                    cov = p @ p.T if "lora_A" in n else p.T @ p
                    reg = reg + torch.linalg.matrix_norm(cov - torch.eye(len(cov)))
                    num += 1
            return weight * reg / max(num, 1)

    return peft_model, params, ("adalora", None) if method == "adalora" else None, extra, count_peft


def run(name, base, data, method, value, lr, seed, epochs):
    torch.manual_seed(seed)
    x, y = data["train"]
    steps = epochs * math.ceil(len(y) / BATCH)
    model, params, special, extra, count = prepare(method, value, base, name, steps)
    frozen_before = None
    if method not in ("full",):
        frozen_before = {
            n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad
        }
    opt = torch.optim.Adam(params, lr=lr)
    stepper = opt.step
    if special is not None and special[0] == "tdlrt":
        from tuckerflow.optim import TDLRT

        stepper = TDLRT(model, opt, tau=special[1]).step
    start = time.perf_counter()
    step = 0
    for _ in range(epochs):
        for b in torch.randperm(len(y)).split(BATCH):
            opt.zero_grad()
            loss = F.cross_entropy(model(x[b]), y[b])
            if extra is not None:
                loss = loss + extra()
            loss.backward()
            stepper()
            step += 1
            if special is not None and special[0] == "adalora":
                model.base_model.update_and_allocate(step)
    wall = time.perf_counter() - start
    if frozen_before is not None:  # the frozen weights must not have moved
        for n, p in model.named_parameters():
            if n in frozen_before:
                assert torch.equal(p, frozen_before[n]), n
    return {
        "model": name,
        "method": method,
        "value": value,
        "label": label(method, value),
        "lr": lr,
        "seed": seed,
        "epochs": epochs,
        "val": accuracy(model, *data["val"]),
        "test": accuracy(model, *data["test"]),
        "wall_s": wall,
        **count(),
    }


# ---------------------------------------------------------------------------------- report


def _mean_std(values):
    m = float(np.mean(values))
    return m, float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def chosen(records, selection_seeds):
    """``{label: lr}``: the grid rate with the best mean validation accuracy."""
    best = {}
    for rec in records:
        if rec["seed"] not in selection_seeds:
            continue
        best.setdefault(rec["label"], {}).setdefault(rec["lr"], []).append(rec["val"])
    return {
        lab: max(sorted(by_lr), key=lambda lr: (float(np.mean(by_lr[lr])), -lr))
        for lab, by_lr in best.items()
        if all(len(v) == len(selection_seeds) for v in by_lr.values())
    }


def summary(records, lrs):
    rows = []
    for lab, lr in lrs.items():
        runs = [r for r in records if r["label"] == lab and r["lr"] == lr]
        acc, acc_sd = _mean_std([r["test"] for r in runs])
        rows.append(
            {
                "label": lab,
                "method": runs[0]["method"],
                "value": runs[0]["value"],
                "lr": lr,
                "runs": len(runs),
                "test": acc,
                "test_sd": acc_sd,
                "trainable": float(np.mean([r["trainable"] for r in runs])),
                "adapter": float(np.mean([r["adapter"] for r in runs])),
                "conv_adapter": float(np.mean([r["conv_adapter"] for r in runs])),
                "wall_s": float(np.mean([r["wall_s"] for r in runs])),
                "ranks": runs[0].get("ranks"),
            }
        )
    order = {m: i for i, m in enumerate(("full", "head", "lora", "adalora", "tdlrt", "tdlrt8"))}
    rows.sort(key=lambda r: (order[r["method"]], r["value"] or 0))
    return rows


def goals(rows, margin=0.5):
    """The goal: within ``margin`` points of LoRA's best, fewer parameters than LoRA/AdaLoRA."""
    lora = [r for r in rows if r["method"] == "lora"]
    if not lora:
        return {}
    target = max(r["test"] for r in lora) - margin

    def family(r):  # TDLRT from either initial rank
        return "tdlrt" if r["method"].startswith("tdlrt") else r["method"]

    def cheapest(method, key):
        ok = [r for r in rows if family(r) == method and r["test"] >= target]
        return min(ok, key=lambda r: r[key]) if ok else None

    out = {"lora_best": max(r["test"] for r in lora), "target": target}
    for method in ("lora", "adalora", "tdlrt"):
        for key in ("trainable", "conv_adapter"):
            best = cheapest(method, key)
            out[f"{method}_{key}"] = None if best is None else (best["label"], best[key])
    t, lo, ada = out["tdlrt_trainable"], out["lora_trainable"], out["adalora_trainable"]
    out["fewer_than_lora"] = bool(t and lo and t[1] < lo[1])
    tc, ac = out["tdlrt_conv_adapter"], out["adalora_conv_adapter"]
    # None where AdaLoRA never reaches the target: no AdaLoRA point to compare with
    out["fewer_conv_than_adalora"] = None if ac is None else bool(tc and tc[1] < ac[1])
    lc = out["lora_conv_adapter"]
    out["fewer_conv_than_lora"] = bool(tc and lc and tc[1] < lc[1])
    out["adalora_reaches_target"] = ada is not None
    # the same comparison at AdaLoRA's own level (within margin of AdaLoRA's best)
    ada_rows = [r for r in rows if r["method"] == "adalora"]
    if ada_rows:
        level = max(r["test"] for r in ada_rows) - margin
        out["adalora_best"], out["adalora_level"] = level + margin, level
        for method in ("adalora", "tdlrt", "lora"):
            ok = [r for r in rows if family(r) == method and r["test"] >= level]
            best = min(ok, key=lambda r: r["conv_adapter"]) if ok else None
            out[f"at_adalora_level_{method}_conv"] = (
                None if best is None else (best["label"], best["conv_adapter"])
            )
    return out


def table(rows):
    lines = [
        "| method | lr | runs | test accuracy (%) | trainable params | in adapters | "
        "in conv adapters | s per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['lr']:g} | {r['runs']} | {r['test']:.2f} ± {r['test_sd']:.2f} | "
            f"{r['trainable']:,.0f} | {r['adapter']:,.0f} | {r['conv_adapter']:,.0f} | "
            f"{r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def plot(rows, name, path, before=()):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=90)
    styles = {
        "full": ("k", "s"),
        "head": ("0.5", "v"),
        "lora": ("tab:blue", "o"),
        "adalora": ("tab:orange", "D"),
        "tdlrt": ("tab:red", "^"),
        "tdlrt8": ("tab:purple", "v"),
    }
    for method, (color, marker) in styles.items():
        pts = [r for r in rows if r["method"] == method]
        if not pts:
            continue
        pts.sort(key=lambda r: r["trainable"])
        ax.errorbar(
            [r["trainable"] for r in pts],
            [r["test"] for r in pts],
            yerr=[r["test_sd"] for r in pts],
            color=color,
            marker=marker,
            linestyle="-" if len(pts) > 1 else "none",
            capsize=2,
            label={
                "tdlrt": "TDLRT adapters from rank 1 (τ)",
                "tdlrt8": "TDLRT adapters from rank 8 (τ)",
                "lora": "PEFT LoRA (r)",
                "adalora": "PEFT AdaLoRA (target r)",
            }.get(method, method),
        )
        for r in pts:
            if r["value"] is not None:
                ax.annotate(
                    str(r["value"]),
                    (r["trainable"], r["test"]),
                    textcoords="offset points",
                    xytext=(3, -9),
                    fontsize=7,
                    color=color,
                )
    for method, color, r0 in (("tdlrt", "tab:red", 1), ("tdlrt8", "tab:purple", 8)):
        pts = sorted((r for r in before if r["method"] == method), key=lambda r: r["trainable"])
        if pts:  # the same configurations run before the deferred-truncation defaults
            ax.plot(
                [r["trainable"] for r in pts],
                [r["test"] for r in pts],
                color=color,
                marker="x",
                linestyle=":",
                alpha=0.5,
                label=f"TDLRT from rank {r0}, before the deferred-truncation defaults",
            )
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters after fine-tuning (head included)")
    ax.set_ylabel(f"test accuracy on {TASKS[TASK]['ylabel']} (%)")
    ax.set_title(f"{name}: {TASKS[TASK]['title']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------ main


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("lenet5", "vgg_small"), default="lenet5")
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 … N-1 at the chosen lr")
    parser.add_argument("--selection-seeds", type=int, default=2, help="seeds of the lr choice")
    parser.add_argument("--methods", nargs="*", default=None, help="labels to run (default all)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--task", choices=tuple(TASKS), default="5-9", help="the transfer (default: 5-9)"
    )
    args = parser.parse_args(argv)
    global TASK
    TASK = args.task
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    results = os.path.join(args.out, "results.json")
    payload = {"meta": {}, "runs": []}
    if os.path.exists(results):
        with open(results) as handle:
            payload = json.load(handle)
    records = payload["runs"]
    selection = list(range(args.selection_seeds))
    todo = [
        (m, v) for m, v in methods() if args.methods is None or label(m, v) in set(args.methods)
    ]
    start = time.perf_counter()

    def save():
        payload["meta"].update(
            {
                "model": args.model,
                "task": args.task,
                "epochs": args.epochs,
                "batch": BATCH,
                "lr_grid": list(LR_GRID),
                "split": SPLIT,
                "selection_seeds": selection,
                "torch": torch.__version__,
            }
        )
        tmp = results + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(payload, handle, indent=1)
        os.replace(tmp, results)
        os.makedirs(RESULTS, exist_ok=True)  # the copy kept with the documentation
        stem = f"experiments_adapters_{args.model}{TASKS[TASK]['suffix']}"
        with open(os.path.join(RESULTS, f"{stem}.json"), "w") as handle:
            json.dump(payload, handle, indent=1)

    def have(lab, lr, seed):
        return any(
            r["label"] == lab and r["lr"] == lr and r["seed"] == seed and r["epochs"] == args.epochs
            for r in records
        )

    if not args.report_only:
        base, info = pretrained(args.model, args.out)
        payload["meta"]["pretrained"] = info
        data = task()
        base.train()
        for seed in selection:
            for m, v in todo:
                for lr in LR_GRID:
                    if have(label(m, v), lr, seed):
                        continue
                    rec = run(args.model, base, data, m, v, lr, seed, args.epochs)
                    records.append(rec)
                    save()
                    print(
                        f"{rec['label']:>16} lr={lr:<6g} seed={seed} val={rec['val']:.2f} "
                        f"test={rec['test']:.2f} trainable={rec['trainable']} "
                        f"{rec['wall_s']:.0f}s",
                        flush=True,
                    )
        lrs = chosen([r for r in records if r["lr"] in LR_GRID], selection)
        for seed in range(args.seeds):
            for m, v in todo:
                lab = label(m, v)
                if seed in selection or have(lab, lrs[lab], seed):
                    continue
                rec = run(args.model, base, data, m, v, lrs[lab], seed, args.epochs)
                records.append(rec)
                save()
                print(
                    f"{rec['label']:>16} lr={rec['lr']:<6g} seed={seed} test={rec['test']:.2f} "
                    f"trainable={rec['trainable']} {rec['wall_s']:.0f}s",
                    flush=True,
                )
        payload["meta"]["wall_s_this_invocation"] = time.perf_counter() - start
        save()
    labels = {label(m, v) for m, v in todo}
    current = [r for r in records if r["label"] in labels and r["lr"] in LR_GRID]
    lrs = chosen(current, selection)
    rows = summary(current, lrs)
    text = table(rows)
    g = goals(rows)
    with open(os.path.join(args.out, "table.md"), "w") as handle:
        handle.write(text + "\n\n" + json.dumps(g, indent=1) + "\n")
    os.makedirs(FIGURES, exist_ok=True)
    old = payload.get("before_deferred_truncation", [])
    before = summary(old, chosen(old, selection)) if old else []
    stem = f"experiments_adapters_{args.model}{TASKS[TASK]['suffix']}"
    plot(rows, args.model, os.path.join(FIGURES, f"{stem}.png"), before)
    print(text)
    print(json.dumps(g, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
