"""The ``"tfds:NAME"`` source: a prepared tensorflow-datasets image classification dataset, streamed.

kcnn never downloads: the dataset must already be prepared in the data folder (``load(data_dir=...)``, then
``$TFDS_DATA_DIR``, then tfds' default ``~/tensorflow_datasets``); an unprepared one raises
:class:`~kcnn.data.DataNotFoundError` that says how to prepare it. Images are decoded, converted to RGB and
resized inside ``tf.data``, then cached in memory, in files, or not at all.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import tensorflow as tf

from kcnn.data.errors import SPLITS, DataError, DataNotFoundError
from kcnn.data.pipeline import StreamPart
from kcnn.data.splits import carve_sizes


def tfds_parts(name, size, fractions, seed, cache, data_dir, limit, per_class):
    import tensorflow_datasets as tfds

    data_dir = os.fspath(data_dir) if data_dir is not None else (os.environ.get("TFDS_DATA_DIR") or None)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # DatasetNotFoundError, unknown config or version, a builder failing to import
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"tensorflow-datasets {tfds.__version__} has no dataset {name!r}: {first} "
                        f"Received: source='tfds:{name}'") from err
    info = builder.info
    image_key, label_key = info.supervised_keys if info.supervised_keys else ("image", "label")
    features = info.features
    if (not isinstance(image_key, str) or not isinstance(label_key, str) or image_key not in features
            or label_key not in features or not isinstance(features[image_key], tfds.features.Image)
            or not isinstance(features[label_key], tfds.features.ClassLabel)):
        raise DataError(f"tfds dataset {name!r} is not an image classification dataset (an Image feature and "
                        f"a ClassLabel feature); its features: {list(features.keys())}. "
                        f"Received: source='tfds:{name}'")
    class_names = list(features[label_key].names)
    channels = features[image_key].shape[-1]
    # Split sizes from the prepared dataset's metadata; empty under tfds.testing.mock_data.
    known = {s: info.splits[s].num_examples for s in info.splits.keys()}

    def read(split: str) -> tf.data.Dataset:
        ds = builder.as_dataset(split=split, shuffle_files=False)
        def pair(ex):
            return _tfds_image(ex[image_key], size, channels), tf.cast(ex[label_key], tf.int32)
        return ds.map(pair, num_parallel_calls=tf.data.AUTOTUNE)

    def exists(split: str) -> bool:
        if known:
            return split in known
        try:                    # no metadata (mock_data): ask for the split
            builder.as_dataset(split=split, shuffle_files=False)
            return True
        except (ValueError, KeyError, AssertionError):
            return False

    def size_of(split: str, ds: tf.data.Dataset) -> int:
        return known[split] if split in known else _count(ds)

    try:
        train = read("train")
    except AssertionError as err:       # tfds: "could not find data in ..."
        raise DataNotFoundError(
            f"tfds dataset {name!r} is not prepared: no data in {builder.data_dir} (data_dir "
            f"{data_dir or '<tfds default>'}; set by load(data_dir=...) or $TFDS_DATA_DIR). "
            f"kcnn never downloads. To prepare it, on a machine with network run `tfds build {name}` "
            f"(or python -c \"import tensorflow_datasets as tfds; tfds.load('{name}', download=True)\"), "
            f"then copy its ~/tensorflow_datasets/{name.split('/')[0]} folder into "
            f"{data_dir or '~/tensorflow_datasets'} here, or point TFDS_DATA_DIR at the folder that holds it."
        ) from err
    except (ValueError, KeyError) as err:
        raise DataError(f"tfds dataset {name!r} has no 'train' split ({err}). "
                        f"Received: source='tfds:{name}'") from err

    n_train = size_of("train", train)
    streams: dict[str, tuple[tf.data.Dataset, int]] = {}
    for split, candidates in (("val", ("validation", "val", "valid")), ("test", ("test",))):
        found = next((c for c in candidates if exists(c)), None)
        if found is not None:
            ds = read(found)
            streams[split] = (ds, size_of(found, ds))
    carve = carve_sizes(n_train, fractions, len(class_names), f"tfds:{name}",
                          splits=[s for s in ("val", "test") if s not in streams])
    keep = n_train - sum(carve.values())
    if keep < 1:
        raise DataError(f"tfds dataset {name!r}: carving {carve} examples from {n_train} train examples "
                        f"leaves none to train on.")
    start = keep
    for split, n in carve.items():      # from the end of train, in its stored order
        streams[split] = (_tfds_slice(read, train, start, start + n, bool(known)), n)
        start += n
    streams["train"] = (_tfds_slice(read, train, 0, keep, bool(known)), keep) if carve else (train, n_train)
    if limit is not None or per_class is not None:
        quota = np.full(len(class_names), per_class or 0, np.int64)
        if limit is not None:
            quota[:] = limit // len(class_names)
            quota[:limit % len(class_names)] += 1
        ds = _first_per_class(streams["train"][0], quota)
        n = _count(ds)
        if n < quota.sum():
            asked = f"limit={limit}" if limit is not None else f"per_class={per_class}"
            raise DataError(f"tfds dataset {name!r}: asked for {int(quota.sum())} training examples "
                            f"({asked}) but only {n} fit the per-class quota of {quota.tolist()}.")
        streams["train"] = (ds, n)
    if isinstance(cache, (str, os.PathLike)):   # one file set per split and per setting that changes the data
        tag = hashlib.sha1(repr((name, size, fractions, limit, per_class, data_dir)).encode()).hexdigest()[:10]
        prefix = f"{os.fspath(cache)}-{name.replace('/', '_')}-{tag}"
        parts = {s: StreamPart(*streams[s], size, f"{prefix}-{s}") for s in SPLITS}
    else:
        parts = {s: StreamPart(*streams[s], size, bool(cache)) for s in SPLITS}
    return class_names, parts


def _count(ds: tf.data.Dataset) -> int:
    n = int(ds.cardinality())
    return n if n >= 0 else int(ds.reduce(np.int64(0), lambda c, _: c + 1))


def _tfds_slice(read, train, start, stop, sliceable):
    """Examples ``start:stop`` of train: a tfds sub-split (reads only those records) or skip/take."""
    if sliceable:
        return read(f"train[{start}:{stop}]")
    return train.skip(start).take(stop - start)


def _first_per_class(ds, quota: np.ndarray):
    quota_t = tf.constant(quota)

    def step(counts, example):
        x, y = example
        keep = counts[y] < quota_t[y]
        counts = tf.tensor_scatter_nd_add(counts, [[y]], [tf.cast(keep, tf.int64)])
        return counts, (x, y, keep)

    ds = ds.scan(tf.zeros_like(quota_t), step).filter(lambda x, y, keep: keep).map(lambda x, y, keep: (x, y))
    return ds.take(int(quota.sum()))


def _tfds_image(image, size, channels):
    """A tfds image as uint8 RGB at ``size``."""
    if channels == 1:
        image = tf.repeat(image, 3, axis=-1)
    elif channels == 4:
        image = image[..., :3]
    elif channels is None:
        image = tf.cond(tf.shape(image)[-1] < 3, lambda: tf.repeat(image[..., :1], 3, axis=-1),
                        lambda: image[..., :3])
    static = tuple(image.shape[:2])
    if static != size:
        image = tf.image.resize(image, size, method="bilinear", antialias=True)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    image = tf.cast(image, tf.uint8)
    return tf.ensure_shape(image, size + (3,))
