"""VGG11/13/16/19 (Simonyan & Zisserman 2014, configurations A/B/D/E), optionally with batch norm, and
``vgg_cifar``, the same design scaled to 32-px images.

Without kcnn options the layer names (``block1_conv1`` ... ``fc1``, ``fc2``, ``predictions``) and weight order equal
keras.applications' VGG16/VGG19, so its ImageNet files load unchanged.

Reference: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", 2014.
"""
from __future__ import annotations

from kcnn import layers as kl
from kcnn.models._common import check_options, document, finish, make_input
from kcnn.registry import ModelSpec, register_model

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

VGG_SPEC = ModelSpec(family="vgg", default_input_shape=(224, 224, 3), min_size=32, default_classes=1000,
                     blocks=BLOCKS)
VGG_CIFAR_SPEC = ModelSpec(family="vgg_cifar", default_input_shape=(32, 32, 3), min_size=8,
                           default_classes=10, blocks=CIFAR_BLOCKS)

_VGG_OPTIONS = """
    norm: None (the paper) or "batch" (batch norm after every conv).
    spatial_dropout: SpatialDropout2D rate after every conv.
    dropout: Dropout rate after the hidden fully connected layers.
    head: "dense" (Flatten + fc1/fc2, as in the paper), "gap" or "conv".
    fc_units: Hidden fully connected widths.
    downsample: "max" (the paper) or "conv" (a learned 2x2 stride-2 conv instead of each pool).
"""
_VGG_EXAMPLE = "kcnn.models.{name}(input_shape=(64, 64, 3), classes=10, norm=\"batch\")"


def _vgg(arch, spec, *, config, widths, include_top, weights, input_tensor, input_shape, pooling, classes,
         classifier_activation, name, norm, spatial_dropout, dropout, head, fc_units, downsample):
    stock = norm is None and not spatial_dropout and not dropout and head == "dense" and downsample == "max" \
        and tuple(fc_units) == (4096, 4096)
    check_options(arch, classes=classes, weights=weights, include_top=include_top, imagenet_ok=stock and arch in (
        "vgg16", "vgg19"), kcnn_options=dict(norm=norm, spatial_dropout=spatial_dropout, dropout=dropout, head=head))
    kl.check_choice("downsample", downsample, ("max", "conv"))
    inputs, x = make_input(arch, spec, input_shape, input_tensor)
    for b, (convs, width) in enumerate(zip(config, widths), start=1):
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


def _imagenet_vgg(arch, **kwargs):
    return _vgg(arch, VGG_SPEC, config=VGG_CONFIGS[arch], widths=WIDTHS, **kwargs)


@register_model(VGG_SPEC)
@document(VGG_SPEC, _VGG_OPTIONS, _VGG_EXAMPLE)
def vgg11(*, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
          classes=VGG_SPEC.default_classes, classifier_activation="softmax", name=None, norm=None,
          spatial_dropout=0.0, dropout=0.0, head="dense", fc_units=(4096, 4096), downsample="max"):
    """VGG11 (configuration A): 8 3x3 convolutions in five blocks (1, 1, 2, 2, 2), each ending in a 2x2 max
    pool, then two 4096-unit fully connected layers."""
    return _imagenet_vgg("vgg11", **locals())  # every parameter above, by name


@register_model(VGG_SPEC)
@document(VGG_SPEC, _VGG_OPTIONS, _VGG_EXAMPLE)
def vgg13(*, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
          classes=VGG_SPEC.default_classes, classifier_activation="softmax", name=None, norm=None,
          spatial_dropout=0.0, dropout=0.0, head="dense", fc_units=(4096, 4096), downsample="max"):
    """VGG13 (configuration B): 10 3x3 convolutions in five blocks (2, 2, 2, 2, 2), each ending in a 2x2 max
    pool, then two 4096-unit fully connected layers."""
    return _imagenet_vgg("vgg13", **locals())  # every parameter above, by name


@register_model(VGG_SPEC)
@document(VGG_SPEC, _VGG_OPTIONS, _VGG_EXAMPLE)
def vgg16(*, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
          classes=VGG_SPEC.default_classes, classifier_activation="softmax", name=None, norm=None,
          spatial_dropout=0.0, dropout=0.0, head="dense", fc_units=(4096, 4096), downsample="max"):
    """VGG16 (configuration D): 13 3x3 convolutions in five blocks (2, 2, 3, 3, 3), each ending in a 2x2 max
    pool, then two 4096-unit fully connected layers; 138,357,544 parameters, as keras.applications.VGG16."""
    return _imagenet_vgg("vgg16", **locals())  # every parameter above, by name


@register_model(VGG_SPEC)
@document(VGG_SPEC, _VGG_OPTIONS, _VGG_EXAMPLE)
def vgg19(*, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
          classes=VGG_SPEC.default_classes, classifier_activation="softmax", name=None, norm=None,
          spatial_dropout=0.0, dropout=0.0, head="dense", fc_units=(4096, 4096), downsample="max"):
    """VGG19 (configuration E): 16 3x3 convolutions in five blocks (2, 2, 4, 4, 4), each ending in a 2x2 max
    pool, then two 4096-unit fully connected layers, as keras.applications.VGG19."""
    return _imagenet_vgg("vgg19", **locals())  # every parameter above, by name


@register_model(VGG_CIFAR_SPEC)
@document(VGG_CIFAR_SPEC, """
    norm: "batch" (default) or None.
    spatial_dropout: SpatialDropout2D rate after every conv.
    dropout: Dropout rate after the hidden fully connected layers.
    head: "gap" (default), "dense" (Flatten + hidden layers) or "conv".
    fc_units: Hidden fully connected widths (default none).
    downsample: "max" or "conv" (a learned 2x2 stride-2 conv instead of each pool).
""", 'kcnn.build("{name}", input_shape=(32, 32, 3), classes=10)')
def vgg_cifar(*, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
              classes=VGG_CIFAR_SPEC.default_classes, classifier_activation="softmax", name=None,
              norm="batch", spatial_dropout=0.0, dropout=0.0, head="gap", fc_units=(), downsample="max"):
    """A VGG for 32-px images: three blocks of two 3x3 convolutions (32, 64, 128 filters) each followed by batch
    norm and ReLU, then a 2x2 max pool; global average pooling and one dense layer.

    6 convolutions, 288,746 trainable parameters at 10 classes; 38.6 M MACs per 32-px image, as many as ResNet-20.
    It is the VGG design (stacked 3x3 convolutions, widths doubling as the resolution halves) at the scale of the
    CIFAR and digits images, and the offline demo's backbone: on 2 labelled digits per class, pretraining on
    kcnn's synthetic glyphs beats training it from scratch (README, "The demo's results").
    """
    return _vgg("vgg_cifar", VGG_CIFAR_SPEC, config=CIFAR_CONFIG, widths=CIFAR_WIDTHS, **locals())
