"""Tucker tensors and their algebra in compressed form.

A Tucker tensor ``Y = C ×_1 U_1 ⋯ ×_d U_d`` is stored as TensorLy stores it: a core ``C`` of
shape ``r`` and factor matrices ``U_i`` of shape ``(n_i, r_i)``. Every function here accepts a
:class:`TuckerTensor`, TensorLy's ``TuckerTensor`` or a plain ``(core, factors)`` pair, and none
of them forms the dense tensor.

References
----------
.. [KB09] T. G. Kolda and B. W. Bader, "Tensor decompositions and applications",
   SIAM Review 51(3), 2009.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Number

import tensorly as tl
from tensorly import tucker_tensor as _tl_tucker
from tensorly.tenalg import multi_mode_dot as _tl_multi_mode_dot

from ._backend import check_tensor, conj_t, context, device_of, dtype_name, eps

__all__ = [
    "TuckerTensor",
    "add",
    "as_tucker",
    "inner",
    "mode_dot",
    "multi_mode_dot",
    "norm",
    "orthonormalize",
    "scale",
]


class TuckerTensor(_tl_tucker.TuckerTensor):
    """A tensor in Tucker format, ``core ×_1 factors[0] ⋯ ×_d factors[d-1]``.

    A subclass of TensorLy's ``TuckerTensor``: it unpacks as ``core, factors = Y``, works with
    every TensorLy function, and adds compressed arithmetic (``Y + Z``, ``Y - Z``, ``a * Y``,
    ``-Y``), :meth:`inner` and :meth:`norm`.

    Parameters
    ----------
    core : tensor, shape ``(r_1, …, r_d)``
    factors : sequence of d tensors, ``factors[i]`` of shape ``(n_i, r_i)``

    ``TuckerTensor((core, factors))`` (one pair, TensorLy's form) is accepted as well.

    Examples
    --------
    >>> import numpy as np, tuckerflow as tf
    >>> Y = tf.random_tucker((6, 5, 4), (2, 2, 2), rng=0)
    >>> Y.shape, Y.rank
    ((6, 5, 4), (2, 2, 2))
    >>> bool(np.isclose(tf.norm(Y), np.linalg.norm(Y.to_tensor())))
    True
    """

    def __init__(self, core, factors=None):
        if factors is None:
            if isinstance(core, _tl_tucker.TuckerTensor) or (
                isinstance(core, (tuple, list)) and len(core) == 2
            ):
                core, factors = core
            else:
                raise TypeError(
                    "TuckerTensor expects (core, factors) or a single (core, factors) pair"
                )
        core, factors = _validated(core, factors)
        super().__init__((core, factors))

    # -- arithmetic -------------------------------------------------------------------------
    def __add__(self, other):
        return add(self, other)

    def __sub__(self, other):
        return add(self, other, beta=-1.0)

    def __neg__(self):
        return scale(self, -1.0)

    def __mul__(self, a):
        if not isinstance(a, Number) and not (tl.is_tensor(a) and tl.ndim(a) == 0):
            return NotImplemented
        return scale(self, a)

    __rmul__ = __mul__

    def __truediv__(self, a):
        if not isinstance(a, Number) and not (tl.is_tensor(a) and tl.ndim(a) == 0):
            return NotImplemented
        return scale(self, 1.0 / a)

    def inner(self, other):
        """Compressed inner product ``⟨self, other⟩``; see :func:`tuckerflow.inner`."""
        return inner(self, other)

    def norm(self):
        """Frobenius norm without densifying; see :func:`tuckerflow.norm`."""
        return norm(self)

    @property
    def dtype(self):
        return self.core.dtype

    @property
    def ndim(self) -> int:
        return len(self.factors)

    def __repr__(self) -> str:
        return (
            f"TuckerTensor(shape={self.shape}, rank={self.rank}, dtype={dtype_name(self.core)}, "
            f"backend={tl.get_backend()!r})"
        )


def _validated(core, factors):
    check_tensor(core, "core")
    if not isinstance(factors, Sequence) or isinstance(factors, (str, bytes)):
        raise TypeError(f"factors must be a sequence of matrices, got {type(factors).__name__}")
    factors = list(factors)
    if tl.ndim(core) != len(factors):
        raise ValueError(
            f"core has {tl.ndim(core)} modes but {len(factors)} factors were given; "
            "a Tucker tensor needs one factor per mode of the core"
        )
    cdt, cdev = dtype_name(core), device_of(core)
    for i, u in enumerate(factors):
        check_tensor(u, f"factors[{i}]")
        if tl.ndim(u) != 2:
            raise ValueError(f"factors[{i}] must be a matrix, got {tl.ndim(u)} dimensions")
        if tl.shape(u)[1] != tl.shape(core)[i]:
            raise ValueError(
                f"factors[{i}] has {tl.shape(u)[1]} columns but "
                f"core.shape[{i}]={tl.shape(core)[i]}; factors[i].shape[1] must equal core.shape[i]"
            )
        if dtype_name(u) != cdt:
            raise TypeError(f"factors[{i}] has dtype {dtype_name(u)} but core has dtype {cdt}")
        if device_of(u) != cdev:
            raise ValueError(f"factors[{i}] is on device {device_of(u)!r} but core is on {cdev!r}")
    return core, factors


def as_tucker(y, name: str = "Y") -> TuckerTensor:
    """Return ``y`` as a :class:`TuckerTensor` (no copy), validating it once.

    Accepts a :class:`TuckerTensor`, TensorLy's ``TuckerTensor`` or a ``(core, factors)`` pair.
    """
    if isinstance(y, TuckerTensor):
        check_tensor(y.core, f"{name}.core")  # the active backend may have changed since
        return y
    if isinstance(y, _tl_tucker.TuckerTensor) or (isinstance(y, (tuple, list)) and len(y) == 2):
        core, factors = y
        try:
            return TuckerTensor(core, factors)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name}: {exc}") from None
    raise TypeError(
        f"{name} must be a Tucker tensor (tuckerflow.TuckerTensor, tensorly TuckerTensor or a "
        f"(core, factors) pair), got {type(y).__name__}"
    )


def _check_compatible(y: TuckerTensor, z: TuckerTensor, names=("Y", "Z")):
    if tuple(y.shape) != tuple(z.shape):
        raise ValueError(f"{names[0]}.shape={y.shape} differs from {names[1]}.shape={z.shape}")
    if device_of(y.core) != device_of(z.core):
        raise ValueError(
            f"{names[0]} is on device {device_of(y.core)!r} but {names[1]} is on "
            f"{device_of(z.core)!r}"
        )


def inner(y, z):
    """Inner product ``⟨Y, Z⟩ = Σ conj(Y) Z`` in compressed form.

    Parameters
    ----------
    y : Tucker tensor
    z : Tucker tensor or dense tensor of the same shape

    Returns
    -------
    0-d tensor of the backend (complex if either argument is complex).

    Notes
    -----
    With ``Y = C ×_i U_i`` and ``Z = D ×_i W_i``,
    ``⟨Y, Z⟩ = ⟨C, D ×_i (U_iᴴ W_i)⟩``, costing ``O(Σ_i n_i r_i s_i + ∏ r_i · Σ s_i)``;
    the dense tensor is never formed. For a dense ``Z``,
    ``⟨Y, Z⟩ = ⟨C, Z ×_i U_iᴴ⟩``. Conjugate-linear in the first argument, as ``numpy.vdot``.
    """
    y = as_tucker(y, "Y")
    if tl.is_tensor(z):
        if tuple(tl.shape(z)) != tuple(y.shape):
            raise ValueError(f"Z.shape={tuple(tl.shape(z))} differs from Y.shape={y.shape}")
        proj = _tl_multi_mode_dot(z, [conj_t(u) for u in y.factors])
        return tl.sum(tl.conj(y.core) * proj)
    z = as_tucker(z, "Z")
    _check_compatible(y, z)
    mats = [tl.dot(conj_t(u), w) for u, w in zip(y.factors, z.factors)]
    proj = _tl_multi_mode_dot(z.core, mats)
    return tl.sum(tl.conj(y.core) * proj)


def norm(y):
    """Frobenius norm of a Tucker tensor without densifying.

    Notes
    -----
    The factors are orthonormalised by thin QR, ``U_i = Q_i R_i``, and
    ``‖Y‖ = ‖C ×_i R_i‖``. Unlike ``sqrt(⟨Y, Y⟩)`` through Gram matrices this keeps relative
    accuracy when ``Y`` is a difference of nearly equal tensors.
    """
    y = as_tucker(y, "Y")
    rs = [tl.qr(u)[1] for u in y.factors]
    return tl.norm(_tl_multi_mode_dot(y.core, rs))


def scale(y, a):
    """``a · Y`` (only the core is scaled)."""
    y = as_tucker(y, "Y")
    return TuckerTensor(y.core * a, list(y.factors))


def add(y, z, *, alpha=1.0, beta=1.0, rtol="roundoff", atol=None, max_rank=None):
    """``alpha · Y + beta · Z`` as a Tucker tensor with orthonormal factors.

    Parameters
    ----------
    y, z : Tucker tensors of the same shape
    alpha, beta : scalars
    rtol, atol, max_rank :
        Recompression of the exact rank-``(r + s)`` sum by :func:`tuckerflow.truncate`.
        The default ``rtol="roundoff"`` drops only directions at the level of round-off
        (``rtol = 4 · d · eps``), so ``Y + Y`` has rank ``r`` and the result equals the sum to
        round-off. ``rtol=None`` keeps the full concatenated rank (made valid).

    Notes
    -----
    The exact sum has factors ``[U_i, W_i]`` and the block-diagonal core
    ``diag(alpha C, beta D)``; its factors are orthonormalised by QR and the small core is
    truncated by ST-HOSVD, never forming the dense tensor.
    """
    from .truncation import truncate

    y = as_tucker(y, "Y")
    z = as_tucker(z, "Z")
    _check_compatible(y, z)
    if dtype_name(y.core) != dtype_name(z.core):
        raise TypeError(f"Y has dtype {dtype_name(y.core)} but Z has dtype {dtype_name(z.core)}")
    factors = [tl.concatenate([u, w], axis=1) for u, w in zip(y.factors, z.factors)]
    core = _block_diagonal(y.core * alpha, z.core * beta)
    s = TuckerTensor(core, factors)
    if rtol == "roundoff":
        rtol = 4.0 * len(y.shape) * eps(y.core)
    return truncate(s, rtol=rtol, atol=atol, max_rank=max_rank)


def _block_diagonal(a, b):
    """Core of a sum: ``a`` in the leading block, ``b`` in the trailing block, zeros elsewhere."""
    ra, rb = tl.shape(a), tl.shape(b)
    out = a
    for i in range(len(ra)):
        pad_shape = list(tl.shape(out))
        pad_shape[i] = rb[i]
        out = tl.concatenate([out, tl.zeros(tuple(pad_shape), **context(a))], axis=i)
    low = b
    for i in range(len(rb)):
        pad_shape = list(tl.shape(low))
        pad_shape[i] = ra[i]
        low = tl.concatenate([tl.zeros(tuple(pad_shape), **context(b)), low], axis=i)
    return out + low


def mode_dot(y, matrix, mode: int):
    """Mode-``mode`` product ``Y ×_mode M`` of a Tucker tensor: ``U_mode ← M U_mode``.

    The result's factor in that mode is in general no longer orthonormal; use
    :func:`orthonormalize` or :func:`tuckerflow.truncate` to restore it.
    """
    y = as_tucker(y, "Y")
    check_tensor(matrix, "matrix")
    d = len(y.shape)
    if not -d <= mode < d:
        raise ValueError(f"mode={mode} is out of range for a tensor with {d} modes")
    mode %= d
    if tl.ndim(matrix) != 2 or tl.shape(matrix)[1] != y.shape[mode]:
        raise ValueError(
            f"matrix.shape={tuple(tl.shape(matrix))} must be (m, {y.shape[mode]}) to multiply "
            f"mode {mode} of a tensor of shape {y.shape}"
        )
    factors = list(y.factors)
    factors[mode] = tl.dot(matrix, factors[mode])
    return TuckerTensor(y.core, factors)


def multi_mode_dot(y, matrices, modes=None):
    """``Y ×_{modes[0]} matrices[0] ×_{modes[1]} matrices[1] ⋯`` in Tucker form."""
    modes = range(len(matrices)) if modes is None else modes
    for m, mat in zip(modes, matrices):
        y = mode_dot(y, mat, m)
    return as_tucker(y)


def orthonormalize(y):
    """Same tensor with orthonormal factors: ``U_i = Q_i R_i`` (thin QR), ``C ← C ×_i R_i``.

    Ranks above ``n_i`` shrink to ``n_i`` (exact).
    """
    y = as_tucker(y, "Y")
    qs, rs = zip(*(tl.qr(u) for u in y.factors))
    return TuckerTensor(_tl_multi_mode_dot(y.core, list(rs)), list(qs))
