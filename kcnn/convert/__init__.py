"""Turn fully connected heads and pooling layers into convolutions (lecture topics 5 and 6).

* `dense_to_conv` rewrites a Flatten -> Dense head as convolutions with the same weights: the first Dense
  becomes a Conv2D whose kernel covers the flattened feature map, every later Dense a 1x1 Conv2D. The
  converted model accepts any input size and, on an image larger than the one it was built for, returns a map
  of class scores, one per window position (the "fully convolutional" trick of OverFeat / FCN).
* `pool_to_conv` replaces every max / average pooling layer with a learnable Conv2D of the same window, stride
  and padding (the All-CNN idea of Springenberg et al., applied to any model).
* `copy_dense_head_to_conv` copies the weights of a kcnn ``head="dense"`` model into the same model built with
  ``head="conv"``.
* `fc_as_conv_demo` is the lecture's demonstration that a fully connected layer is a convolution.

Both converters rebuild the model by walking its graph node by node: every layer that is not replaced is
cloned from its config (``layer.__class__.from_config(layer.get_config())``) and keeps its name, weights and
trainable flag; a replaced layer keeps the old layer's name. Nested functional / Sequential models are rebuilt
the same way and stay nested. The original model is left untouched, and the new model is not compiled.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import layers

from kcnn.convert._rebuild import copy_weights, graph_of, GraphRebuild, GraphValue

__all__ = ["dense_to_conv", "pool_to_conv", "copy_dense_head_to_conv", "fc_as_conv_demo", "POOL_INITS"]

#: Initialisations accepted by `pool_to_conv`.
POOL_INITS = ("random", "average")


def _check_model(model, what):
    if not isinstance(model, keras.Model):
        raise ValueError(f"{what} expects a keras.Model (functional or Sequential). "
                         f"Received: model={model!r}")


def dense_to_conv(model: keras.Model) -> keras.Model:
    """Rewrite a Flatten -> Dense head as convolutions: same weights, any input size, a map of class scores.

    The first Dense after a Flatten becomes a Conv2D (valid padding) whose kernel covers the whole flattened
    feature map, H x W; its (H*W*C, units) kernel is reshaped to (H, W, C, units), which is exactly Keras'
    channels-last flatten order. Every later Dense becomes a 1x1 Conv2D. Element-wise layers between them
    (Dropout, Activation, ReLU, ...) and layers acting on the last axis (BatchNormalization, Softmax, ...)
    are kept. The Flatten itself disappears and every image input gets a free spatial size (None, None).

    * At the original input size the model returns an (N, 1, 1, classes) map where the original returned
      (N, classes); ``keras.ops.reshape(y, (N, classes))`` gives the same values (float32 differences
      < 1e-5, from the summation order).
    * On an H' x W' input it returns an (N, h, w, classes) map. For a net with valid padding, cell (i, j)
      equals the original net applied to the window of the original size at offset (i * S, j * S), S being
      the net's total stride. With "same" padding the windows near the border differ (the original saw zero
      padding where the big image has pixels), and so do their cells.
    * A softmax (Dense activation or Softmax layer) is applied per cell over the class axis (the last axis).
    * A head that ends in global average pooling converts too: each Dense that reads the pooled vector
      becomes a 1x1 Conv2D applied before the pooling, with its activation moved after it as
      ``"<name>_activation"`` (the mean commutes with the linear map, not with the activation). The model
      keeps its (N, classes) output, at any input size, and
      ``keras.Model(m.input, m.get_layer("predictions").output)`` gives the map of class logits.
      A Dropout between the pooling and the Dense moves too, with ``noise_shape=(None, 1, 1, None)``
      (dropping a channel of the map = dropping that value of the pooled vector).
      Dense layers after global max pooling stay Dense (they already accept any input size).

    Layers keep their names (a replaced Dense gives its name to its Conv2D), weights, trainable flags and
    configs; nested functional / Sequential models are rebuilt the same way and stay nested. A Sequential
    comes back as a Sequential. The new model is not compiled.

    Args:
        model: A functional or Sequential keras.Model (channels-last) with a Flatten -> Dense or a global
            average pooling -> Dense head.

    Returns:
        A new keras.Model; the argument is left unchanged.

    Raises:
        ValueError: naming the layer, for what cannot be converted exactly: a Reshape or Lambda (their
            effect on the layout is unknown), a Dense on a flat tensor of unknown spatial size (a model with
            no image input; in a model with one, a Dense on a flat side input stays a Dense), a Flatten on
            a map of unknown size or whose output is a model output, a layer other than a Dense or an
            element-wise one reading the flattened map, a subclassed nested model, or a layer that cannot be
            re-created from its config.

    Example:
        >>> model = kcnn.build("vgg16", input_shape=(64, 64, 3), classes=10, fc_units=(64, 64))
        >>> fcn = kcnn.convert.dense_to_conv(model)
        >>> fcn(np.zeros((1, 96, 96, 3), "float32")).shape   # 2 x 2 windows of 64 px, stride 32
        TensorShape([1, 2, 2, 10])

    Reference: Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation", 2015;
    Sermanet et al., "OverFeat", 2014.
    """
    _check_model(model, "dense_to_conv")
    graph = graph_of(model, model.name, "dense_to_conv")
    specs = []
    for x in graph.inputs:
        shape = tuple(x.shape)
        if len(shape) == 4:
            shape = (shape[0], None, None, shape[3])
        specs.append((shape, x.dtype, GraphValue(None, free=len(shape) >= 3)))
    rebuild = GraphRebuild(dense=True)
    rebuild.has_image = any(len(shape) == 4 for shape, _, _ in specs)
    new, _ = rebuild.model(model, specs, top=True)
    return new


def pool_to_conv(model: keras.Model, init: str = "random", seed: int | None = None) -> keras.Model:
    """Replace every MaxPooling2D / AveragePooling2D with a trainable Conv2D of the same window and stride.

    This is the All-CNN idea (downsampling learned by a strided convolution) applied to any model. Each Conv2D
    has the pool's window, strides and padding, as many filters as its input has channels, no activation,
    and the pooling layer's name; output shapes do not change, and every other layer keeps its name, weights
    and trainable flag.

    With ``init="average"`` each conv starts as an exact average pool: ``kernel[:, :, c, c] = 1 / (kh * kw)``,
    zero elsewhere, zero bias. With valid padding it then computes what AveragePooling2D computes; with
    "same" padding it differs at the border, because AveragePooling2D averages only the pixels inside the
    image while the conv also counts the zero padding. Replacing a MaxPooling2D with ``init="average"`` is
    allowed (it is only an initialisation) but changes the outputs. ``init="random"`` uses Glorot-uniform
    kernels and zero biases.

    Args:
        model: A functional or Sequential keras.Model.
        init: "random" or "average".
        seed: Seed of the random initialisation.

    Returns:
        A new keras.Model (a Sequential for a Sequential), not compiled; the argument is left unchanged.

    Raises:
        ValueError: for an unknown ``init``, a pooling layer with an unknown number of channels, a subclassed
            nested model, or a layer that cannot be re-created from its config.

    Example:
        >>> model = kcnn.build("vgg16", input_shape=(64, 64, 3), classes=10)
        >>> allconv = kcnn.convert.pool_to_conv(model, init="average")
        >>> allconv.get_layer("block1_pool").kernel.shape
        TensorShape([2, 2, 64, 64])

    Reference: Springenberg et al., "Striving for Simplicity: The All Convolutional Net", 2014.
    """
    _check_model(model, "pool_to_conv")
    if init not in POOL_INITS:
        raise ValueError(f"`init` must be one of {list(POOL_INITS)}. Received: init={init!r}")
    graph = graph_of(model, model.name, "pool_to_conv")
    specs = [(tuple(x.shape), x.dtype, GraphValue(None)) for x in graph.inputs]
    new, _ = GraphRebuild(pool_init=init, seed=seed).model(model, specs, top=True)
    return new


def copy_dense_head_to_conv(dense_model: keras.Model, conv_model: keras.Model) -> keras.Model:
    """Copy the weights of a kcnn ``head="dense"`` model into the same model built with ``head="conv"``.

    Layers are matched by name; ``predictions_conv`` takes the weights of ``predictions``. Kernels are
    reshaped: the (H*W*C, units) kernel of ``fc1`` becomes the (H, W, C, units) kernel of the conv ``fc1``
    (channels-last flatten order), later ones (units_in, units) -> (1, 1, units_in, units). After the copy
    both models give the same outputs at the built input size, where the conv head's global average pooling
    sees a 1 x 1 map. That needs at least one hidden layer (``fc_units``): without one, the conv head is a
    1x1 conv followed by global pooling, a different classifier, and the copy fails on the sizes.

    Args:
        dense_model: The source model (e.g. ``kcnn.build("vgg16", head="dense", ...)``).
        conv_model: The target model (the same builder and options with ``head="conv"``).

    Returns:
        ``conv_model``, with its weights replaced.

    Raises:
        ValueError: if a weighted layer of either model has no counterpart, or the sizes differ.

    Example:
        >>> dense = kcnn.build("vgg16", input_shape=(64, 64, 3), classes=10, fc_units=(64, 64))
        >>> conv = kcnn.build("vgg16", input_shape=(64, 64, 3), classes=10, fc_units=(64, 64), head="conv")
        >>> conv = kcnn.convert.copy_dense_head_to_conv(dense, conv)
    """
    sources = {layer.name: layer for layer in dense_model.layers if layer.weights}
    used = set()
    for layer in conv_model.layers:
        if not layer.weights:
            continue
        name = layer.name
        if name not in sources and name.endswith("_conv") and name[:-len("_conv")] in sources:
            name = name[:-len("_conv")]
        if name not in sources:
            raise ValueError(f"copy_dense_head_to_conv: layer '{layer.name}' of '{conv_model.name}' has no "
                             f"counterpart in '{dense_model.name}'")
        try:
            copy_weights(sources[name], layer)
        except ValueError as err:
            raise ValueError(f"copy_dense_head_to_conv: layer '{layer.name}': {err}") from None
        used.add(name)
    missing = sorted(set(sources) - used)
    if missing:
        raise ValueError(f"copy_dense_head_to_conv: layers {missing} of '{dense_model.name}' have no "
                         f"counterpart in '{conv_model.name}'")
    return conv_model


def fc_as_conv_demo(units: int = 3):
    """The lecture's demonstration: a fully connected layer is a convolution.

    A 2 x 2 one-channel input (4 values) goes through a Dense layer after flattening, through a Conv2D whose
    2 x 2 kernel covers the whole input, and, reshaped to 1 x 1 x 4, through a 1x1 Conv2D. The three layers
    share one weight matrix and give the same numbers.

    Args:
        units: Output units (filters) of the three layers.

    Returns:
        (Dense output of shape (1, units), 2x2-conv output of shape (1, 1, 1, units),
        1x1-conv output of shape (1, 1, 1, units)), numpy arrays.

    Example:
        >>> dense, conv, conv1x1 = kcnn.convert.fc_as_conv_demo()
        >>> dense.ravel(), conv.ravel(), conv1x1.ravel()   # three times [-0.5, 1.0, 2.5]
    """
    x = np.array([[1.0, 2.0], [3.0, 4.0]], dtype="float32").reshape(1, 2, 2, 1)
    kernel = (np.arange(4 * units, dtype="float32").reshape(4, units) - 2 * units) / 10.0
    bias = np.linspace(-0.5, 0.5, units).astype("float32")
    dense, conv, conv1x1 = layers.Dense(units), layers.Conv2D(units, (2, 2)), layers.Conv2D(units, (1, 1))
    for layer, shape in ((dense, (None, 4)), (conv, (None, 2, 2, 1)), (conv1x1, (None, 1, 1, 4))):
        layer.build(shape)
    dense.set_weights([kernel, bias])
    conv.set_weights([kernel.reshape(2, 2, 1, units), bias])
    conv1x1.set_weights([kernel.reshape(1, 1, 4, units), bias])
    return (
        keras.ops.convert_to_numpy(dense(x.reshape(1, 4))),
        keras.ops.convert_to_numpy(conv(x)),
        keras.ops.convert_to_numpy(conv1x1(x.reshape(1, 1, 1, 4))),
    )
