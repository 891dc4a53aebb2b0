"""All-CNN-A/B/C (Springenberg et al. 2014, "Striving for Simplicity: The All Convolutional Net").

Max pooling is replaced by 3x3 stride-2 convolutions, and the fully connected layers by a 1x1 convolution to the
class scores followed by global average pooling: no pooling layers and no Dense layers.
"""
from __future__ import annotations

from kcnn import layers as kl
from kcnn.models._common import check_options, finish, make_input
from kcnn.registry import register_model

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


def _allcnn(arch, *, input_shape=None, classes=10, include_top=True, pooling=None, classifier_activation="softmax",
            weights=None, name=None, norm=None, spatial_dropout=0.0, dropout=0.0, head="conv", fc_units=(),
            downsample="conv", paper_dropout=False, input_tensor=None):
    check_options(arch, classes=classes, weights=weights, include_top=include_top, imagenet_ok=False,
                  kcnn_options=dict(norm=norm, spatial_dropout=spatial_dropout, dropout=dropout, head=head))
    kl.check_choice("downsample", downsample, ("conv", "max"))
    inputs, x = make_input(arch, input_shape, (32, 32, 3), 12, input_tensor)
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


def _entry(arch):
    def builder(**kwargs):
        return _allcnn(arch, **kwargs)

    builder.__name__ = arch
    builder.__doc__ = f"""All-CNN-{arch[-1].upper()}: strided convolutions instead of pooling, no fully connected layers.

    Args:
        input_shape: (H, W, C); default (32, 32, 3); any size >= 12 px.
        classes: Number of classes (default 10).
        include_top: Whether to include the classifier (1x1 conv to the classes + global average pooling).
        pooling: None | "avg" | "max" when include_top=False.
        classifier_activation: Activation of the last layer.
        weights: None or a weights file path.
        name: Model name.
        norm: None (the paper) or "batch".
        spatial_dropout: SpatialDropout2D rate after every conv.
        dropout: Dropout after hidden fully connected layers of the head (none by default).
        head: "conv" (the paper), "gap" or "dense".
        fc_units: Hidden fully connected widths (default none).
        downsample: "conv" (stride-2 convolutions, the paper) or "max" (3x3 max pooling, the base model).
        paper_dropout: The paper's dropout: 20% on the input, 50% after each stride-2 layer.

    Returns:
        A keras.Model.

    Example:
        >>> model = kcnn.models.{arch}(classes=10, norm="batch")

    Reference: Springenberg, Dosovitskiy, Brox, Riedmiller, arXiv:1412.6806, 2014.
    """
    return register_model(family="allcnn", default_input_shape=(32, 32, 3), min_size=12, default_classes=10,
                          blocks=("block1", "block2", "block3"))(builder)


allcnn_a = _entry("allcnn_a")
allcnn_b = _entry("allcnn_b")
allcnn_c = _entry("allcnn_c")
