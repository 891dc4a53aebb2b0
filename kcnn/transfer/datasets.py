"""The data `fit_schedule` takes: batched ``tf.data`` datasets or ``(x, y)`` arrays, finite per epoch."""
from __future__ import annotations

import numpy as np
import tensorflow as tf


def as_dataset(data):
    """``data`` as a ``tf.data.Dataset``: datasets and None pass through, ``(x, y)`` batches by 32."""
    if data is None or isinstance(data, tf.data.Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        return tf.data.Dataset.from_tensor_slices(tuple(np.asarray(a) for a in data)).batch(32)
    raise ValueError(f"Datasets must be a batched tf.data.Dataset of (images, labels) or an (x, y) tuple of "
                     f"arrays. Received: {type(data).__name__}")


def steps_per_epoch(ds) -> int:
    """The number of batches in one pass over a finite dataset (counted when its cardinality is unknown)."""
    count = int(ds.cardinality())
    if count == tf.data.INFINITE_CARDINALITY:
        raise ValueError("train_ds is infinite (.repeat()); fit_schedule needs a finite dataset per epoch.")
    if count == tf.data.UNKNOWN_CARDINALITY:
        count = sum(1 for _ in ds)
    if count < 1:
        raise ValueError("train_ds is empty.")
    return count


def _iterate_xy(batch):
    """``(images, (labels[, weights]))`` of one batch."""
    if isinstance(batch, dict) or not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ValueError("fit_schedule's datasets must yield (images, labels) or (images, labels, weights).")
    return batch[0], tuple(batch[1:])
