"""Backbone names: keras.applications and the kcnn registry, minimum sizes and input-shape checks."""
from __future__ import annotations

import difflib

import keras

from kcnn.registry import get_entry, list_models
from kcnn.transfer import families


KERAS = "keras.applications"
KCNN = "kcnn"


def _keras_names() -> list[str]:
    return sorted(n for n in dir(keras.applications)
                  if n[:1].isupper() and callable(getattr(keras.applications, n)))


def resolve_arch(name) -> tuple[str, str]:
    """(source, canonical name) for a keras.applications or kcnn registry name, case-insensitively."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("`name` must be a model name such as 'VGG16' or 'resnet20'. Received: "
                         f"name={name!r}")
    keras_names = _keras_names()
    kcnn_names = list_models()
    key = name.strip()
    if key in keras_names:
        return KERAS, key
    norm = key.lower().replace("-", "_")
    if norm in kcnn_names and key == key.lower():
        return KCNN, norm
    keras_lower = {n.lower(): n for n in keras_names}
    if key.lower() in keras_lower:
        return KERAS, keras_lower[key.lower()]
    if norm in kcnn_names:
        return KCNN, norm
    pool: dict[str, list[str]] = {}
    for n in keras_names:
        pool.setdefault(n.lower(), []).append(f"{n} ({KERAS})")
    for n in kcnn_names:
        pool.setdefault(n, []).append(f"{n} ({KCNN})")
    close = difflib.get_close_matches(norm, list(pool), n=5, cutoff=0.5)
    hint = f" Closest: {', '.join(d for c in close for d in pool[c])}." if close else ""
    raise ValueError(
        f"Unknown backbone {name!r}.{hint} Any keras.applications model (e.g. VGG16, ResNet50, MobileNetV2, "
        f"EfficientNetB0, ConvNeXtTiny) or kcnn.list_models() name works. Received: name={name!r}"
    )


def resolve(name) -> tuple[str, str]:
    """``(source, architecture)`` of a backbone name: ("keras", "ResNet50") or ("kcnn", "resnet20"); a ValueError
    with the closest names for an unknown one."""
    return resolve_arch(name)


def keras_family(arch: str) -> str:
    return getattr(keras.applications, arch).__module__.rsplit(".", 1)[-1]


def min_size_of(source: str, arch: str) -> int:
    """Smallest input side of ``arch``: the registry's for kcnn models, the family table's for keras.applications."""
    if source == KCNN:
        return get_entry(arch).min_size
    return families.min_size(arch)


def check_shape(arch: str, input_shape, min_size: int) -> tuple:
    try:
        shape = tuple(None if s is None else int(s) for s in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or shape[2] is None:
        raise ValueError("`input_shape` must be (height, width, channels). Received: "
                         f"input_shape={input_shape!r}")
    for size in shape[:2]:
        if size is not None and size < min_size:
            raise ValueError(
                f"{arch} needs images of at least {min_size}x{min_size} pixels. Received: input_shape={shape}"
            )
    return shape


def short_name(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) < 200 else text[:197] + "..."
