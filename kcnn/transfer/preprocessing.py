"""Preprocessing modes: what each backbone expects, as a Keras layer that loads in safe mode."""
from __future__ import annotations

import keras
import numpy as np
from keras import layers

from kcnn.transfer.families import family_of
from kcnn.transfer.names import KCNN, keras_family, resolve_arch


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
    mode = check_mode(mode)
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


def check_mode(mode) -> str:
    if mode not in PREPROCESSING:
        raise ValueError(f"`preprocessing` must be one of {list(PREPROCESSING)}. Received: "
                         f"preprocessing={mode!r}")
    return mode


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
    source, arch = resolve_arch(name)
    if source == KCNN:
        return "caffe" if isinstance(weights, str) and weights == "imagenet" else "unit"
    family = family_of(arch)  # the mode is the family table's (kcnn.transfer.families)
    return family.preprocessing if family is not None else _probe_mode(arch)


def _probe_mode(arch: str) -> str:
    """The preprocessing mode of an unlisted keras.applications family, probed via its preprocess_input."""
    module = getattr(keras.applications, keras_family(arch), None)
    probe = np.array([[[[0.0, 100.0, 255.0]]]], "float32")
    if module is None or not hasattr(module, "preprocess_input"):
        return "none"
    got = np.asarray(module.preprocess_input(probe.copy()))
    for mode in ("caffe", "tf", "torch", "unit", "none"):
        if np.allclose(np.asarray(preprocess_layer(mode)(probe)), got, atol=1e-4):
            return mode
    raise ValueError(f"Cannot tell the preprocessing of {arch}; pass preprocessing=... "
                     f"({list(PREPROCESSING)})")
