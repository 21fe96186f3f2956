"""Orthogonal projection onto tangent spaces, vector transport and Riemannian gradients."""

from __future__ import annotations

import math
from typing import Any

import tensorly as tl

from .._backend import check_finite, conj_t, dtype_name, to_float
from ..ambient import ambient_shape, contract, is_tucker
from ..tucker import as_tucker
from ..typing import TuckerLike
from ._point import check_point
from .tangent import TuckerTangent, _Base

__all__ = ["project", "riemannian_gradient", "transport"]


def _orthogonal_complement(u, a):
    """``(I − U Uᴴ) a`` applied twice (classical Gram–Schmidt with one re-orthogonalisation),

    so that ``Uᴴ result`` is at round-off level even when most of ``a`` lies in ``span(U)``.
    """
    uh = conj_t(u)
    a = a - tl.dot(u, tl.dot(uh, a))
    return a - tl.dot(u, tl.dot(uh, a))


def _project(base: _Base, z, name="Z") -> TuckerTangent:
    y = base.point
    d = len(y.shape)
    uhs = [conj_t(u) for u in y.factors]
    dcore = contract(z, uhs)
    dk = []
    for i in range(d):
        mats = [None if j == i else uhs[j] for j in range(d)]
        w = tl.unfold(contract(z, mats), i)  # Mat_i(Z ×_{j≠i} U_jᴴ), n_i × ∏_{j≠i} r_j
        dk.append(_orthogonal_complement(y.factors[i], tl.dot(w, base.qs[i])))
    # the small components say whether Z held NaN/Inf, whatever kind of tensor Z is
    # (one reduction and one host transfer)
    top = tl.max(tl.stack([tl.max(tl.abs(a)) for a in [dcore, *dk]]))
    if not math.isfinite(to_float(top)):
        raise ValueError(
            f"{name} contains non-finite values (NaN or Inf): its projection is not finite"
        )
    return TuckerTangent._from_scaled(base, dcore, dk)


def _check_ambient(y, z, name="Z"):
    if isinstance(z, TuckerTangent):
        return z.to_tucker()
    shape = ambient_shape(z)
    if shape != tuple(y.shape):
        raise ValueError(f"{name}.shape={shape} differs from Y.shape={tuple(y.shape)}")
    if tl.is_tensor(z) and dtype_name(z) != dtype_name(y.core):
        raise TypeError(f"{name} has dtype {dtype_name(z)} but Y has dtype {dtype_name(y.core)}")
    # dense and Tucker tensors are checked before any arithmetic (a Contractible is known only
    # through its contractions, which _project checks)
    if tl.is_tensor(z):
        check_finite(z, name)
    elif is_tucker(z):
        zt = as_tucker(z, name)
        check_finite(zt.core, f"{name}.core")
        for i, u in enumerate(zt.factors):
            check_finite(u, f"{name}.factors[{i}]")
    return z


def project(Y: TuckerLike, Z: Any) -> TuckerTangent:
    """Orthogonal projection ``P_Y Z`` of an ambient tensor onto the tangent space at ``Y``.

    Parameters
    ----------
    Y : Tucker tensor
        Base point with orthonormal factors (checked; never re-orthonormalised) and a core of
        full multilinear rank.
    Z : dense tensor, Tucker tensor, Contractible or TuckerTangent
        The ambient tensor, of shape ``Y.shape``. A Tucker tensor is contracted factor by
        factor; any object with ``.shape`` and ``.contract(matrices)`` (the
        :class:`~tuckerflow.geometry.Contractible` protocol) is used only through
        contractions; a tangent vector (at any base point) is taken as its embedding.

    Returns
    -------
    TuckerTangent
        ``P_Y Z`` at ``Y``.

    Notes
    -----
    With the thin QR ``Mat_i(C)ᴴ = Q_i S_iᴴ`` and ``V_i = (⊗_{j≠i} U_j) Q_i`` the projection is
    the inverse-free sum of ``d + 1`` mutually orthogonal terms

    ``P_Y Z = Z ×_j U_j U_jᴴ + Σ_i Ten_i[(I − U_i U_iᴴ) Mat_i(Z) V_i V_iᴴ]``.

    It is computed in the components of :class:`TuckerTangent`:
    ``δC = Z ×_j U_jᴴ`` and ``δK_i = (I − U_i U_iᴴ) Mat_i(Z ×_{j≠i} U_jᴴ) Q_i``, which equals
    ``δU_i S_i`` for the classical
    ``δU_i = (I − U_i U_iᴴ) Mat_i(Z ×_{j≠i} U_jᴴ) Mat_i(C)^+``. No inverse (or Gram matrix) of
    ``Mat_i(C)`` is formed, so the result stays accurate when ``Mat_i(C)`` is ill-conditioned.
    The contractions ask ``Z`` only for ``Z ×_j U_jᴴ`` and ``Z ×_{j≠i} U_jᴴ``: for a Tucker
    ``Z`` of rank ``s`` the cost is ``O(Σ_i n_i r_i s_i + d ∏ s · Σ r)``-like and never
    involves ``∏ n_i``.

    References
    ----------
    .. [1] O. Koch and C. Lubich, "Dynamical tensor approximation", SIAM J. Matrix Anal. Appl.
       31(5), 2010.
    .. [2] C. Lubich, B. Vandereycken and A. Walach, "Time integration of rank-constrained Tucker
       tensors", SIAM J. Numer. Anal. 56(3), 2018.

    Examples
    --------
    >>> import numpy as np, tuckerflow as tf
    >>> Y = tf.random_tucker((6, 5, 4), (2, 2, 2), rng=0)
    >>> Z = np.random.default_rng(1).standard_normal((6, 5, 4))
    >>> xi = tf.project(Y, Z)
    >>> bool(np.allclose(tf.project(Y, xi.to_tensor()).to_tensor(), xi.to_tensor()))
    True
    """
    y = check_point(Y, "Y")
    z = _check_ambient(y, Z)
    return _project(_Base(y), z)


def transport(Y: TuckerLike, xi: TuckerTangent) -> TuckerTangent:
    """Vector transport of a tangent vector to the tangent space at ``Y`` by projection.

    Parameters
    ----------
    Y : Tucker tensor
        The new base point (orthonormal factors).
    xi : TuckerTangent
        A tangent vector at any base point of the same shape.

    Returns
    -------
    TuckerTangent
        ``P_Y ξ``, computed from the rank-``2r`` Tucker form of ``ξ`` (cost independent of
        ``∏ n_i``).

    Notes
    -----
    Projection is the standard vector transport on embedded submanifolds: it is linear in
    ``ξ``, maps ``T_X M_r`` to ``T_Y M_r``, is the identity when ``Y = X`` and, by the curvature
    bound, differs from the identity by ``O(‖X − Y‖ / ρ)``.

    References
    ----------
    .. [1] P.-A. Absil, R. Mahony and R. Sepulchre, "Optimization Algorithms on Matrix
       Manifolds", Princeton University Press, 2008, §8.1.

    Examples
    --------
    >>> import numpy as np, tuckerflow as tf
    >>> Y = tf.random_tucker((6, 5, 4), (2, 2, 2), rng=0)
    >>> xi = tf.project(Y, np.ones((6, 5, 4)))
    >>> bool(np.allclose(tf.transport(Y, xi).to_tensor(), xi.to_tensor()))
    True
    """
    if not isinstance(xi, TuckerTangent):
        raise TypeError(f"xi must be a TuckerTangent, got {type(xi).__name__}")
    y = check_point(Y, "Y")
    if tuple(xi.shape) != tuple(y.shape):
        raise ValueError(f"xi.shape={tuple(xi.shape)} differs from Y.shape={tuple(y.shape)}")
    return _project(_Base(y), xi.to_tucker(), "xi")


def riemannian_gradient(Y: TuckerLike, egrad: Any) -> TuckerTangent:
    """Riemannian gradient at ``Y`` from the Euclidean gradient ``egrad`` (its projection).

    Parameters
    ----------
    Y : Tucker tensor
    egrad : dense tensor, Tucker tensor or Contractible
        The Euclidean gradient ``∇f(Y)`` of a real function ``f``, i.e. ``df = Re⟨∇f, dY⟩``.

    Returns
    -------
    TuckerTangent
        ``grad f(Y) = P_Y ∇f(Y)``.

    Notes
    -----
    On an embedded submanifold with the induced metric the Riemannian gradient is the
    orthogonal projection of the Euclidean one. For functions written with PyTorch see
    :func:`tuckerflow.geometry.autodiff_riemannian_gradient`, which needs one backward pass
    through the factors and never forms ``∇f`` densely.

    References
    ----------
    .. [1] P.-A. Absil, R. Mahony and R. Sepulchre, "Optimization Algorithms on Matrix
       Manifolds", Princeton University Press, 2008, §3.6.1.
    .. [2] D. Kressner, M. Steinlechner and B. Vandereycken, "Low-rank tensor completion by
       Riemannian optimization", BIT 54, 2014.

    Examples
    --------
    >>> import numpy as np, tuckerflow as tf
    >>> Y = tf.random_tucker((6, 5, 4), (2, 2, 2), rng=0)
    >>> A = np.ones((6, 5, 4))
    >>> g = tf.riemannian_gradient(Y, Y.to_tensor() - A)  # f(Y) = ½‖Y − A‖²
    >>> g.shape
    (6, 5, 4)
    """
    y = check_point(Y, "Y")
    z = _check_ambient(y, egrad, "egrad")
    return _project(_Base(y), z, "egrad")
