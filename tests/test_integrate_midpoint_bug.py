"""The midpoint BUG (tuckerflow.integrate.midpoint_bug): second order on a separable flow."""

from __future__ import annotations

import numpy as np
import pytest

import tuckerflow as tf
from tuckerflow.operators import schrodinger

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_separable_flow_in_four_dimensions_smoke():
    """Smoke version of the gallery's d = 5 example: ``i ψ' = Σ_j H_j ψ`` from rank-2 Gaussian
    packets against the exact separable solution ``C ×_j exp(−i t H_j) U_j``; the midpoint
    BUG converges with second order (measured errors 2.8e-4 and 7.0e-5)."""
    from scipy.linalg import expm

    n, d = 8, 4
    x = np.linspace(-5, 5, n)
    op = schrodinger((n,) * d, x[1] - x[0], [x**2 / 2] * d)
    factors = []
    for j in range(d):
        cols = [np.exp(-((x - s - 0.1 * j) ** 2) / 2) for s in (-1.5, 1.0)]
        factors.append(np.linalg.qr(np.stack(cols, axis=1))[0].astype(complex))
    core = np.random.default_rng(7).standard_normal((2,) * d).astype(complex)
    y0 = tf.TuckerTensor(core / np.linalg.norm(core), factors)
    prop = expm(-0.25j * op.terms[0][1][0].to_dense())
    exact = tf.TuckerTensor(y0.core, [prop @ u for u in y0.factors])
    errs = []
    for steps in (2, 4):
        sol = tf.solve_ivp(
            op, (0, 0.25), y0, method="midpoint-bug", step=0.25 / steps, substep="exp",
            rank_atol=1e-10,
        )  # fmt: skip
        errs.append(float(tf.norm(tf.add(sol.y[-1], exact, beta=-1.0, rtol=None))))
    assert errs[0] / errs[1] >= 3.0, errs
