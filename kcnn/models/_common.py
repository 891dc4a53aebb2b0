"""Argument handling shared by every builder: input shape, weights, the kcnn options and the docstrings."""
from __future__ import annotations

import inspect

import keras

from kcnn import layers as kl
from kcnn import weights as kw


def make_input(arch: str, spec, input_shape, input_tensor=None):
    """Validate ``input_shape`` (H, W, C) against ``spec`` and return the model input tensor."""
    if input_tensor is not None:
        return input_tensor, input_tensor
    min_size = spec.min_size
    shape = tuple(spec.default_input_shape if input_shape is None else input_shape)
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


# The keras.applications arguments every builder takes, documented once; filled in from the builder's spec.
_KERAS_ARGS = """Args:
    include_top: Whether to include the classifier head.
    weights: None (random initialisation) or the path of a weights file (.h5, .weights.h5, .keras).{imagenet}
    input_tensor: Optional Keras tensor (e.g. the output of ``keras.Input``) to use as the model input.
    input_shape: (height, width, channels); default {shape}. Height and width are at least {min_size}
        pixels, or None for any size (not with head="dense").
    pooling: With include_top=False: None (the last feature map), "avg" or "max" (global pooling).
    classes: Number of classes (default {classes}).
    classifier_activation: Activation of the last layer ("softmax", or None for logits).
    name: Model name (default "{name}")."""


def document(spec, options: str, example: str):
    """Decorator: complete a builder's docstring with its Args, Returns and Example sections.

    The keras.applications arguments are documented here once, their defaults filled in from ``spec``;
    ``options`` documents the family's kcnn options, written as they appear under "Args:" (entries indented by
    4 spaces, continuation lines by 8). ``example`` is a call such as ``"kcnn.models.{name}(classes=10)"``.
    """

    def wrap(fn):
        fields = dict(name=fn.__name__, shape=spec.default_input_shape, min_size=spec.min_size,
                      classes=spec.default_classes,
                      imagenet=('\n        "imagenet": keras.applications\' published ImageNet weights (stock '
                                'options only).' if fn.__name__ in kw.IMAGENET_FILES else ""))
        fn.__doc__ = "\n\n".join([
            inspect.cleandoc(fn.__doc__ or fn.__name__),
            _KERAS_ARGS.format(**fields) + "\n" + options.strip("\n"),
            "Returns:\n    A keras.Model.",
            f"Example:\n    >>> model = {example.format(**fields)}",
        ]) + "\n"
        return fn

    return wrap
