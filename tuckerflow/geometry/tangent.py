"""Tangent vectors of the manifold of Tucker tensors of fixed multilinear rank."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Number
from typing import Any

import tensorly as tl

from .._backend import check_tensor, conj_t, context, dtype_name, eps, to_float
from ..tucker import TuckerTensor
from ..typing import Tensor, TuckerLike
from ._point import check_point, same_point, v_factors

__all__ = ["TuckerTangent"]

#: The gauge is accepted when ``‖U_iᴴ δK_i‖ ≤ GAUGE_FACTOR · eps · max(n_i, r_i) · ‖ξ‖``.
GAUGE_FACTOR = 100.0


class _Base:
    """A base point with its V-factors, computed once and shared by all its tangent vectors."""

    __slots__ = ("point", "qs", "ss")

    def __init__(self, point: TuckerTensor):
        self.point = point
        self.qs, self.ss = v_factors(point.core)


class TuckerTangent:
    """A tangent vector ``ξ ∈ T_Y M_r`` at a Tucker tensor ``Y = C ×_i U_i``.

    ``ξ = δC ×_i U_i + Σ_i C ×_i δU_i ×_{j≠i} U_j`` with the gauge ``U_iᴴ δU_i = 0``.

    Parameters
    ----------
    point : Tucker tensor
        The base point ``Y``; its factors must have orthonormal columns (checked, never
        corrected) and its core full multilinear rank.
    dcore : tensor, shape ``Y.rank``
        ``δC``.
    dfactors : sequence of d tensors, ``dfactors[i]`` of shape ``(n_i, r_i)``
        ``δU_i`` with ``U_iᴴ δU_i = 0`` (checked to round-off; a ``ValueError`` otherwise).

    Attributes
    ----------
    point : TuckerTensor
    dcore : tensor
    dfactors : list of tensors
        ``δU_i``, computed on access from the stored :attr:`scaled_dfactors`.
    scaled_dfactors : list of tensors
        ``δK_i = δU_i S_i`` with ``Mat_i(C) = S_i Q_iᴴ`` (thin QR of ``Mat_i(C)ᴴ``).

    Notes
    -----
    The vector is stored as ``(δC, δK_1, …, δK_d)`` with ``δK_i = δU_i S_i``: the ``i``-th
    term is ``Ten_i(δK_i V_iᴴ)`` with ``V_i = (⊗_{j≠i} U_j) Q_i`` orthonormal, so that

    * the inner product is the Frobenius product of the embedded tensors without any Gram
      matrix: ``⟨ξ, η⟩ = ⟨δC_ξ, δC_η⟩ + Σ_i ⟨δK_i^ξ, δK_i^η⟩`` (the ``d + 1`` terms of a
      tangent vector are mutually orthogonal because of the gauge);
    * the projection (:func:`tuckerflow.project`) needs no inverse of ``Mat_i(C)``;
    * ``δU_i = δK_i S_i^{-1}`` (one small triangular solve) only when :attr:`dfactors` is read.

    Sums, differences and scalings act on the components; both operands must share the base
    point (the same arrays, or equal to round-off), otherwise a ``ValueError`` is raised.

    References
    ----------
    .. [1] O. Koch and C. Lubich, "Dynamical tensor approximation", SIAM J. Matrix Anal. Appl.
       31(5), 2010.

    Examples
    --------
    >>> import numpy as np, tuckerflow as tf
    >>> Y = tf.random_tucker((6, 5, 4), (2, 2, 2), rng=0)
    >>> xi = tf.project(Y, np.ones((6, 5, 4)))
    >>> bool(np.isclose(xi.norm(), np.linalg.norm(xi.to_tensor())))
    True
    >>> bool(np.isclose((2 * xi).inner(xi), 2 * xi.norm() ** 2))
    True
    """

    __slots__ = ("_base", "_dcore", "_dk")
    __array_priority__ = 1000  # NumPy scalars defer to __rmul__

    def __init__(self, point: TuckerLike, dcore: Tensor, dfactors: Sequence[Tensor]) -> None:
        point = check_point(point, "point")
        base = _Base(point)
        dcore, dfactors = _check_components(point, dcore, dfactors)
        dk = [tl.dot(du, s) for du, s in zip(dfactors, base.ss)]
        self._set(base, dcore, dk)
        self._check_gauge("dfactors", "U_iᴴ δU_i")

    def _check_gauge(self, name, what):
        total = to_float(self.norm())
        for i, (u, k) in enumerate(zip(self.point.factors, self._dk)):
            g = to_float(tl.norm(tl.dot(conj_t(u), k)))
            tol = GAUGE_FACTOR * eps(u) * max(tl.shape(u)) * total
            if not g <= tol:
                raise ValueError(
                    f"{name}[{i}] violates the gauge {what} = 0: ‖U_iᴴ δK_i‖={g:.3g} exceeds "
                    f"{tol:.3g} (100·eps·max(n, r)·‖ξ‖); project it first with (I − U_i U_iᴴ) "
                    "or use tuckerflow.project"
                )

    def _set(self, base, dcore, dk):
        self._base = base
        self._dcore = dcore
        self._dk = list(dk)

    @classmethod
    def _from_scaled(cls, base: _Base, dcore, dk) -> TuckerTangent:
        out = cls.__new__(cls)
        out._set(base, dcore, dk)
        return out

    @classmethod
    def from_scaled(
        cls, point: TuckerLike, dcore: Tensor, scaled_dfactors: Sequence[Tensor]
    ) -> TuckerTangent:
        """Build from ``(δC, δK_1, …, δK_d)`` with ``δK_i = δU_i S_i`` (see Notes of the class).

        Each ``δK_i`` must satisfy the gauge ``U_iᴴ δK_i = 0`` (checked).
        """
        point = check_point(point, "point")
        dcore, dk = _check_components(point, dcore, scaled_dfactors, "scaled_dfactors")
        out = cls._from_scaled(_Base(point), dcore, dk)
        out._check_gauge("scaled_dfactors", "U_iᴴ δK_i")
        return out

    @classmethod
    def zeros(cls, point: TuckerLike) -> TuckerTangent:
        """The zero tangent vector at ``point``."""
        point = check_point(point, "point")
        base = _Base(point)
        dk = [tl.zeros(tl.shape(u), **context(u)) for u in point.factors]
        return cls._from_scaled(base, tl.zeros(tl.shape(point.core), **context(point.core)), dk)

    # -- components --------------------------------------------------------------------------
    @property
    def point(self) -> TuckerTensor:
        return self._base.point

    @property
    def dcore(self) -> Tensor:
        return self._dcore

    @property
    def scaled_dfactors(self) -> list:
        return list(self._dk)

    @property
    def dfactors(self) -> list:
        out = []
        for k, s in zip(self._dk, self._base.ss):
            # δU_i S_i = δK_i  ⇔  S_iᴴ δU_iᴴ = δK_iᴴ
            out.append(conj_t(tl.solve(conj_t(s), conj_t(k))))
        return out

    @property
    def shape(self) -> tuple:
        return tuple(self.point.shape)

    @property
    def rank(self) -> tuple:
        return tuple(self.point.rank)

    @property
    def dtype(self) -> Any:
        return self._dcore.dtype

    def __repr__(self) -> str:
        return (
            f"TuckerTangent(shape={self.shape}, rank={self.rank}, "
            f"dtype={dtype_name(self._dcore)}, backend={tl.get_backend()!r})"
        )

    # -- vector space ------------------------------------------------------------------------
    def _check_same_base(self, other, op):
        if not isinstance(other, TuckerTangent):
            raise TypeError(f"cannot {op} a TuckerTangent and a {type(other).__name__}")
        if other._base is self._base:
            return
        ok, why = same_point(self.point, other.point)
        if not ok:
            raise ValueError(
                f"cannot {op} tangent vectors at different base points ({why}); transport one "
                "of them first (tuckerflow.transport)"
            )

    def __add__(self, other: TuckerTangent) -> TuckerTangent:
        self._check_same_base(other, "add")
        dk = [a + b for a, b in zip(self._dk, other._dk)]
        return TuckerTangent._from_scaled(self._base, self._dcore + other._dcore, dk)

    def __sub__(self, other):
        self._check_same_base(other, "subtract")
        dk = [a - b for a, b in zip(self._dk, other._dk)]
        return TuckerTangent._from_scaled(self._base, self._dcore - other._dcore, dk)

    def __neg__(self):
        return self * -1.0

    def __mul__(self, a: Any) -> TuckerTangent:
        if not isinstance(a, Number) and not (tl.is_tensor(a) and tl.ndim(a) == 0):
            return NotImplemented
        return TuckerTangent._from_scaled(self._base, self._dcore * a, [k * a for k in self._dk])

    __rmul__ = __mul__

    def __truediv__(self, a):
        if not isinstance(a, Number) and not (tl.is_tensor(a) and tl.ndim(a) == 0):
            return NotImplemented
        return self * (1.0 / a)

    def inner(self, other: TuckerTangent) -> Tensor:
        """``⟨self, other⟩``: the Frobenius product of the embedded tensors (0-d tensor).

        Conjugate-linear in ``self``, like :func:`tuckerflow.inner`.
        """
        self._check_same_base(other, "take the inner product of")
        out = tl.sum(tl.conj(self._dcore) * other._dcore)
        for a, b in zip(self._dk, other._dk):
            out = out + tl.sum(tl.conj(a) * b)
        return out

    def norm(self) -> Tensor:
        """Frobenius norm of the embedded tensor (0-d real tensor)."""
        out = tl.norm(self._dcore) ** 2
        for k in self._dk:
            out = out + tl.norm(k) ** 2
        return tl.sqrt(out)

    def gauge_error(self) -> float:
        """``max_i ‖U_iᴴ δK_i‖ / ‖ξ‖`` (0 for the zero vector): the gauge, to round-off.

        Measured against the whole vector, so a mode whose component is only round-off
        (e.g. ``r_i = n_i``, where ``δK_i`` must vanish) does not count as a violation.
        """
        total = to_float(self.norm())
        if total == 0:
            return 0.0
        worst = 0.0
        for u, k in zip(self.point.factors, self._dk):
            worst = max(worst, to_float(tl.norm(tl.dot(conj_t(u), k))) / total)
        return worst

    # -- embeddings --------------------------------------------------------------------------
    def to_tucker(self, point_scale: float = 0.0) -> TuckerTensor:
        """The exact Tucker form of ``point_scale · Y + ξ``, of rank ``≤ 2r``.

        Factors ``[U_i, δK_i]`` (not orthonormalised: pass the result to
        :func:`tuckerflow.truncate` for an orthonormal form); the core has
        ``point_scale · C + δC`` in the leading block, ``Ten_i(Q_iᴴ)`` in the block that is
        trailing in mode ``i`` only, and zeros elsewhere. ``point_scale=0`` gives ``ξ``.
        """
        y = self.point
        d = len(y.shape)
        r = tuple(y.rank)
        lead = self._dcore if point_scale == 0 else y.core * point_scale + self._dcore
        blocks = [(lead, (0,) * d)]
        for i, q in enumerate(self._base.qs):
            block = tl.fold(conj_t(q), i, r)
            offsets = tuple(r[i] if j == i else 0 for j in range(d))
            blocks.append((block, offsets))
        core = _assemble(blocks, tuple(2 * ri for ri in r))
        factors = [tl.concatenate([u, k], axis=1) for u, k in zip(y.factors, self._dk)]
        return TuckerTensor(core, factors)

    def to_tensor(self) -> Tensor:
        """The dense embedded tensor ``ξ`` (for small problems and tests)."""
        y = self.point
        d = len(y.shape)
        out = tl.tenalg.multi_mode_dot(self._dcore, y.factors)
        for i, (k, q) in enumerate(zip(self._dk, self._base.qs)):
            block = tl.fold(conj_t(q), i, tuple(y.rank))
            mats = [k if j == i else y.factors[j] for j in range(d)]
            out = out + tl.tenalg.multi_mode_dot(block, mats)
        return out


def _assemble(blocks, shape):
    """A tensor of ``shape`` holding each ``(block, offsets)`` at its offsets, zeros elsewhere."""
    out = None
    for block, offsets in blocks:
        placed = block
        for i, (o, n) in enumerate(zip(offsets, shape)):
            b = tl.shape(placed)[i]
            parts = []
            if o:
                s = list(tl.shape(placed))
                s[i] = o
                parts.append(tl.zeros(tuple(s), **context(block)))
            parts.append(placed)
            if n - o - b:
                s = list(tl.shape(placed))
                s[i] = n - o - b
                parts.append(tl.zeros(tuple(s), **context(block)))
            placed = tl.concatenate(parts, axis=i) if len(parts) > 1 else placed
        out = placed if out is None else out + placed
    return out


def _check_components(point, dcore, dfactors, name="dfactors"):
    check_tensor(dcore, "dcore")
    if tuple(tl.shape(dcore)) != tuple(point.rank):
        raise ValueError(
            f"dcore.shape={tuple(tl.shape(dcore))} differs from point.rank={tuple(point.rank)}"
        )
    if dtype_name(dcore) != dtype_name(point.core):
        raise TypeError(
            f"dcore has dtype {dtype_name(dcore)} but the point has {dtype_name(point.core)}"
        )
    dfactors = list(dfactors)
    if len(dfactors) != len(point.factors):
        raise ValueError(
            f"len({name})={len(dfactors)} differs from point.ndim={len(point.factors)}"
        )
    for i, (u, du) in enumerate(zip(point.factors, dfactors)):
        check_tensor(du, f"{name}[{i}]")
        if tuple(tl.shape(du)) != tuple(tl.shape(u)):
            raise ValueError(
                f"{name}[{i}].shape={tuple(tl.shape(du))} differs from "
                f"point.factors[{i}].shape={tuple(tl.shape(u))}"
            )
        if dtype_name(du) != dtype_name(u):
            raise TypeError(
                f"{name}[{i}] has dtype {dtype_name(du)} but the point has {dtype_name(u)}"
            )
    return dcore, dfactors


def _finite_scalar(t, name="t") -> float:
    try:
        v = float(t)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {t!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name}={t!r} is not finite")
    return v
