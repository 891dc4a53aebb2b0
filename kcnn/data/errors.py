"""The data package's errors, constants and argument checks, shared by its modules."""
from __future__ import annotations

import math

import numpy as np

SPLITS = ("train", "val", "test")
#: Values accepted by ``load(augment=...)`` (``"standard-noflip"`` is an old spelling of ``"crop"``).
from kcnn.options import AUGMENTS as _CHOICES  # noqa: E402  (the recipes' --augment choices)

AUGMENTS = (*_CHOICES, "standard-noflip")
#: File name endings read from image folders (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


class DataError(ValueError):
    """A data source that cannot be read as asked: bad arguments, no usable images, unsupported dataset."""


class DataNotFoundError(DataError, FileNotFoundError):
    """The data are not where kcnn looked: a missing folder, or a tfds dataset that is not prepared."""


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int. Received: {name}={value!r}")
    return int(value)


def valid_image_size(image_size) -> tuple[int, int]:
    size = image_size
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (size, size)
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ValueError(f"`image_size` must be a positive int or a (height, width) pair of them. "
                         f"Received: image_size={image_size!r}")
    return int(size[0]), int(size[1])


def check_augment_name(augment) -> str | None:
    if augment is None or augment == "none":
        return None
    if augment == "standard-noflip":
        return "crop"
    if augment not in AUGMENTS:
        raise ValueError(f"Unknown augmentation {augment!r}; choose one of None, "
                         f"{', '.join(repr(a) for a in AUGMENTS)}. Received: augment={augment!r}")
    return augment


def _number_in(name: str, value, low: float, high: float, what: str) -> float:
    """``value`` as a float, refused unless it is a finite number in ``[low, high]``."""
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and low <= value <= high):
        raise ValueError(f"`{name}` must be {what} in [{low:g}, {high:g}]. Received: {name}={value!r}")
    return float(value)


def check_augment_magnitude(value) -> float:
    return _number_in("augment_magnitude", value, 0, 10, "a number (RandAugment's magnitude M)")


def check_erase_probability(value) -> float:
    return _number_in("erase", value, 0, 1, "a probability (per image, of a randomly erased rectangle)")
