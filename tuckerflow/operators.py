"""Structured right-hand sides: sums of Kronecker products applied to Tucker tensors.

A :class:`KroneckerSum` is the linear operator
``L(Y) = Σ_k c_k · Y ×_1 A_{k,1} ⋯ ×_d A_{k,d}`` (``A_{k,j}`` a matrix or the identity), the
form of finite-difference Laplacians and of Schrödinger Hamiltonians with separable (or
sum-of-products) potentials. Applied to a Tucker tensor it returns a Tucker tensor exactly,
without forming any ``∏ n_i``-sized array. A :class:`Pointwise` term ``f(t, Y)`` evaluated
densely (small problems) can be added; the sum is then returned as a lazy ambient tensor that
the integrators contract term by term.

The matrices are stored as NumPy arrays and converted, once per backend, dtype and device,
into the arrays of the tensor they act on; the operators therefore work on every backend and
with real or complex data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Number, Real

import numpy as np
import tensorly as tl

from ._backend import context, dtype_name, eps, is_complex
from ._host import to_host
from .ambient import (
    ambient_shape,
    contract_unchecked,
    unfolded_contract,
    unfolded_products,
)
from .linalg import _mode_products
from .tucker import TuckerTensor, as_tucker

__all__ = [
    "AmbientSum",
    "AppliedKroneckerSum",
    "Banded",
    "KroneckerSum",
    "OperatorSum",
    "Pointwise",
    "laplacian",
    "pointwise",
    "schrodinger",
    "second_difference",
]


#: Factor images kept per mode by a KroneckerSum (the last factors it was applied to).
_IMAGE_CACHE_SIZE = 4
#: Reduced matrices ``M_j B U_j`` and K-step coefficient blocks kept by a KroneckerSum: the
#: substeps contract every evaluation of ``F`` with the same small matrices, and a K-step's
#: other modes and core do not change between its evaluations.
_REDUCED_CACHE_SIZE = 16
#: ``‖Uᴴ U − I‖_max ≤ _IDENTITY_ROUNDOFF · eps · r`` counts as the identity (orthonormal factors).
_IDENTITY_ROUNDOFF = 100.0


def _coefficient(c, t):
    return c(t) if callable(c) else c


def _check_size(name, n):
    """A grid or matrix size: an integer ``>= 1`` (a mode of one point is valid)."""
    if isinstance(n, bool) or not isinstance(n, Integral):
        raise TypeError(f"{name} must be an integer >= 1, got {n!r}")
    if n < 1:
        raise ValueError(f"{name}={n!r} must be >= 1")
    return int(n)


def _check_shape(shape, name="shape"):
    try:
        entries = list(shape)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of integers >= 1, got {shape!r}") from None
    if not entries:
        raise ValueError(f"{name} must have at least one mode, got {shape!r}")
    return tuple(_check_size(f"{name}[{j}]", n) for j, n in enumerate(entries))


def _check_spacing(name, h):
    """A grid spacing: real, finite, ``> 0``, with ``1 / h²`` a finite nonzero float64."""
    if isinstance(h, bool) or not isinstance(h, Real):
        raise TypeError(f"{name} must be a real number > 0, got {h!r}")
    h = float(h)
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"{name}={h!r} must be a finite number > 0")
    h2 = h * h
    if not (0.0 < h2 < math.inf and 2.0 / h2 < math.inf):
        raise ValueError(
            f"{name}={h!r}: the finite-difference weight 1/{name}² = 1/{h2!r} is outside the "
            "float64 range; the spacing must lie between about 1e-154 and 1e154"
        )
    return h


class KroneckerSum:
    """``L(t, Y) = Σ_k c_k(t) · Y ×_1 A_{k,1} ⋯ ×_d A_{k,d}``.

    Parameters
    ----------
    shape : sequence of int
        Shape ``(n_1, …, n_d)`` of the tensors it acts on.
    terms : sequence of ``(c_k, matrices_k)``
        ``c_k`` a (complex) number or a callable ``t -> number``; ``matrices_k`` a list of
        ``d`` entries, each an ``n_j × n_j`` array-like or None (identity).

    Notes
    -----
    Calling ``L(t, Y)`` on ``Y = C ×_j U_j`` returns an :class:`AppliedKroneckerSum`, which
    the integrators contract term by term; its ``to_tucker()`` is the Tucker tensor with factors
    ``W_j = [B_{j,1} U_j, …, B_{j,p_j} U_j]``, where ``B_{j,1}, …, B_{j,p_j}`` are the
    distinct matrices used in mode ``j`` (the identity counted once), and the core holding
    ``c_k C`` in the block ``(b_{k,1}, …, b_{k,d})`` picked by term ``k``. Its rank is
    ``p_j r_j`` in mode ``j`` (``2 r_j`` for a Laplacian), and it equals ``L(Y)`` exactly. The
    cost is ``O(Σ_j p_j n_j² r_j + K ∏ r_j)`` for dense ``B`` and
    ``O(Σ_j p_j n_j r_j · bands + K ∏ r_j)`` for :class:`Banded` ones (finite differences,
    diagonal potentials), i.e. linear in the mode sizes.

    Examples
    --------
    >>> import numpy as np, tuckerflow as tf
    >>> from tuckerflow.operators import laplacian
    >>> L = laplacian((6, 5, 4), 0.1)
    >>> Y = tf.random_tucker((6, 5, 4), 2, rng=0)
    >>> LY = L(0.0, Y).to_tucker()
    >>> LY.rank
    (4, 4, 4)
    >>> bool(np.allclose(LY.to_tensor(), L.apply_dense(Y.to_tensor())))
    True
    """

    def __init__(self, shape, terms):
        self.shape = tuple(int(n) for n in shape)
        d = len(self.shape)
        terms = list(terms)
        if not terms:
            raise ValueError("terms must hold at least one (coefficient, matrices) pair")
        self._distinct = [[] for _ in range(d)]  # per mode: list of numpy matrices (None = I)
        self._terms = []
        for k, term in enumerate(terms):
            try:
                c, mats = term
            except (TypeError, ValueError):
                raise TypeError(
                    f"terms[{k}] must be a pair (coefficient, matrices), got {term!r}"
                ) from None
            if not (callable(c) or isinstance(c, Number)):
                raise TypeError(f"terms[{k}] coefficient must be a number or callable, got {c!r}")
            mats = list(mats)
            if len(mats) != d:
                raise ValueError(
                    f"terms[{k}] has {len(mats)} matrices but shape={self.shape} has {d} modes"
                )
            blocks = []
            for j, a in enumerate(mats):
                if a is not None:
                    if not isinstance(a, Banded):
                        a = np.asarray(to_host(a, dtype=None) if tl.is_tensor(a) else a)
                    if a.shape != (self.shape[j], self.shape[j]):
                        raise ValueError(
                            f"terms[{k}] matrix for mode {j} has shape {a.shape}, expected "
                            f"{(self.shape[j], self.shape[j])}"
                        )
                blocks.append(self._index(j, a))
            self._terms.append((c, tuple(blocks)))
        self._cache = {}
        self._image_cache = {}
        self._reduced_cache = []  # entries (m, image, reduced or None)
        self._block_cache = []  # entries (key objects, coefficients, blocks)
        self._constant = not any(callable(c) for c, _ in self._terms)
        self._constant_cache = {}
        self._k_step_cache = None  # (factors, their reduced matrices or None per mode)

    def _index(self, j, a):
        for b, m in enumerate(self._distinct[j]):
            if (m is None and a is None) or (
                m is not None and a is not None and (m is a or np.array_equal(m, a))
            ):
                return b
        self._distinct[j].append(a)
        return len(self._distinct[j]) - 1

    @property
    def terms(self):
        """The terms as ``(coefficient, [matrix or None per mode])`` with NumPy matrices."""
        return [(c, [self._distinct[j][b] for j, b in enumerate(bl)]) for c, bl in self._terms]

    def _matrices(self, ref):
        """Distinct matrices converted like ``ref`` (backend, dtype, device), cached."""
        # the dtype object itself is hashable on every backend (cheaper than its name)
        key = (tl.get_backend(), ref.dtype, str(getattr(ref, "device", "cpu")))
        if key not in self._cache:
            name = dtype_name(ref)
            kw = context(ref)
            conv = []
            for mats in self._distinct:
                row = []
                for m in mats:
                    if m is None:
                        row.append(None)
                        continue
                    cplx = m.is_complex if isinstance(m, Banded) else np.iscomplexobj(m)
                    if cplx and not is_complex(ref):
                        raise TypeError(
                            "a complex operator cannot act on a real tensor of dtype "
                            f"{name}; make the initial value complex"
                        )
                    row.append(m.bind(kw) if isinstance(m, Banded) else tl.tensor(m, **kw))
                conv.append(row)
            self._cache[key] = conv
        return self._cache[key]

    def _coefficients(self, t, ref):
        if self._constant:
            key = ref.dtype
            if key not in self._constant_cache:
                self._constant_cache[key] = self._checked_coefficients(0.0, ref)
            return self._constant_cache[key]
        return self._checked_coefficients(t, ref)

    def _checked_coefficients(self, t, ref):
        cs = [_coefficient(c, t) for c, _ in self._terms]
        if not is_complex(ref) and any(isinstance(c, complex) and c.imag != 0 for c in cs):
            raise TypeError(
                f"a complex coefficient cannot act on a real tensor of dtype {dtype_name(ref)}; "
                "make the initial value complex"
            )
        return [c.real if isinstance(c, complex) and not is_complex(ref) else c for c in cs]

    def __call__(self, t, Y):
        """``L(t, Y)`` as a lazy :class:`AppliedKroneckerSum` (never densified)."""
        Y = as_tucker(Y, "Y")
        if tuple(Y.shape) != self.shape:
            raise ValueError(f"Y.shape={tuple(Y.shape)} differs from operator shape={self.shape}")
        mats = self._matrices(Y.core)
        coefs = self._coefficients(t, Y.core)
        images = [self._images(j, u, mats[j]) for j, u in enumerate(Y.factors)]
        return AppliedKroneckerSum(
            self.shape,
            Y.core,
            images,
            coefs,
            [b for _, b in self._terms],
            factors=Y.factors,
            cache=self,
        )

    def _reduced_of(self, m, img, identity_ok):
        """``m @ img``, or None when it is the identity to round-off (``identity_ok``: the
        image is the factor itself, contracted with its own conjugate transpose); reused
        while the same ``m`` and ``img`` objects come back."""
        cache = self._reduced_cache
        for entry in cache:
            if entry[0] is m and entry[1] is img and entry[2] == identity_ok:
                return entry[3]
        r = tl.dot(m, img)
        if identity_ok and _near_identity(r):
            r = None
        cache.insert(0, (m, img, identity_ok, r))
        del cache[_REDUCED_CACHE_SIZE:]
        return r

    def _images(self, j, u, mats):
        """``[B_{j,b} U_j for each distinct b]``, reused while the same factor object comes
        back (the integrators pass the unchanged factors of the other modes to every stage
        of a K-step)."""
        cache = self._image_cache.setdefault(j, [])
        for entry in cache:
            if entry[0] is u and entry[1] is mats:
                return entry[2]
        images = [u if m is None else _apply(m, u) for m in mats]
        cache.insert(0, (u, mats, images))
        del cache[_IMAGE_CACHE_SIZE:]
        return images

    # -- reduced operators (the integrators' fast path) -------------------------------------
    def _reduced_modes(self, factors, skip=None):
        """Per mode ``j`` (``skip`` left out): ``[U_jᴴ B_{j,b} U_j for each distinct b]``.

        The identity block is None when ``U_jᴴ U_j`` is the identity to round-off (the
        factors of an integrator's state are orthonormal), as :meth:`AppliedKroneckerSum.
        contract` marks it; the test costs one host transfer for all modes.
        """
        ref = next(u for j, u in enumerate(factors) if j != skip and u is not None)
        mats = self._matrices(ref)
        out, grams = [], []
        for j, u in enumerate(factors):
            if j == skip or u is None:
                out.append(None)
                continue
            uh = _adjoint(u)
            row = []
            for m in mats[j]:
                if m is None:
                    g = tl.dot(uh, u)
                    grams.append((j, len(row), g))
                    row.append(g)
                else:
                    row.append(tl.dot(uh, _apply(m, u)))
            out.append(row)
        if grams:
            devs = [tl.reshape(_identity_deviation(g), (1,)) for _, _, g in grams]
            host = to_host(tl.concatenate(devs), dtype=None)
            for (j, b, g), dev in zip(grams, host):
                k = tl.shape(g)[0]
                if float(dev) <= _IDENTITY_ROUNDOFF * eps(g) * k:
                    out[j][b] = None
        return out

    def reduced_galerkin(self, factors):
        """The Galerkin right-hand side in the fixed orthonormal bases ``factors``.

        Returns a callable ``g(t, C) = L(t, C ×_j U_j) ×_j U_jᴴ``: equal, to round-off, to
        ``contract(L(t, TuckerTensor(C, factors)), [U_jᴴ …])``, for every core ``C`` of
        shape ``(r_j)``. The reduced matrices ``U_jᴴ B_{j,b} U_j`` are formed once; an
        evaluation costs the mode products of the terms on the core only (terms acting on
        one mode are merged into one matrix per mode). This is the optional fast path that
        :func:`tuckerflow.integrate.steps.galerkin_step` takes for operators that provide it.
        """
        red = self._reduced_modes(list(factors))
        ref = next(u for u in factors)
        terms = [[red[j][b] for j, b in enumerate(blocks)] for _, blocks in self._terms]
        plan = _GalerkinPlan(terms)
        if self._constant:
            fixed = plan.combine(self._coefficients(0.0, ref))
            return lambda t, c: plan.apply(fixed, c)
        return lambda t, c: plan.apply(plan.combine(self._coefficients(t, ref)), c)

    def reduced_k_step(self, core, factors, mode, right):
        """The K-step right-hand side of ``mode`` with the other modes and the core fixed.

        Returns a callable ``g(t, K) = Mat_mode(L(t, Y_K) ×_{j≠mode} U_jᴴ) @ right`` with
        ``Y_K = core ×_mode K ×_{j≠mode} U_j`` (``factors[mode]`` is not used): equal, to
        round-off, to :func:`tuckerflow.ambient.unfolded_contract` of
        ``L(t, TuckerTensor(core, factors with K in mode))``. Everything but ``K`` is
        contracted once, into one small matrix per distinct matrix of ``mode``; an evaluation
        costs ``Σ_b (B_{mode,b} K) G_b``. The optional fast path of
        :func:`tuckerflow.integrate.steps.k_step`.
        """
        # the K-steps of one step share the factors: the reduced matrices of a factor are
        # formed once (those of factors[mode] are not needed here)
        factors = list(factors)
        d = len(factors)
        known, red = self._k_step_cache or ([None] * d, [None] * d)
        if len(known) != d:
            known, red = [None] * d, [None] * d
        red = [r if known[j] is factors[j] else None for j, r in enumerate(red)]
        need = [j for j in range(d) if j != mode and red[j] is None]
        if need:
            new = self._reduced_modes([factors[j] if j in need else None for j in range(d)])
            for j in need:
                red[j] = new[j]
        self._k_step_cache = (factors, red)
        mats = self._matrices(core)
        smalls = []  # per term: Mat_mode(core ×_{j≠mode} R_{k,j}) @ right (shared when equal)
        seen = {}
        for _, blocks in self._terms:
            key = tuple(None if j == mode else b for j, b in enumerate(blocks))
            if key not in seen:
                ms = [None if j == mode else red[j][b] for j, b in enumerate(blocks)]
                seen[key] = tl.dot(unfolded_products(core, ms, mode), right)
            smalls.append(seen[key])
        groups = sorted({blocks[mode] for _, blocks in self._terms})
        bmats = [mats[mode][b] for b in groups]

        def combine(coefs):
            out = {}
            for c, (_, blocks), small in zip(coefs, self._terms, smalls):
                b = blocks[mode]
                term = small * c
                out[b] = term if b not in out else out[b] + term
            if len(groups) == 1:
                return out[groups[0]]
            # Σ_b (B_b K) G_b as one product [B_1 K, B_2 K, …] [G_1; G_2; …]
            return tl.concatenate([out[b] for b in groups], axis=0)

        def apply(g, k):
            imgs = [k if m is None else _apply(m, k) for m in bmats]
            return tl.dot(imgs[0] if len(imgs) == 1 else tl.concatenate(imgs, axis=1), g)

        if self._constant:
            fixed = combine(self._coefficients(0.0, core))
            return lambda t, k: apply(fixed, k)
        return lambda t, k: apply(combine(self._coefficients(t, core)), k)

    def apply_dense(self, X, t=0.0):
        """``L(t, X)`` for a dense tensor ``X`` (for tests and small reference solutions)."""
        mats = self._matrices(X)
        coefs = self._coefficients(t, X)
        out = None
        for c, (_, blocks) in zip(coefs, self._terms):
            term = X
            for j, b in enumerate(blocks):
                m = mats[j][b]
                if m is not None:
                    term = tl.fold(_apply(m, tl.unfold(term, j)), j, tl.shape(term))
            term = term * c
            out = term if out is None else out + term
        return out

    def __mul__(self, a):
        if not isinstance(a, Number):
            return NotImplemented
        return KroneckerSum(self.shape, [(_scaled(c, a), m) for c, m in self.terms])

    __rmul__ = __mul__

    def __neg__(self):
        return self * -1.0

    def __add__(self, other):
        if isinstance(other, KroneckerSum):
            if other.shape != self.shape:
                raise ValueError(f"shapes differ: {self.shape} and {other.shape}")
            return KroneckerSum(self.shape, self.terms + other.terms)
        if isinstance(other, Pointwise):
            return OperatorSum([self, other])
        return NotImplemented

    def __repr__(self):
        return f"KroneckerSum(shape={self.shape}, terms={len(self._terms)})"


class AppliedKroneckerSum:
    """``L(Y) = Σ_k c_k · C ×_j (B_{k,j} U_j)`` kept as its terms (what ``L(t, Y)`` returns).

    Follows the :class:`~tuckerflow.geometry.Contractible` protocol:
    ``contract(matrices)`` costs ``O(Σ_{j,b} m_j n_j r_j + K ∏ r_j · Σ m_j)`` and never forms
    the rank-``p_j r_j`` Tucker tensor; :meth:`to_tucker` gives that exact Tucker tensor (factors
    ``[B_{j,1} U_j, …]``, block core) and :meth:`to_tensor` the dense tensor.
    """

    def __init__(self, shape, core, images, coefficients, blocks, factors=None, cache=None):
        self.shape = tuple(shape)
        self.core = core
        self.images = images  # images[j][b] = B_{j,b} U_j
        self.coefficients = coefficients
        self.blocks = blocks
        self.factors = factors  # U_j: the image of an identity block is U_j itself
        self._owner = cache  # the KroneckerSum whose caches serve repeated contractions

    def _reduced(self, j, m):
        """``[M_j B_{j,b} U_j for each b]``; an identity block contracted with the conjugate
        transpose of ``U_j`` (a Galerkin or K-step contraction in the state's own bases)
        gives the identity up to round-off, marked None so that no product is spent on it."""
        out = []
        for img in self.images[j]:
            own = self.factors is not None and img is self.factors[j]
            if self._owner is not None:
                out.append(self._owner._reduced_of(m, img, own))
                continue
            r = tl.dot(m, img)
            if own and _near_identity(r):
                r = None
            out.append(r)
        return out

    def contract(self, matrices):
        reduced = [
            list(imgs) if m is None else self._reduced(j, m)
            for j, (m, imgs) in enumerate(zip(matrices, self.images))
        ]
        out = None
        for c, blocks in zip(self.coefficients, self.blocks):
            term = _mode_products(
                self.core, _scaled_first([reduced[j][b] for j, b in enumerate(blocks)], c)
            )
            if all(reduced[j][b] is None for j, b in enumerate(blocks)):
                term = term * c
            out = term if out is None else out + term
        return out

    def unfolded_contract(self, matrices, mode, right):
        """``Mat_mode(self.contract(matrices)) @ right`` with ``matrices[mode] = None``.

        Terms are grouped by the matrix they use in ``mode``; each group contracts the small
        core first, so the cost is ``O(n_mode r_mode · cols(right))`` plus core work, with no
        ``n_mode × ∏_{j≠mode} m_j`` intermediate.
        """
        groups = self._mode_blocks(matrices, mode, right)
        out = None
        for b, g in groups.items():
            term = tl.dot(self.images[mode][b], g)
            out = term if out is None else out + term
        return out

    def _mode_blocks(self, matrices, mode, right):
        """``{b: Σ_{k: b_{k,mode} = b} c_k Mat_mode(C ×_{j≠mode} M_j B_{k,j} U_j) @ right}``.

        Everything but ``U_mode`` enters: within a K-step (same core, other modes, matrices
        and ``right`` at every evaluation) the blocks are computed once and reused, so an
        evaluation costs the products of the new ``U_mode`` images only.
        """
        key = [self.core, right, *(matrices[j] for j in range(len(matrices)) if j != mode)]
        key += [self.images[j] for j in range(len(self.images)) if j != mode]
        coefs = tuple(self.coefficients)
        owner = self._owner
        if owner is not None:
            for entry in owner._block_cache:
                if (
                    entry[0] == mode
                    and len(entry[1]) == len(key)
                    and all(a is b for a, b in zip(entry[1], key))
                    and entry[2] == coefs
                ):
                    return entry[3]
        reduced = [
            None if j == mode else list(imgs) if m is None else self._reduced(j, m)
            for j, (m, imgs) in enumerate(zip(matrices, self.images))
        ]
        groups = {}
        for c, blocks in zip(self.coefficients, self.blocks):
            mats = [None if j == mode else reduced[j][b] for j, b in enumerate(blocks)]
            if all(m is None for m in mats):
                small = unfolded_products(self.core, mats, mode) * c
            else:
                small = unfolded_products(self.core, _scaled_first(mats, c), mode)
            b = blocks[mode]
            groups[b] = small if b not in groups else groups[b] + small
        groups = {b: tl.dot(small, right) for b, small in groups.items()}
        if owner is not None:
            owner._block_cache.insert(0, (mode, key, coefs, groups))
            del owner._block_cache[_REDUCED_CACHE_SIZE:]
        return groups

    def tucker_terms(self):
        """The terms as ``(c_k C, [B_{k,j} U_j for each j])``; terms share their factor images
        (used by :func:`tuckerflow.ambient.complement_norm`)."""
        return [
            (self.core * c, [self.images[j][b] for j, b in enumerate(blocks)])
            for c, blocks in zip(self.coefficients, self.blocks)
        ]

    def to_tucker(self):
        """The exact Tucker tensor of rank ``p_j r_j`` (distinct matrices per mode times r)."""
        rank = tuple(tl.shape(self.core))
        factors = [tl.concatenate(imgs, axis=1) for imgs in self.images]
        counts = [len(imgs) for imgs in self.images]
        core = None
        for c, blocks in zip(self.coefficients, self.blocks):
            block = _placed(self.core * c, blocks, rank, counts)
            core = block if core is None else core + block
        return TuckerTensor(core, factors)

    def to_tensor(self):
        """The dense tensor (small problems only)."""
        return self.contract([None] * len(self.shape))

    def __mul__(self, a):
        if not isinstance(a, Number):
            return NotImplemented
        coefs = [a * c for c in self.coefficients]
        return AppliedKroneckerSum(
            self.shape,
            self.core,
            self.images,
            coefs,
            self.blocks,
            factors=self.factors,
            cache=self._owner,
        )

    __rmul__ = __mul__

    def __repr__(self):
        return f"AppliedKroneckerSum(shape={self.shape}, terms={len(self.blocks)})"


class _GalerkinPlan:
    """The terms of a Galerkin operator ``C ↦ Σ_k c_k C ×_j R_{k,j}`` grouped for evaluation.

    Terms with no matrix scale ``C``; terms with one matrix (in mode ``j``) are merged into
    one matrix per mode; the others are applied as they are (coefficient on their first
    matrix).
    """

    def __init__(self, terms):
        self.kinds = []
        for mats in terms:
            used = [j for j, m in enumerate(mats) if m is not None]
            if not used:
                self.kinds.append(("scale", None))
            elif len(used) == 1:
                self.kinds.append(("mode", used[0]))
            else:
                self.kinds.append(("general", None))
        self.terms = terms

    def combine(self, coefs):
        scale, per_mode, general = None, {}, []
        for c, (kind, j), mats in zip(coefs, self.kinds, self.terms):
            if kind == "scale":
                scale = c if scale is None else scale + c
            elif kind == "mode":
                m = mats[j] * c
                per_mode[j] = m if j not in per_mode else per_mode[j] + m
            else:
                general.append(_scaled_first(mats, c))
        return scale, sorted(per_mode.items()), general

    @staticmethod
    def apply(combined, core):
        scale, per_mode, general = combined
        d = tl.ndim(core)
        # the chains of several products first: fewer core-sized arrays alive at once
        out = None
        for mats in general:
            out = _accumulate(out, _mode_products(core, mats))
        for j, m in per_mode:
            mats = [None] * d
            mats[j] = m
            out = _accumulate(out, _mode_products(core, mats))
        if scale is not None:
            out = _accumulate(out, core * scale)
        return out


def _accumulate(out, term):
    """``out + term``, added in place when ``out`` is an array this module just created (a
    fresh product or sum, owned by nobody else): one large temporary less per term."""
    if out is None:
        return term
    out += term
    return out


def _adjoint(u):
    """Conjugate transpose, materialised (a lazily conjugated PyTorch view is resolved)."""
    ut = tl.transpose(u)
    if not is_complex(u):
        return ut
    ut = tl.conj(ut)
    resolve = getattr(ut, "resolve_conj", None)
    return resolve() if resolve is not None else ut


def _identity_deviation(r):
    """``max |r − I|`` of a square matrix as a 0-d backend array (no host transfer)."""
    return tl.max(tl.abs(r - tl.eye(tl.shape(r)[0], **tl.context(r))))


def _scaled_first(mats, c):
    """``mats`` with the first matrix that is not None multiplied by ``c`` (the coefficient
    of a term applied to its smallest operand instead of the result)."""
    out = list(mats)
    for j, m in enumerate(out):
        if m is not None:
            out[j] = m * c
            break
    return out


def _near_identity(r):
    """Whether a square matrix equals the identity to the round-off of orthonormal factors."""
    k = tl.shape(r)
    if len(k) != 2 or k[0] != k[1] or k[0] == 0:
        return False
    err = float(to_host(tl.max(tl.abs(r - tl.eye(k[0], **tl.context(r))))))
    return err <= _IDENTITY_ROUNDOFF * eps(r) * k[0]


def _apply(m, u):
    """``m @ u`` for a backend matrix or a bound :class:`Banded` matrix."""
    return m.apply(u) if isinstance(m, _BoundBanded) else tl.dot(m, u)


class Banded:
    """A banded ``n × n`` matrix stored by diagonals, applied in ``O(n · bands)`` per column.

    Parameters
    ----------
    n : int
    diagonals : dict ``{offset: values}``
        ``values`` a scalar or a length-``n`` array: entry ``(i, i + offset)`` is
        ``values[i]`` (entries falling outside the matrix are ignored).
    periodic : bool
        Wrap the off-diagonals around (circulant boundary).

    Examples
    --------
    >>> import numpy as np
    >>> from tuckerflow.operators import Banded
    >>> B = Banded(4, {-1: 1.0, 0: -2.0, 1: 1.0})
    >>> B.to_dense()[1]
    array([ 1., -2.,  1.,  0.])
    """

    def __init__(self, n, diagonals, *, periodic=False):
        self.n = _check_size("n", n)
        self.shape = (self.n, self.n)
        if not isinstance(periodic, (bool, np.bool_)):
            raise TypeError(f"periodic must be True or False, got {periodic!r}")
        self.periodic = bool(periodic)
        if not isinstance(diagonals, Mapping):
            raise TypeError(
                "diagonals must be a dict {offset: values} (values a scalar or a length-n "
                f"array), got {type(diagonals).__name__}"
            )
        if not diagonals:
            raise ValueError("diagonals must hold at least one {offset: values} entry")
        self.diagonals = {}
        for off, vals in diagonals.items():
            if isinstance(off, bool) or not isinstance(off, Integral):
                raise TypeError(f"diagonals: offset {off!r} must be an integer")
            off = int(off)
            if abs(off) >= self.n:
                raise ValueError(
                    f"diagonals: offset {off} is outside an {self.n} x {self.n} matrix "
                    f"(|offset| <= {self.n - 1})"
                )
            a = np.asarray(vals)
            if a.dtype.kind not in "biufc":
                raise TypeError(f"diagonals[{off}] must be numbers, got {a.dtype} values")
            if a.ndim > 1 or (a.ndim == 1 and a.shape[0] != self.n):
                raise ValueError(
                    f"diagonals[{off}] has shape {a.shape}; expected a scalar or ({self.n},)"
                )
            v = np.broadcast_to(a, (self.n,)).copy()
            if not np.all(np.isfinite(v)):
                raise ValueError(f"diagonals[{off}] has non-finite entries (NaN or Inf)")
            self.diagonals[off] = v
        self.is_complex = any(np.iscomplexobj(v) for v in self.diagonals.values())

    def to_dense(self):
        """The matrix as a NumPy array."""
        out = np.zeros(self.shape, dtype=np.complex128 if self.is_complex else np.float64)
        idx = np.arange(self.n)
        for off, v in self.diagonals.items():
            cols = idx + off
            ok = (cols >= 0) & (cols < self.n)
            if self.periodic:
                out[idx, cols % self.n] += v
            else:
                out[idx[ok], cols[ok]] += v[ok]
        return out

    def bind(self, kw):
        return _BoundBanded(self, kw)

    def __repr__(self):
        return f"Banded(n={self.n}, offsets={sorted(self.diagonals)}, periodic={self.periodic})"


class _BoundBanded:
    """A :class:`Banded` matrix with diagonals converted to backend columns (a constant
    diagonal to a number of the target dtype, applied as a scalar: the same products)."""

    def __init__(self, banded, kw):
        self.periodic = banded.periodic
        self.n = banded.n
        self.diagonals = []
        for off, v in banded.diagonals.items():
            col = tl.tensor(v[:, None], **kw)
            if v.size and np.all(v == v[0]):
                value = to_host(col[:1, 0], dtype=None)[0]
                col = complex(value) if np.iscomplexobj(value) else float(value)
            self.diagonals.append((off, col))
        self.width = max(abs(off) for off, _ in self.diagonals)
        self._pads = {}  # columns -> zero block of `width` rows (never written)
        self._kw = kw

    def apply(self, u):
        # one padded copy of u (zeros, or the wrapped rows) serves every diagonal: row i of
        # the result is Σ_off v_off[i] u[i + off] = Σ_off v_off[i] padded[m + i + off]
        m = self.width
        if m:
            if self.periodic:
                padded = tl.concatenate([u[self.n - m :], u, u[:m]], axis=0)
            else:
                cols = tl.shape(u)[1]
                pad = self._pads.get(cols)
                if pad is None:
                    pad = self._pads[cols] = tl.zeros((m, cols), **tl.context(u))
                padded = tl.concatenate([pad, u, pad], axis=0)
        out = None
        for off, v in self.diagonals:
            shifted = u if off == 0 else padded[m + off : m + off + self.n]
            term = v * shifted
            out = term if out is None else out + term
        return out


def _scaled(c, a):
    if callable(c):
        return lambda t, c=c: a * c(t)
    return a * c


def _placed(core, blocks, rank, counts):
    """``core`` put in block ``blocks`` of a tensor of shape ``(counts_j · rank_j)_j``."""
    out = core
    for j, (b, p) in enumerate(zip(blocks, counts)):
        if p == 1:
            continue
        parts = []
        for q in range(p):
            if q == b:
                parts.append(out)
            else:
                shape = list(tl.shape(out))
                shape[j] = rank[j]
                parts.append(tl.zeros(tuple(shape), **tl.context(out)))
        out = tl.concatenate(parts, axis=j)
    return out


class Pointwise:
    """A term ``f(t, X)`` evaluated on the dense tensor ``X = Y.to_tensor()`` (small problems).

    Parameters
    ----------
    fun : callable ``fun(t, X) -> dense tensor of X's shape``
    """

    def __init__(self, fun):
        if not callable(fun):
            raise TypeError(f"fun must be callable as fun(t, X), got {type(fun).__name__}")
        self.fun = fun

    def __call__(self, t, Y):
        return self.fun(t, as_tucker(Y, "Y").to_tensor())

    def __add__(self, other):
        if isinstance(other, (KroneckerSum, Pointwise)):
            return OperatorSum([self, other])
        return NotImplemented

    def __repr__(self):
        return f"Pointwise({self.fun!r})"


def pointwise(fun):
    """Wrap ``fun(t, X)`` (dense in, dense out) as a :class:`Pointwise` term."""
    return Pointwise(fun)


class OperatorSum:
    """A sum of operators; ``(t, Y)`` maps to an :class:`AmbientSum` of their results."""

    def __init__(self, parts):
        self.parts = list(parts)

    def __call__(self, t, Y):
        return AmbientSum([p(t, Y) for p in self.parts])

    def __add__(self, other):
        if isinstance(other, (KroneckerSum, Pointwise)):
            return OperatorSum([*self.parts, other])
        if isinstance(other, OperatorSum):
            return OperatorSum(self.parts + other.parts)
        return NotImplemented

    def __repr__(self):
        return f"OperatorSum({self.parts!r})"


class AmbientSum:
    """A lazy sum of ambient tensors (dense, Tucker, Contractible) of one shape.

    Follows the :class:`~tuckerflow.geometry.Contractible` protocol: ``contract`` is the sum
    of the parts' contractions, so no part is converted to another format.
    """

    def __init__(self, parts):
        self.parts = list(parts)
        shapes = {ambient_shape(p) for p in self.parts}
        if len(shapes) != 1:
            raise ValueError(f"the parts of an AmbientSum have different shapes: {sorted(shapes)}")
        self.shape = shapes.pop()

    def contract(self, matrices):
        out = None
        for p in self.parts:
            c = contract_unchecked(p, matrices)
            out = c if out is None else out + c
        return out

    def unfolded_contract(self, matrices, mode, right):
        """Sum of the parts' ``Mat_mode(contract(part, matrices)) @ right``."""
        out = None
        for p in self.parts:
            c = unfolded_contract(p, matrices, mode, right)
            out = c if out is None else out + c
        return out

    def to_tensor(self):
        """The dense sum (small problems only)."""
        out = None
        for p in self.parts:
            x = p if tl.is_tensor(p) else p.to_tensor()
            out = x if out is None else out + x
        return out


def second_difference(n, h, *, boundary="dirichlet"):
    """The ``n × n`` matrix of ``u'' ≈ (u_{k-1} − 2u_k + u_{k+1}) / h²`` (NumPy).

    ``boundary="dirichlet"`` (zero outside the grid) or ``"periodic"``.
    """
    if boundary not in ("dirichlet", "periodic"):
        raise ValueError(f"boundary={boundary!r} is not one of ('dirichlet', 'periodic')")
    n = _check_size("n", n)
    h = _check_spacing("h", h)
    a = -2.0 * np.eye(n) + np.eye(n, k=1) + np.eye(n, k=-1)
    if boundary == "periodic" and n > 2:
        a[0, -1] = a[-1, 0] = 1.0
    return a / (h * h)


def _second_difference_banded(n, h, boundary):
    if boundary not in ("dirichlet", "periodic"):
        raise ValueError(f"boundary={boundary!r} is not one of ('dirichlet', 'periodic')")
    if n < 3:  # the wrap-around would double the off-diagonals
        return Banded(n, {-1: 1 / h**2, 0: -2 / h**2, 1: 1 / h**2} if n > 1 else {0: -2 / h**2})
    return Banded(n, {-1: 1 / h**2, 0: -2 / h**2, 1: 1 / h**2}, periodic=boundary == "periodic")


def _kinetic_banded(n, off, diag, boundary):
    """``−½ D₂ + V`` as a :class:`Banded` matrix; a mode of one or two points has no
    wrap-around (it would double the off-diagonals) and a single point no off-diagonals."""
    if n == 1:
        return Banded(1, {0: diag})
    return Banded(n, {-1: off, 0: diag, 1: off}, periodic=boundary == "periodic" and n > 2)


def _spacings(shape, spacing):
    if isinstance(spacing, Number):
        return [_check_spacing("spacing", spacing)] * len(shape)
    try:
        entries = list(spacing)
    except TypeError:
        raise TypeError(
            f"spacing must be a number > 0 or one per mode, got {type(spacing).__name__}"
        ) from None
    if len(entries) != len(shape):
        raise ValueError(f"spacing has {len(entries)} entries but shape has {len(shape)} modes")
    return [_check_spacing(f"spacing[{j}]", s) for j, s in enumerate(entries)]


def _real_vector(name, values, n):
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be {n} real numbers, got {values!r}") from None
    if v.shape != (n,):
        raise ValueError(f"{name} has shape {v.shape}, expected {(n,)}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name} has non-finite entries (NaN or Inf)")
    return v


def laplacian(shape, spacing, *, boundary="dirichlet"):
    """Finite-difference Laplacian ``Δ = Σ_j I ⊗ ⋯ ⊗ D_j ⊗ ⋯ ⊗ I`` as a :class:`KroneckerSum`.

    The second-difference matrices ``D_j`` are :class:`Banded` (three diagonals), so one
    application to a Tucker tensor costs ``O(Σ_j n_j r_j)``.

    Parameters
    ----------
    shape : sequence of int
        Grid points per mode.
    spacing : float or sequence of float
        Grid spacing per mode.
    boundary : {"dirichlet", "periodic"}

    Examples
    --------
    >>> from tuckerflow.operators import laplacian
    >>> laplacian((8, 8, 8), 1 / 9)
    KroneckerSum(shape=(8, 8, 8), terms=3)
    """
    if boundary not in ("dirichlet", "periodic"):
        raise ValueError(f"boundary={boundary!r} is not one of ('dirichlet', 'periodic')")
    shape = _check_shape(shape)
    d = len(shape)
    sp = _spacings(shape, spacing)
    terms = []
    for j in range(d):
        mats = [None] * d
        mats[j] = _second_difference_banded(shape[j], sp[j], boundary)
        terms.append((1.0, mats))
    return KroneckerSum(shape, terms)


def schrodinger(shape, spacing, potentials=None, *, couplings=(), boundary="dirichlet"):
    """Right-hand side ``F(Y) = −i H Y`` of a linear Schrödinger equation on a grid.

    ``H = −½ Δ + Σ_j V_j(x_j) + Σ_k λ_k Π_{j∈S_k} W_{k,j}(x_j)``: kinetic energy, a separable
    potential and sum-of-products couplings, all diagonal in the grid basis.

    Parameters
    ----------
    shape : sequence of int
    spacing : float or sequence of float
    potentials : sequence of d arrays or None, optional
        ``V_j`` sampled on the grid of mode ``j`` (None: no potential in that mode).
    couplings : sequence of ``(λ, [w_0 or None, …, w_{d-1} or None])``
        Product terms ``λ Π_j diag(w_j)``.
    boundary : {"dirichlet", "periodic"}

    Returns
    -------
    KroneckerSum
        Complex; ``H`` is Hermitian, so the exact flow preserves ``‖Y‖``.

    Examples
    --------
    >>> import numpy as np
    >>> from tuckerflow.operators import schrodinger
    >>> x = np.linspace(-3, 3, 10)
    >>> schrodinger((10, 10), x[1] - x[0], [x**2 / 2, x**2 / 2])
    KroneckerSum(shape=(10, 10), terms=2)
    """
    if boundary not in ("dirichlet", "periodic"):
        raise ValueError(f"boundary={boundary!r} is not one of ('dirichlet', 'periodic')")
    shape = _check_shape(shape)
    d = len(shape)
    sp = _spacings(shape, spacing)
    potentials = [None] * d if potentials is None else list(potentials)
    if len(potentials) != d:
        raise ValueError(f"potentials has {len(potentials)} entries but shape has {d} modes")
    terms = []
    for j in range(d):
        diag = np.full(shape[j], 1.0 / sp[j] ** 2)
        if potentials[j] is not None:
            v = _real_vector(f"potentials[{j}]", potentials[j], shape[j])
            diag = diag + v
        off = -0.5 / sp[j] ** 2
        mats = [None] * d
        mats[j] = _kinetic_banded(shape[j], off, diag, boundary)
        terms.append((-1j, mats))
    try:
        couplings = list(couplings)
    except TypeError:
        raise TypeError(
            f"couplings must be a sequence of (λ, [w_0, …]) pairs, got {couplings!r}"
        ) from None
    for k, term in enumerate(couplings):
        try:
            lam, ws = term
            ws = list(ws)
        except (TypeError, ValueError):
            raise TypeError(f"couplings[{k}] must be a pair (λ, [w_0, …]), got {term!r}") from None
        if isinstance(lam, bool) or not isinstance(lam, Real) or not math.isfinite(lam):
            raise ValueError(f"couplings[{k}] coefficient λ={lam!r} must be a finite real number")
        if len(ws) != d:
            raise ValueError(f"couplings[{k}] has {len(ws)} entries but shape has {d} modes")
        mats = [
            None if w is None else Banded(n, {0: _real_vector(f"couplings[{k}][{j}]", w, n)})
            for j, (n, w) in enumerate(zip(shape, ws))
        ]
        terms.append((-1j * lam, mats))
    return KroneckerSum(shape, terms)
