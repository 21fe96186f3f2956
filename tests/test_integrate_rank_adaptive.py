"""The rank-adaptive integrators (tuckerflow.integrate.rank_adaptive): their truncation.

The rank rule does not over-count discarded values: ``ra-bug`` with the default
``truncation="hosvd"`` must keep the ranks of the published matrix rank-adaptive BUG
(Ceruti, Kusch & Lubich, BIT 62, 2022, Algorithm 1 with the truncation of its §3) on the
matrix Schrödinger example of its §6.1, step by step; the reference below is a direct
implementation of that algorithm on dense ``n × n`` matrices. The tensor rule (``d ≥ 3``) is
checked on a tensor whose exact HOSVD errors are known, at a tolerance far below ``‖X‖``
where an error computed as ``total − kept`` would lose the digits that decide the rank.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tol
from hypothesis import given, settings
from hypothesis import strategies as st
from integrate_problems import RotatingTucker, gauss_quadrature

import tuckerflow as tf
from tuckerflow.integrate import RankAdaptiveBUG
from tuckerflow.operators import Banded, KroneckerSum, schrodinger
from tuckerflow.testing.strategies import make_valid, seeds

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rk4(f, y, h):
    k1 = f(y)
    k2 = f(y + (h / 2) * k1)
    k3 = f(y + (h / 2) * k2)
    k4 = f(y + h * k3)
    return y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


def matrix_ra_bug(F, U, S, V, h, steps, theta):
    """The published matrix rank-adaptive BUG, ``Y = U S Vᴴ``; RK4 for every substep.

    Returns the rank after each step and the final matrix.
    """
    ranks = []
    for _ in range(steps):
        K1 = _rk4(lambda K, V=V: F(K @ V.conj().T) @ V, U @ S, h)  # K-step
        L1 = _rk4(lambda L, U=U: F(U @ L.conj().T).conj().T @ U, V @ S.conj().T, h)  # L-step
        Uh = np.linalg.qr(np.hstack([U, K1]))[0]  # augmented bases, 2r columns
        Vh = np.linalg.qr(np.hstack([V, L1]))[0]
        S0 = (Uh.conj().T @ U) @ S @ (V.conj().T @ Vh)
        Sh = _rk4(lambda C, A=Uh, B=Vh: A.conj().T @ F(A @ C @ B.conj().T) @ B, S0, h)  # S-step
        P, sig, Qh = np.linalg.svd(Sh)
        tails = np.sqrt(np.cumsum((sig**2)[::-1])[::-1])  # tails[r] = ‖σ_{r:}‖
        r = max(1, int(np.argmax(np.append(tails, 0.0) <= theta)))
        U, S, V = Uh @ P[:, :r], np.diag(sig[:r]), Vh @ Qh[:r].conj().T
        ranks.append(r)
    return ranks, U @ S @ V.conj().T


def schrodinger_6_1(n=100):
    """``i Ẏ = −½ (D Y + Y D) + V Y V``, ``D = tridiag(−1, 2, −1)``, ``V = diag(cos(2πj/n))``
    (CKL 2022, §6.1), from a random ``Y0`` with singular values ``10^{-k}``, ``k = 0…9``."""
    d2 = np.diag(np.full(n, 2.0)) - np.eye(n, k=1) - np.eye(n, k=-1)
    v = np.diag(np.cos(2 * np.pi * np.arange(n) / n))
    op = KroneckerSum(
        (n, n),
        [
            (0.5j, [Banded(n, {-1: -1.0, 0: 2.0, 1: -1.0}), None]),
            (0.5j, [None, Banded(n, {-1: -1.0, 0: 2.0, 1: -1.0})]),
            (-1j, [Banded(n, {0: np.diag(v)})] * 2),
        ],
    )

    def dense(Y):
        return 0.5j * (d2 @ Y + Y @ d2) - 1j * (v @ Y @ v)

    gen = np.random.default_rng(0)
    u = np.linalg.qr(gen.standard_normal((n, 10)) + 1j * gen.standard_normal((n, 10)))[0]
    w = np.linalg.qr(gen.standard_normal((n, 10)) + 1j * gen.standard_normal((n, 10)))[0]
    s = np.diag(10.0 ** -np.arange(10)).astype(complex)
    return op, dense, u, s, w


@pytest.mark.parametrize("truncation", ["hosvd", "st_hosvd"])
def test_ra_bug_ranks_match_the_published_matrix_algorithm(truncation):
    op, dense, u, s, w = schrodinger_6_1()
    h, steps = 0.01, 40
    for theta in (1e-6, 1e-8):
        sol = tf.solve_ivp(
            op, (0, h * steps), tf.TuckerTensor(s, [u, w]), method="ra-bug", step=h,
            substep="rk4", rank_atol=theta, truncation=truncation,
        )  # fmt: skip
        assert sol.success and sol.nsteps == steps
        # Y = U C Wᵀ in Tucker form is U S Vᴴ with V = conj(W)
        ranks, y_ref = matrix_ra_bug(dense, u, s, w.conj(), h, steps, theta)
        assert [r[0] for r in sol.ranks[1:]] == ranks, (theta, truncation)
        assert all(r[0] == r[1] for r in sol.ranks)
        # the same algorithm: the states agree far below the truncation tolerance
        assert np.linalg.norm(sol.y[-1].to_tensor() - y_ref) <= 1e-3 * theta
        assert len(set(ranks)) > 1  # the ranks change during the run


def _odeco(n, s, seed=0):
    """``Σ_k s_k u_k ⊗ v_k ⊗ w_k`` with orthonormal ``u``, ``v``, ``w`` (dense, NumPy)."""
    gen = np.random.default_rng(seed)
    u, v, w = (np.linalg.qr(gen.standard_normal((n, len(s))))[0] for _ in range(3))
    return np.einsum("k,ik,jk,lk->ijl", s, u, v, w)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tensor_hosvd_rank_at_a_tight_tolerance(backend, dtype):
    """``X = Σ_k s_k u_k ⊗ v_k ⊗ w_k`` with five unit terms and two of ``0.45 θ‖X‖``: the
    HOSVD at ranks (5, 5, 5) errs by ``0.64 θ‖X‖``, within the tolerance; the budget split
    alone keeps (6, 6, 5). At ``θ = 5e-6`` (40 eps of float32) the squared error, 1e-11 of
    ``‖X‖²``, lies below the round-off of ``‖G‖² − ‖G_kept‖²`` over the 48³ entries
    (4 · 48³ · eps64 ≈ 1e-10): only a sum from the small end resolves it."""
    theta = 5e-6
    s = np.array([1.0] * 5 + [0.45 * theta * np.sqrt(5)] * 2)
    x = _odeco(48, s)
    y, info = tf.hosvd(backend.tensor(x, dtype), rtol=theta, return_info=True)
    assert y.rank == (5, 5, 5)
    exact = np.sqrt(2) * 0.45 * theta * np.sqrt(5)
    assert info.error_bound == pytest.approx(exact, rel=0.2 if dtype == "float32" else 1e-6)
    # the integrators' path: an augmented core in orthonormal bases
    z = tf.hosvd(backend.tensor(x, dtype), rank=(7, 7, 7))
    new, _, _ = tf.dlra.truncate_core(z.core, z.factors, rtol=theta, method="hosvd")
    assert new.rank == (5, 5, 5)


# ------------------------------------------------------------------------------------------
# truncation: tolerance plateau, norms, valid and capped ranks

ADAPTIVE = ("ra-bug", "parallel-bug", "midpoint-bug")


@pytest.mark.parametrize("method", ADAPTIVE)
def test_rank_adaptive_error_plateaus_at_the_truncation_tolerance(backend, method):
    """algorithms.md §4: at a fixed tolerance ϑ the error stops at a plateau (≲ nsteps · ϑ)
    instead of falling with the step size; every returned rank is valid."""
    # full multilinear rank (8, 8, 8), core spectrum 0.87 · 2^-k: truncation must bind
    prob = RotatingTucker(backend, (8, 8, 8), (8, 8, 8), "float64", seed=2, decay=0.5)
    end, steps = 0.4, (0.1, 0.05, 0.025)
    for theta in (3e-2, 1e-2, 1e-3):
        errs = []
        for h in steps:
            sol = tf.solve_ivp(
                prob, (0.0, end), prob.A(0.0), method=method, step=h,
                substep=gauss_quadrature, rank_atol=theta,
            )  # fmt: skip
            assert sol.success
            for r in sol.ranks:
                tf.validate_rank((8, 8, 8), r)
            err = np.linalg.norm(backend.numpy(sol.y[-1].to_tensor()) - prob.dense(end))
            errs.append(err)
            # the truncations are the only error source (the substep is exact here)
            assert err <= round(end / h) * theta
        if theta == 1e-3:  # below the spectrum's tail: nothing is cut, exact to round-off
            assert max(errs) < 1e-10
        else:  # cut at every step, and the error does not shrink with the step size
            assert min(errs) >= 0.1 * theta
            assert errs[-1] >= 0.5 * errs[0], errs


def test_schrodinger_norm_and_exact_truncation_change(backend):
    x = np.linspace(-4, 4, 10)
    h = x[1] - x[0]
    op = schrodinger(
        (10, 10, 10), h, [x**2 / 2] * 3, couplings=[(0.3, [x, x, None]), (0.2, [None, x, x])]
    )
    y0 = tf.random_tucker((10, 10, 10), 2, rng=4, dtype="complex128", device=backend.device)
    solver = RankAdaptiveBUG(
        op, 0.0, y0, 0.3, step=0.1, substep="exp", rank_rtol=1e-3, truncation="st_hosvd"
    )
    norm0 = float(backend.numpy(tf.norm(y0)))
    while solver.status == "running":
        before = float(backend.numpy(tf.norm(solver.y)))
        assert solver.step() is None
        # the Galerkin step is unitary up to the Krylov tolerance (100 eps per substep)
        assert abs(solver.augmented_norm - before) <= 1e-11
        # ST-HOSVD truncation removes exactly the discarded σ² from ‖Y‖²
        after = float(backend.numpy(tf.norm(solver.y)))
        removed2 = solver.truncation_info.error_bound**2
        assert abs(solver.augmented_norm**2 - removed2 - after**2) <= 1e-12
        assert removed2 <= (1e-3 * solver.augmented_norm) ** 2 * (1 + 1e-9)
    assert abs(float(backend.numpy(tf.norm(solver.y))) - norm0) <= 3 * 1e-3 * norm0
    assert max(solver.y.rank) > 2  # the coupling terms made the rank grow


def _orth_err(b, u):
    u = b.numpy(u)
    return np.abs(u.conj().T @ u - np.eye(u.shape[1])).max()


@pytest.mark.parametrize("method", ADAPTIVE)
@settings(max_examples=6)
@given(
    shape=st.tuples(st.integers(3, 6), st.integers(3, 6), st.integers(2, 5)),
    cap=st.integers(1, 4),
    seed=seeds,
)
def test_returned_ranks_valid_and_capped(backend, method, shape, cap, seed):
    gen = np.random.default_rng(seed % 1000)
    d = len(shape)
    terms = [(1.0, [gen.standard_normal((n, n)) for n in shape]), (0.5, [None] * d)]
    op = KroneckerSum(shape, terms)
    rank = make_valid(tuple(min(cap, n) for n in shape))
    y0 = tf.random_tucker(shape, rank, rng=seed % 1000, device=backend.device)
    sol = tf.solve_ivp(op, (0, 0.2), y0, method=method, step=0.1, rank_rtol=1e-8, max_rank=cap)
    assert sol.success
    for r in sol.ranks:
        tf.validate_rank(shape, r)
        assert max(r) <= cap
    for y in sol.y:
        for u in y.factors:
            assert _orth_err(backend, u) <= tol("float64", 100)
