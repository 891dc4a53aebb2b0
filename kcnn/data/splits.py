"""The :class:`Splits` that :func:`kcnn.data.load` returns, and the seeded, stratified split and subset
logic."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from kcnn.data.augment import DEFAULT_MAGNITUDE, Mixing
from kcnn.data.errors import SPLITS, DataError, check_augment_magnitude, check_erase_probability, check_positive_int
from kcnn.data.pipeline import (
    LazyArrays, MemoryPart, Part, StreamPart, no_auto_shard, build_pipeline, shard_size_of, shard_value,
    balanced_class_weights,
)

#: The values of ``class_weight`` (``None`` for unweighted batches).
CLASS_WEIGHTS = ("balanced",)


@dataclass
class Splits:
    """Train / validation / test data of one source, as returned by :func:`kcnn.data.load`.

    Attributes:
        train: Batched, shuffled (and, if asked, augmented) training ``tf.data.Dataset`` of
            ``(float32 images (B, H, W, 3) in [0, 255], int32 labels (B,))`` (float32 ``(B, num_classes)``
            labels when :attr:`soft_labels`). Each pass over this one object
            is reshuffled and re-augmented, so which order a pass sees depends on how many passes came
            before it; for training that must resume exactly, use :meth:`epochs` (or
            ``dataset(training=True, epoch=E)``), whose order and augmentation depend only on the seed and
            the epoch.
        val: Batched validation dataset, in a fixed order, never augmented or mixed, int32 labels.
        test: Batched test dataset, in a fixed order, never augmented or mixed, int32 labels.
        class_names: Names of the classes; label ``i`` is ``class_names[i]``.
        num_examples: Examples per split, ``{"train": n, "val": n, "test": n}``.
        skipped: ``(path, reason)`` of each file that could not be used (folder sources only).
        image_size: ``(height, width)`` of the images.
        batch_size: Examples per batch.
        source: The source as given to :func:`kcnn.data.load` (arrays are shown as ``"arrays"``, the
            ``"shapes"`` alias as ``"glyphs"``).
        augment: The augmentation applied to ``train`` (``None`` for none): a name of
            :data:`kcnn.data.AUGMENTS`.
        augment_magnitude: The strength of ``"photo"``'s colour jitter and of ``"randaugment"``'s ops, in
            [0, 10] (RandAugment's ``M``; see :mod:`kcnn.data.augment`).
        erase: Probability that a training image gets a randomly erased rectangle (after the augmentation).
        mixing: ``None`` or the :class:`~kcnn.data.Mixing` (mixup / cutmix) of the training batches; see
            :attr:`soft_labels` and :meth:`with_mixing`.
        seed: The seed of the split, the subset, the shuffling and the augmentation.
        class_weight: ``None`` (batches are ``(images, labels)``) or ``"balanced"``: every batch of the
            training split is ``(images, labels, sample_weights)`` with weight ``n / (k * count[label])``
            (scikit-learn's "balanced"; :attr:`class_weights`), which Keras' ``fit`` and kcnn's engines apply
            to the loss. Validation and test batches are never weighted. See :meth:`with_class_weight`.
            With :attr:`mixing` a mixed example's weight is ``lam * w[y] + (1 - lam) * w[partner's y]``.
    """

    train: tf.data.Dataset
    val: tf.data.Dataset
    test: tf.data.Dataset
    class_names: list[str]
    num_examples: dict[str, int]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    image_size: tuple[int, int] = (32, 32)
    batch_size: int = 32
    source: str = ""
    augment: str | None = None
    seed: int = 0
    class_weight: str | None = None
    augment_magnitude: float = DEFAULT_MAGNITUDE
    erase: float = 0.0
    mixing: Mixing | None = None
    _parts: dict = field(default_factory=dict, repr=False)
    _arrays: LazyArrays | None = field(default=None, repr=False)
    _weights: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        self.class_weight = class_weight_mode(self.class_weight)
        self.augment_magnitude = check_augment_magnitude(self.augment_magnitude)
        self.erase = check_erase_probability(self.erase)
        self.mixing = mixing_value(self.mixing)

    def __repr__(self) -> str:
        return (f"Splits(source={self.source!r}, image_size={self.image_size}, "
                f"classes={len(self.class_names)}, "
                f"num_examples={self.num_examples}, batch_size={self.batch_size}, augment={self.augment!r}, "
                f"augment_magnitude={self.augment_magnitude:g}, erase={self.erase:g}, "
                f"mixing={self.mixing!r}, "
                f"class_weight={self.class_weight!r}, skipped={len(self.skipped)})")

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(class_names)``)."""
        return len(self.class_names)

    @property
    def arrays(self) -> Mapping[str, tuple[np.ndarray, np.ndarray]]:
        """The un-augmented splits as numpy arrays, ``arrays["train"] == (x, y)``, in a fixed order.

        ``x`` is float32 ``(N, H, W, 3)`` in [0, 255], exactly what the un-augmented pipeline yields; ``y`` is
        int32 ``(N,)``. Each split is materialized on first access (a tfds split is read in full) and kept,
        so mind the memory at large image sizes: ``N * H * W * 12`` bytes.

        Example:
            >>> from kcnn.data import load
            >>> splits = load("digits", image_size=16)
            >>> x, y = splits.arrays["test"]
            >>> x.shape, int(y.size) == splits.num_examples["test"]
            ((359, 16, 16, 3), True)
        """
        if self._arrays is None:
            self._arrays = LazyArrays(self._parts)
        return self._arrays

    def labels(self, split: str = "train") -> np.ndarray:
        """The int32 labels of ``split`` in its fixed order (what ``arrays[split][1]`` holds), read without
        decoding images for in-memory and folder sources (a tfds split is read once)."""
        if self._arrays is not None and split in getattr(self._arrays, "_done", {}):
            return self._arrays[split][1]
        return self._split(split).labels()

    def class_counts(self, split: str = "train") -> np.ndarray:
        """Examples per class in ``split``: int64 ``(num_classes,)``, index ``i`` for ``class_names[i]``."""
        labels = self.labels(split)
        return np.bincount(labels.astype(np.int64), minlength=self.num_classes)[:self.num_classes]

    @property
    def class_weights(self) -> np.ndarray | None:
        """The training weight of each class (float32 ``(num_classes,)``), or ``None`` when unweighted.

        For ``"balanced"``: ``n_train / (n_present_classes * count[class])``, a class without training
        examples 0; the weights average 1 over the training examples.

        Example:
            >>> from kcnn.data import load
            >>> x, y = np.full((100, 8, 8), 128.0), np.array([0] * 90 + [1] * 10)
            >>> splits = load((x, y), image_size=8, val_fraction=0, test_fraction=0, class_weight="balanced")
            >>> splits.class_weights
            array([0.5555556, 5.       ], dtype=float32)
        """
        if self.class_weight is None:
            return None
        if self._weights is None:
            self._weights = balanced_class_weights(self.labels("train"), self.num_classes)
        return self._weights

    def with_class_weight(self, class_weight: str | None) -> "Splits":
        """The same splits with training batches weighted by class (``"balanced"``) or not (``None``).

        Every pipeline of the training split (``train``, ``dataset("train", ...)`` with or without
        ``training`` -- a feature cache of the fixed order keeps the weights -- and :meth:`epochs`) then
        yields ``(images, labels, sample_weights)``, the images and labels exactly those of the unweighted
        splits (same ``(seed, epoch)`` order and augmentation). Validation and test stay ``(images, labels)``.
        Keras' ``fit`` ignores its ``class_weight`` argument for some dataset inputs; per-example weights in
        the batches work with ``fit``, `kcnn.transfer.fit_schedule` and `kcnn.distribute` alike.

        Args:
            class_weight: ``"balanced"`` or ``None`` (also ``"none"``).

        Returns:
            A new :class:`Splits` sharing this one's data (and its materialized ``arrays``).

        Raises:
            ValueError: Any other value.
        """
        out = dataclasses.replace(self, class_weight=class_weight_mode(class_weight), _weights=None)
        out.train = out.dataset("train", training=True)
        return out

    @property
    def soft_labels(self) -> bool:
        """Whether the training split's labels are float32 ``(B, num_classes)`` (:attr:`mixing` is active).

        Then every pipeline of the training split (``train``, ``dataset("train", ...)`` with or without
        ``training``, :meth:`epochs`) yields them: mixed batches ``lam * onehot(y) + (1 - lam) *
        onehot(partner's y)``, every other batch (unmixed by ``prob``, the epochs ``>= mixing.off_epoch``, the
        fixed order) one-hot, so the label format of a run never changes. Validation and test keep int32
        labels: train with a categorical loss and evaluate with a sparse one, or one-hot them.
        """
        return self.mixing is not None and self.mixing.active

    def with_mixing(self, mixing: Mixing | None) -> "Splits":
        """The same splits with the training batches mixed by ``mixing`` (``None``: not mixed).

        The images before mixing are exactly those of the unmixed splits (same ``(seed, epoch)`` order,
        augmentation and erasing).

        Args:
            mixing: A :class:`~kcnn.data.Mixing` or ``None``.

        Returns:
            A new :class:`Splits` sharing this one's data.

        Raises:
            ValueError: Anything else.
        """
        out = dataclasses.replace(self, mixing=mixing_value(mixing))
        out.train = out.dataset("train", training=True)
        return out

    def _train_weights(self, split: str):
        return self.class_weights if split == "train" else None

    def _options(self, split: str, training: bool) -> dict:
        """``build_pipeline``'s keyword arguments for ``split``, beyond the order."""
        soft = split == "train" and self.soft_labels
        return dict(weights=self._train_weights(split), magnitude=self.augment_magnitude,
                    erase=self.erase if training else 0.0, mixing=self.mixing if training and soft else None,
                    one_hot=self.num_classes if soft else None)

    def _split(self, split: str) -> Part:
        if split not in self._parts:
            raise ValueError(f"Unknown split {split!r}; choose one of {list(self._parts)}. "
                             f"Received: split={split!r}")
        return self._parts[split]

    def dataset(self, split: str = "train", *, training: bool = False, batch_size: int | None = None,
                epoch=None, shard=None) -> tf.data.Dataset:
        """A fresh batched, prefetched pipeline of one split.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.
            training: Shuffle (seeded) and apply the splits' augmentation and erasing (and, for the
                training split, the mixing). Without ``epoch`` it is
                reshuffled each time it is iterated, as ``splits.train`` is. ``False`` gives the split in its
                fixed order without augmentation, e.g. to compute features once.
            batch_size: Examples per batch; defaults to the splits' ``batch_size``.
            epoch: With ``training=True``, one epoch whose shuffle order and augmentation are a pure
                function of ``(seed, epoch)``: the same for every iteration, every fresh :class:`Splits`
                of the same arguments, and a resumed run. A non-negative ``int`` or a scalar integer
                tensor.
            shard: ``(index, count)``: only worker ``index``'s share of ``count`` (for multi-worker
                training, e.g. ``(task_id, num_workers)``): the examples ``index, index + count, ...`` of the
                split, a fixed set of files per worker, shuffled and augmented per epoch as above. Every
                shard yields ``ceil(n / count)`` examples (a shorter one repeats its pass's first example), so
                all workers take :meth:`steps_per_epoch` ``(split, shard=...)`` steps. tf.data's auto-sharding
                is turned off on a sharded dataset. Not for tfds sources (their files are auto-sharded).

        Returns:
            A ``tf.data.Dataset`` of ``(float32 images, int32 labels)`` batches, plus float32 sample weights
            for the training split when :attr:`class_weight` is set; the training split's labels are float32
            ``(B, num_classes)`` when :attr:`soft_labels`.

        Example:
            >>> from kcnn.data import load
            >>> a = next(iter(load("digits", image_size=8).dataset(training=True, epoch=3)))[1]
            >>> b = next(iter(load("digits", image_size=8).dataset(training=True, epoch=3)))[1]
            >>> bool((a == b).numpy().all())
            True
        """
        part = self._split(split)
        shard = shard_value(shard)
        batch = check_positive_int("batch_size", self.batch_size if batch_size is None else batch_size)
        if epoch is not None:
            if not training:
                raise ValueError(f"`epoch` selects a training epoch's order and augmentation; pass "
                                 f"training=True with it. Received: epoch={epoch!r}, training=False")
            epoch = _epoch_value(epoch)
        return build_pipeline(part, batch, self.seed if training else None, self.augment if training else None,
                         self.image_size, epoch=epoch, shard=shard, **self._options(split, training))

    def steps_per_epoch(self, split: str = "train", *, shard=None) -> int:
        """Batches in one epoch of ``split``: ``ceil(num_examples / batch_size)``; the last may be smaller.

        With ``shard=(index, count)``, of one shard: ``ceil(ceil(num_examples / count) / batch_size)``, the
        same for every index.
        """
        examples = shard_size_of(self._split(split).num_examples, shard_value(shard))
        return math.ceil(examples / self.batch_size)

    def epochs(self, first: int, end: int, split: str = "train", *, shard=None) -> tf.data.Dataset:
        """The training batches of epochs ``first, ..., end - 1`` back to back, each epoch exactly
        :meth:`steps_per_epoch` batches, epoch ``e`` equal to ``dataset(split, training=True, epoch=e)``.

        Built as ``tf.data.Dataset.range(first, end).flat_map(<epoch e's batches>)``, then prefetched. Give it
        to Keras' ``fit`` with ``steps_per_epoch=splits.steps_per_epoch()`` and ``initial_epoch=first``: a
        run resumed at epoch ``first`` sees the batches an uninterrupted run saw.

        Args:
            first: The first epoch (0-based).
            end: One past the last epoch.
            split: Which split (``"train"``).
            shard: ``(index, count)``: one worker's share, as in :meth:`dataset`; each epoch is then
                ``steps_per_epoch(split, shard=shard)`` batches.

        Returns:
            A ``tf.data.Dataset`` of ``(float32 images, int32 labels)`` batches (plus sample weights when
            :attr:`class_weight` is set and ``split`` is ``"train"``; the training split's labels float32
            ``(B, num_classes)`` when :attr:`soft_labels`).

        Example:
            >>> from kcnn.data import load
            >>> splits = load("digits", image_size=8, batch_size=500)
            >>> splits.steps_per_epoch(), len(list(splits.epochs(2, 4)))
            (3, 6)
        """
        part = self._split(split)
        shard = shard_value(shard)
        for name, value in (("first", first), ("end", end)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative int. Received: {name}={value!r}")
        if end < first:
            raise ValueError(f"`end` must not be below `first`. Received: first={first}, end={end}")
        seed, augment, size, batch = self.seed, self.augment, self.image_size, self.batch_size
        options = self._options(split, True)

        def one_epoch(e):
            return build_pipeline(part, batch, seed, augment, size, epoch=e, prefetch=False, shard=shard,
                             **options)

        if isinstance(part, StreamPart):
            # a tfds stream shuffles with Dataset.shuffle, whose seed must be a Python int here: a tensor seed
            # fails inside TensorFlow's get_seed when the global seed is 0 (keras.utils.set_random_seed(0))
            ds = tf.data.Dataset.range(0).flat_map(one_epoch) if end == first else None
            for e in range(int(first), int(end)):
                ds = one_epoch(e) if ds is None else ds.concatenate(one_epoch(e))
        else:
            ds = tf.data.Dataset.range(int(first), int(end)).flat_map(one_epoch)
        return (ds if shard is None else no_auto_shard(ds)).prefetch(tf.data.AUTOTUNE)


def class_weight_mode(class_weight) -> str | None:
    """``class_weight`` checked: ``None`` (or ``"none"``) -> None, ``"balanced"`` -> "balanced"."""
    if class_weight is None or (isinstance(class_weight, str) and class_weight.lower() == "none"):
        return None
    if isinstance(class_weight, str) and class_weight.lower() in CLASS_WEIGHTS:
        return class_weight.lower()
    raise ValueError(f"`class_weight` must be None or 'balanced'. Received: class_weight={class_weight!r}")


def mixing_value(mixing) -> Mixing | None:
    """``mixing`` checked: ``None`` or a :class:`~kcnn.data.Mixing`."""
    if mixing is None or isinstance(mixing, Mixing):
        return mixing
    raise ValueError(f"`mixing` must be None or a kcnn.data.Mixing, e.g. Mixing(mixup=0.8, cutmix=1.0). "
                     f"Received: mixing={mixing!r}")


def _epoch_value(epoch):
    if isinstance(epoch, tf.Tensor):
        if not epoch.dtype.is_integer or epoch.shape.rank not in (0, None):
            raise ValueError(f"`epoch` must be a non-negative int or a scalar integer tensor. "
                             f"Received: epoch={epoch!r}")
        return tf.cast(epoch, tf.int64)
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise ValueError(f"`epoch` must be a non-negative int or a scalar integer tensor. "
                         f"Received: epoch={epoch!r}")
    return int(epoch)


# ---------------------------------------------------------------------------------------------------------
# Splitting and subsets
# ---------------------------------------------------------------------------------------------------------

def carve_sizes(n: int, fractions, n_classes: int, source: str, splits=("val", "test")) -> dict[str, int]:
    """``round(fraction * n)`` for each of ``splits`` carved from ``n`` examples.

    Refuses a non-zero fraction whose split would be empty, saying how many images per class fill every split.
    """
    named = [(s, f) for s, f in zip(("val", "test"), fractions) if s in splits]
    sizes = {s: int(round(f * n)) for s, f in named}
    empty = [(s, f) for s, f in named if f > 0 and sizes[s] == 0]
    if empty:
        wanted = [f for _, f in named if f > 0]
        need = n + 1
        while any(round(f * need) < 1 for f in wanted) or need - sum(round(f * need) for f in wanted) < 1:
            need += 1
        per = math.ceil(need / max(1, n_classes))
        fracs = " and ".join(f"{s}_fraction={f}" for s, f in named if f > 0)
        off = " and ".join(f"{s}_fraction=0" for s, _ in empty)
        plural = len(empty) > 1
        raise DataError(f"The {' and '.join(s for s, _ in empty)} split{'s' if plural else ''} of {source!r} "
                        f"would be empty: {' and '.join(f'{s}_fraction={f}' for s, f in empty)} of its {n} "
                        f"images round{'' if plural else 's'} to 0. With {fracs} every split gets an image "
                        f"from {per} images per class ({n_classes} classes) up; give that many, or pass {off} "
                        f"to have no {' or '.join(s for s, _ in empty)} split.")
    return sizes


def _stratified_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices in an order whose every prefix holds each class in proportion (±1), random within classes.

    Each class's examples, shuffled, get evenly spaced keys ``(rank + 0.5) / n_class`` in [0, 1); sorting the
    keys (ties broken at random) interleaves the classes, so any prefix is a stratified sample.
    """
    keys = np.empty(len(labels), np.float64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keys[rng.permutation(idx)] = (np.arange(len(idx)) + 0.5) / len(idx)
    return np.lexsort((rng.random(len(labels)), keys))


def stratified_indices(labels: np.ndarray, fractions, seed: int, source: str = "the source"
                   ) -> dict[str, np.ndarray]:
    """Stratified train / val / test indices; val and test sizes are ``round(fraction * n)``."""
    n = len(labels)
    sizes = carve_sizes(n, fractions, len(np.unique(labels)), source)
    n_val, n_test = sizes["val"], sizes["test"]
    order = _stratified_order(labels, np.random.default_rng([seed, 1]))
    n_train = n - n_val - n_test
    return {"train": np.sort(order[:n_train]), "val": np.sort(order[n_train:n_train + n_val]),
            "test": np.sort(order[n_train + n_val:])}


def carve_split(labels: np.ndarray, count: int, seed: int, salt: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, carved) with ``count`` carved, stratified."""
    order = _stratified_order(labels, np.random.default_rng([seed, salt]))
    keep = len(labels) - count
    return np.sort(order[:keep]), np.sort(order[keep:])


def _subset_indices(labels: np.ndarray, class_names, seed: int, limit, per_class) -> np.ndarray:
    rng = np.random.default_rng([seed, 2])
    if per_class is not None:
        chosen = []
        for c, name in enumerate(class_names):
            idx = np.flatnonzero(labels == c)
            if len(idx) < per_class:
                raise DataError(f"Class {name!r} has {len(idx)} training examples, fewer than "
                                f"per_class={per_class}.")
            chosen.append(rng.permutation(idx)[:per_class])
        return np.sort(np.concatenate(chosen))
    if limit > len(labels):
        raise DataError(f"`limit` asks for {limit} training examples but the training split has "
                        f"{len(labels)}. Received: limit={limit}")
    return np.sort(_stratified_order(labels, rng)[:limit])


def subset_part(part: Part, class_names, seed, limit, per_class) -> Part:
    """The ``limit`` / ``per_class`` subset of an in-memory or file-backed part (it has labels ``y``)."""
    keep = _subset_indices(part.y, class_names, seed, limit, per_class)
    return part.take(keep)


def memory_parts(x, y, fractions, seed, render, source: str = "the source") -> dict[str, Part]:
    index = stratified_indices(y, fractions, seed, source)
    return {s: MemoryPart(x[index[s]], y[index[s]], render) for s in SPLITS}
