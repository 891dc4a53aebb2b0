"""Sources read from Keras' dataset cache: ``"fashion_mnist"``, ``"mnist"``, ``"cifar10"``, ``"cifar100"``.

kcnn reads the files that ``keras.datasets.NAME.load_data()`` downloads, from where it keeps them: the folder
``datasets`` of the Keras home, ``$KERAS_HOME`` (read at each load; Keras itself reads it once, when imported)
or else ``~/.keras``. Files already there are used as they are; a missing one is downloaded with
``keras.utils.get_file`` under the same name, from the same address and with the same hash check as
``load_data()``, so either finds the other's download. Offline, a missing file raises
:class:`~kcnn.data.DataNotFoundError` naming the file, the folder and how to put it there.

The files and where they are looked for (``datasets/`` under the Keras home):

* Fashion-MNIST: ``fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` (gzipped IDX).
* MNIST: ``mnist.npz`` (arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``).
* CIFAR-10 / CIFAR-100: the tar.gz archive ``cifar-10-batches-py-target_archive`` /
  ``cifar-100-python-target_archive``, or the folder ``load_data()`` extracts it to; older Keras' layout
  (``cifar-10-batches-py.tar.gz`` or the folder ``cifar-10-batches-py/``) is read too. The pickled batches
  are unpickled allowing numpy arrays only, as Keras' loader does.

Unlike ``load_data()``, kcnn does not check the hash of a file already present (Keras re-downloads on a
mismatch, and deletes the file when that download fails); a file that is not in its format raises
:class:`~kcnn.data.DataError`.
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from kcnn import files as kfiles
from kcnn.data.errors import DataError, DataNotFoundError
from kcnn.data.pipeline import MemoryPart
from kcnn.data.splits import carve_split, carve_sizes

#: The source names (also accepted as ``"keras:NAME"``).
KERAS_DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100")

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple("""
    apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel
    can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
    dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
    lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree
    pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea
    seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank
    telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman
    worm""".split())

_KERAS_STORAGE = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
_FASHION_FILES = ("train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                  "t10k-images-idx3-ubyte.gz")
_MNIST_HASH = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
# name -> (Keras' extraction folder, folder in the archive, origin, sha256, train / test files, label key)
_CIFAR = {
    "cifar10": ("cifar-10-batches-py-target", "cifar-10-batches-py",
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), b"labels"),
    "cifar100": ("cifar-100-python-target", "cifar-100-python",
                 "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
                 ("train",), ("test",), b"fine_labels"),
}
_TITLES = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
_TMP_DATASETS = Path("/tmp/.keras/datasets")
# the globals a pickled numpy array needs, and nothing else (numpy < 2 and >= 2 spellings)
_PICKLE_GLOBALS = frozenset({("numpy", "ndarray"), ("numpy", "dtype"),
                             ("numpy.core.multiarray", "_reconstruct"),
                             ("numpy._core.multiarray", "_reconstruct")})


def keras_datasets_dir() -> Path:
    """The folder Keras keeps its datasets in: ``$KERAS_HOME/datasets``, by default ``~/.keras/datasets``.

    Read at each call (Keras reads ``KERAS_HOME`` once, when imported).
    """
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    return Path(os.path.expanduser(home)) / "datasets"


def keras_parts(name: str, size, val_fraction: float, seed: int, label: str, classes=None):
    """Class names and train / val / test :class:`MemoryPart`s of one Keras dataset.

    Test is the dataset's test split; val a seeded stratified ``val_fraction`` of its train split, carved
    as from a folder that has ``train/`` and ``test/`` but no ``val/``. ``classes``: keep only these class
    indices (``"fashion_mnist[5-9]"``), relabelled 0.. in the given order, with their names.
    """
    folder = keras_datasets_dir()
    if name not in KERAS_DATASETS:
        raise ValueError(f"Unknown Keras dataset {name!r}; kcnn reads {', '.join(KERAS_DATASETS)}. "
                         f"Received: source={label!r}")
    if name == "fashion_mnist":
        names = FASHION_MNIST_CLASSES
        (x_train, y_train), (x_test, y_test) = _read_fashion(folder)
    elif name == "mnist":
        names = tuple(str(d) for d in range(10))
        (x_train, y_train), (x_test, y_test) = _read_mnist(folder)
    else:
        names = CIFAR10_CLASSES if name == "cifar10" else CIFAR100_CLASSES
        (x_train, y_train), (x_test, y_test) = _read_cifar(name, folder)
    for split, y in (("train", y_train), ("test", y_test)):
        if len(y) and (y.min() < 0 or y.max() >= len(names)):
            raise DataError(f"{_TITLES[name]}'s {split} labels run from {y.min()} to {y.max()}, outside "
                            f"0..{len(names) - 1}; the file under {folder} is not the dataset's.")
    if len(y_train) == 0:
        raise DataError(f"{_TITLES[name]}'s training split under {folder} is empty.")
    if classes is not None:
        if max(classes) >= len(names):
            raise ValueError(f"{_TITLES[name]} has classes 0..{len(names) - 1}; {label!r} asks for "
                             f"{max(classes)}")
        order = {c: i for i, c in enumerate(classes)}
        names = [names[c] for c in classes]
        train_keep, test_keep = np.isin(y_train, classes), np.isin(y_test, classes)
        x_train, x_test = x_train[train_keep], x_test[test_keep]
        y_train = np.array([order[int(c)] for c in y_train[train_keep]], y_train.dtype)
        y_test = np.array([order[int(c)] for c in y_test[test_keep]], y_test.dtype)
    render = _grey_to_rgb if x_train.shape[-1] == 1 else as_float
    x_train, x_test = _fit(x_train, size), _fit(x_test, size)
    n_classes = len(np.unique(y_train))
    n_val = carve_sizes(len(y_train), (val_fraction, 0), n_classes, label, splits=["val"])["val"]
    keep, val = carve_split(y_train, n_val, seed, 3)
    return list(names), {"train": MemoryPart(x_train[keep], y_train[keep], render),
                         "val": MemoryPart(x_train[val], y_train[val], render),
                         "test": MemoryPart(x_test, y_test, render)}


def _fit(x: np.ndarray, size) -> np.ndarray:
    """uint8 ``(N, h, w, C)`` at ``size``: bilinear, antialiased, rounded (as the ``(x, y)`` source)."""
    if tuple(x.shape[1:3]) == tuple(size):
        return np.ascontiguousarray(x)
    out = np.empty((len(x),) + tuple(size) + x.shape[3:], np.uint8)
    for i in range(0, len(x), 1024):
        resized = tf.image.resize(x[i:i + 1024], size, method="bilinear", antialias=True).numpy()
        out[i:i + 1024] = np.clip(np.rint(resized), 0, 255)
    return out


def as_float(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(x, tf.float32)


def _grey_to_rgb(x: tf.Tensor) -> tf.Tensor:
    return tf.repeat(tf.cast(x, tf.float32), 3, axis=-1)


# ---------------------------------------------------------------------------------------------------------
# Finding and downloading the files
# ---------------------------------------------------------------------------------------------------------

def _find(folder: Path, relative: str) -> Path | None:
    """``folder / relative`` if it exists, else the same under /tmp/.keras, where ``keras.utils.get_file``
    puts its downloads when the Keras home is not writable."""
    path = folder / relative
    if path.exists():
        return path
    home = folder.parent
    alt = _TMP_DATASETS / relative
    if not (home.is_dir() and os.access(home, os.W_OK)) and alt.exists():
        return alt
    return None


def _download(name: str, datasets: Path, where: Path, missing: list[str], calls: list[dict]) -> None:
    """Fetch files with ``keras.utils.get_file`` as ``load_data()`` does, or raise the offline message."""
    import keras

    home = datasets.parent
    target = None
    try:
        home.mkdir(parents=True, exist_ok=True)  # get_file falls back to /tmp/.keras for a missing folder
        for kwargs in calls:
            # the file get_file writes; one it leaves behind after a failed hash check is removed below
            target = home / kwargs.get("cache_subdir", "datasets") / (kwargs["fname"] + (
                "_archive" if kwargs.get("extract") else ""))
            target = None if target.exists() else target
            keras.utils.get_file(cache_dir=os.fspath(home), **kwargs)
    except Exception as err:  # offline, get_file raises a bare Exception("URL fetch failure on ...")
        if target is not None:
            kfiles.discard_new(target, existed_before=False)  # only a file this call's get_file began
        if name == "fashion_mnist":
            fix = (f"apt-get install dataset-fashion-mnist, then copy /usr/share/datasets/fashion-mnist/* "
                   f"into {where}")
        else:
            fix = (f"run keras.datasets.{name}.load_data() once on a machine with a network, then copy its "
                   f"~/.keras/datasets/{missing[0]} into {where}")
            if name in _CIFAR:
                fix += f" (that file is {_CIFAR[name][2].rsplit('/', 1)[-1]}, renamed)"
        reason = " ".join(str(err).split()) or type(err).__name__
        one = len(missing) == 1
        raise DataNotFoundError(
            f"{_TITLES[name]}: {', '.join(missing)} {'is' if one else 'are'} not in {where} (the Keras "
            f"cache: $KERAS_HOME/datasets, default ~/.keras/datasets) and could not be downloaded "
            f"({reason[:300]}). To put {'it' if one else 'them'} there: {fix}.") from None


def _downloaded(path: Path | None, what: str, where: Path) -> Path:
    if path is None:
        raise DataNotFoundError(f"keras.utils.get_file reported {what} downloaded, but it is not in "
                                f"{where}.")
    return path


# ---------------------------------------------------------------------------------------------------------
# The formats
# ---------------------------------------------------------------------------------------------------------

def _read_fashion(datasets: Path):
    folder = datasets / "fashion-mnist"
    paths = {f: _find(datasets, f"fashion-mnist/{f}") for f in _FASHION_FILES}
    missing = [f for f, p in paths.items() if p is None]
    if missing:
        subdir = os.path.join("datasets", "fashion-mnist")
        _download("fashion_mnist", datasets, folder, missing,
                  [dict(fname=f, origin=_KERAS_STORAGE + f, cache_subdir=subdir) for f in missing])
        paths = {f: _downloaded(_find(datasets, f"fashion-mnist/{f}"), f, folder) for f in _FASHION_FILES}
    arrays = {f: _read_idx(p) for f, p in paths.items()}
    out = []
    for prefix in ("train", "t10k"):
        x, y = arrays[f"{prefix}-images-idx3-ubyte.gz"], arrays[f"{prefix}-labels-idx1-ubyte.gz"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"Fashion-MNIST's {prefix} files in {folder} disagree: images of shape "
                            f"{x.shape}, labels of shape {y.shape}.")
        out.append((x[..., None], y.astype(np.int32)))
    return tuple(out)


def _read_idx(path: Path) -> np.ndarray:
    """A gzipped IDX file of unsigned bytes (big-endian header: 0, 0, 0x08, ndim, then ndim sizes)."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path} is not a gzipped IDX file ({err}); delete it and load again.") from None
    ndim = data[3] if len(data) >= 4 else 0
    if len(data) < 4 + 4 * ndim or data[:3] != b"\x00\x00\x08" or ndim not in (1, 3):
        raise DataError(f"{path} is not an IDX file of unsigned bytes (its header is {data[:4].hex()}, not "
                        f"00000801 or 00000803); delete it and load again.")
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} holds {body.size} bytes of data, its header says {dims} "
                        f"({int(np.prod(dims))}): it is truncated or damaged; delete it and load again.")
    return body.reshape(dims)


def _read_mnist(datasets: Path):
    path = _find(datasets, "mnist.npz")
    if path is None:
        _download("mnist", datasets, datasets, ["mnist.npz"],
                  [dict(fname="mnist.npz", origin=_KERAS_STORAGE + "mnist.npz", file_hash=_MNIST_HASH)])
        path = _downloaded(_find(datasets, "mnist.npz"), "mnist.npz", datasets)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path} is not Keras' mnist.npz (arrays x_train, y_train, x_test, y_test): "
                        f"{' '.join(str(err).split())}; delete it and load again.") from None
    out = []
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"].reshape(-1)
        if x.ndim != 3 or len(x) != len(y) or x.dtype != np.uint8:
            raise DataError(f"{path}: x_{split} must be uint8 (N, H, W) with one label each; it is "
                            f"{x.dtype} {x.shape} with {len(y)} labels.")
        out.append((x[..., None], y.astype(np.int32)))
    return tuple(out)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, lists, dicts, numbers and strings; refuses every other global."""

    def find_class(self, module, name):
        if (module, name) in _PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _read_cifar(name: str, datasets: Path):
    target, inner, origin, file_hash, train_files, test_files, label_key = _CIFAR[name]
    members = train_files + test_files

    def locate():
        # Keras 3's layout (the extracted folder, then its archive), then older Keras' (folder, .tar.gz)
        for relative, is_archive in ((f"{target}/{inner}", False), (f"{target}_archive", True),
                                     (inner, False), (f"{inner}.tar.gz", True)):
            path = _find(datasets, relative)
            if path is not None and (is_archive or all((path / m).is_file() for m in members)):
                return path, is_archive
        return None

    found = locate()
    if found is None:
        archive = f"{target}_archive"
        _download(name, datasets, datasets, [archive],
                  [dict(fname=target, origin=origin, extract=True, file_hash=file_hash)])
        found = _downloaded(locate(), archive, datasets)
    path, is_archive = found
    if is_archive:
        blobs = _archive_members(path, inner, members)
    else:
        blobs = {m: (path / m).read_bytes() for m in members}
    splits = []
    for files in (train_files, test_files):
        xs, ys = zip(*(_cifar_batch(blobs[m], label_key, f"{path}:{inner}/{m}" if is_archive else path / m)
                       for m in files))
        splits.append((np.concatenate(xs), np.concatenate(ys)))
    return tuple(splits)


def _archive_members(path: Path, inner: str, members) -> dict[str, bytes]:
    wanted = {f"{inner}/{m}": m for m in members}
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for info in tar:
                key = info.name[2:] if info.name.startswith("./") else info.name
                if key in wanted and info.isfile():
                    blobs[wanted[key]] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{path} is not a readable tar archive ({err}); delete it and load again.") from None
    absent = [m for m in members if m not in blobs]
    if absent:
        raise DataError(f"{path} lacks {', '.join(f'{inner}/{m}' for m in absent)}; it is not the dataset's "
                        f"archive: delete it and load again.")
    return blobs


def _cifar_batch(blob: bytes, label_key: bytes, where) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR batch -> uint8 ``(N, 32, 32, 3)`` images and int32 labels."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key]).reshape(-1)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise DataError(f"{where} is not a CIFAR batch (a pickled dict of numpy data and "
                        f"{label_key.decode()}): {err}.") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DataError(f"{where}: the data must be uint8 (N, 3072) with one label each; it is "
                        f"{data.dtype} {data.shape} with {len(labels)} labels.")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int32)
