"""Manufactured problems shared by the integrator tests (imported by name from tests/)."""

from __future__ import annotations

import math

import numpy as np

import tuckerflow as tf
from tuckerflow.operators import KroneckerSum

GAUSS_X, GAUSS_W = np.polynomial.legendre.leggauss(6)


def gauss_quadrature(f, t0, y0, h):
    """A plug-in substep exact to ~h^12 when ``f`` does not depend on ``y`` (``F = Ȧ(t)``)."""
    acc = None
    for x, w in zip(GAUSS_X, GAUSS_W):
        v = f(t0 + h * (x + 1) / 2, y0) * (w * h / 2)
        acc = v if acc is None else acc + v
    return y0 + acc


class RotatingTucker:
    """``A(t) = e^t C ×_i exp(t W_i) U_i`` (W_i skew-Hermitian): rank r for all t.

    ``Ȧ(t) = A(t) + Σ_i A(t) ×_i W_i`` is applied exactly as a Kronecker sum.
    """

    def __init__(self, backend, shape, rank, dtype, seed, decay=0.5, extra=None):
        self.backend, self.dtype = backend, dtype
        y0 = tf.random_tucker(shape, rank, rng=seed, dtype=dtype, decay=decay)
        self.core = backend.numpy(y0.core)
        self.factors = [backend.numpy(u) for u in y0.factors]
        gen = np.random.default_rng(seed + 1)
        self.eig, ws = [], []
        for n in shape:
            w = gen.standard_normal((n, n))
            if "complex" in dtype:
                w = w + 1j * gen.standard_normal((n, n))
            w = (w - w.conj().T) / 2
            ws.append(w)
            self.eig.append(np.linalg.eigh(1j * w))  # W = -i H, H Hermitian
        d = len(shape)
        terms = [(1.0, [None] * d)]
        for i, w in enumerate(ws):
            mats = [None] * d
            mats[i] = w
            terms.append((1.0, mats))
        self.rate = KroneckerSum(shape, terms)
        self.extra = extra

    def _rot(self, t, i):
        lam, v = self.eig[i]
        m = (v * np.exp(-1j * t * lam)) @ v.conj().T
        return m if "complex" in self.dtype else m.real

    def A(self, t):
        b = self.backend
        core = b.tensor(math.exp(t) * self.core, self.dtype)
        facs = [b.tensor(self._rot(t, i) @ u, self.dtype) for i, u in enumerate(self.factors)]
        return tf.TuckerTensor(core, facs)

    def dense(self, t):
        return self.backend.numpy(self.A(t).to_tensor())

    def __call__(self, t, Y):
        a = self.A(t)
        rate = self.rate(t, a)
        if self.extra is None:
            return rate
        x, ax = Y.to_tensor(), a.to_tensor()
        return rate.to_tensor() + self.extra * (x * x - ax * ax)


def rel_error(b, y, ref):
    """Relative Frobenius error of the Tucker tensor ``y`` against the dense ``ref``."""
    return np.linalg.norm(b.numpy(y.to_tensor()) - ref) / np.linalg.norm(ref)
