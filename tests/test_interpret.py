"""kcnn.interpret: top losses, confused pairs, Grad-CAM on nested backbones (kcnn and keras.applications)."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import keras
from kcnn import interpret, transfer

CLASSES = ["a", "b", "c"]


class _Fixed(keras.Model):
    """Returns given probabilities per example (in dataset order)."""

    def __init__(self, probs):
        super().__init__()
        self.probs = np.asarray(probs, "float32")
        self.seen = 0

    def call(self, x, training=None):
        n = int(x.shape[0])
        out = self.probs[self.seen:self.seen + n]
        self.seen += n
        return tf.constant(out)


def test_top_losses_orders_by_loss_and_names_classes():
    probs = [[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.05, 0.05, 0.9]]
    y = np.array([0, 1, 2, 2, 0])
    x = np.zeros((5, 4, 4, 3), "float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
    rows = interpret.top_losses(_Fixed(probs), ds, CLASSES, k=3)
    assert [r["index"] for r in rows] == [4, 2, 3]
    top = rows[0]
    assert top["true"] == "a" and top["predicted"] == "c"
    assert top["probability"] == pytest.approx(0.9) and top["probability_true"] == pytest.approx(0.05)
    assert top["loss"] == pytest.approx(-np.log(0.05), rel=1e-5)
    assert set(top) >= {"index", "true", "predicted", "probability", "probability_true", "loss"}
    with pytest.raises(ValueError, match="k"):
        interpret.top_losses(_Fixed(probs), ds, CLASSES, k=0)


def test_plot_top_losses_reads_the_images_from_the_dataset(tmp_path):
    x = np.random.default_rng(0).uniform(0, 255, (5, 8, 8, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(5, "int32"))).batch(2)
    rows = [{"index": 3, "true": "a", "predicted": "b", "probability": 0.8, "loss": 2.0},
            {"index": 0, "true": "a", "predicted": "a", "probability": 0.6, "loss": 0.5}]
    np.testing.assert_array_equal(interpret.images_at(ds, [3, 0]), x[[3, 0]])
    path = interpret.plot_top_losses(rows, ds, CLASSES, tmp_path / "top_losses.png")
    assert path.stat().st_size > 1000
    interpret.plot_top_losses(rows, x, CLASSES, tmp_path / "from_array.png")
    with pytest.raises(ValueError, match="past the end"):
        interpret.images_at(ds, [7])


def test_confused_pairs_off_diagonal_most_first():
    matrix = [[5, 2, 0], [7, 3, 1], [0, 2, 9]]
    pairs = interpret.confused_pairs(matrix, CLASSES, k=3)
    assert pairs == [{"true": "b", "predicted": "a", "count": 7}, {"true": "a", "predicted": "b", "count": 2},
                     {"true": "c", "predicted": "b", "count": 2}]
    assert interpret.confused_pairs(np.eye(3, dtype=int), CLASSES) == []
    with pytest.raises(ValueError, match="square"):
        interpret.confused_pairs([[1, 2]], CLASSES)


@pytest.mark.parametrize("name,shape,feature", [("vgg_cifar", (32, 32, 3), 4), ("resnet20", (32, 32, 3), 8),
                                                ("VGG16", (64, 64, 3), 2)])
def test_gradcam_on_nested_backbones(name, shape, feature, tmp_path):
    keras.utils.set_random_seed(1)
    bb = transfer.backbone(name, None, shape)
    model = transfer.classifier(bb, 4, head_init="glorot_uniform")
    assert tuple(bb.model.output.shape[1:3]) == (feature, feature)
    images = np.random.default_rng(0).uniform(0, 255, (3, 40, 40, 3)).astype("float32")
    maps = interpret.gradcam(model, images)
    assert maps.shape == (3, feature, feature)
    assert maps.min() >= 0 and maps.max() <= 1 and np.isclose(maps.max(), 1.0)
    assert np.ptp(maps.reshape(3, -1), axis=1).max() > 0.05  # not flat
    assert interpret.gradcam(model, images, class_index=2, size="image").shape == (3, 40, 40)
    assert interpret.gradcam(model, images, class_index=[0, 1, 2]).shape == (3, feature, feature)
    with pytest.raises(ValueError, match="out of range"):
        interpret.gradcam(model, images, class_index=9)
    path = interpret.plot_gradcam(images, maps, ["x", "y", "z"], tmp_path / "gradcam.png")
    assert path.stat().st_size > 1000


def test_gradcam_on_a_backbone_that_pools_inside():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(x)
    body = keras.Model(inputs, pooled, name="backbone")
    image = keras.Input((16, 16, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(body(image))
    model = keras.Model(image, outputs)
    maps = interpret.gradcam(model, np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)))
    assert maps.shape == (2, 16, 16)


def _left_half_model():
    """Class 1 = a bright square somewhere in the left half; weights set by hand (a known answer).

    The backbone's one channel is ReLU(mean of a 3x3 window - 200): positive only on bright pixels; the head
    pools it and gives class 1 a score rising with it."""
    image = keras.Input((16, 16, 3), name="image")
    inner = keras.Input((16, 16, 3))
    conv = keras.layers.Conv2D(1, 3, padding="same", activation="relu", name="bright")
    body = keras.Model(inner, conv(inner), name="backbone")
    x = keras.layers.Rescaling(1.0, name="preprocess")(image)
    x = body(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    dense = keras.layers.Dense(2, activation="softmax", name="predictions")
    model = keras.Model(image, dense(x))
    conv.set_weights([np.full((3, 3, 3, 1), 1 / 27, "float32"), np.array([-200.0], "float32")])
    dense.set_weights([np.array([[-10.0, 10.0]], "float32"), np.array([2.0, -2.0], "float32")])
    return model


def test_gradcam_known_answer_mass_on_the_left_half():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 120, (6, 16, 16, 3)).astype("float32")  # dim noise everywhere
    corners = []
    for i in range(6):
        top, left = rng.integers(0, 12), rng.integers(0, 5)
        images[i, top:top + 4, left:left + 4] = 255.0  # the bright square, in the left half
        corners.append((top, left))
    model = _left_half_model()
    assert (np.asarray(model(images)).argmax(axis=1) == 1).all()
    maps = interpret.gradcam(model, images, class_index=1)
    assert maps.shape == (6, 16, 16)
    left = maps[:, :, :8].sum(axis=(1, 2))
    assert (left / maps.sum(axis=(1, 2)) > 0.9).all()
    for heatmap, (top, left) in zip(maps, corners):  # the peak is on the square, not on the noise
        row, col = np.unravel_index(heatmap.argmax(), heatmap.shape)
        assert top <= row < top + 4 and left <= col < left + 4
