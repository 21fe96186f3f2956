"""Carrying a core's optimizer state into new bases (augmentation, truncation, BUG steps).

When the bases of a Tucker layer change from ``U_i`` to ``U_i'`` the core is rewritten as
``C' = C ×_i B_i`` with ``B_i = U_i'ᴴ U_i``: at augmentation ``B_i = M̂_i = Û_iᴴ U_i`` (the
identity on top of zeros when ``Û_i`` starts with ``U_i``), at truncation ``B_i = P_iᴴ``
(orthonormal rows). Every per-entry quantity the base optimizer keeps for the core has to
follow, or the next step would apply moments computed in the old coordinates to the new ones.

Rule (documented in ``docs/api/optim.rst``):

* *Linear* state (momentum buffers, Adam's ``exp_avg``, ASGD's ``ax`` and any tensor of the
  core's shape whose key is not listed in :data:`NONNEGATIVE_STATE_KEYS`) lives in the same
  space as the core and is transported exactly: ``m' = m ×_i B_i``.
* *Non-negative* state (second moments such as Adam's ``exp_avg_sq``, RMSprop's
  ``square_avg``, Adagrad's ``sum``) is a per-coordinate variance and has no exact transport.
  We use the mixture ``v' = v ×_i |B_i|^{∘2} + (1 − 1 ×_i |B_i|^{∘2})₊ · mean(v)``, clamped at
  zero: each new coordinate receives the old variances weighted by the squared entries of the
  basis change (exact for permutations and the identity block); since the rows of ``B_i`` have
  norm at most one, the weights sum to at most one and what is missing (a new direction, for
  which no history exists) is filled with the mean old variance. This keeps Adam-type steps in
  new directions at the size of steps in old ones, instead of the ``1/√(1−β₂)`` times larger
  first step that a zero second moment would give.
* Factored second moments (Adafactor's ``row_var`` of shape ``(…, m, 1)`` and ``col_var``
  of shape ``(…, 1, n)``) are expanded to the full variance estimate
  ``row ⊗ col / mean(row)`` that Adafactor itself uses, transported by the non-negative
  rule, and factored again by row and column means.
* Everything else (step counters, tensors of other shapes, Python scalars) is kept as is.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

__all__ = [
    "NONNEGATIVE_STATE_KEYS",
    "mode_products",
    "transport_linear",
    "transport_nonnegative",
    "transport_state",
]

#: Keys of per-parameter optimizer state holding non-negative per-coordinate quantities
#: (second moments and step sizes of the optimizers in ``torch.optim``).
NONNEGATIVE_STATE_KEYS = frozenset(
    {"exp_avg_sq", "max_exp_avg_sq", "square_avg", "sum", "acc_delta", "step_size"}
)


def _check_matrices(matrices, shape, name):
    """``matrices``: one ``(r_i', shape[i])`` torch matrix or None per mode of ``shape``."""
    import torch

    if isinstance(matrices, (str, bytes)) or not isinstance(matrices, (list, tuple)):
        raise TypeError(f"matrices must be a list of torch matrices or None, got {matrices!r}")
    if len(matrices) != len(shape):
        raise ValueError(
            f"matrices has {len(matrices)} entries but {name} has {len(shape)} modes "
            f"(shape {tuple(shape)})"
        )
    for i, b in enumerate(matrices):
        if b is None:
            continue
        if not isinstance(b, torch.Tensor):
            raise TypeError(f"matrices[{i}] must be a torch.Tensor or None, got {type(b).__name__}")
        if b.ndim != 2 or b.shape[1] != shape[i]:
            raise ValueError(
                f"matrices[{i}].shape={tuple(b.shape)} must be (r, {shape[i]}) to act on "
                f"mode {i} of {name} (shape {tuple(shape)})"
            )


def _check_tensor(x, matrices, name):
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    _check_matrices(matrices, tuple(x.shape), name)


def mode_products(x, matrices):
    """``x ×_0 matrices[0] ×_1 matrices[1] ⋯`` for torch tensors (None: mode left alone)."""
    import torch

    for i, m in enumerate(matrices):
        if m is not None:
            x = torch.movedim(torch.tensordot(m, x, dims=([1], [i])), 0, i)
    return x


def embedding(rows, cols, like):
    """The ``rows × cols`` matrix ``[I; 0]`` in the dtype and on the device of ``like``."""
    import torch

    return torch.eye(rows, cols, dtype=like.dtype, device=like.device)


def basis_change(x, matrices, embedded=()):
    """``x ×_i matrices[i]``, where the modes ``embedded`` hold ``[I; 0]``: those are
    zero-padded (the same numbers as the products, without their cost). Always a new
    tensor."""
    sizes = list(x.shape)
    for i in embedded:
        sizes[i] = matrices[i].shape[0]
    rest = [None if i in embedded else m for i, m in enumerate(matrices)]
    if list(x.shape) != sizes:
        out = x.new_zeros(sizes)
        out[tuple(slice(0, n) for n in x.shape)] = x
        x = out
    elif all(m is None for m in rest):
        return x.clone()
    return mode_products(x, rest)


def transport_linear(m, matrices):
    """Exact transport of a quantity living in core coordinates: ``m ×_i B_i``.

    Examples
    --------
    >>> import torch
    >>> from tuckerflow.optim.transport import transport_linear
    >>> m = torch.ones(2, 2)
    >>> B = torch.eye(3)[:, :2]  # augmentation: identity block on top of zeros
    >>> transport_linear(m, [B, B]).tolist()
    [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    """
    _check_tensor(m, matrices, "m")
    return mode_products(m, [None if b is None else b.to(m.dtype) for b in matrices])


def transport_nonnegative(v, matrices):
    """Transport of a non-negative per-coordinate quantity (second moments).

    Notes
    -----
    ``v' = v ×_i W_i + (1 − 1 ×_i W_i)₊ · mean(v)`` with ``W_i = |B_i|^{∘2}`` (entrywise
    squared magnitudes), clamped at zero. Because ``1 ×_i W_i`` is the outer product of the
    row sums of the ``W_i``, the fill costs no more than the transport itself.

    Examples
    --------
    >>> import torch
    >>> from tuckerflow.optim.transport import transport_nonnegative
    >>> v = torch.tensor([[1.0, 3.0]])
    >>> B = torch.eye(3)[:, :2]
    >>> transport_nonnegative(v, [None, B]).tolist()  # the new column gets mean(v) = 2
    [[1.0, 3.0, 2.0]]
    """
    import torch

    _check_tensor(v, matrices, "v")
    weights = [None if b is None else b.abs().to(v.dtype) ** 2 for b in matrices]
    moved = mode_products(v, weights)
    mass = torch.ones((), dtype=v.dtype, device=v.device)
    for i, w in enumerate(weights):
        n = v.shape[i] if w is None else w.shape[0]
        row = torch.ones(n, dtype=v.dtype, device=v.device) if w is None else w.sum(dim=1)
        shape = [1] * v.dim()
        shape[i] = n
        mass = mass * row.reshape(shape)
    fill = (1.0 - mass).clamp_min(0.0) * v.mean()
    return (moved + fill).clamp_min(0.0)


def transport_state(state, old_shape, matrices, embedded=()):
    """A new state dict with every tensor of shape ``old_shape`` carried by ``B_i``.

    Parameters
    ----------
    state : dict
        Per-parameter state of a ``torch.optim`` optimizer (not modified).
    old_shape : tuple
        Shape of the core the state belongs to.
    matrices : list of tensors or None
        ``B_i`` (``r_i' × r_i``) per mode; None leaves a mode alone.
    embedded : iterable of int, optional
        Modes whose ``B_i`` is the embedding ``[I; 0]`` (an augmentation that keeps the old
        basis): linear state is zero-padded there, the same numbers as the product.

    Returns
    -------
    dict
        Same keys; transported tensors are new objects, everything else is shared.
    """
    import torch

    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a dict of optimizer state, got {type(state).__name__}")
    if isinstance(old_shape, (str, bytes)) or not isinstance(old_shape, Sequence):
        raise TypeError(f"old_shape must be a tuple of ints, got {old_shape!r}")
    for i, n in enumerate(old_shape):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"old_shape[{i}]={n!r} must be an int >= 0")
    out = {}
    old_shape = tuple(int(n) for n in old_shape)
    _check_matrices(matrices, old_shape, "old_shape")
    row, col = state.get("row_var"), state.get("col_var")
    if _is_factored_pair(row, col, old_shape):
        full = (row @ col) / row.mean(dim=-2, keepdim=True).clamp_min(torch.finfo(row.dtype).tiny)
        moved = transport_nonnegative(full, matrices)
        out["row_var"] = moved.mean(dim=-1, keepdim=True)
        out["col_var"] = moved.mean(dim=-2, keepdim=True)
    for key, value in state.items():
        if key in out:
            continue
        if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) == old_shape:
            if key in NONNEGATIVE_STATE_KEYS:
                out[key] = transport_nonnegative(value, matrices)
            elif embedded:
                _check_tensor(value, matrices, "m")
                cast = [None if b is None else b.to(value.dtype) for b in matrices]
                out[key] = basis_change(value, cast, tuple(embedded))
            else:
                out[key] = transport_linear(value, matrices)
        else:
            out[key] = value
    return out


def _is_factored_pair(row, col, shape):
    import torch

    if not (isinstance(row, torch.Tensor) and isinstance(col, torch.Tensor)) or len(shape) < 2:
        return False
    return tuple(row.shape) == shape[:-1] + (1,) and tuple(col.shape) == (
        shape[:-2] + (1,) + shape[-1:]
    )
