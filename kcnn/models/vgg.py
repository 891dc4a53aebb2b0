"""VGG11/13/16/19 (Simonyan & Zisserman 2014, configurations A/B/D/E), optionally with batch norm, and
``vgg_cifar``, the same design scaled to 32-px images.

Without kcnn options the layer names (``block1_conv1`` ... ``fc1``, ``fc2``, ``predictions``) and weight order equal
keras.applications' VGG16/VGG19, so its ImageNet files load unchanged.
"""
from __future__ import annotations

from kcnn import layers as kl
from kcnn.models._common import check_options, finish, make_input
from kcnn.registry import register_model

#: Convolutions per block (64, 128, 256, 512, 512 filters); each block ends in a 2x2 max pool.
VGG_CONFIGS = {
    "vgg11": (1, 1, 2, 2, 2),  # A
    "vgg13": (2, 2, 2, 2, 2),  # B
    "vgg16": (2, 2, 3, 3, 3),  # D
    "vgg19": (2, 2, 4, 4, 4),  # E
}
WIDTHS = (64, 128, 256, 512, 512)
BLOCKS = ("block1", "block2", "block3", "block4", "block5")


#: vgg_cifar: convolutions per block and their widths.
CIFAR_CONFIG = (2, 2, 2)
CIFAR_WIDTHS = (32, 64, 128)
CIFAR_BLOCKS = ("block1", "block2", "block3")


def _vgg(arch, *, input_shape=None, classes=1000, include_top=True, pooling=None, classifier_activation="softmax",
         weights=None, name=None, norm=None, spatial_dropout=0.0, dropout=0.0, head="dense", fc_units=(4096, 4096),
         downsample="max", input_tensor=None, config=None, widths=WIDTHS, default_shape=(224, 224, 3),
         min_size=32):
    stock = norm is None and not spatial_dropout and not dropout and head == "dense" and downsample == "max" \
        and tuple(fc_units) == (4096, 4096)
    check_options(arch, classes=classes, weights=weights, include_top=include_top, imagenet_ok=stock and arch in (
        "vgg16", "vgg19"), kcnn_options=dict(norm=norm, spatial_dropout=spatial_dropout, dropout=dropout, head=head))
    kl.check_choice("downsample", downsample, ("max", "conv"))
    inputs, x = make_input(arch, input_shape, default_shape, min_size, input_tensor)
    for b, (convs, width) in enumerate(zip(config or VGG_CONFIGS[arch], widths), start=1):
        for c in range(1, convs + 1):
            x = kl.conv_block(x, width, 3, name=f"block{b}_conv{c}", conv_name=f"block{b}_conv{c}", norm=norm,
                              spatial_dropout=spatial_dropout)
        if downsample == "max":
            x = kl.layers.MaxPooling2D(2, strides=2, name=f"block{b}_pool")(x)
        else:  # the All-CNN idea: a learned 2x2 stride-2 convolution replaces the pool
            x = kl.conv_block(x, width, 2, 2, name=f"block{b}_pool", conv_name=f"block{b}_pool", norm=norm)
    x = kl.classifier_head(x, classes, include_top=include_top, pooling=pooling, head=head, fc_units=fc_units,
                           dropout=dropout, classifier_activation=classifier_activation)
    return finish(inputs, x, name or arch, arch, weights, include_top)


def _entry(arch):
    def builder(**kwargs):
        return _vgg(arch, **kwargs)

    builder.__name__ = arch
    builder.__doc__ = f"""{arch.upper()} (VGG configuration {"ABDE"["vgg11 vgg13 vgg16 vgg19".split().index(arch)]}).

    Args:
        input_shape: (H, W, C), default (224, 224, 3); any size >= 32 px.
        classes: Number of classes (default 1000).
        include_top: Whether to include the classifier head.
        pooling: None | "avg" | "max" when include_top=False.
        classifier_activation: Activation of the last layer.
        weights: None, "imagenet" (vgg16/vgg19, stock configuration) or a weights file path.
        name: Model name.
        norm: None or "batch" (batch norm after every conv).
        spatial_dropout: SpatialDropout2D rate after every conv.
        dropout: Dropout after the hidden fully connected layers.
        head: "dense" (Flatten + fc1/fc2, as in the paper), "gap" or "conv".
        fc_units: Hidden fully connected widths (default (4096, 4096)).
        downsample: "max" (the paper) or "conv" (a learned 2x2 stride-2 conv instead of each pool).

    Returns:
        A keras.Model.

    Example:
        >>> model = kcnn.models.{arch}(input_shape=(64, 64, 3), classes=10, norm="batch")

    Reference: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", 2014.
    """
    return register_model(family="vgg", default_input_shape=(224, 224, 3), min_size=32, default_classes=1000,
                          blocks=BLOCKS)(builder)


vgg11 = _entry("vgg11")
vgg13 = _entry("vgg13")
vgg16 = _entry("vgg16")
vgg19 = _entry("vgg19")


@register_model(family="vgg_cifar", default_input_shape=(32, 32, 3), min_size=8, default_classes=10,
                blocks=CIFAR_BLOCKS)
def vgg_cifar(*, input_shape=None, classes=10, include_top=True, pooling=None, classifier_activation="softmax",
              weights=None, name=None, norm="batch", spatial_dropout=0.0, dropout=0.0, head="gap", fc_units=(),
              downsample="max", input_tensor=None):
    """A VGG for 32-px images: three blocks of two 3x3 convolutions (32, 64, 128 filters) each followed by batch
    norm and ReLU, then a 2x2 max pool; global average pooling and one dense layer.

    6 convolutions, 288,746 trainable parameters at 10 classes; 38.6 M MACs per 32-px image, as many as ResNet-20.
    It is the VGG design (stacked 3x3 convolutions, widths doubling as the resolution halves) at the scale of the
    CIFAR and digits images, and the offline demo's backbone: on 2 labelled digits per class, pretraining on
    kcnn's synthetic glyphs beats training it from scratch (README, "The demo's results").

    Args:
        input_shape: (H, W, C), default (32, 32, 3); any size >= 8 px.
        classes: Number of classes (default 10).
        include_top: Whether to include the classifier head.
        pooling: None | "avg" | "max" when include_top=False.
        classifier_activation: Activation of the last layer.
        weights: None or a weights file path.
        name: Model name.
        norm: "batch" (default) or None.
        spatial_dropout: SpatialDropout2D rate after every conv.
        dropout: Dropout after the hidden fully connected layers.
        head: "gap" (default), "dense" (Flatten + hidden layers) or "conv".
        fc_units: Hidden fully connected widths (default none).
        downsample: "max" or "conv" (a learned 2x2 stride-2 conv instead of each pool).

    Returns:
        A keras.Model.

    Example:
        >>> model = kcnn.build("vgg_cifar", input_shape=(32, 32, 3), classes=10)
    """
    return _vgg("vgg_cifar", input_shape=input_shape, classes=classes, include_top=include_top, pooling=pooling,
                classifier_activation=classifier_activation, weights=weights, name=name, norm=norm,
                spatial_dropout=spatial_dropout, dropout=dropout, head=head, fc_units=fc_units,
                downsample=downsample, input_tensor=input_tensor, config=CIFAR_CONFIG, widths=CIFAR_WIDTHS,
                default_shape=(32, 32, 3), min_size=8)
