"""The ``(x, y)`` numpy-arrays source."""
from __future__ import annotations

import warnings

import numpy as np
import tensorflow as tf

from kcnn.data.errors import DataError
from kcnn.data.splits import memory_parts


def _to_rgb_array(x: np.ndarray, size, what: str) -> np.ndarray:
    """(N, H, W[, C]) -> (N, h, w, 3) at ``size``; uint8 stays uint8, anything else becomes float32."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 2, 3, 4):
        raise DataError(f"{what} must have shape (N, H, W) or (N, H, W, C) with C in 1..4. "
                        f"Received: shape {x.shape}")
    if x.shape[-1] in (1, 2):
        x = np.repeat(x[..., :1], 3, axis=-1)
    elif x.shape[-1] == 4:
        x = x[..., :3]
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
    if tuple(x.shape[1:3]) == size:
        return np.ascontiguousarray(x)
    out = np.empty((len(x),) + size + (3,), x.dtype)
    for i in range(0, len(x), 256):
        resized = tf.image.resize(x[i:i + 256], size, method="bilinear", antialias=True).numpy()
        out[i:i + 256] = np.clip(np.rint(resized), 0, 255) if x.dtype == np.uint8 else resized
    return out


def _non_finite_images(x: np.ndarray) -> np.ndarray:
    """Indices of the images of ``x`` with a NaN or infinite value (none for integer arrays)."""
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.complexfloating):
        return np.zeros(0, np.int64)
    bad = [i + np.flatnonzero(~np.isfinite(x[i:i + 1024].reshape(len(x[i:i + 1024]), -1)).all(axis=1))
           for i in range(0, len(x), 1024)]
    return np.concatenate(bad) if bad else np.zeros(0, np.int64)


def array_parts(source, class_names, size, fractions, seed):
    x, y = (np.asarray(a) for a in source)
    if len(x) != len(y):
        raise DataError(f"x and y differ in length: {len(x)} images, {len(y)} labels.")
    if len(y) == 0:
        raise DataError("The (x, y) source is empty.")
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating)
                                                                   and np.all(y == np.round(y)))):
        raise DataError(f"y must be a 1-D array of integer class indices. Received: dtype {y.dtype}, "
                        f"shape {y.shape}")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise DataError(f"Labels must be non-negative class indices. Received: min label {y.min()}")
    if class_names is None:
        class_names = [str(i) for i in range(int(y.max()) + 1)]
    class_names = [str(c) for c in class_names]
    if y.max() >= len(class_names):
        raise DataError(f"Label {int(y.max())} has no name: {len(class_names)} class_names given.")
    bad = _non_finite_images(x) if x.ndim >= 1 else np.zeros(0, np.int64)
    if len(bad):
        raise DataError(f"The (x, y) source has {len(bad)} of {len(x)} images with NaN or infinite pixels "
                        f"(indices {bad[:5].tolist()}{', ...' if len(bad) > 5 else ''}); drop or repair "
                        f"them, e.g. keep = np.isfinite(x).reshape(len(x), -1).all(axis=1).")
    images = _to_rgb_array(x, size, "x")
    if np.issubdtype(x.dtype, np.floating) and 0 < float(np.max(x)) <= 1.0:
        warnings.warn("kcnn.data: the (x, y) images are all <= 1.0; kcnn expects values in [0, 255] and uses "
                      "them as given. Multiply by 255 if they were scaled to [0, 1].", stacklevel=3)
    return class_names, memory_parts(images, y.astype(np.int32), fractions, seed, as_float, "arrays")


def as_float(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(x, tf.float32)
