"""Ambient tensors: what the geometry and the integrators may ask of a right-hand side.

The projection onto a tangent space (:mod:`tuckerflow.geometry`) and every step of the
integrators (:mod:`tuckerflow.integrate`) touch an ambient tensor ``Z`` of shape
``(n_0, …, n_{d-1})`` only through contractions with small matrices,
``Z ×_0 M_0 ×_1 M_1 ⋯``. This module is the one place that defines that access. Three kinds
of ``Z`` are understood:

* a dense tensor of the active backend;
* a Tucker tensor (:class:`tuckerflow.TuckerTensor`, TensorLy's ``TuckerTensor`` or a
  ``(core, factors)`` pair), contracted factor by factor at a cost independent of ``∏ n_i``;
* any object following the :class:`Contractible` protocol (the structured operators of
  :mod:`tuckerflow.operators` return such objects).

Functions: :func:`ambient_shape`, :func:`contract` (validated, for users),
:func:`unfolded_contract` (``Mat_i(Z ×_{j≠i} M_j) @ R`` without the large intermediate) and
:func:`complement_norm` (the norm of the part of ``Z`` outside a tensor-product space, the
quantity the integrators' error estimate needs). The module sits above the Tucker core
(:mod:`tuckerflow.tucker`) and below :mod:`tuckerflow.operators`,
:mod:`tuckerflow.geometry` and :mod:`tuckerflow.integrate`; it imports neither of them.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import tensorly as tl
from tensorly import tucker_tensor as _tl_tucker
from tensorly.tenalg import mode_dot as _tl_mode_dot

from ._backend import check_tensor, conj_t, to_float
from ._host import to_host
from .linalg import _check_mode_matrices, _mode_products, left_singular
from .linalg import mode_products as mode_products  # importable from here, as before
from .tucker import TuckerTensor, as_tucker

__all__ = [
    "ContractionError",
    "Contractible",
    "ambient_norm",
    "ambient_shape",
    "complement_directions",
    "complement_norm",
    "contract",
    "unfolded_contract",
]


class ContractionError(ValueError):
    """A :class:`Contractible` returned a contraction of the wrong shape."""


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

    Optional methods, used when present:

    ``unfolded_contract(matrices, mode, right)``
        ``Mat_mode(Z.contract(matrices)) @ right`` with ``matrices[mode] = None``, without the
        ``n_mode × ∏_{j≠mode} m_j`` intermediate (the K-steps of the integrators ask for it).
    ``to_tucker()``
        An exact Tucker form of ``Z`` (used by :func:`complement_norm`, i.e. by the error
        estimate of the adaptive integrators and their dense output); without it, and
        without ``to_tensor()``, that estimate contracts ``Z`` with nothing, i.e. forms it.

    Typical implementations: a sum of Kronecker-structured terms applied to a Tucker tensor,
    a sparse tensor of observed entries, a lazily evaluated operator. Cost is the
    implementer's business; the projection only ever asks for contractions in which at most
    one mode is left alone and every matrix has few rows.
    """

    shape: tuple

    def contract(self, matrices): ...


def unfolded_products(x, matrices, mode):
    """``Mat_mode(x ×_{j≠mode} M_j)`` (``matrices[mode]`` ignored), TensorLy's unfolding."""
    mats = list(matrices)
    mats[mode] = None
    x = _mode_products(x, mats)
    return tl.reshape(tl.moveaxis(x, mode, 0), (tl.shape(x)[mode], -1))


def is_tucker(z) -> bool:
    """Whether ``z`` is a Tucker tensor in one of the accepted forms."""
    return isinstance(z, _tl_tucker.TuckerTensor) or (
        isinstance(z, (tuple, list)) and len(z) == 2 and tl.is_tensor(z[0])
    )


def ambient_shape(z) -> tuple:
    """Shape of an ambient tensor of any of the three kinds accepted by :func:`contract`."""
    if tl.is_tensor(z):
        return tuple(tl.shape(z))
    if is_tucker(z):
        if isinstance(z, TuckerTensor):
            return tuple(z.shape)
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
    _check_mode_matrices(
        matrices,
        shape,
        lambda j, m: (
            f"matrices[{j}].shape={m} must be (m, {shape[j]}) to contract mode {j} of "
            f"Z.shape={tuple(shape)}"
        ),
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
    >>> from tuckerflow.ambient import contract
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
    out = contract_unchecked(z, matrices)
    if not (tl.is_tensor(z) or is_tucker(z)):
        check_tensor(out, "Z.contract(matrices)")
        _check_result_shape(out, expected)
    return out


def _check_result_shape(out, expected):
    got = tuple(tl.shape(out))
    if got != tuple(expected):
        raise ContractionError(
            f"Z.contract(matrices) returned shape {got}, expected {tuple(expected)}"
        )
    return out


def contract_unchecked(z, matrices):
    """:func:`contract` without validating the inputs (for inner loops whose inputs are known
    good); the result of a :class:`Contractible` is still checked for shape (O(1)) and a wrong
    one raises :class:`ContractionError`."""
    if tl.is_tensor(z):
        if all(m is None for m in matrices):
            return z
        return _mode_products(z, matrices)
    if is_tucker(z):
        core, factors = z
        mats = [u if m is None else tl.dot(m, u) for m, u in zip(matrices, factors)]
        if all(tl.shape(a)[0] <= tl.shape(a)[1] for a in mats):
            return _mode_products(core, mats)
        # shrinking modes first, expanding ones (e.g. a mode left alone) last: the
        # intermediate tensors stay as small as possible
        order = sorted(range(len(mats)), key=lambda j: tl.shape(mats[j])[0] / tl.shape(mats[j])[1])
        out = core
        for j in order:
            out = _tl_mode_dot(out, mats[j], j)
        return out
    expected = tuple(n if m is None else tl.shape(m)[0] for n, m in zip(z.shape, matrices))
    return _check_result_shape(z.contract(matrices), expected)


def unfolded_contract(z, matrices, mode, right):
    """``Mat_mode(Z ×_{j≠mode} M_j) @ right`` (``matrices[mode]`` is None).

    Parameters
    ----------
    z : dense tensor, Tucker tensor or Contractible
    matrices : list of d matrices or None, ``matrices[mode] is None``
    mode : int
    right : matrix of shape ``(∏_{j≠mode} m_j, k)``

    Returns
    -------
    tensor of shape ``(n_mode, k)``

    Notes
    -----
    A Tucker ``Z = D ×_j W_j`` gives ``W_mode · (Mat_mode(D ×_{j≠mode} M_j W_j) @ right)``,
    costing ``O(n_mode s · k)`` instead of the ``O(n_mode ∏ m_j)`` memory traffic of the
    intermediate; objects with an ``unfolded_contract(matrices, mode, right)`` method are
    asked for it; anything else goes through :func:`contract`. This is the right-hand side of
    a K-step of the integrators. Inputs are not validated (an inner-loop function).
    """
    method = getattr(z, "unfolded_contract", None)
    if method is not None:
        return method(matrices, mode, right)
    if is_tucker(z):
        core, factors = z
        mats = [None if m is None else tl.dot(m, u) for m, u in zip(matrices, factors)]
        small = unfolded_products(core, mats, mode)
        return tl.dot(factors[mode], tl.dot(small, right))
    return tl.dot(tl.unfold(contract_unchecked(z, matrices), mode), right)


# ------------------------------------------------------------------------------------------
# the part of Z outside a tensor-product space


def _tucker_parts(z):
    """``z`` as a list of ``(core, factors)`` Tucker terms, or None when it has no such form.

    Terms may share factor matrices (the same object): :func:`complement_norm` factors each
    distinct matrix once.
    """
    if is_tucker(z):
        core, factors = z
        return [(core, list(factors))]
    terms = getattr(z, "tucker_terms", None)
    if callable(terms):
        return [(c, list(f)) for c, f in terms()]
    parts = getattr(z, "parts", None)
    if parts is not None and not callable(parts):
        out = []
        for p in parts:
            sub = _tucker_parts(p)
            if sub is None:
                return None
            out.extend(sub)
        return out
    to_tucker = getattr(z, "to_tucker", None)
    if callable(to_tucker):
        y = to_tucker()
        return [(y.core, list(y.factors))]
    return None


def _dense(z):
    if tl.is_tensor(z):
        return z
    to_tensor = getattr(z, "to_tensor", None)
    if callable(to_tensor):
        return to_tensor()
    return contract_unchecked(z, [None] * len(ambient_shape(z)))


def complement_norm(z, bases, *, weights=None):
    """``‖(I − P) Σ_k w_k Z_k‖_F`` with ``P`` the projection onto ``span(B_0 ⊗ ⋯ ⊗ B_{d-1})``.

    Parameters
    ----------
    z : ambient tensor, or a sequence of ambient tensors ``Z_k`` when ``weights`` is given
    bases : sequence of d matrices ``B_j`` with orthonormal columns (possibly none)
    weights : sequence of numbers, optional
        Coefficients ``w_k`` of a linear combination of the tensors in ``z``.

    Returns
    -------
    float

    Notes
    -----
    The projection is ``P = ⊗_j B_j B_jᴴ``, and ``I − P = Σ_j P_0 ⊗ ⋯ ⊗ P_{j-1} ⊗ (I − P_j)
    ⊗ I ⊗ ⋯ ⊗ I`` is a sum of mutually orthogonal projections, so the squared norm is the sum
    of the squared norms of ``d`` terms; each is computed directly, never as a difference of
    norms (which would lose everything below ``sqrt(eps) ‖Z‖``). For sums of Tucker terms
    ``Σ_k D_k ×_j W_{k,j}`` (Tucker tensors, and the values of
    :class:`tuckerflow.operators.KroneckerSum`, which share their factor images) every
    distinct factor splits as ``W = B A + Q R`` (``A = Bᴴ W``, ``Q R`` the QR of the rest of
    all distinct factors of mode ``j`` side by side; where they are at least as many as the
    complement of ``B`` has dimensions, ``Q`` is all of it, from a complete QR of ``B``, so no
    small tensor is larger than ``n_j`` in any mode), and term ``j`` is the norm of the small
    tensor ``Σ_k D_k ×_{m<j} A_{k,m} ×_j R_{k,j} ×_{m>j} [A_{k,m}; R_{k,m}]``: the cost
    does not involve ``∏ n_j``. Dense tensors, and objects with neither form, are handled
    densely.

    Examples
    --------
    >>> import numpy as np, tuckerflow as tf
    >>> from tuckerflow.ambient import complement_norm
    >>> Y = tf.random_tucker((6, 5, 4), 2, rng=0)
    >>> B = [u[:, :1] for u in Y.factors]
    >>> from tensorly.tenalg import multi_mode_dot
    >>> X = Y.to_tensor()
    >>> P = multi_mode_dot(X, [b @ b.T for b in B])
    >>> bool(np.isclose(complement_norm(Y, B), np.linalg.norm(X - P)))
    True
    """
    zs = list(z) if weights is not None else [z]
    ws = [1.0] * len(zs) if weights is None else list(weights)
    if len(ws) != len(zs):
        raise ValueError(f"got {len(zs)} tensors but {len(ws)} weights")
    bases = list(bases)
    parts = []
    for zk, wk in zip(zs, ws):
        sub = _tucker_parts(zk)
        if sub is None:
            parts = None
            break
        parts.extend((core * wk if wk != 1.0 else core, f) for core, f in sub)
    if parts is None:
        dense = None
        for zk, wk in zip(zs, ws):
            x = _dense(zk) * wk
            dense = x if dense is None else dense + x
        return _dense_complement_norm(dense, bases)
    return _tucker_complement_norm(parts, bases)


def ambient_norm(z) -> float:
    """Frobenius norm of an ambient tensor, computed as :func:`complement_norm` does."""
    shape = ambient_shape(z)
    if tl.is_tensor(z):
        return to_float(tl.norm(z))
    parts = _tucker_parts(z)
    if parts is None:
        return to_float(tl.norm(_dense(z)))
    ref = parts[0][0]
    empty = [tl.zeros((n, 0), **tl.context(ref)) for n in shape]
    return _tucker_complement_norm(parts, empty)


def _dense_complement_norm(x, bases):
    total2 = 0.0
    work = x
    for j, b in enumerate(bases):
        bh = conj_t(b)
        inside = _tl_mode_dot(work, bh, j)
        outside = work - _tl_mode_dot(inside, b, j)
        total2 += to_float(tl.norm(outside)) ** 2
        work = inside
    return math.sqrt(total2)


def _tucker_complement_norm(parts, bases):
    d = len(bases)
    inside, rest, _ = _split_factors(parts, bases)
    total2 = 0.0
    for j in range(d):
        term = None
        for k, (core, _) in enumerate(parts):
            mats = [
                inside[m][k]
                if m < j
                else rest[m][k]
                if m == j
                else tl.concatenate([inside[m][k], rest[m][k]], axis=0)
                for m in range(d)
            ]
            x = _mode_products(core, mats)
            term = x if term is None else term + x
        total2 += to_float(tl.norm(term)) ** 2
    return math.sqrt(total2)


def _split_factors(parts, bases):
    """Per mode: the coordinates of every part's factor in ``[B_j, Q_j]`` (``A``, ``R``) and
    ``Q_j``, an orthonormal basis of the distinct factors' parts outside ``B_j``."""
    d = len(bases)
    inside = [[None] * len(parts) for _ in range(d)]
    rest = [[None] * len(parts) for _ in range(d)]
    qs = []
    for j, b in enumerate(bases):
        distinct, index = [], {}
        for _, f in parts:
            key = id(f[j])
            if key not in index:
                index[key] = len(distinct)
                distinct.append(f[j])
        widths = [tl.shape(w)[1] for w in distinct]
        w = tl.concatenate(distinct, axis=1) if len(distinct) > 1 else distinct[0]
        bh = conj_t(b)
        a = tl.dot(bh, w)
        n = w - tl.dot(b, a)
        corr = tl.dot(bh, n)  # one re-orthogonalisation pass
        a = a + corr
        n = n - tl.dot(b, corr)
        rows, kept = tl.shape(b)
        if tl.shape(w)[1] >= rows - kept:
            # the parts can fill the complement of B_j: take all of it, the last columns of
            # a complete QR of B_j, so that [A; R] has n_j rows, not r_j + width (exact:
            # B_j B_jᴴ + Q_j Q_jᴴ = I, no rank decision)
            q = tl.qr(b, mode="complete")[0][:, kept:]
            r = tl.dot(conj_t(q), n)
        else:
            q, r = tl.qr(n)
        qs.append(q)
        starts = [0]
        for wd in widths:
            starts.append(starts[-1] + wd)
        for k, (_, f) in enumerate(parts):
            c = index[id(f[j])]
            sl = slice(starts[c], starts[c + 1])
            inside[j][k] = a[:, sl]
            rest[j][k] = r[:, sl]
    return inside, rest, qs


def complement_directions(z, bases, threshold):
    """Directions, per mode, of the part of ``Z`` outside ``span(B_0 ⊗ ⋯ ⊗ B_{d-1})``.

    Parameters
    ----------
    z : ambient tensor with a Tucker form (Tucker tensor, ``tucker_terms()``, ``to_tucker()``,
        or a sum of those); other kinds give no directions
    bases : sequence of d matrices with orthonormal columns
    threshold : float
        Keep the directions whose singular value exceeds it.

    Returns
    -------
    list of d matrices ``(n_j, k_j)`` (``k_j`` may be 0), orthonormal and orthogonal to
    ``B_j``, or None when ``z`` has no Tucker form.

    Notes
    -----
    With the splitting of :func:`complement_norm`, the rows of ``Mat_j((I − P) Z)`` outside
    ``B_j`` are those of ``Mat_j(Σ_k D_k ×_j R_{k,j} ×_{m≠j} [A_{k,m}; R_{k,m}])`` in the
    basis ``Q_j``: their left singular vectors above ``threshold`` are the directions of mode
    ``j`` in which ``Z`` leaves the space. A component orthogonal to the bases in every mode
    at once shows up here in every mode, although no contraction of ``Z`` with the bases of
    the other modes can see it.
    """
    parts = _tucker_parts(z)
    if parts is None:
        return None
    bases = list(bases)
    d = len(bases)
    inside, rest, qs = _split_factors(parts, bases)
    out = []
    for j in range(d):
        term = None
        for k, (core, _) in enumerate(parts):
            mats = [
                rest[m][k] if m == j else tl.concatenate([inside[m][k], rest[m][k]], axis=0)
                for m in range(d)
            ]
            x = _mode_products(core, mats)
            term = x if term is None else term + x
        if tl.shape(term)[j] == 0:  # B_j spans the whole mode: nothing outside it
            out.append(qs[j][:, :0])
            continue
        # the Gram path: directions far below ‖Z‖ (its round-off) are not wanted here
        u, s = left_singular(tl.unfold(term, j), method="gram")
        s_host = to_host(s, dtype=None)
        keep = int((s_host > threshold).sum())
        out.append(tl.dot(qs[j], u[:, :keep]))
    return out
