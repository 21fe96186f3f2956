"""Contraction of an ambient tensor with one matrix per mode.

:func:`contract` is the only access to an ambient tensor ``Z`` that the projection onto a
tangent space (and the integrators) need: ``Z ×_0 M_0 ×_1 M_1 ⋯`` for small matrices ``M_j``.
Three kinds of ``Z`` are understood:

* a dense tensor of the active backend;
* a Tucker tensor (:class:`tuckerflow.TuckerTensor`, TensorLy's ``TuckerTensor`` or a
  ``(core, factors)`` pair), contracted factor by factor at a cost independent of ``∏ n_i``;
* any object following the *Contractible* protocol (see :class:`Contractible`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import tensorly as tl
from tensorly import tucker_tensor as _tl_tucker
from tensorly.tenalg import mode_dot as _tl_mode_dot
from tensorly.tenalg import multi_mode_dot as _tl_multi_mode_dot

from .._backend import check_tensor
from ..tucker import as_tucker

__all__ = ["Contractible", "contract", "ambient_shape"]


@runtime_checkable
class Contractible(Protocol):
    """Protocol of a structured ambient tensor known only through its contractions.

    An object follows it when it has

    ``shape`` : tuple of int
        The shape ``(n_0, …, n_{d-1})`` of the (never formed) tensor ``Z``.
    ``contract(matrices)`` : method
        Given a list of ``d`` entries, each a matrix ``M_j`` of shape ``(m_j, n_j)`` or
        ``None``, returns the dense tensor ``Z ×_0 M_0 ×_1 M_1 ⋯`` (mode ``j`` left alone where
        ``M_j`` is ``None``), an array of the active backend of shape
        ``(m_j if M_j is not None else n_j for each j)``.

    Typical implementations: a sum of Kronecker-structured terms applied to a Tucker tensor,
    a sparse tensor of observed entries, a lazily evaluated operator. Cost is the
    implementer's business; :func:`tuckerflow.project` only ever asks for contractions in
    which at most one mode is left alone and every matrix has few rows.
    """

    shape: tuple

    def contract(self, matrices): ...


def _is_tucker(z) -> bool:
    return isinstance(z, _tl_tucker.TuckerTensor) or (
        isinstance(z, (tuple, list)) and len(z) == 2 and tl.is_tensor(z[0])
    )


def ambient_shape(z) -> tuple:
    """Shape of an ambient tensor of any of the three kinds accepted by :func:`contract`."""
    if tl.is_tensor(z):
        return tuple(tl.shape(z))
    if _is_tucker(z):
        return tuple(as_tucker(z, "Z").shape)
    if hasattr(z, "shape") and callable(getattr(z, "contract", None)):
        return tuple(int(n) for n in z.shape)
    raise TypeError(
        "Z must be a dense tensor of the active backend, a Tucker tensor, or an object with "
        f"a .shape and a .contract(matrices) method, got {type(z).__name__}"
    )


def _check_matrices(shape, matrices):
    d = len(shape)
    if isinstance(matrices, (str, bytes)) or not hasattr(matrices, "__len__"):
        raise TypeError(f"matrices must be a list of {d} matrices or None entries")
    matrices = list(matrices)
    if len(matrices) != d:
        raise ValueError(
            f"len(matrices)={len(matrices)} differs from Z.ndim={d}; give one entry per mode "
            "(None leaves a mode alone)"
        )
    for j, m in enumerate(matrices):
        if m is None:
            continue
        check_tensor(m, f"matrices[{j}]")
        if tl.ndim(m) != 2 or tl.shape(m)[1] != shape[j]:
            raise ValueError(
                f"matrices[{j}].shape={tuple(tl.shape(m))} must be (m, {shape[j]}) to contract "
                f"mode {j} of Z.shape={tuple(shape)}"
            )
    return matrices


def contract(z, matrices):
    """Dense ``Z ×_0 M_0 ×_1 M_1 ⋯`` with ``M_j = matrices[j]`` or mode ``j`` left alone.

    Parameters
    ----------
    z : dense tensor, Tucker tensor or Contractible
        The ambient tensor ``Z`` of shape ``(n_0, …, n_{d-1})``.
    matrices : list of d matrices or None
        ``matrices[j]`` has shape ``(m_j, n_j)``; ``None`` leaves mode ``j`` alone.

    Returns
    -------
    tensor
        Dense array of shape ``(m_j or n_j for each j)``.

    Notes
    -----
    For a Tucker tensor ``Z = D ×_j W_j`` the result is
    ``D ×_j (M_j W_j)`` (``W_j`` itself where ``M_j`` is ``None``): the products ``M_j W_j``
    cost ``O(m_j n_j s_j)`` and the mode products act on the small core, shrinking modes first
    and expanding ones last, so the cost never involves ``∏ n_j`` unless modes are left alone
    on purpose. A dense ``Z`` goes
    through ``tensorly.tenalg.multi_mode_dot``; any other object is asked for
    ``Z.contract(matrices)`` (the :class:`Contractible` protocol), whose result is checked
    for shape.

    Examples
    --------
    >>> import numpy as np, tuckerflow as tf
    >>> from tuckerflow.geometry import contract
    >>> Y = tf.random_tucker((6, 5, 4), (2, 2, 2), rng=0)
    >>> M = np.ones((1, 6))
    >>> contract(Y, [M, None, None]).shape
    (1, 5, 4)
    >>> bool(np.allclose(contract(Y, [M, None, None]), contract(Y.to_tensor(), [M, None, None])))
    True
    """
    shape = ambient_shape(z)
    matrices = _check_matrices(shape, matrices)
    expected = tuple(shape[j] if m is None else tl.shape(m)[0] for j, m in enumerate(matrices))
    if tl.is_tensor(z):
        modes = [j for j, m in enumerate(matrices) if m is not None]
        if not modes:
            return z
        return _tl_multi_mode_dot(z, [matrices[j] for j in modes], modes=modes)
    if _is_tucker(z):
        y = as_tucker(z, "Z")
        mats = [u if m is None else tl.dot(m, u) for m, u in zip(matrices, y.factors)]
        # shrinking modes first, expanding ones (e.g. a mode left alone) last: the
        # intermediate tensors stay as small as possible
        order = sorted(range(len(mats)), key=lambda j: tl.shape(mats[j])[0] / tl.shape(mats[j])[1])
        out = y.core
        for j in order:
            out = _tl_mode_dot(out, mats[j], j)
        return out
    out = z.contract(matrices)
    check_tensor(out, "Z.contract(matrices)")
    if tuple(tl.shape(out)) != expected:
        raise ValueError(
            f"Z.contract(matrices) returned shape {tuple(tl.shape(out))}, expected {expected}"
        )
    return out
