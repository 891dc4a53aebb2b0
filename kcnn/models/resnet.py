"""ResNets (He et al. 2015): ImageNet ResNet-18/34/50/101/152 and CIFAR ResNet-20/32/44/56/110.

* ResNet-50/101/152 without kcnn options reproduce keras.applications' ResNet50/101/152 (v1, conv biases):
  same parameter count, layer names (``conv4_block3_2_bn``) and weight order, so its ImageNet files load.
* ResNet-18/34 follow torchvision's parameterisation: bias-free convs + batch norm, symmetric padding.
* CIFAR ResNets follow section 4.2 of the paper: a 3x3 stem, three stages of 16/32/64 filters with
  (depth - 2) / 6 basic blocks each, shortcut option "A" (zero-padded identity, the paper's default) or "B"
  (1x1 projection when the shape changes).

Reference: He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (arXiv:1512.03385).
"""
from __future__ import annotations

from kcnn import layers as kl
from kcnn.models._common import check_options, document, finish, make_input
from kcnn.registry import ModelSpec, register_model

#: ImageNet ResNets: block type and blocks per stage (conv2..conv5).
IMAGENET_RESNETS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
#: CIFAR ResNets: depth -> basic blocks per stage, n = (depth - 2) / 6.
CIFAR_RESNETS = {f"resnet{d}": (d - 2) // 6 for d in (20, 32, 44, 56, 110)}


RESNET_SPEC = ModelSpec(family="resnet", default_input_shape=(224, 224, 3), min_size=32, default_classes=1000,
                        blocks=("conv1", "conv2", "conv3", "conv4", "conv5"))
CIFAR_RESNET_SPEC = ModelSpec(family="cifar_resnet", default_input_shape=(32, 32, 3), min_size=8,
                              default_classes=10, blocks=("conv1", "conv2", "conv3", "conv4"))

_OPTIONS = """
    norm: "batch" (default) or None.
    spatial_dropout: SpatialDropout2D rate after each activated conv inside the blocks.
    dropout: Dropout rate after the hidden fully connected layers of the head.
    head: "gap" (default), "dense" or "conv".
    fc_units: Hidden fully connected widths (default none).
    drop_path_rate: Stochastic depth (`kcnn.layers.DropPath` on each residual branch), in [0, 1): block i
        of n gets ``drop_path_rate * i / (n - 1)``, the first 0 and the last ``drop_path_rate``; 0 (the
        default) adds no layer. It adds no weights: the rate-0 model's weight files (ImageNet's too) load.
"""
_CIFAR_OPTIONS = _OPTIONS + """
    shortcut: "A" (zero-padded identity, the paper's default) or "B" (1x1 projection where the shape changes).
"""


def _residual_add(x, short, y, name, drop_path):
    """``short + y``; with a ``drop_path`` rate (not None), y goes through ``{name}_drop_path`` first.

    A shortcut with layers then gets an Identity (``{name}_0_identity``) too: Keras orders a model's layers
    by their depth, so both paths grow by one layer and the layers keep the order they have without DropPath
    (weight files and ``get_weights()`` lists stay interchangeable).
    """
    if drop_path is not None:
        y = kl.DropPath(drop_path, name=f"{name}_drop_path")(y)
        if short is not x:
            short = kl.layers.Identity(name=f"{name}_0_identity")(short)
    return kl.layers.Add(name=f"{name}_add")([short, y])


def basic_block(x, filters, strides=1, *, name, norm="batch", spatial_dropout=0.0, use_bias=None,
                shortcut="B", drop_path=None):
    """Two 3x3 convs with a shortcut (ResNet-18/34 and the CIFAR nets); ``drop_path``: the branch's
    DropPath rate, or None for no DropPath layer."""
    changes = strides != 1 or x.shape[-1] != filters
    if changes and shortcut == "A":
        short = kl.zero_pad_shortcut(x, filters, strides, name=f"{name}_0")
    elif changes:
        short = kl.conv_block(x, filters, 1, strides, name=f"{name}_0", norm=norm, activation=None,
                              use_bias=use_bias)
    else:
        short = x
    y = kl.conv_block(x, filters, 3, strides, name=f"{name}_1", norm=norm, use_bias=use_bias,
                      spatial_dropout=spatial_dropout, pad=1 if strides != 1 else None)
    y = kl.conv_block(y, filters, 3, name=f"{name}_2", norm=norm, activation=None, use_bias=use_bias)
    y = _residual_add(x, short, y, name, drop_path)
    return kl.layers.Activation("relu", name=f"{name}_out")(y)


def bottleneck_block(x, filters, strides=1, *, name, norm="batch", spatial_dropout=0.0, use_bias=True,
                     conv_shortcut=True, drop_path=None):
    """1x1 -> 3x3 -> 1x1 (x4 expansion) with the stride on the first 1x1, as keras.applications' ResNet v1;
    ``drop_path`` as in `basic_block`."""
    if conv_shortcut:
        short = kl.conv_block(x, 4 * filters, 1, strides, name=f"{name}_0", norm=norm, activation=None,
                              use_bias=use_bias)
    else:
        short = x
    y = kl.conv_block(x, filters, 1, strides, name=f"{name}_1", norm=norm, use_bias=use_bias,
                      spatial_dropout=spatial_dropout)
    y = kl.conv_block(y, filters, 3, name=f"{name}_2", norm=norm, use_bias=use_bias,
                      spatial_dropout=spatial_dropout)
    y = kl.conv_block(y, 4 * filters, 1, name=f"{name}_3", norm=norm, activation=None, use_bias=use_bias)
    y = _residual_add(x, short, y, name, drop_path)
    return kl.layers.Activation("relu", name=f"{name}_out")(y)


def _block_rates(drop_path_rate, blocks):
    """An iterator over the blocks' DropPath rates (`kcnn.layers.drop_path_rates`), all None (no DropPath
    layer) for rate 0."""
    rates = kl.drop_path_rates(drop_path_rate, blocks)
    return iter(rates if any(rates) else [None] * blocks)


def _imagenet_resnet(arch, *, include_top, weights, input_tensor, input_shape, pooling, classes,
                     classifier_activation, name, norm, spatial_dropout, dropout, head, fc_units,
                     drop_path_rate):
    kind, depths = IMAGENET_RESNETS[arch]
    stock = norm == "batch" and not spatial_dropout and not dropout and head == "gap" and not tuple(fc_units)
    check_options(arch, classes=classes, weights=weights, include_top=include_top,
                  imagenet_ok=stock and kind == "bottleneck",
                  kcnn_options=dict(norm=norm, spatial_dropout=spatial_dropout, dropout=dropout, head=head))
    rates = _block_rates(drop_path_rate, sum(depths))
    inputs, x = make_input(arch, RESNET_SPEC, input_shape, input_tensor)
    # keras.applications' v1 nets keep conv biases before BN; torchvision's 18/34 are bias-free.
    use_bias = True if (kind == "bottleneck" or norm is None) else False
    x = kl.conv_block(x, 64, 7, 2, name="conv1", norm=norm, use_bias=use_bias, pad=3)
    x = kl.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = kl.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for stage, (blocks, filters) in enumerate(zip(depths, (64, 128, 256, 512)), start=2):
        for b in range(1, blocks + 1):
            strides = 2 if (b == 1 and stage > 2) else 1
            block_name = f"conv{stage}_block{b}"
            if kind == "bottleneck":
                x = bottleneck_block(x, filters, strides, name=block_name, norm=norm, use_bias=use_bias,
                                     spatial_dropout=spatial_dropout, conv_shortcut=b == 1,
                                     drop_path=next(rates))
            else:
                x = basic_block(x, filters, strides, name=block_name, norm=norm, use_bias=use_bias,
                                spatial_dropout=spatial_dropout, drop_path=next(rates))
    x = kl.classifier_head(x, classes, include_top=include_top, pooling=pooling, head=head, fc_units=fc_units,
                           dropout=dropout, classifier_activation=classifier_activation)
    return finish(inputs, x, name or arch, arch, weights, include_top)


def _cifar_resnet(arch, *, include_top, weights, input_tensor, input_shape, pooling, classes,
                  classifier_activation, name, norm, spatial_dropout, dropout, head, fc_units, shortcut,
                  drop_path_rate):
    n = CIFAR_RESNETS[arch]
    check_options(arch, classes=classes, weights=weights, include_top=include_top, imagenet_ok=False,
                  kcnn_options=dict(norm=norm, spatial_dropout=spatial_dropout, dropout=dropout, head=head))
    kl.check_choice("shortcut", shortcut, ("A", "B"))
    rates = _block_rates(drop_path_rate, 3 * n)
    inputs, x = make_input(arch, CIFAR_RESNET_SPEC, input_shape, input_tensor)
    x = kl.conv_block(x, 16, 3, name="conv1", norm=norm)
    for stage, filters in enumerate((16, 32, 64), start=2):
        for b in range(1, n + 1):
            strides = 2 if (b == 1 and stage > 2) else 1
            x = basic_block(x, filters, strides, name=f"conv{stage}_block{b}", norm=norm,
                            spatial_dropout=spatial_dropout, shortcut=shortcut, drop_path=next(rates))
    x = kl.classifier_head(x, classes, include_top=include_top, pooling=pooling, head=head, fc_units=fc_units,
                           dropout=dropout, classifier_activation=classifier_activation)
    return finish(inputs, x, name or arch, arch, weights, include_top)


@register_model(RESNET_SPEC)
@document(RESNET_SPEC, _OPTIONS, "kcnn.models.{name}(weights=None, classes=10, input_shape=(64, 64, 3))")
def resnet18(*, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
             classes=RESNET_SPEC.default_classes, classifier_activation="softmax", name=None, norm="batch",
             spatial_dropout=0.0, dropout=0.0, head="gap", fc_units=(), drop_path_rate=0.0):
    """ResNet-18: basic blocks (two 3x3 convs) (2, 2, 2, 2) per stage; torchvision's parameterisation
    (bias-free convs, symmetric padding), 11,689,512 parameters."""
    return _imagenet_resnet("resnet18", **locals())  # every parameter above, by name


@register_model(RESNET_SPEC)
@document(RESNET_SPEC, _OPTIONS, "kcnn.models.{name}(weights=None, classes=10, input_shape=(64, 64, 3))")
def resnet34(*, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
             classes=RESNET_SPEC.default_classes, classifier_activation="softmax", name=None, norm="batch",
             spatial_dropout=0.0, dropout=0.0, head="gap", fc_units=(), drop_path_rate=0.0):
    """ResNet-34: basic blocks (two 3x3 convs) (3, 4, 6, 3) per stage; torchvision's parameterisation
    (bias-free convs, symmetric padding), 21,797,672 parameters."""
    return _imagenet_resnet("resnet34", **locals())  # every parameter above, by name


@register_model(RESNET_SPEC)
@document(RESNET_SPEC, _OPTIONS, "kcnn.models.{name}(weights=None, classes=10, input_shape=(64, 64, 3))")
def resnet50(*, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
             classes=RESNET_SPEC.default_classes, classifier_activation="softmax", name=None, norm="batch",
             spatial_dropout=0.0, dropout=0.0, head="gap", fc_units=(), drop_path_rate=0.0):
    """ResNet-50: bottleneck blocks (1x1, 3x3, 1x1) (3, 4, 6, 3) per stage; keras.applications.ResNet50
    (v1, conv biases), whose ImageNet weights load."""
    return _imagenet_resnet("resnet50", **locals())  # every parameter above, by name


@register_model(RESNET_SPEC)
@document(RESNET_SPEC, _OPTIONS, "kcnn.models.{name}(weights=None, classes=10, input_shape=(64, 64, 3))")
def resnet101(*, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
              classes=RESNET_SPEC.default_classes, classifier_activation="softmax", name=None, norm="batch",
              spatial_dropout=0.0, dropout=0.0, head="gap", fc_units=(), drop_path_rate=0.0):
    """ResNet-101: bottleneck blocks (1x1, 3x3, 1x1) (3, 4, 23, 3) per stage;
    keras.applications.ResNet101 (v1, conv biases), whose ImageNet weights load."""
    return _imagenet_resnet("resnet101", **locals())  # every parameter above, by name


@register_model(RESNET_SPEC)
@document(RESNET_SPEC, _OPTIONS, "kcnn.models.{name}(weights=None, classes=10, input_shape=(64, 64, 3))")
def resnet152(*, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
              classes=RESNET_SPEC.default_classes, classifier_activation="softmax", name=None, norm="batch",
              spatial_dropout=0.0, dropout=0.0, head="gap", fc_units=(), drop_path_rate=0.0):
    """ResNet-152: bottleneck blocks (1x1, 3x3, 1x1) (3, 8, 36, 3) per stage;
    keras.applications.ResNet152 (v1, conv biases), whose ImageNet weights load."""
    return _imagenet_resnet("resnet152", **locals())  # every parameter above, by name


@register_model(CIFAR_RESNET_SPEC)
@document(CIFAR_RESNET_SPEC, _CIFAR_OPTIONS, "kcnn.models.{name}(classes=10)")
def resnet20(*, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
             classes=CIFAR_RESNET_SPEC.default_classes, classifier_activation="softmax", name=None,
             norm="batch", spatial_dropout=0.0, dropout=0.0, head="gap", fc_units=(), shortcut="A",
             drop_path_rate=0.0):
    """CIFAR ResNet-20: a 3x3 stem and three stages of 3 basic blocks (16, 32, 64 filters); about 0.27 M
    parameters, as in section 4.2 of the paper."""
    return _cifar_resnet("resnet20", **locals())  # every parameter above, by name


@register_model(CIFAR_RESNET_SPEC)
@document(CIFAR_RESNET_SPEC, _CIFAR_OPTIONS, "kcnn.models.{name}(classes=10)")
def resnet32(*, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
             classes=CIFAR_RESNET_SPEC.default_classes, classifier_activation="softmax", name=None,
             norm="batch", spatial_dropout=0.0, dropout=0.0, head="gap", fc_units=(), shortcut="A",
             drop_path_rate=0.0):
    """CIFAR ResNet-32: a 3x3 stem and three stages of 5 basic blocks (16, 32, 64 filters); about 0.46 M
    parameters, as in section 4.2 of the paper."""
    return _cifar_resnet("resnet32", **locals())  # every parameter above, by name


@register_model(CIFAR_RESNET_SPEC)
@document(CIFAR_RESNET_SPEC, _CIFAR_OPTIONS, "kcnn.models.{name}(classes=10)")
def resnet44(*, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
             classes=CIFAR_RESNET_SPEC.default_classes, classifier_activation="softmax", name=None,
             norm="batch", spatial_dropout=0.0, dropout=0.0, head="gap", fc_units=(), shortcut="A",
             drop_path_rate=0.0):
    """CIFAR ResNet-44: a 3x3 stem and three stages of 7 basic blocks (16, 32, 64 filters); about 0.66 M
    parameters, as in section 4.2 of the paper."""
    return _cifar_resnet("resnet44", **locals())  # every parameter above, by name


@register_model(CIFAR_RESNET_SPEC)
@document(CIFAR_RESNET_SPEC, _CIFAR_OPTIONS, "kcnn.models.{name}(classes=10)")
def resnet56(*, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
             classes=CIFAR_RESNET_SPEC.default_classes, classifier_activation="softmax", name=None,
             norm="batch", spatial_dropout=0.0, dropout=0.0, head="gap", fc_units=(), shortcut="A",
             drop_path_rate=0.0):
    """CIFAR ResNet-56: a 3x3 stem and three stages of 9 basic blocks (16, 32, 64 filters); about 0.85 M
    parameters, as in section 4.2 of the paper."""
    return _cifar_resnet("resnet56", **locals())  # every parameter above, by name


@register_model(CIFAR_RESNET_SPEC)
@document(CIFAR_RESNET_SPEC, _CIFAR_OPTIONS, "kcnn.models.{name}(classes=10)")
def resnet110(*, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
              classes=CIFAR_RESNET_SPEC.default_classes, classifier_activation="softmax", name=None,
              norm="batch", spatial_dropout=0.0, dropout=0.0, head="gap", fc_units=(), shortcut="A",
              drop_path_rate=0.0):
    """CIFAR ResNet-110: a 3x3 stem and three stages of 18 basic blocks (16, 32, 64 filters); about 1.7 M
    parameters, as in section 4.2 of the paper."""
    return _cifar_resnet("resnet110", **locals())  # every parameter above, by name
