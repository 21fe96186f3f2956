"""Rank-adaptive, geometry-aware training of Tucker-factorized layers (PyTorch only).

:class:`TDLRT` wraps any ``torch.optim`` optimizer: the Tucker layers of the model follow the
rank-adaptive BUG integrator of the gradient flow (K-step basis augmentation, Galerkin step
of the augmented core by the base optimizer, truncation with a relative tolerance), every
other parameter takes the base optimizer's ordinary step. :class:`TDLRT` is itself a
``torch.optim.Optimizer``: importing this module imports torch (``import tuckerflow`` does
not).

References
----------
E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco, "Geometry-aware training of
factorized layers in tensor Tucker format", NeurIPS 2024 (arXiv:2305.19059).
G. Ceruti, J. Kusch, C. Lubich, "A rank-adaptive robust integrator for dynamical low-rank
approximation", BIT Numer. Math. 62, 2022 (arXiv:2104.05247).
"""

from __future__ import annotations

from .._state import StateDictEntryError
from .averaging import TuckerAveragedModel
from .basis import kstep_bases
from .distributed import ddp_ignore_tucker_parameters
from .edits import GradientEditError
from .layers import is_tucker_layer, resize_like, tucker_layers
from .protocol import TuckerLayerProtocol
from .tdlrt import TDLRT, NonFiniteGradientError, default_scale
from .transport import (
    NONNEGATIVE_STATE_KEYS,
    transport_linear,
    transport_nonnegative,
    transport_state,
)

__all__ = [
    "NONNEGATIVE_STATE_KEYS",
    "GradientEditError",
    "NonFiniteGradientError",
    "StateDictEntryError",
    "TDLRT",
    "TuckerAveragedModel",
    "TuckerLayerProtocol",
    "ddp_ignore_tucker_parameters",
    "default_scale",
    "is_tucker_layer",
    "kstep_bases",
    "resize_like",
    "transport_linear",
    "transport_nonnegative",
    "transport_state",
    "tucker_layers",
]
