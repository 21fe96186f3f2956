"""Checks of a :class:`~tuckerflow.optim.TDLRT` state dict, made before anything is loaded."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

from .._state import StateDictEntryError, check_tucker_shapes

__all__ = ["check_tdlrt_state_dict"]


def _stored_shape(value, entry):
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise StateDictEntryError(
            entry, f"{entry} must be a shape (a tuple of ints), got {value!r}"
        )
    return tuple(value)


def _check_layer_shapes(name, layer, want):
    entry = f"state_dict['shapes'][{name!r}]"
    if not isinstance(want, Mapping) or "core" not in want or "factors" not in want:
        raise StateDictEntryError(
            entry, f"{entry} must be a dict with the entries 'core' and 'factors', got {want!r}"
        )
    d = len(layer.weight_shape)
    core = _stored_shape(want["core"], f"{entry}['core']")
    factors = want["factors"]
    if isinstance(factors, (str, bytes)) or not isinstance(factors, Sequence) or len(factors) != d:
        raise StateDictEntryError(
            f"{entry}['factors']",
            f"{entry}['factors'] must list {d} entries (a shape per factorized mode, None per "
            f"mode kept full), got {factors!r}",
        )
    for i, s in enumerate(factors):
        full = i not in layer.factorized_modes
        if full != (s is None):
            raise StateDictEntryError(
                f"{entry}['factors'][{i}]",
                f"{entry}['factors'][{i}]={s!r}, but mode {i} of the layer is "
                + ("kept full (None expected)" if full else "factorized (a shape expected)"),
            )
    check_tucker_shapes(
        layer.weight_shape,
        layer.factorized_modes,
        core,
        {m: _stored_shape(factors[m], f"{entry}['factors'][{m}]") for m in layer.factorized_modes},
        core_entry=f"{entry}['core']",
        factor_entry=lambda i: f"{entry}['factors'][{i}]",
    )


def _check_optimizer_state(layers, optimizer, saved, shapes):
    """The checks ``Optimizer.load_state_dict`` makes, and the Tucker state shapes."""
    import torch

    entry = "state_dict['optimizer']"
    if not isinstance(saved, Mapping) or "param_groups" not in saved or "state" not in saved:
        raise StateDictEntryError(
            entry, f"{entry} must be an optimizer state dict (with 'state' and 'param_groups')"
        )
    groups, saved_groups = optimizer.param_groups, saved["param_groups"]
    if not isinstance(saved_groups, Sequence) or len(saved_groups) != len(groups):
        raise StateDictEntryError(
            f"{entry}['param_groups']",
            f"{entry}['param_groups'] must hold {len(groups)} parameter groups, as the "
            f"optimizer does",
        )
    for k, (g, sg) in enumerate(zip(groups, saved_groups)):
        params = sg.get("params") if isinstance(sg, Mapping) else None
        if not isinstance(params, Sequence) or len(params) != len(g["params"]):
            raise StateDictEntryError(
                f"{entry}['param_groups'][{k}]",
                f"{entry}['param_groups'][{k}] must hold {len(g['params'])} parameters, as the "
                f"optimizer's group {k} does",
            )
    if not isinstance(saved["state"], Mapping):
        raise StateDictEntryError(f"{entry}['state']", f"{entry}['state'] must be a dict")
    # the stored shape of each Tucker parameter, by its index in the saved groups
    want = {}
    for name, layer in layers.items():
        want[id(layer.core)] = tuple(shapes[name]["core"])
        for m, p in zip(layer.factorized_modes, layer.factors):
            want[id(p)] = tuple(shapes[name]["factors"][m])
    for g, sg in zip(groups, saved_groups):
        for p, index in zip(g["params"], sg["params"]):
            shape = want.get(id(p))
            state = saved["state"].get(index)
            if shape is None or not isinstance(state, Mapping):
                continue
            for key, v in state.items():
                # per-entry state has the stored shape; factored moments (Adafactor) size 1
                # in the factored dimension; counters are scalars
                if not isinstance(v, torch.Tensor) or v.dim() != len(shape):
                    continue
                if any(a not in (b, 1) for a, b in zip(v.shape, shape)):
                    raise StateDictEntryError(
                        f"{entry}['state'][{index}][{key!r}]",
                        f"{entry}['state'][{index}][{key!r}] has shape {tuple(v.shape)}, but "
                        f"the parameter it belongs to is stored with shape {shape}",
                    )


def check_tdlrt_state_dict(layers, optimizer, state_dict):
    """Refuse a malformed TDLRT state dict with a :class:`StateDictEntryError`.

    Checks the entries TDLRT reads (``optimizer``, ``shapes`` and the counters), the stored
    shapes of every Tucker layer against the layer (see
    :func:`tuckerflow._state.check_tucker_shapes`), the parameter groups as the base
    optimizer's ``load_state_dict`` would, and that the optimizer state of every core and
    factor has the stored shape.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
    for key in ("optimizer", "shapes"):
        if key not in state_dict:
            raise StateDictEntryError(
                key, f"state_dict has no entry {key!r}; was it made by TDLRT?"
            )
    shapes = state_dict["shapes"]
    if not isinstance(shapes, Mapping) or set(shapes) != set(layers):
        held = sorted(shapes) if isinstance(shapes, Mapping) else shapes
        raise StateDictEntryError(
            "shapes",
            f"state_dict['shapes'] holds the Tucker layers {held!r} but the model has "
            f"{sorted(layers)}",
        )
    for name, layer in layers.items():
        _check_layer_shapes(name, layer, shapes[name])
    for key in ("steps", "skipped_steps"):
        v = state_dict.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            raise StateDictEntryError(key, f"state_dict[{key!r}]={v!r} must be an int >= 0")
    if not isinstance(state_dict.get("frozen", False), bool):
        raise StateDictEntryError("frozen", "state_dict['frozen'] must be a bool")
    _check_optimizer_state(layers, optimizer, state_dict["optimizer"], shapes)
