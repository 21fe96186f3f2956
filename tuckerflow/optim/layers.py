"""Finding the Tucker layers of a model and resizing them (checkpoints across rank changes)."""

from __future__ import annotations

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


def tucker_layers(model) -> dict:
    """``{qualified name: layer}`` for every Tucker layer of ``model``, in module order."""
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
    if keys and all(k.startswith("module.") for k in keys):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


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
    KeyError
        Naming the missing entry when ``state_dict`` lacks the core or a factor of a layer.
    ValueError
        From ``set_tucker_`` when a stored shape does not fit the layer (nothing changed).

    Examples
    --------
    ``resize_like(fresh_model, ckpt["model"]); fresh_model.load_state_dict(ckpt["model"])``.
    """
    sd = _strip_prefix(state_dict)
    for name, layer in tucker_layers(model).items():
        prefix = f"{name}." if name else ""
        key = f"{prefix}core"
        if key not in sd:
            raise KeyError(f"state_dict has no entry {key!r} for the Tucker layer {name!r}")
        ref = layer.core
        core = sd[key].detach().to(device=ref.device, dtype=ref.dtype).clone()
        factors = [None] * len(layer.weight_shape)
        for k, mode in enumerate(layer.factorized_modes):
            fkey = f"{prefix}factors.{k}"
            if fkey not in sd:
                raise KeyError(f"state_dict has no entry {fkey!r} for the Tucker layer {name!r}")
            factors[mode] = sd[fkey].detach().to(device=ref.device, dtype=ref.dtype).clone()
        set_tucker(layer, core, factors)
