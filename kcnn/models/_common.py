"""Argument handling shared by every builder: input shape, weights, and the kcnn options."""
from __future__ import annotations

import keras

from kcnn import layers as kl
from kcnn import weights as kw


def make_input(arch: str, input_shape, default_shape, min_size: int, input_tensor=None):
    """Validate ``input_shape`` (H, W, C) and return the model input tensor."""
    if input_tensor is not None:
        return input_tensor, input_tensor
    shape = tuple(default_shape if input_shape is None else input_shape)
    if len(shape) != 3:
        raise ValueError(f"{arch}: input_shape must be (height, width, channels). Received: input_shape={shape}")
    for size in shape[:2]:
        if size is not None and size < min_size:
            raise ValueError(
                f"{arch} needs inputs of at least {min_size}x{min_size} pixels (it downsamples by "
                f"{min_size}). Received: input_shape={shape}"
            )
    inputs = keras.Input(shape=shape, name="input_layer")
    return inputs, inputs


def check_options(arch: str, *, classes, weights, include_top, kcnn_options: dict, imagenet_ok: bool,
                  stock_classes: int = 1000):
    """Validate classes / weights / kcnn options at the boundary (errors end in ``Received: ...``)."""
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"`classes` must be an integer >= 1. Received: classes={classes!r}")
    kl.check_choice("norm", kcnn_options.get("norm"), kl.NORMS)
    kl.check_choice("head", kcnn_options.get("head"), kl.HEADS)
    kl.check_rate("dropout", kcnn_options.get("dropout"))
    kl.check_rate("spatial_dropout", kcnn_options.get("spatial_dropout"))
    if isinstance(weights, str) and weights == "imagenet":
        if not imagenet_ok:
            raise ValueError(
                f"weights='imagenet' exists for {sorted(kw.IMAGENET_FILES)} in their stock configuration only; "
                f"{arch} with these options has none. Received: weights='imagenet'"
            )
        if include_top and classes != stock_classes:
            raise ValueError(
                "weights='imagenet' with include_top=True needs classes=1000; use include_top=False for a new "
                f"classifier. Received: classes={classes}"
            )


def finish(inputs, outputs, name: str, arch: str, weights, include_top: bool) -> keras.Model:
    model = keras.Model(inputs, outputs, name=name)
    return kw.load_into(model, weights, arch, include_top)
