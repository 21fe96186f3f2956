"""Contraction of an ambient tensor with one matrix per mode (see :mod:`tuckerflow.ambient`).

The ambient-tensor protocol lives in :mod:`tuckerflow.ambient`, below both the geometry and
the integrators; this module keeps its public names importable from
``tuckerflow.geometry.contract``.
"""

from __future__ import annotations

from ..ambient import Contractible, ambient_shape, contract, unfolded_contract

__all__ = ["Contractible", "ambient_shape", "contract", "unfolded_contract"]
