"""Checks of stored Tucker layer shapes (state dicts, TDLRT checkpoints), torch-free.

Loading a state dict into a Tucker layer, :func:`tuckerflow.optim.resize_like` and
:meth:`tuckerflow.optim.TDLRT.load_state_dict` check every entry they are given against
these rules before they change anything, and refuse a malformed one with a
:class:`StateDictEntryError` naming it.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

from .ranks import invalid_mode

__all__ = ["StateDictEntryError", "check_tucker_shapes"]


class StateDictEntryError(ValueError, KeyError, RuntimeError):
    """A state dict entry is missing, of the wrong type or of a shape that does not fit.

    Raised before anything was changed; :attr:`entry` names the offending entry (e.g.
    ``"0.factors.1"`` or ``"state_dict['shapes']['0']['core']"``). A ``ValueError``; also a
    ``RuntimeError``, the type of ``torch.nn.Module.load_state_dict``'s errors, and a
    ``KeyError``, so that code catching either keeps working.
    """

    def __init__(self, entry: str, message: str) -> None:
        super().__init__(message)
        self.entry = entry

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def _shape(value, entry: str) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise StateDictEntryError(
            entry, f"{entry} must be a shape (a tuple of ints), got {value!r}"
        )
    for n in value:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise StateDictEntryError(entry, f"{entry}={tuple(value)!r} must hold ints only")
    return tuple(int(n) for n in value)


def check_tucker_shapes(
    weight_shape: Sequence[int],
    factorized_modes: Sequence[int],
    core_shape,
    factor_shapes: dict,
    *,
    core_entry: str,
    factor_entry: Callable[[int], str],
) -> tuple[int, ...]:
    """Check stored core and factor shapes against a layer; return the stored ranks.

    ``factor_shapes`` maps every factorized mode to the stored factor shape. The rules:
    the core has one entry per mode of ``weight_shape``; a mode kept full keeps its size;
    factor ``i`` is ``(n_i, r_i)`` with ``r_i`` the core's size in mode ``i``,
    ``1 ≤ r_i ≤ n_i`` and ``r_i ≤ ∏_{j≠i} r_j`` (a valid multilinear rank).
    """
    d = len(weight_shape)
    r = _shape(core_shape, core_entry)
    if len(r) != d:
        raise StateDictEntryError(
            core_entry,
            f"size mismatch for {core_entry}: stored shape {r} has {len(r)} modes, the "
            f"layer's weight {d} (weight_shape={tuple(weight_shape)})",
        )
    for i, (ri, n) in enumerate(zip(r, weight_shape)):
        if i not in factorized_modes:
            if ri != n:
                raise StateDictEntryError(
                    core_entry,
                    f"size mismatch for {core_entry}: stored shape {r}, but mode {i} is kept "
                    f"full in the layer: its size must be weight_shape[{i}]={n}",
                )
            continue
        entry = factor_entry(i)
        u = _shape(factor_shapes[i], entry)
        if u != (n, ri):
            raise StateDictEntryError(
                entry,
                f"size mismatch for {entry}: stored shape {u}, but the layer needs "
                f"(weight_shape[{i}], {core_entry} shape[{i}]) = ({n}, {ri})",
            )
        if not 1 <= ri <= n:
            raise StateDictEntryError(
                core_entry, f"{core_entry} has shape {r}: rank {ri} of mode {i} is not in 1..{n}"
            )
    bad = invalid_mode(r, factorized_modes)
    if bad is not None:
        i, other = bad
        raise StateDictEntryError(
            core_entry,
            f"{core_entry} has shape {r}: rank {r[i]} of mode {i} exceeds the product "
            f"of the other ranks ({other}); no tensor has this multilinear rank",
        )
    return r
