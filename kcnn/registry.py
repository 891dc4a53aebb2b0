"""The model registry: a `ModelSpec` per architecture, `register_model`, `build`, `list_models`, `get_entry`,
`families`.

A builder module (``kcnn.models.vgg``, ...) writes each architecture's facts once, in a `ModelSpec`, and
registers its builder with it. The builder reads its default input shape and minimum size from that same spec,
and its ``classes`` default is the spec's (`register_model` checks it), so the registry and the builder cannot
disagree. This module imports no builder module at import time; the first lookup imports ``kcnn.models``, whose import
registers the built-in architectures.
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Callable

import keras


@dataclass(frozen=True)
class ModelSpec:
    """The facts about an architecture that its builder, the registry and the tools built on it share.

    Attributes:
        family: Family name ("vgg", "resnet", "cifar_resnet", ...); members share options and test settings.
        default_input_shape: (height, width, channels) the builder uses when ``input_shape`` is None.
        min_size: Smallest height and width the builder accepts (the network's total downsampling).
        default_classes: The builder's default number of classes.
        blocks: Stage names, shallow to deep (layer-name prefixes: a stage's layers are ``"<stage>_..."``).
    """

    family: str
    default_input_shape: tuple
    min_size: int
    default_classes: int
    blocks: tuple = field(default=())

    def __post_init__(self):
        object.__setattr__(self, "default_input_shape", tuple(self.default_input_shape))
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if len(self.default_input_shape) != 3:
            raise ValueError("`default_input_shape` must be (height, width, channels). "
                             f"Received: default_input_shape={self.default_input_shape}")


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its name, its builder and its spec (whose fields it also exposes)."""

    name: str
    fn: Callable[..., keras.Model]
    spec: ModelSpec

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def default_input_shape(self) -> tuple:
        return self.spec.default_input_shape

    @property
    def min_size(self) -> int:
        return self.spec.min_size

    @property
    def default_classes(self) -> int:
        return self.spec.default_classes

    @property
    def blocks(self) -> tuple:
        return self.spec.blocks


_REGISTRY: dict[str, ModelEntry] = {}


def _check_defaults(fn, spec: ModelSpec):
    """The builder's own defaults for ``classes`` and ``input_shape`` must be the spec's (one source)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return
    classes = params.get("classes")
    if classes is not None and classes.default is not inspect.Parameter.empty \
            and classes.default != spec.default_classes:
        raise ValueError(f"{fn.__name__}: its `classes` default ({classes.default}) differs from its spec's "
                         f"default_classes ({spec.default_classes}); use classes=SPEC.default_classes. "
                         f"Received: classes={classes.default!r}")
    shape = params.get("input_shape")
    if shape is not None and shape.default not in (None, inspect.Parameter.empty) \
            and tuple(shape.default) != spec.default_input_shape:
        raise ValueError(f"{fn.__name__}: its `input_shape` default ({shape.default}) differs from its "
                         f"spec's default_input_shape {spec.default_input_shape}; use input_shape=None and "
                         f"read the spec. Received: input_shape={shape.default!r}")


def register_model(spec: ModelSpec | None = None, /, **fields):
    """Decorator: register a builder under its function name.

    Args:
        spec: The architecture's `ModelSpec`.
        **fields: Instead of ``spec``, its fields (family, default_input_shape, min_size, default_classes,
            blocks).

    Returns:
        A decorator that registers the builder and returns it unchanged.

    Raises:
        ValueError: the builder's ``classes`` or ``input_shape`` default contradicts the spec.

    Example:
        >>> SPEC = kcnn.ModelSpec("mine", (32, 32, 3), min_size=4, default_classes=10)
        >>> @kcnn.register_model(SPEC)
        ... def tiny(*, input_shape=None, classes=SPEC.default_classes, **options): ...
    """
    if spec is None:
        spec = ModelSpec(**fields)
    elif fields:
        raise TypeError("register_model takes a ModelSpec or its fields, not both. "
                        f"Received: {sorted(fields)}")

    def wrap(fn):
        _check_defaults(fn, spec)
        _REGISTRY[fn.__name__] = ModelEntry(fn.__name__, fn, spec)
        return fn

    return wrap


_BUILTINS = "kcnn.models"


def _with_builtins() -> dict:
    """The registry, after the built-in builders registered themselves (their package is imported on first
    lookup, not when this module is: the registry imports no builder at import time)."""
    import importlib
    import sys

    if _BUILTINS not in sys.modules:
        importlib.import_module(_BUILTINS)
    return _REGISTRY


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the registered models, sorted; ``pattern`` is a shell glob such as ``"resnet*"``."""
    names = sorted(_with_builtins())
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def families() -> dict[str, list[str]]:
    """Family name -> the names of its models, in the order their builders registered.

    Families and models both come in registration order; a builder module registers its models shallow to
    deep (vgg11 before vgg19), so a family's first model is its smallest.

    Example:
        >>> kcnn.registry.families()["vgg"]
        ['vgg11', 'vgg13', 'vgg16', 'vgg19']
    """
    out: dict[str, list[str]] = {}
    for name, entry in _with_builtins().items():
        out.setdefault(entry.family, []).append(name)
    return out


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; unknown names raise ValueError listing the closest names."""
    key = str(name).lower().replace("-", "_")
    if key not in _with_builtins():
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
            weights, name, norm, spatial_dropout, dropout, head, ...); see the builder, e.g.
            ``help(kcnn.models.vgg16)``.

    Returns:
        A `keras.Model`.

    Example:
        >>> model = kcnn.build("resnet20", classes=10)
    """
    return get_entry(name).fn(**overrides)
