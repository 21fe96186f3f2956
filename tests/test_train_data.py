"""Data loading, validation and held-out splits of the training job."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tuckerflow.train.data import (
    arrays_from_dataset,
    check_labels,
    data_digest,
    load_dataset,
    load_npz,
    split_dataset,
    standardize,
)


def _save(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def test_npz_adds_channel_axis_and_converts_types(tmp_path):
    path = _save(tmp_path, x=np.arange(3 * 4 * 5).reshape(3, 4, 5), y=np.array([2.0, 0.0, 1.0]))
    x, y = load_npz(path)
    assert x.shape == (3, 1, 4, 5) and x.dtype == np.float32
    assert y.dtype == np.int64 and y.tolist() == [2, 0, 1]
    np.testing.assert_array_equal(x[:, 0], np.arange(60).reshape(3, 4, 5))


def test_npz_mismatched_lengths_names_file_and_lengths(tmp_path):
    path = _save(tmp_path, x=np.zeros((5, 1, 4, 4)), y=np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match=r"data\.npz.*len\(x\)=5 differs from len\(y\)=4"):
        load_npz(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_npz_non_finite_images_rejected(tmp_path, bad):
    x = np.zeros((4, 1, 3, 3))
    x[2, 0, 1, 1] = bad
    path = _save(tmp_path, x=x, y=np.arange(4))
    with pytest.raises(ValueError, match=r"data\.npz: key 'x' holds 1 non-finite"):
        load_npz(path)


@pytest.mark.parametrize(
    ("y", "message"),
    [
        (np.array([0.5, 1.0]), "integer class labels"),
        (np.array([np.nan, 1.0]), "integer class labels"),
        (np.array([-1, 1]), "negative labels"),
        (np.array(["a", "b"]), "expected integer class labels"),
        (np.zeros((2, 1), dtype=int), r"shape \(2, 1\); expected \(N,\)"),
    ],
)
def test_npz_bad_labels_rejected(tmp_path, y, message):
    path = _save(tmp_path, x=np.zeros((2, 3, 3)), y=y)
    with pytest.raises((ValueError, TypeError), match=message):
        load_npz(path)


def test_npz_missing_key_and_bad_image_rank(tmp_path):
    with pytest.raises(ValueError, match=r"missing key\(s\) \['y'\]"):
        load_npz(_save(tmp_path, x=np.zeros((2, 3, 3))))
    with pytest.raises(ValueError, match=r"key 'x' has shape \(2, 3\)"):
        load_npz(_save(tmp_path, x=np.zeros((2, 3)), y=np.zeros(2, dtype=int)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_npz(tmp_path / "absent.npz")


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match=r"data='cifar' is neither an embedded data set"):
        load_dataset("cifar")


def test_digits_loader_shape_and_range():
    x, y = load_dataset("digits")
    assert x.shape == (1797, 1, 8, 8) and y.shape == (1797,)
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert sorted(set(y.tolist())) == list(range(10))


@given(
    class_sizes=st.lists(st.integers(3, 12), min_size=2, max_size=4),
    val_fraction=st.sampled_from([0.0, 0.1, 0.25]),
    test_fraction=st.sampled_from([0.1, 0.2, 0.3]),
    seed=st.integers(0, 2**16),
)
def test_split_is_a_deterministic_stratified_partition(
    class_sizes, val_fraction, test_fraction, seed
):
    y = np.concatenate([np.full(n, c) for c, n in enumerate(class_sizes)])
    n = len(y)
    # Each image holds its own index, so after the (affine, shared) standardization every
    # image value is still distinct: a partition keeps exactly n distinct values.
    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1)
    a = split_dataset(x, y, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    b = split_dataset(x, y, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    values = np.concatenate([a.x_train, a.x_val, a.x_test]).ravel()
    assert len(np.unique(values)) == n
    for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    for c, size in enumerate(class_sizes):
        assert np.count_nonzero(a.y_test == c) == round(size * test_fraction)
        assert np.count_nonzero(a.y_val == c) == round(size * val_fraction)
    # Training statistics: zero mean, unit variance on the training part (float32 round-off).
    assert abs(float(a.x_train.mean())) < 1e-5
    assert a.num_classes == len(class_sizes)


def test_split_depends_on_seed_and_rejects_bad_fractions():
    x = np.arange(40, dtype=np.float32).reshape(40, 1, 1, 1)
    y = np.arange(40) % 2
    a = split_dataset(x, y, seed=0)
    b = split_dataset(x, y, seed=1)
    assert not np.array_equal(a.y_train, b.y_train) or not np.array_equal(a.x_train, b.x_train)
    with pytest.raises(ValueError, match=r"test_fraction=1.0 must lie in \[0, 1\)"):
        split_dataset(x, y, test_fraction=1.0)
    with pytest.raises(ValueError, match="leaves no training data"):
        split_dataset(x, y, val_fraction=0.5, test_fraction=0.5)


def test_arrays_from_an_indexable_dataset():
    torch = pytest.importorskip("torch")
    pairs = [(torch.full((3, 5, 4), 0.5), 2), (torch.zeros(3, 5, 4), 0)]
    x, y = arrays_from_dataset(pairs)
    assert x.shape == (2, 3, 5, 4) and y.tolist() == [2, 0]
    np.testing.assert_array_equal(x[0], np.full((3, 5, 4), 0.5, dtype=np.float32))
    gray = [(np.full((5, 4), 255, dtype=np.uint8), 1)]
    assert arrays_from_dataset(gray)[0].shape == (1, 1, 5, 4)
    with pytest.raises(ValueError, match="images of different shapes"):
        arrays_from_dataset([(np.zeros((4, 4)), 0), (np.zeros((5, 4)), 1)])


def test_torchvision_spec_is_checked():
    with pytest.raises(ValueError, match="torchvision:NAME:ROOT"):
        load_dataset("torchvision:CIFAR10")


@pytest.mark.parametrize("scale", [1.0, 1e19, 1e30, 3e37])
def test_standardize_is_exact_in_float32_at_any_finite_scale(scale):
    # float32 statistics overflow from about 2e19 (the square exceeds 3.4e38): every image
    # became 0; in float64 the result is the float32 rounding of the exact standardization
    rng = np.random.default_rng(0)
    base = rng.standard_normal((6, 2, 3, 3))
    x = (base * scale).astype(np.float32)
    (z,) = standardize(x)
    exact = np.asarray(x, dtype=np.float64)
    exact = (exact - exact.mean(axis=(0, 2, 3), keepdims=True)) / exact.std(
        axis=(0, 2, 3), keepdims=True
    )
    assert z.dtype == np.float32 and np.all(np.isfinite(z))
    np.testing.assert_allclose(z, exact, rtol=0, atol=8 * np.finfo(np.float32).eps)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3), dtype=np.float64), 1.0, atol=1e-6)


def test_standardize_applies_training_statistics_to_the_other_parts():
    train = np.array([1.0, 3.0], dtype=np.float32).reshape(2, 1, 1, 1)
    other = np.array([5.0], dtype=np.float32).reshape(1, 1, 1, 1)
    a, b = standardize(train, other)
    assert a.ravel().tolist() == [-1.0, 1.0] and b.ravel().tolist() == [3.0]
    constant = np.full((3, 1, 2, 2), 7.0, dtype=np.float32)
    assert standardize(constant)[0].tolist() == np.zeros((3, 1, 2, 2)).tolist()


@pytest.mark.parametrize(
    ("y", "message"),
    [
        (np.r_[np.arange(10), 50], r"largest label 50 makes 51 classes, of which 40 have none"),
        (np.array([1, 2, 1, 2]), r"makes 3 classes, of which 1 have none \(0\)"),
        (np.array([0, 0, 0, 0]), r"all labels are 0; a classifier needs two classes"),
    ],
)
def test_labels_must_be_every_class_from_zero(tmp_path, y, message):
    path = _save(tmp_path, x=np.zeros((len(y), 3, 3)), y=y)
    with pytest.raises(ValueError, match=r"data\.npz: key 'y': labels must be|data\.npz: key 'y'"):
        load_npz(path)
    with pytest.raises(ValueError, match=message):
        load_npz(path)
    with pytest.raises(ValueError, match=message):
        split_dataset(np.zeros((len(y), 1, 1, 1)), y, name="mine")
    assert check_labels(np.array([2, 0, 1, 1])) == 3


def test_labels_list_the_first_missing_classes_without_building_them_all():
    y = np.array([0, 1, 2**40])
    with pytest.raises(ValueError, match=r"of which 1099511627774 have none \(2, 3, 4, 5, 6, …\)"):
        check_labels(y)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"not a readable \.npz file \(EOFError"),
        (b"PK\x03\x04 truncated", r"not a readable \.npz file \(BadZipFile"),
        (b"hello world" * 5, r"not a readable \.npz file"),
    ],
)
def test_broken_npz_files_are_value_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"broken\.npz: " + message):
        load_npz(path)


def test_truncated_pickled_and_single_array_npz_files(tmp_path):
    good = _save(tmp_path, x=np.random.default_rng(0).random((30, 4, 4)), y=np.arange(30) % 3)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated\.npz: not a readable \.npz file"):
        load_npz(truncated)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.array([object()]), y=np.zeros(1))
    with pytest.raises(ValueError, match=r"pickled\.npz: key 'x' cannot be read"):
        load_npz(pickled)
    single = tmp_path / "single.npz"
    with open(single, "wb") as handle:
        np.save(handle, np.zeros(3))
    with pytest.raises(ValueError, match=r"single\.npz: holds a single array"):
        load_npz(single)


def test_images_beyond_float32_are_refused_not_turned_into_inf(tmp_path):
    x = np.zeros((4, 3, 3))
    x[1, 0, 0] = 1e39  # finite in float64, inf in float32
    with pytest.raises(
        ValueError, match=r"data\.npz: key 'x' holds values of magnitude up to 1e\+39"
    ):
        load_npz(_save(tmp_path, x=x, y=np.arange(4)))


def test_split_refuses_parts_the_data_set_is_too_small_for():
    x = np.zeros((6, 1, 2, 2), dtype=np.float32)
    y = np.arange(6) % 2
    # 3 per class: round(0.3) = 0 test examples per class; split_dataset itself allows that
    assert split_dataset(x, y, val_fraction=0.2, test_fraction=0.1).sizes()["test"] == 0
    with pytest.raises(ValueError, match=r"6 examples are too few .* the test part is empty"):
        split_dataset(x, y, val_fraction=0.2, test_fraction=0.1, require_all_parts=True)
    with pytest.raises(ValueError, match=r"the validation part is empty"):
        split_dataset(x, y, val_fraction=0.0, test_fraction=0.4, require_all_parts=True)
    y = np.array([0, 0, 0, 0, 0, 1])  # class 1: its one example goes to the test part
    with pytest.raises(ValueError, match=r"class 1 has 1 example\(s\), all held out"):
        split_dataset(x, y, val_fraction=0.2, test_fraction=0.6, require_all_parts=True)


def test_data_digest_follows_the_content():
    x = np.zeros((2, 1, 2, 2), dtype=np.float32)
    y = np.array([0, 1])
    assert data_digest(x, y) == data_digest(x.copy(), y.copy())
    assert data_digest(x, y) != data_digest(x, y[::-1])
    assert data_digest(x, y) != data_digest(x.astype(np.float64), y)
    changed = x.copy()
    changed[1, 0, 1, 1] = 1e-30
    assert data_digest(x, y) != data_digest(changed, y)


def test_labels_are_a_non_empty_vector_of_non_negative_integers():
    # check_labels of no labels raised IndexError, of -inf OverflowError
    cases = [
        (np.array([], dtype=int), ValueError, "mine: there are no labels"),
        (-np.inf, ValueError, r"mine: labels have shape \(\); expected \(N,\)"),
        (np.zeros((2, 2), dtype=int), ValueError, r"labels have shape \(2, 2\)"),
        (np.array([0.0, 1.0]), TypeError, "labels have dtype float64; expected integer"),
        (np.array([True, False]), TypeError, "labels have dtype bool"),
        (np.array([0, -1, 1]), ValueError, "mine: labels must be at least 0, got -1"),
    ]
    for y, error, message in cases:
        with pytest.raises(error, match=message):
            check_labels(y, "mine")
    assert check_labels([1, 0, 1]) == 2


def test_split_refuses_images_and_fractions_it_cannot_split():
    x = np.zeros((4, 1, 2, 2), dtype=np.float32)
    y = np.arange(4) % 2
    nan_x = x.copy()
    nan_x[0, 0, 0, 0] = np.nan
    cases = [
        # split_dataset([], []) raised IndexError
        (([], []), {}, TypeError, "data: x must be a NumPy array of images"),
        ((x[:0], y[:0]), {}, ValueError, "data: there are no labels"),
        ((x[:, 0], y), {}, ValueError, r"data: x has shape \(4, 2, 2\); expected images"),
        ((nan_x, y), {}, ValueError, "data: x holds 1 non-finite values"),
        ((x, y.astype(float)), {}, TypeError, "labels have dtype float64"),
        ((x, y), {"val_fraction": "0.1"}, TypeError, "val_fraction='0.1' must be a real"),
        ((x, y), {"test_fraction": None}, TypeError, "test_fraction=None must be a real"),
        ((x, y), {"test_fraction": np.nan}, ValueError, r"test_fraction=nan must lie in"),
    ]
    for args, kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            split_dataset(*args, **kwargs)
    assert split_dataset(x, y.tolist(), test_fraction=0.0, val_fraction=0.0).sizes()["train"] == 4


def test_standardize_refuses_what_it_would_turn_into_nan():
    x = np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2)
    nan_x = x.copy()
    nan_x[1, 0, 1, 1] = np.nan
    cases = [
        # standardize(None) raised AttributeError; NaN images came back all NaN
        ((None,), TypeError, "x_train must be a NumPy array of images"),
        ((nan_x,), ValueError, "x_train holds 1 non-finite values"),
        ((x, nan_x), ValueError, r"others\[0\] holds 1 non-finite values"),
        ((x[:0],), ValueError, "x_train holds no images"),  # the mean of nothing is NaN
        ((x[:, :, :0],), ValueError, r"x_train has shape \(2, 1, 0, 2\); images cannot be"),
        ((x.astype(np.float64) * 1e300,), ValueError, "beyond the float32 range"),
        ((x > 0,), TypeError, "x_train has dtype bool"),
        ((x, np.zeros((1, 3, 2, 2))), ValueError, r"others\[0\] has 3 channels but x_train"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            standardize(*args)
    a, b = standardize(x, x[:0])  # an empty held-out part is fine
    assert a.shape == x.shape and b.shape == (0, 1, 2, 2)


def test_dataset_labels_are_integers_not_rounded():
    image = np.zeros((3, 3), dtype=np.float32)
    x, y = arrays_from_dataset([(image, np.int64(1)), (image, 0.0)])
    assert y.tolist() == [1, 0] and y.dtype == np.int64  # an integral float is that class
    # a float label 2.7 became class 2
    with pytest.raises(ValueError, match="dataset: key 'y' must hold integer class labels"):
        arrays_from_dataset([(image, 0), (image, 2.7)])
    with pytest.raises(TypeError, match="key 'y' has dtype bool"):
        arrays_from_dataset([(image, True)])
    with pytest.raises(TypeError, match=r"the label of example 0 is '1'; expected an integer"):
        arrays_from_dataset([(image, "1")])
    with pytest.raises(TypeError, match=r"example 1 is a int; expected an \(image, label\) pair"):
        arrays_from_dataset([(image, 0), 3])
    with pytest.raises(TypeError, match="example 0 is a str"):
        arrays_from_dataset("abc")


def test_data_digest_refuses_object_arrays():
    # the bytes of an object array are addresses: equal content gave different digests
    with pytest.raises(TypeError, match="x must be a numeric array, got dtype object"):
        data_digest(np.array([None, 1], dtype=object), np.array([0, 1]))
