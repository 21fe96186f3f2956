"""Benchmark: one training step of dense, factorized and rank-adaptive networks.

``python -m tuckerflow.bench training [--models vgg16 resnet18 resnet50] [--batch N]
[--compressions 0.9 0.97] [--precisions fp32 bf16] [--variants ...] [--steps N] [--quick]``

For each model and precision, every variant runs in the same process on the same random
(never zero) data, rotated over four input batches; one step is ``zero_grad``, forward,
cross-entropy, backward and the optimizer step (SGD with momentum 0.9). Variants:

``dense``
    The model as built.
``tltorch@c``
    tensorly-torch ``FactorizedConv`` (Tucker, factorized implementation, spatial modes of
    3×3 kernels fixed) at about conv compression ``c`` (when tensorly-torch is importable).
``tucker@c``
    Our fixed-rank :class:`tuckerflow.nn.TuckerConv2d` layers, trained directly (the same
    ranks in every step), at conv compression ``c``.
``tucker_rc@c``
    The same with ``recompute_factorized=True`` (the low-rank intermediate maps are
    recomputed in backward instead of stored).
``tdlrt1@c`` / ``tdlrt2@c``
    :class:`tuckerflow.optim.TDLRT` one-pass / two-pass from the same initial ranks (rank
    adaptation with tolerance ``--tau`` included; the time is the mean over the timed steps,
    i.e. amortized over the run; the final compression is reported).

When both ``tucker`` and ``tdlrt1`` run, a paired measurement follows per model, precision
and compression: TDLRT with the bases updated at every step (the published schedule,
whatever ``--update-every`` says) and the fixed-rank Tucker model take their steps
alternately from the same ranks, and the median per-pair ratio is reported
(``every_step/tucker_paired``, with its 10/90 % quantiles and the ratio of the means in the
JSON). Interleaving makes the ratio robust to a changing machine load, which shifts the rows
measured one after the other.

``--compile`` wraps the models of the non-TDLRT rows in ``torch.compile`` (compilation happens
in the warm-up steps; TDLRT changes shapes and stays eager).

Every convolution but the first is factorized, 3×3 spatial modes are kept full and the
compression rate is ``1 − conv parameters / dense conv parameters`` (all convolutions). Ranks
are one fraction of each channel count, rounded to multiples of ``--rank-multiple``, found by
bisection to reach the target.

Reported per row: wall time per step (median, p10, p90, mean, ms); on CUDA also GPU-busy time
(sum of kernel times from ``torch.profiler``) and kernels per step, CUDA-graph replay time
of the whole step for the fixed-rank variants (where capture succeeds), and peak memory from
``torch.cuda.max_memory_allocated`` above the memory held before the step; on every device the
bytes of parameters plus optimizer state and the bytes of activations saved for backward
(unique storages seen by ``torch.autograd.graph.saved_tensors_hooks``, parameters excluded).
Ratios are taken against the dense row of the same model and precision in the same run.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import statistics
import time

from ._util import environment, print_table

__all__ = ["add_arguments", "run", "vgg16", "resnet18", "resnet50"]

MODELS = ("vgg16", "resnet18", "resnet50")
VARIANTS = ("dense", "tltorch", "tucker", "tucker_rc", "tdlrt1", "tdlrt2")
#: Image size, default batch and classes per model (CIFAR shape, ImageNet shape).
GEOMETRY = {"vgg16": (32, 128, 10), "resnet18": (32, 128, 10), "resnet50": (224, 32, 1000)}
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def add_arguments(parser):
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--batch", type=int, default=None, help="batch size (default per model)")
    parser.add_argument("--image-size", type=int, default=None, help="override the image size")
    parser.add_argument("--compressions", type=float, nargs="+", default=[0.9, 0.97])
    parser.add_argument("--precisions", nargs="+", default=None, choices=("fp32", "bf16"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--tau", type=float, default=0.1, help="TDLRT relative tolerance")
    parser.add_argument("--update-every", type=int, default=1, help="TDLRT amortization")
    parser.add_argument(
        "--tdlrt-kstep",
        default="factors",
        choices=("factors", "weight"),
        help="TDLRT K-step from the factor gradients or from the dense weight gradient",
    )
    parser.add_argument("--rank-multiple", type=int, default=None)
    parser.add_argument("--no-cuda-graphs", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the non-TDLRT models")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


# ------------------------------------------------------------------------------ models


def vgg16(num_classes=10, in_channels=3):
    """VGG16 with BatchNorm for 32×32 inputs (13 convolutions, one linear classifier)."""
    from torch import nn

    layers, c = [], in_channels
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            c = v
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


def resnet18(num_classes=10, in_channels=3):
    """CIFAR-style ResNet18 of :mod:`tuckerflow.train.models`."""
    from ..train.models import resnet18 as build

    return build(in_channels, 32, num_classes)


def resnet50(num_classes=1000, in_channels=3):
    """ImageNet-style ResNet50 (bottleneck blocks 3-4-6-3, 7×7 stem with max pooling)."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, c_in, planes, stride):
            super().__init__()
            c_out = 4 * planes
            self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(c_out)
            self.shortcut = nn.Sequential()
            if stride != 1 or c_in != c_out:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
                )

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = torch.relu(self.bn2(self.conv2(out)))
            return torch.relu(self.bn3(self.conv3(out)) + self.shortcut(x))

    layers = [
        nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    c = 64
    for index, count in enumerate((3, 4, 6, 3)):
        planes = 64 * 2**index
        for block in range(count):
            layers.append(Bottleneck(c, planes, 2 if block == 0 and index > 0 else 1))
            c = 4 * planes
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


_BUILDERS = {"vgg16": vgg16, "resnet18": resnet18, "resnet50": resnet50}


# ------------------------------------------------------------------------------ factorization


def _conv_paths(model):
    """Paths of the convolutions to factorize: all but the first."""
    from torch import nn

    paths = [p for p, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return paths[1:]


def _ranks_for(weight_shape, fraction, multiple):
    from ..nn.layer import resolve_full_modes

    full = resolve_full_modes(weight_shape, None, default=(2, 3) if weight_shape[2] <= 3 else ())
    ranks = []
    for i, n in enumerate(weight_shape):
        if i in full:
            ranks.append(None)
            continue
        r = max(1, round(fraction * n))
        if multiple > 1:
            r = max(multiple, multiple * round(r / multiple))
        ranks.append(min(r, n))
    # a factorized rank cannot exceed the product of the others
    for i in range(2):
        if ranks[i] is not None:
            other = math.prod(
                (n if r is None else r)
                for j, (r, n) in enumerate(zip(ranks, weight_shape))
                if j != i
            )
            ranks[i] = min(ranks[i], other)
    return tuple(ranks)


def _tucker_params(weight_shape, ranks, bias):
    core = math.prod(n if r is None else r for r, n in zip(ranks, weight_shape))
    factors = sum(n * r for r, n in zip(ranks, weight_shape) if r is not None)
    return core + factors + (weight_shape[0] if bias else 0)


def _plan_ranks(model, target, multiple):
    """``({path: ranks}, conv compression)`` for one channel fraction reaching ``target``."""
    from torch import nn

    convs = {p: m for p, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    paths = _conv_paths(model)
    dense = sum(sum(p.numel() for p in m.parameters()) for m in convs.values())
    fixed = dense - sum(sum(p.numel() for p in convs[p].parameters()) for p in paths)

    def plan(fraction):
        out, total = {}, fixed
        for p in paths:
            w = convs[p].weight
            r = _ranks_for(tuple(w.shape), fraction, multiple)
            out[p] = r
            total += _tucker_params(tuple(w.shape), r, convs[p].bias is not None)
        return out, 1.0 - total / dense

    lo, hi = 1e-3, 1.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if plan(mid)[1] >= target:
            lo = mid
        else:
            hi = mid
    return plan(lo)


def _tuckerize_plan(model, plan):
    from ..nn import tuckerize

    for path, ranks in plan.items():
        model, _ = tuckerize(model, filter=[path], rank=ranks, init="random")
    return model


def _import_tltorch():
    import tensorly as tl

    # tensorly-torch sets TensorLy's global backend when imported; the context restores it
    with tl.backend_context(tl.get_backend()):
        import tltorch
    return tltorch


def _backend_for(variant):
    """tensorly-torch computes with TensorLy's active backend: make it PyTorch, locally."""
    if variant != "tltorch":
        return contextlib.nullcontext()
    import tensorly as tl

    return tl.backend_context("pytorch", local_threadsafe=True)


def _tltorch_model(model, target):
    """Replace the convolutions of ``_conv_paths`` by tensorly-torch Tucker ``FactorizedConv``."""
    tltorch = _import_tltorch()
    for path in _conv_paths(model):
        parent_path, _, child = path.rpartition(".")
        owner = model.get_submodule(parent_path) if parent_path else model
        conv = getattr(owner, child)
        fixed = (2, 3) if conv.kernel_size[0] > 1 else None
        new = tltorch.FactorizedConv.from_conv(
            conv,
            rank=1.0 - target,
            factorization="tucker",
            implementation="factorized",
            decompose_weights=False,
            fixed_rank_modes=fixed,
        )
        setattr(owner, child, new)
    return model


def _conv_params(model):
    """Parameters of the convolutions: dense, ours or tensorly-torch's (names with "Conv")."""
    return sum(
        p.numel() for m in model.modules() if "Conv" in type(m).__name__ for p in m.parameters()
    )


# ------------------------------------------------------------------------------ measurement


class _Step:
    """One training step of a model (and its optimizer wrapper) on rotating batches."""

    def __init__(self, model, variant, batches, device, precision, args):
        import torch

        self.model, self.variant, self.batches = model, variant, batches
        self.device, self.index = device, 0
        self.amp = precision == "bf16"
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        self.tdlrt = None
        if variant.startswith("tdlrt"):
            from ..optim import TDLRT

            mode = "one-pass" if variant == "tdlrt1" else "two-pass"
            options = {"tau": args.tau, "mode": mode, "update_every": args.update_every}
            if "kstep" in inspect.signature(TDLRT).parameters:
                options["kstep"] = args.tdlrt_kstep
            self.tdlrt = TDLRT(model, self.optimizer, **options)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        # rank changes would recompile every step: TDLRT rows stay eager
        self.forward = model
        if args.compile and self.tdlrt is None:
            self.forward = torch.compile(model)

    def _autocast(self, cache_enabled=True):
        import torch

        if not self.amp:
            return contextlib.nullcontext()
        # CUDA-graph capture needs the autocast weight cache off
        return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)

    def _batch(self):
        x, y = self.batches[self.index % len(self.batches)]
        self.index += 1
        return x, y

    def _closure_for(self, x, y):
        def closure():
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                loss = self.loss_fn(self.forward(x), y)
            loss.backward()
            return loss

        return closure

    def __call__(self):
        x, y = self._batch()
        closure = self._closure_for(x, y)
        if self.tdlrt is not None and self.tdlrt.mode == "two-pass":
            return self.tdlrt.step(closure)
        loss = closure()
        (self.tdlrt or self.optimizer).step()
        return loss


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(step, n, device):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return {
        "median": 1e3 * statistics.median(times),
        "p10": 1e3 * q[0],
        "p90": 1e3 * q[-1],
        "mean": 1e3 * statistics.fmean(times),
        "n": n,
    }


def _paired_ratio(name, target, batches, device, precision, args, steps, warmup, classes):
    """TDLRT with the bases updated at every step against the fixed-rank Tucker step.

    Both models start from the same ranks and take their steps alternately (the order
    swapped every pair), so that a change of machine load acts on both alike; returns the
    median and the 10/90 % quantiles of the per-pair ratios and the ratio of the means.
    """
    import copy

    every = copy.copy(args)
    every.update_every = 1
    tucker, _ = _build_variant(name, "tucker", target, args, device, classes)
    tdlrt, _ = _build_variant(name, "tdlrt1", target, every, device, classes)
    a = _Step(tucker, "tucker", batches, device, precision, args)
    b = _Step(tdlrt, "tdlrt1", batches, device, precision, every)
    for _ in range(warmup):
        a()
        b()
    _sync(device)

    def timed(step):
        t0 = time.perf_counter()
        step()
        _sync(device)
        return time.perf_counter() - t0

    ta, tb = [], []
    for k in range(steps):
        if k % 2:
            tb.append(timed(b))
            ta.append(timed(a))
        else:
            ta.append(timed(a))
            tb.append(timed(b))
    ratios = [y / x for x, y in zip(ta, tb)]
    q = statistics.quantiles(ratios, n=10) if len(ratios) > 1 else [ratios[0]] * 9
    return {
        "median": statistics.median(ratios),
        "p10": q[0],
        "p90": q[-1],
        "of_means": statistics.fmean(tb) / statistics.fmean(ta),
        "tucker_ms_median": 1e3 * statistics.median(ta),
        "tdlrt_ms_median": 1e3 * statistics.median(tb),
        "pairs": steps,
    }


def _state_bytes(model, optimizer):
    import torch

    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.numel():
            key = (t.untyped_storage().data_ptr(), t.dtype, t.shape)
            if key not in seen:
                seen.add(key)
                total += t.numel() * t.element_size()

    for p in model.parameters():
        add(p.data)
    for state in optimizer.state.values():
        for v in state.values():
            add(v)
    return total


def _activation_bytes(step):
    """Bytes of tensors saved for backward during one step (parameters excluded)."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in step.model.parameters()}
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        ptr = s.data_ptr()
        if ptr not in params:
            storages[ptr] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(storages.values())


def _recorded_bytes(step):
    """Bytes of gradients the layers hold for the one-pass Galerkin gradient.

    Measured before a basis-updating step (the steps in between record nothing).
    """
    from ..nn import TuckerLayer

    for _ in range(step.tdlrt.update_every):
        if step.tdlrt.next_step != "core":
            break
        step()
    x, y = step._batch()
    step._closure_for(x, y)()
    total = sum(
        t.numel() * t.element_size()
        for m in step.model.modules()
        if isinstance(m, TuckerLayer)
        for r in m.gradient_record.contributions()
        for t in (r.grad, r.weight_grad, getattr(r, "grad_mid", None))
        if t is not None
    )
    step.tdlrt.step()
    return total


def _profile_gpu(step, n):
    """``(GPU-busy ms, kernels)`` per step from torch.profiler (CUDA only)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        torch.cuda.synchronize()
    busy, kernels = 0.0, 0
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            busy += e.time_range.elapsed_us()
            kernels += 1
    return busy / 1e3 / n, kernels / n


def _cuda_graph_ms(step, n):
    """Replay time of the whole captured step, or an error message."""
    import torch

    x, y = step.batches[0]
    static_x, static_y = x.clone(), y.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step.optimizer.zero_grad(set_to_none=True)
            with step._autocast(cache_enabled=False):
                loss = step.loss_fn(step.model(static_x), static_y)
            loss.backward()
            step.optimizer.step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    step.optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        with step._autocast(cache_enabled=False):
            loss = step.loss_fn(step.model(static_x), static_y)
        loss.backward()
        step.optimizer.step()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for i in range(n):
        static_x.copy_(step.batches[i % len(step.batches)][0])
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _measure(model, variant, batches, device, precision, args, steps, warmup):
    import torch

    step = _Step(model, variant, batches, device, precision, args)
    for _ in range(warmup):
        step()
    _sync(device)
    row = {}
    timing = _time_steps(step, steps, device)
    row.update({f"ms_{k}": v for k, v in timing.items() if k != "n"})
    row["params_state_MB"] = _state_bytes(model, step.optimizer) / 2**20
    row["activations_MB"] = _activation_bytes(step) / 2**20
    if step.tdlrt is not None and step.tdlrt.mode == "one-pass":
        row["recorded_MB"] = _recorded_bytes(step) / 2**20
    if device.type == "cuda":
        busy, kernels = _profile_gpu(step, min(steps, 5))
        row["gpu_ms"], row["kernels"] = busy, kernels
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        row["peak_above_MB"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        # a graph of the eager model would not time the compiled one: --compile rows have none
        if step.tdlrt is None and not args.no_cuda_graphs and not args.compile:
            try:
                row["graph_ms"] = _cuda_graph_ms(step, steps)
            except Exception as err:  # noqa: BLE001 - capture failures are reported, not fatal
                row["graph_error"] = f"{type(err).__name__}: {err}"[:200]
    if step.tdlrt is not None:
        from ..nn import TuckerLayer

        row["ranks_changed_to"] = {
            n: list(m.ranks) for n, m in model.named_modules() if isinstance(m, TuckerLayer)
        }
    return row


def _build_variant(name, variant, target, args, device, num_classes):
    import torch

    torch.manual_seed(0)
    model = _BUILDERS[name](num_classes=num_classes)
    dense_conv = _conv_params(model)
    if variant == "tltorch":
        model = _tltorch_model(model, target)
    elif variant != "dense":
        plan, _ = _plan_ranks(model, target, args.rank_multiple)
        model = _tuckerize_plan(model, plan)
        if variant == "tucker_rc":
            from ..nn import TuckerLayer

            for m in model.modules():
                if isinstance(m, TuckerLayer):
                    m.recompute_factorized = True
    model.to(device)
    return model, dense_conv


def run(args):
    import torch

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        if device.index is not None:
            # synchronize, memory statistics, streams and graphs act on the current device
            torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    cpu = device.type == "cpu"
    if args.rank_multiple is None:
        args.rank_multiple = 1 if cpu else 8
    precisions = args.precisions or (["fp32"] if cpu else ["fp32", "bf16"])
    steps = args.steps or (2 if args.quick else (5 if cpu else 20))
    warmup = args.warmup if args.warmup is not None else (1 if args.quick or cpu else 5)
    variants = list(args.variants)
    notes = []
    if "tltorch" in variants:
        try:
            _import_tltorch()
        except ImportError:
            variants.remove("tltorch")
            notes.append("tensorly-torch is not installed: tltorch rows skipped")
    if any(v.startswith("tdlrt") for v in variants):
        try:
            from ..optim import TDLRT  # noqa: F401
        except ImportError:
            variants = [v for v in variants if not v.startswith("tdlrt")]
            notes.append("tuckerflow.optim.TDLRT is not available: TDLRT rows skipped")
    rows = []
    for name in args.models:
        size, batch, classes = GEOMETRY[name]
        if args.quick:
            size, batch = 32, 8
        size = args.image_size or size
        batch = args.batch or batch
        gen = torch.Generator().manual_seed(1)
        batches = [
            (
                torch.randn(batch, 3, size, size, generator=gen).to(device),
                torch.randint(0, classes, (batch,), generator=gen).to(device),
            )
            for _ in range(4)
        ]
        for precision in precisions:
            dense_row = None
            for variant in variants:
                targets = [None] if variant == "dense" else args.compressions
                for target in targets:
                    model, dense_conv = _build_variant(name, variant, target, args, device, classes)
                    label = variant if target is None else f"{variant}@{target:g}"
                    row = {
                        "model": name,
                        "batch": batch,
                        "image": size,
                        "precision": precision,
                        "variant": label,
                    }
                    row["compression"] = 1.0 - _conv_params(model) / dense_conv
                    with _backend_for(variant):
                        row.update(
                            _measure(
                                model, variant, batches, device, precision, args, steps, warmup
                            )
                        )
                    if variant.startswith("tdlrt"):
                        row["compression_end"] = 1.0 - _conv_params(model) / dense_conv
                    if variant == "dense":
                        dense_row = row
                    if dense_row is not None:
                        for key in (
                            "ms_median",
                            "gpu_ms",
                            "graph_ms",
                            "params_state_MB",
                            "activations_MB",
                            "peak_above_MB",
                        ):
                            if key in row and dense_row.get(key):
                                row[f"{key}/dense"] = row[key] / dense_row[key]
                    rows.append(row)
                    print(
                        f"  {name} {precision} {label}: {row['ms_median']:.1f} ms/step",
                        flush=True,
                    )
                    del model
            if "tucker" in variants and "tdlrt1" in variants:
                for target in args.compressions:
                    paired = _paired_ratio(
                        name, target, batches, device, precision, args, steps, warmup, classes
                    )
                    for row in rows:
                        if (
                            row["model"] == name
                            and row["precision"] == precision
                            and row["variant"] == f"tdlrt1@{target:g}"
                        ):
                            row["every_step/tucker_paired"] = paired["median"]
                            row["every_step/tucker_paired_p10_p90"] = [paired["p10"], paired["p90"]]
                            row["every_step_paired"] = paired
                    print(
                        f"  {name} {precision} TDLRT (bases every step) / Tucker @{target:g}, "
                        f"{steps} interleaved pairs: {paired['median']:.3g} "
                        f"(p10 {paired['p10']:.3g}, p90 {paired['p90']:.3g})",
                        flush=True,
                    )
    _tdlrt_vs_tucker(rows)
    columns = [
        "model",
        "precision",
        "variant",
        "compression",
        "ms_median",
        "ms_p10",
        "ms_p90",
        "ms_mean",
        "ms_median/dense",
        "params_state_MB/dense",
        "activations_MB/dense",
        "recorded_MB",
        "compression_end",
    ]
    if not cpu:
        columns[8:8] = ["gpu_ms", "gpu_ms/dense", "kernels", "graph_ms", "graph_ms/dense"]
        columns += ["peak_above_MB/dense"]
    columns += ["tdlrt/tucker", "every_step/tucker_paired"]
    print_table(rows, columns)
    for note in notes:
        print(note)
    env = environment()
    env["device"] = str(device) if cpu else torch.cuda.get_device_name()
    env["torch_threads"] = torch.get_num_threads()
    if hasattr(os, "getloadavg"):
        env["load_average"] = os.getloadavg()
    return {
        "environment": env,
        "device": str(device),
        "steps": steps,
        "warmup": warmup,
        "tau": args.tau,
        "tdlrt_kstep": args.tdlrt_kstep,
        "update_every": args.update_every,
        "compile": args.compile,
        "rank_multiple": args.rank_multiple,
        "notes": notes,
        "rows": rows,
    }


def _tdlrt_vs_tucker(rows):
    """Amortized (mean) TDLRT step time over the fixed-rank Tucker step at the same start."""
    fixed = {
        (r["model"], r["precision"], r["variant"].split("@")[1]): r
        for r in rows
        if r["variant"].startswith("tucker@")
    }
    for r in rows:
        if r["variant"].startswith("tdlrt"):
            ref = fixed.get((r["model"], r["precision"], r["variant"].split("@")[1]))
            if ref:
                r["tdlrt/tucker"] = r["ms_mean"] / ref["ms_mean"]
                if "gpu_ms" in r and ref.get("gpu_ms"):
                    r["tdlrt/tucker_gpu"] = r["gpu_ms"] / ref["gpu_ms"]
