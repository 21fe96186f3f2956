"""Tucker-factorized convolutions in 1, 2 and 3 spatial dimensions."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import grad as nn_grad

from .decompose import tucker_from_weight
from .layer import TuckerLayer, check_size, mode_dot, resolve_full_modes
from .recording import MidGradHook

__all__ = ["TuckerConv1d", "TuckerConv2d", "TuckerConv3d", "PADDING_MODES"]

#: Padding modes of ``torch.nn.ConvNd`` that the Tucker convolutions honour.
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

#: Spatial modes of at most this size are kept full by default (``keep_full=None``).
SMALL_KERNEL = 3


def _tuple(value, n, name, minimum=1):
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return (check_size(value, name, minimum=minimum),) * n
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    if len(value) != n:
        raise ValueError(f"{name}={value!r} must have {n} entries")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name}[{i}] must be an int, got {v!r} ({type(v).__name__})")
    return tuple(check_size(v, f"{name}[{i}]", minimum=minimum) for i, v in enumerate(value))


def _mids_recorded(contributions, dtype, r0, r1):
    """Whether every contribution holds ``x``, ``∂L/∂y`` and the intermediates ``U_1ᵀx`` and
    ``U_0ᵀ(∂L/∂y)`` of a factorized forward with ``(r0, r1)`` channel ranks, in ``dtype``."""
    for c in contributions:
        if c.x is None or c.grad is None or c.x_mid is None or c.grad_mid is None:
            return False
        if c.x_mid.dtype != dtype or c.grad_mid.dtype != dtype:
            return False
        if c.x_mid.shape[1] != r1 or c.grad_mid.shape[1] != r0:
            return False
    return True


class _TuckerConvNd(TuckerLayer):
    """Common implementation of :class:`TuckerConv1d`, :class:`TuckerConv2d`, ``…3d``."""

    _ndim = 0
    _dense_type = None

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        padding_mode="zeros",
        *,
        rank,
        keep_full=None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        n = self._ndim
        in_channels = check_size(in_channels, "in_channels")
        out_channels = check_size(out_channels, "out_channels")
        groups = check_size(groups, "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels={in_channels} and out_channels={out_channels} must both be "
                f"divisible by groups={groups}"
            )
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _tuple(kernel_size, n, "kernel_size")
        self.stride = _tuple(stride, n, "stride")
        self.dilation = _tuple(dilation, n, "dilation")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding={padding!r} must be 'same', 'valid', an int or tuple")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError(
                    f"padding='same' needs stride 1 in every dimension, got stride={self.stride}"
                )
            self.padding = padding
        else:
            self.padding = _tuple(padding, n, "padding", minimum=0)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode={padding_mode!r} is not one of {PADDING_MODES}")
        self.padding_mode = padding_mode
        self._pads = self._explicit_padding()
        weight_shape = (out_channels, in_channels // groups, *self.kernel_size)
        default_full = tuple(2 + j for j, k in enumerate(self.kernel_size) if k <= SMALL_KERNEL)
        self._init_tucker(
            weight_shape,
            rank=rank,
            keep_full=keep_full,
            default_full=default_full,
            bias_size=out_channels if bias else None,
            factory={"device": device, "dtype": dtype},
        )
        self._conv = getattr(F, f"conv{n}d")
        self._conv_weight = getattr(nn_grad, f"conv{n}d_weight")

    # ------------------------------------------------------------------------------------
    # padding

    def _explicit_padding(self):
        """Per spatial dimension ``(left, right)`` as torch's ConvNd pads."""
        if self.padding == "valid":
            return tuple((0, 0) for _ in self.kernel_size)
        if self.padding == "same":
            out = []
            for k, dil in zip(self.kernel_size, self.dilation):
                total = dil * (k - 1)
                left = total // 2
                out.append((left, total - left))
            return tuple(out)
        return tuple((p, p) for p in self.padding)

    def _pad(self, x):
        """``(x, conv_padding)``: pads explicitly unless the conv itself can (symmetric zeros)."""
        symmetric = all(a == b for a, b in self._pads)
        if self.padding_mode == "zeros" and symmetric:
            return x, tuple(a for a, _ in self._pads)
        flat = []
        for a, b in reversed(self._pads):
            flat += [a, b]
        if any(flat):
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, flat, mode=mode)
        return x, (0,) * self._ndim

    def _output_size(self, spatial):
        return tuple(
            (n + a + b - dil * (k - 1) - 1) // s + 1
            for n, (a, b), k, s, dil in zip(
                spatial, self._pads, self.kernel_size, self.stride, self.dilation
            )
        )

    # ------------------------------------------------------------------------------------
    # construction from a dense layer

    @classmethod
    def from_dense(cls, module, *, rank=None, rtol=None, keep_full=None, max_rank=None, min_rank=1):
        """A Tucker convolution approximating ``module`` by a truncated HOSVD of its weight.

        Exactly one of ``rank`` (as in the constructor) and ``rtol`` (relative Frobenius
        error of the weight, ranks chosen per mode; capped by ``max_rank``, floored by
        ``min_rank``) is given. Stride, padding, dilation, groups, padding mode and bias are
        copied. See :func:`tuckerflow.nn.decompose.tucker_from_weight`.
        """
        if type(module) is not cls._dense_type and not isinstance(module, cls._dense_type):
            raise TypeError(
                f"module must be an nn.{cls._dense_type.__name__}, got {type(module).__name__}"
            )
        w = module.weight
        default_full = tuple(2 + j for j, k in enumerate(module.kernel_size) if k <= SMALL_KERNEL)
        full = resolve_full_modes(tuple(w.shape), keep_full, default=default_full)
        core, factors = tucker_from_weight(
            w, full, rank=rank, rtol=rtol, max_rank=max_rank, min_rank=min_rank
        )
        layer = cls._like(module, rank=tuple(core.shape), keep_full=full)
        layer.set_tucker_(core, factors)
        return layer

    @classmethod
    def _like(cls, module, *, rank, keep_full):
        """A layer with the options, device, dtype and bias of the dense ``module``."""
        w = module.weight
        layer = cls(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
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
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )
        if self.dilation != (1,) * self._ndim:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s + f", ranks={self.ranks}, factorized_modes={self.factorized_modes}"

    # ------------------------------------------------------------------------------------
    # forward

    def forward(self, x):
        n = self._ndim
        if x.ndim == n + 1:  # unbatched input, as torch's ConvNd accepts
            return super().forward(x.unsqueeze(0)).squeeze(0)
        if x.ndim != n + 2:
            raise ValueError(
                f"expected a {n + 2}-d (batched) or {n + 1}-d (unbatched) input, "
                f"got x.shape={tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x.shape[1]={x.shape[1]} differs from in_channels={self.in_channels}")
        return super().forward(x)

    def forward_flops(self, input_shape, ranks=None):
        batch = int(input_shape[0]) if len(input_shape) == self._ndim + 2 else 1
        spatial = tuple(int(n) for n in input_shape[-self._ndim :])
        p_in, p_out = math.prod(spatial), math.prod(self._output_size(spatial))
        r = self.ranks if ranks is None else ranks
        r0, r1 = r[0], r[1]
        g, k = self.groups, math.prod(self.kernel_size)
        c_out, c_in = self.out_channels, self.in_channels
        has0, has1 = 0 in self.factorized_modes, 1 in self.factorized_modes
        # spatial kernel: C ×_s U_s, one mode after the other
        kernel, shape = 0, list(r)
        for i in range(2, 2 + self._ndim):
            if i in self.factorized_modes:
                shape[i] = self.weight_shape[i]
                kernel += math.prod(shape) * r[i]
        fact = g * r0 * r1 * k * p_out if has0 else c_out * r1 * k * p_out
        if has1:
            fact += c_in * r1 * p_in
        if has0:
            fact += c_out * r0 * p_out
        recon = kernel
        full = list(shape)
        for i in (1, 0):
            if i in self.factorized_modes:
                full[i] = self.weight_shape[i]
                recon += math.prod(full) * r[i]
        dense = c_out * (c_in // g) * k * p_out
        return {"factorized": batch * fact + kernel, "dense": batch * dense + recon}

    def _forward_dense(self, x, core, factors):
        x, pad = self._pad(x)
        return self._conv(
            x,
            self.reconstruct(core, factors),
            self.bias,
            self.stride,
            pad,
            self.dilation,
            self.groups,
        )

    def _spatial_kernel(self, core, factors):
        k = core
        for i in range(2, 2 + self._ndim):
            u = factors[i]
            if u is not None:
                k = mode_dot(k, u, i)
        return k

    def _forward_factorized(self, x, core, factors):
        g, ones = self.groups, (1,) * self._ndim
        u0, u1 = factors[0], factors[1]
        kernel = self._spatial_kernel(core, factors)
        r0, r1 = kernel.shape[0], kernel.shape[1]
        h = x
        if u1 is not None:
            w1 = u1.t().reshape(r1, -1, *ones)
            if g > 1:
                w1 = w1.repeat(g, *(1,) * (self._ndim + 1))
            h = self._conv(h, w1, None, 1, 0, 1, g)
        x_mid = h
        h, pad = self._pad(h)
        if u0 is None:
            return self._conv(h, kernel, self.bias, self.stride, pad, self.dilation, g)
        if g > 1:
            kernel = kernel.repeat(g, *(1,) * (self._ndim + 1))
        h = self._conv(h, kernel, None, self.stride, pad, self.dilation, g)
        if (
            self.__dict__.get("_capture_mid")
            and g == 1
            and u1 is not None
            and h.requires_grad
            and all(factors[i] is None for i in range(2, 2 + self._ndim))
        ):
            # U_1ᵀx and, in backward, U_0ᵀ(∂L/∂y): the Galerkin gradient in bases that start
            # with U_0, U_1 then needs the new directions only (_projected_weight_grad_parts)
            mid = MidGradHook(x_mid.detach())
            h.register_hook(mid)
            self.__dict__["_mid_hook"] = mid
        return self._conv(h, u0.reshape(self.out_channels, r0, *ones), self.bias, 1, 0, 1, g)

    # ------------------------------------------------------------------------------------
    # one-pass Galerkin gradient

    def _projected_weight_grad_parts(self, contributions, core_grad, U_hats, leading):
        """``Σ G ×_i Û_iᴴ`` of one backward pass from the recorded intermediates, or None.

        For bases ``Û_0 = [U_0, V_0]``, ``Û_1 = [U_1, V_1]`` that start with the factors of
        the recorded forward (``leading``; spatial modes kept full, no groups) the block
        ``(U_0, U_1)`` is the pass's raw core gradient ``∂L/∂C``; the blocks ``(V_0, Û_1)``
        and ``(U_0, V_1)`` are the weight gradients of two small convolutions over the
        recorded ``U_1ᵀx`` and ``U_0ᵀ(∂L/∂y)`` and the projections by the new directions
        only. None where a contribution lacks them (dense or checkpointed forward, autocast).
        """
        u_out, u_in = U_hats[0], U_hats[1]
        if (
            self.groups != 1
            or u_out is None
            or u_in is None
            or not {0, 1} <= leading
            or any(U_hats[i] is not None for i in range(2, 2 + self._ndim))
            or core_grad is None
            or not contributions
        ):
            return None
        ref = self.core
        r0, r1 = core_grad.shape[0], core_grad.shape[1]
        p0, p1 = u_out.shape[1], u_in.shape[1]
        if p0 < r0 or p1 < r1 or tuple(core_grad.shape[2:]) != tuple(self.kernel_size):
            return None
        if not _mids_recorded(contributions, ref.dtype, r0, r1):
            return None
        ones = (1,) * self._ndim
        new_out, new_in = u_out[:, r0:], u_in[:, r1:]
        out = torch.zeros((p0, p1, *self.kernel_size), dtype=ref.dtype, device=ref.device)
        out[:r0, :r1] = core_grad.to(ref.dtype)
        for c in contributions:
            x, grad_out = c.x.to(ref.dtype), c.grad.to(ref.dtype)
            x_new = None
            if p1 > r1:
                x_new = self._conv(x, new_in.t().reshape(p1 - r1, -1, *ones))
            if p0 > r0:
                g_new = self._conv(grad_out, new_out.t().reshape(p0 - r0, -1, *ones))
                xp = c.x_mid if x_new is None else torch.cat([c.x_mid, x_new], dim=1)
                xp, pad = self._pad(xp)
                size = (p0 - r0, p1, *self.kernel_size)
                out[r0:] += self._conv_weight(xp, size, g_new, self.stride, pad, self.dilation)
            if x_new is not None:
                xq, pad = self._pad(x_new)
                size = (r0, p1 - r1, *self.kernel_size)
                out[:r0, r1:] += self._conv_weight(
                    xq, size, c.grad_mid, self.stride, pad, self.dilation
                )
        return out

    def _partial_weight_grads(self, contributions):
        """``{0: Σ G ×_1 U_1ᴴ, 1: Σ G ×_0 U_0ᴴ}`` from the recorded intermediates, or None.

        The K-step's partial contractions of the weight gradient where only the two channel
        modes are factorized (no groups) and every contribution holds ``U_1ᵀx`` and
        ``U_0ᵀ(∂L/∂y)`` of its factorized forward (for the current factors): each is one
        weight gradient of the convolution with ``r`` instead of ``n`` channels on one side,
        the recorded tensors reused as they are. None where a contribution lacks them.
        """
        if (
            self.groups != 1
            or not contributions
            or self.factor(0) is None
            or self.factor(1) is None
            or any(self.factor(i) is not None for i in range(2, 2 + self._ndim))
        ):
            return None
        ref = self.core
        r0, r1 = ref.shape[0], ref.shape[1]
        if not _mids_recorded(contributions, ref.dtype, r0, r1):
            return None
        out0 = out1 = None
        k = tuple(self.kernel_size)
        with torch.no_grad():
            for c in contributions:
                xm, pad = self._pad(c.x_mid)
                g0 = self._conv_weight(
                    xm, (self.out_channels, r1, *k), c.grad.to(ref.dtype), self.stride, pad,
                    self.dilation,
                )  # fmt: skip
                xq, pad = self._pad(c.x.to(ref.dtype))
                g1 = self._conv_weight(
                    xq, (r0, self.in_channels, *k), c.grad_mid, self.stride, pad, self.dilation
                )
                out0 = g0 if out0 is None else out0 + g0
                out1 = g1 if out1 is None else out1 + g1
        return {0: out0, 1: out1}

    def _weight_grad_norm_factor(self):
        """``c`` with ``‖G‖_F ≤ c ‖x‖_F ‖∂L/∂y‖_F`` for the weight gradient ``G`` of one pass, or
        None (see :meth:`~tuckerflow.nn.recording.GradientRecord.weight_gradient_bound`).

        Each entry of ``G`` is an inner product of an output channel of ``∂L/∂y`` with
        distinct entries of an input channel of the zero-padded ``x`` (any stride and
        dilation), so it is at most their norms' product (Cauchy–Schwarz); the square summed
        over the channels and the ``K`` kernel offsets is at most ``K ‖x‖² ‖∂L/∂y‖²``:
        ``c = √K``. Other padding modes repeat entries of ``x``: None.
        """
        if self.padding_mode != "zeros":
            return None
        return math.sqrt(math.prod(self.kernel_size))

    def _projected_weight_grad(self, x, grad_out, U_hats):
        g = self.groups
        u_out, u_in = U_hats[0], U_hats[1]
        ones = (1,) * self._ndim
        if u_in is not None:
            # a 1×1 convolution per group: channels c of group q are inputs q·C_in/g + c
            w_in = u_in.t().reshape(u_in.shape[1], -1, *ones)
            if g > 1:
                w_in = w_in.repeat(g, *(1,) * (self._ndim + 1))
            x = self._conv(x, w_in, None, 1, 0, 1, g)
        p_in = x.shape[1] // g
        x, pad = self._pad(x)
        if g == 1 and u_out is not None:
            w_out = u_out.t().reshape(u_out.shape[1], -1, *ones)
            grad_out = self._conv(grad_out, w_out)
            project_out = False
        else:
            project_out = u_out is not None
        size = (grad_out.shape[1], p_in, *self.kernel_size)
        w = self._conv_weight(x, size, grad_out, self.stride, pad, self.dilation, g)
        if project_out:
            w = mode_dot(w, u_out.t(), 0)
        for i in range(2, 2 + self._ndim):
            if U_hats[i] is not None:
                w = mode_dot(w, U_hats[i].t(), i)
        return w


class TuckerConv1d(_TuckerConvNd):
    """Tucker-factorized ``nn.Conv1d``: weight ``C ×_0 U_0 ×_1 U_1 ×_2 U_2`` (see TuckerConv2d).

    Examples
    --------
    >>> import torch
    >>> from tuckerflow.nn import TuckerConv1d
    >>> layer = TuckerConv1d(8, 6, 5, padding="same", rank=2)
    >>> layer.ranks, layer(torch.ones(1, 8, 10)).shape
    ((2, 2, 2), torch.Size([1, 6, 10]))
    """

    _ndim = 1
    _dense_type = nn.Conv1d


class TuckerConv2d(_TuckerConvNd):
    """Tucker-factorized ``nn.Conv2d``, a drop-in replacement with the same options.

    The weight ``W`` (``C_out × C_in/groups × k_1 × k_2``) is ``C ×_0 U_0 ×_1 U_1 ×_2 U_2
    ×_3 U_3``, with a factor for each mode not kept full.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias :
        As for ``torch.nn.Conv2d`` (``padding='same'`` includes even kernels and dilation).
    padding_mode : {"zeros", "reflect", "replicate", "circular"}
        As for ``torch.nn.Conv2d``.
    rank : int, float or sequence
        An int caps every factorized mode (``min(rank, n_i)``, lowered to a valid rank), a
        float in (0, 1] is a fraction of each mode size, a sequence of 4 is taken literally
        (None for modes kept full).
    keep_full : None, "spatial", "none" or sequence of int
        Modes without a factor. Default (None): spatial modes of size ≤ 3, whose
        factorization saves at most a handful of parameters; larger kernels are factorized.
        Modes of size 1 are always kept full.
    device, dtype :
        As for ``torch.nn.Conv2d``.

    Notes
    -----
    Factorized forward [1]_: a 1×1 convolution ``C_in → r_1`` with ``U_1ᵀ`` (applied per
    group), a ``k_1 × k_2`` convolution ``r_1 → r_0`` with kernel ``C ×_2 U_2 ×_3 U_3`` that
    carries stride, padding and dilation, and a 1×1 convolution ``r_0 → C_out`` with ``U_0``
    that adds the bias (the bias is added exactly once). Padding commutes with the channel
    mixing, so it is applied to the ``r_1`` projected channels. With ``groups = g`` the middle
    kernel is shared by the groups (``g · r_0`` channels) and the last convolution is
    grouped, which keeps the weight block structure exactly. ``forward_mode="auto"`` compares
    the FLOPs of this path, ``B (C_in r_1 P_in + g r_0 r_1 k P_out + C_out r_0 P_out)``, with
    those of the reconstructed kernel, ``B C_out (C_in/g) k P_out``, per call.

    References
    ----------
    .. [1] Zangrando, Schotthöfer, Ceruti, Kusch & Tudisco, NeurIPS 2024, arXiv:2305.19059.

    Examples
    --------
    >>> import torch
    >>> from tuckerflow.nn import TuckerConv2d
    >>> layer = TuckerConv2d(16, 32, 3, padding=1, rank=4)
    >>> layer.ranks, layer.factorized_modes
    ((4, 4, 3, 3), (0, 1))
    >>> layer(torch.ones(2, 16, 8, 8)).shape
    torch.Size([2, 32, 8, 8])
    """

    _ndim = 2
    _dense_type = nn.Conv2d


class TuckerConv3d(_TuckerConvNd):
    """Tucker-factorized ``nn.Conv3d`` (see :class:`TuckerConv2d`).

    Examples
    --------
    >>> import torch
    >>> from tuckerflow.nn import TuckerConv3d
    >>> layer = TuckerConv3d(4, 6, 3, rank=2)
    >>> layer(torch.ones(1, 4, 5, 5, 5)).shape
    torch.Size([1, 6, 3, 3, 3])
    """

    _ndim = 3
    _dense_type = nn.Conv3d
