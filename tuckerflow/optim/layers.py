"""Finding the Tucker layers of a model and resizing them (checkpoints across rank changes)."""

from __future__ import annotations

from collections.abc import Mapping

from .._state import StateDictEntryError, check_tucker_shapes

__all__ = ["is_tucker_layer", "resize_like", "set_tucker", "tucker_layers", "unwrap_model"]

_REQUIRED = ("core", "factors", "factorized_modes", "factor", "set_tucker_", "weight_shape")


def is_tucker_layer(module) -> bool:
    """True for a ``tuckerflow.nn.TuckerLayer`` or any module with the same interface."""
    return all(hasattr(module, name) for name in _REQUIRED)


def unwrap_model(model):
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` wrappers."""
    while hasattr(model, "module") and type(model).__name__ in (
        "DistributedDataParallel",
        "DataParallel",
    ):
        model = model.module
    return model


def check_model(model, name="model"):
    """Refuse anything but a ``torch.nn.Module`` (possibly wrapped) with a ``TypeError``."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")


def check_device(device, name="device"):
    """Refuse what ``torch.device`` cannot read, with an error naming ``name``."""
    import torch

    if device is None or isinstance(device, torch.device):
        return
    if isinstance(device, bool) or not isinstance(device, (str, int)):
        raise TypeError(f"{name} must be a torch.device, a str or an int, got {device!r}")
    try:
        torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{name}={device!r} is not a torch device: {exc}") from None


def tucker_layers(model) -> dict:
    """``{qualified name: layer}`` for every Tucker layer of ``model``, in module order."""
    check_model(model)
    return {name: m for name, m in unwrap_model(model).named_modules() if is_tucker_layer(m)}


def _refresh_grad_accumulator(p):
    """Drop the cached gradient accumulator of a parameter whose shape changed.

    Autograd caches one accumulator node per leaf, holding the leaf's shape, for as long as
    any graph refers to it; a loss tensor from the previous iteration keeps it alive, and the
    next backward would then reject gradients of the new shape. Assigning ``.data`` of
    another dtype is the public way to make PyTorch reset that cache.
    """
    import torch

    data = p.data
    other = torch.float32 if data.dtype == torch.float64 else torch.float64
    p.data = torch.empty(0, dtype=other, device=data.device)
    p.data = data


def set_tucker(layer, core, factors):
    """``layer.set_tucker_(core, factors)``, then make autograd accept the new shapes."""
    params = [layer.core, *layer.factors]
    before = [tuple(p.shape) for p in params]
    layer.set_tucker_(core, factors)
    for p, shape in zip(params, before):
        if tuple(p.shape) != shape:
            _refresh_grad_accumulator(p)


def _strip_prefix(state_dict):
    keys = list(state_dict)
    if keys and all(isinstance(k, str) and k.startswith("module.") for k in keys):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def _stored_tucker(sd, name, layer):
    """The stored core and factors (one entry per mode) of ``layer``, checked, unchanged."""
    import torch

    prefix = f"{name}." if name else ""
    key = f"{prefix}core"
    entries = {}
    for mode, k in [(None, key)] + [
        (m, f"{prefix}factors.{j}") for j, m in enumerate(layer.factorized_modes)
    ]:
        if k not in sd:
            raise StateDictEntryError(
                k, f"state_dict has no entry {k!r} for the Tucker layer {name!r}"
            )
        if not isinstance(sd[k], torch.Tensor):
            raise StateDictEntryError(
                k, f"state_dict[{k!r}] must be a torch.Tensor, got {type(sd[k]).__name__}"
            )
        entries[mode] = sd[k]
    check_tucker_shapes(
        layer.weight_shape,
        layer.factorized_modes,
        tuple(entries[None].shape),
        {m: tuple(entries[m].shape) for m in layer.factorized_modes},
        core_entry=key,
        factor_entry=lambda i: f"{prefix}factors.{layer.factorized_modes.index(i)}",
    )
    factors = [entries.get(i) for i in range(len(layer.weight_shape))]
    return entries[None], factors


def resize_like(model, state_dict):
    """Give every Tucker layer of ``model`` the core and factors stored in ``state_dict``.

    A model whose ranks changed during training cannot be loaded into a freshly built
    one with ``load_state_dict`` (the shapes differ). Call this first: it writes the stored
    tensors into the same ``Parameter`` objects (through ``set_tucker_``), after which
    ``model.load_state_dict(state_dict)`` loads the rest.

    Parameters
    ----------
    model : torch.nn.Module (possibly wrapped in DistributedDataParallel)
    state_dict : dict
        A ``model.state_dict()`` (keys with a ``module.`` prefix are accepted).

    Raises
    ------
    StateDictEntryError
        A ``ValueError`` (and ``KeyError``) naming the entry, when ``state_dict`` lacks the
        core or a factor of a layer, holds something else than a tensor there, or a shape
        that does not fit the layer (wrong number of modes, a factor that does not match
        the core, an impossible multilinear rank). Every layer is checked before any is
        changed: on error the model is unchanged.

    Examples
    --------
    ``resize_like(fresh_model, ckpt["model"]); fresh_model.load_state_dict(ckpt["model"])``.
    """
    layers = tucker_layers(model)
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
    sd = _strip_prefix(state_dict)
    stored = {name: _stored_tucker(sd, name, layer) for name, layer in layers.items()}
    for name, layer in layers.items():
        ref = layer.core
        core, factors = stored[name]
        core = core.detach().to(device=ref.device, dtype=ref.dtype).clone()
        factors = [
            None if u is None else u.detach().to(device=ref.device, dtype=ref.dtype).clone()
            for u in factors
        ]
        set_tucker(layer, core, factors)
