"""Tucker (here: low-rank matrix) factorized fully connected layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .decompose import tucker_from_weight
from .layer import TuckerLayer, check_size, resolve_full_modes

__all__ = ["TuckerLinear"]


class TuckerLinear(TuckerLayer):
    """``y = x Wᵀ + b`` with ``W = U_0 C U_1ᵀ`` (``out × in``), a drop-in for ``nn.Linear``.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
    rank : int, float or sequence
        An int caps every factorized mode (``min(rank, n_i)``, lowered to a valid rank), a
        float in (0, 1] is a fraction of each mode size, a pair is taken literally.
    keep_full : None, "none" or sequence of int
        Modes without a factor (0: outputs, 1: inputs). Default: none.
    device, dtype :
        As for ``nn.Linear``.

    Notes
    -----
    The factorized forward is ``((x U_1) Cᵀ) U_0ᵀ + b`` with ``r_1 · in + r_0 r_1 + r_0 · out``
    multiply-adds per sample instead of ``out · in``; ``forward_mode="auto"`` takes the
    cheaper path. The initialisation matches the variance of ``nn.Linear``'s (see
    :meth:`TuckerLayer.reset_parameters`).

    References
    ----------
    .. [1] Zangrando, Schotthöfer, Ceruti, Kusch & Tudisco, NeurIPS 2024, arXiv:2305.19059.

    Examples
    --------
    >>> import torch
    >>> from tuckerflow.nn import TuckerLinear
    >>> layer = TuckerLinear(16, 8, rank=3)
    >>> layer.ranks
    (3, 3)
    >>> layer(torch.ones(2, 16)).shape
    torch.Size([2, 8])
    """

    def __init__(
        self,
        in_features,
        out_features,
        bias=True,
        *,
        rank,
        keep_full=None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.in_features = check_size(in_features, "in_features")
        self.out_features = check_size(out_features, "out_features")
        self._init_tucker(
            (self.out_features, self.in_features),
            rank=rank,
            keep_full=keep_full,
            default_full=(),
            bias_size=self.out_features if bias else None,
            factory={"device": device, "dtype": dtype},
        )

    @classmethod
    def from_dense(cls, module, *, rank=None, rtol=None, keep_full=None, max_rank=None, min_rank=1):
        """A TuckerLinear approximating ``module`` (an ``nn.Linear``) by a truncated HOSVD.

        Exactly one of ``rank`` (as in the constructor) and ``rtol`` (relative Frobenius
        error of the weight, ranks chosen per mode; capped by ``max_rank``, floored by
        ``min_rank``) is given. The bias is copied. See
        :func:`tuckerflow.nn.decompose.tucker_from_weight`.
        """
        if not isinstance(module, nn.Linear):
            raise TypeError(f"module must be an nn.Linear, got {type(module).__name__}")
        w = module.weight
        full = resolve_full_modes(tuple(w.shape), keep_full, default=())
        core, factors = tucker_from_weight(
            w, full, rank=rank, rtol=rtol, max_rank=max_rank, min_rank=min_rank
        )
        layer = cls._like(module, rank=tuple(core.shape), keep_full=full)
        layer.set_tucker_(core, factors)
        return layer

    @classmethod
    def _like(cls, module, *, rank, keep_full):
        """A layer with the shape, device, dtype and bias of the dense ``module``."""
        w = module.weight
        layer = cls(
            module.in_features,
            module.out_features,
            module.bias is not None,
            rank=rank,
            keep_full=keep_full,
            device=w.device,
            dtype=w.dtype,
        )
        if module.bias is not None:
            with torch.no_grad():
                layer.bias.copy_(module.bias)
        return layer

    def extra_repr(self):
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, ranks={self.ranks}, "
            f"factorized_modes={self.factorized_modes}"
        )

    def forward(self, x):
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"x.shape[-1] must equal in_features={self.in_features}, "
                f"got x.shape={tuple(x.shape)}"
            )
        return super().forward(x)

    def forward_flops(self, input_shape, ranks=None):
        batch = 1
        for n in input_shape[:-1]:
            batch *= int(n)
        r0, r1 = self.ranks if ranks is None else ranks
        out, inp = self.weight_shape
        has0, has1 = 0 in self.factorized_modes, 1 in self.factorized_modes
        fact = r0 * r1
        if has1:
            fact += inp * r1
        if has0:
            fact += out * r0
        recon = (out * r0 * r1 if has0 else 0) + (out * inp * r1 if has1 else 0)
        return {"factorized": batch * fact, "dense": batch * out * inp + recon}

    def _forward_dense(self, x, core, factors):
        return F.linear(x, self.reconstruct(core, factors), self.bias)

    def _forward_factorized(self, x, core, factors):
        u0, u1 = factors
        h = x if u1 is None else F.linear(x, u1.t())
        if u0 is None:
            return F.linear(h, core, self.bias)
        return F.linear(F.linear(h, core), u0, self.bias)

    def _weight_grad_norm_factor(self):
        """``‖gᵀx‖_F ≤ ‖g‖_F ‖x‖_F`` (Cauchy–Schwarz): the factor 1 (see
        :meth:`~tuckerflow.nn.recording.GradientRecord.weight_gradient_bound`)."""
        return 1.0

    def _projected_weight_grad(self, x, grad_out, U_hats):
        x = x.reshape(-1, self.in_features)
        g = grad_out.reshape(-1, self.out_features)
        if U_hats[1] is not None:
            x = x @ U_hats[1]
        if U_hats[0] is not None:
            g = g @ U_hats[0]
        return g.t() @ x
