"""Tucker-factorized PyTorch layers and the conversion of dense models (``tuckerflow.nn``).

Importing this module imports torch; ``import tuckerflow`` does not.

References
----------
.. [ZSCKT24] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch and F. Tudisco,
   "Geometry-aware training of factorized layers in tensor Tucker format", NeurIPS 2024
   (arXiv:2305.19059).
"""

from .._state import StateDictEntryError
from .adapters import (
    AdapterLayerReport,
    AdapterReport,
    AdaptersDisabled,
    TuckerAdapter,
    adapter_report,
    adapter_state_dict,
    add_adapters,
    disable_adapters,
    enable_adapters,
    load_adapter_state_dict,
    merge_adapters,
    remove_adapters,
)
from .conv import PADDING_MODES, TuckerConv1d, TuckerConv2d, TuckerConv3d
from .decompose import tucker_from_weight
from .layer import FORWARD_MODES, TuckerLayer
from .linear import TuckerLinear
from .tuckerize import (
    LayerReport,
    ParameterCount,
    TuckerizeReport,
    compression_rate,
    count_parameters,
    tuckerize,
)

__all__ = [
    "AdapterLayerReport",
    "AdapterReport",
    "AdaptersDisabled",
    "FORWARD_MODES",
    "PADDING_MODES",
    "TuckerAdapter",
    "LayerReport",
    "ParameterCount",
    "StateDictEntryError",
    "TuckerConv1d",
    "TuckerConv2d",
    "TuckerConv3d",
    "TuckerLayer",
    "TuckerLinear",
    "TuckerizeReport",
    "adapter_report",
    "adapter_state_dict",
    "add_adapters",
    "disable_adapters",
    "enable_adapters",
    "compression_rate",
    "count_parameters",
    "load_adapter_state_dict",
    "merge_adapters",
    "remove_adapters",
    "tucker_from_weight",
    "tuckerize",
]
