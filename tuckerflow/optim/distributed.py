"""``torch.distributed`` plumbing of TDLRT: averaged gradients, agreed flags and ranks.

DDP must leave the Tucker cores and factors alone (their shapes change, its buckets cannot);
TDLRT then averages what it reads over the processes itself and lets process 0 decide the
ranks, so that every process takes bit-identical steps. Every function here is a no-op
without an initialised process group of more than one process.
"""

from __future__ import annotations

from .layers import tucker_layers

__all__ = [
    "agree_flags",
    "average_",
    "broadcast_parameters",
    "broadcast_ranks",
    "ddp_ignore_tucker_parameters",
    "process_group",
    "tucker_parameter_names",
]


def process_group():
    """``torch.distributed`` when a process group of more than one process is running."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def tucker_parameter_names(model):
    """Qualified names of the cores and factors of every Tucker layer of ``model``."""
    names = []
    for lname, layer in tucker_layers(model).items():
        prefix = f"{lname}." if lname else ""
        names.append(f"{prefix}core")
        names.extend(f"{prefix}factors.{k}" for k in range(len(layer.factorized_modes)))
    return names


def ddp_ignore_tucker_parameters(model):
    """Let ``DistributedDataParallel`` leave the Tucker cores and factors to :class:`TDLRT`.

    DDP fixes the size of its gradient buckets when it wraps a model, so parameters whose
    shape changes (the cores and factors of rank-adaptive layers) must not be in them. Call
    this on the unwrapped model *before* ``DistributedDataParallel(model)``; TDLRT then
    averages the gradients it needs over the processes itself and broadcasts the rank
    decisions of process 0, so every process takes identical steps.

    Returns the list of ignored parameter names.
    """
    from torch.nn.parallel import DistributedDataParallel

    names = tucker_parameter_names(model)
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
    return names


def average_(t, dist=None):
    """Average ``t`` over the processes in place and return it (no-op without a group)."""
    dist = process_group() if dist is None else dist
    if dist is not None and t is not None:
        # NCCL reduces contiguous tensors only
        c = t.contiguous()
        dist.all_reduce(c)
        c /= dist.get_world_size()
        if c.data_ptr() != t.data_ptr():
            t.copy_(c)
    return t


def agree_flags(flags, op="min"):
    """Reduce a small float tensor of flags over the processes (in place) and return it."""
    dist = process_group()
    if dist is not None:
        dist.all_reduce(flags, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.MAX)
    return flags


def broadcast_parameters(layers):
    """Give every process the cores and factors of process 0."""
    dist = process_group()
    if dist is None:
        return
    for layer in layers:
        for p in [layer.core, *layer.factors]:
            dist.broadcast(p.data, src=0)


def broadcast_ranks(ranks, device):
    """Process 0's ranks for every process: a list of ints of the same length as ``ranks``."""
    import torch

    dist = process_group()
    if dist is None:
        return list(ranks)
    # on the parameters' device: NCCL communicates CUDA tensors only
    agreed = torch.tensor(list(ranks), dtype=torch.int64, device=device)
    dist.broadcast(agreed, src=0)
    from .._host import to_host

    return [int(v) for v in to_host(agreed, dtype=None).tolist()]
