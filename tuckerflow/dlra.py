"""Building blocks of dynamical low-rank approximation (DLRA) steps on Tucker tensors.

The integrators of :mod:`tuckerflow.integrate` and the TDLRT optimizer share these pieces:
the QR of a core unfolding that defines the K-step, the augmentation of a basis by new
directions, the core of a Tucker tensor written in augmented bases, and the truncation of an
augmented core with the rank rule of :mod:`tuckerflow.truncation`. Every function is written
against TensorLy's backend abstraction (NumPy, PyTorch, CuPy; real and complex dtypes) and
never forms a tensor of size ``∏ n_i``.

A factor given as ``None`` stands for the identity (a mode kept full, as in a layer whose
spatial modes are not factorized); such a mode is never augmented nor truncated.

References
----------
.. [CL22] G. Ceruti and C. Lubich, "An unconventional robust integrator for dynamical
   low-rank approximation", BIT Numer. Math. 62, 2022 (arXiv:2010.02022).
.. [CKL22] G. Ceruti, J. Kusch and C. Lubich, "A rank-adaptive robust integrator for
   dynamical low-rank approximation", BIT Numer. Math. 62, 2022 (arXiv:2104.05247).
.. [ZSCKT24] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch and F. Tudisco,
   "Geometry-aware training of factorized layers in tensor Tucker format", NeurIPS 2024
   (arXiv:2305.19059).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorly as tl

from ._backend import check_finite, check_tensor, conj_t, eps
from .linalg import GRAM_SAFETY, _left_singular, _mode_products, _orth, _svd, left_singular, svd
from .ranks import check_tolerance, largest_valid_rank, per_mode, rank_spec
from .recompression import TruncationInfo, _to_host, recompress
from .tucker import TuckerTensor
from .typing import RankBound, Tensor

__all__ = ["augment_basis", "augmented_core", "core_qr", "truncate_core"]

#: Default relative threshold factor of :func:`augment_basis`: directions of
#: ``(I − U0 U0ᴴ) K`` with singular value at most ``AUGMENT_RTOL_FACTOR · eps · ‖K‖_F`` are
#: dropped as round-off. The computed projection, and the rounding of ``K`` itself, carry an
#: error of spectral norm about ``0.6 · eps · ‖K‖_F`` (measured for n = 16…4096,
#: r = 1…64, k = r…2r, independent of n: the entrywise errors ``~eps·|K_ij|`` spread over
#: ``n·k`` entries); the factor leaves a margin of more than an order of magnitude.
AUGMENT_RTOL_FACTOR = 16.0

#: Margin of the Gram path of :func:`augment_basis`: it is taken when the squared drop level
#: exceeds ``AUGMENT_GRAM_SAFETY · (√n + k) · eps64 · ‖K‖²``, the probabilistic size of the
#: round-off of a float64-accumulated ``wᴴw`` and of its eigen-decomposition.
AUGMENT_GRAM_SAFETY = 100.0

_EPS64 = float(np.finfo(np.float64).eps)


def _gram_is_invisible(rel2, rows):
    """Whether a Gram matrix accumulated in float64 resolves a relative squared level ``rel2``.

    The eigenvalues of ``AᴴA`` (or ``AAᴴ``) formed and decomposed in float64 carry an absolute
    error of about ``rows · eps64 · ‖A‖²`` (``rows``: length of the inner products); a
    decision taken at ``rel2 · ‖A‖²`` is unaffected when it is ``GRAM_SAFETY`` times larger.
    """
    return rel2 > GRAM_SAFETY * rows * _EPS64


def core_qr(core: Tensor, mode: int) -> tuple[Tensor, Tensor]:
    """Thin QR of the conjugate-transposed mode unfolding of a core.

    Parameters
    ----------
    core : tensor, shape ``(r_1, …, r_d)``
    mode : int

    Returns
    -------
    Q : tensor, shape ``(∏_{j≠i} r_j, r_i')``
        Orthonormal columns, ``r_i' = min(r_i, ∏_{j≠i} r_j)``.
    S : tensor, shape ``(r_i, r_i')``
        With ``Mat_i(C) = S Qᴴ``.

    Notes
    -----
    ``Mat_i(C)ᴴ = Q Sᴴ``. With ``V_i = (⊗_{j≠i} U_j) Q`` (never formed) the unfolding of
    ``Y = C ×_j U_j`` factors as ``Mat_i(Y) = (U_i S) V_iᴴ``: ``K_i = U_i S`` is the starting
    value of the K-step of mode ``i`` [1]_.

    References
    ----------
    .. [1] Ceruti & Lubich, BIT 2022 (arXiv:2010.02022).

    Examples
    --------
    >>> import numpy as np, tensorly as tl
    >>> from tuckerflow.dlra import core_qr
    >>> C = np.random.default_rng(0).standard_normal((2, 3, 4))
    >>> Q, S = core_qr(C, 1)
    >>> Q.shape, S.shape
    ((8, 3), (3, 3))
    >>> bool(np.allclose(S @ Q.T, tl.unfold(C, 1)))
    True
    """
    check_tensor(core, "core")
    d = tl.ndim(core)
    if isinstance(mode, bool) or not isinstance(mode, (int, np.integer)) or not 0 <= mode < d:
        raise ValueError(f"mode={mode!r} must be an integer in [0, {d}) for a core with {d} modes")
    check_finite(core, "core")
    return _core_qr(core, int(mode))


def _core_qr(core, mode):
    """:func:`core_qr` without validation, for callers whose core is known finite (the
    integrators check every state once per substep)."""
    q, r = tl.qr(conj_t(tl.unfold(core, mode)))
    return q, _resolved(conj_t(r))


def _resolved(x):
    """Materialise a lazily conjugated PyTorch view (other backends return ``x``)."""
    resolve = getattr(x, "resolve_conj", None)
    return resolve() if resolve is not None else x


def augment_basis(U0: Tensor, K: Tensor, *, rtol: float | None = None) -> Tensor:
    """Orthonormal basis ``[U0, Ũ]`` of ``span[U0, K]`` that starts with ``U0`` exactly.

    Parameters
    ----------
    U0 : tensor, shape ``(n, r)``
        Orthonormal columns.
    K : tensor, shape ``(n, k)``
        New directions (e.g. the result of a K-step, or a gradient).
    rtol : float, optional
        Directions of ``(I − U0 U0ᴴ) K`` with singular value ``≤ rtol · ‖K‖_F`` are dropped
        as numerically null. Default ``AUGMENT_RTOL_FACTOR · eps`` (16 eps) of the dtype of
        ``U0``: the round-off level of the computed projection (see Notes).

    Returns
    -------
    U_hat : tensor, shape ``(n, r + m)``
        ``U_hat[:, :r] == U0``; ``m ≤ min(k, n − r)``; orthonormal columns.

    Notes
    -----
    ``W = (I − U0 U0ᴴ) K`` is computed with one re-orthogonalisation pass (classical
    Gram–Schmidt twice is enough), its left singular vectors with singular values above the
    threshold span the new directions, which are projected once more against ``U0`` and
    orthonormalised by QR. This is the augmentation ``Û = orth([K, U0])`` of the
    rank-adaptive BUG integrator [1]_ and of TDLRT [2]_, written so that the old
    basis is kept as is.

    The drop level is the round-off of the quantity computed. In floating point with unit
    round-off ``u``, the computed ``W`` differs from the exact projection of the exact ``K``
    by a matrix ``E`` whose entries are a few rounding errors of the entries of ``K`` and
    of ``U0 U0ᴴ K``; its spectral norm is ``‖E‖₂ ≈ c · u · ‖K‖_F`` with ``c`` below 1 in
    practice and no growth with ``n`` (the errors spread over all ``n · k`` entries, and a
    random ``n × k`` matrix has ``‖E‖₂ ≈ (√n + √k)/√(nk) · ‖E‖_F``). Directions of ``W``
    below ``16 u ‖K‖_F`` are therefore indistinguishable from round-off; every direction
    above is kept, whatever ``n`` is. When ``K = U0 S + D`` with a small new part ``D``
    (a K-step ``K = U S − λ g``), pass ``D`` itself: ``span[U0, K] = span[U0, D]``, and the
    drop level becomes ``16 u ‖D‖_F`` instead of ``16 u ‖K‖_F``.

    References
    ----------
    .. [1] Ceruti, Kusch & Lubich, BIT 2022 (arXiv:2104.05247).
    .. [2] Zangrando et al., NeurIPS 2024 (arXiv:2305.19059).

    Examples
    --------
    >>> import numpy as np
    >>> from tuckerflow.dlra import augment_basis
    >>> U0 = np.eye(5)[:, :2]
    >>> K = np.random.default_rng(0).standard_normal((5, 2))
    >>> U = augment_basis(U0, K)
    >>> U.shape, bool(np.array_equal(U[:, :2], U0))
    ((5, 4), True)
    >>> augment_basis(U0, U0 @ np.ones((2, 3))).shape  # nothing new
    (5, 2)
    """
    check_tensor(U0, "U0")
    check_tensor(K, "K")
    if tl.ndim(U0) != 2 or tl.ndim(K) != 2:
        raise ValueError(
            f"U0 and K must be matrices, got U0.shape={tuple(tl.shape(U0))}, "
            f"K.shape={tuple(tl.shape(K))}"
        )
    n, r = tl.shape(U0)
    if tl.shape(K)[0] != n:
        raise ValueError(f"K.shape[0]={tl.shape(K)[0]} differs from U0.shape[0]={n}")
    rtol = AUGMENT_RTOL_FACTOR * eps(U0) if rtol is None else check_tolerance(rtol, "rtol")
    return _augment_basis(U0, K, rtol)


def _augment_basis(U0, K, rtol=None, *, finite=False):
    """:func:`augment_basis` without validating its arguments (matrices of matching rows).

    ``finite=True``: ``K`` (and ``U0``) are known to be finite, e.g. the K-step results of
    the integrators, which are checked once per substep; the factorisation then skips its
    own finiteness check (one reduction and one host transfer).
    """
    n, r = tl.shape(U0)
    if rtol is None:
        rtol = AUGMENT_RTOL_FACTOR * eps(U0)
    room = n - r
    if room == 0 or tl.shape(K)[1] == 0:
        return U0
    u0h = conj_t(U0)
    w = K - tl.dot(U0, tl.dot(u0h, K))
    w = w - tl.dot(U0, tl.dot(u0h, w))
    # the threshold rtol·‖K‖ ≥ rtol·‖w‖: with the default rtol in single precision it lies far
    # above the round-off of wᴴw accumulated in float64 (products of float32 numbers are exact
    # in float64, the sums err by about √n·eps64·‖w‖², the small eigh by k·eps64·‖w‖²), whose
    # eigen-decomposition is then as good as an SVD of w and cheaper; otherwise the thin SVD
    k = tl.shape(w)[1]
    # rtol * rtol: Python's rtol**2 raises OverflowError above 1e154 (an rtol that drops all)
    gram = k < n and rtol * rtol > AUGMENT_GRAM_SAFETY * (math.sqrt(n) + k) * _EPS64
    if gram:
        wh = conj_t(w)
        v, s = _left_singular(wh, method="gram") if finite else left_singular(wh, method="gram")
    else:
        u, s, _ = _svd(w) if finite else svd(w)
    # ‖K‖ and the singular values reach the host together: one device synchronisation
    host = _to_host(tl.concatenate([tl.reshape(tl.norm(K), (1,)), s]))
    norm_k, s_host = float(host[0]), host[1:]
    if norm_k == 0.0:
        return U0
    m = min(int(np.count_nonzero(s_host > rtol * norm_k)), room)
    if m == 0:
        return U0
    if gram:
        # w v_j / σ_j are the left singular vectors (σ_j > rtol·‖K‖ > 0 here)
        new = tl.dot(w, v[:, :m]) / s[None, :m]
    else:
        new = u[:, :m]
    # w is finite (checked by its factorisation, or known to be), so new is finite too
    new = _orth(new - tl.dot(U0, tl.dot(u0h, new)))
    return tl.concatenate([U0, new], axis=1)


def augmented_core(
    C0: Tensor, U0s: Sequence[Tensor | None], U_hats: Sequence[Tensor | None]
) -> Tensor:
    """Core of ``Y0 = C0 ×_j U_j⁰`` in the augmented bases: ``Ĉ = C0 ×_j (Û_jᴴ U_j⁰)``.

    Parameters
    ----------
    C0 : tensor, shape ``(r_1, …, r_d)``
    U0s : sequence of d matrices ``(n_j, r_j)`` or None (identity, mode kept full)
    U_hats : sequence of d matrices ``(n_j, r̂_j)`` or None, with ``span U_j⁰ ⊆ span Û_j``

    Returns
    -------
    C_hat : tensor, shape ``(r̂_1, …, r̂_d)``

    Notes
    -----
    When ``span U_j⁰ ⊆ span Û_j`` for every mode, ``Ĉ ×_j Û_j = Y0`` exactly [1]_. When
    ``Û_j`` starts with ``U_j⁰`` (as :func:`augment_basis` returns it), ``Û_jᴴ U_j⁰`` is the
    identity on top of zeros up to round-off.

    References
    ----------
    .. [1] Ceruti, Kusch & Lubich, BIT 2022 (arXiv:2104.05247).

    Examples
    --------
    >>> import numpy as np
    >>> import tuckerflow as tf
    >>> from tuckerflow.dlra import augment_basis, augmented_core
    >>> Y = tf.random_tucker((6, 5, 4), 2, rng=0)
    >>> gen = np.random.default_rng(1)
    >>> Uh = [augment_basis(u, gen.standard_normal((u.shape[0], 2))) for u in Y.factors]
    >>> Ch = augmented_core(Y.core, Y.factors, Uh)
    >>> bool(np.allclose(tf.TuckerTensor(Ch, Uh).to_tensor(), Y.to_tensor()))
    True
    """
    check_tensor(C0, "C0")
    d = tl.ndim(C0)
    U0s, U_hats = _factor_list(U0s, "U0s"), _factor_list(U_hats, "U_hats")
    if len(U0s) != d or len(U_hats) != d:
        raise ValueError(
            f"C0 has {d} modes but {len(U0s)} old and {len(U_hats)} new factors were given"
        )
    mats: list = [None] * d
    for j, (u0, uh) in enumerate(zip(U0s, U_hats)):
        if (u0 is None) != (uh is None):
            raise ValueError(
                f"mode {j}: U0s[{j}] and U_hats[{j}] must both be matrices or both be None"
            )
        if u0 is None:
            continue
        if tl.shape(u0)[1] != tl.shape(C0)[j] or tl.shape(uh)[0] != tl.shape(u0)[0]:
            raise ValueError(
                f"mode {j}: U0s[{j}].shape={tuple(tl.shape(u0))}, U_hats[{j}].shape="
                f"{tuple(tl.shape(uh))} and C0.shape[{j}]={tl.shape(C0)[j]} do not fit "
                "(need U0s[j].shape[1] == C0.shape[j] and equal row counts)"
            )
        mats[j] = tl.dot(conj_t(uh), u0)
    # one product per mode in the core's own layout: the result is contiguous, as the
    # many products the integrators' Galerkin step then applies to it want
    return _mode_products(C0, mats)


def _factor_list(value, name):
    """``value`` as a list of matrices of the active backend or None (identity)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name} must be a sequence of matrices or None, got {value!r}")
    out = list(value)
    for j, u in enumerate(out):
        if u is None:
            continue
        check_tensor(u, f"{name}[{j}]")
        if tl.ndim(u) != 2:
            raise ValueError(f"{name}[{j}] must be a matrix, got shape {tuple(tl.shape(u))}")
    return out


def _clamped(value, cshape, default, name):
    d = len(cshape)
    if value is None:
        return [default(i) for i in range(d)]
    vals = per_mode(value, d, name, allow_none=True)
    vals = [default(i) if v is None else v for i, v in enumerate(vals)]
    for i, v in enumerate(vals):
        if v < 1:
            raise ValueError(f"{name}[{i}]={v} must be at least 1")
    return [min(v, n) for v, n in zip(vals, cshape)]


def truncate_core(
    C_hat: Tensor,
    U_hats: Sequence[Tensor | None],
    *,
    rtol: float | None = None,
    atol: float | None = None,
    min_rank: RankBound = None,
    max_rank: RankBound = None,
    method: str = "hosvd",
) -> tuple[TuckerTensor, list, TruncationInfo]:
    """Truncate an augmented core and return the new Tucker tensor and the kept directions.

    Parameters
    ----------
    C_hat : tensor, shape ``(r̂_1, …, r̂_d)``
    U_hats : sequence of d matrices ``(n_i, r̂_i)`` with orthonormal columns, or None
        (identity: the mode is kept full and not truncated).
    rtol, atol : float, optional
        Total tolerance ``ϑ = min(atol, rtol · ‖Ĉ‖_F)``; ``‖Ĉ ×_i Û_i − result‖ ≤ ϑ`` unless
        ``max_rank`` binds. Without a tolerance nothing is discarded beyond ``max_rank``.
    min_rank, max_rank : int or sequence of int (None entries: no bound), optional
        Rank floor and cap; both are clamped to the core's shape (a floor is further lowered
        to the nearest valid multilinear rank).
    method : {"hosvd", "st_hosvd"}
        ``"hosvd"`` chooses every rank from the unfoldings of ``Ĉ`` (the published rule);
        ``"st_hosvd"`` truncates sequentially (cheaper, exact error identity).

    Returns
    -------
    Y : TuckerTensor
        Core ``Ĉ ×_i P_iᴴ`` and factors ``Û_i P_i`` (the identity matrix for modes given as
        None).
    P_list : list of tensors or None
        ``P_i`` (``r̂_i × r_i``): kept left singular vectors of the core unfoldings, so that any
        quantity living on the core is carried to the new bases by ``×_i P_iᴴ``.
    info : TruncationInfo
        Singular values, per-mode discarded norms and the error bound.

    Notes
    -----
    Rank selection is the rule of :mod:`tuckerflow.truncation`: mode ``i`` keeps the smallest
    ``ρ`` with ``(Σ_{j>ρ} σ_j²)^{1/2} ≤ ϑ_i``, the total budget ``ϑ²`` being split over the
    truncated modes so that ``‖Ĉ − Ĉ ×_i P_i P_iᴴ‖ ≤ ϑ``. Since the ``Û_i`` are orthonormal the
    same bound holds for the full tensors [1]_, [2]_.

    References
    ----------
    .. [1] Ceruti, Kusch & Lubich, BIT 2022 (arXiv:2104.05247).
    .. [2] Zangrando et al., NeurIPS 2024 (arXiv:2305.19059).

    Examples
    --------
    >>> import numpy as np
    >>> import tuckerflow as tf
    >>> from tuckerflow.dlra import truncate_core
    >>> Y = tf.random_tucker((6, 5, 4), 2, rng=0)
    >>> Z = tf.add(Y, tf.random_tucker((6, 5, 4), 2, rng=1), beta=1e-9, rtol=None)
    >>> new, P, info = truncate_core(Z.core, Z.factors, rtol=1e-6)
    >>> new.rank, [p.shape for p in P]
    ((2, 2, 2), [(4, 2), (4, 2), (4, 2)])
    """
    return _truncate_core(
        C_hat, U_hats, rtol=rtol, atol=atol, min_rank=min_rank, max_rank=max_rank, method=method
    )


def _truncate_core(
    C_hat,
    U_hats,
    *,
    rtol=None,
    atol=None,
    min_rank=None,
    max_rank=None,
    method="hosvd",
    factors_finite=False,
):
    """:func:`truncate_core`; ``factors_finite=True`` skips the finiteness check of the
    factors (one reduction per factor and a host transfer) for callers that built them
    from checked arrays (the integrators' augmented bases)."""
    check_tensor(C_hat, "C_hat")
    d = tl.ndim(C_hat)
    U_hats = _factor_list(U_hats, "U_hats")
    if len(U_hats) != d:
        raise ValueError(f"C_hat has {d} modes but {len(U_hats)} factors were given")
    if method not in ("hosvd", "st_hosvd"):
        raise ValueError(f"method={method!r} is not one of ('hosvd', 'st_hosvd')")
    cshape = tuple(tl.shape(C_hat))
    for i, u in enumerate(U_hats):
        if u is None:
            continue
        if tl.shape(u)[1] != cshape[i]:
            raise ValueError(
                f"U_hats[{i}].shape={tuple(tl.shape(u))} must have C_hat.shape[{i}]="
                f"{cshape[i]} columns"
            )
    free = [i for i in range(d) if U_hats[i] is not None]
    hi = _clamped(max_rank, cshape, lambda i: cshape[i], "max_rank")
    lo = _clamped(min_rank, cshape, lambda i: 1, "min_rank")
    for i in range(d):
        if U_hats[i] is None:
            lo[i] = hi[i] = cshape[i]
    lo = [min(a, b) for a, b in zip(lo, hi)]
    lo = list(largest_valid_rank(lo))
    spec = rank_spec(cshape, None, rtol, atol, hi, None)
    spec.min_rank = lo
    if free and not factors_finite:
        # the factors only multiply the result, but a NaN there would be silent: one check
        # (one host sync) for all of them
        maxes = _to_host(tl.stack([tl.max(tl.abs(U_hats[i])) for i in free]))
        bad = [i for i, m in zip(free, maxes) if not math.isfinite(float(m))]
        if bad:
            raise ValueError(f"U_hats[{bad[0]}] contains non-finite values (NaN or Inf)")
    # A relative tolerance rtol gives every mode a squared budget of at least
    # rtol²‖Ĉ‖²/len(free). When that lies far above the round-off of a Gram matrix accumulated
    # in float64, a wide unfolding is factored through its Gram matrix (one product and a
    # small eigh; the error bound is kept by a margin, see tuckerflow.recompression);
    # otherwise by the accurate QR path.
    size = math.prod(cshape)
    gram_ok = (
        spec.atol is None
        and spec.rtol is not None
        and bool(free)
        and _gram_is_invisible(spec.rtol * spec.rtol / len(free), max(cshape[i] for i in free))
    )
    if method == "hosvd":
        policy = ["gram" if gram_ok and cshape[i] ** 2 < size else "qr" for i in range(d)]
    else:
        policy = ["auto" if gram_ok else "qr"] * d
    core, P_list, info = recompress(
        C_hat, spec, method=method, modes=free, svd_method=policy, name="C_hat"
    )
    factors = []
    for i, u in enumerate(U_hats):
        if u is None:
            factors.append(tl.eye(cshape[i], **tl.context(C_hat)))
        else:
            factors.append(tl.dot(u, P_list[i]))
    return TuckerTensor(core, factors), P_list, info
