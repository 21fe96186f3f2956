"""Tucker decomposition of a trained layer weight, factorizing only some of its modes."""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import tensorly as tl
import torch

from ..ranks import RankSpec, check_tolerance, per_mode
from ..recompression import recompress
from .layer import resolve_rank

__all__ = ["tucker_from_weight"]


def _per_mode(value, d, name):
    return None if value is None else per_mode(value, d, name, allow_none=True, minimum=1)


def _check_weight(weight, full_modes):
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if not (weight.is_floating_point() or weight.is_complex()) or weight.ndim < 1:
        raise ValueError(
            f"weight must be a floating point tensor with at least one mode, got dtype "
            f"{weight.dtype} and shape {tuple(weight.shape)}"
        )
    if isinstance(full_modes, (str, bytes)) or not isinstance(full_modes, Iterable):
        raise TypeError(f"full_modes must be a sequence of modes, got {full_modes!r}")
    modes = list(full_modes)
    for m in modes:
        if isinstance(m, bool) or not isinstance(m, numbers.Integral):
            raise TypeError(f"full_modes entries must be ints, got {m!r}")
        if not 0 <= m < weight.ndim:
            raise ValueError(
                f"full_modes contains mode {m}, the weight has modes 0..{weight.ndim - 1}"
            )
    return tuple(int(m) for m in modes)


def tucker_from_weight(weight, full_modes, *, rank=None, rtol=None, max_rank=None, min_rank=1):
    """Sequentially truncated HOSVD of ``weight`` in the modes not listed in ``full_modes``.

    Parameters
    ----------
    weight : torch.Tensor
        Dense weight (any float dtype and device; the SVDs run in float64 on its device).
    full_modes : tuple of int
        Modes left untouched (no factor; the core keeps their size).
    rank : int, float or sequence, optional
        Fixed ranks, as in the layer constructors. Exclusive with ``rtol``.
    rtol : float, optional
        Relative tolerance: ``‖W − C ×_i U_i‖_F ≤ rtol · ‖W‖_F``.
    max_rank, min_rank : int or sequence of int, optional
        Caps and floors on the ranks chosen by ``rtol`` (``max_rank`` may make the tolerance
        unattainable).

    Returns
    -------
    core : torch.Tensor
    factors : list
        One entry per mode: ``n_i × r_i`` orthonormal (deterministic signs) or None.

    Notes
    -----
    Modes are processed in order; after mode ``i``, ``W ← W ×_i U_iᴴ`` (ST-HOSVD), so the
    error obeys ``‖W − W_ST‖² = Σ_i tail_i²``. The tolerance ``ϑ = rtol ‖W‖`` is spent with the
    rule of :mod:`tuckerflow.truncation`: mode ``k`` of ``m`` factorized modes may discard
    ``(ϑ² − Σ_{j<k} tail_j²) / (m − k)``, so the total error is at most ``ϑ``. Factorized
    ranks that exceed the product of the others are then lowered exactly.

    References
    ----------
    .. [1] Vannieuwenhoven, Vandebril & Meerbergen, SIAM J. Sci. Comput. 34(2), 2012.
    """
    full_modes = _check_weight(weight, full_modes)
    shape = tuple(weight.shape)
    d = len(shape)
    factorized = [i for i in range(d) if i not in full_modes]
    if (rank is None) == (rtol is None):
        raise ValueError("give exactly one of rank (fixed ranks) or rtol (relative tolerance)")
    if rtol is not None:
        rtol = check_tolerance(rtol, "rtol")
        if not rtol < 1.0:
            raise ValueError(f"rtol={rtol!r} must lie in [0, 1)")
        fixed = None
    else:
        fixed = resolve_rank(shape, rank, full_modes)
    caps = _per_mode(max_rank, d, "max_rank")
    floors = _per_mode(min_rank, d, "min_rank")
    w = weight.detach().to(torch.float64)
    if not bool(torch.isfinite(w).all()):
        raise ValueError("the weight contains non-finite values (NaN or Inf)")
    spec = RankSpec(
        fixed=fixed,
        rtol=rtol,
        atol=None,
        min_rank=[1 if floors is None or floors[i] is None else floors[i] for i in range(d)],
        max_rank=[shape[i] if caps is None or caps[i] is None else caps[i] for i in range(d)],
    )
    with tl.backend_context("pytorch", local_threadsafe=True):
        core, factors, _ = recompress(
            w, spec, method="st_hosvd", modes=factorized, svd_method="qr", name="weight"
        )
    core = core.to(weight.dtype)
    factors = [None if u is None else u.to(weight.dtype) for u in factors]
    return core.contiguous(), [None if u is None else u.contiguous() for u in factors]
