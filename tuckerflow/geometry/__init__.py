"""Geometry of the manifold of Tucker tensors of fixed multilinear rank.

Tangent vectors (:class:`TuckerTangent`), orthogonal projection onto tangent spaces
(:func:`project`), retraction (:func:`retract`), vector transport (:func:`transport`),
Riemannian gradients (:func:`riemannian_gradient`, and
:func:`autodiff_riemannian_gradient` for PyTorch functions) and the manifold object
:class:`FixedRankTucker` (Koch & Lubich, SIMAX 2010; Kressner, Steinlechner & Vandereycken,
BIT 2014). Ambient tensors enter only through :func:`contract` (dense, Tucker, or any
:class:`Contractible`).
"""

from __future__ import annotations

from .autodiff import AUTODIFF_METHODS, autodiff_riemannian_gradient
from .contract import Contractible, ambient_shape, contract
from .manifold import FixedRankTucker
from .projection import project, riemannian_gradient, transport
from .retraction import RETRACTION_METHODS, retract
from .tangent import TuckerTangent

__all__ = [
    "AUTODIFF_METHODS",
    "Contractible",
    "FixedRankTucker",
    "RETRACTION_METHODS",
    "TuckerTangent",
    "ambient_shape",
    "autodiff_riemannian_gradient",
    "contract",
    "project",
    "retract",
    "riemannian_gradient",
    "transport",
]
