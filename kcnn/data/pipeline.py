"""One split's examples and the pipeline that batches them: shuffle -> batch -> render -> augment -> erase ->
mix -> prefetch (the batched ops of the last three in :mod:`kcnn.data.augment`).

Two ways to shuffle and augment the training split:

* ``epoch=None`` (``Splits.train``): one seeded ``tf.data`` shuffle with ``reshuffle_each_iteration`` and a
  seeded random stream, so each pass over the same dataset object sees a new order and new crops. Which pass
  it is depends on how often that object was iterated.
* ``epoch=E``: the order and the crops are a pure function of ``(seed, E)``: the permutation comes from
  stateless random ops keyed by ``(seed, E)``, each batch's augmentation from a key folded from
  ``(seed, E, batch index)``. A resumed run that asks for epoch ``E`` sees what an uninterrupted run saw.
  A tfds stream is shuffled in a buffer by ``Dataset.shuffle`` seeded from ``(seed, E)``, which TensorFlow
  combines with its global seed (set or unset), so for tfds the order also depends on that.

In-memory and file-backed parts (:class:`MemoryPart`, ``kcnn.data.folders._FilePart``) shuffle example
*indices*, so their order needs no buffer, and can be sharded: ``shard=(index, count)`` gives worker
``index`` the examples ``index, index + count, ...`` of the split (a fixed set of files per worker), shuffled
per epoch; a shard one example short of ``ceil(n / count)`` repeats its epoch's first example, so every shard
has the same number of batches.

Class weights (``Splits.with_class_weight("balanced")``) are one more deterministic map at the end, label ->
weight, so a weighted epoch ``E`` has exactly the images and labels of the unweighted epoch ``E``.

Each later step of a batch (RandAugment's ops, erasing, mixing) draws from a key folded from the batch's key
with a salt of its own, so turning one on never changes what the steps before it do: ``"standard"`` with
erasing and mixing has exactly ``"standard"``'s crops and flips.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Callable

import numpy as np
import tensorflow as tf

from kcnn.data.augment import (
    DEFAULT_MAGNITUDE, Mixing, mix_batch, photo, rand_augment, random_erase, trivial_augment,
)
from kcnn.data.errors import DataError

_SHUFFLE_BUFFER_BYTES = 256 * 2**20
_AUGMENT_SEED_OFFSET = 0x5EED
_EPOCH_SHUFFLE_SALT = 0x5A1F
_EPOCH_AUGMENT_SALT = 0xA06E
_RANDAUGMENT_SALT, _PHOTO_SALT, _ERASE_SALT, _MIX_SALT = 0x2A4D, 0x9407, 0xE2A5, 0x313C


def _epoch_key(seed: int, salt: int, epoch) -> tf.Tensor:
    """A stateless-op seed, ``(2,)`` int64, that is a pure function of ``(seed, salt, epoch)``."""
    return tf.random.experimental.stateless_fold_in(tf.constant([seed, salt], tf.int64),
                                                    tf.cast(epoch, tf.int64))


def shard_value(shard) -> tuple[int, int] | None:
    """``None`` or a checked ``(index, count)`` with ``0 <= index < count``."""
    if shard is None:
        return None
    ok = (isinstance(shard, (tuple, list)) and len(shard) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in shard)
          and shard[1] >= 1 and 0 <= shard[0] < shard[1])
    if not ok:
        raise ValueError(f"`shard` must be an (index, count) pair of ints with 0 <= index < count, e.g. "
                         f"(worker_index, num_workers). Received: shard={shard!r}")
    return int(shard[0]), int(shard[1])


def shard_size_of(num_examples: int, shard) -> int:
    """Examples per epoch of one shard: ``ceil(num_examples / count)`` (all of them without a shard)."""
    return num_examples if shard is None else -(-num_examples // shard[1])


def index_dataset(num_examples: int, shuffle_seed: int | None, epoch, shard) -> tf.data.Dataset:
    """Example indices of one pass: in order, or shuffled (per ``epoch`` when given), one shard of them."""
    if shard is None:
        own = tf.range(num_examples, dtype=tf.int64)
    else:
        own = tf.range(shard[0], num_examples, shard[1], dtype=tf.int64)
    size = shard_size_of(num_examples, shard)
    if shuffle_seed is not None and epoch is not None:
        key = _epoch_key(shuffle_seed, _EPOCH_SHUFFLE_SALT, epoch)
        if shard is not None:
            key = tf.random.experimental.stateless_fold_in(key, shard[0])
        order = tf.random.experimental.stateless_shuffle(own, key)
        if shard is not None and len(range(shard[0], num_examples, shard[1])) < size:
            order = tf.concat([order, order[:1]], 0)[:size]
        return tf.data.Dataset.from_tensor_slices(order)
    index = tf.data.Dataset.from_tensor_slices(own)
    if shuffle_seed is not None:
        index = index.shuffle(max(num_examples, 1), seed=shuffle_seed, reshuffle_each_iteration=True)
    if shard is not None and len(range(shard[0], num_examples, shard[1])) < size:
        index = _pad_one(index)
    return index


def _pad_one(index: tf.data.Dataset) -> tf.data.Dataset:
    """The indices, then their first one again (a short shard repeats one example)."""
    return index.batch(2**31 - 1).map(lambda v: tf.concat([v, v[:1]], 0)).unbatch()


class Part:
    """One split's examples, before batching. Subclasses hold them in memory, in files or as a tfds stream."""

    num_examples: int

    def batches(self, batch_size: int, shuffle_seed: int | None, epoch=None, shard=None) -> tf.data.Dataset:
        raise NotImplementedError  # pragma: no cover

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError  # pragma: no cover

    def take(self, keep: np.ndarray) -> "Part":
        raise NotImplementedError  # pragma: no cover

    def labels(self) -> np.ndarray:
        """The int32 labels in the split's fixed order, without decoding images where the part holds them."""
        y = getattr(self, "y", None)
        return np.asarray(y, np.int32) if y is not None else np.asarray(self.numpy()[1], np.int32)


class MemoryPart(Part):
    """Examples held as numpy arrays; batches are gathered by index, then ``render`` makes float32 images."""

    def __init__(self, x: np.ndarray, y: np.ndarray, render: Callable[[tf.Tensor], tf.Tensor]):
        self.x, self.y, self.render = x, y.astype(np.int32), render
        self.num_examples = len(self.y)
        self._tensors = None

    def batches(self, batch_size, shuffle_seed, epoch=None, shard=None):
        if self._tensors is None:
            self._tensors = (tf.constant(self.x), tf.constant(self.y))
        x, y = self._tensors
        render = self.render
        index = index_dataset(self.num_examples, shuffle_seed, epoch, shard)
        return index.batch(batch_size).map(lambda i: (render(tf.gather(x, i)), tf.gather(y, i)),
                                           num_parallel_calls=tf.data.AUTOTUNE)

    def numpy(self):
        if self.num_examples == 0:
            return self.render(tf.constant(self.x[:0])).numpy(), self.y
        chunks = [self.render(tf.constant(self.x[i:i + 512])).numpy()
                  for i in range(0, self.num_examples, 512)]
        return np.concatenate(chunks), self.y

    def take(self, keep):
        return MemoryPart(self.x[keep], self.y[keep], self.render)


class StreamPart(Part):
    """Examples read by ``tf.data`` (tfds): uint8 images already at the output size, cached after decoding."""

    def __init__(self, ds: tf.data.Dataset, num_examples: int, image_size, cache):
        if cache:
            ds = ds.cache("" if cache is True else str(cache))
        self.ds, self.num_examples, self.image_size = ds, int(num_examples), tuple(image_size)
        self._image_bytes = image_size[0] * image_size[1] * 3

    def batches(self, batch_size, shuffle_seed, epoch=None, shard=None):
        if shard is not None:
            raise DataError("A tfds source cannot be sharded by kcnn; leave shard=None and let tf.data's "
                            "auto-sharding split its files across workers.")
        ds = self.ds
        if shuffle_seed is not None:
            buffer = min(max(self.num_examples, 1), max(1024, _SHUFFLE_BUFFER_BYTES // self._image_bytes))
            if epoch is None:
                ds = ds.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=True)
            else:
                key = _epoch_key(shuffle_seed, _EPOCH_SHUFFLE_SALT, epoch)
                op_seed = tf.random.stateless_uniform([], key, minval=None, maxval=None, dtype=tf.int64)
                ds = ds.shuffle(buffer, seed=op_seed, reshuffle_each_iteration=False)
        return ds.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y),
                                        num_parallel_calls=tf.data.AUTOTUNE)

    def labels(self):
        chunks = [y.numpy() for y in self.ds.map(lambda x, y: y).batch(4096)]
        return np.concatenate(chunks).astype(np.int32) if chunks else np.zeros((0,), np.int32)

    def numpy(self):
        xs, ys = [], []
        for x, y in self.batches(256, None):
            xs.append(x.numpy())
            ys.append(y.numpy())
        if not xs:
            return np.zeros((0,) + self.image_size + (3,), np.float32), np.zeros((0,), np.int32)
        return np.concatenate(xs), np.concatenate(ys)


def balanced_class_weights(labels, num_classes: int) -> np.ndarray:
    """scikit-learn's "balanced" weights per class: ``n_samples / (n_classes * count[class])``.

    ``n_classes`` counts the classes present in ``labels`` (as scikit-learn's ``compute_class_weight`` does
    with the classes it is given, which must all be present), so the weights average 1 over the examples; a
    class with no example gets weight 0 (it never occurs).

    Args:
        labels: Integer labels in ``[0, num_classes)``.
        num_classes: Length of the returned array.

    Returns:
        float32 ``(num_classes,)``.

    Example:
        >>> balanced_class_weights([0] * 90 + [1] * 10, 2)
        array([0.5555556, 5.       ], dtype=float32)
    """
    counts = np.bincount(np.asarray(labels, np.int64).reshape(-1), minlength=num_classes)[:num_classes]
    present = int((counts > 0).sum())
    weights = np.zeros(num_classes, np.float64)
    if present:
        weights[counts > 0] = counts.sum() / (present * counts[counts > 0])
    return weights.astype(np.float32)


def _with_weights(ds: tf.data.Dataset, weights) -> tf.data.Dataset:
    """``(images, labels)`` batches -> ``(images, labels, weights[labels])``: a pure function of the label."""
    table = tf.constant(np.asarray(weights, np.float32))
    return ds.map(lambda x, y: (x, y, tf.gather(table, y)), num_parallel_calls=tf.data.AUTOTUNE)


class LazyArrays(Mapping):
    """``{split: (x, y)}`` computed on first access of each split and kept."""

    def __init__(self, parts: dict[str, Part]):
        self._parts, self._done = parts, {}

    def __getitem__(self, split):
        if split not in self._parts:
            raise KeyError(f"Unknown split {split!r}; the splits are {list(self._parts)}")
        if split not in self._done:
            self._done[split] = self._parts[split].numpy()
        return self._done[split]

    def __iter__(self):
        return iter(self._parts)

    def __len__(self):
        return len(self._parts)


def build_pipeline(part: Part, batch_size: int, shuffle_seed: int | None, augment: str | None, size, *,
              epoch=None, prefetch: bool = True, shard=None, weights=None,
              magnitude: float = DEFAULT_MAGNITUDE, erase: float = 0.0, mixing: Mixing | None = None,
              one_hot: int | None = None) -> tf.data.Dataset:
    """Batches of ``part``: shuffled when ``shuffle_seed`` is set (per ``epoch`` if given), then augmented,
    erased and mixed, each batch keyed by one stateless seed.

    With ``shard=(index, count)`` only that shard's examples, and tf.data's auto-sharding turned off (the
    dataset is already one worker's share). With ``weights`` (one per class) each batch also carries its
    examples' weights. With ``one_hot=num_classes`` the labels are float32 ``(B, num_classes)``: one-hot, or
    mixed by an active ``mixing`` (off in the epochs ``>= mixing.off_epoch``).
    """
    ds = part.batches(batch_size, shuffle_seed, epoch, shard)
    if mixing is not None and (not mixing.active or one_hot is None):
        mixing = None
    mix_on = True
    if mixing is not None and mixing.off_epoch is not None and epoch is not None:
        if isinstance(epoch, tf.Tensor):
            mix_on = tf.less(tf.cast(epoch, tf.int64), mixing.off_epoch)
        elif epoch >= mixing.off_epoch:
            mixing = None
    if augment is not None or erase > 0 or mixing is not None:
        step = functools.partial(_train_batch, augment=augment, pad=max(1, round(min(size) / 8)),
                                 magnitude=magnitude, erase=erase, mixing=mixing, num_classes=one_hot,
                                 weights=weights, mix_on=mix_on)
        if epoch is None:
            base = tf.constant(shuffle_seed or 0, tf.int64)
            noise = tf.data.Dataset.random(seed=(shuffle_seed or 0) + _AUGMENT_SEED_OFFSET,
                                           rerandomize_each_iteration=True)
            ds = tf.data.Dataset.zip((ds, noise)).map(
                lambda batch, r: step(batch[0], batch[1], tf.stack([base, r])),
                num_parallel_calls=tf.data.AUTOTUNE)
        else:
            key = _epoch_key(shuffle_seed or 0, _EPOCH_AUGMENT_SALT, epoch)
            if shard is not None:
                key = tf.random.experimental.stateless_fold_in(key, shard[0])
            ds = ds.enumerate().map(
                lambda i, batch: step(batch[0], batch[1], tf.random.experimental.stateless_fold_in(key, i)),
                num_parallel_calls=tf.data.AUTOTUNE)
    if mixing is None:
        if weights is not None:
            ds = _with_weights(ds, weights)
        if one_hot is not None:
            ds = ds.map(lambda x, y, *w: (x, tf.one_hot(y, one_hot, dtype=tf.float32), *w),
                        num_parallel_calls=tf.data.AUTOTUNE)
    if shard is not None:
        ds = no_auto_shard(ds)
    return ds.prefetch(tf.data.AUTOTUNE) if prefetch else ds


@tf.autograph.experimental.do_not_convert  # plain graph code: tracing it through autograph only costs time
def _train_batch(images, labels, seed, *, augment, pad, magnitude, erase, mixing, num_classes, weights,
                 mix_on):
    """One training batch augmented, erased and mixed, all keyed by ``seed``.

    ``standard`` and ``crop`` are :func:`_augment_batch` keyed by ``seed`` itself (as they always were); the
    later steps get keys folded from it, so adding one never changes what the earlier ones do.
    """
    if augment in ("standard", "crop", "randaugment", "trivialaugment"):
        images, _ = _augment_batch(images, labels, seed, pad, augment != "crop")
    if augment == "randaugment":
        images = rand_augment(images, _fold(seed, _RANDAUGMENT_SALT), magnitude)
    elif augment == "trivialaugment":
        images = trivial_augment(images, _fold(seed, _RANDAUGMENT_SALT))
    elif augment == "photo":
        images = photo(images, _fold(seed, _PHOTO_SALT), magnitude)
    if erase > 0:
        images = random_erase(images, _fold(seed, _ERASE_SALT), erase)
    if mixing is not None:
        return mix_batch(images, labels, _fold(seed, _MIX_SALT), mixing, num_classes, weights, mix_on)
    return images, labels


def _fold(seed, salt: int):
    return tf.random.experimental.stateless_fold_in(seed, salt)


def no_auto_shard(ds: tf.data.Dataset) -> tf.data.Dataset:
    """``ds`` with tf.data's auto-sharding off: it already is one worker's shard."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)


def _augment_batch(images, labels, seed, pad: int, flip: bool):
    """A random crop of the zero-padded images (shift by -pad..pad px per axis), maybe mirrored, per image.

    One batched integer-translation kernel (``ImageProjectiveTransformV3``, nearest, zero fill) does the pad,
    the crop and the flip without materializing the padded batch, which is cheaper than gathers.
    """
    shape = tf.shape(images)
    batch, width = shape[0], shape[2]
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shift = tf.random.stateless_uniform([batch, 2], crop_seed, minval=-pad, maxval=pad + 1, dtype=tf.int32)
    dy, dx = tf.unstack(tf.cast(shift, tf.float32), axis=1)
    one, zero = tf.ones([batch]), tf.zeros([batch])
    scale_x, shift_x = one, dx
    if flip:
        mirror = tf.random.stateless_uniform([batch], flip_seed) < 0.5
        scale_x = tf.where(mirror, -one, one)
        shift_x = tf.where(mirror, tf.cast(width - 1, tf.float32) + dx, dx)
    # Output pixel (x, y) reads input pixel (scale_x * x + shift_x, y + dy); outside the image reads 0.
    transforms = tf.stack([scale_x, zero, shift_x, zero, one, dy, zero, zero], axis=1)
    out = tf.raw_ops.ImageProjectiveTransformV3(images=images, transforms=transforms, output_shape=shape[1:3],
                                                fill_value=0.0, interpolation="NEAREST", fill_mode="CONSTANT")
    out.set_shape(images.shape)
    return out, labels
