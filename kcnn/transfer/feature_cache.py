"""The feature cache: backbone features computed once, so head-only phases train the head on them."""
from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from kcnn.transfer.datasets import iterate_xy, steps_per_epoch


#: Cached features above this size fall back to running the backbone every epoch.
FEATURE_CACHE_LIMIT_BYTES = 2 * 1024**3


def _fingerprints(x: np.ndarray) -> np.ndarray:
    """Per-image (mean, position-weighted mean): equal images give equal rows; flips and crops change them."""
    flat = np.asarray(x, "float64").reshape(len(x), -1)
    weights = np.linspace(1.0, 2.0, flat.shape[1])
    return np.stack([flat.mean(axis=1), flat @ weights / flat.shape[1]], axis=1)


class FeatureCache:
    """Backbone features of the train / validation data, computed once while the backbone does not change.

    With a global-pooling head the pooled features are cached (the pooling has no weights), otherwise the
    feature map; a small functional model made of the classifier's own head layers trains on them.
    """

    def __init__(self, pre, body, head):
        self.pre, self.body, self.head = pre, body, head
        pooling = (layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D)
        self.pool = head[0] if head and isinstance(head[0], pooling) else None
        self.train = None  # (features, (labels[, weights]), batch size, shuffled)
        self.val = None
        self.refused = False  # the training data were found augmented

    @property
    def ready(self) -> bool:
        return self.train is not None

    def invalidate(self):
        self.train = self.val = None

    def fill(self, train_ds, val_ds, augmented, verbose) -> float:
        """Compute the features unless they are cached; returns the seconds spent.

        ``train_ds`` is read twice to check that it gives the same images each pass (see `_cache_plan`)."""
        return self._fill(train_ds, val_ds, verbose,
                          lambda: _cache_plan(train_ds, augmented, self.pre, self.body, self.pool, verbose)[0])

    def fill_fixed(self, fixed_ds, val_ds, verbose) -> float:
        """Compute features of data known to be unaugmented, from ``fixed_ds`` (a fixed order); the epochs
        then shuffle them by (seed, epoch) (`epochs_dataset`). Returns the seconds spent."""
        def plan():
            feats, extras, batch_size, _ = _extract(self.pre, self.body, self.pool, fixed_ds, False)
            return feats, extras, batch_size, True

        return self._fill(fixed_ds, val_ds, verbose, plan)

    def _fill(self, train_ds, val_ds, verbose, plan) -> float:
        if self.train is not None or self.refused:
            return 0.0
        started = time.perf_counter()
        size = self._estimate_bytes(train_ds) + (self._estimate_bytes(val_ds) if val_ds is not None else 0)
        if size > FEATURE_CACHE_LIMIT_BYTES:
            if verbose:
                print(f"feature cache: about {size / 1024**3:.1f} GiB of features exceeds "
                      f"FEATURE_CACHE_LIMIT_BYTES; running the backbone every epoch", flush=True)
            self.refused = True
            return time.perf_counter() - started
        self.train = plan()
        if self.train is None:
            self.refused = True
            return time.perf_counter() - started
        if val_ds is not None and next(iter(val_ds), None) is not None:
            feats, extras, batch_size, _ = _extract(self.pre, self.body, self.pool, val_ds, False)
            self.val = (feats, extras, batch_size, False)
        return time.perf_counter() - started

    def epochs_dataset(self, seed: int, first: int, end: int):
        """Epochs ``first, ..., end - 1`` of the cached training features back to back: epoch ``e`` in an order
        that is a pure function of ``(seed, e)``, batched on its own (its last batch may be short). The
        features are one constant; each epoch is a row of indices into them."""
        feats, extras, batch_size, _ = self.train
        orders = np.stack([np.random.default_rng([int(seed), int(e), 0xFEA7]).permutation(len(feats))
                           for e in range(int(first), int(end))]) if end > first else np.zeros((0, len(feats)))
        tensors = tuple(tf.constant(a) for a in (feats, *extras))

        def gather(index):
            return tuple(tf.gather(t, index) for t in tensors)

        return (tf.data.Dataset.from_tensor_slices(orders.astype(np.int64))
                .flat_map(lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size))
                .map(gather))

    def _estimate_bytes(self, ds) -> int:
        shape = self.body.outputs[0].shape[1:]
        per_example = shape[-1] if self.pool is not None else int(np.prod(shape))
        first = next(iter(ds), None)
        if first is None:  # an empty split (e.g. val_fraction=0)
            return 0
        return 4 * per_example * int(iterate_xy(first)[0].shape[0]) * steps_per_epoch(ds)

    def runner(self) -> keras.Model:
        inputs = keras.Input(self.train[0].shape[1:], name="features")
        x = inputs
        for layer in (self.head[1:] if self.pool is not None else self.head):
            x = layer(x)
        return keras.Model(inputs, x, name="head_on_features")

    def train_dataset(self):
        return _cached_dataset(self.train)

    def val_dataset(self):
        return _cached_dataset(self.val) if self.val is not None else None


def _extract(pre, body, pool, ds, with_fingerprints):
    @tf.function(reduce_retracing=True)
    def features(x):
        for layer in pre:
            x = layer(x)
        x = body(x, training=False)
        return pool(x) if pool is not None else x

    feats, extras, prints, sizes = [], [], [], []
    for batch in ds:
        x, rest = iterate_xy(batch)
        feats.append(features(x).numpy())
        extras.append(tuple(np.asarray(r) for r in rest))
        sizes.append(len(feats[-1]))
        if with_fingerprints:
            prints.append(_fingerprints(np.asarray(x)))
    merged = tuple(np.concatenate([e[i] for e in extras]) for i in range(len(extras[0])))
    return np.concatenate(feats), merged, max(sizes), (np.concatenate(prints) if with_fingerprints else None)


def _data_fingerprints(ds):
    return np.concatenate([_fingerprints(np.asarray(iterate_xy(batch)[0])) for batch in ds])


def _cache_plan(ds, augmented, pre, body, pool, verbose):
    """Features of ``ds`` and whether to shuffle them each epoch; None when the data are augmented."""
    started = time.perf_counter()
    feats, extras, batch_size, first = _extract(pre, body, pool, ds, True)
    second = _data_fingerprints(ds)
    same_order = first.shape == second.shape and np.array_equal(first, second)
    same_set = first.shape == second.shape and np.array_equal(_sorted_rows(first), _sorted_rows(second))
    if not same_set and augmented is None:
        if verbose:
            print("feature cache: the training data differ between passes (random augmentation?); running "
                  "the backbone every epoch (pass augmented=False to cache anyway)", flush=True)
        return None, time.perf_counter() - started
    return (feats, extras, batch_size, not same_order), time.perf_counter() - started


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


def _cached_dataset(plan):
    feats, extras, batch_size, shuffled = plan
    ds = tf.data.Dataset.from_tensor_slices((feats, *extras))
    if shuffled:
        ds = ds.shuffle(len(feats), reshuffle_each_iteration=True)
    return ds.batch(batch_size)
