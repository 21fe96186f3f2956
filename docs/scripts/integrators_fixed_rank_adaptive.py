"""Adaptive steps of the fixed-rank methods where the rank cannot represent ``F``.

Run from the repository root (or with ``PYTHONPATH`` pointing at another tree to compare
two versions): ``python docs/scripts/integrators_fixed_rank_adaptive.py``. Prints, for
``bug`` and ``psi``: accepted and rejected steps, evaluations of ``fun``, the relative error
at the end and the largest ratio of a step's normal component to its tolerance
(``normal_errors``, where the tree reports it), on two problems:

* the odd coupling of the integrators guide, ``i ψ' = (−½Δ + ½|x|² + ½ x₁x₂x₃) ψ`` on a
  ``10³`` grid from the rank-1 Gaussian, ``T = 0.5``, Krylov-exponential substeps
  (the component ``x₁x₂x₃ ψ`` is orthogonal to the bases in every mode);
* the adaptive problem of ``python -m tuckerflow.bench integrators`` (``16³``, a product
  potential that makes the rank grow) from a random rank-2 value, ``T = 2``, RK4 substeps.

``atol = 1e-12``; the error is against a dense Krylov exponential.
"""

from __future__ import annotations

import warnings

import numpy as np

import tuckerflow as tf
from tuckerflow.bench.integrators import adaptive_problem
from tuckerflow.integrate import KrylovExponential
from tuckerflow.operators import schrodinger


def odd_coupling(n=10):
    x = np.linspace(-4, 4, n)
    op = schrodinger((n,) * 3, x[1] - x[0], [x**2 / 2] * 3, couplings=[(0.5, [x, x, x])])
    g = np.exp(-(x**2) / 2)
    g = (g / np.linalg.norm(g)).astype(complex)[:, None]
    return op, tf.TuckerTensor(np.ones((1, 1, 1), dtype=complex), [g] * 3), 0.5, "exp"


def growing_rank(n=16):
    return adaptive_problem(n), tf.random_tucker((n,) * 3, 2, rng=0), 2.0, "rk4"


def main():
    runs = [
        ("odd coupling 10^3", odd_coupling, (1e-3, 1e-4)),
        ("growing rank 16^3", growing_rank, (1e-3,)),
    ]
    for label, problem, rtols in runs:
        op, y0, end, substep = problem()
        exact = KrylovExponential(rtol=1e-13)(
            lambda t, v, op=op: op.apply_dense(v), 0.0, y0.to_tensor(), end
        )
        for method in ("bug", "psi"):
            for rtol in rtols:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    sol = tf.solve_ivp(
                        op, (0.0, end), y0, method=method, rtol=rtol, atol=1e-12,
                        substep=substep,
                    )  # fmt: skip
                err = np.linalg.norm(sol.y[-1].to_tensor() - exact) / np.linalg.norm(exact)
                ratios = sol.get("normal_errors")
                normal = "-" if ratios is None else f"{np.max(ratios):.3g}"
                print(
                    f"{label}  {method:3s}  rtol={rtol:g}  steps {sol.nsteps}  rejected "
                    f"{sol.nrejected}  nfev {sol.nfev}  error {err:.2e}  max normal/tol {normal}"
                )


if __name__ == "__main__":
    main()
