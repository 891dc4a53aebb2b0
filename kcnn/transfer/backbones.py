"""`Backbone`, `backbone()` (keras.applications, kcnn registry or checkpoint) and `classifier()`."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers

from kcnn import layers as kl
from kcnn import perf
from kcnn import weights as kw
from kcnn.registry import get_entry
from kcnn.transfer.blocks import group_blocks
from kcnn.transfer.checkpoint import checkpoint_body, find_checkpoint_dir, load_checkpoint
from kcnn.transfer.names import KCNN, check_shape, min_size_of, resolve_arch, short_name
from kcnn.transfer.preprocessing import check_mode, preprocess_layer, preprocessing_mode
from kcnn.weights import WeightsError


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
    checkpoint = find_checkpoint_dir(weights)
    if checkpoint is not None:
        return _backbone_from_checkpoint(name, checkpoint, input_shape, preprocessing)
    if name is None:
        raise ValueError("`name` is required unless `weights` is a kcnn checkpoint directory. Received: "
                         "name=None")
    source, arch = resolve_arch(name)
    min_size = min_size_of(source, arch)
    if input_shape is None:
        input_shape = get_entry(arch).default_input_shape if source == KCNN else (224, 224, 3)
    shape = check_shape(arch, input_shape, min_size)
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
        model = perf.fuse_batch_norm(model)  # Keras' own batch norm took 29% of a ResNet-50 step (README)
        mode = preprocessing or preprocessing_mode(arch)
    mode = check_mode(mode)
    return Backbone(name=arch, model=model, preprocess=preprocess_layer(mode),
                    blocks=group_blocks(model, source, arch),
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
            f"ImageNet weights for {arch} are not cached and could not be downloaded ({short_name(text)}). "
            f"Put {fname} (from {url}) into {kw.keras_cache_dir()}, or pass weights=PATH to a local copy."
        ) from None


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


def _backbone_from_checkpoint(name, directory: Path, input_shape, preprocessing) -> Backbone:
    saved, meta = load_checkpoint(directory)
    source, arch = resolve_arch(meta.get("arch"))
    if name is not None:
        _, wanted = resolve_arch(name)
        if wanted.lower() != arch.lower():
            raise WeightsError(f"Checkpoint {directory} holds a {arch}, not a {wanted}. Pass name=None or "
                               f"name={arch!r}. Received: name={name!r}")
    min_size = min_size_of(source, arch)
    body = checkpoint_body(saved)
    saved_shape = tuple(body.inputs[0].shape[1:])
    wanted_shape = input_shape if input_shape is not None else meta.get("input_shape", saved_shape)
    shape = check_shape(arch, wanted_shape, min_size)
    if tuple(shape) != saved_shape:
        body = _rebuild(body, shape)
    body.trainable = True
    mode = check_mode(preprocessing or meta.get("preprocessing", "unit"))
    return Backbone(name=arch, model=body, preprocess=preprocess_layer(mode),
                    blocks=group_blocks(body, source, arch),
                    min_size=min_size, input_shape=shape, preprocessing=mode, source=source,
                    weights=os.fspath(directory))


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
        check_shape(backbone.name, (*size, channels), backbone.min_size)
        if size != (height, width):
            body = _rebuild(body, (*size, channels))
        height, width = size
    if height is None or width is None:
        raise ValueError(f"The backbone has no fixed input size; pass image_size=. "
                         f"Received: input_shape={backbone.input_shape}")
    body.trainable = False
    inputs = keras.Input((None, None, channels), name="image")
    # training=False: Resizing's call defaults to training=True, and the first layer of a functional model that
    # resolves `training` sets it for every later layer, so `model(x)` (and a served export) would run batch
    # norm in training mode once the backbone is trainable. fit's training=True still overrides it.
    x = layers.Resizing(height, width, interpolation="bilinear", name="resize")(inputs, training=False)
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
