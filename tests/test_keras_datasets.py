"""The Keras datasets sources on tiny files written in the datasets' own formats into a temporary KERAS_HOME.

No test reaches the network: ``keras.utils.get_file`` is replaced by one that fails as Keras does offline (or
that writes the tiny files, for the download path), and Keras' ``urlretrieve`` is stubbed out as well.
"""
import gzip
import io
import json
import os
import pickle
import tarfile
import urllib.error

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcnn import data as kdata
from kcnn.data import keras_datasets as kds
from recipes import pretrain

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]
GET_FILE = keras.utils.get_file
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _offline(fname=None, origin=None, *args, **kwargs):  # what keras.utils.get_file raises without a network
    raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or service not known")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty Keras home in KERAS_HOME (Keras read the variable when imported; kcnn reads it per load)."""
    path = tmp_path / "keras-home"
    monkeypatch.setenv("KERAS_HOME", str(path))
    monkeypatch.setattr(keras.utils, "get_file", _offline)

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("no network in the tests")

    monkeypatch.setattr(keras.src.utils.file_utils, "urlretrieve", no_network)
    return path


def _images(rng, n, shape):
    return rng.integers(0, 256, (n,) + shape, dtype=np.uint8)


def _labels(n, classes):
    return np.arange(n, dtype=np.uint8) % classes


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def _write_fashion(home, n_train=40, n_test=20, seed=0, skip=()):
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte.gz": _images(rng, n_train, (28, 28)),
              "train-labels-idx1-ubyte.gz": _labels(n_train, 10),
              "t10k-images-idx3-ubyte.gz": _images(rng, n_test, (28, 28)),
              "t10k-labels-idx1-ubyte.gz": _labels(n_test, 10)[::-1].copy()}
    folder = home / "datasets" / "fashion-mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        if name not in skip:
            (folder / name).write_bytes(_idx_bytes(array))
    return arrays


def _cifar_blob(data, labels, label_key=b"labels", extra=None) -> bytes:
    # a dict with bytes keys, as Python 2 wrote the CIFAR files (protocol 4: Python 3's protocol 2 would
    # pickle bytes through _codecs.encode, which Python 2's pickles never hold)
    batch = {b"batch_label": b"batch", label_key: [int(v) for v in labels], b"data": data,
             b"filenames": [b"f%d.png" % i for i in range(len(labels))], **(extra or {})}
    return pickle.dumps(batch, protocol=4)


def _write_tar(path, inner, members: dict):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"{inner}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def _write_cifar10(home, per_batch=4, n_test=6, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(5 * per_batch) % 10
    batches = {f"data_batch_{i}": (_images(rng, per_batch, (3072,)), labels[per_batch * (i - 1):][:per_batch])
               for i in range(1, 6)}
    batches["test_batch"] = (_images(rng, n_test, (3072,)), np.arange(n_test) % 10)
    members = {name: _cifar_blob(d, y) for name, (d, y) in batches.items()}
    members["batches.meta"] = pickle.dumps({b"label_names": [c.encode() for c in CIFAR10]}, protocol=4)
    _write_tar(home / "datasets" / "cifar-10-batches-py-target_archive", "cifar-10-batches-py", members)
    return batches


def _as_images(rows):
    """CIFAR rows (N, 3072), planes R, G, B of 32x32 each -> (N, 32, 32, 3), written out by hand."""
    out = np.empty((len(rows), 32, 32, 3), np.uint8)
    for ch in range(3):
        out[..., ch] = rows[:, ch * 1024:(ch + 1) * 1024].reshape(-1, 32, 32)
    return out


# --------------------------------------------------------------------------------------------------------
# Fashion-MNIST: gzipped IDX files
# --------------------------------------------------------------------------------------------------------

def test_fashion_mnist_round_trips_the_idx_files(home):
    files = _write_fashion(home)
    splits = kdata.load("fashion_mnist", image_size=28, val_fraction=0.25, seed=3, batch_size=8)
    assert splits.class_names == FASHION
    assert splits.num_examples == {"train": 30, "val": 10, "test": 20}
    for split in ("train", "val", "test"):
        x, y = splits.arrays[split]
        assert x.shape == (splits.num_examples[split], 28, 28, 3) and x.dtype == np.float32
        assert y.dtype == np.int32 and 0 <= x.min() and x.max() <= 255
        assert np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 0], x[..., 2])  # grey as RGB
    # the test split is the file's test split, pixel for pixel, in its order
    x_test, y_test = splits.arrays["test"]
    assert np.array_equal(x_test[..., 0], files["t10k-images-idx3-ubyte.gz"].astype(np.float32))
    assert np.array_equal(y_test, files["t10k-labels-idx1-ubyte.gz"])
    # train and val are the file's train split, each image with its label, val stratified (1 per class)
    train_x, train_y = files["train-images-idx3-ubyte.gz"], files["train-labels-idx1-ubyte.gz"]
    by_bytes = {img.tobytes(): int(label) for img, label in zip(train_x, train_y)}
    seen = []
    for split in ("train", "val"):
        x, y = splits.arrays[split]
        seen += [x8.tobytes() for x8 in x[..., 0].astype(np.uint8)]
        assert [by_bytes[x8.tobytes()] for x8 in x[..., 0].astype(np.uint8)] == y.tolist()
    assert sorted(seen) == sorted(by_bytes)
    assert np.bincount(splits.labels("val"), minlength=10).tolist() == [1] * 10
    images, labels = next(iter(splits.train))
    assert images.shape == (8, 28, 28, 3) and images.dtype == tf.float32 and labels.dtype == tf.int32


def test_same_seed_same_split_and_keras_prefix(home):
    _write_fashion(home)
    a = kdata.load("fashion_mnist", image_size=28, val_fraction=0.3, seed=5)
    b = kdata.load("keras:fashion_mnist", image_size=28, val_fraction=0.3, seed=5)
    c = kdata.load("fashion_mnist", image_size=28, val_fraction=0.3, seed=6)
    assert a.num_examples == b.num_examples == {"train": 28, "val": 12, "test": 20}
    assert np.array_equal(a.arrays["val"][0], b.arrays["val"][0])
    assert not np.array_equal(a.arrays["val"][0], c.arrays["val"][0])
    # test_fraction does not apply: the dataset has its own test split
    d = kdata.load("fashion_mnist", image_size=28, val_fraction=0.3, test_fraction=0.5, seed=5)
    assert d.num_examples == a.num_examples and np.array_equal(d.arrays["test"][0], a.arrays["test"][0])


def test_resize_limit_and_per_class(home):
    files = _write_fashion(home)
    small = kdata.load("fashion_mnist", image_size=(14, 12), val_fraction=0)
    x, _ = small.arrays["test"]
    assert x.shape == (20, 14, 12, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 255
    # resized as the (x, y) arrays source resizes
    same = kdata.load((files["t10k-images-idx3-ubyte.gz"], files["t10k-labels-idx1-ubyte.gz"]),
                      image_size=(14, 12), val_fraction=0, test_fraction=0)
    assert np.array_equal(x, same.arrays["train"][0])
    limited = kdata.load("fashion_mnist", image_size=28, val_fraction=0.25, limit=10)
    assert limited.num_examples == {"train": 10, "val": 10, "test": 20}
    assert np.bincount(limited.labels("train"), minlength=10).tolist() == [1] * 10
    two = kdata.load("fashion_mnist", image_size=28, val_fraction=0.25, per_class=2)
    assert two.num_examples["train"] == 20 and set(np.bincount(two.labels("train")).tolist()) == {2}
    with pytest.raises(kdata.DataError, match="limit"):
        kdata.load("fashion_mnist", image_size=28, limit=1000)


def test_damaged_idx_file_is_one_line(home):
    _write_fashion(home)
    damaged = home / "datasets" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
    damaged.write_bytes(gzip.compress(b"\x00" * 9))
    with pytest.raises(kdata.DataError, match="t10k-images-idx3-ubyte.gz") as info:
        kdata.load("fashion_mnist", image_size=28)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------------------
# MNIST (mnist.npz) and CIFAR (tar.gz of pickled batches)
# --------------------------------------------------------------------------------------------------------

def test_mnist_reads_keras_npz(home):
    rng = np.random.default_rng(1)
    x_train, x_test = _images(rng, 30, (28, 28)), _images(rng, 10, (28, 28))
    (home / "datasets").mkdir(parents=True)
    np.savez(home / "datasets" / "mnist.npz", x_train=x_train, y_train=_labels(30, 10), x_test=x_test,
             y_test=_labels(10, 10))
    splits = kdata.load("mnist", image_size=28, val_fraction=0.2)
    assert splits.class_names == [str(d) for d in range(10)]
    assert splits.num_examples == {"train": 24, "val": 6, "test": 10}
    x, y = splits.arrays["test"]
    assert x.shape == (10, 28, 28, 3) and x.dtype == np.float32
    assert np.array_equal(x, np.repeat(x_test[..., None], 3, -1).astype(np.float32))
    assert y.tolist() == list(range(10))


def test_cifar10_reads_the_archive_and_its_extraction(home):
    batches = _write_cifar10(home)
    splits = kdata.load("cifar10", image_size=32, val_fraction=0.2, seed=2)
    assert splits.class_names == CIFAR10
    assert splits.num_examples == {"train": 16, "val": 4, "test": 6}
    x, y = splits.arrays["test"]
    rows, labels = batches["test_batch"]
    assert x.shape == (6, 32, 32, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 255
    assert np.array_equal(x, _as_images(rows).astype(np.float32)) and y.tolist() == labels.tolist()
    assert x[0, 1, 2, 1] == rows[0, 1024 + 1 * 32 + 2]  # green plane, row 1, column 2
    train_rows = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    got = np.concatenate([splits.arrays["train"][0], splits.arrays["val"][0]]).astype(np.uint8)
    assert sorted(g.tobytes() for g in got) == sorted(g.tobytes() for g in _as_images(train_rows))
    # the folder load_data() extracts the archive to is read the same way
    archive = home / "datasets" / "cifar-10-batches-py-target_archive"
    with tarfile.open(archive) as tar:
        tar.extractall(home / "datasets" / "cifar-10-batches-py-target")
    archive.unlink()
    again = kdata.load("keras:cifar10", image_size=32, val_fraction=0.2, seed=2)
    for split in ("train", "val", "test"):
        assert np.array_equal(again.arrays[split][0], splits.arrays[split][0])


def test_cifar100_fine_labels_and_names(home):
    rng = np.random.default_rng(4)
    train, test = _images(rng, 8, (3072,)), _images(rng, 3, (3072,))
    fine_train, fine_test = [0, 99, 5, 42, 0, 99, 5, 42], [99, 0, 7]
    members = {"train": _cifar_blob(train, fine_train, b"fine_labels", {b"coarse_labels": [1] * 8}),
               "test": _cifar_blob(test, fine_test, b"fine_labels", {b"coarse_labels": [2] * 3})}
    _write_tar(home / "datasets" / "cifar-100-python-target_archive", "cifar-100-python", members)
    splits = kdata.load("cifar100", image_size=16, val_fraction=0)
    assert len(splits.class_names) == 100 and splits.class_names[:3] == ["apple", "aquarium_fish", "baby"]
    assert splits.class_names[99] == "worm"
    assert splits.num_examples == {"train": 8, "val": 0, "test": 3}
    x, y = splits.arrays["test"]
    assert x.shape == (3, 16, 16, 3) and y.tolist() == fine_test


def test_cifar_pickle_may_hold_only_arrays(home, tmp_path):
    marker = tmp_path / "ran"

    class Gadget:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    blob = pickle.dumps({b"data": Gadget(), b"labels": [0]}, protocol=2)
    _write_tar(home / "datasets" / "cifar-100-python-target_archive", "cifar-100-python",
               {"train": blob, "test": blob})
    with pytest.raises(kdata.DataError, match="refusing to unpickle"):
        kdata.load("cifar100", image_size=32)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------------
# Missing files: the offline message, and the download through keras.utils.get_file
# --------------------------------------------------------------------------------------------------------

def test_missing_fashion_file_names_it_the_folder_and_the_fix(home):
    _write_fashion(home, skip=("t10k-images-idx3-ubyte.gz",))
    folder = home / "datasets" / "fashion-mnist"
    with pytest.raises(kdata.DataNotFoundError) as info:
        kdata.load("fashion_mnist", image_size=28)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    assert "\n" not in message and "t10k-images-idx3-ubyte.gz is not in" in message
    assert "train-images" not in message and str(folder) in message and "URL fetch failure" in message
    fix = "apt-get install dataset-fashion-mnist, then copy /usr/share/datasets/fashion-mnist/* into"
    assert f"{fix} {folder}." in message
    assert info.value.__suppress_context__  # no chained traceback of Keras' exception


@pytest.mark.parametrize("source, file", [("mnist", "mnist.npz"),
                                          ("cifar10", "cifar-10-batches-py-target_archive"),
                                          ("keras:cifar100", "cifar-100-python-target_archive")])
def test_missing_file_says_run_load_data_and_copy(home, source, file):
    name = source.split(":")[-1]
    with pytest.raises(kdata.DataNotFoundError) as info:
        kdata.load(source, image_size=32)
    message = str(info.value)
    assert f"{file} is not in {home / 'datasets'}" in message and "\n" not in message
    assert (f"run keras.datasets.{name}.load_data() once on a machine with a network, then copy its "
            f"~/.keras/datasets/{file} into {home / 'datasets'}") in message


def test_missing_files_are_downloaded_where_load_data_keeps_them(home, monkeypatch):
    """Keras' own get_file downloads them (its urlretrieve stubbed), and load_data() then finds them."""
    served = {name: _idx_bytes(a) for name, a in _write_fashion(home.parent / "server").items()}
    fetched = []

    def urlretrieve(url, filename, reporthook=None):
        fetched.append(url)
        with open(filename, "wb") as f:
            f.write(served[url.rsplit("/", 1)[-1]])

    monkeypatch.setattr(keras.utils, "get_file", GET_FILE)
    monkeypatch.setattr(keras.src.utils.file_utils, "urlretrieve", urlretrieve)
    splits = kdata.load("fashion_mnist", image_size=28, val_fraction=0)
    assert sorted(os.listdir(home / "datasets" / "fashion-mnist")) == sorted(served) and len(fetched) == 4
    # load_data() looks in the Keras home it read at import; pointed at this one, it downloads nothing
    monkeypatch.setattr(keras.src.backend.config, "_KERAS_DIR", str(home))
    (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    assert len(fetched) == 4
    assert np.array_equal(splits.arrays["test"][0][..., 0], x_test)
    assert np.array_equal(splits.labels("test"), y_test)
    assert np.array_equal(splits.arrays["train"][0][..., 0], x_train)
    kdata.load("fashion_mnist", image_size=28)
    assert len(fetched) == 4  # found in the cache


def test_download_failing_keras_hash_check_leaves_no_file(home, monkeypatch):
    def urlretrieve(url, filename, reporthook=None):
        with open(filename, "wb") as f:
            f.write(b"not mnist")

    monkeypatch.setattr(keras.utils, "get_file", GET_FILE)
    monkeypatch.setattr(keras.src.utils.file_utils, "urlretrieve", urlretrieve)
    with pytest.raises(kdata.DataNotFoundError, match="hash") as info:
        kdata.load("mnist", image_size=28)
    assert "mnist.npz is not in" in str(info.value) and not (home / "datasets" / "mnist.npz").exists()


def test_keras_home_is_read_at_each_load(home, monkeypatch, tmp_path):
    _write_fashion(home, n_test=20)
    other = tmp_path / "other-home"
    _write_fashion(other, n_test=10)
    assert kdata.load("fashion_mnist", image_size=28).num_examples["test"] == 20
    monkeypatch.setenv("KERAS_HOME", str(other))
    assert kds.keras_datasets_dir() == other / "datasets"
    assert kdata.load("fashion_mnist", image_size=28).num_examples["test"] == 10


def test_unknown_keras_dataset_lists_the_names():
    with pytest.raises(ValueError, match="'fashion_mnist', 'mnist', 'cifar10', 'cifar100'"):
        kdata.load("keras:imdb", image_size=28)


# --------------------------------------------------------------------------------------------------------
# recipes.pretrain: --examples is "at most"
# --------------------------------------------------------------------------------------------------------

def _cfg(**kw):
    return pretrain.PretrainConfig(**{"data": "fashion_mnist", "image_size": 16, "batch_size": 32, **kw})


def test_pretrain_examples_is_at_most(home, capsys):
    _write_fashion(home)  # 40 train images: 36 train, 4 val
    splits = pretrain.load_data(_cfg(examples=10))
    assert splits.num_examples["train"] == 10
    splits = pretrain.load_data(_cfg(examples=30000))
    assert splits.num_examples == {"train": 36, "val": 4, "test": 20}
    assert "--examples 30000: the training split has 36 examples; using all 36" in capsys.readouterr().out
    pretrain.load_data(_cfg(examples=30000, verbose=0))
    assert capsys.readouterr().out == ""


def test_pretrain_recipe_uses_the_whole_smaller_split(home, tmp_path, capsys):
    _write_fashion(home)
    out = tmp_path / "pre"
    assert pretrain.main(["--data", "fashion_mnist", "--examples", "30000", "--epochs", "1", "--image-size",
                          "16", "--batch-size", "36", "--out", str(out), "--verbose", "2"]) == 0
    printed = capsys.readouterr().out
    assert "--examples 30000: the training split has 36 examples; using all 36" in printed
    assert "data fashion_mnist: 10 classes; train 36, val 4, test 20" in printed
    assert json.loads((out / "report.json").read_text())["test_examples"] == 20
    assert json.loads((out / "kcnn.json").read_text())["class_names"] == FASHION


def test_pretrain_offline_is_one_line(home, tmp_path, capsys):
    assert pretrain.main(["--data", "fashion_mnist", "--out", str(tmp_path / "p"), "--verbose", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Fashion-MNIST: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "apt-get install dataset-fashion-mnist" in err
