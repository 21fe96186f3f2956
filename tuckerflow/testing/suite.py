"""A reusable property suite for the geometry of the fixed-rank Tucker manifold ``M_r``.

Every check draws its own random data from the suite's generator, asserts a fact with a
tolerance scaled by the machine epsilon of the dtype, and returns what it measured (so a
caller can log or tighten it). Downstream code calls the checks with its own manifold,
dtype and device, e.g. in a test parametrised over backends::

    suite = ManifoldSuite(FixedRankTucker((5, 4, 3), (2, 2, 2)), dtype="float32", rng=0)
    suite.run_all()
"""

from __future__ import annotations

import math

import numpy as np
import tensorly as tl

from .._backend import conj_t
from ..geometry.manifold import FixedRankTucker
from ..geometry.tangent import TuckerTangent
from ..tucker import TuckerTensor, inner
from .assertions import assert_on_manifold, relative_distance, to_numpy

__all__ = ["ManifoldSuite", "fitted_slope"]


def fitted_slope(x, y) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    return float(np.polyfit(lx, ly, 1)[0])


def _eps(dtype) -> float:
    name = {"complex64": "float32", "complex128": "float64"}.get(dtype, dtype)
    return float(np.finfo(name).eps)


class ManifoldSuite:
    """Property checks of projection, retraction and gradients on ``M_r``.

    Every check goes through the manifold object's own verbs (:meth:`~FixedRankTucker.proju`,
    :meth:`~FixedRankTucker.retr`, :meth:`~FixedRankTucker.egrad2rgrad`,
    :meth:`~FixedRankTucker.zero_tangent`, :meth:`~FixedRankTucker.random_point`,
    :meth:`~FixedRankTucker.random_tangent`), so a subclass with its own projection or
    retraction is tested, not the library's functions.

    Parameters
    ----------
    manifold : FixedRankTucker
        The library's manifold or a subclass of it.
    dtype : {"float32", "float64", "complex64", "complex128"}
    device : optional
        Device of the active backend (e.g. ``"cuda"``).
    rng : None, int or numpy.random.Generator
    ambient : {"dense", "tucker"}
        Kind of ambient tensors ``Z`` the projection checks use (Tucker: rank ``min(3, n_i)``).
    tol_factor : float
        Round-off identities are asserted at ``tol_factor · eps · max(n_i)``.

    Notes
    -----
    Checks (each a method returning a dict of measured values, raising ``AssertionError``):
    :meth:`check_projection_idempotent` (``P² = P``), :meth:`check_projection_self_adjoint`,
    :meth:`check_projection_fixes_point` (``P_Y Y = Y``), :meth:`check_projection_contracts`
    (``‖PZ‖ ≤ ‖Z‖``), :meth:`check_gauge`, :meth:`check_inner_is_frobenius`,
    :meth:`check_projection_rank` (``rank P = dim M_r``), :meth:`check_gauge_invariance`,
    :meth:`check_curvature_scaling` (``‖(P_X − P_Y)Z‖ / (‖X − Y‖‖Z‖) ∝ 1/ρ``),
    :meth:`check_retraction_at_zero`, :meth:`check_retraction_on_manifold`,
    :meth:`check_retraction_orders` (defect ``O(t²)``, tangential defect ``O(t³)``),
    :meth:`check_gradient_taylor` (``f(R(Y, tξ)) − f(Y) − t Re⟨grad f, ξ⟩ = O(t²)``).
    """

    def __init__(
        self, manifold, *, dtype="float64", device=None, rng=None, ambient="dense", tol_factor=100.0
    ):
        if not isinstance(manifold, FixedRankTucker):
            raise TypeError(f"manifold must be a FixedRankTucker, got {type(manifold).__name__}")
        if ambient not in ("dense", "tucker"):
            raise ValueError(f"ambient={ambient!r} is not one of ('dense', 'tucker')")
        self.manifold = manifold
        self.dtype = str(dtype)
        self.device = device
        self.ambient_kind = ambient
        self.rng = np.random.default_rng(rng)
        self.eps = _eps(self.dtype)
        self.tol = tol_factor * self.eps * max(manifold.shape)
        self.double = self.eps < 1e-10

    # -- data --------------------------------------------------------------------------------
    @property
    def complex(self) -> bool:
        return self.dtype.startswith("complex")

    def _gauss(self, shape):
        a = self.rng.standard_normal(shape)
        if self.complex:
            a = a + 1j * self.rng.standard_normal(shape)
        return a

    def tensor(self, a):
        """A NumPy array on the suite's backend, dtype and device."""
        kw = {"dtype": getattr(tl.backend.current_backend(), self.dtype)}
        if self.device is not None:
            kw["device"] = self.device
        return tl.tensor(np.asarray(a), **kw)

    def _host(self, x):
        """Dense NumPy copy in double precision (complex only for complex dtypes)."""
        return to_numpy(x).astype(np.complex128 if self.complex else np.float64)

    def point(self, decay=1.0) -> TuckerTensor:
        seed = int(self.rng.integers(2**31))
        return self.manifold.random_point(
            rng=seed, dtype=self.dtype, device=self.device, decay=decay
        )

    def tangent(self, y) -> TuckerTangent:
        return self.manifold.random_tangent(y, rng=int(self.rng.integers(2**31)))

    def ambient(self):
        """A random ambient tensor of unit norm (dense or Tucker, see ``ambient``)."""
        shape = self.manifold.shape
        if self.ambient_kind == "dense":
            a = self._gauss(shape)
            return self.tensor(a / np.linalg.norm(a))
        ranks = [min(3, n) for n in shape]
        core = self._gauss(tuple(ranks))
        factors = [self.tensor(self._gauss((n, s))) for n, s in zip(shape, ranks)]
        z = TuckerTensor(self.tensor(core), factors)
        return z / float(tl.to_numpy(z.norm()))

    # -- the manifold's own verbs (a subclass overriding them is what gets tested) ---------
    def _proj(self, y, z) -> TuckerTangent:
        return self.manifold.proju(y, z)

    def _retr(self, y, xi, t=1.0, method=None) -> TuckerTensor:
        if method is None:
            return self.manifold.retr(y, xi, t)
        return self.manifold.retr(y, xi, t, method=method)

    # -- projection --------------------------------------------------------------------------
    def check_projection_idempotent(self):
        y, z = self.point(), self.ambient()
        pz = self._proj(y, z)
        err = relative_distance(self._proj(y, pz.to_tucker()), pz)
        if not err <= self.tol:
            raise AssertionError(f"P(PZ) ≠ PZ: relative distance {err:.3g} > {self.tol:.3g}")
        return {"error": err}

    def check_projection_self_adjoint(self):
        y, z, w = self.point(), self.ambient(), self.ambient()
        a = _scalar(_inner(self._proj(y, z), w))
        b = _scalar(_inner(self._proj(y, w), z)).conjugate()
        err = abs(a - b)
        if not err <= self.tol:
            raise AssertionError(f"⟨PZ, W⟩={a:.6g} but ⟨Z, PW⟩={b:.6g} (|diff|={err:.3g})")
        return {"error": err}

    def check_projection_fixes_point(self):
        y = self.point()
        err = relative_distance(self._proj(y, y), y)
        if not err <= self.tol:
            raise AssertionError(f"P_Y Y ≠ Y: relative distance {err:.3g} > {self.tol:.3g}")
        return {"error": err}

    def check_projection_contracts(self):
        y, z = self.point(), self.ambient()
        ratio = float(tl.to_numpy(self._proj(y, z).norm())) / np.linalg.norm(to_numpy(z))
        if not ratio <= 1.0 + self.tol:
            raise AssertionError(f"‖PZ‖/‖Z‖={ratio:.6g} exceeds 1")
        return {"ratio": ratio}

    def check_gauge(self):
        """``U_iᴴ δU_i = 0`` to round-off, measured as ``‖U_iᴴ δU_i‖ ≤ tol · ‖ξ‖ · ‖S_i^{-1}‖``

        (``δU_i = δK_i S_i^{-1}`` inherits the round-off of ``δK_i`` amplified by ``S_i^{-1}``).
        """
        y, z = self.point(), self.ambient()
        xi = self._proj(y, z)
        scaled = xi.gauge_error()
        total = float(tl.to_numpy(xi.norm()))
        worst = 0.0
        for i, (u, du) in enumerate(zip(y.factors, xi.dfactors)):
            s = np.linalg.svd(to_numpy(tl.unfold(y.core, i)), compute_uv=False)
            g = float(tl.to_numpy(tl.norm(tl.dot(conj_t(u), du))))
            worst = max(worst, g * s[-1] / max(total, 1e-300))
        if not max(scaled, worst) <= self.tol:
            raise AssertionError(f"gauge violated: {max(scaled, worst):.3g} > {self.tol:.3g}")
        return {"gauge": worst, "scaled_gauge": scaled}

    def check_inner_is_frobenius(self):
        y = self.point()
        xi, eta = self._proj(y, self.ambient()), self._proj(y, self.ambient())
        a = _scalar(xi.inner(eta))
        b = complex(np.vdot(to_numpy(xi), to_numpy(eta)))
        n = float(tl.to_numpy(xi.norm()))
        nd = float(np.linalg.norm(to_numpy(xi)))
        err = max(abs(a - b), abs(n - nd))
        if not err <= self.tol:
            raise AssertionError(f"tangent inner {a:.6g} vs Frobenius {b:.6g} (|diff|={err:.3g})")
        return {"error": err}

    def check_projection_rank(self, max_size=512):
        """``rank P_Y = dim M_r``, from the matrix of ``P_Y`` (only for ``∏ n_i ≤ max_size``)."""
        shape = self.manifold.shape
        size = math.prod(shape)
        if size > max_size:
            raise ValueError(f"check_projection_rank needs ∏ n_i={size} ≤ max_size={max_size}")
        y = self.point()
        eye = np.eye(size)
        cols = [
            to_numpy(self._proj(y, self.tensor(eye[k].reshape(shape)))).ravel() for k in range(size)
        ]
        s = np.linalg.svd(np.stack(cols, axis=1), compute_uv=False)
        # an orthogonal projector has singular values 0 or 1: count those above 1/2
        rank = int(np.sum(s > 0.5))
        gap = float(np.max(np.minimum(np.abs(s), np.abs(s - 1.0))))
        if rank != self.manifold.dim or not gap <= self.tol:
            raise AssertionError(
                f"rank P={rank} (expected dim M_r={self.manifold.dim}); singular values off "
                f"{{0, 1}} by {gap:.3g}"
            )
        return {"rank": rank, "dim": self.manifold.dim, "gap": gap}

    def check_gauge_invariance(self):
        """``U_i → U_i O_i``, ``C → C ×_i O_iᴴ`` changes neither ``P_Y Z`` nor ``R(Y, ξ)``."""
        y, z = self.point(), self.ambient()
        os_ = []
        for r in self.manifold.rank:
            q, _ = np.linalg.qr(self._gauss((r, r)))
            os_.append(self.tensor(q))
        y2 = TuckerTensor(
            tl.tenalg.multi_mode_dot(y.core, [conj_t(o) for o in os_]),
            [tl.dot(u, o) for u, o in zip(y.factors, os_)],
        )
        xi, xi2 = self._proj(y, z), self._proj(y2, z)
        err_p = relative_distance(xi, xi2)
        # δU_i' = δU_i O_i; δU_i carries the round-off of δK_i times ‖S_i^{-1}‖
        total = max(float(tl.to_numpy(xi.norm())), 1e-300)
        err_du = 0.0
        for i, (du, du2, o) in enumerate(zip(xi.dfactors, xi2.dfactors, os_)):
            smin = np.linalg.svd(to_numpy(tl.unfold(y.core, i)), compute_uv=False)[-1]
            diff = np.linalg.norm(to_numpy(tl.dot(du, o)) - to_numpy(du2))
            err_du = max(err_du, diff * smin / total)
        err_r = relative_distance(self._retr(y, xi, 0.5), self._retr(y2, xi2, 0.5))
        worst = max(err_p, err_r, err_du)
        if not worst <= 10 * self.tol:
            raise AssertionError(
                f"gauge change altered results: projection {err_p:.3g}, dU {err_du:.3g}, "
                f"retraction {err_r:.3g}"
            )
        return {"projection": err_p, "dfactors": err_du, "retraction": err_r}

    def check_curvature_scaling(self, rhos=(1e-1, 10**-1.5, 1e-2)):
        """Fit the slope of ``‖(P_X − P_Y)Z‖ / ‖X − Y‖`` against ``ρ`` (expected −1).

        ``X`` has the smallest singular value ``ρ‖C‖/√r_i``-scaled in one mode ``i`` (needs
        ``2 ≤ r_i < n_i``); ``Y`` turns the corresponding column of ``U_i`` by a small angle
        towards the orthogonal complement, so ``‖X − Y‖ ∝ ρθ`` while the tangent spaces differ
        by ``∝ θ``: the ``1/ρ`` of the curvature bound is attained.
        """
        shape, rank = self.manifold.shape, self.manifold.rank
        modes = [i for i in range(len(shape)) if 2 <= rank[i] < shape[i]]
        if not modes:
            raise ValueError(f"check_curvature_scaling needs a mode with 2 ≤ r_i < n_i: {rank}")
        i = modes[0]
        theta = 1e-6 if self.double else 1e-3
        base = self.point(decay=1.0)  # flat spectra: every basis of U_i is a singular basis
        z = self.ambient()
        w = self._gauss((shape[i],))
        u_host = to_numpy(base.factors[i])
        w = w - u_host @ (u_host.conj().T @ w)
        w = w / np.linalg.norm(w)
        last = u_host[:, -1]
        turned = u_host.copy()
        turned[:, -1] = math.cos(theta) * last + math.sin(theta) * w
        ratios = []
        for rho in rhos:
            scale = np.ones(rank[i])
            scale[-1] = rho
            core = tl.tenalg.mode_dot(base.core, self.tensor(np.diag(scale)), i)
            x = TuckerTensor(core, list(base.factors))
            fy = list(base.factors)
            fy[i] = self.tensor(turned)
            yy = TuckerTensor(core, fy)
            dist = np.linalg.norm(self._host(x) - self._host(yy))
            diff = np.linalg.norm(self._host(self._proj(x, z)) - self._host(self._proj(yy, z)))
            ratios.append(diff / (dist * np.linalg.norm(to_numpy(z))))
        slope = fitted_slope(rhos, ratios)
        if not -1.25 <= slope <= -0.75:
            raise AssertionError(f"curvature ratio scales like ρ^{slope:.3f}, expected ρ^-1")
        return {"slope": slope, "ratios": ratios}

    # -- retraction --------------------------------------------------------------------------
    def check_retraction_at_zero(self):
        y = self.point()
        xi = self.tangent(y)
        err = relative_distance(self._retr(y, xi, 0.0), y)
        err0 = relative_distance(self._retr(y, self.manifold.zero_tangent(y)), y)
        if not max(err, err0) <= self.tol:
            raise AssertionError(f"R(Y, 0) ≠ Y: relative distance {max(err, err0):.3g}")
        return {"error": max(err, err0)}

    def check_retraction_on_manifold(self, t=0.5):
        y = self.point()
        xi = self.tangent(y)
        for method in ("hosvd", "st_hosvd"):
            out = self._retr(y, xi, t, method=method)
            assert_on_manifold(out, self.manifold.rank)
        return {"rank": tuple(out.rank)}

    def check_retraction_orders(self, method="hosvd"):
        """Slopes of the defect (expected 2) and of its tangential part (expected 3)."""
        y = self.point()
        xi = self.tangent(y)
        ts = np.geomspace(0.1, 1e-3 if self.double else 2e-2, 4)
        defects, tangential = [], []
        for t in ts:
            out = self._retr(y, xi, float(t), method=method)
            d = self._host(out) - self._host(y) - t * self._host(xi)
            defects.append(np.linalg.norm(d))
            tangential.append(float(tl.to_numpy(self._proj(y, self.tensor(d)).norm())))
        s2, s3 = fitted_slope(ts, defects), fitted_slope(ts, tangential)
        if not (1.75 <= s2 <= 2.3 and s3 >= 2.6):
            raise AssertionError(
                f"retraction defect slope {s2:.3f} (expected 2), tangential slope {s3:.3f} "
                "(expected ≥ 3)"
            )
        return {"defect_slope": s2, "tangential_slope": s3}

    # -- gradients ---------------------------------------------------------------------------
    def default_function(self):
        """``f(X) = Re⟨A, X⟩ + ¼‖X‖⁴`` and its Euclidean gradient ``A + ‖X‖² X`` (dense)."""
        a = self._gauss(self.manifold.shape)
        a = self.tensor(a / np.linalg.norm(a))

        def f(x):
            inner = tl.sum(tl.conj(a) * x)
            return _scalar(inner).real + 0.25 * float(tl.to_numpy(tl.norm(x))) ** 4

        def egrad(x):
            return a + x * float(tl.to_numpy(tl.norm(x))) ** 2

        return f, egrad

    def check_gradient_taylor(self, f=None, egrad=None, *, gradient=None):
        """``|f(R(Y, tξ)) − f(Y) − t Re⟨grad f(Y), ξ⟩|`` shrinks like ``t²``.

        ``f`` maps a dense tensor to a float and ``egrad`` to its Euclidean gradient (default
        :meth:`default_function`); ``gradient(f, Y) -> TuckerTangent`` replaces the projection
        of ``egrad`` (e.g. an autodiff gradient).
        """
        if f is None:
            f, egrad = self.default_function()
        y = self.point()
        xi = self.tangent(y)
        grad = (
            gradient(f, y)
            if gradient is not None
            else self.manifold.egrad2rgrad(y, egrad(y.to_tensor()))
        )
        slope_term = _scalar(grad.inner(xi)).real
        f0 = f(y.to_tensor())
        ts = np.geomspace(0.1, 1e-2 if self.double else 3e-2, 4)
        rem = [abs(f(self._retr(y, xi, float(t)).to_tensor()) - f0 - t * slope_term) for t in ts]
        slope = fitted_slope(ts, rem)
        if not 1.7 <= slope <= 2.4:
            raise AssertionError(f"Taylor remainder slope {slope:.3f}, expected 2")
        return {"slope": slope}

    def run_all(self):
        """Run every check that applies to the manifold; return the measured values by name."""
        out = {}
        for name in (
            "check_projection_idempotent",
            "check_projection_self_adjoint",
            "check_projection_fixes_point",
            "check_projection_contracts",
            "check_gauge",
            "check_inner_is_frobenius",
            "check_gauge_invariance",
            "check_retraction_at_zero",
            "check_retraction_on_manifold",
            "check_retraction_orders",
            "check_gradient_taylor",
        ):
            out[name] = getattr(self, name)()
        if math.prod(self.manifold.shape) <= 512:
            out["check_projection_rank"] = self.check_projection_rank()
        if any(2 <= r < n for r, n in zip(self.manifold.rank, self.manifold.shape)):
            out["check_curvature_scaling"] = self.check_curvature_scaling()
        return out


def _inner(xi, w):
    """``⟨ξ, W⟩`` for a tangent vector and an ambient (dense or Tucker) tensor."""
    return inner(xi.to_tucker(), w)


def _scalar(x) -> complex:
    """A Python complex from a 0-d backend tensor (resolving PyTorch's lazy conjugation)."""
    if hasattr(x, "resolve_conj"):
        x = x.resolve_conj()
    return complex(np.asarray(tl.to_numpy(x)))
