"""The manifold ``M_r`` of Tucker tensors of fixed multilinear rank, as an object."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorly as tl

from .._backend import context, dtype_name, eps, max_abs, to_float
from .._host import to_host
from ..linalg import svd
from ..random import random_tucker
from ..truncation import hosvd, st_hosvd, truncate, validate_rank
from ..tucker import TuckerTensor, as_tucker
from ..typing import Rank, Seed, TuckerLike
from ._point import orthonormality_error, orthonormality_tolerance, same_point
from .projection import project, riemannian_gradient, transport
from .retraction import retract
from .tangent import TuckerTangent

__all__ = ["FixedRankTucker"]

#: A core unfolding counts as rank-deficient when ``σ_min ≤ RANK_FACTOR · eps · σ_max``.
RANK_FACTOR = 1000.0


class FixedRankTucker:
    """The manifold ``M_r`` of tensors of shape ``n`` and multilinear rank exactly ``r``.

    Points are Tucker tensors with orthonormal factors and a core of full multilinear rank;
    tangent vectors are :class:`~tuckerflow.TuckerTangent`. The verbs follow geoopt's
    manifolds: :meth:`proju`, :meth:`retr`, :meth:`inner`, :meth:`egrad2rgrad`,
    :meth:`transp`, :meth:`projx`, :meth:`random_point`, :meth:`random_tangent`, and the
    paired checks ``check_…(…, explain=False)`` / ``assert_check_…(…)``.

    Parameters
    ----------
    shape : sequence of int
    rank : int or sequence of int
        A valid multilinear rank for ``shape`` (``r_i ≤ n_i``, ``r_i ≤ ∏_{j≠i} r_j``).

    Notes
    -----
    ``dim M_r = ∏ r_i + Σ_i r_i (n_i − r_i)`` (complex dimension for complex tensors).

    References
    ----------
    .. [1] O. Koch and C. Lubich, "Dynamical tensor approximation", SIAM J. Matrix Anal. Appl.
       31(5), 2010.
    .. [2] M. Kochurov, R. Karimov and S. Kozlukov, "Geoopt: Riemannian optimization in
       PyTorch", arXiv:2005.02819, 2020.

    Examples
    --------
    >>> import tuckerflow as tf
    >>> M = tf.FixedRankTucker((6, 5, 4), (2, 2, 2))
    >>> M.dim
    26
    >>> Y = M.random_point(rng=0)
    >>> M.check_point_on_manifold(Y, explain=True)
    (True, '')
    >>> xi = M.random_tangent(Y, rng=1)
    >>> M.check_vector_on_tangent(Y, xi)
    True
    >>> M.check_point_on_manifold(M.retr(Y, xi, 0.1))
    True
    """

    def __init__(self, shape: Sequence[int], rank: Rank) -> None:
        self.shape = tuple(int(n) for n in shape)
        if any(n < 1 for n in self.shape):
            raise ValueError(f"shape={self.shape} must hold positive sizes")
        self.rank = validate_rank(self.shape, rank)

    def __repr__(self) -> str:
        return f"FixedRankTucker(shape={self.shape}, rank={self.rank})"

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dim(self) -> int:
        """``∏ r_i + Σ r_i (n_i − r_i)``."""
        return math.prod(self.rank) + sum(r * (n - r) for n, r in zip(self.shape, self.rank))

    # -- checks ------------------------------------------------------------------------------
    def check_point_on_manifold(self, x: Any, *, explain: bool = False) -> bool | tuple[bool, str]:
        """Whether ``x`` is a point of ``M_r``: shape, rank, orthonormal factors, full-rank core.

        Returns ``ok`` or, with ``explain=True``, ``(ok, reason)``.
        """
        ok, reason = self._point_reason(x)
        return (ok, reason) if explain else ok

    def _point_reason(self, x):
        try:
            x = as_tucker(x, "x")
        except (TypeError, ValueError) as exc:
            return False, str(exc)
        if tuple(x.shape) != self.shape:
            return False, f"x.shape={tuple(x.shape)} differs from the manifold's {self.shape}"
        if tuple(x.rank) != self.rank:
            return False, f"x.rank={tuple(x.rank)} differs from the manifold's {self.rank}"
        arrays = [("x.core", x.core)] + [(f"x.factors[{i}]", u) for i, u in enumerate(x.factors)]
        for what, a in arrays:
            if not math.isfinite(max_abs(a)):
                return False, f"{what} contains non-finite values (NaN or Inf)"
        for i, u in enumerate(x.factors):
            err, tol = orthonormality_error(u), orthonormality_tolerance(u)
            if not err <= tol:
                return False, (
                    f"x.factors[{i}] is not orthonormal: ‖UᴴU − I‖={err:.3g} exceeds {tol:.3g}"
                )
        for i in range(self.ndim):
            s = to_host(svd(tl.unfold(x.core, i))[1], dtype=None)
            if not np.all(np.isfinite(s)):
                return False, "x.core contains non-finite values"
            if s.size < self.rank[i] or not s[-1] > RANK_FACTOR * eps(x.core) * s[0]:
                smin = s[-1] if s.size else 0.0
                return False, (
                    f"the mode-{i} unfolding of x.core is rank-deficient: smallest singular "
                    f"value {smin:.3g} vs largest {s[0] if s.size else 0.0:.3g}"
                )
        return True, ""

    def assert_check_point_on_manifold(self, x: Any) -> None:
        """Raise ``ValueError`` with the reason unless ``x`` is on the manifold."""
        ok, reason = self._point_reason(x)
        if not ok:
            raise ValueError(f"point is not on {self!r}: {reason}")

    def check_vector_on_tangent(
        self, x: Any, u: Any, *, explain: bool = False
    ) -> bool | tuple[bool, str]:
        """Whether ``u`` is a tangent vector at ``x`` (same base point, gauge to round-off)."""
        ok, reason = self._vector_reason(x, u)
        return (ok, reason) if explain else ok

    def _vector_reason(self, x, u):
        ok, reason = self._point_reason(x)
        if not ok:
            return False, f"x: {reason}"
        if not isinstance(u, TuckerTangent):
            return False, f"u is a {type(u).__name__}, not a TuckerTangent"
        x = as_tucker(x, "x")
        same, why = same_point(x, u.point)
        if not same:
            return False, f"u is attached to another base point ({why})"
        tol = 100.0 * eps(u.dcore) * max(self.shape)
        g = u.gauge_error()
        if not g <= tol:
            return False, f"u violates the gauge: max_i ‖U_iᴴ δK_i‖/‖u‖={g:.3g} > {tol:.3g}"
        return True, ""

    def assert_check_vector_on_tangent(self, x: Any, u: Any) -> None:
        """Raise ``ValueError`` with the reason unless ``u`` is tangent at ``x``."""
        ok, reason = self._vector_reason(x, u)
        if not ok:
            raise ValueError(f"vector is not tangent to {self!r} at x: {reason}")

    # -- geometry ----------------------------------------------------------------------------
    def _check_shape(self, x, name):
        shape = tuple(as_tucker(x, name).shape)
        if shape != self.shape:
            raise ValueError(f"{name}.shape={shape} differs from the manifold's {self.shape}")

    def proju(self, x: TuckerLike, u: Any) -> TuckerTangent:
        """Project an ambient tensor ``u`` onto ``T_x M_r`` (:func:`tuckerflow.project`)."""
        self._check_shape(x, "x")
        return project(x, u)

    def egrad2rgrad(self, x: TuckerLike, egrad: Any) -> TuckerTangent:
        """Riemannian gradient from a Euclidean one (:func:`tuckerflow.riemannian_gradient`)."""
        self._check_shape(x, "x")
        return riemannian_gradient(x, egrad)

    def retr(
        self, x: TuckerLike, u: TuckerTangent, t: float = 1.0, *, method: str = "hosvd"
    ) -> TuckerTensor:
        """Retraction ``R(x, t u)`` (:func:`tuckerflow.retract`)."""
        self._check_shape(x, "x")
        return retract(x, u, t, method=method)

    def transp(self, x: TuckerLike, y: TuckerLike, v: TuckerTangent) -> TuckerTangent:
        """Transport ``v ∈ T_x M_r`` to ``T_y M_r`` by projection (:func:`tuckerflow.transport`)."""
        self._check_shape(x, "x")
        self._check_shape(y, "y")
        self._check_attached(x, v, "v")
        return transport(y, v)

    def _check_attached(self, x, u, name="u"):
        if not isinstance(u, TuckerTangent):
            raise TypeError(f"{name} must be a TuckerTangent, got {type(u).__name__}")
        same, why = same_point(as_tucker(x, "x"), u.point)
        if not same:
            raise ValueError(f"{name} is not attached to x ({why})")

    def inner(self, x: TuckerLike, u: TuckerTangent, v: TuckerTangent | None = None) -> Any:
        """``⟨u, v⟩`` in ``T_x M_r`` (``⟨u, u⟩`` when ``v`` is None).

        Checks only that ``u`` is attached to ``x`` (cheap); use
        :meth:`assert_check_vector_on_tangent` for the full check.
        """
        self._check_attached(x, u)
        return u.inner(u if v is None else v)

    def norm(self, x: TuckerLike, u: TuckerTangent) -> Any:
        """``‖u‖`` in ``T_x M_r``."""
        self._check_attached(x, u)
        return u.norm()

    def projx(self, z: Any, *, method: str = "st_hosvd") -> TuckerTensor:
        """A point of ``M_r`` near ``z`` (dense: ST-HOSVD/HOSVD; Tucker: :func:`truncate`)."""
        if tl.is_tensor(z):
            if tuple(tl.shape(z)) != self.shape:
                raise ValueError(f"z.shape={tuple(tl.shape(z))} differs from {self.shape}")
            return (st_hosvd if method == "st_hosvd" else hosvd)(z, rank=self.rank)
        self._check_shape(z, "z")
        return truncate(z, rank=self.rank, method=method)

    def zero_tangent(self, x: TuckerLike) -> TuckerTangent:
        self._check_shape(x, "x")
        return TuckerTangent.zeros(x)

    # -- random ------------------------------------------------------------------------------
    def random_point(
        self, *, rng: Seed = None, dtype: Any = "float64", device: Any = None, decay: float = 1.0
    ) -> TuckerTensor:
        """A random point (:func:`tuckerflow.random_tucker`, unit norm)."""
        return random_tucker(
            self.shape, self.rank, rng=rng, dtype=dtype, device=device, decay=decay
        )

    def random_tangent(self, x: TuckerLike, *, rng: Seed = None) -> TuckerTangent:
        """A random unit tangent vector at ``x``: projection of a Gaussian Tucker tensor.

        The Gaussian ambient tensor has Tucker rank ``min(2r, n)`` so that the cost stays
        independent of ``∏ n_i``; the projection onto ``T_x M_r`` of such tensors has full
        support on the tangent space.
        """
        x = as_tucker(x, "x")
        self._check_shape(x, "x")
        gen = np.random.default_rng(rng)
        name = dtype_name(x.core)
        cplx = name.startswith("complex")
        ranks = [min(2 * r, n) for r, n in zip(self.rank, self.shape)]

        def gauss(shape):
            a = gen.standard_normal(shape)
            if cplx:
                a = a + 1j * gen.standard_normal(shape)
            return tl.tensor(a, **context(x.core))

        z = TuckerTensor(gauss(tuple(ranks)), [gauss((n, s)) for n, s in zip(self.shape, ranks)])
        xi = project(x, z)
        nrm = to_float(xi.norm())
        return xi / nrm if nrm > 0 else xi
