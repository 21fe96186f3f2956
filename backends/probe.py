#!/usr/bin/env python
"""Probe the TensorLy primitives tuckerflow relies on, backend by backend.

Usage::

    python backends/probe.py [--backend numpy|pytorch|cupy|all] [--device cpu|cuda]
                             [--require] [--json PATH] [--quiet]

For every requested backend that can be imported (others are reported as
unavailable and skipped), the probe enters ``tl.backend_context(name)`` and
checks, for float32, float64, complex64 and complex128, that each primitive
behaves as tuckerflow assumes. Every check yields an *observation*: ``"ok"``
when the assumption holds, otherwise a short description of what happened.

Observations that differ from the assumption but are known and handled live in
``backends/deviations.json`` next to this file::

    {"pytorch": {"qr_mode_r": {"observed": "...", "dtypes": [...], "why": "..."}}}

``dtypes`` and ``devices`` are optional filters. A row is printed as ``ok``,
``known deviation`` or ``UNEXPECTED``; the exit status is 1 when any row is
unexpected (or, with ``--require``, when a requested backend is unavailable).

``--device cuda`` runs the PyTorch backend on the GPU; NumPy always runs on the
CPU and CuPy always on the current CUDA device. The script is standalone: it
imports only numpy, tensorly and (when present) torch/cupy, never tuckerflow.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorly as tl
from tensorly import tenalg

HERE = Path(__file__).resolve().parent
DEVIATIONS_FILE = HERE / "deviations.json"

BACKENDS = ("numpy", "pytorch", "cupy")
DTYPES = ("float32", "float64", "complex64", "complex128")
OK = "ok"
KNOWN = "known deviation"
UNEXPECTED = "UNEXPECTED"

# Relative tolerances per dtype (single vs double precision).
TOL = {"float32": 1e-4, "complex64": 1e-4, "float64": 1e-10, "complex128": 1e-10}


# --------------------------------------------------------------------------- helpers


def to_np(x: Any) -> np.ndarray:
    """Backend tensor -> NumPy array, robust to torch's lazy conjugate views."""
    if hasattr(x, "resolve_conj"):  # torch: materialise a conj view first
        x = x.resolve_conj()
    if hasattr(x, "detach"):
        x = x.detach()
    return np.asarray(tl.to_numpy(x))


def dtype_name(x: Any) -> str:
    """Canonical dtype name ('float32', 'complex64', ...) of a backend tensor."""
    return str(x.dtype).removeprefix("torch.")


def device_of(x: Any) -> str:
    dev = getattr(x, "device", None)
    if dev is None or isinstance(dev, str):  # numpy >= 2 has ndarray.device == "cpu"
        return "cpu" if dev in (None, "cpu") else dev
    if hasattr(dev, "type"):  # torch.device
        return str(dev)
    return f"cuda:{getattr(dev, 'id', 0)}"  # cupy.cuda.Device


def close(a: Any, b: Any, tol: float) -> bool:
    a, b = to_np(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    scale = max(1.0, float(np.max(np.abs(b))) if b.size else 1.0)
    return bool(np.max(np.abs(a - b), initial=0.0) <= tol * scale * max(1, b.size) ** 0.5)


def real_dtype(name: str) -> str:
    return {"complex64": "float32", "complex128": "float64"}.get(name, name)


@dataclass
class Env:
    """Everything a check needs: backend, dtype, device and a seeded RNG."""

    backend: str
    dtype: str
    device: str
    ctx: dict[str, Any]
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    @property
    def tol(self) -> float:
        return TOL[self.dtype]

    @property
    def is_complex(self) -> bool:
        return self.dtype.startswith("complex")

    def randn(self, *shape: int) -> np.ndarray:
        """Random NumPy array of this env's dtype (complex parts when complex)."""
        a = self.rng.standard_normal(shape)
        if self.is_complex:
            a = a + 1j * self.rng.standard_normal(shape)
        return a.astype(self.dtype)

    def tensor(self, a: Any) -> Any:
        return tl.tensor(a, **self.ctx)


def problems(*pairs: tuple[bool, str]) -> str:
    """Join the messages of the failed conditions; ``"ok"`` when none failed."""
    bad = [msg for cond, msg in pairs if not cond]
    return "; ".join(bad) if bad else OK


# --------------------------------------------------------------------------- checks
# Each check returns an observation string: "ok" when tuckerflow's assumption
# holds, else a short, stable description of the behaviour (no numbers in the
# descriptions that deviations.json is expected to match).


def check_dtype_attributes(env: Env) -> str:
    """``tl.<dtype>`` (module attribute) and ``tl.backend.<dtype>`` follow the backend."""
    out = []
    for where, obj in (("tl", tl), ("tl.backend", tl.backend)):
        attr = getattr(obj, env.dtype)
        is_np = isinstance(attr, type) and issubclass(attr, np.generic)
        what = "NumPy's type (bound at import)" if is_np and env.backend != "numpy" else "wrong"
        try:
            t = tl.zeros((2,), dtype=attr)
        except Exception as exc:
            out.append(f"{where}.{env.dtype} is {what}, rejected ({type(exc).__name__})")
            continue
        if dtype_name(t) != env.dtype:
            out.append(f"{where}.{env.dtype} gives dtype {dtype_name(t)}")
    return "; ".join(out) or OK


def check_tensor_context(env: Env) -> str:
    ref = env.tensor(env.randn(3, 2))
    ctx = tl.context(ref)
    from_np = tl.tensor(
        env.randn(2, 2).astype(np.complex128 if env.is_complex else np.float64), **ctx
    )
    from_list = tl.tensor([[1.0, 2.0], [3.0, 4.0]], **ctx)
    out = []
    for what, t in (("from numpy", from_np), ("from list", from_list)):
        if dtype_name(t) != dtype_name(ref):
            out.append(f"{what}: dtype {dtype_name(t)} != {dtype_name(ref)}")
        if device_of(t) != device_of(ref):
            out.append(f"{what}: device {device_of(t)} != {device_of(ref)}")
        if not tl.is_tensor(t):
            out.append(f"{what}: not a backend tensor")
    return "; ".join(out) or OK


def check_zeros_eye_context(env: Env) -> str:
    ref = env.tensor(env.randn(2, 2))
    ctx = tl.context(ref)
    z, e = tl.zeros((2, 3), **ctx), tl.eye(3, **ctx)
    return problems(
        (dtype_name(z) == env.dtype, f"zeros dtype {dtype_name(z)}"),
        (dtype_name(e) == env.dtype, f"eye dtype {dtype_name(e)}"),
        (device_of(z) == device_of(ref), f"zeros device {device_of(z)}"),
        (close(e, np.eye(3), env.tol), "eye is not the identity"),
    )


def check_unfold_fold(env: Env) -> str:
    a = env.randn(3, 4, 5)
    t = env.tensor(a)
    out = []
    for mode in range(3):
        u = tl.unfold(t, mode)
        # TensorLy's convention: move `mode` to the front, then C-order reshape.
        if not close(u, np.moveaxis(a, mode, 0).reshape(a.shape[mode], -1), env.tol):
            out.append(f"mode {mode}: unfolding is not moveaxis + C-order reshape")
        if not close(tl.fold(u, mode, a.shape), a, env.tol):
            out.append(f"mode {mode}: fold(unfold) != identity")
        if dtype_name(u) != env.dtype:
            out.append(f"unfold dtype {dtype_name(u)}")
    return "; ".join(out) or OK


def check_mode_dot(env: Env) -> str:
    a = env.randn(3, 4, 5)
    t = env.tensor(a)
    ms = [env.randn(2, 3), env.randn(6, 4), env.randn(3, 5)]
    out = []
    seq = t
    for mode, m in enumerate(ms):
        mt = env.tensor(m)
        res = tenalg.mode_dot(t, mt, mode)
        # Mat_i(A x_i M) = M Mat_i(A)
        if not close(tl.unfold(res, mode), m @ to_np(tl.unfold(t, mode)), env.tol):
            out.append(f"mode {mode}: Mat(A x M) != M Mat(A)")
        seq = tenalg.mode_dot(seq, mt, mode)
    multi = tenalg.multi_mode_dot(t, [env.tensor(m) for m in ms])
    if not close(multi, to_np(seq), env.tol):
        out.append("multi_mode_dot != sequence of mode_dot")
    skip = tenalg.multi_mode_dot(t, [env.tensor(m) for m in ms], skip=1)
    want = to_np(tenalg.mode_dot(tenalg.mode_dot(t, env.tensor(ms[0]), 0), env.tensor(ms[2]), 2))
    if not close(skip, want, env.tol):
        out.append("multi_mode_dot(skip=) wrong")
    if dtype_name(multi) != env.dtype:
        out.append(f"result dtype {dtype_name(multi)}")
    return "; ".join(out) or OK


def _transpose_kind(res: Any, a: np.ndarray, m: np.ndarray, mode: int, tol: float) -> str:
    unf = np.moveaxis(a, mode, 0).reshape(a.shape[mode], -1)
    got = to_np(res)
    got = np.moveaxis(got, mode, 0).reshape(got.shape[mode], -1)
    conj_ok = close(got, m.conj().T @ unf, tol)
    plain_ok = close(got, m.T @ unf, tol)
    if conj_ok:
        return "conjugate transpose"
    if plain_ok:
        return "plain transpose (no conjugation)"
    return "neither transpose nor conjugate transpose"


def _transpose_observation(env: Env, kind: str) -> str:
    if kind == "conjugate transpose":  # also true of a plain transpose for real dtypes
        return "ok (conjugate transpose)" if env.is_complex else "ok (transpose, real dtype)"
    return kind


def check_mode_dot_transpose(env: Env) -> str:
    a, m = env.randn(3, 4, 5), env.randn(4, 2)  # M^H is (2, 4): contracts mode 1
    kind = _transpose_kind(
        tenalg.mode_dot(env.tensor(a), env.tensor(m), 1, transpose=True), a, m, 1, env.tol
    )
    return _transpose_observation(env, kind)


def check_multi_mode_dot_transpose(env: Env) -> str:
    a = env.randn(3, 4, 5)
    m0, m2 = env.randn(3, 2), env.randn(5, 3)
    res = tenalg.multi_mode_dot(
        env.tensor(a), [env.tensor(m0), env.tensor(m2)], modes=[0, 2], transpose=True
    )
    want_conj = np.einsum("ijk,ia,kc->ajc", a, m0.conj(), m2.conj())
    want_plain = np.einsum("ijk,ia,kc->ajc", a, m0, m2)
    if close(res, want_conj, env.tol):
        return _transpose_observation(env, "conjugate transpose")
    if close(res, want_plain, env.tol):
        return "plain transpose (no conjugation)"
    return "neither transpose nor conjugate transpose"


def check_svd(env: Env) -> str:
    out = []
    for shape in ((6, 4), (4, 6)):
        a = env.randn(*shape)
        u, s, vh = tl.svd(env.tensor(a), full_matrices=False)
        k = min(shape)
        s_np = to_np(s)
        out += [
            msg
            for cond, msg in (
                (
                    tuple(u.shape) == (shape[0], k) and tuple(vh.shape) == (k, shape[1]),
                    f"{shape}: not reduced (U {tuple(u.shape)}, Vh {tuple(vh.shape)})",
                ),
                (close(to_np(u) * s_np @ to_np(vh), a, env.tol), f"{shape}: U S Vh != A"),
                (bool(np.all(np.diff(s_np) <= 0)), f"{shape}: singular values not descending"),
                (dtype_name(s) == real_dtype(env.dtype), f"S dtype {dtype_name(s)}"),
                (dtype_name(u) == env.dtype, f"U dtype {dtype_name(u)}"),
            )
            if not cond
        ]
    return "; ".join(out) or "ok (descending singular values, real S)"


def check_qr_reduced(env: Env) -> str:
    a = env.randn(6, 3)
    q, r = tl.qr(env.tensor(a))
    qn, rn = to_np(q), to_np(r)
    return problems(
        (qn.shape == (6, 3) and rn.shape == (3, 3), f"shapes Q {qn.shape} R {rn.shape}"),
        (close(qn @ rn, a, env.tol), "Q R != A"),
        (close(qn.conj().T @ qn, np.eye(3), env.tol), "Q not orthonormal"),
        (np.allclose(np.tril(rn, -1), 0), "R not upper triangular"),
        (dtype_name(q) == env.dtype, f"Q dtype {dtype_name(q)}"),
    )


def check_qr_mode_r(env: Env) -> str:
    a = env.randn(6, 3)
    try:
        res = tl.qr(env.tensor(a), mode="r")
    except Exception as exc:  # any failure is an observation
        return f"raises {type(exc).__name__}"
    if isinstance(res, tuple):  # includes torch's named tuple (Q, R)
        if len(res) == 2 and int(np.prod(tuple(res[0].shape))) == 0:
            shape = "returns (Q, R) with empty Q"
            r = res[1]
        else:
            return f"returns a tuple of {len(res)}"
    else:
        shape, r = "ok (R only)", res
    rn = to_np(r)
    if rn.shape != (3, 3):
        return f"R has shape {rn.shape}"
    _, r_ref = np.linalg.qr(a)
    # R is unique up to a unit-modulus scaling of its rows: compare R^H R = A^H A.
    if not close(rn.conj().T @ rn, r_ref.conj().T @ r_ref, env.tol * 10):
        return "R^H R != A^H A"
    return shape


def check_eigh(env: Env) -> str:
    b = env.randn(5, 5)
    h = b + b.conj().T
    w, v = tl.eigh(env.tensor(h))
    wn, vn = to_np(w), to_np(v)
    res = problems(
        (bool(np.all(np.diff(wn) >= 0)), "eigenvalues not ascending"),
        (close((vn * wn) @ vn.conj().T, h, env.tol * 10), "V diag(w) V^H != H"),
        (dtype_name(w) == real_dtype(env.dtype), f"eigenvalue dtype {dtype_name(w)}"),
    )
    return "ok (ascending, real eigenvalues)" if res == OK else res


def check_conj_transpose(env: Env) -> str:
    a = env.randn(3, 4, 2)
    t = env.tensor(a)
    c, tt = tl.conj(t), tl.transpose(t)
    tp = tl.transpose(t, (1, 0, 2))
    return problems(
        (close(c, a.conj(), env.tol), "conj wrong"),
        (dtype_name(c) == env.dtype, f"conj dtype {dtype_name(c)}"),
        (close(tt, a.transpose(), env.tol), "transpose() does not reverse axes"),
        (close(tp, a.transpose(1, 0, 2), env.tol), "transpose(axes) wrong"),
        (
            close(tl.transpose(tl.conj(env.tensor(a[:, :, 0]))), a[:, :, 0].conj().T, env.tol),
            "conj(transpose) wrong",
        ),
    )


def check_to_numpy_conj(env: Env) -> str:
    a = env.randn(3, 2)
    try:
        got = tl.to_numpy(tl.conj(env.tensor(a)))
    except Exception as exc:
        return f"to_numpy(conj(x)) raises {type(exc).__name__}"
    return OK if np.allclose(np.asarray(got), a.conj(), atol=env.tol) else "wrong values"


def check_norm(env: Env) -> str:
    a = env.randn(3, 4, 5)
    n = tl.norm(env.tensor(a))
    want = float(np.sqrt(np.sum(np.abs(a.astype(np.complex128)) ** 2)))
    got = to_np(n)
    return problems(
        (got.shape == (), f"not a scalar (shape {got.shape})"),
        (not np.iscomplexobj(got), "complex-valued norm"),
        (abs(float(np.real(got)) - want) <= env.tol * want, "not the Frobenius norm"),
        (
            dtype_name(n) == real_dtype(env.dtype) if hasattr(n, "dtype") else True,
            f"norm dtype {getattr(n, 'dtype', None)}",
        ),
    )


def check_cumsum(env: Env) -> str:
    a = np.abs(env.randn(3, 4)).astype(real_dtype(env.dtype))
    t = tl.tensor(a, **{**env.ctx, "dtype": backend_dtype(real_dtype(env.dtype))})
    return problems(
        (close(tl.cumsum(t, axis=0), np.cumsum(a, axis=0), env.tol), "cumsum(axis=0) wrong"),
        (close(tl.cumsum(t, axis=1), np.cumsum(a, axis=1), env.tol), "cumsum(axis=1) wrong"),
    )


def check_argmax(env: Env) -> str:
    a = env.randn(4, 5).real.astype(real_dtype(env.dtype))
    t = tl.tensor(a, **{**env.ctx, "dtype": backend_dtype(real_dtype(env.dtype))})
    return problems(
        (np.array_equal(to_np(tl.argmax(t, axis=0)), np.argmax(a, axis=0)), "argmax(axis=0)"),
        (np.array_equal(to_np(tl.argmax(t, axis=1)), np.argmax(a, axis=1)), "argmax(axis=1)"),
        (int(to_np(tl.argmax(t))) == int(np.argmax(a)), "argmax() over flattened"),
    )


def check_where(env: Env) -> str:
    a, b = env.randn(3, 4), env.randn(3, 4)
    ta, tb = env.tensor(a), env.tensor(b)
    cond = tl.abs(ta) > tl.abs(tb)
    res = tl.where(cond, ta, tb)
    return problems(
        (close(res, np.where(np.abs(a) > np.abs(b), a, b), env.tol), "where wrong"),
        (dtype_name(res) == env.dtype, f"where dtype {dtype_name(res)}"),
    )


def _foreign_tensors(env: Env) -> dict[str, Any]:
    """Tensors of the *other* installed backends, to test is_tensor against."""
    out: dict[str, Any] = {"list": [1.0, 2.0]}
    if env.backend != "numpy":
        out["numpy"] = np.ones(2, dtype=env.dtype)
    if env.backend != "pytorch" and importlib.util.find_spec("torch") is not None:
        import torch

        out["pytorch"] = torch.ones(2)
    return out


def check_is_tensor(env: Env) -> str:
    out = []
    if not tl.is_tensor(env.tensor(env.randn(2))):
        out.append("own tensor not recognised")
    for name, obj in _foreign_tensors(env).items():
        if tl.is_tensor(obj):
            out.append(f"accepts a {name} object")
    return "; ".join(out) or OK


def check_tucker_to_tensor(env: Env) -> str:
    core = env.randn(2, 3, 2)
    fs = [env.randn(4, 2), env.randn(5, 3), env.randn(3, 2)]
    full = tl.tucker_to_tensor((env.tensor(core), [env.tensor(f) for f in fs]))
    want = np.einsum("abc,ia,jb,kc->ijk", core, *fs)
    return problems(
        (close(full, want, env.tol), "tucker_to_tensor != core x_1 U1 x_2 U2 x_3 U3"),
        (dtype_name(full) == env.dtype, f"dtype {dtype_name(full)}"),
    )


CHECKS: dict[str, tuple[str, Callable[[Env], str]]] = {
    "dtype_attributes": ("tl.<dtype> / tl.backend.<dtype>", check_dtype_attributes),
    "tensor_context": ("tl.tensor(x, **tl.context(ref))", check_tensor_context),
    "zeros_eye_context": ("tl.zeros/tl.eye(**tl.context(ref))", check_zeros_eye_context),
    "unfold_fold": ("tl.unfold/tl.fold", check_unfold_fold),
    "mode_dot": ("mode_dot / multi_mode_dot", check_mode_dot),
    "mode_dot_transpose": ("mode_dot(transpose=True)", check_mode_dot_transpose),
    "multi_mode_dot_transpose": ("multi_mode_dot(transpose=True)", check_multi_mode_dot_transpose),
    "svd": ("tl.svd(full_matrices=False)", check_svd),
    "qr_reduced": ("tl.qr (reduced)", check_qr_reduced),
    "qr_mode_r": ("tl.qr(mode='r')", check_qr_mode_r),
    "eigh": ("tl.eigh", check_eigh),
    "conj_transpose": ("tl.conj / tl.transpose", check_conj_transpose),
    "to_numpy_conj": ("tl.to_numpy(tl.conj(x))", check_to_numpy_conj),
    "norm": ("tl.norm", check_norm),
    "cumsum": ("tl.cumsum(axis=)", check_cumsum),
    "argmax": ("tl.argmax(axis=)", check_argmax),
    "where": ("tl.where", check_where),
    "is_tensor": ("tl.is_tensor", check_is_tensor),
    "tucker_to_tensor": ("tl.tucker_to_tensor", check_tucker_to_tensor),
}


# --------------------------------------------------------------------------- driver


@dataclass
class Row:
    check: str
    primitive: str
    backend: str
    device: str
    dtype: str
    observed: str
    status: str  # "ok" | "known deviation" | "UNEXPECTED"
    why: str = ""


def load_deviations(path: Path = DEVIATIONS_FILE) -> dict[str, dict[str, dict[str, Any]]]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def is_ok(observed: str) -> bool:
    """``"ok"`` or ``"ok (what was seen)"``: the assumption holds."""
    return observed == OK or observed.startswith(OK + " (")


def classify(
    deviations: dict[str, dict[str, dict[str, Any]]],
    backend: str,
    device: str,
    dtype: str,
    check: str,
    observed: str,
) -> tuple[str, str]:
    if is_ok(observed):
        return OK, ""
    entry = deviations.get(backend, {}).get(check)
    if entry is None:
        return UNEXPECTED, ""
    dtypes, devices = entry.get("dtypes"), entry.get("devices")
    dev_kind = device.split(":")[0]
    if (
        entry.get("observed") == observed
        and (dtypes is None or dtype in dtypes)
        and (devices is None or dev_kind in devices)
    ):
        return KNOWN, entry.get("why", "")
    return UNEXPECTED, ""


def availability(backend: str, device: str) -> tuple[bool, str, str]:
    """(available, device actually used, note)."""
    if backend == "numpy":
        return True, "cpu", ""
    if backend == "pytorch":
        if importlib.util.find_spec("torch") is None:
            return False, device, "torch is not installed (pip install -r backends/torch.txt)"
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                return False, device, "torch is installed but CUDA is not available"
            return True, "cuda:0", ""
        return True, "cpu", ""
    if backend == "cupy":
        if importlib.util.find_spec("cupy") is None:
            return False, "cuda", "cupy is not installed (GPU machines only: backends/cupy.txt)"
        try:
            import cupy

            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:
            return False, "cuda", f"cupy cannot reach a CUDA device ({type(exc).__name__})"
        if n == 0:
            return False, "cuda", "cupy found no CUDA device"
        return True, "cuda:0", ""
    return False, device, f"unknown backend {backend!r}"


def backend_dtype(name: str) -> Any:
    """The active backend's dtype object for ``name``.

    Not ``getattr(tl, name)``: ``tl.float64``, ``tl.int32`` and ``tl.int64`` are
    bound once at import time to NumPy's types (see the ``dtype_attributes``
    check), whereas ``tl.backend.<name>`` follows the active backend.
    """
    return getattr(tl.backend, name)


def make_ctx(backend: str, dtype: str, device: str) -> dict[str, Any]:
    ctx: dict[str, Any] = {"dtype": backend_dtype(dtype)}
    if backend == "pytorch":
        ctx["device"] = device
    return ctx


def run_backend(backend: str, device: str, deviations: dict) -> list[Row]:
    rows = []
    with tl.backend_context(backend):
        for dtype in DTYPES:
            for key, (label, fn) in CHECKS.items():
                env = Env(backend, dtype, device, make_ctx(backend, dtype, device))
                try:
                    observed = fn(env)
                except Exception as exc:  # report, do not crash
                    observed = f"raises {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
                status, why = classify(deviations, backend, device, dtype, key, observed)
                rows.append(Row(key, label, backend, device, dtype, observed, status, why))
    return rows


def shown_observation(observed: str) -> str:
    if observed == OK:
        return ""
    if is_ok(observed):
        return observed[len(OK + " (") : -1]
    return observed


def print_table(rows: list[Row], quiet: bool) -> None:
    shown = [r for r in rows if not quiet or r.status != OK]
    header = ("primitive", "backend", "device", "dtype", "result", "observed")
    table = [header] + [
        (r.primitive, r.backend, r.device, r.dtype, r.status, shown_observation(r.observed))
        for r in shown
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]

    def fmt(row: tuple[str, ...]) -> str:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths)]
        return (" | ".join(cells) + (" | " + row[-1] if row[-1] else "")).rstrip()

    print(fmt(header))
    print("-+-".join("-" * w for w in widths) + "-+-" + "-" * len("observed"))
    for row in table[1:]:
        print(fmt(row))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=(*BACKENDS, "all"), default="all")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="device for the pytorch backend (numpy: CPU, cupy: GPU always)",
    )
    parser.add_argument(
        "--require", action="store_true", help="fail when a requested backend/device is unavailable"
    )
    parser.add_argument("--json", type=Path, help="also write all rows as JSON to this path")
    parser.add_argument("--quiet", action="store_true", help="print only rows that are not ok")
    args = parser.parse_args(argv)

    deviations = load_deviations()
    backends = BACKENDS if args.backend == "all" else (args.backend,)
    rows: list[Row] = []
    notes: list[str] = []
    missing = False
    for backend in backends:
        available, device, note = availability(backend, args.device)
        if not available:
            notes.append(f"{backend} ({device}): unavailable, skipped -- {note}")
            missing = True
            continue
        rows.extend(run_backend(backend, device, deviations))

    print(f"tensorly {tl.__version__}, numpy {np.__version__}")
    print_table(rows, args.quiet)
    print()
    for note in notes:
        print(f"note: {note}")
    known = sorted({(r.backend, r.check, r.observed, r.why) for r in rows if r.status == KNOWN})
    for backend, check, observed, why in known:
        print(f"known deviation: {backend} {check}: {observed}" + (f" -- {why}" if why else ""))
    bad = [r for r in rows if r.status == UNEXPECTED]
    counts = {s: sum(r.status == s for r in rows) for s in (OK, KNOWN, UNEXPECTED)}
    print(
        f"probe: {counts[OK]} ok, {counts[KNOWN]} known deviations, "
        f"{counts[UNEXPECTED]} unexpected, {len(notes)} backend(s) unavailable"
    )
    if args.json:
        args.json.write_text(
            json.dumps([r.__dict__ for r in rows] + [{"note": n} for n in notes], indent=2)
        )
    if bad:
        print("UNEXPECTED deviations: update tuckerflow or record them in backends/deviations.json")
        return 1
    if missing and args.require:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
