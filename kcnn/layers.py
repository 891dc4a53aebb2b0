"""The two building blocks every kcnn family is made of, and kcnn's own layers.

`conv_block` (conv -> norm -> activation -> spatial dropout) and `classifier_head` are the only places where
batch norm, SpatialDropout2D and head options are applied, so every family gets them the same way.
`DropPath` (stochastic depth) drops whole residual branches.
"""
from __future__ import annotations

import keras
from keras import layers, ops

from kcnn import perf as _perf  # registers kcnn's fused batch norm: `import kcnn` then loads .keras files

#: Batch-norm momentum for kcnn's own nets. With Keras' default (0.99) the moving statistics keep
#: 0.99^100 = 0.37 of their initial values after 100 steps, so a briefly trained model evaluates near chance;
#: with 0.9 they converge in about 50 steps.
BN_MOMENTUM = 0.9
#: keras.applications' ResNet epsilon; kcnn uses it everywhere so weights port without a numeric shift.
BN_EPSILON = 1.001e-5

from kcnn.options import HEADS, NORMS  # noqa: E402,F401  (their home is kcnn.options)
POOLINGS = (None, "avg", "max")


def check_rate(name: str, value) -> float:
    """Validate a dropout-style rate in [0, 1)."""
    try:
        rate = float(value or 0.0)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a number in [0, 1). Received: {name}={value!r}") from None
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1). Received: {name}={value!r}")
    return rate


def check_choice(name: str, value, choices) -> object:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}. Received: {name}={value!r}")
    return value


def batch_norm(name: str, momentum: float = BN_MOMENTUM, epsilon: float = BN_EPSILON) -> layers.Layer:
    """The batch-norm layer kcnn uses (spatial batch norm: per-channel statistics over N x H x W).

    A `kcnn.perf.FusedBatchNormalization` (Keras' layer computed by TensorFlow's fused kernel; same weights,
    names and config), or Keras' own layer after ``kcnn.perf.use_fused_batch_norm(False)``.
    """
    return _perf.batch_norm_class()(axis=-1, momentum=momentum, epsilon=epsilon, name=name)


def conv_block(
    x,
    filters: int,
    kernel_size=3,
    strides=1,
    *,
    name: str,
    padding: str = "same",
    norm: str | None = None,
    activation: str | None = "relu",
    spatial_dropout: float = 0.0,
    use_bias: bool | None = None,
    conv_name: str | None = None,
    pad: int | tuple | None = None,
):
    """Conv -> norm -> activation -> spatial dropout, with stable hierarchical names.

    Without a norm and without dropout the activation is fused into the Conv2D (as keras.applications' VGG does),
    so layer names and weights equal keras.applications. Otherwise the layers are named ``{name}_conv``,
    ``{name}_bn``, ``{name}_relu`` and ``{name}_sdrop`` (keras.applications' ResNet naming).

    Args:
        x: Input tensor (channels last).
        filters: Output channels.
        kernel_size: Kernel size (int or pair).
        strides: Stride (int or pair).
        name: Base name of the block.
        padding: "same" or "valid".
        norm: None or "batch".
        activation: Activation name, or None for a linear conv (e.g. before a residual add).
        spatial_dropout: Rate of SpatialDropout2D (drops whole feature maps) after the activation.
        use_bias: Conv bias; defaults to True without norm and False with it.
        conv_name: Name of the Conv2D (default ``{name}_conv``).
        pad: Explicit symmetric zero padding before the conv (PyTorch-style), applied as ``{name}_pad``.

    Returns:
        The output tensor.
    """
    check_choice("norm", norm, NORMS)
    rate = check_rate("spatial_dropout", spatial_dropout)
    if use_bias is None:
        use_bias = norm is None
    if pad:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    fused = norm is None and not rate and conv_name is not None
    x = layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias,
        activation=activation if fused else None, name=conv_name or f"{name}_conv",
    )(x)
    if fused:
        return x
    if norm == "batch":
        x = batch_norm(f"{name}_bn")(x)
    if activation is not None:
        x = layers.Activation(activation, name=f"{name}_relu" if activation == "relu" else f"{name}_act")(x)
    if rate:
        x = layers.SpatialDropout2D(rate, name=f"{name}_sdrop")(x)
    return x


def classifier_head(
    x,
    classes: int,
    *,
    include_top: bool = True,
    pooling: str | None = None,
    head: str = "gap",
    fc_units=(),
    dropout: float = 0.0,
    classifier_activation: str | None = "softmax",
    classifier_initializer="glorot_uniform",
):
    """The one classifier head of every kcnn family.

    heads:
      * ``"dense"``: Flatten -> fully connected layers (``fc1``, ``fc2``, ...) -> ``predictions`` (VGG).
      * ``"gap"``: global average pooling (``avg_pool``) -> fully connected layers -> ``predictions`` (ResNet).
      * ``"conv"``: the fully connected layers as convolutions: the first one's kernel covers the whole feature
        map (valid padding, 1x1 output at the built size), later ones are 1x1; the class-score map is then
        globally averaged (``avg_pool``) and activated (``predictions``). At the built size this computes exactly
        what ``"dense"`` computes; on larger inputs it averages the sliding-window class scores. With no hidden
        layers the classifier is a 1x1 conv followed by global average pooling (All-CNN).

    Without the top, ``pooling`` is None (the feature map), "avg" or "max".

    Args:
        x: Feature map.
        classes: Number of classes (>= 1).
        include_top: Whether to add the classifier.
        pooling: Pooling for ``include_top=False``.
        head: One of "dense", "gap", "conv".
        fc_units: Widths of the hidden fully connected layers, e.g. (4096, 4096) for VGG.
        dropout: Dropout rate after each hidden fully connected layer.
        classifier_activation: Activation of the last layer (None for logits).
        classifier_initializer: Kernel initializer of the last layer (``predictions`` or ``predictions_conv``),
            e.g. "zeros" for a new head on a pretrained backbone (`kcnn.transfer.classifier`).

    Returns:
        The output tensor.
    """
    check_choice("head", head, HEADS)
    check_choice("pooling", pooling, POOLINGS)
    rate = check_rate("dropout", dropout)
    if not include_top:
        if pooling == "avg":
            return layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if pooling == "max":
            return layers.GlobalMaxPooling2D(name="max_pool")(x)
        return x
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"`classes` must be an integer >= 1. Received: classes={classes!r}")
    fc_units = tuple(fc_units or ())
    if head == "conv":
        h, w = x.shape[1], x.shape[2]
        for i, units in enumerate(fc_units):
            if i == 0 and (h is None or w is None):
                raise ValueError(
                    "head='conv' with hidden layers needs a known feature-map size to size the first kernel; "
                    f"pass a fixed input_shape. Received: feature map shape={tuple(x.shape)}"
                )
            kernel = (h, w) if i == 0 else (1, 1)
            x = layers.Conv2D(units, kernel, padding="valid", activation="relu", name=f"fc{i + 1}")(x)
            if rate:
                x = layers.Dropout(rate, name=f"fc{i + 1}_dropout")(x)
        x = layers.Conv2D(classes, 1, kernel_initializer=classifier_initializer, name="predictions_conv")(x)
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        return layers.Activation(classifier_activation or "linear", name="predictions", **_output_dtype())(x)
    if head == "dense":
        if None in tuple(x.shape[1:]):
            raise ValueError(
                "head='dense' flattens the feature map and needs a fixed input size; pass input_shape with a "
                f"height and width, or use head='gap' or head='conv'. Received: feature map shape={tuple(x.shape)}"
            )
        x = layers.Flatten(name="flatten")(x)
    else:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    for i, units in enumerate(fc_units):
        x = layers.Dense(units, activation="relu", name=f"fc{i + 1}")(x)
        if rate:
            x = layers.Dropout(rate, name=f"fc{i + 1}_dropout")(x)
    return layers.Dense(classes, activation=classifier_activation, kernel_initializer=classifier_initializer,
                        name="predictions", **_output_dtype())(x)


def _output_dtype() -> dict:
    """Under a mixed-precision policy the class scores are computed in float32 (softmax and the loss need the
    range and resolution bfloat16/float16 lack); under float32 the layer keeps Keras' default."""
    import keras

    return {"dtype": "float32"} if keras.mixed_precision.global_policy().name.startswith("mixed_") else {}


@keras.saving.register_keras_serializable(package="kcnn")
class DropPath(layers.Layer):
    """Stochastic depth: drop a residual branch per example (Huang et al. 2016, "Deep Networks with
    Stochastic Depth").

    At training time each example's input is zeroed with probability ``rate`` and otherwise scaled by
    ``1 / (1 - rate)``, so its expectation is unchanged; at inference (or with rate 0) it is the identity.
    Apply it to the residual branch before the addition. The random numbers come from the layer's own
    `keras.random.SeedGenerator`, whose state is one of ``model.variables`` (saved by kcnn's checkpoints).

    Args:
        rate: Drop probability in [0, 1).
        seed: Seed of the layer's seed generator (None: drawn from Keras' global seed).
        **kwargs: Layer arguments (name, dtype, ...).

    Example:
        >>> y = kcnn.layers.DropPath(0.1, name="conv2_block1_drop_path")(branch)
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = check_rate("rate", rate)
        self.seed = seed
        if self.rate > 0:
            self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        keep = 1.0 - self.rate
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(shape, dtype="float32", seed=self.seed_generator)
        scale = ops.cast(noise >= self.rate, "float32") * (1.0 / keep)  # 0 or 1 / keep, per example
        return inputs * ops.cast(scale, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def drop_path_rates(drop_path_rate: float, blocks: int) -> list[float]:
    """Per-block DropPath rates, linear over depth: block i of n (0-based) gets
    ``drop_path_rate * i / (n - 1)``, so the first block gets 0 and the last ``drop_path_rate`` (timm's
    convention; Huang et al. count from 1 and give the first block a rate above 0).
    """
    rate = check_rate("drop_path_rate", drop_path_rate)
    return [rate * i / max(blocks - 1, 1) for i in range(blocks)]


def zero_pad_shortcut(x, filters: int, strides: int, name: str):
    """He et al.'s option-A shortcut: subsample by the stride and zero-pad the new channels.

    Built from stock layers (no Lambda, so `.keras` files load in safe mode): a 1x1 max pool with the stride
    subsamples; the missing channels are the subsampled input scaled by zero, concatenated on the channel axis.
    """
    in_channels = x.shape[-1]
    if strides != 1:
        x = layers.MaxPooling2D(1, strides=strides, name=f"{name}_subsample")(x)
    missing = filters - in_channels
    if missing <= 0:
        return x
    if missing != in_channels:
        raise ValueError(f"option-A shortcut doubles channels only; got {in_channels} -> {filters} in {name}")
    zeros = layers.Rescaling(0.0, name=f"{name}_zeros")(x)
    return layers.Concatenate(axis=-1, name=f"{name}_zeropad")([x, zeros])


__all__ = ["conv_block", "classifier_head", "batch_norm", "zero_pad_shortcut", "DropPath", "drop_path_rates",
           "BN_MOMENTUM"]
