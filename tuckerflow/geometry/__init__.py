"""Geometry of the manifold of Tucker tensors of fixed multilinear rank.

Tangent vectors, orthogonal projection onto tangent spaces, retraction, vector transport and
Riemannian gradients (Koch & Lubich, SIMAX 2010; Kressner, Steinlechner & Vandereycken,
BIT 2014). Ambient tensors enter only through :func:`contract`.
"""

from __future__ import annotations

from .contract import Contractible, ambient_shape, contract

__all__ = ["Contractible", "ambient_shape", "contract"]
