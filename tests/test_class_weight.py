"""Tests for class weights in kcnn.data (Splits.with_class_weight, load(class_weight=)) and their effect on
training.

An imbalanced toy set: 90 images of class 0, 10 of class 1, 8x8 px, the classes differing in mean brightness.
"""
import keras
import numpy as np
import pytest
from keras import layers

from kcnn import data, transfer

COUNTS = (90, 10)


def _toy(seed=0):
    y = np.concatenate([np.full(c, i) for i, c in enumerate(COUNTS)])
    means = np.where(y == 0, 115.0, 140.0)
    x = np.random.RandomState(seed).normal(means[:, None, None, None], 50.0, (len(y), 8, 8, 3))
    return np.clip(x, 0, 255).astype("float32"), y


def _load(**kwargs):
    kwargs.setdefault("val_fraction", 0.1)
    kwargs.setdefault("test_fraction", 0.0)
    return data.load(_toy(), image_size=8, batch_size=20, seed=0, **kwargs)


def test_weights_per_class_are_sklearns_balanced_formula():
    splits = _load(val_fraction=0, class_weight="balanced")
    n, k = sum(COUNTS), len(COUNTS)
    expected = np.array([n / (k * c) for c in COUNTS], np.float32)
    np.testing.assert_allclose(splits.class_weights, expected, rtol=1e-6)  # [0.5556, 5.0]
    np.testing.assert_array_equal(splits.class_counts("train"), COUNTS)
    sklearn_utils = pytest.importorskip("sklearn.utils")
    reference = sklearn_utils.compute_class_weight("balanced", classes=np.arange(k), y=splits.labels("train"))
    np.testing.assert_allclose(splits.class_weights, reference, rtol=1e-6)
    for x, y, w in splits.train:  # every batch carries its examples' weights
        np.testing.assert_allclose(w.numpy(), expected[y.numpy()], rtol=1e-6)
    assert float(sum(w.numpy().sum() for _, _, w in splits.epochs(0, 1))) == pytest.approx(n, rel=1e-5)


def test_balanced_class_weights_function():
    weights = data.balanced_class_weights([0] * 90 + [1] * 10, 2)
    np.testing.assert_allclose(weights, [100 / 180, 5.0], rtol=1e-6)
    # a class without examples gets 0; the present classes are counted in n_classes
    np.testing.assert_allclose(data.balanced_class_weights([0, 0, 2], 3), [0.75, 0.0, 1.5], rtol=1e-6)


def test_weighted_epochs_are_the_unweighted_epochs_plus_weights():
    plain = _load(augment="crop")
    weighted = plain.with_class_weight("balanced")
    assert plain.class_weight is None and weighted.class_weight == "balanced" and plain.class_weights is None
    for first, second in zip(plain.epochs(1, 3), weighted.epochs(1, 3)):
        assert len(first) == 2 and len(second) == 3
        np.testing.assert_array_equal(first[0], second[0])
        np.testing.assert_array_equal(first[1], second[1])
    for a, b in zip(plain.dataset(training=True, epoch=4), _load(augment="crop", class_weight="balanced")
                    .dataset(training=True, epoch=4)):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert weighted.steps_per_epoch() == plain.steps_per_epoch()


def test_only_the_training_split_is_weighted():
    splits = _load(test_fraction=0.2, class_weight="balanced")
    assert len(next(iter(splits.val))) == 2 and len(next(iter(splits.test))) == 2
    assert len(next(iter(splits.dataset("val", training=False)))) == 2
    # the training split in its fixed order keeps the weights (a feature cache of it trains weighted)
    assert len(next(iter(splits.dataset("train", training=False)))) == 3
    assert len(next(iter(splits.train))) == 3
    assert len(next(iter(splits.with_class_weight(None).train))) == 2
    assert data.pipeline_throughput(splits, steps=2, warmup=0) > 0
    assert "class_weight='balanced'" in repr(splits)


def test_bad_class_weight_is_refused():
    with pytest.raises(ValueError, match="`class_weight` must be None or 'balanced'"):
        _load(class_weight="inverse")
    with pytest.raises(ValueError, match="class_weight="):
        _load().with_class_weight({0: 1.0, 1: 9.0})
    assert _load(class_weight="none").class_weight is None


def _tiny_classifier():
    """A 1x1-conv backbone whose one feature is the image's centred brightness; a zero-initialized head."""
    inputs = keras.Input((8, 8, 3))
    h = layers.Conv2D(1, 1, name="block1_conv1", kernel_initializer=keras.initializers.Constant(5 / 3),
                      bias_initializer=keras.initializers.Constant(-2.5))(inputs)
    body = keras.Model(inputs, h, name="backbone")
    bb = transfer.Backbone(name="vgg_cifar", model=body, preprocess=transfer.preprocess_layer("unit"),
                           blocks=[("block1", ["block1_conv1"])], min_size=8, input_shape=(8, 8, 3),
                           preprocessing="unit")
    return bb, transfer.classifier(bb, 2)


def _recalls(splits):
    bb, model = _tiny_classifier()  # zero-initialized head, fixed backbone, keyed data: nothing random
    phase = transfer.Phase(epochs=5, train="head", lr=0.3, optimizer="sgd", momentum=0.0)
    history = transfer.fit_schedule(model, bb, [phase], splits, verbose=0)
    assert history.phases[0]["cached"]  # the head trained on cached features, weights included
    x, y = _toy()
    pred = np.argmax(np.asarray(model(x)), axis=1)
    return [float(np.mean(pred[y == c] == c)) for c in range(2)], history.epochs[0]["loss"]


def test_balanced_weights_raise_the_minority_recall_in_fit_schedule():
    """Five epochs (25 steps) of head training: unweighted, the head predicts the majority class for every
    image (minority recall 0.0); balanced, it finds the minority (recall 1.0) at the same majority recall."""
    plain = _load()
    (major, minor), loss = _recalls(plain)
    (w_major, w_minor), w_loss = _recalls(plain.with_class_weight("balanced"))
    assert minor <= 0.2 and w_minor >= 0.8, (minor, w_minor)
    assert w_major >= 0.8 and major >= 0.9
    assert abs(w_loss - loss) > 0.01, (loss, w_loss)  # the first epoch's (weighted) loss differs
