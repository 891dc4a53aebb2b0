"""Interpreting a trained classifier: its worst test examples, its most confused classes, Grad-CAM heatmaps.

* `top_losses` / `plot_top_losses`: the examples with the highest loss (confidently wrong first), drawn with
  "true / predicted / probability" above each image.
* `confused_pairs`: the off-diagonal cells of a confusion matrix, largest first.
* `gradcam` / `plot_gradcam`: Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks
  via Gradient-based Localization", ICCV 2017): the last spatial feature map of the backbone weighted by the
  spatial mean of the class score's gradient with respect to it, rectified and scaled to [0, 1].

Grad-CAM on a `kcnn.transfer.classifier`: the backbone is a nested ``keras.Model``, and asking the outer model
for the gradient with respect to a tensor inside the nested one fails (the nested model's layer outputs are not
tensors of the outer graph; tensorflow/tensorflow#44462). `gradcam` therefore computes the model explicitly:
the layers before the backbone, the backbone up to its last 4-D output, then the head layers, under a
``tf.GradientTape`` that watches the feature map. A plain functional model (no nested backbone) is split at its
last layer with a 4-D output instead.

All plots use matplotlib's object API (`kcnn.plots.figure`): the caller's backend and figures are untouched.
"""
from __future__ import annotations

import heapq
from pathlib import Path

import keras
import numpy as np

from kcnn import plots

# --- the worst examples -------------------------------------------------------------------------------------------

_EPS = 1e-7


def _batches(dataset):
    """(images, integer labels) per batch of a dataset of (images, labels[, weights]) or an (x, y) tuple."""
    if isinstance(dataset, (tuple, list)) and len(dataset) in (2, 3) and not hasattr(dataset[0], "element_spec"):
        x, y = np.asarray(dataset[0]), np.asarray(dataset[1])
        for start in range(0, len(x), 32):
            yield x[start:start + 32], y[start:start + 32]
        return
    for batch in dataset:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("the dataset must yield (images, labels) or (images, labels, weights)")
        yield np.asarray(batch[0]), np.asarray(batch[1])


def _labels(y) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot
        return y.argmax(axis=1)
    return y.astype(int).reshape(-1)


def _name(class_names, index: int) -> str:
    return str(class_names[index]) if 0 <= index < len(class_names) else str(index)


def top_losses(model, dataset, class_names, k: int = 9) -> list[dict]:
    """The ``k`` examples of ``dataset`` with the highest cross-entropy loss under ``model``, highest first.

    Args:
        model: A classifier with softmax outputs.
        dataset: Batched ``tf.data.Dataset`` of (images, integer labels[, weights]) in a fixed order (e.g.
            ``splits.test``), or an ``(x, y)`` tuple of arrays.
        class_names: Label ``i`` is ``class_names[i]``.
        k: Examples to return (>= 1).

    Returns:
        One dict per example: ``index`` (position in the dataset's order), ``true`` and ``predicted`` (class
        names), ``true_index`` and ``predicted_index``, ``probability`` (of the predicted class),
        ``probability_true`` (of the true class) and ``loss`` (``-log probability_true``).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be an integer >= 1. Received: k={k!r}")
    heap: list[tuple[float, int, dict]] = []  # the k largest losses (a min-heap)
    offset = 0
    for x, y in _batches(dataset):
        probs = np.asarray(model(x, training=False), dtype="float64").reshape(len(x), -1)
        labels = _labels(y)
        p_true = probs[np.arange(len(labels)), labels]
        losses = -np.log(np.clip(p_true, _EPS, 1.0))
        predicted = probs.argmax(axis=1)
        for i in range(len(labels)):
            row = {"index": offset + i, "true": _name(class_names, int(labels[i])),
                   "predicted": _name(class_names, int(predicted[i])), "true_index": int(labels[i]),
                   "predicted_index": int(predicted[i]), "probability": float(probs[i, predicted[i]]),
                   "probability_true": float(p_true[i]), "loss": float(losses[i])}
            item = (row["loss"], -row["index"], row)  # ties: the earlier example first
            if len(heap) < k:
                heapq.heappush(heap, item)
            elif item[:2] > heap[0][:2]:
                heapq.heapreplace(heap, item)
        offset += len(labels)
    return [row for _, _, row in sorted(heap, key=lambda t: t[:2], reverse=True)]


def images_at(images, indices) -> np.ndarray:
    """The images at ``indices`` of ``images``: an array, or a batched dataset of (images, labels[, ...]) in a
    fixed order (read once, keeping only those images)."""
    indices = [int(i) for i in indices]
    if not hasattr(images, "element_spec") and not isinstance(images, (tuple, list)):
        return np.asarray(images)[indices]
    if isinstance(images, (tuple, list)) and not hasattr(images[0], "element_spec"):
        return np.asarray(images[0])[indices]
    wanted, found, offset = set(indices), {}, 0
    for x, _ in _batches(images):
        for i in range(len(x)):
            if offset + i in wanted:
                found[offset + i] = x[i]
        offset += len(x)
        if len(found) == len(wanted):
            break
    missing = [i for i in indices if i not in found]
    if missing:
        raise ValueError(f"index {missing[0]} is past the end of the dataset ({offset} images)")
    return np.stack([found[i] for i in indices])


def _show(ax, image):
    image = np.asarray(image, dtype="float32")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    low, high = float(image.min()), float(image.max())
    scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
    ax.imshow(scaled, cmap="gray" if scaled.ndim == 2 else None)
    ax.set_xticks([])
    ax.set_yticks([])


def _grid(n: int):
    cols = int(np.ceil(np.sqrt(n)))
    return int(np.ceil(n / cols)), cols


def plot_top_losses(rows, images, class_names, path) -> Path:
    """Draw the examples of `top_losses` with "true / predicted / p" above each (p: of the prediction).

    Args:
        rows: The list `top_losses` returned.
        images: The images the rows index: an array of the whole dataset, or the same dataset (only the
            rows' images are read).
        class_names: Unused when the rows carry names; kept for symmetry with `top_losses`.
        path: Output PNG (e.g. ``run/top_losses.png``).

    Returns:
        The path written.
    """
    del class_names  # the rows hold the names
    rows = list(rows)
    fig = plots.figure(figsize=(8, 8) if rows else (3, 2))
    if not rows:
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "no examples", ha="center", va="center")
    else:
        pictures = images_at(images, [row["index"] for row in rows])
        nrows, ncols = _grid(len(rows))
        axes = np.atleast_1d(fig.subplots(nrows, ncols)).reshape(-1)
        for ax, row, image in zip(axes, rows, pictures):
            _show(ax, image)
            color = "black" if row["true"] == row["predicted"] else "firebrick"
            ax.set_title(f"{row['true']} / {row['predicted']} / {row['probability']:.2f}\nloss {row['loss']:.2f}",
                         fontsize=8, color=color)
        for ax in axes[len(rows):]:
            ax.axis("off")
        fig.suptitle("top losses: true / predicted / probability")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def confused_pairs(confusion_matrix, class_names, k: int = 5) -> list[dict]:
    """The ``k`` most frequent confusions (off-diagonal cells of ``confusion_matrix``), largest count first.

    Args:
        confusion_matrix: Rows true class, columns predicted (as `kcnn.training.evaluate` returns it).
        class_names: Names of the classes.
        k: Pairs to return at most; cells with count 0 are never listed.

    Returns:
        ``[{"true": name, "predicted": name, "count": n}, ...]``; ties keep the matrix's row-major order.
    """
    matrix = np.asarray(confusion_matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"`confusion_matrix` must be square. Received shape {matrix.shape}")
    cells = [(int(matrix[i, j]), i, j) for i in range(matrix.shape[0]) for j in range(matrix.shape[1])
             if i != j and matrix[i, j] > 0]
    cells.sort(key=lambda c: -c[0])  # stable: row-major among ties
    return [{"true": _name(class_names, i), "predicted": _name(class_names, j), "count": n}
            for n, i, j in cells[:k]]


# --- Grad-CAM -----------------------------------------------------------------------------------------------------

def _is_4d(tensor) -> bool:
    shape = getattr(tensor, "shape", None)
    return shape is not None and len(shape) == 4


def _last_4d_layer(model):
    for layer in reversed(model.layers):
        try:
            output = layer.output
        except (AttributeError, ValueError):
            continue
        if _is_4d(output) and not isinstance(layer, keras.layers.InputLayer):
            return layer
    raise ValueError(f"Model {model.name!r} has no layer with a 4-D (spatial) output; Grad-CAM needs one.")


def _stages(model):
    """(to_features(x) -> 4-D feature map, to_scores(feature map) -> class scores before the softmax)."""
    try:
        body = model.get_layer("backbone")
    except ValueError:
        body = None
    top = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if isinstance(body, keras.Model) and body in top:
        index = top.index(body)
        pre, head = top[:index], top[index + 1:]
        if _is_4d(body.output):
            feature_body, body_rest = body, None
        else:  # a backbone that pools inside: its last 4-D output, then the rest of it
            last = _last_4d_layer(body)
            feature_body = keras.Model(body.inputs, last.output)
            body_rest = keras.Model(last.output, body.output)

        def to_features(x):
            for layer in pre:
                x = layer(x, training=False)
            return feature_body(x, training=False)

        def to_scores(features):
            x = features if body_rest is None else body_rest(features, training=False)
            return _head_scores(head, x)

        return to_features, to_scores
    # a plain functional model: split at its last 4-D output
    last = _last_4d_layer(model)
    features_model = keras.Model(model.inputs, last.output)
    output_layer = top[-1]
    if _is_softmax_output(output_layer) and _single_input(output_layer):
        before = output_layer.input
        rest = keras.Model(last.output, before) if before is not last.output else None

        def to_scores(features):
            x = features if rest is None else rest(features, training=False)
            return _head_scores([output_layer], x)
    else:
        rest = keras.Model(last.output, model.outputs[0])

        def to_scores(features):
            return rest(features, training=False)
    return (lambda x: features_model(x, training=False)), to_scores


def _single_input(layer) -> bool:
    try:
        return not isinstance(layer.input, (list, tuple, dict))
    except (AttributeError, ValueError):
        return False


def _is_softmax_output(layer) -> bool:
    activation = getattr(layer, "activation", None)
    return activation in (keras.activations.softmax, keras.activations.sigmoid)


def _head_scores(head, x):
    """The head layers in order; the last one's softmax (or sigmoid) left out: Grad-CAM's class score y^c."""
    from keras import ops

    for layer in head[:-1]:
        x = layer(x, training=False)
    if not head:
        return x
    last = head[-1]
    if not _is_softmax_output(last):
        return last(x, training=False)
    if isinstance(last, keras.layers.Activation):
        return x
    if isinstance(last, keras.layers.Dense):
        y = ops.matmul(x, last.kernel)
        return ops.add(y, last.bias) if last.use_bias else y
    if isinstance(last, keras.layers.Conv2D):
        y = ops.conv(x, last.kernel, strides=last.strides, padding=last.padding,
                     dilation_rate=last.dilation_rate)
        return ops.add(y, last.bias) if last.use_bias else y
    return last(x, training=False)  # unknown layer: the probability itself


def gradcam(model, images, class_index=None, *, size=None, batch_size: int = 32) -> np.ndarray:
    """Grad-CAM heatmaps of ``model`` on ``images``.

    For class c with score y^c (the logit: the output layer's softmax left out) and the backbone's last
    spatial feature map A (channels k): ``alpha_k = mean over (i, j) of d y^c / d A_k[i, j]``, heatmap
    ``ReLU(sum_k alpha_k A_k)``, divided by its maximum per image (an all-zero map stays 0).

    Args:
        model: A `kcnn.transfer.classifier` (or its reloaded ``.keras`` file), or any functional model with a
            4-D layer output.
        images: Array (N, H, W, C) as the model takes them (a classifier: raw RGB in [0, 255], any size).
        class_index: None (each image's predicted class), an int (one class for all) or one int per image.
        size: None: the feature map's size (h, w); "image": upsampled bilinearly to the images' (H, W); or
            a (height, width).
        batch_size: Images per forward/backward pass.

    Returns:
        float32 array (N, h, w) with values in [0, 1].
    """
    import tensorflow as tf

    images = np.asarray(images, dtype="float32")
    if images.ndim != 4:
        raise ValueError(f"`images` must be a batch (N, H, W, C). Received shape {images.shape}")
    n = len(images)
    if class_index is None or np.ndim(class_index) == 0:
        classes = None if class_index is None else np.full(n, int(class_index))
    else:
        classes = np.asarray(class_index, dtype=int).reshape(-1)
        if len(classes) != n:
            raise ValueError(f"`class_index` gives {len(classes)} classes for {n} images")
    to_features, to_scores = _stages(model)
    maps = []
    for start in range(0, n, batch_size):
        x = tf.constant(images[start:start + batch_size])
        features = tf.convert_to_tensor(to_features(x))
        with tf.GradientTape() as tape:
            tape.watch(features)
            scores = tf.convert_to_tensor(to_scores(features))
            scores = tf.reshape(scores, (tf.shape(scores)[0], -1))
            chosen = (tf.argmax(scores, axis=1, output_type=tf.int32) if classes is None
                      else tf.constant(classes[start:start + batch_size], tf.int32))
            if int(tf.reduce_max(chosen)) >= scores.shape[-1] or int(tf.reduce_min(chosen)) < 0:
                raise ValueError(f"`class_index` out of range: the model has {scores.shape[-1]} classes")
            target = tf.gather(scores, chosen, axis=1, batch_dims=1)
        grads = tape.gradient(target, features)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1)).numpy().astype("float64")
        peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
        maps.append(np.where(peak > 0, cam / np.where(peak > 0, peak, 1.0), 0.0))
    heatmaps = np.concatenate(maps).astype("float32") if maps else np.zeros((0, 1, 1), "float32")
    if size is not None:
        target_size = images.shape[1:3] if size == "image" else tuple(int(s) for s in size)
        heatmaps = upsample(heatmaps, target_size)
    return heatmaps


def upsample(heatmaps, size) -> np.ndarray:
    """Heatmaps (N, h, w) resized bilinearly to ``size`` (height, width), clipped to [0, 1]."""
    import tensorflow as tf

    heatmaps = np.asarray(heatmaps, dtype="float32")
    resized = tf.image.resize(heatmaps[..., None], tuple(size), method="bilinear").numpy()[..., 0]
    return np.clip(resized, 0.0, 1.0)


def plot_gradcam(images, heatmaps, labels, path, *, alpha: float = 0.45) -> Path:
    """Each image beside its Grad-CAM overlay (the heatmap upsampled to the image, "jet" colours).

    Args:
        images: (N, H, W, C) images (any range; each is scaled to [0, 1] for display).
        heatmaps: `gradcam`'s (N, h, w) maps.
        labels: One title per image (e.g. "true 3 / predicted 8"), or None.
        path: Output PNG (e.g. ``run/gradcam.png``).
        alpha: Opacity of the heatmap over the image.

    Returns:
        The path written.
    """
    images = np.asarray(images, dtype="float32")
    heatmaps = np.asarray(heatmaps, dtype="float32")
    if len(images) != len(heatmaps):
        raise ValueError(f"{len(images)} images but {len(heatmaps)} heatmaps")
    labels = list(labels) if labels is not None else [""] * len(images)
    n = len(images)
    fig = plots.figure(figsize=(2.2 * max(n, 1), 4.6))
    if n == 0:
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "no images", ha="center", va="center")
    else:
        axes = np.asarray(fig.subplots(2, n)).reshape(2, n)
        maps = upsample(heatmaps, images.shape[1:3])
        for i in range(n):
            _show(axes[0, i], images[i])
            axes[0, i].set_title(str(labels[i]), fontsize=8)
            _show(axes[1, i], images[i])
            axes[1, i].imshow(maps[i], cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
        axes[0, 0].set_ylabel("image", fontsize=8)
        axes[1, 0].set_ylabel("Grad-CAM", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


__all__ = ["top_losses", "plot_top_losses", "images_at", "confused_pairs", "gradcam", "upsample", "plot_gradcam"]
