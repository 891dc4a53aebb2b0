"""All-CNN-A/B/C (Springenberg et al. 2014, "Striving for Simplicity: The All Convolutional Net").

Max pooling is replaced by 3x3 stride-2 convolutions, and the fully connected layers by a 1x1 convolution to the
class scores followed by global average pooling: no pooling layers and no Dense layers.

Reference: Springenberg, Dosovitskiy, Brox, Riedmiller, "Striving for Simplicity: The All Convolutional Net",
arXiv:1412.6806, 2014.
"""
from __future__ import annotations

from kcnn import layers as kl
from kcnn.models._common import check_options, document, finish, make_input
from kcnn.registry import ModelSpec, register_model

# Each stage: list of (filters, kernel, stride, padding). The stride-2 layer ends stages 1 and 2 (it replaces the
# 3x3 max pool of the base models); stage 3 is the paper's 3x3 valid conv and 1x1 conv before the classifier.
ALLCNN_CONFIGS = {
    "allcnn_a": (
        [(96, 5, 1, "same"), (96, 3, 2, "same")],
        [(192, 5, 1, "same"), (192, 3, 2, "same")],
        [(192, 3, 1, "valid"), (192, 1, 1, "valid")],
    ),
    "allcnn_b": (
        [(96, 5, 1, "same"), (96, 1, 1, "same"), (96, 3, 2, "same")],
        [(192, 5, 1, "same"), (192, 1, 1, "same"), (192, 3, 2, "same")],
        [(192, 3, 1, "valid"), (192, 1, 1, "valid")],
    ),
    "allcnn_c": (
        [(96, 3, 1, "same"), (96, 3, 1, "same"), (96, 3, 2, "same")],
        [(192, 3, 1, "same"), (192, 3, 1, "same"), (192, 3, 2, "same")],
        [(192, 3, 1, "valid"), (192, 1, 1, "valid")],
    ),
}


ALLCNN_SPEC = ModelSpec(family="allcnn", default_input_shape=(32, 32, 3), min_size=12, default_classes=10,
                        blocks=("block1", "block2", "block3"))

_OPTIONS = """
    norm: None (the paper) or "batch".
    spatial_dropout: SpatialDropout2D rate after every conv.
    dropout: Dropout rate after the hidden fully connected layers of the head (there are none by default).
    head: "conv" (the paper: a 1x1 conv to the classes + global average pooling), "gap" or "dense".
    fc_units: Hidden fully connected widths (default none).
    downsample: "conv" (stride-2 convolutions, the paper) or "max" (3x3 max pooling, the base model).
    paper_dropout: The paper's dropout: 20% on the input, 50% after each stride-2 layer.
"""
_EXAMPLE = 'kcnn.models.{name}(classes=10, norm="batch")'


def _allcnn(arch, *, include_top, weights, input_tensor, input_shape, pooling, classes, classifier_activation,
            name, norm, spatial_dropout, dropout, head, fc_units, downsample, paper_dropout):
    check_options(arch, classes=classes, weights=weights, include_top=include_top, imagenet_ok=False,
                  kcnn_options=dict(norm=norm, spatial_dropout=spatial_dropout, dropout=dropout, head=head))
    kl.check_choice("downsample", downsample, ("conv", "max"))
    inputs, x = make_input(arch, ALLCNN_SPEC, input_shape, input_tensor)
    if paper_dropout:
        x = kl.layers.Dropout(0.2, name="input_dropout")(x)
    for s, stage in enumerate(ALLCNN_CONFIGS[arch], start=1):
        for c, (filters, kernel, strides, padding) in enumerate(stage, start=1):
            layer_name = f"block{s}_conv{c}"
            if strides == 2 and downsample == "max":  # the base model the paper starts from
                x = kl.layers.MaxPooling2D(3, strides=2, padding="same", name=f"block{s}_pool")(x)
            else:
                x = kl.conv_block(x, filters, kernel, strides, padding=padding, name=layer_name,
                                  conv_name=layer_name, norm=norm, spatial_dropout=spatial_dropout)
            if strides == 2 and paper_dropout:
                x = kl.layers.Dropout(0.5, name=f"block{s}_dropout")(x)
    x = kl.classifier_head(x, classes, include_top=include_top, pooling=pooling, head=head, fc_units=fc_units,
                           dropout=dropout, classifier_activation=classifier_activation)
    return finish(inputs, x, name or arch, arch, weights, include_top)


@register_model(ALLCNN_SPEC)
@document(ALLCNN_SPEC, _OPTIONS, _EXAMPLE)
def allcnn_a(*, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
             classes=ALLCNN_SPEC.default_classes, classifier_activation="softmax", name=None, norm=None,
             spatial_dropout=0.0, dropout=0.0, head="conv", fc_units=(), downsample="conv",
             paper_dropout=False):
    """All-CNN-A: 5x5 convolutions; a 3x3 stride-2 convolution replaces each max pool.

    No pooling layers (unless downsample="max") and no Dense layers: the classifier is a 1x1 convolution
    to the class scores followed by global average pooling.
    """
    return _allcnn("allcnn_a", **locals())  # every parameter above, by name


@register_model(ALLCNN_SPEC)
@document(ALLCNN_SPEC, _OPTIONS, _EXAMPLE)
def allcnn_b(*, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
             classes=ALLCNN_SPEC.default_classes, classifier_activation="softmax", name=None, norm=None,
             spatial_dropout=0.0, dropout=0.0, head="conv", fc_units=(), downsample="conv",
             paper_dropout=False):
    """All-CNN-B: 5x5 convolutions each followed by a 1x1 one; a 3x3 stride-2 convolution replaces each
    max pool.

    No pooling layers (unless downsample="max") and no Dense layers: the classifier is a 1x1 convolution
    to the class scores followed by global average pooling.
    """
    return _allcnn("allcnn_b", **locals())  # every parameter above, by name


@register_model(ALLCNN_SPEC)
@document(ALLCNN_SPEC, _OPTIONS, _EXAMPLE)
def allcnn_c(*, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None,
             classes=ALLCNN_SPEC.default_classes, classifier_activation="softmax", name=None, norm=None,
             spatial_dropout=0.0, dropout=0.0, head="conv", fc_units=(), downsample="conv",
             paper_dropout=False):
    """All-CNN-C: stacked 3x3 convolutions; a 3x3 stride-2 convolution replaces each max pool (1,369,738
    parameters at 10 classes).

    No pooling layers (unless downsample="max") and no Dense layers: the classifier is a 1x1 convolution
    to the class scores followed by global average pooling.
    """
    return _allcnn("allcnn_c", **locals())  # every parameter above, by name
