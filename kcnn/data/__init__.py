"""Data sources → batched, prefetched ``tf.data`` train / val / test splits.

One entry point, :func:`load`, turns any of these sources into a :class:`Splits`:

* ``"digits"``: scikit-learn's bundled handwritten digits (1,797 real 8×8 images of block counts 0..16).
* ``"glyphs"`` / ``"glyphs:N"`` / ``"glyphs:N:CHARS"``: kcnn's synthetic glyphs (printed by the built-in font,
  and for the digits also drawn with a pen in their handwritten forms) made the way the digits were made (a
  binary 32×32 bitmap, 4×4 blocks counted → 8×8 in 0..16), generated from the seed. It is the offline
  pretraining source of the transfer demo: it transfers to ``"digits"`` because it copies their acquisition
  process. ``"shapes..."`` is accepted as an old spelling of ``"glyphs..."`` for now.
* ``"tfds:NAME"`` / ``"tfds:NAME/CONFIG"``: a prepared tensorflow-datasets image classification dataset.
  kcnn never downloads: an unprepared dataset raises :class:`DataNotFoundError` that says how to prepare it.
* ``"fashion_mnist"``, ``"mnist"``, ``"cifar10"``, ``"cifar100"`` (fine labels), or ``"keras:NAME"``: the
  files of ``keras.datasets.NAME.load_data()`` in Keras' cache (``$KERAS_HOME/datasets``, default
  ``~/.keras/datasets``), downloaded as Keras does when missing; offline, a missing file raises
  :class:`DataNotFoundError` that says how to put it there. Their test split is the dataset's own.
* a folder of class sub-folders, or one with ``train/``, ``val/`` and ``test/`` split folders.
* numpy arrays ``(x, y)``.

Every split yields ``(images, labels)`` batches: float32 RGB images in [0, 255] of shape
``(batch, height, width, 3)`` and int32 labels. Scaling for a backbone is not done here.

Only the training split is shuffled and augmented. Shuffling and augmentation are seeded, so two loads with
the same arguments give the same batches in the same order, epoch after epoch (given the same TensorFlow
global seed state, which ``tf.data`` seeds are combined with). ``Splits.train`` is reshuffled each time it is
iterated; :meth:`Splits.epochs` and ``Splits.dataset(training=True, epoch=E)`` give epoch ``E``'s order and
augmentation as a pure function of ``(seed, E)``, for training that resumes exactly.
"""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from kcnn.data.augment import DEFAULT_MAGNITUDE, MAGNITUDE_MAX, RAND_OPS, Mixing
from kcnn.data.errors import (
    AUGMENTS, IMAGE_EXTENSIONS, SPLITS, DataError, DataNotFoundError, check_augment_magnitude, check_augment_name,
    check_erase_probability, valid_image_size, check_positive_int,
)
from kcnn.data.glyphs import (
    GLYPH_CLASSES, GLYPHS_DEFAULT_EXAMPLES, GlyphBank, digits_parts, glyphs_parts, glyph_bank, make_glyphs,
    render_counts,
)
from kcnn.data.arrays import array_parts
from kcnn.data.folders import FOLDER_MEMORY_BYTES, folder_parts
from kcnn.data.keras_datasets import KERAS_DATASETS, keras_parts
from kcnn.data.pipeline import balanced_class_weights
from kcnn.data.splits import CLASS_WEIGHTS, Splits, subset_part, class_weight_mode, mixing_value
from kcnn.data.tfds import tfds_parts

__all__ = [
    "AUGMENTS", "CLASS_WEIGHTS", "DEFAULT_MAGNITUDE", "DataError", "DataNotFoundError", "FOLDER_MEMORY_BYTES",
    "GLYPH_CLASSES", "GLYPHS_DEFAULT_EXAMPLES", "GlyphBank", "IMAGE_EXTENSIONS", "MAGNITUDE_MAX", "Mixing",
    "RAND_OPS", "SPLITS", "Splits", "balanced_class_weights", "glyph_bank", "load", "make_glyphs",
    "pipeline_throughput", "render_counts",
]

_SOURCE_CHOICES = ("'digits', 'glyphs', 'glyphs:N', 'glyphs:N:CHARS', 'tfds:NAME', 'tfds:NAME/CONFIG', "
                   f"{', '.join(repr(n) for n in KERAS_DATASETS)} (or 'keras:NAME'), a folder path, or an "
                   "(x, y) tuple of arrays")
#: Old spelling of the glyphs source, still accepted by load() and mapped to "glyphs".
_GLYPHS_ALIAS = "shapes"


def load(source, *, image_size, batch_size: int = 32, val_fraction: float = 0.1, test_fraction: float = 0.2,
         seed: int = 0, augment: str | None = None, cache: bool | str = True, limit: int | None = None,
         per_class: int | None = None, num_examples: int | None = None,
         class_names: Sequence[str] | None = None, data_dir: str | os.PathLike | None = None,
         class_weight: str | None = None, augment_magnitude: float = DEFAULT_MAGNITUDE, erase: float = 0.0,
         mixing: Mixing | None = None) -> Splits:
    """Load a data source as batched train / val / test ``tf.data`` pipelines.

    Splits are stratified by class and seeded: ``"digits"`` uses all 1,797 images, ``val_fraction`` and
    ``test_fraction`` of them (rounded) for validation and test, the rest for training. A folder with
    ``train/`` ``val/`` ``test/`` sub-folders and a tfds dataset use their own splits; a missing validation
    (or test) split is carved from the end of train (a tfds split in its stored order, a folder stratified),
    its size ``round(fraction * n_train)``.

    Args:
        source: ``"digits"``; ``"glyphs"``, ``"glyphs:N"`` (N examples in all) or ``"glyphs:N:CHARS"`` (one
            class per character; ``"shapes..."`` is an old spelling of the same); ``"tfds:NAME"`` or
            ``"tfds:NAME/CONFIG"``; ``"fashion_mnist"``, ``"mnist"``, ``"cifar10"`` or ``"cifar100"``
            (or ``"keras:NAME"``), read from Keras' dataset cache; a folder (``str`` or ``os.PathLike``) of
            class sub-folders or of ``train/`` ``val/`` ``test/`` split folders of class sub-folders (.jpg
            .jpeg .png .bmp .gif); or an ``(x, y)`` tuple of arrays, ``x`` of shape (N, H, W) or (N, H, W, C)
            with C in 1, 3, 4 and finite values in [0, 255], ``y`` integer labels.
        image_size: Output size, an ``int`` (square) or ``(height, width)``. Digits and glyphs are resized
            from 8×8 by :func:`render_counts`; other images are resized (bilinear, antialiased, aspect ratio
            not kept) when their size differs.
        batch_size: Examples per batch (the last batch of an epoch may be smaller).
        val_fraction: Fraction of the examples used for validation where the source has no validation split.
            ``0`` for no validation split. A non-zero fraction that would leave the split empty (too few
            images) raises :class:`DataError` saying how many images per class are needed.
        test_fraction: Fraction of the examples used for testing where the source has no test split; ``0``
            for none. Checked like ``val_fraction``. The Keras datasets have one and ignore it.
        seed: Seeds the split, the ``limit``/``per_class`` subset, the glyphs, the shuffling and the
            augmentation.
        augment: Training-split augmentation, applied per batch after the cache (one of :data:`AUGMENTS`):
            ``None`` or ``"none"``; ``"standard"``: zero-pad by 1/8 of the side (4 px at 32 px), take a random
            crop of the original size, flip horizontally with probability 1/2; ``"crop"`` (alias
            ``"standard-noflip"``): the same without the flip, for digits and text where a mirror image is
            another thing; ``"photo"``: random resized crop (area 0.35-1, aspect 3/4-4/3), flip, colour
            jitter; ``"randaugment"``: ``"standard"``, then 2 RandAugment ops per image at
            ``augment_magnitude``; ``"trivialaugment"``: ``"standard"``, then one op per image at a uniform
            random magnitude. The ops are described in :mod:`kcnn.data.augment`.
        cache: Keep decoded images in memory (``True``), in files under this path prefix (a ``str``; kcnn
            appends the dataset, a hash of the settings that change the data, and the split), or decode each
            epoch (``False``). The cache fills during the first full pass over a split. Digits, glyphs and
            arrays are held in memory and ignore this. A folder split is decoded into memory when first used
            if its decoded images take at most :data:`FOLDER_MEMORY_BYTES` and ``cache`` is ``True`` or
            ``"memory"``; otherwise it streams, decoded in the pipeline each epoch, or kept once decoded in
            memory (``"memory"``) or in one file per split (a path; the hash covers the files, their sizes
            and modification times, and the image size). Either way the batches are the same.
        limit: Keep only this many training examples, a stratified seeded subset (tfds: the first ones of each
            class in the stored order). Validation and test are unchanged.
        per_class: Keep only this many training examples of each class, chosen like ``limit``. Subsets are
            nested: for one seed, ``per_class=1`` is part of ``per_class=2``.
        num_examples: Examples to generate for ``"glyphs"`` in all splits together (default 12,000);
            the same as ``"glyphs:N"``.
        class_names: Class names for an ``(x, y)`` source; defaults to ``"0"``, ``"1"``, ...
        data_dir: tfds data folder; defaults to ``$TFDS_DATA_DIR``, then tfds' default
            (``~/tensorflow_datasets``).
        class_weight: ``None`` or ``"balanced"``: training batches become ``(images, labels, sample_weights)``
            weighted ``n / (n_classes * count[label])`` (:meth:`Splits.with_class_weight`); val and test
            are never weighted.
        augment_magnitude: RandAugment's ``M`` in [0, 10] for ``"randaugment"``, and the strength of
            ``"photo"``'s colour jitter (factors ``1 ± 0.04 * M``).
        erase: Probability, per training image, of random erasing after the augmentation (timm's
            ``--reprob``, its "pixel" mode): one rectangle of 2%-33% of the area, aspect 0.3-3.3, filled with
            uniform noise in [0, 255]. Works with every ``augment``.
        mixing: ``None`` or a :class:`Mixing` (mixup / cutmix) of the training batches, which then have
            float32 ``(B, num_classes)`` soft labels (:attr:`Splits.soft_labels`); see
            :meth:`Splits.with_mixing`.

    Returns:
        A :class:`Splits` with ``train``, ``val``, ``test``, ``class_names``, ``num_examples``, ``skipped``
        and the un-augmented ``arrays``.

    Raises:
        ValueError: An unknown source string or augmentation, or an invalid argument (names the input and the
            valid choices). Data problems raise :class:`DataError`, a ``ValueError``.
        FileNotFoundError: A missing folder or an unprepared tfds dataset (:class:`DataNotFoundError`).

    Example:
        >>> splits = load("digits", image_size=32, per_class=2, augment="crop")
        >>> splits.num_examples
        {'train': 20, 'val': 180, 'test': 359}
        >>> images, labels = next(iter(splits.train))
        >>> images.shape, images.dtype.name, labels.dtype.name
        (TensorShape([20, 32, 32, 3]), 'float32', 'int32')
    """
    size = valid_image_size(image_size)
    batch_size = check_positive_int("batch_size", batch_size)
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"`{name}` must be a number in [0, 1). Received: {name}={value!r}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"`val_fraction + test_fraction` must be below 1 to leave training data. "
                         f"Received: val_fraction={val_fraction}, test_fraction={test_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int. Received: seed={seed!r}")
    seed = int(seed)
    augment = check_augment_name(augment)
    class_weight = class_weight_mode(class_weight)
    augment_magnitude = check_augment_magnitude(augment_magnitude)
    erase = check_erase_probability(erase)
    mixing = mixing_value(mixing)
    if not isinstance(cache, (bool, str, os.PathLike)):
        raise ValueError(f"`cache` must be True, False or a file path prefix. Received: cache={cache!r}")
    if limit is not None:
        limit = check_positive_int("limit", limit)
    if per_class is not None:
        per_class = check_positive_int("per_class", per_class)
    if limit is not None and per_class is not None:
        raise ValueError(f"Give `limit` or `per_class`, not both. "
                         f"Received: limit={limit}, per_class={per_class}")
    fractions = (val_fraction, test_fraction)

    skipped: list[tuple[str, str]] = []
    kind, arg = _parse_source(source)
    if num_examples is not None and kind != "glyphs":
        raise ValueError(f"`num_examples` applies to the 'glyphs' source only. Received: source={source!r}, "
                         f"num_examples={num_examples!r}")
    if class_names is not None and kind != "arrays":
        raise ValueError(f"`class_names` applies to an (x, y) source only; other sources name their classes. "
                         f"Received: class_names={list(class_names)[:5]}")
    label = _source_label(source)
    if kind == "digits":
        names, parts = digits_parts(size, fractions, seed)
    elif kind == "glyphs":
        count, chars = arg
        if num_examples is not None:
            if count is not None and count != num_examples:
                raise ValueError(f"The source string and `num_examples` disagree. "
                                 f"Received: source={source!r}, num_examples={num_examples}")
            count = num_examples
        count = check_positive_int("num_examples", count or GLYPHS_DEFAULT_EXAMPLES)
        names, parts = glyphs_parts(size, fractions, seed, count, chars, label)
    elif kind == "arrays":
        names, parts = array_parts(arg, class_names, size, fractions, seed)
    elif kind == "folder":
        names, parts, skipped = folder_parts(arg, size, fractions, seed, cache)
    elif kind == "keras":  # the dataset's own test split: test_fraction does not apply
        names, parts = keras_parts(arg[0], size, val_fraction, seed, label, classes=arg[1])
    else:
        tfds_cache = True if cache == "memory" else cache  # tfds caches in memory with True
        names, parts = tfds_parts(arg, size, fractions, seed, tfds_cache, data_dir, limit, per_class)
    if kind != "tfds" and (limit is not None or per_class is not None):
        parts["train"] = subset_part(parts["train"], names, seed, limit, per_class)
    if parts["train"].num_examples == 0:
        raise DataError(f"No training examples are left for source {label!r}; lower "
                        f"val_fraction/test_fraction. Received: val_fraction={val_fraction}, "
                        f"test_fraction={test_fraction}")

    splits = Splits(train=None, val=None, test=None, class_names=list(names),
                    num_examples={s: parts[s].num_examples for s in SPLITS}, skipped=skipped, image_size=size,
                    batch_size=batch_size, source=label, augment=augment, seed=seed,
                    class_weight=class_weight, augment_magnitude=augment_magnitude, erase=erase,
                    mixing=mixing, _parts=parts)
    splits.train = splits.dataset("train", training=True)
    splits.val = splits.dataset("val")
    splits.test = splits.dataset("test")
    return splits


def pipeline_throughput(splits: Splits, *, steps: int = 100, warmup: int = 5, split: str = "train") -> float:
    """Images per second that one split's input pipeline delivers (decode, resize, augment, batch).

    Runs ``warmup`` batches untimed (pipeline start-up, first cache fill of a small split), then times
    ``steps`` batches, repeating the split as needed. Compare it with the training throughput of a model:
    an input pipeline well above it never makes training wait.

    Args:
        splits: What :func:`load` returned.
        steps: Timed batches.
        warmup: Untimed batches first.
        split: Which split's pipeline (``"train"`` is the shuffled, augmented one).

    Returns:
        Images per second over the timed batches.

    Example:
        >>> splits = load("glyphs:2000", image_size=32, augment="standard")
        >>> pipeline_throughput(splits, steps=20) > 0
        True
    """
    steps = check_positive_int("steps", steps)
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose one of {list(SPLITS)}. Received: split={split!r}")
    if splits.num_examples[split] == 0:
        raise DataError(f"The {split!r} split is empty; nothing to time.")
    ds = getattr(splits, split).repeat()
    it = iter(ds)
    for _ in range(max(0, int(warmup))):
        next(it)
    images = 0
    start = time.perf_counter()
    for _ in range(steps):
        images += int(next(it)[0].shape[0])
    return images / (time.perf_counter() - start)


def _source_label(source) -> str:
    if isinstance(source, (tuple, list)):
        return "arrays"
    if isinstance(source, str) and (source == _GLYPHS_ALIAS or source.startswith(_GLYPHS_ALIAS + ":")):
        return "glyphs" + source[len(_GLYPHS_ALIAS):]
    return str(source)


def _class_subset(name: str, source: str):
    """``"fashion_mnist[0-4]"`` / ``"cifar10[1,3,5]"`` -> (name, the class indices kept); no brackets: all."""
    if not name.endswith("]") or "[" not in name:
        return name, None
    name, spec = name[:-1].split("[", 1)
    classes = []
    try:
        for piece in spec.split(","):
            low, _, high = piece.strip().partition("-")
            classes += list(range(int(low), int(high or low) + 1))
    except ValueError:
        classes = []
    if not classes or len(set(classes)) != len(classes) or min(classes) < 0:
        raise ValueError(f"A class subset is NAME[first-last] or NAME[i,j,...] of distinct class indices, e.g. "
                         f"'fashion_mnist[0-4]'. Received: source={source!r}")
    return name.strip(), tuple(classes)


def _parse_source(source):
    """``(kind, argument)`` of a source; kinds: digits, glyphs, tfds, keras, folder, arrays."""
    if isinstance(source, (tuple, list)):
        if len(source) != 2:
            raise ValueError(f"An array source is an (x, y) tuple; got {len(source)} items. "
                             f"Valid sources: {_SOURCE_CHOICES}.")
        return "arrays", source
    if isinstance(source, os.PathLike):
        return "folder", Path(source)
    if not isinstance(source, str):
        raise ValueError(f"Unknown data source of type {type(source).__name__}. Valid sources: "
                         f"{_SOURCE_CHOICES}. Received: source={source!r}")
    if source == "digits":
        return "digits", None
    if source.split(":", 1)[0] in ("glyphs", _GLYPHS_ALIAS):
        if source.split(":", 1)[0] == _GLYPHS_ALIAS:
            warnings.warn(f"kcnn.data: the source {source!r} is now spelled {_source_label(source)!r}; "
                          f"'shapes' is accepted for now and will be removed.", DeprecationWarning,
                          stacklevel=3)
        parts = source.split(":", 2)
        count, chars = None, GLYPH_CLASSES
        if len(parts) > 1:
            if not parts[1].isdigit() or int(parts[1]) < 1:
                raise ValueError(f"The glyphs source is 'glyphs', 'glyphs:N' or 'glyphs:N:CHARS' with N a "
                                 f"positive number of examples. Received: source={source!r}")
            count = int(parts[1])
        if len(parts) > 2:
            chars = parts[2]
            if len(chars) < 2 or len(set(chars)) != len(chars) or any(c.isspace() for c in chars):
                raise ValueError(f"'glyphs:N:CHARS' needs two or more distinct, visible characters, one per "
                                 f"class. Received: source={source!r}")
        return "glyphs", (count, chars)
    base = source.split("[", 1)[0] if source.endswith("]") else source
    if base in KERAS_DATASETS or source.startswith("keras:"):
        name = source[len("keras:"):].strip() if source.startswith("keras:") else source
        name, classes = _class_subset(name, source)
        if name not in KERAS_DATASETS:
            raise ValueError(f"Unknown Keras dataset in {source!r}; kcnn reads "
                             f"{', '.join(repr(n) for n in KERAS_DATASETS)}. Received: source={source!r}")
        return "keras", (name, classes)
    if source.startswith("tfds:"):
        name = source[len("tfds:"):].strip()
        if not name:
            raise ValueError(f"A tfds source names a dataset: 'tfds:NAME' or 'tfds:NAME/CONFIG'. "
                             f"Received: source={source!r}")
        return "tfds", name
    if os.path.exists(source) or any(c in source for c in "/\\") or source.startswith((".", "~")):
        return "folder", Path(source).expanduser()
    raise ValueError(f"Unknown data source {source!r}. Valid sources: {_SOURCE_CHOICES}. "
                     f"Received: source={source!r}")
