"""TDLRT under DistributedDataParallel: two gloo processes on CPU take identical steps."""

from __future__ import annotations

import contextlib
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import tuckerflow.nn as tnn
from tuckerflow.optim import TDLRT, ddp_ignore_tucker_parameters


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(rank, kstep, tau=0.02, mode="one-pass"):
    # different initial weights per process: TDLRT broadcasts process 0's Tucker layers
    torch.manual_seed(0 if rank == 0 else 1234)
    model = nn.Sequential(
        tnn.TuckerConv2d(3, 6, 3, padding=1, rank=2, keep_full="none", dtype=torch.float64),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 5 * 5, 4, dtype=torch.float64),
    )
    ddp_ignore_tucker_parameters(model)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.2, momentum=0.9)
    tdlrt = TDLRT(ddp, opt, tau=tau, kstep=kstep, mode=mode)
    g = torch.Generator().manual_seed(100 + rank)  # each process sees its own shard
    history = []
    for _ in range(3):
        x = torch.randn(8, 3, 5, 5, generator=g, dtype=torch.float64)
        y = torch.randint(0, 4, (8,), generator=g)

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = F.cross_entropy(ddp(x), y)
            loss.backward()
            return loss

        tdlrt.step(closure)
        history.append(tdlrt.ranks())
    return {"ranks": history, "params": [p.detach().clone() for p in model.parameters()]}


def _accumulate(rank, micro):
    """Two steps, each over ``micro`` micro-batches (all but the last under ``no_sync``)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        tnn.TuckerConv2d(3, 6, 3, padding=1, rank=2, keep_full="none", dtype=torch.float64),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 5 * 5, 4, dtype=torch.float64),
    )
    ddp_ignore_tucker_parameters(model)
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.2, momentum=0.9)
    tdlrt = TDLRT(ddp, opt, tau=0.05)
    g = torch.Generator().manual_seed(200 + rank)
    for _ in range(2):
        x = torch.randn(8, 3, 5, 5, generator=g, dtype=torch.float64)
        y = torch.randint(0, 4, (8,), generator=g)
        tdlrt.zero_grad()
        parts = list(zip(x.chunk(micro), y.chunk(micro)))
        for i, (xs, ys) in enumerate(parts):
            sync = i == len(parts) - 1
            with contextlib.nullcontext() if sync else ddp.no_sync():
                (F.cross_entropy(ddp(xs), ys) / micro).backward()
        tdlrt.step()
    return [p.detach().clone() for p in model.parameters()]


def _unprepared_model_is_rejected():
    model = nn.Sequential(tnn.TuckerLinear(4, 4, rank=2, dtype=torch.float64))
    ddp = nn.parallel.DistributedDataParallel(model)
    try:
        TDLRT(ddp, torch.optim.SGD(ddp.parameters(), lr=0.1))
    except ValueError as err:
        return "ddp_ignore_tucker_parameters" in str(err)
    return False


def _worker(rank, world, port, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {"rejected": _unprepared_model_is_rejected()}
        for kstep in ("weight", "factors"):
            results[kstep] = _train(rank, kstep)
        results["two-pass"] = _train(rank, "factors", mode="two-pass")
        # a process configured differently still follows process 0's rank decisions
        results["consensus"] = _train(rank, "weight", tau=0.02 if rank == 0 else 0.6)
        results["accumulated"] = {m: _accumulate(rank, m) for m in (1, 2)}
        torch.save(results, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_processes_take_identical_rank_decisions_and_steps(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    a = torch.load(tmp_path / "0.pt", weights_only=False)
    b = torch.load(tmp_path / "1.pt", weights_only=False)
    assert a["rejected"] and b["rejected"]
    for kstep in ("weight", "factors", "two-pass", "consensus"):
        ra, rb = a[kstep], b[kstep]
        assert ra["ranks"] == rb["ranks"]
        assert ra["ranks"][-1]["0"] != (2, 2, 2, 2)  # the ranks did adapt during the run
        for p, q in zip(ra["params"], rb["params"]):
            assert p.shape == q.shape
            assert torch.equal(p, q)
    # gradient accumulation under no_sync(): the same steps on every process, and the steps
    # of the whole batch up to the round-off of summing it in two parts
    for micro in (1, 2):
        for p, q in zip(a["accumulated"][micro], b["accumulated"][micro]):
            assert torch.equal(p, q)
    for p, q in zip(a["accumulated"][1], a["accumulated"][2]):
        assert p.shape == q.shape
        assert (p - q).abs().max() <= 1e3 * torch.finfo(torch.float64).eps * q.abs().max()
