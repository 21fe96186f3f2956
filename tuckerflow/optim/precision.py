"""Precision control of the TDLRT step's small linear algebra.

The basis augmentation, the Galerkin gradient and the truncation decide ranks from singular
values and norms: they run in the parameters' dtype (at least float32) at its full precision,
whatever the training loop enabled around them (autocast, TF32, bf16 matmul passes).
"""

from __future__ import annotations

import contextlib

__all__ = ["plain_precision", "full_precision_matmul", "work_dtype"]


def work_dtype(dtype):
    """float32 for half-precision parameters (no QR/SVD kernels there), else the dtype."""
    import torch

    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@contextlib.contextmanager
def full_precision_matmul():
    """float32 matrix products in full precision for the block (no TF32 / bf16 passes).

    Users enable TF32 for speed (``torch.backends.cuda.matmul.fp32_precision = "tf32"`` or
    ``torch.set_float32_matmul_precision("high")``); its unit round-off of about 5e-4 would
    leave the augmented bases orthonormal only to that level and blur rank decisions. Only
    settings that are not already full precision are changed, and they are restored.
    """
    import torch

    backends = [
        getattr(getattr(torch.backends, name, None), "matmul", None) for name in ("cuda", "mkldnn")
    ]
    backends = [b for b in backends if b is not None and hasattr(b, "fp32_precision")]
    generic = getattr(torch.backends, "fp32_precision", "none")
    saved = []
    if backends:
        for b in backends:
            old = b.fp32_precision
            effective = generic if old == "none" else old
            if effective not in ("none", "ieee"):
                saved.append((b, old))
                b.fp32_precision = "ieee"
    elif torch.get_float32_matmul_precision() != "highest":  # torch < 2.9
        saved.append((None, torch.get_float32_matmul_precision()))
        torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        for b, old in saved:
            if b is None:
                torch.set_float32_matmul_precision(old)
            else:
                b.fp32_precision = old


@contextlib.contextmanager
def plain_precision():
    """No autograd, no autocast and no TF32: the small linear algebra runs in the tensors'
    dtype at its full precision."""
    import torch

    stack = contextlib.ExitStack()
    stack.enter_context(torch.no_grad())
    stack.enter_context(full_precision_matmul())
    for device in ("cpu", "cuda"):
        try:
            enabled = torch.is_autocast_enabled(device)
        except TypeError:  # torch < 2.4 has no per-device query
            enabled = True
        if enabled:
            with contextlib.suppress(RuntimeError):
                stack.enter_context(torch.autocast(device_type=device, enabled=False))
    with stack:
        yield
