"""Retraction onto the manifold of Tucker tensors of fixed multilinear rank."""

from __future__ import annotations

from ..truncation import truncate
from ..tucker import TuckerTensor
from ..typing import TuckerLike
from ._point import check_point, same_point
from .tangent import TuckerTangent, _finite_scalar

__all__ = ["RETRACTION_METHODS", "retract"]

#: Truncations of the rank-``2r`` core offered by :func:`retract`.
RETRACTION_METHODS = ("hosvd", "st_hosvd")


def retract(
    Y: TuckerLike, xi: TuckerTangent, t: float = 1.0, *, method: str = "hosvd"
) -> TuckerTensor:
    """Retraction ``R(Y, t ξ)``: the rank-``r`` truncation of ``Y + t ξ``.

    Parameters
    ----------
    Y : Tucker tensor
        Base point (orthonormal factors, checked).
    xi : TuckerTangent
        Tangent vector at ``Y`` (the same arrays, or equal to round-off).
    t : float
        Step length; must be finite.
    method : {"hosvd", "st_hosvd"}
        Truncation of the ``2r_1 × … × 2r_d`` core.

    Returns
    -------
    TuckerTensor
        Of multilinear rank ``Y.rank``, orthonormal factors.

    Notes
    -----
    ``Y + t ξ`` is exactly the Tucker tensor with factors ``[U_i, δK_i]`` and a
    ``2r_1 × … × 2r_d`` core holding ``C + t δC`` and the blocks ``t Ten_i(Q_iᴴ)``
    (:meth:`TuckerTangent.to_tucker`). Its factors are orthonormalised by thin QR,
    ``[U_i, δK_i] = Q̂_i R̂_i``, the small core ``Ĉ ×_i R̂_i`` is truncated to rank ``r`` by
    HOSVD (or ST-HOSVD) and ``U_i ← Q̂_i P_i``. The cost is
    ``O(Σ_i n_i r_i² + 2^d ∏ r_i · Σ r_i)``, independent of ``∏ n_i``. The HOSVD truncation is a
    retraction, quasi-optimal within ``√d`` of the best rank-``r`` approximation; it satisfies
    ``R(Y, 0) = Y`` and ``‖R(Y, tξ) − Y − tξ‖ = O(t²)``, and the tangential part of that
    defect is ``O(t³)`` (tested in :mod:`tuckerflow.testing`).

    References
    ----------
    .. [1] D. Kressner, M. Steinlechner and B. Vandereycken, "Low-rank tensor completion by
       Riemannian optimization", BIT Numer. Math. 54, 2014.
    .. [2] L. De Lathauwer, B. De Moor and J. Vandewalle, "A multilinear singular value
       decomposition", SIAM J. Matrix Anal. Appl. 21(4), 2000.

    Examples
    --------
    >>> import numpy as np, tuckerflow as tf
    >>> Y = tf.random_tucker((6, 5, 4), (2, 2, 2), rng=0)
    >>> xi = tf.project(Y, np.ones((6, 5, 4)))
    >>> Y1 = tf.retract(Y, xi, 0.1)
    >>> Y1.rank
    (2, 2, 2)
    >>> bool(np.allclose(tf.retract(Y, xi, 0.0).to_tensor(), Y.to_tensor()))
    True
    """
    if method not in RETRACTION_METHODS:
        raise ValueError(f"method={method!r} is not one of {RETRACTION_METHODS}")
    t = _finite_scalar(t, "t")
    if not isinstance(xi, TuckerTangent):
        raise TypeError(f"xi must be a TuckerTangent, got {type(xi).__name__}")
    y = check_point(Y, "Y")
    if xi.point is not y:
        ok, why = same_point(y, xi.point)
        if not ok:
            raise ValueError(
                f"xi is a tangent vector at another base point than Y ({why}); transport it "
                "first (tuckerflow.transport)"
            )
    rank = tuple(y.rank)
    return truncate((xi * t).to_tucker(point_scale=1.0), rank=rank, method=method)
