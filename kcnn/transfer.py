"""Transfer learning: backbones, classifiers on top of them, and freeze/unfreeze schedules as data.

The pieces, in the order a fine-tuning run uses them:

* `backbone(name, weights)`: a headless keras.applications or kcnn model, its own preprocessing as a Keras
  layer, and its ordered blocks (stage name -> layer names, shallow to deep) for freezing by block.
* `classifier(backbone, classes)`: raw RGB images of any size -> ``resize`` -> ``preprocess`` -> ``backbone``
  (a nested model) -> a new head from `kcnn.layers.classifier_head`. Saves and loads as ``.keras`` in safe
  mode (stock layers only, no ``Lambda``).
* `Phase` / `Schedule` / `load_schedule`: a fine-tuning schedule as data (presets, TOML or JSON files).
* `fit_schedule(model, backbone, schedule, train_ds, val_ds)`: runs the phases as consecutive ``fit``
  calls with continuous epoch numbers, resumable from any finished epoch, training only the head on cached
  backbone features when that is exact.
* `save_checkpoint` / `load_checkpoint`: the pretraining checkpoint format (``model.keras`` +
  ``kcnn.json``) that `backbone(None, weights=DIR)` turns back into a backbone.

Batch norm, the two switches (see LECTURE.md): ``trainable=False`` freezes a layer's weights (and, in Keras 3,
makes a BatchNormalization layer normalise with its moving statistics), while calling the backbone with
``training=False`` makes *every* BN layer in it use its moving statistics, even in blocks whose weights train.
`fit_schedule` does both: layers of frozen blocks get ``trainable=False``; with ``bn="frozen"`` (the default)
the backbone runs with ``training=False`` so no moving statistic changes in any phase; with ``bn="train"`` the
BN layers of the trained blocks use batch statistics and update their moving averages with momentum 0.9
(kcnn's `kcnn.layers.BN_MOMENTUM`; keras.applications' 0.99 needs ~500 steps to forget its start,
FINDINGS.md).

Keras 3.15 note: a ``training=False`` written into a functional graph (``base(x, training=False)``, the Keras
guide's recipe) is overridden by ``fit``'s ``training=True`` (``keras/src/models/functional.py``:
``operation_fn`` injects the outer value), so BN moving statistics drift anyway. `fit_schedule` therefore fits
a small view of the classifier that calls the backbone with an explicit ``training`` argument at run time; the
saved classifier itself is a plain functional model. `classifier` returns the backbone frozen
(``trainable=False``), which keeps BN in inference mode even when someone calls ``model.fit`` directly.

Reference: Yosinski et al., "How transferable are features in deep neural networks?", NeurIPS 2014;
Howard & Ruder, "Universal Language Model Fine-tuning for Text Classification" (gradual unfreezing,
discriminative rates), ACL 2018; the Keras guide "Transfer learning & fine-tuning".
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from kcnn import layers as kl
from kcnn import perf
from kcnn import weights as kw
from kcnn.registry import get_entry, list_models
from kcnn.weights import WeightsError

# ------------------------------------------------------------------------------------------------------------
# Preprocessing
# ------------------------------------------------------------------------------------------------------------

#: Preprocessing modes; every one maps raw RGB in [0, 255] to what a backbone was trained on.
PREPROCESSING = {
    "caffe": "RGB -> BGR, minus the ImageNet channel means, no scaling (VGG16/19, ResNet50/101/152)",
    "tf": "scaled to [-1, 1] (ResNetV2, MobileNet, MobileNetV2, Xception, InceptionV3, InceptionResNetV2, "
          "NASNet)",
    "torch": "scaled to [0, 1], then standardised by the ImageNet channel mean/std (DenseNet)",
    "unit": "scaled to [0, 1] (kcnn's own models unless they carry ImageNet weights)",
    "none": "unchanged; the model rescales itself (EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3)",
}
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)

#: keras.applications module -> preprocessing mode (the mode of its ``preprocess_input``).
_FAMILY_PREPROCESSING = {
    "vgg16": "caffe", "vgg19": "caffe", "resnet": "caffe",
    "resnet_v2": "tf", "mobilenet": "tf", "mobilenet_v2": "tf", "xception": "tf", "inception_v3": "tf",
    "inception_resnet_v2": "tf", "nasnet": "tf",
    "densenet": "torch",
    "efficientnet": "none", "efficientnet_v2": "none", "convnext": "none", "mobilenet_v3": "none",
}


def preprocess_layer(mode: str, name: str = "preprocess") -> layers.Layer:
    """A Keras layer that applies a preprocessing mode to raw RGB images in [0, 255].

    Built from stock layers so that a ``.keras`` file holding it loads in safe mode: "caffe" is a fixed,
    non-trainable 1x1 Conv2D whose kernel swaps R and B and whose bias is minus the BGR means (bit-identical
    to ``keras.applications.vgg16.preprocess_input``: the kernel only multiplies by 1 and adds exact zeros);
    "tf", "torch" and "unit" are a `keras.layers.Rescaling` (per-channel for "torch"; equal to
    ``preprocess_input`` to float32 rounding); "none" is `keras.layers.Identity`.

    Args:
        mode: One of `PREPROCESSING`: "caffe", "tf", "torch", "unit", "none".
        name: Layer name.

    Returns:
        A `keras.layers.Layer`.

    Example:
        >>> prep = preprocess_layer("caffe")
        >>> prep(np.full((1, 2, 2, 3), 128.0, "float32")).shape
        TensorShape([1, 2, 2, 3])
    """
    mode = _check_mode(mode)
    if mode == "caffe":
        conv = layers.Conv2D(3, 1, use_bias=True, trainable=False, name=name)
        conv.build((None, None, None, 3))
        kernel = np.zeros((1, 1, 3, 3), "float32")
        for out_channel in range(3):  # BGR output channel c takes RGB input channel 2 - c
            kernel[0, 0, 2 - out_channel, out_channel] = 1.0
        conv.set_weights([kernel, -np.asarray(CAFFE_MEAN_BGR, "float32")])
        return conv
    if mode == "tf":
        return layers.Rescaling(1.0 / 127.5, offset=-1.0, name=name)
    if mode == "torch":
        scale = [1.0 / (255.0 * s) for s in TORCH_STD]
        offset = [-m / s for m, s in zip(TORCH_MEAN, TORCH_STD)]
        return layers.Rescaling(scale, offset=offset, name=name)
    if mode == "unit":
        return layers.Rescaling(1.0 / 255.0, name=name)
    return layers.Identity(name=name)


def _check_mode(mode) -> str:
    if mode not in PREPROCESSING:
        raise ValueError(f"`preprocessing` must be one of {list(PREPROCESSING)}. Received: "
                         f"preprocessing={mode!r}")
    return mode


# ------------------------------------------------------------------------------------------------------------
# Names: keras.applications and the kcnn registry
# ------------------------------------------------------------------------------------------------------------

KERAS = "keras.applications"
KCNN = "kcnn"
#: Smallest input side keras.applications accepts, where it is not 32.
_KERAS_MIN_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}


def _keras_names() -> list[str]:
    return sorted(n for n in dir(keras.applications)
                  if n[:1].isupper() and callable(getattr(keras.applications, n)))


def _resolve(name) -> tuple[str, str]:
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


def preprocessing_mode(name: str, weights=None) -> str:
    """The preprocessing mode `backbone` uses for ``name`` (without building anything).

    Args:
        name: A keras.applications or kcnn registry name.
        weights: As for `backbone` ("imagenet" switches kcnn models to "caffe"); checkpoints are not read.

    Returns:
        A key of `PREPROCESSING`.

    Example:
        >>> preprocessing_mode("ResNet50V2")
        'tf'
    """
    source, arch = _resolve(name)
    if source == KCNN:
        return "caffe" if isinstance(weights, str) and weights == "imagenet" else "unit"
    return _FAMILY_PREPROCESSING.get(_keras_family(arch)) or _probe_mode(arch)


def _keras_family(arch: str) -> str:
    return getattr(keras.applications, arch).__module__.rsplit(".", 1)[-1]


def _min_size(source: str, arch: str) -> int:
    if source == KCNN:
        return get_entry(arch).min_size
    return _KERAS_MIN_SIZE.get(arch, 32)


def _check_shape(arch: str, input_shape, min_size: int) -> tuple:
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


# ------------------------------------------------------------------------------------------------------------
# Blocks: ordered stages of a backbone, shallow to deep
# ------------------------------------------------------------------------------------------------------------

# Named families: layer name -> block name (None: belongs to the block of the layer before it).
_NAMED_RULES = {
    "vgg16": [(r"^(block\d+)_", r"\1")],
    "vgg19": [(r"^(block\d+)_", r"\1")],
    "xception": [(r"^(block\d+)_", r"\1")],
    "resnet": [(r"^(conv\d+)_", r"\1")],
    "resnet_v2": [(r"^(conv\d+)_", r"\1")],
    "densenet": [(r"^(conv\d+)_", r"\1"), (r"^pool(\d+)", r"conv\1")],
    "efficientnet": [(r"^(stem)_", r"\1"), (r"^(block\d+)[a-z]_", r"\1"), (r"^(top)_", r"\1")],
    "efficientnet_v2": [(r"^(stem)_", r"\1"), (r"^(block\d+)[a-z]_", r"\1"), (r"^(top)_", r"\1")],
    "convnext": [(r"_(stem)$", r"\1"), (r"_stage_(\d+)_", r"stage\1"),
                 (r"_downsampling_block_(\d+)$", "+stage\\1")],
}
# Resolution-staged families: layers form units (by name) and units are merged into stages at each
# downsampling.
_UNIT_RULES = {
    "mobilenet": r"^conv_(?:dw|pw|pad)_(\d+)",
    "mobilenet_v2": r"^(block_\d+|expanded_conv)_",
    "mobilenet_v3": r"^(expanded_conv(?:_\d+)?)_",
    "inception_resnet_v2": r"^(block35_\d+|block17_\d+|block8_\d+|mixed_\w+?)(?:_|$)",
}
_UNIT_CLOSERS = {"inception_v3": r"^mixed\d+$"}


def _body_layers(model) -> list:
    return [layer for layer in model.layers if not isinstance(layer, layers.InputLayer)]


def _named_blocks(model, rules) -> list[tuple[str, list[str]]]:
    groups: dict[str, list[str]] = {}
    current = None
    pending: list[str] = []  # layers before the first named one (rescaling, padding) join the first block
    for layer in _body_layers(model):
        block = current
        for pattern, repl in rules:
            match = re.search(pattern, layer.name)
            if match:
                block = match.expand(repl)
                if block.startswith("+stage"):  # ConvNeXt: downsampling_block_k opens stage k + 1
                    block = f"stage{int(block[6:]) + 1}"
                break
        if block is None:
            pending.append(layer.name)
            continue
        groups.setdefault(block, []).append(layer.name)
        current = block
    if not groups:
        return [("stage1", pending)] if pending else []
    first = next(iter(groups))
    groups[first] = pending + groups[first]
    return list(groups.items())


def _spatial(layer):
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return None
    if len(shape) != 4 or shape[1] is None or shape[2] is None:
        return None
    return min(shape[1], shape[2])


def _staged_blocks(model, unit_pattern=None, closer=None) -> list[tuple[str, list[str]]]:
    """Stages split where the feature map shrinks; units (by name) are never split between stages."""
    units: list[list] = []
    current_key = None
    close = False
    for layer in _body_layers(model):
        key = None
        if unit_pattern:
            match = re.search(unit_pattern, layer.name)
            if match:
                key = match.group(1) if match.groups() else match.group(0)
        per_layer = unit_pattern is None and closer is None
        if not units or per_layer or close or (key is not None and key != current_key):
            units.append([])
        if key is not None:
            current_key = key
        units[-1].append(layer)
        close = bool(closer and re.search(closer, layer.name))
    stages: list[list[str]] = []
    resolution = None
    for unit in units:
        size = _spatial(unit[-1])
        if not stages or (size is not None and resolution is not None and size < resolution):
            stages.append([])
        if size is not None and (resolution is None or size < resolution):
            resolution = size
        stages[-1].extend(layer.name for layer in unit)
    return [(f"stage{i}", names) for i, names in enumerate(stages, start=1)]


def _prefix_blocks(model, prefixes) -> list[tuple[str, list[str]]]:
    groups = {p: [] for p in prefixes}
    current = prefixes[0]
    for layer in _body_layers(model):
        matches = [p for p in prefixes if layer.name == p or layer.name.startswith(p + "_")]
        if matches:
            current = max(matches, key=len)
        groups[current].append(layer.name)
    return [(p, names) for p, names in groups.items() if names]


def _group_blocks(model, source: str, arch: str) -> list[tuple[str, list[str]]]:
    """The backbone's blocks (block name, layer names), shallow to deep, covering every layer."""
    if source == KCNN:
        prefixes = list(get_entry(arch).blocks)
        return _prefix_blocks(model, prefixes) if prefixes else _staged_blocks(model)
    family = _keras_family(arch)
    if family in _NAMED_RULES:
        return _named_blocks(model, _NAMED_RULES[family])
    return _staged_blocks(model, _UNIT_RULES.get(family), _UNIT_CLOSERS.get(family))


# ------------------------------------------------------------------------------------------------------------
# Backbone
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Backbone:
    """A headless network ready for transfer learning.

    Attributes:
        name: Canonical architecture name ("VGG16", "ResNet50V2", "resnet20", ...).
        model: The headless `keras.Model` (include_top=False, no pooling), named "backbone"; it takes
            *preprocessed* images of `input_shape`.
        preprocess: A Keras layer mapping raw RGB in [0, 255] to what `model` expects (`preprocess_layer`).
        blocks: Ordered ``(block name, [layer names])`` from shallow to deep; every layer of `model` is in
            one.
        min_size: Smallest input side the architecture accepts.
        input_shape: (height, width, channels) the model is built for.
        preprocessing: The mode of `preprocess` (a key of `PREPROCESSING`).
        source: "keras.applications" or "kcnn".
        weights: What was loaded: None, "imagenet", a file path or a checkpoint directory.
    """

    name: str
    model: keras.Model
    preprocess: layers.Layer
    blocks: list
    min_size: int
    input_shape: tuple
    preprocessing: str
    source: str = KCNN
    weights: str | None = None

    @property
    def block_names(self) -> list[str]:
        """Block names, shallow to deep."""
        return [name for name, _ in self.blocks]

    def __repr__(self) -> str:
        return (f"Backbone(name={self.name!r}, source={self.source!r}, input_shape={self.input_shape}, "
                f"preprocessing={self.preprocessing!r}, blocks={self.block_names}, weights={self.weights!r})")


def backbone(name: str | None, weights=None, input_shape=None, *, preprocessing: str | None = None,
             options: dict | None = None) -> Backbone:
    """Build a headless backbone with its own preprocessing and its blocks.

    Args:
        name: A keras.applications model name (VGG16, VGG19, ResNet50, ResNet50V2, MobileNetV2,
            EfficientNetB0, ConvNeXtTiny, ...) or a kcnn registry name (vgg16, resnet20, allcnn_c, ...),
            case-insensitive. CamelCase spellings prefer keras.applications, lower-case ones the kcnn
            registry. May be None when `weights` is a kcnn checkpoint (the architecture is read from it).
        weights: None (random init), "imagenet" (keras' published files, cached under ``$KERAS_HOME/models``),
            a weights file (legacy ``.h5`` matched by layer name, so a full-model file fills the headless
            base; ``.weights.h5`` / ``.keras`` of the same headless architecture) or a kcnn checkpoint
            directory (or its ``model.keras`` / ``kcnn.json``) written by `save_checkpoint`.
        input_shape: (height, width, channels). Default: (224, 224, 3) for keras.applications, the registry's
            default for kcnn models (32x32 for the CIFAR nets), the saved shape for checkpoints.
        preprocessing: Override the preprocessing mode (a key of `PREPROCESSING`). Default: the family's mode
            for keras.applications, "caffe" for kcnn models with ImageNet weights, "unit" ([0, 1]) for other
            kcnn models, the saved mode for checkpoints.
        options: Extra builder arguments (e.g. ``{"norm": "batch"}`` for kcnn VGG/All-CNN).

    Returns:
        A `Backbone`.

    Raises:
        ValueError: unknown name (the message lists the closest names) or an input smaller than the minimum.
        WeightsError: weights that cannot be fetched or do not fit (offline "imagenet" names the file, the
            cache folder and ``weights=PATH``).
        FileNotFoundError: a weights path that does not exist.

    Example:
        >>> bb = backbone("VGG16", weights=None, input_shape=(64, 64, 3))
        >>> bb.block_names
        ['block1', 'block2', 'block3', 'block4', 'block5']
    """
    checkpoint = _checkpoint_dir(weights)
    if checkpoint is not None:
        return _backbone_from_checkpoint(name, checkpoint, input_shape, preprocessing)
    if name is None:
        raise ValueError("`name` is required unless `weights` is a kcnn checkpoint directory. Received: "
                         "name=None")
    source, arch = _resolve(name)
    min_size = _min_size(source, arch)
    if input_shape is None:
        input_shape = get_entry(arch).default_input_shape if source == KCNN else (224, 224, 3)
    shape = _check_shape(arch, input_shape, min_size)
    options = dict(options or {})
    imagenet = isinstance(weights, str) and weights == "imagenet"
    if source == KCNN:
        model = get_entry(arch).fn(include_top=False, pooling=None, input_shape=shape, weights=weights,
                                   name="backbone", **options)
        mode = preprocessing or preprocessing_mode(arch, weights)
    else:
        base = _keras_base(arch, shape, imagenet, options)
        model = keras.Model(base.input, base.output, name="backbone")
        if weights is not None and not imagenet:
            kw.load_into(model, weights, arch.lower(), include_top=False)
        mode = preprocessing or preprocessing_mode(arch)
    mode = _check_mode(mode)
    return Backbone(name=arch, model=model, preprocess=preprocess_layer(mode),
                    blocks=_group_blocks(model, source, arch),
                    min_size=min_size, input_shape=shape, preprocessing=mode, source=source,
                    weights=None if weights is None else os.fspath(weights))


def _keras_base(arch, shape, imagenet, options):
    fn = getattr(keras.applications, arch)
    try:
        return fn(include_top=False, weights="imagenet" if imagenet else None, input_shape=shape,
                  pooling=None, **options)
    except Exception as err:
        text = str(err)
        if not imagenet or not ("URL fetch failure" in text or isinstance(err, OSError)):
            raise
        url_match = re.search(r"https?://\S+?\.h5", text)
        url = url_match.group(0) if url_match else "the keras-applications storage"
        fname = url.rsplit("/", 1)[-1] if url_match else f"the {arch} notop .h5 file"
        raise WeightsError(
            f"ImageNet weights for {arch} are not cached and could not be downloaded ({_short(text)}). "
            f"Put {fname} (from {url}) into {kw.keras_cache_dir()}, or pass weights=PATH to a local copy."
        ) from None


def _probe_mode(arch: str) -> str:
    """The preprocessing mode of an unlisted keras.applications family, probed via its preprocess_input."""
    module = getattr(keras.applications, _keras_family(arch), None)
    probe = np.array([[[[0.0, 100.0, 255.0]]]], "float32")
    if module is None or not hasattr(module, "preprocess_input"):
        return "none"
    got = np.asarray(module.preprocess_input(probe.copy()))
    for mode in ("caffe", "tf", "torch", "unit", "none"):
        if np.allclose(np.asarray(preprocess_layer(mode)(probe)), got, atol=1e-4):
            return mode
    raise ValueError(f"Cannot tell the preprocessing of {arch}; pass preprocessing=... "
                     f"({list(PREPROCESSING)})")


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) < 200 else text[:197] + "..."


def _rebuild(model: keras.Model, input_shape) -> keras.Model:
    """A copy of a functional ``model`` with a new input shape and the same weights and trainable flags."""
    config = model.get_config()
    for layer_config in config["layers"]:
        if layer_config["class_name"] == "InputLayer":
            inner = layer_config["config"]
            inner["batch_shape"] = [None, *input_shape]
            inner.pop("batch_input_shape", None)
    clone = model.__class__.from_config(config)
    clone.set_weights(model.get_weights())
    flags = {layer.name: layer.trainable for layer in model.layers}
    for layer in clone.layers:
        layer.trainable = flags.get(layer.name, layer.trainable)
    return clone


# ------------------------------------------------------------------------------------------------------------
# Checkpoints (what recipes.pretrain writes)
# ------------------------------------------------------------------------------------------------------------

CHECKPOINT_FORMAT = "kcnn-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_MODEL = "model.keras"
CHECKPOINT_META = "kcnn.json"
#: Layer names `kcnn.layers.classifier_head` creates; the body of a saved model ends before them.
_HEAD_NAME = re.compile(r"^(flatten|avg_pool|max_pool|predictions|predictions_conv|fc\d+|fc\d+_dropout)$")


def save_checkpoint(path, model: keras.Model, *, arch: str, input_shape, class_names,
                    preprocessing: str) -> Path:
    """Write a pretraining checkpoint: ``<path>/model.keras`` and ``<path>/kcnn.json``.

    ``kcnn.json`` holds ``{"format": "kcnn-checkpoint", "version": 1, "arch", "input_shape", "classes",
    "class_names", "preprocessing", "keras_version"}``. The model is written to a temporary file first and
    renamed, so an interrupted save never leaves a half-written ``model.keras``.

    Args:
        path: Directory to write (created if missing).
        model: The trained model: a `classifier` (its nested "backbone" is the body) or any kcnn/keras model
            with a `kcnn.layers.classifier_head` head (everything before the head is the body).
        arch: Architecture name (keras.applications or kcnn registry).
        input_shape: (height, width, channels) the body was trained at.
        class_names: Names of the output classes, in output order.
        preprocessing: Preprocessing mode the body was trained with (a key of `PREPROCESSING`).

    Returns:
        The checkpoint directory.

    Example:
        >>> save_checkpoint("runs/pre/ckpt", model, arch="resnet20", input_shape=(32, 32, 3),
        ...                 class_names=list("0123456789"), preprocessing="unit")
    """
    source, canonical = _resolve(arch)
    shape = _check_shape(canonical, input_shape, _min_size(source, canonical))
    mode = _check_mode(preprocessing)
    names = [str(c) for c in class_names]
    units = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
    if units is not None and units != len(names):
        raise ValueError(
            f"`class_names` has {len(names)} names but the model outputs {units} classes. "
            f"Received: class_names={names[:10]}{'...' if len(names) > 10 else ''}"
        )
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / "model.partial.keras"
    model.save(partial)
    os.replace(partial, directory / CHECKPOINT_MODEL)
    meta = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "arch": canonical, "source": source,
        "input_shape": list(shape), "classes": len(names), "class_names": names, "preprocessing": mode,
        "keras_version": keras.__version__,
    }
    (directory / CHECKPOINT_META).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def _checkpoint_dir(weights) -> Path | None:
    if weights is None or (isinstance(weights, str) and weights == "imagenet"):
        return None
    try:
        path = Path(os.fspath(weights))
    except TypeError:
        return None
    if path.is_dir():
        if (path / CHECKPOINT_META).is_file():
            return path
        raise FileNotFoundError(
            f"{path} is a directory without {CHECKPOINT_META}: not a kcnn checkpoint. Pass a checkpoint "
            f"directory written by kcnn.transfer.save_checkpoint or a weights file. "
            f"Received: weights={os.fspath(weights)!r}"
        )
    if path.name in (CHECKPOINT_META, CHECKPOINT_MODEL) and (path.parent / CHECKPOINT_META).is_file():
        return path.parent
    return None


def load_checkpoint(path) -> tuple[keras.Model, dict]:
    """Load a checkpoint written by `save_checkpoint`.

    Args:
        path: The checkpoint directory, or its ``model.keras`` or ``kcnn.json``.

    Returns:
        ``(model, meta)``: the saved model (not compiled) and the parsed ``kcnn.json``.

    Raises:
        FileNotFoundError: no checkpoint there.
        WeightsError: an unreadable or foreign ``kcnn.json``.
    """
    directory = _checkpoint_dir(path)
    if directory is None:
        raise FileNotFoundError(f"No kcnn checkpoint at {path} (expected {CHECKPOINT_META} and "
                                f"{CHECKPOINT_MODEL}).")
    try:
        meta = json.loads((directory / CHECKPOINT_META).read_text())
    except (OSError, ValueError) as err:
        raise WeightsError(f"Unreadable {directory / CHECKPOINT_META}: {_short(err)}") from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{directory / CHECKPOINT_META} is not a kcnn checkpoint (format != "
                           f"{CHECKPOINT_FORMAT!r}).")
    if meta.get("version", 0) > CHECKPOINT_VERSION:
        raise WeightsError(f"{directory} has checkpoint version {meta['version']}; this kcnn reads up to "
                           f"{CHECKPOINT_VERSION}. Upgrade kcnn.")
    model_path = directory / CHECKPOINT_MODEL
    if not model_path.is_file():
        raise FileNotFoundError(f"Checkpoint {directory} has no {CHECKPOINT_MODEL}.")
    model = keras.saving.load_model(model_path, compile=False)
    return model, meta


def _checkpoint_body(model: keras.Model) -> keras.Model:
    """The body of a saved model: its nested "backbone", or everything before its classifier head."""
    try:
        nested = model.get_layer("backbone")
    except ValueError:
        nested = None
    if isinstance(nested, keras.Model):
        return nested
    body_layers = [layer for layer in model.layers if not isinstance(layer, layers.InputLayer)]
    first_head = len(body_layers)
    while first_head > 0 and _HEAD_NAME.match(body_layers[first_head - 1].name):
        first_head -= 1
    if first_head == len(body_layers):
        return keras.Model(model.input, model.output, name="backbone")
    if first_head == 0:
        raise WeightsError("The checkpoint's model has no layers before its classifier head.")
    return keras.Model(model.input, body_layers[first_head].input, name="backbone")


def _backbone_from_checkpoint(name, directory: Path, input_shape, preprocessing) -> Backbone:
    saved, meta = load_checkpoint(directory)
    source, arch = _resolve(meta.get("arch"))
    if name is not None:
        _, wanted = _resolve(name)
        if wanted.lower() != arch.lower():
            raise WeightsError(f"Checkpoint {directory} holds a {arch}, not a {wanted}. Pass name=None or "
                               f"name={arch!r}. Received: name={name!r}")
    min_size = _min_size(source, arch)
    body = _checkpoint_body(saved)
    saved_shape = tuple(body.inputs[0].shape[1:])
    wanted_shape = input_shape if input_shape is not None else meta.get("input_shape", saved_shape)
    shape = _check_shape(arch, wanted_shape, min_size)
    if tuple(shape) != saved_shape:
        body = _rebuild(body, shape)
    body.trainable = True
    mode = _check_mode(preprocessing or meta.get("preprocessing", "unit"))
    return Backbone(name=arch, model=body, preprocess=preprocess_layer(mode),
                    blocks=_group_blocks(body, source, arch),
                    min_size=min_size, input_shape=shape, preprocessing=mode, source=source,
                    weights=os.fspath(directory))


# ------------------------------------------------------------------------------------------------------------
# Classifier
# ------------------------------------------------------------------------------------------------------------


def classifier(backbone: Backbone, classes: int, *, head: str = "gap", dropout: float = 0.0, hidden=(),
               image_size=None, head_init: str = "zeros", name: str | None = None) -> keras.Model:
    """A classifier on raw RGB images of any size: resize -> preprocess -> backbone -> new head.

    Layers (top level): ``image`` (input, shape (None, None, C)), ``resize`` (`keras.layers.Resizing` to the
    backbone's size, bilinear), ``preprocess`` (`preprocess_layer`), ``backbone`` (the nested headless model;
    blocks are found by layer name inside it) and the head layers of `kcnn.layers.classifier_head`
    (``avg_pool``/``flatten``, ``fc1``..., ``predictions``). The backbone comes back frozen
    (``trainable=False``), the state of a head-only first phase; `fit_schedule` sets trainability per phase.

    Args:
        backbone: A `Backbone`.
        classes: Number of classes (softmax output).
        head: "gap" (global average pooling -> dense), "dense" (flatten -> dense) or "conv" (convolutional
            head).
        dropout: Dropout after each hidden layer (needs `hidden`).
        hidden: Widths of hidden fully connected layers, e.g. (256,).
        image_size: Size the images are resized to: an int or (height, width). Default: the backbone's
            input_shape. A different size rebuilds a copy of the backbone at that size (same weights).
        head_init: Kernel initializer of the new class layer. "zeros" (the default, as in Kolesnikov et al.,
            "Big Transfer (BiT)", 2020): every class starts at the same score, so the head learns from the
            labelled examples alone instead of starting from random projections of the backbone's features,
            which are large and all positive after ReLU and global pooling. With 1 label per class on the digits
            demo this lifted the head-only test accuracy from 0.51 (Keras' "glorot_uniform") to 0.72 (README,
            "The demo"). Any Keras initializer name works; hidden layers keep Keras' default.
        name: Model name (default ``"<arch>_classifier"``).

    Returns:
        A `keras.Model` mapping images in [0, 255] to class probabilities.

    Example:
        >>> bb = backbone("VGG16", input_shape=(64, 64, 3))
        >>> model = classifier(bb, 10)
        >>> model(np.zeros((2, 100, 80, 3), "float32")).shape
        TensorShape([2, 10])
    """
    if not isinstance(backbone, Backbone):
        raise ValueError("`backbone` must be a kcnn.transfer.Backbone. Received: "
                         f"backbone={type(backbone).__name__}")
    rate = kl.check_rate("dropout", dropout)
    hidden = tuple(int(units) for units in (hidden or ()))
    if rate and not hidden:
        raise ValueError(f"`dropout` acts after hidden layers; pass hidden=(units, ...) or dropout=0. "
                         f"Received: dropout={dropout!r}, hidden={hidden}")
    body = backbone.model
    height, width, channels = backbone.input_shape
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2:
            raise ValueError("`image_size` must be an int or (height, width). Received: "
                             f"image_size={image_size!r}")
        _check_shape(backbone.name, (*size, channels), backbone.min_size)
        if size != (height, width):
            body = _rebuild(body, (*size, channels))
        height, width = size
    if height is None or width is None:
        raise ValueError(f"The backbone has no fixed input size; pass image_size=. "
                         f"Received: input_shape={backbone.input_shape}")
    body.trainable = False
    inputs = keras.Input((None, None, channels), name="image")
    x = layers.Resizing(height, width, interpolation="bilinear", name="resize")(inputs)
    x = preprocess_layer(backbone.preprocessing)(x)
    x = body(x)
    try:
        initializer = keras.initializers.get(head_init)
    except ValueError:
        raise ValueError(f"`head_init` must be a Keras initializer such as 'zeros' or 'glorot_uniform'. "
                         f"Received: head_init={head_init!r}") from None
    outputs = kl.classifier_head(x, classes, head=head, fc_units=hidden, dropout=rate,
                                 classifier_initializer=initializer)
    default_name = re.sub(r"\W+", "_", f"{backbone.name.lower()}_classifier")
    return keras.Model(inputs, outputs, name=name or default_name)


def _parts(model: keras.Model):
    """(layers before the backbone, the nested backbone, head layers) of a `classifier` model."""
    try:
        body = model.get_layer("backbone")
    except ValueError:
        body = None
    if not isinstance(body, keras.Model):
        raise ValueError(f"Model {model.name!r} has no nested model named 'backbone'; build it with "
                         f"kcnn.transfer.classifier(backbone(...), classes).")
    top = _body_layers(model)
    index = top.index(body)
    return top[:index], body, top[index + 1:]


def block_layers(model: keras.Model, backbone: Backbone) -> list[tuple[str, list[str]]]:
    """The blocks of the backbone nested in ``model`` (grouped on that model, so a reloaded one works)."""
    _, body, _ = _parts(model)
    return _group_blocks(body, backbone.source, backbone.name)


def set_trainable(model: keras.Model, backbone: Backbone, train="head") -> list[str]:
    """Make the head and the chosen blocks trainable and everything else in ``model`` frozen.

    Args:
        model: A `classifier` model.
        backbone: Its `Backbone` (gives the block structure).
        train: "head", "all", "top:N" (the head and the N deepest blocks) or a list of block names (the head
            always trains).

    Returns:
        The trained block names, shallow to deep.
    """
    pre, body, head = _parts(model)
    blocks = block_layers(model, backbone)
    chosen = resolve_train(train, [b for b, _ in blocks])
    names = {n for b, layer_names in blocks if b in chosen for n in layer_names}
    body.trainable = True
    for layer in _body_layers(body):
        layer.trainable = layer.name in names
    for layer in pre:
        layer.trainable = False
    for layer in head:
        layer.trainable = True
    return chosen


def resolve_train(train, block_names: Sequence[str]) -> list[str]:
    """The blocks a ``train`` spec trains ("head" -> none, "all", "top:N", or a list), shallow to deep."""
    block_names = list(block_names)
    if isinstance(train, str):
        if train == "head":
            return []
        if train == "all":
            return block_names
        count = _top_count(train)
        return block_names[len(block_names) - min(count, len(block_names)):]
    unknown = [b for b in train if b != "head" and b not in block_names]
    if unknown:
        raise ValueError(f"unknown block {unknown[0]!r} in train; blocks are: {', '.join(block_names)}")
    return [b for b in block_names if b in set(train)]


def _top_count(spec: str) -> int:
    match = re.fullmatch(r"top:(\d+)", spec)
    if not match or int(match.group(1)) < 1:
        raise ValueError("train must be 'head', 'all', 'top:N' (N >= 1) or a list of block names; got "
                         f"{spec!r}")
    return int(match.group(1))


# ------------------------------------------------------------------------------------------------------------
# Schedules as data
# ------------------------------------------------------------------------------------------------------------

BN_MODES = ("frozen", "train")
OPTIMIZERS = ("adam", "sgd", "adamw", "rmsprop")
LR_SCHEDULES = ("constant", "cosine")


class _FieldError(ValueError):
    """A bad value of one `Phase` field (``field`` names it)."""

    def __init__(self, name, message):
        super().__init__(message)
        self.field = name


def _number(name, value, *, minimum=None, strict=False, maximum=None, integer=False):
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not numeric or (integer and not float(value).is_integer()):
        kind = "an integer" if integer else "a number"
        raise _FieldError(name, f"field '{name}' must be {kind}; got {value!r}")
    value = int(value) if integer else float(value)
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise _FieldError(name, f"field '{name}' must be {'>' if strict else '>='} {minimum}; got {value!r}")
    if maximum is not None and value >= maximum:
        raise _FieldError(name, f"field '{name}' must be < {maximum}; got {value!r}")
    return value


def _choice(name, value, choices):
    if value not in choices:
        options = ", ".join(map(repr, choices))
        raise _FieldError(name, f"field '{name}' must be one of {options}; got {value!r}")
    return value


@dataclass(frozen=True)
class Phase:
    """One phase of a fine-tuning schedule: which blocks train, for how long, and how.

    Args:
        epochs: Epochs in this phase (>= 1).
        train: "head" (only the new head), "top:N" (the head and the N deepest blocks), "all", or a list of
            block names (the head always trains).
        lr: Peak learning rate of the head.
        lr_mult: Discriminative rates: the k-th trained block counted from the top of the backbone trains at
            ``lr * lr_mult**k`` (e.g. 0.1: the deepest block at lr/10, the next at lr/100). None: one rate.
            Implemented per variable in the optimizer's update (not by scaling gradients, which Adam undoes).
        bn: "frozen" (every backbone BN layer uses its moving statistics; none of them changes) or "train" (BN
            layers of trained blocks use batch statistics and update their moving averages).
        optimizer: "adam", "sgd", "adamw" or "rmsprop".
        warmup: Linear warm-up from ~0 to `lr`: a number >= 1 is epochs, below 1 a fraction of the phase.
        schedule: "constant" or "cosine" (decay to 0 by the end of the phase, after the warm-up).
        weight_decay: Decoupled weight decay (biases and BN parameters excluded).
        momentum: SGD momentum.
        name: A name for logs; default derived from `train` ("head", "top:2", "all", ...).

    Example:
        >>> Phase(epochs=3, train="top:2", lr=1e-4, name="unfreeze")
    """

    epochs: int
    train: object = "head"
    lr: float = 1e-3
    lr_mult: float | None = None
    bn: str = "frozen"
    optimizer: str = "adam"
    warmup: float = 0
    schedule: str = "constant"
    weight_decay: float = 0.0
    momentum: float = 0.9
    name: str | None = None

    def __post_init__(self):
        try:
            values = _validate_phase(self)
        except _FieldError as err:
            label = f" {self.name!r}" if isinstance(self.name, str) else ""
            raise ValueError(f"Phase{label}: {err}") from None
        for key, value in values.items():
            object.__setattr__(self, key, value)

    @property
    def train_spec(self) -> str:
        """`train` as text: "head", "all", "top:N" or comma-separated block names."""
        return self.train if isinstance(self.train, str) else ",".join(self.train)

    @property
    def warmup_epochs(self) -> float:
        """The warm-up length in epochs."""
        return self.warmup * self.epochs if 0 < self.warmup < 1 else float(self.warmup)

    def to_dict(self) -> dict:
        """The phase as a plain dict (the fields of a ``[[phase]]`` table)."""
        out = dataclasses.asdict(self)
        out["train"] = self.train if isinstance(self.train, str) else list(self.train)
        return out


PHASE_FIELDS = tuple(f.name for f in dataclasses.fields(Phase))


def _validate_phase(phase: Phase) -> dict:
    epochs = _number("epochs", phase.epochs, minimum=1, integer=True)
    train = phase.train
    if isinstance(train, str):
        if train not in ("head", "all"):
            try:
                _top_count(train)
            except ValueError as err:
                raise _FieldError("train", f"field 'train': {err}") from None
    elif isinstance(train, (list, tuple)) and train and all(isinstance(b, str) and b for b in train):
        train = tuple(train)
    else:
        raise _FieldError("train", f"field 'train' must be 'head', 'all', 'top:N' or a non-empty list of "
                                   f"block names; got {train!r}")
    lr = _number("lr", phase.lr, minimum=0, strict=True)
    lr_mult = None if phase.lr_mult is None else _number("lr_mult", phase.lr_mult, minimum=0, strict=True)
    _choice("bn", phase.bn, BN_MODES)
    _choice("optimizer", phase.optimizer, OPTIMIZERS)
    warmup = _number("warmup", phase.warmup, minimum=0)
    if warmup >= 1 and warmup > epochs:
        raise _FieldError("warmup", f"field 'warmup' ({warmup:g} epochs) is longer than the phase ({epochs} "
                          "epochs)")
    _choice("schedule", phase.schedule, LR_SCHEDULES)
    weight_decay = _number("weight_decay", phase.weight_decay, minimum=0)
    momentum = _number("momentum", phase.momentum, minimum=0, maximum=1)
    name = phase.name
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise _FieldError("name", f"field 'name' must be a non-empty string; got {name!r}")
    if name is None:
        name = train if isinstance(train, str) else "+".join(train)
    return dict(epochs=epochs, train=train, lr=lr, lr_mult=lr_mult, warmup=warmup, weight_decay=weight_decay,
                momentum=momentum, name=name)


class Schedule(list):
    """A fine-tuning schedule: a list of `Phase` run one after another with continuous epoch numbers."""

    def __init__(self, phases=()):
        phases = list(phases)
        for i, phase in enumerate(phases, start=1):
            if not isinstance(phase, Phase):
                raise ValueError(f"phase {i}: expected a kcnn.transfer.Phase, got {type(phase).__name__}")
        if not phases:
            raise ValueError("A schedule needs at least one phase.")
        super().__init__(phases)

    @property
    def total_epochs(self) -> int:
        """Epochs of all phases together."""
        return sum(p.epochs for p in self)

    def boundaries(self) -> list[tuple[int, int]]:
        """(first, end) global epoch indices of each phase: phase k runs epochs first..end-1 (0-based)."""
        out, start = [], 0
        for phase in self:
            out.append((start, start + phase.epochs))
            start += phase.epochs
        return out

    def scale_epochs(self, total_or_factor=None, *, total: int | None = None, factor: float | None = None):
        """A copy with rescaled epochs (for a recipe's ``--epochs``); every phase keeps at least one epoch.

        Args:
            total_or_factor: An int is the new total number of epochs (split in proportion to the phases'
                epochs, largest remainders first); a float is a factor applied to every phase.
            total: Same as an int `total_or_factor`.
            factor: Same as a float `total_or_factor`.

        Returns:
            A new `Schedule`; warm-ups given in epochs scale with their phase.

        Example:
            >>> load_schedule("two-phase").scale_epochs(4).total_epochs
            4
        """
        if total_or_factor is not None:
            if isinstance(total_or_factor, bool) or not isinstance(total_or_factor, (int, float)):
                raise ValueError("scale_epochs takes an int total or a float factor; got "
                                 f"{total_or_factor!r}")
            if isinstance(total_or_factor, int):
                total = total_or_factor
            else:
                factor = total_or_factor
        if (total is None) == (factor is None):
            raise ValueError("scale_epochs needs exactly one of a total (int) or a factor (float)")
        old = [p.epochs for p in self]
        if total is not None:
            if isinstance(total, bool) or not isinstance(total, int) or total < len(self):
                raise ValueError(f"total epochs must be an integer >= the number of phases ({len(self)}); "
                                 f"got {total!r}")
            raw = [e * total / sum(old) for e in old]
            new = [max(1, math.floor(r)) for r in raw]
            order = sorted(range(len(raw)), key=lambda i: raw[i] - math.floor(raw[i]), reverse=True)
            i = 0
            while sum(new) < total:
                new[order[i % len(order)]] += 1
                i += 1
            while sum(new) > total:  # only when max(1, ...) lifted phases; take from the longest
                j = max(range(len(new)), key=lambda k: new[k])
                new[j] -= 1
        else:
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0:
                raise ValueError(f"factor must be a number > 0; got {factor!r}")
            new = [max(1, int(round(e * factor))) for e in old]
        phases = []
        for phase, epochs in zip(self, new):
            warmup = phase.warmup
            if warmup >= 1:
                scaled = warmup * epochs / phase.epochs
                warmup = scaled if scaled >= 1 else warmup / phase.epochs
            phases.append(dataclasses.replace(phase, epochs=epochs, warmup=warmup))
        return Schedule(phases)

    def to_dict(self) -> dict:
        """``{"phase": [...]}``, the layout of a schedule file."""
        return {"phase": [p.to_dict() for p in self]}


#: Built-in schedules. "lecture": the lecture's transfer-learning demo (train only the new output layer).
#: "two-phase": the Keras transfer-learning guide (train the head on the frozen base, then unfreeze the whole
#: base at a tenth of the rate with BN kept in inference mode). "gradual": ULMFiT-style gradual unfreezing,
#: one more block per phase from the top.
PRESETS = {
    "lecture": [dict(epochs=10, train="head", lr=1e-3, name="head")],
    "two-phase": [
        dict(epochs=5, train="head", lr=1e-3, name="head"),
        dict(epochs=5, train="all", lr=1e-4, name="fine-tune"),
    ],
    "gradual": [
        dict(epochs=3, train="head", lr=1e-3, name="head"),
        dict(epochs=2, train="top:1", lr=1e-4, name="unfreeze1"),
        dict(epochs=2, train="top:2", lr=1e-4, name="unfreeze2"),
        dict(epochs=2, train="top:3", lr=1e-4, name="unfreeze3"),
    ],
}
_SCHEDULE_KEYS = ("phase", "name", "description")


def load_schedule(preset_or_path) -> Schedule:
    """A schedule from a preset name, a TOML/JSON file, or a list of phases/dicts.

    A file holds ``[[phase]]`` tables (TOML) or ``{"phase": [{...}, ...]}`` / a bare list (JSON); each phase
    takes the fields of `Phase`. Optional top-level keys: ``name``, ``description``.

    Example TOML::

        [[phase]]
        name = "head"
        epochs = 3
        train = "head"
        lr = 1e-3

        [[phase]]
        name = "unfreeze"
        epochs = 3
        train = "top:2"
        lr = 1e-4
        schedule = "cosine"

    Args:
        preset_or_path: "lecture", "two-phase", "gradual", a ``.toml``/``.json`` path, a `Schedule`, or a list
            of `Phase` objects or dicts.

    Returns:
        A `Schedule`.

    Raises:
        ValueError: unknown preset or missing file; unknown keys or bad values, naming the phase (1-based
            index and name) and the field, e.g.
            ``phase 2 ('unfreeze'): unknown field 'lrr'; valid fields: ...``.
    """
    if isinstance(preset_or_path, Schedule):
        return Schedule(list(preset_or_path))
    if isinstance(preset_or_path, (list, tuple)):
        return _schedule_from_list(list(preset_or_path), "schedule")
    if not isinstance(preset_or_path, (str, os.PathLike)):
        raise ValueError("load_schedule takes a preset name, a path or a list of phases; got "
                         f"{preset_or_path!r}")
    text = os.fspath(preset_or_path)
    key = text.lower().replace("_", "-")
    if key in PRESETS:
        return _schedule_from_list([dict(p) for p in PRESETS[key]], f"preset {key!r}")
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"Unknown schedule {text!r}: not a preset ({', '.join(PRESETS)}) and no such file.")
    content = path.read_text()
    if path.suffix.lower() == ".toml":
        data = _parse_toml(content, path)
    elif path.suffix.lower() == ".json":
        data = _parse_json(content, path)
    else:
        try:
            data = json.loads(content)
        except ValueError:
            data = _parse_toml(content, path)
    if isinstance(data, dict):
        unknown = [k for k in data if k not in _SCHEDULE_KEYS]
        if unknown:
            valid = ", ".join(_SCHEDULE_KEYS)
            raise ValueError(f"{path}: unknown top-level key {unknown[0]!r}; valid keys: {valid} "
                             f"(phases go in [[phase]] tables)")
        if "phase" not in data:
            raise ValueError(f"{path}: no phases; add [[phase]] tables (TOML) or a \"phase\" list (JSON)")
        data = data["phase"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: 'phase' must be a list of tables; got {type(data).__name__}")
    return _schedule_from_list(data, str(path))


def _parse_toml(text, path):
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: invalid TOML: {err}") from None


def _parse_json(text, path):
    try:
        return json.loads(text)
    except ValueError as err:
        raise ValueError(f"{path}: invalid JSON: {err}") from None


def _schedule_from_list(items, where) -> Schedule:
    if not items:
        raise ValueError(f"{where}: a schedule needs at least one phase")
    phases = []
    for i, item in enumerate(items, start=1):
        if isinstance(item, Phase):
            phases.append(item)
            continue
        if not isinstance(item, dict):
            raise ValueError(f"{where}: phase {i}: expected a table of fields; got {item!r}")
        label = f"phase {i}" + (f" ({item['name']!r})" if isinstance(item.get("name"), str) else "")
        unknown = [k for k in item if k not in PHASE_FIELDS]
        if unknown:
            valid = ", ".join(PHASE_FIELDS)
            raise ValueError(f"{label}: unknown field {unknown[0]!r}; valid fields: {valid}")
        if "epochs" not in item:
            raise ValueError(f"{label}: missing field 'epochs'")
        try:
            phases.append(Phase(**item))
        except ValueError as err:
            message = str(err).split(": ", 1)[-1] if str(err).startswith("Phase") else str(err)
            raise ValueError(f"{label}: {message}") from None
    return Schedule(phases)


# ------------------------------------------------------------------------------------------------------------
# Optimizers: learning-rate schedules and per-block rates
# ------------------------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="kcnn")
class PhaseLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``rate``, then constant or cosine decay to 0 at ``total_steps``.

    ``offset`` shifts the step, so a phase resumed mid-way continues its schedule where it stopped.

    Args:
        rate: Peak learning rate.
        total_steps: Steps of the whole phase.
        warmup_steps: Steps of linear warm-up (step s uses ``rate * (s + 1) / warmup_steps``).
        decay: "constant" or "cosine".
        offset: Steps already taken before this optimizer's step 0.
    """

    def __init__(self, rate, total_steps, warmup_steps=0, decay="constant", offset=0):
        self.rate = float(rate)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.decay = decay
        self.offset = int(offset)

    def __call__(self, step):
        step = ops.cast(step, "float32") + float(self.offset)
        factor = ops.ones_like(step)
        if self.warmup_steps > 0:
            factor = ops.minimum(1.0, (step + 1.0) / float(self.warmup_steps))
        if self.decay == "cosine":
            span = float(max(1, self.total_steps - self.warmup_steps))
            progress = ops.clip((step - float(self.warmup_steps)) / span, 0.0, 1.0)
            factor = factor * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return self.rate * factor

    def value(self, step: int) -> float:
        """The rate at ``step`` (before the offset), as a Python float."""
        return float(ops.convert_to_numpy(self(step)))

    def get_config(self):
        return dict(rate=self.rate, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                    decay=self.decay, offset=self.offset)


class _LayerwiseRates:
    """Mixin: per-variable learning-rate multipliers (by variable path), applied inside ``update_step``."""

    def __init__(self, *args, lr_multipliers=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_multipliers = {str(k): float(v) for k, v in (lr_multipliers or {}).items()}
        self._multiplier_by_key = {}

    def build(self, variables):
        super().build(variables)
        self._multiplier_by_key = {self._var_key(v): self.lr_multipliers[v.path] for v in variables
                                   if getattr(v, "path", None) in self.lr_multipliers}

    def update_step(self, gradient, variable, learning_rate):
        multiplier = self._multiplier_by_key.get(self._var_key(variable), 1.0)
        if multiplier != 1.0:
            learning_rate = ops.multiply(learning_rate, multiplier)
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["lr_multipliers"] = dict(self.lr_multipliers)
        return config


@keras.saving.register_keras_serializable(package="kcnn")
class LayerwiseAdam(_LayerwiseRates, keras.optimizers.Adam):
    """Adam with per-variable learning-rate multipliers (``lr_multipliers={variable.path: factor}``)."""


@keras.saving.register_keras_serializable(package="kcnn")
class LayerwiseAdamW(_LayerwiseRates, keras.optimizers.AdamW):
    """AdamW with per-variable learning-rate multipliers (``lr_multipliers={variable.path: factor}``)."""


@keras.saving.register_keras_serializable(package="kcnn")
class LayerwiseSGD(_LayerwiseRates, keras.optimizers.SGD):
    """SGD with per-variable learning-rate multipliers (``lr_multipliers={variable.path: factor}``)."""


@keras.saving.register_keras_serializable(package="kcnn")
class LayerwiseRMSprop(_LayerwiseRates, keras.optimizers.RMSprop):
    """RMSprop with per-variable learning-rate multipliers (``lr_multipliers={variable.path: factor}``)."""


_OPTIMIZER_CLASSES = {
    "adam": (keras.optimizers.Adam, LayerwiseAdam),
    "adamw": (keras.optimizers.AdamW, LayerwiseAdamW),
    "sgd": (keras.optimizers.SGD, LayerwiseSGD),
    "rmsprop": (keras.optimizers.RMSprop, LayerwiseRMSprop),
}


def make_optimizer(phase: Phase, learning_rate=None, lr_multipliers: dict | None = None):
    """The Keras optimizer a phase asks for.

    Args:
        phase: The `Phase`.
        learning_rate: A float or schedule (default ``phase.lr``).
        lr_multipliers: ``{variable.path: factor}``; given, a ``Layerwise*`` optimizer applies them.

    Returns:
        A `keras.optimizers.Optimizer`.
    """
    stock, layerwise = _OPTIMIZER_CLASSES[phase.optimizer]
    kwargs = dict(learning_rate=phase.lr if learning_rate is None else learning_rate)
    if phase.optimizer == "adamw":
        kwargs["weight_decay"] = phase.weight_decay
    elif phase.weight_decay:
        kwargs["weight_decay"] = phase.weight_decay
    if phase.optimizer == "sgd":
        kwargs["momentum"] = phase.momentum
    optimizer = layerwise(lr_multipliers=lr_multipliers, **kwargs) if lr_multipliers else stock(**kwargs)
    if phase.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


# ------------------------------------------------------------------------------------------------------------
# Fitting a schedule
# ------------------------------------------------------------------------------------------------------------

LOSS = "sparse_categorical_crossentropy"
METRICS = ("accuracy",)
#: Cached features above this size fall back to running the backbone every epoch.
FEATURE_CACHE_LIMIT_BYTES = 2 * 1024**3


class _TrainView(keras.Model):
    """The classifier's layers called in order, with the backbone's ``training`` flag fixed at run time."""

    def __init__(self, pre, body, head, body_training: bool):
        super().__init__(name="phase_view")
        self.pre_layers = list(pre)
        self.body = body
        self.head_layers = list(head)
        self.body_training = body_training

    def call(self, inputs, training=None):
        x = inputs
        for layer in self.pre_layers:
            x = layer(x)
        x = self.body(x, training=training if self.body_training else False)
        for layer in self.head_layers:
            x = layer(x)
        return x


class _Pinned(keras.callbacks.Callback):
    """Forwards every hook to a user callback whose ``model`` stays the classifier while a view trains."""

    def __init__(self, inner, target):
        super().__init__()
        self.inner = inner
        self.target = target
        self.runner = None

    def set_model(self, model):
        self.runner = model
        self.inner.set_model(self.target)

    def set_params(self, params):
        self.inner.set_params(params)

    def _sync(self):
        if getattr(self.target, "stop_training", False) and self.runner is not None:
            self.runner.stop_training = True

    def on_train_begin(self, logs=None):
        self.target.stop_training = False
        self.inner.on_train_begin(logs)

    def on_train_end(self, logs=None):
        self.inner.on_train_end(logs)

    def on_epoch_begin(self, epoch, logs=None):
        self.inner.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self.inner.on_epoch_end(epoch, logs)
        self._sync()

    def on_train_batch_begin(self, batch, logs=None):
        self.inner.on_train_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self.inner.on_train_batch_end(batch, logs)
        self._sync()

    def on_test_begin(self, logs=None):
        self.inner.on_test_begin(logs)

    def on_test_end(self, logs=None):
        self.inner.on_test_end(logs)

    def on_test_batch_begin(self, batch, logs=None):
        self.inner.on_test_batch_begin(batch, logs)

    def on_test_batch_end(self, batch, logs=None):
        self.inner.on_test_batch_end(batch, logs)


class ScheduleHistory:
    """What `fit_schedule` returns: one record across all phases.

    Attributes:
        epochs: One dict per epoch run: ``epoch`` (1-based global number, as Keras prints it; pass the last
            one as ``initial_epoch`` to resume after it), ``phase`` (1-based), ``phase_name``, ``lr`` (the
            head's rate at the epoch's first step), ``loss``, ``accuracy`` and, with validation data,
            ``val_loss``, ``val_accuracy``.
        phases: One dict per phase: ``phase``, ``name``, ``train``, ``blocks`` (trained), ``first_epoch``,
            ``last_epoch`` (1-based, inclusive, as planned), ``epochs_run``, ``skipped`` (all its epochs were
            before ``initial_epoch``), ``cached`` (head trained on cached features), ``trainable_params``,
            ``seconds``, ``cache_seconds``.
    """

    def __init__(self, epochs=None, phases=None):
        self.epochs: list[dict] = list(epochs or [])
        self.phases: list[dict] = list(phases or [])

    @property
    def history(self) -> dict[str, list]:
        """Metric -> list over epochs, like ``keras.callbacks.History.history`` (missing values are None)."""
        keys = []
        for record in self.epochs:
            keys += [k for k in record if k not in keys]
        return {k: [record.get(k) for record in self.epochs] for k in keys}

    @property
    def epoch(self) -> list[int]:
        """0-based epoch indices, like ``keras.callbacks.History.epoch``."""
        return [record["epoch"] - 1 for record in self.epochs]

    @property
    def last_epoch(self) -> int:
        """The last finished global epoch (1-based), 0 if none ran."""
        return self.epochs[-1]["epoch"] if self.epochs else 0

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {"epochs": self.epochs, "phases": self.phases}

    @classmethod
    def from_dict(cls, data: dict) -> "ScheduleHistory":
        """Inverse of `to_dict`."""
        return cls(data.get("epochs"), data.get("phases"))

    def __len__(self):
        return len(self.epochs)

    def __repr__(self):
        return f"ScheduleHistory({len(self.epochs)} epochs, {len(self.phases)} phases)"


class _Recorder(keras.callbacks.Callback):
    """Appends one entry per epoch to the `ScheduleHistory`."""

    def __init__(self, history, number, phase, rate, first, steps):
        super().__init__()
        self.history, self.number, self.phase = history, number, phase
        self.rate, self.first, self.steps = rate, first, steps
        self.lr = None

    def on_epoch_begin(self, epoch, logs=None):
        if isinstance(self.rate, PhaseLearningRate):
            self.lr = self.rate.value((epoch - self.first) * self.steps)
        else:
            self.lr = float(self.rate)

    def on_epoch_end(self, epoch, logs=None):
        entry = {"epoch": epoch + 1, "phase": self.number, "phase_name": self.phase.name, "lr": self.lr}
        for key, value in (logs or {}).items():
            try:
                entry[key] = float(value)
            except (TypeError, ValueError):
                pass
        self.history.epochs.append(entry)


def _as_dataset(data):
    if data is None or isinstance(data, tf.data.Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) in (2, 3):
        return tf.data.Dataset.from_tensor_slices(tuple(np.asarray(a) for a in data)).batch(32)
    raise ValueError(f"Datasets must be a batched tf.data.Dataset of (images, labels) or an (x, y) tuple of "
                     f"arrays. Received: {type(data).__name__}")


def _steps_per_epoch(ds) -> int:
    count = int(ds.cardinality())
    if count == tf.data.INFINITE_CARDINALITY:
        raise ValueError("train_ds is infinite (.repeat()); fit_schedule needs a finite dataset per epoch.")
    if count == tf.data.UNKNOWN_CARDINALITY:
        count = sum(1 for _ in ds)
    if count < 1:
        raise ValueError("train_ds is empty.")
    return count


def _fmt_lr(value: float) -> str:
    mantissa, exponent = f"{value:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def _fingerprints(x: np.ndarray) -> np.ndarray:
    """Per-image (mean, position-weighted mean): equal images give equal rows; flips and crops change them."""
    flat = np.asarray(x, "float64").reshape(len(x), -1)
    weights = np.linspace(1.0, 2.0, flat.shape[1])
    return np.stack([flat.mean(axis=1), flat @ weights / flat.shape[1]], axis=1)


def _iterate_xy(batch):
    if isinstance(batch, dict) or not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ValueError("fit_schedule's datasets must yield (images, labels) or (images, labels, weights).")
    return batch[0], tuple(batch[1:])


class _FeatureCache:
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
        """Compute the features unless they are cached; returns the seconds spent."""
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
        plan, _ = _cache_plan(train_ds, augmented, self.pre, self.body, self.pool, verbose)
        if plan is None:
            self.refused = True
            return time.perf_counter() - started
        self.train = plan
        if val_ds is not None:
            feats, extras, batch_size, _ = _extract(self.pre, self.body, self.pool, val_ds, False)
            self.val = (feats, extras, batch_size, False)
        return time.perf_counter() - started

    def _estimate_bytes(self, ds) -> int:
        shape = self.body.outputs[0].shape[1:]
        per_example = shape[-1] if self.pool is not None else int(np.prod(shape))
        batch = _iterate_xy(next(iter(ds)))[0]
        return 4 * per_example * int(batch.shape[0]) * _steps_per_epoch(ds)

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
        x, rest = _iterate_xy(batch)
        feats.append(features(x).numpy())
        extras.append(tuple(np.asarray(r) for r in rest))
        sizes.append(len(feats[-1]))
        if with_fingerprints:
            prints.append(_fingerprints(np.asarray(x)))
    merged = tuple(np.concatenate([e[i] for e in extras]) for i in range(len(extras[0])))
    return np.concatenate(feats), merged, max(sizes), (np.concatenate(prints) if with_fingerprints else None)


def _data_fingerprints(ds):
    return np.concatenate([_fingerprints(np.asarray(_iterate_xy(batch)[0])) for batch in ds])


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


def lr_multipliers(model: keras.Model, backbone: Backbone, blocks, lr_mult: float) -> dict[str, float]:
    """Discriminative learning rates: ``{variable.path: lr_mult**k}`` for the variables of ``blocks``.

    k counts the backbone's blocks from the top: 1 for the deepest block, 2 for the one below it, and so on
    (Howard & Ruder 2018). The head is not listed: it trains at the phase's rate.

    Args:
        model: A `classifier` model.
        backbone: Its `Backbone`.
        blocks: Names of the trained blocks.
        lr_mult: Factor per block going down, e.g. 0.1.

    Returns:
        A dict for `make_optimizer`'s ``lr_multipliers``.

    Example:
        >>> lr_multipliers(model, bb, ["conv4", "conv5"], 0.1)["conv5_block3_3_conv/kernel"]
        0.1
    """
    _, body, _ = _parts(model)
    all_blocks = block_layers(model, backbone)
    order = [b for b, _ in all_blocks]
    unknown = [b for b in blocks if b not in order]
    if unknown:
        raise ValueError(f"unknown block {unknown[0]!r}; blocks are: {', '.join(order)}")
    layer_block = {name: block for block, names in all_blocks for name in names}
    multipliers = {}
    for layer in _body_layers(body):
        block = layer_block.get(layer.name)
        if block not in blocks:
            continue
        depth = len(order) - order.index(block)  # 1 for the deepest block
        for variable in layer.trainable_variables:
            multipliers[variable.path] = float(lr_mult) ** depth
    return multipliers


def fit_schedule(model: keras.Model, backbone: Backbone, schedule, train_ds, val_ds=None, *, callbacks=(),
                 initial_epoch: int = 0, steps_per_execution: int = perf.DEFAULT_STEPS_PER_EXECUTION,
                 verbose=1, feature_cache: bool = True, augmented: bool | None = None,
                 bn_momentum: float | None = kl.BN_MOMENTUM,
                 on_phase_end: Callable | None = None) -> ScheduleHistory:
    """Fine-tune a `classifier` through the phases of a schedule.

    Each phase is one ``fit`` with its own optimizer (loss: sparse categorical cross-entropy, metric:
    accuracy) after setting trainability: the head always trains, the phase's blocks train, every other layer
    is frozen. Epoch numbers run on across phases (phase k starts where phase k-1 was planned to end). Before
    each phase a line such as ``phase 2/3 'unfreeze': train=top:2, lr=1e-4, epochs 4-6`` is printed, after it
    a summary line.

    Feature caching: a head-only phase (with ``bn="frozen"``, or a backbone without dropout) trains the head
    on backbone features computed once (resize + preprocess + backbone over the data) through a small model
    that shares the head layers, so the classifier's head gets the trained weights. The data are read twice to
    check that they are the same images each pass (no random augmentation; if only their order changes, the
    cached features are reshuffled each epoch). Features stay valid until a phase trains backbone blocks.
    Random ``tf.data`` ops repeat exactly on every pass once a global seed is set
    (``keras.utils.set_random_seed``), so such data count as unaugmented: every epoch sees the same images.

    Args:
        model: A `classifier` model (or one loaded from its ``.keras`` file).
        backbone: The `Backbone` it was built from (block structure).
        schedule: A `Schedule`, a list of `Phase`, a preset name or a schedule file (see `load_schedule`).
        train_ds: Batched ``tf.data.Dataset`` of (raw images in [0, 255], integer labels[, sample weights]),
            or an ``(x, y)`` tuple of arrays (batched by 32). Must be finite.
        val_ds: Validation data in the same form, or None.
        callbacks: Keras callbacks. They see the full classifier as ``self.model`` in every phase (also when a
            feature-cache model is training); ``stop_training`` (EarlyStopping) ends the current phase only.
        initial_epoch: Number of global epochs already finished (resume): phases that ended by then are
            skipped; the phase containing it continues from there, its learning-rate schedule included. Load
            the weights saved at that epoch first. Optimizer state starts fresh.
        steps_per_execution: Passed to ``compile``; default `kcnn.perf.DEFAULT_STEPS_PER_EXECUTION` (16).
            1 under a strategy with several replicas (Keras' fit fails there with more).
        verbose: Keras verbosity; 0 also silences the phase lines.
        feature_cache: Allow the feature cache for head-only phases.
        augmented: True: the training data are randomly augmented (never cache); False: they are not (cache
            even if the two passes differ); None: detect.
        bn_momentum: Momentum for the BN layers that train during ``bn="train"`` phases (restored after the
            phase); None keeps each layer's own (keras.applications: 0.99, too slow for few steps).
        on_phase_end: Called after every phase as ``on_phase_end(phase_number, phase, history)`` (1-based
            number), e.g. to save weights or plots.

    Returns:
        A `ScheduleHistory`. The model is left compiled (loss, accuracy, a stock optimizer of the last phase)
        and with the trainability of the last phase.

    Example:
        >>> bb = backbone("resnet20")
        >>> model = classifier(bb, 10)
        >>> history = fit_schedule(model, bb, "two-phase", train_ds, val_ds)
        >>> history.epochs[-1]["val_accuracy"]
    """
    schedule = load_schedule(schedule)
    train_ds, val_ds = _as_dataset(train_ds), _as_dataset(val_ds)
    if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, int) or initial_epoch < 0:
        raise ValueError("`initial_epoch` must be an integer >= 0. Received: "
                         f"initial_epoch={initial_epoch!r}")
    if tf.distribute.has_strategy() and tf.distribute.get_strategy().num_replicas_in_sync > 1:
        # Keras 3.15's fit fails under MirroredStrategy with more ("You must feed a value for placeholder
        # tensor" in multi_step_on_iterator)
        steps_per_execution = 1
    pre, body, head = _parts(model)
    all_blocks = block_layers(model, backbone)
    plans = []
    for number, phase in enumerate(schedule, start=1):
        try:
            plans.append(resolve_train(phase.train, [b for b, _ in all_blocks]))
        except ValueError as err:
            raise ValueError(f"phase {number} ({phase.name!r}): {err}") from None
    steps = _steps_per_epoch(train_ds)
    history = ScheduleHistory()
    cache = _FeatureCache(pre, body, head)
    stochastic_body = any(isinstance(layer, _STOCHASTIC) for layer in _all_sublayers(body))
    last_phase = schedule[-1]
    for number, (phase, (start, end), trained) in enumerate(
            zip(schedule, schedule.boundaries(), plans), start=1):
        record = dict(phase=number, name=phase.name, train=phase.train_spec, blocks=trained,
                      first_epoch=start + 1, last_epoch=end, epochs_run=0, skipped=end <= initial_epoch,
                      cached=False, trainable_params=0, seconds=0.0, cache_seconds=0.0)
        history.phases.append(record)
        if end <= initial_epoch:
            continue
        first = max(start, initial_epoch)
        set_trainable(model, backbone, list(trained) or "head")
        record["trainable_params"] = int(sum(np.prod(v.shape) for v in model.trainable_variables))
        multipliers = None
        if phase.lr_mult is not None and trained:
            multipliers = lr_multipliers(model, backbone, trained, phase.lr_mult)
        rate = _phase_rate(phase, steps, offset=(first - start) * steps)
        use_cache = (feature_cache and not trained and augmented is not True
                     and (phase.bn == "frozen" or not stochastic_body))
        if use_cache:
            record["cache_seconds"] = cache.fill(train_ds, val_ds, augmented, verbose)
            use_cache = cache.ready
        record["cached"] = bool(use_cache)
        if verbose:
            line = _header(number, len(schedule), phase, start, end, first, multipliers, use_cache)
            print(line, flush=True)
        if use_cache:
            runner, fit_train, fit_val = cache.runner(), cache.train_dataset(), cache.val_dataset()
        else:
            runner = _TrainView(pre, body, head, body_training=phase.bn == "train")
            fit_train, fit_val = train_ds, val_ds
        optimizer = make_optimizer(phase, rate, multipliers)
        runner.compile(optimizer=optimizer, loss=LOSS, metrics=list(METRICS),
                       steps_per_execution=steps_per_execution)
        model.compile(optimizer=optimizer, loss=LOSS, metrics=list(METRICS))  # what callbacks see
        recorder = _Recorder(history, number, phase, rate, first, steps)
        started, before = time.perf_counter(), len(history.epochs)
        restore = _set_bn_momentum(body, bn_momentum) if phase.bn == "train" else {}
        try:
            runner.fit(fit_train, validation_data=fit_val, initial_epoch=first, epochs=end, verbose=verbose,
                       shuffle=False, callbacks=[recorder, *(_Pinned(c, model) for c in callbacks)])
        finally:
            for layer, momentum in restore.items():
                layer.momentum = momentum
        record["seconds"] = time.perf_counter() - started
        record["epochs_run"] = len(history.epochs) - before
        if trained or phase.bn == "train":
            cache.invalidate()
        if verbose:
            print(_summary(number, len(schedule), phase, record, history.epochs[before:]), flush=True)
        if on_phase_end is not None:
            on_phase_end(number, phase, history)
        last_phase = phase
    model.compile(optimizer=make_optimizer(last_phase), loss=LOSS, metrics=list(METRICS),
                  steps_per_execution=steps_per_execution)
    return history


_STOCHASTIC = (layers.Dropout, layers.SpatialDropout2D, layers.GaussianNoise, layers.GaussianDropout)


def _phase_rate(phase: Phase, steps: int, offset: int):
    """The learning rate of a phase: a float, or a `PhaseLearningRate` for warm-up / cosine."""
    warmup_steps = int(round(phase.warmup_epochs * steps))
    if phase.schedule == "constant" and warmup_steps == 0:
        return phase.lr
    return PhaseLearningRate(phase.lr, phase.epochs * steps, warmup_steps, phase.schedule, offset)


def _set_bn_momentum(body, momentum) -> dict:
    """Set the momentum of the trainable BN layers; returns {layer: old momentum} to restore."""
    if momentum is None:
        return {}
    old = {}
    for layer in _all_sublayers(body):
        if isinstance(layer, layers.BatchNormalization) and layer.trainable:
            old[layer] = layer.momentum
            layer.momentum = float(momentum)
    return old


def _header(number, count, phase, start, end, first, multipliers, cached) -> str:
    extras = [f"bn={phase.bn}"] if phase.bn != "frozen" else []
    if phase.schedule != "constant":
        extras.append(f"schedule={phase.schedule}")
    if phase.warmup:
        extras.append(f"warmup={phase.warmup:g}")
    if multipliers:
        extras.append(f"lr_mult={phase.lr_mult:g}")
    if first > start:
        extras.append(f"resuming after epoch {first}")
    if cached:
        extras.append("cached features")
    return (f"phase {number}/{count} {phase.name!r}: train={phase.train_spec}, lr={_fmt_lr(phase.lr)}, "
            f"epochs {start + 1}-{end}" + "".join(f", {e}" for e in extras))


def _all_sublayers(model):
    out = []
    for layer in model.layers:
        out.append(layer)
        if isinstance(layer, keras.Model):
            out.extend(_all_sublayers(layer))
    return out


def _summary(number, count, phase, record, epochs) -> str:
    text = (f"phase {number}/{count} {phase.name!r} done: {record['epochs_run']} epochs "
            f"in {record['seconds']:.1f}s")
    if not epochs:
        return text
    last = epochs[-1]
    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    metrics = ", ".join(f"{k} {last[k]:.4f}" for k in keys if k in last)
    tail = f" (features cached in {record['cache_seconds']:.1f}s)" if record["cached"] else ""
    return f"{text}: {metrics}{tail}"


__all__ = [
    "Backbone", "backbone", "classifier", "preprocess_layer", "preprocessing_mode", "PREPROCESSING",
    "block_layers", "set_trainable", "resolve_train", "lr_multipliers", "Phase", "Schedule", "PRESETS",
    "load_schedule", "fit_schedule", "ScheduleHistory", "make_optimizer", "PhaseLearningRate",
    "LayerwiseAdam", "LayerwiseAdamW", "LayerwiseSGD", "LayerwiseRMSprop", "save_checkpoint",
    "load_checkpoint", "WeightsError", "CHECKPOINT_FORMAT",
]
