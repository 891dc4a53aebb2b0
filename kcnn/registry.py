"""The model registry: `register_model`, `build(name, **overrides)`, `list_models()`."""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Callable

import keras


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about one model: its builder and the facts tests and tools rely on."""

    name: str
    fn: Callable[..., keras.Model]
    family: str
    default_input_shape: tuple
    min_size: int
    default_classes: int
    blocks: tuple = field(default=())  # ordered stage names (layer-name prefixes), shallow to deep


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(*, family: str, default_input_shape, min_size: int, default_classes: int, blocks=()):
    """Decorator: register a builder under its function name."""

    def wrap(fn):
        _REGISTRY[fn.__name__] = ModelEntry(
            fn.__name__, fn, family, tuple(default_input_shape), min_size, default_classes, tuple(blocks)
        )
        return fn

    return wrap


def _ensure_loaded():
    from kcnn import models  # noqa: F401  (importing registers every family)


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the registered models, sorted; ``pattern`` is a shell glob such as ``"resnet*"``."""
    _ensure_loaded()
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; unknown names raise ValueError listing the closest names."""
    _ensure_loaded()
    key = str(name).lower().replace("-", "_")
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, _REGISTRY, n=4, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown model {name!r}.{hint} See kcnn.list_models() for all {len(_REGISTRY)} names. "
            f"Received: name={name!r}"
        )
    return _REGISTRY[key]


def build(name: str, **overrides) -> keras.Model:
    """Build a registered model by name.

    Args:
        name: A name from `list_models()`, e.g. "vgg16", "resnet50", "resnet20", "allcnn_c".
        **overrides: Builder arguments (input_shape, classes, include_top, pooling, classifier_activation,
            weights, name, norm, spatial_dropout, dropout, head, ...).

    Returns:
        A `keras.Model`.

    Example:
        >>> model = kcnn.build("resnet20", classes=10)
    """
    return get_entry(name).fn(**overrides)
