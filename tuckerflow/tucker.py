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

import warnings
from collections.abc import Sequence
from numbers import Number
from typing import Any

import numpy as np
import tensorly as tl
from tensorly import tucker_tensor as _tl_tucker
from tensorly.tenalg import mode_dot as _tl_mode_dot
from tensorly.tenalg import multi_mode_dot as _tl_multi_mode_dot

from ._backend import (
    astype,
    check_finite,
    check_tensor,
    conj_t,
    context,
    device_of,
    dtype_name,
    eps,
    safe_norm,
)
from ._host import to_host
from .ranks import RankSpec, default_order, rank_spec
from .recompression import TRUNCATION_METHODS, TruncationInfo, recompress
from .typing import Rank, Tensor, TuckerLike

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
    "TuckerZeroDivisionError",
]


class TuckerZeroDivisionError(ZeroDivisionError, ValueError):
    """``Y / 0`` for a Tucker tensor: both a ``ZeroDivisionError`` and a ``ValueError``."""


def _is_scalar(a) -> bool:
    if isinstance(a, bool):
        return False
    return isinstance(a, Number) or (tl.is_tensor(a) and tl.ndim(a) == 0)


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

    def __init__(self, core: Tensor, factors: Sequence[Tensor] | None = None) -> None:
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

    core: Any
    factors: list

    # NumPy scalars and arrays defer to our reflected operators (``np.float64(2) * Y``)
    __array_ufunc__ = None
    __array_priority__ = 1000

    # shape and rank are read from the arrays, never cached: TensorLy's in-place helpers
    # (``tucker_mode_dot(copy=False)``, ``Y[1] = …``) replace factors behind our back
    @property
    def shape(self) -> tuple[int, ...]:
        """``(n_1, …, n_d)``, the row counts of the factors."""
        return tuple(int(tl.shape(u)[0]) for u in self.factors)

    @shape.setter
    def shape(self, value: Any) -> None:  # TensorLy's constructor assigns it; we derive it
        pass

    @property
    def rank(self) -> tuple[int, ...]:
        """``(r_1, …, r_d)``, the shape of the core."""
        return tuple(int(n) for n in tl.shape(self.core))

    @rank.setter
    def rank(self, value: Any) -> None:
        pass

    def __setitem__(self, index, value):
        if index not in (0, 1):
            raise IndexError(f"index {index} of a Tucker tensor: 0 is the core, 1 the factors")
        core, factors = (value, self.factors) if index == 0 else (self.core, value)
        core, factors = _validated(core, factors)
        self.core, self.factors = core, factors

    # -- TensorLy's methods, returning this class -------------------------------------------
    def tucker_copy(self) -> TuckerTensor:
        """A deep copy (new arrays)."""
        return TuckerTensor(tl.copy(self.core), [tl.copy(u) for u in self.factors])

    def mode_dot(
        self, matrix_or_vector: Tensor, mode: int, keep_dim: bool = False, copy: bool | None = None
    ) -> TuckerTensor:
        """``self ×_mode M``: see :func:`tuckerflow.mode_dot` (``self`` is not modified).

        ``copy`` is accepted for compatibility with TensorLy and has no effect (deprecated):
        the result never shares a modified factor with ``self``.
        """
        if copy is not None:
            warnings.warn(
                "TuckerTensor.mode_dot(copy=...) has no effect: the tensor is never modified",
                DeprecationWarning,
                stacklevel=2,
            )
        return mode_dot(self, matrix_or_vector, mode, keep_dim=keep_dim)

    def normalize(self) -> TuckerTensor:
        """Scale every factor column to unit norm, absorbing the norms into the core.

        In place, as TensorLy's method; also returns ``self``.
        """
        core, factors = _tl_tucker.tucker_normalize(self)
        self.core, self.factors = _validated(core, list(factors))
        return self

    # -- arithmetic -------------------------------------------------------------------------
    def __add__(self, other: TuckerLike) -> TuckerTensor:
        if not isinstance(other, (_tl_tucker.TuckerTensor, tuple, list)):
            return NotImplemented
        return add(self, other)

    def __sub__(self, other):
        if not isinstance(other, (_tl_tucker.TuckerTensor, tuple, list)):
            return NotImplemented
        return add(self, other, beta=-1.0)

    def __neg__(self):
        return scale(self, -1.0)

    def __mul__(self, a: Any) -> TuckerTensor:
        if not _is_scalar(a):
            return NotImplemented
        return scale(self, a)

    __rmul__ = __mul__

    def __truediv__(self, a):
        if not _is_scalar(a):
            return NotImplemented
        if not tl.is_tensor(a) and a == 0:
            raise TuckerZeroDivisionError("division of a Tucker tensor by zero")
        if tl.is_tensor(a) and float(np.abs(to_host(a, dtype=None))) == 0.0:
            raise TuckerZeroDivisionError("division of a Tucker tensor by zero")
        return scale(self, 1.0 / a)

    def inner(self, other: TuckerLike | Tensor) -> Tensor:
        """Compressed inner product ``⟨self, other⟩``; see :func:`tuckerflow.inner`."""
        return inner(self, other)

    def norm(self) -> Tensor:
        """Frobenius norm without densifying; see :func:`tuckerflow.norm`."""
        return norm(self)

    @property
    def dtype(self) -> Any:
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


def as_tucker(y: TuckerLike, name: str = "Y") -> TuckerTensor:
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


def inner(y: TuckerLike, z: TuckerLike | Tensor) -> Tensor:
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


def norm(y: TuckerLike) -> Tensor:
    """Frobenius norm of a Tucker tensor without densifying.

    Notes
    -----
    The factors are orthonormalised by thin QR, ``U_i = Q_i R_i``, and
    ``‖Y‖ = ‖C ×_i R_i‖``. Unlike ``sqrt(⟨Y, Y⟩)`` through Gram matrices this keeps relative
    accuracy when ``Y`` is a difference of nearly equal tensors. The last norm divides by
    the largest entry before squaring (as LAPACK's ``nrm2``), so cores from about ``1e-300``
    to ``1e300`` give the right value. Plain arithmetic: NaN propagates.
    """
    y = as_tucker(y, "Y")
    rs = [tl.qr(u)[1] for u in y.factors]
    return safe_norm(_tl_multi_mode_dot(y.core, rs))


def scale(y: TuckerLike, a: Any) -> TuckerTensor:
    """``a · Y`` (only the core is scaled; a complex ``a`` makes a real ``Y`` complex).

    Plain arithmetic: a NaN or infinite ``a`` propagates as IEEE arithmetic does.
    """
    y = as_tucker(y, "Y")
    if not _is_scalar(a):
        raise TypeError(f"a must be a scalar (a number or a 0-d tensor), got {type(a).__name__}")
    core = y.core * a
    factors = list(y.factors)
    if dtype_name(core) != dtype_name(y.core):
        factors = [astype(u, dtype_name(core)) for u in factors]
    return TuckerTensor(core, factors)


def add(
    y: TuckerLike,
    z: TuckerLike,
    *,
    alpha: Any = 1.0,
    beta: Any = 1.0,
    rtol: float | str | None = "roundoff",
    atol: float | None = None,
    max_rank: Rank | None = None,
) -> TuckerTensor:
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
    truncated by ST-HOSVD, never forming the dense tensor. Since the recompression decides
    ranks, non-finite input is refused with a ``ValueError``.
    """
    y = as_tucker(y, "Y")
    z = as_tucker(z, "Z")
    _check_compatible(y, z)
    if dtype_name(y.core) != dtype_name(z.core):
        raise TypeError(f"Y has dtype {dtype_name(y.core)} but Z has dtype {dtype_name(z.core)}")
    factors = [tl.concatenate([u, w], axis=1) for u, w in zip(y.factors, z.factors)]
    core = _block_diagonal(y.core * alpha, z.core * beta)
    s = TuckerTensor(core, factors)
    if isinstance(rtol, str):
        if rtol != "roundoff":
            raise ValueError(f"rtol must be a number, None or 'roundoff', got {rtol!r}")
        rtol = 4.0 * len(y.shape) * eps(y.core)
    return _truncate_tucker(s, None, rtol=rtol, atol=atol, max_rank=max_rank)[0]


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


def _check_mode(mode, d):
    if isinstance(mode, bool) or not isinstance(mode, (int, np.integer)):
        raise TypeError(f"mode must be an integer, got {mode!r}")
    if not -d <= mode < d:
        raise ValueError(f"mode={mode} is out of range for a tensor with {d} modes")
    return int(mode) % d


def mode_dot(y: TuckerLike | Tensor, matrix: Tensor, mode: int, *, keep_dim: bool = False) -> Any:
    """Mode-``mode`` product ``Y ×_mode M``, a new tensor of the kind of ``Y``.

    The one meaning of ``mode_dot`` in tuckerflow, TensorLy's: ``Mat_mode(Y ×_mode M) =
    M Mat_mode(Y)``. ``Y`` is never modified.

    Parameters
    ----------
    y : Tucker tensor or dense tensor
        For a Tucker tensor only the factor changes, ``U_mode ← M U_mode`` (in general no
        longer orthonormal: use :func:`orthonormalize` or :func:`tuckerflow.truncate`); a dense
        tensor goes through ``tensorly.tenalg.mode_dot``.
    matrix : tensor, shape ``(m, n_mode)``, or a vector of shape ``(n_mode,)``
        A vector contracts the mode away (the result has one mode less), unless
        ``keep_dim=True``, which treats it as a ``1 × n_mode`` matrix.
    mode : int

    Examples
    --------
    >>> import numpy as np, tuckerflow as tf
    >>> Y = tf.random_tucker((4, 3, 2), 2, rng=0)
    >>> M = np.ones((5, 4))
    >>> tf.mode_dot(Y, M, 0).shape
    (5, 3, 2)
    >>> bool(np.allclose(tf.mode_dot(Y, M, 0).to_tensor(), tf.mode_dot(Y.to_tensor(), M, 0)))
    True
    """
    check_tensor(matrix, "matrix")
    if tl.is_tensor(y):
        d = tl.ndim(y)
        mode = _check_mode(mode, d)
        _check_operand(matrix, tuple(tl.shape(y)), mode)
        if tl.ndim(matrix) == 1 and keep_dim:
            matrix = tl.reshape(matrix, (1, -1))
        return _tl_mode_dot(y, matrix, mode)
    y = as_tucker(y, "Y")
    d = len(y.shape)
    mode = _check_mode(mode, d)
    _check_operand(matrix, y.shape, mode)
    if dtype_name(matrix) != dtype_name(y.core):
        raise TypeError(f"matrix has dtype {dtype_name(matrix)} but Y has {dtype_name(y.core)}")
    factors = list(y.factors)
    if tl.ndim(matrix) == 1:
        if keep_dim:
            matrix = tl.reshape(matrix, (1, -1))
        elif d == 1:
            raise ValueError("contracting the only mode of a 1-d Tucker tensor leaves a scalar")
        else:
            vec = tl.dot(matrix, factors[mode])
            core = _tl_mode_dot(y.core, vec, mode)
            return TuckerTensor(core, factors[:mode] + factors[mode + 1 :])
    factors[mode] = tl.dot(matrix, factors[mode])
    return TuckerTensor(y.core, factors)


def _check_operand(matrix, shape, mode):
    nd = tl.ndim(matrix)
    n = shape[mode]
    if nd == 2 and tl.shape(matrix)[1] == n or nd == 1 and tl.shape(matrix)[0] == n:
        return
    raise ValueError(
        f"matrix.shape={tuple(tl.shape(matrix))} must be (m, {n}) (or ({n},) for a vector) "
        f"to multiply mode {mode} of a tensor of shape {tuple(shape)}"
    )


def multi_mode_dot(
    y: TuckerLike | Tensor, matrices: Sequence[Tensor], modes: Sequence[int] | None = None
) -> Any:
    """``Y ×_{modes[0]} matrices[0] ×_{modes[1]} matrices[1] ⋯`` (see :func:`mode_dot`).

    ``modes`` defaults to ``0, 1, …``; it must have one entry per matrix, without repeats.
    """
    if isinstance(matrices, (str, bytes)) or not isinstance(matrices, Sequence):
        raise TypeError(f"matrices must be a sequence of matrices, got {type(matrices).__name__}")
    matrices = list(matrices)
    if modes is None:
        modes = list(range(len(matrices)))
    elif isinstance(modes, (str, bytes)) or not isinstance(modes, Sequence):
        raise TypeError(f"modes must be a sequence of ints, got {type(modes).__name__}")
    modes = list(modes)
    if len(modes) != len(matrices):
        raise ValueError(
            f"{len(matrices)} matrices but {len(modes)} modes; give one mode per matrix"
        )
    d = len(tl.shape(y)) if tl.is_tensor(y) else len(as_tucker(y, "Y").shape)
    resolved = [_check_mode(m, d) for m in modes]
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"modes={modes} repeats a mode")
    if not tl.is_tensor(y):
        y = as_tucker(y, "Y")
    for m, mat in zip(resolved, matrices):
        if tl.is_tensor(mat) and tl.ndim(mat) != 2:
            raise ValueError("multi_mode_dot takes matrices; contract vectors with mode_dot")
        y = mode_dot(y, mat, m)
    return y


def orthonormalize(y: TuckerLike) -> TuckerTensor:
    """Same tensor with orthonormal factors: ``U_i = Q_i R_i`` (thin QR), ``C ← C ×_i R_i``.

    Ranks above ``n_i`` shrink to ``n_i`` (exact). A QR decides nothing here but a
    non-orthonormal result would be silent: non-finite factors are refused (``ValueError``).
    """
    y = as_tucker(y, "Y")
    check_finite(y.core, "Y.core")
    for i, u in enumerate(y.factors):
        check_finite(u, f"Y.factors[{i}]")
    qs, rs = zip(*(tl.qr(u) for u in y.factors))
    return TuckerTensor(_tl_multi_mode_dot(y.core, list(rs)), list(qs))


def _truncate_tucker(
    y: TuckerTensor,
    rank=None,
    *,
    rtol=None,
    atol=None,
    max_rank=None,
    min_rank=None,
    method="st_hosvd",
) -> tuple[TuckerTensor, TruncationInfo]:
    """Recompression of a Tucker tensor: QR of the factors, the kernel on the small core.

    The implementation of :func:`tuckerflow.truncate` (documented there) and of :func:`add`.
    """
    if method not in TRUNCATION_METHODS:
        raise ValueError(f"method={method!r} is not one of {TRUNCATION_METHODS}")
    shape = tuple(y.shape)
    for i, u in enumerate(y.factors):
        check_finite(u, f"Y.factors[{i}]")
    check_finite(y.core, "Y.core")
    spec = rank_spec(shape, rank, rtol, atol, max_rank, min_rank)
    qs, rs = zip(*(tl.qr(u) for u in y.factors))
    core = _tl_multi_mode_dot(y.core, list(rs))
    cshape = tuple(tl.shape(core))
    if spec.fixed is not None and any(a > b for a, b in zip(spec.fixed, cshape)):
        i = next(i for i in range(len(shape)) if spec.fixed[i] > cshape[i])
        raise ValueError(
            f"rank[{i}]={spec.fixed[i]} exceeds the rank of Y in mode {i} ({cshape[i]})"
        )
    # ranks cannot exceed the (possibly smaller) orthonormalised core
    inner: RankSpec = spec.clamped(cshape)
    order = default_order(cshape, inner) if method == "st_hosvd" else None
    small, p_list, info = recompress(
        core, inner, method=method, order=order, svd_method="svd", name="Y.core"
    )
    factors = [tl.dot(q, p) for q, p in zip(qs, p_list)]
    return TuckerTensor(small, factors), info
