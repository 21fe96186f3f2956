"""The dense building blocks of tuckerflow.linalg refuse what they cannot work on."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl

import tuckerflow as tf
from tuckerflow.linalg import flip_signs, mode_products


def test_flip_signs_keeps_the_product_and_refuses_what_is_no_finite_matrix(backend):
    gen = np.random.default_rng(0)
    u = gen.standard_normal((5, 3))
    vh = gen.standard_normal((3, 4))
    out, out_vh = flip_signs(backend.tensor(u), backend.tensor(vh))
    got, got_vh = backend.numpy(out), backend.numpy(out_vh)
    signs = np.sign(u[np.argmax(np.abs(u), axis=0), range(3)])
    np.testing.assert_array_equal(got, u * signs)
    np.testing.assert_allclose(got @ got_vh, u @ vh, rtol=0, atol=1e-14)
    assert np.all(got[np.argmax(np.abs(u), axis=0), range(3)] > 0)
    nan_u = u.copy()
    nan_u[1, 1] = np.nan
    inf_vh = vh.copy()
    inf_vh[0, 0] = np.inf
    # flip_signs(None) and flip_signs(2.0) raised AttributeError and IndexError; a NaN
    # column came back NaN
    cases = [
        ((None,), {}, TypeError, "u is a builtins.NoneType"),
        ((backend.tensor(np.float64(2.0)),), {}, ValueError, "u must be a matrix, got 0"),
        ((backend.tensor(nan_u),), {}, ValueError, "u contains non-finite values"),
        ((backend.tensor(u), backend.tensor(vh.T)), {}, ValueError, r"vh.shape=\(4, 3\) must"),
        ((backend.tensor(u), backend.tensor(inf_vh)), {}, ValueError, "vh contains non-finite"),
        ((backend.tensor(u),), {"vh": "vh"}, TypeError, "vh is a builtins.str"),
    ]
    for args, kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            flip_signs(*args, **kwargs)


def test_mode_products_equal_multi_mode_dot_and_refuse_misfits(backend):
    gen = np.random.default_rng(1)
    x = backend.tensor(gen.standard_normal((4, 3, 2)))
    a = backend.tensor(gen.standard_normal((5, 4)))
    b = backend.tensor(gen.standard_normal((2, 2)))
    want = tl.tenalg.multi_mode_dot(x, [a, b], modes=[0, 2])
    got = mode_products(x, [a, None, b])
    np.testing.assert_allclose(backend.numpy(got), backend.numpy(want), rtol=1e-13, atol=1e-13)
    # a shorter list leaves the last modes alone
    np.testing.assert_allclose(
        backend.numpy(mode_products(x, [a])),
        backend.numpy(tl.tenalg.mode_dot(x, a, 0)),
        rtol=1e-13,
        atol=1e-13,
    )
    y = tf.random_tucker((4, 3, 2), 2, rng=0)
    # a Tucker tensor raised AttributeError, a 0-d array IndexError
    cases = [
        ((y, [a]), TypeError, "x is a tuckerflow"),
        ((backend.tensor(np.float64(1.0)), [a]), ValueError, "1 matrices were given for a"),
        ((x, [a, None, b, b]), ValueError, "4 matrices were given for a tensor of 3 modes"),
        ((x, [b]), ValueError, r"matrices\[0\].shape=\(2, 2\) must be a matrix with x.shape"),
        ((x, [None, x]), ValueError, r"matrices\[1\].shape=\(4, 3, 2\) must be a matrix"),
        ((x, [None, "m"]), TypeError, r"matrices\[1\] is a builtins.str"),
        ((x, "abc"), TypeError, "matrices must be a sequence of matrices or None"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            mode_products(*args)
