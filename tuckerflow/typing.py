"""Type aliases of tuckerflow's public API.

Arrays are those of the active TensorLy backend (NumPy, PyTorch, CuPy), which share no
common static type: :data:`Tensor` is therefore ``Any``; the aliases document intent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:
    from .tucker import TuckerTensor

__all__ = ["Rank", "RankBound", "Seed", "Tensor", "TuckerLike"]

#: An array of the active TensorLy backend.
Tensor = Any

#: A Tucker tensor: tuckerflow's or TensorLy's ``TuckerTensor``, or a ``(core, factors)`` pair.
TuckerLike = Union["TuckerTensor", tuple[Any, Sequence[Any]], list[Any]]  # noqa: UP007

#: A multilinear rank: one int for every mode, or one int per mode.
Rank = int | Sequence[int]

#: A per-mode rank bound where ``None`` entries mean "no bound".
RankBound = int | Sequence[int | None] | None

#: Randomness, as NumPy takes it.
Seed = None | int | np.random.Generator
