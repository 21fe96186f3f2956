"""The layer–optimizer contract: everything :class:`~tuckerflow.optim.TDLRT` reads from a layer.

:class:`tuckerflow.nn.TuckerLayer` implements it; any module that does can be trained by
TDLRT. :func:`check_layer` runs when TDLRT is built and names what a layer lacks.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["LAYER_CONTRACT", "TuckerLayerProtocol", "check_layer"]


@runtime_checkable
class TuckerLayerProtocol(Protocol):
    """A module whose weight is a Tucker tensor ``W = C ×_{i factorized} U_i``.

    Attributes
    ----------
    core : torch.nn.Parameter
        ``C``, of shape :attr:`ranks`; TDLRT's base optimizer steps it (Galerkin step).
    factors : sequence of torch.nn.Parameter
        ``U_i`` (``n_i × r_i``, orthonormal columns), one per factorized mode in mode order.
        TDLRT moves them by its basis update only.
    factorized_modes : tuple of int
        Modes that carry a factor; the others are kept full (``r_i = n_i``).
    weight_shape : tuple of int
        Shape of the dense weight.
    ranks : tuple of int
        The core's shape.
    record_for_galerkin : bool (settable)
        Whether forward/backward passes are recorded in :attr:`gradient_record`.
    factor_gradients : bool (settable)
        Whether backward forms the factors' gradients (read by ``kstep="factors"`` only).
    gradient_record : tuckerflow.nn.recording.GradientRecord
        The per-backward-pass records: ``groups`` (each with ``core_grad``, the raw core
        gradient of the pass), ``weight_gradient(U_hats, groups)`` giving
        ``G ×_i U_hats[i]ᴴ`` over those groups, and ``clear()``.
    """

    core: Any
    factors: Any
    factorized_modes: tuple
    weight_shape: tuple
    record_for_galerkin: bool
    factor_gradients: bool

    @property
    def ranks(self) -> tuple: ...

    @property
    def gradient_record(self) -> Any: ...

    def factor(self, mode: int) -> Any:
        """The factor of ``mode`` or None for a mode kept full."""

    def set_tucker_(self, core, factors) -> None:
        """Replace core and factors in place, keeping the same Parameter objects."""


#: The attribute names of :class:`TuckerLayerProtocol`, in the order they are checked.
LAYER_CONTRACT = (
    "core",
    "factors",
    "factorized_modes",
    "weight_shape",
    "ranks",
    "factor",
    "set_tucker_",
    "record_for_galerkin",
    "factor_gradients",
    "gradient_record",
)


def check_layer(layer, name):
    """Raise ``TypeError`` naming the first attribute of the contract ``layer`` lacks."""
    for attr in LAYER_CONTRACT:
        try:
            getattr(layer, attr)
        except AttributeError:
            raise TypeError(
                f"Tucker layer {name!r} ({type(layer).__name__}) lacks {attr!r}, which TDLRT "
                "reads (see tuckerflow.optim.protocol.TuckerLayerProtocol)"
            ) from None
    for attr in ("factor", "set_tucker_"):
        if not callable(getattr(layer, attr)):
            raise TypeError(f"{attr!r} of Tucker layer {name!r} must be a method")
