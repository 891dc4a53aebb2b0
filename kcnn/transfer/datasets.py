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


def iterate_xy(batch):
    """``(images, (labels[, weights]))`` of one batch."""
    if isinstance(batch, dict) or not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ValueError("fit_schedule's datasets must yield (images, labels) or (images, labels, weights).")
    return batch[0], tuple(batch[1:])


class EpochData:
    """The training data of a fit, one epoch at a time: what both engines iterate.

    From a `kcnn.data.Splits` (anything with ``dataset(split, training=, epoch=)`` and ``steps_per_epoch()``),
    epoch ``e`` is ``splits.dataset("train", training=True, epoch=e)``: its order and augmentation depend
    only on (seed, e), so a resumed run sees what an uninterrupted one saw; the validation data are
    ``splits.val`` unless given. From a plain dataset (or ``(x, y)`` arrays), every epoch iterates that dataset
    (its own shuffling decides the order; exact resume is then not promised).

    ``shard=(index, count)`` (keyed data only): epoch ``e`` is worker ``index``'s share of the training split,
    ``splits.dataset("train", training=True, epoch=e, shard=shard)``, the same number of batches on every
    worker. ``batch_size`` (keyed data only): examples per training batch instead of the splits' own, e.g. one
    worker's share of the global batch.

    Attributes:
        steps: Batches per epoch.
        batch_size: Examples per training batch when given, else None (the splits' own).
        val: The validation dataset, or None.
        keyed: Whether epochs are keyed by (seed, epoch).
        seed: The splits' seed (keyed data), else None.
    """

    def __init__(self, train, val=None, *, shard=None, batch_size: int | None = None):
        self.keyed = all(hasattr(train, a) for a in ("dataset", "steps_per_epoch", "val", "seed"))
        self.shard = shard
        self._epoch, self._stream = [0], None
        if not self.keyed and (shard is not None or batch_size is not None):
            raise ValueError(f"`shard` and `batch_size` apply to a kcnn.data.Splits only (a dataset is already "
                             f"batched). Received: shard={shard!r}, batch_size={batch_size!r}")
        whole = isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool)
        if batch_size is not None and not (whole and batch_size >= 1):
            raise ValueError(f"`batch_size` must be an int >= 1. Received: batch_size={batch_size!r}")
        self.batch_size = None if batch_size is None else int(batch_size)
        if self.keyed:
            self.splits = train
            self.seed = int(train.seed)
            if self.batch_size is None:
                self.steps = int(train.steps_per_epoch("train", shard=shard) if shard else train.steps_per_epoch())
            else:  # ceil(ceil(n / count) / batch): every shard has ceil(n / count) examples
                examples = int(train.num_examples["train"])
                examples = -(-examples // int(shard[1])) if shard else examples
                self.steps = -(-examples // self.batch_size)
            self.val = as_dataset(val) if val is not None else train.val
            self._plain = None
        else:
            self.splits, self.seed = None, None
            self._plain = as_dataset(train)
            self.steps = steps_per_epoch(self._plain)
            self.val = as_dataset(val)

    def epoch(self, number: int):
        """The training batches of epoch ``number`` (0-based).

        For keyed in-memory and folder data this is one dataset object for every epoch, which reads the epoch
        set here when an iterator over it starts (build it, then iterate it, one epoch at a time, as
        `fit_schedule` does): its pipeline is traced once, not once an epoch (a long run would otherwise keep
        a graph per epoch). tfds streams and shards get a dataset per epoch (their shuffle needs a Python seed;
        a multi-worker shard must stay serializable)."""
        if not self.keyed:
            return self._plain
        if self.shard:
            return self.splits.dataset("train", training=True, epoch=int(number), shard=self.shard,
                                       batch_size=self.batch_size)
        if str(getattr(self.splits, "source", "")).startswith("tfds:"):
            return self.splits.dataset("train", training=True, epoch=int(number), batch_size=self.batch_size)
        self._epoch[0] = int(number)
        if self._stream is None:
            current = self._epoch

            def start():  # runs when an iterator starts: yields the epoch to build
                yield current[0]

            epochs = tf.data.Dataset.from_generator(start, output_signature=tf.TensorSpec([], tf.int64))
            self._stream = epochs.flat_map(
                lambda e: self.splits.dataset("train", training=True, epoch=e, batch_size=self.batch_size)
            ).prefetch(tf.data.AUTOTUNE)
        return self._stream

    def epochs(self, first: int, end: int):
        """The training batches of epochs ``first, ..., end - 1`` back to back (keyed data), each epoch exactly
        `steps` batches and equal to `epoch`'s. One epoch is `epoch` itself (its pipeline traced once for the
        whole run); several are ``Splits.epochs``, whose ``flat_map`` is traced once per call. A plain dataset,
        a shard or a batch size of its own is one epoch at a time: ``end - first`` must then be 1."""
        if end - first == 1:
            return self.epoch(first)
        if not self.keyed or self.shard or self.batch_size is not None:
            raise ValueError(f"Only unsharded keyed data give several epochs at once; iterate `epoch(e)` one "
                             f"epoch at a time. Received: first={first}, end={end}")
        return self.splits.epochs(int(first), int(end))

    def fixed(self):
        """The training data in a fixed order without augmentation (keyed data), else the plain dataset."""
        if not self.keyed:
            return self._plain
        return self.splits.dataset("train", training=False)
