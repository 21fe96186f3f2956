"""Data loading, validation and held-out splits of the training job."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tuckerflow.train.data import arrays_from_dataset, load_dataset, load_npz, split_dataset


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
