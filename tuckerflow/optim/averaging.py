"""Weight averaging (SWA, EMA) of models whose Tucker ranks change during training.

``torch.optim.swa_utils.AveragedModel`` averages parameters entry by entry, which needs the
same shapes in the average and in the model: after the first rank change of a TDLRT-trained
layer its ``copy_`` fails. :class:`TuckerAveragedModel` averages the Tucker layers as what
they represent, weights: ``W̄ ← (1 − α) W̄ + α W`` in Tucker form (factors ``[Ū_i, U_i]``,
block core), recompressed by :func:`tuckerflow.add` (ST-HOSVD of the small core, never the
dense weight); every other parameter is averaged as ``AveragedModel`` does.
"""

from __future__ import annotations

import numbers

import tensorly as tl
import torch
from torch.optim.swa_utils import AveragedModel

from .._host import to_host
from .layers import check_device, check_model, set_tucker, tucker_layers, unwrap_model
from .precision import plain_precision, work_dtype

__all__ = ["TuckerAveragedModel"]


def _check_max_rank(max_rank):
    """None, an int ``≥ 1`` or a sequence of them (None entries: no cap in that mode)."""
    if max_rank is None:
        return
    sequence = isinstance(max_rank, (list, tuple))
    for v in max_rank if sequence else [max_rank]:
        if v is None and sequence:
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(
                f"max_rank must be None, an int or a sequence of ints, got {max_rank!r}"
            )
        if v < 1:
            raise ValueError(f"max_rank={max_rank!r} must be at least 1 in every mode")


class TuckerAveragedModel(AveragedModel):
    """``AveragedModel`` for models with rank-adaptive Tucker layers (SWA or EMA).

    Parameters
    ----------
    model : torch.nn.Module
        The model being trained (deep-copied, as ``AveragedModel`` does; a
        ``DistributedDataParallel`` wrapper is unwrapped).
    decay : float in [0, 1), optional
        None (default): equal-weight average of every update (SWA, ``α = 1/(n+1)`` at the
        ``n``-th update). A float: exponential moving average with ``α = 1 − decay``.
    rtol : float or "roundoff"
        Relative tolerance of the recompression of each averaged Tucker weight. The default
        ``"roundoff"`` keeps the sum exact to round-off (the rank of the average can then grow
        up to the sum of the ranks averaged); a tolerance such as TDLRT's ``tau`` keeps it
        compressed at an error ``≤ rtol · ‖W̄‖`` per update.
    max_rank : int or sequence, optional
        Rank cap of the averaged Tucker weights.
    device : torch.device, optional
        Where the average lives.
    use_buffers : bool
        Average the buffers too (else ``torch.optim.swa_utils.update_bn`` recomputes batch
        norm statistics), as in ``AveragedModel``.

    Notes
    -----
    With ``W̄ = C̄ ×_i Ū_i`` and ``W = C ×_i U_i`` the update forms the exact rank-``(r̄ + r)``
    sum and truncates it (:func:`tuckerflow.add`); modes kept full are averaged in the
    identity basis. The result equals ``AveragedModel``'s entrywise average of the dense
    weights up to the recompression tolerance, whatever the ranks of the two models.

    Examples
    --------
    ``ema = TuckerAveragedModel(model, decay=0.999)``, then after each ``tdlrt.step()``:
    ``ema.update_parameters(model)``; evaluate ``ema`` (or ``ema.module``).
    """

    def __init__(
        self, model, *, decay=None, rtol="roundoff", max_rank=None, device=None, use_buffers=False
    ):
        check_model(model)
        if decay is not None:
            if isinstance(decay, bool) or not isinstance(decay, numbers.Real):
                raise TypeError(f"decay must be None or a float in [0, 1), got {decay!r}")
            decay = float(decay)
            if not 0.0 <= decay < 1.0:
                raise ValueError(f"decay={decay!r} must lie in [0, 1)")
        if not (
            (isinstance(rtol, str) and rtol == "roundoff")
            or (not isinstance(rtol, bool) and isinstance(rtol, numbers.Real) and 0 <= rtol < 1)
        ):
            raise ValueError(f"rtol={rtol!r} must be 'roundoff' or a number in [0, 1)")
        _check_max_rank(max_rank)
        check_device(device)
        super().__init__(unwrap_model(model), device=device, use_buffers=use_buffers)
        self.decay = decay
        self.rtol = rtol
        self.max_rank = max_rank
        if not tucker_layers(self.module):
            raise ValueError(
                "model has no Tucker layers; use torch.optim.swa_utils.AveragedModel for it"
            )

    def _weight(self, n):
        return 1.0 / (n + 1) if self.decay is None else 1.0 - self.decay

    @torch.no_grad()
    def update_parameters(self, model):
        """Average ``model`` (of any ranks) into this one."""
        from ..tucker import add

        model = unwrap_model(model)
        mine, theirs = tucker_layers(self.module), tucker_layers(model)
        if set(mine) != set(theirs):
            raise ValueError(
                f"model has the Tucker layers {sorted(theirs)}, the average {sorted(mine)}"
            )
        n = int(to_host(self.n_averaged))
        alpha = self._weight(n)
        skip = set()
        with plain_precision():
            for name, avg in mine.items():
                src = theirs[name]
                prefix = f"{name}." if name else ""
                skip.add(f"{prefix}core")
                skip.update(f"{prefix}factors.{k}" for k in range(len(avg.factors)))
                ref = avg.core
                work = work_dtype(ref.dtype)
                core = src.core.detach().to(device=ref.device, dtype=work)
                factors = [
                    None if u is None else u.detach().to(device=ref.device, dtype=work)
                    for u in src.factor_list()
                ]
                if n > 0:
                    core, factors = self._tucker_average(avg, core, factors, alpha, work, add)
                set_tucker(
                    avg,
                    core.to(ref.dtype).clone(),
                    [None if u is None else u.to(ref.dtype).clone() for u in factors],
                )
            theirs_params = dict(model.named_parameters())
            named = list(self.module.named_parameters())
            if self.use_buffers:
                theirs_params.update(dict(model.named_buffers()))
                named += [(k, b) for k, b in self.module.named_buffers() if b.is_floating_point()]
            for key, p_avg in named:
                if key in skip:
                    continue
                p = theirs_params[key].detach().to(p_avg.device, p_avg.dtype)
                if n == 0 or not p_avg.is_floating_point():
                    p_avg.copy_(p)
                else:
                    p_avg.add_(p - p_avg, alpha=alpha)
        self.n_averaged += 1

    def _tucker_average(self, avg, core, factors, alpha, work, add):
        d = len(avg.weight_shape)
        full = [i for i in range(d) if i not in avg.factorized_modes]
        ref = avg.core

        def complete(c, us):
            return c, [
                torch.eye(avg.weight_shape[i], dtype=work, device=ref.device) if u is None else u
                for i, u in enumerate(us)
            ]

        mine = complete(
            avg.core.detach().to(work),
            [None if u is None else u.detach().to(work) for u in avg.factor_list()],
        )
        theirs = complete(core, factors)
        with tl.backend_context("pytorch", local_threadsafe=True):
            y = add(
                mine, theirs, alpha=1.0 - alpha, beta=alpha, rtol=self.rtol, max_rank=self.max_rank
            )
        new_core, new_factors = y.core, list(y.factors)
        for i in full:
            # back to the identity basis of a mode kept full
            u = new_factors[i]
            new_core = torch.movedim(torch.tensordot(u, new_core, dims=([1], [i])), 0, i)
            new_factors[i] = None
        return new_core, [None if i in full else new_factors[i] for i in range(d)]
