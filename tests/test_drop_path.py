"""Stochastic depth: `kcnn.layers.DropPath` and the ResNets' ``drop_path_rate`` option."""
import numpy as np
import pytest
import tensorflow as tf

import keras
import kcnn
from kcnn.layers import DropPath
from kcnn.transfer.state import restore_model_state, training_state

SHAPE = (16, 16, 3)


def build(name="resnet20", **options):
    keras.utils.set_random_seed(0)
    shape = SHAPE if kcnn.get_entry(name).family == "cifar_resnet" else (32, 32, 3)
    return kcnn.build(name, input_shape=shape, classes=5, **options)


def images(model, n=4, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, *model.input_shape[1:])).astype("float32")


def drop_paths(model):
    return [layer for layer in model.layers if isinstance(layer, DropPath)]


def trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# --------------------------------------------------------------------------------------------- the layer
def test_training_keeps_1_minus_rate_of_the_examples_scaled_by_1_over_keep():
    rate, n = 0.3, 20_000
    layer = DropPath(rate, seed=1)
    x = np.random.default_rng(0).uniform(0.5, 2.0, (n, 2, 2, 3)).astype("float32")
    y = np.asarray(layer(x, training=True))
    nonzero = (y != 0).reshape(n, -1)
    kept = nonzero.all(axis=1)
    np.testing.assert_array_equal(nonzero.any(axis=1), kept)  # whole examples are dropped, not single values
    np.testing.assert_array_equal(y[~kept], 0.0)
    np.testing.assert_array_equal(y[kept], x[kept] * np.float32(1 / (1 - rate)))  # exactly, in float32
    np.testing.assert_allclose(y[kept], x[kept] / (1 - rate), rtol=2e-7)
    sigma = np.sqrt(n * rate * (1 - rate))
    assert abs(kept.sum() - n * (1 - rate)) < 4 * sigma  # 4 binomial standard deviations


def test_inference_and_rate_0_are_the_identity():
    x = np.random.default_rng(0).normal(size=(64, 3, 3, 2)).astype("float32")
    np.testing.assert_array_equal(np.asarray(DropPath(0.5, seed=0)(x, training=False)), x)
    np.testing.assert_array_equal(np.asarray(DropPath(0.5, seed=0)(x)), x)
    zero = DropPath(0.0)
    np.testing.assert_array_equal(np.asarray(zero(x, training=True)), x)
    assert zero.variables == []


def test_same_seed_same_masks_and_the_state_advances():
    x = np.ones((256, 1, 1, 1), "float32")
    a, b, c = DropPath(0.5, seed=7), DropPath(0.5, seed=7), DropPath(0.5, seed=8)
    first = np.asarray(a(x, training=True))
    np.testing.assert_array_equal(first, np.asarray(b(x, training=True)))
    assert not np.array_equal(first, np.asarray(c(x, training=True)))
    assert not np.array_equal(first, np.asarray(a(x, training=True)))  # the next call draws new masks


def test_layer_config_and_bad_rates():
    layer = DropPath(0.25, seed=3, name="dp")
    config = layer.get_config()
    assert (config["rate"], config["seed"], config["name"]) == (0.25, 3, "dp")
    assert DropPath.from_config(config).get_config() == config
    assert keras.saving.serialize_keras_object(layer)["registered_name"] == "kcnn>DropPath"
    for bad in (1.0, -0.1, "x"):
        with pytest.raises(ValueError, match=r"`rate` must .*Received: rate="):
            DropPath(bad)


# --------------------------------------------------------------------------------------------- the builders
@pytest.mark.parametrize("name,blocks",
                         [("resnet20", 9), ("resnet32", 15), ("resnet18", 8), ("resnet50", 16)])
def test_block_rates_are_linear_over_depth(name, blocks):
    model = build(name, drop_path_rate=0.2)
    layers = drop_paths(model)
    assert len(layers) == blocks
    np.testing.assert_allclose([layer.rate for layer in layers], 0.2 * np.arange(blocks) / (blocks - 1),
                               rtol=0, atol=1e-12)
    assert layers[0].rate == 0.0 and layers[-1].rate == pytest.approx(0.2)
    # on the residual branch, right before the addition
    for layer in layers:
        block = layer.name[: -len("_drop_path")]
        add = model.get_layer(f"{block}_add")
        assert layer.output is add.input[1]
    # one seed generator state per dropping layer, in model.variables (what kcnn's checkpoints hold)
    seeds = [v for v in model.variables if v.path.endswith("seed_generator_state")]
    assert len(seeds) == blocks - 1


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "resnet50"])
def test_rate_0_builds_the_same_model_as_before(name):
    before, zero, dropping = build(name), build(name, drop_path_rate=0.0), build(name, drop_path_rate=0.1)
    names = [layer.name for layer in before.layers]
    assert [layer.name for layer in zero.layers] == names
    assert drop_paths(zero) == []
    assert len(zero.variables) == len(before.variables)
    assert trainable(zero) == trainable(before) == trainable(dropping)
    # the same layers in the same order, plus DropPath and the shortcuts' Identity layers
    added = [layer for layer in dropping.layers if isinstance(layer, (DropPath, keras.layers.Identity))]
    assert [layer.name for layer in dropping.layers if layer not in added] == names
    assert {layer.name.rsplit("_", 1)[-1] for layer in added} <= {"path", "identity"}
    assert [tuple(w.shape) for w in dropping.weights] == [tuple(w.shape) for w in before.weights]


def test_resnet20_keeps_the_papers_size():
    # the paper's 0.27 M
    assert round(trainable(kcnn.build("resnet20", drop_path_rate=0.1)) / 1e6, 3) == 0.270
    assert trainable(kcnn.build("resnet20", drop_path_rate=0.1)) == trainable(kcnn.build("resnet20"))


@pytest.mark.parametrize("name", ["resnet20", "resnet50"])
def test_inference_equals_the_rate_0_model_with_the_same_weights(name):
    plain, dropping = build(name), build(name, drop_path_rate=0.5)
    dropping.set_weights(plain.get_weights())
    x = images(plain)
    expected = np.asarray(plain(x, training=False))
    np.testing.assert_array_equal(np.asarray(dropping(x, training=False)), expected)
    np.testing.assert_array_equal(dropping.predict(x, verbose=0), plain.predict(x, verbose=0))
    assert not np.allclose(np.asarray(dropping(x, training=True)), np.asarray(plain(x, training=True)))


@pytest.mark.parametrize("suffix", [".weights.h5", ".h5"])
def test_weight_files_of_the_rate_0_model_load(tmp_path, suffix):
    """A rate-0 file (``.h5``: keras.applications' format, matched by layer order) fills a dropping model."""
    plain = build("resnet50")
    path = tmp_path / f"plain{suffix}"
    plain.save_weights(path) if suffix == ".weights.h5" else plain.save(path)
    dropping = build("resnet50", drop_path_rate=0.2, weights=str(path))
    x = images(plain, n=2)
    expected = np.asarray(plain(x, training=False))
    np.testing.assert_array_equal(np.asarray(dropping(x, training=False)), expected)


def test_same_seed_builds_give_the_same_masks_and_a_restored_state_repeats_them():
    a, b = build(drop_path_rate=0.5), build(drop_path_rate=0.5)
    x = images(a, n=8)
    first = np.asarray(a(x, training=True))
    np.testing.assert_array_equal(first, np.asarray(b(x, training=True)))
    state = training_state(a, None, phase=0, epoch=0)  # a kcnn checkpoint's arrays, after one draw
    after = np.asarray(a(x, training=True))
    assert not np.array_equal(first, after)
    restore_model_state(b, state)
    np.testing.assert_array_equal(np.asarray(b(x, training=True)), after)


def test_trains_in_a_compiled_step():
    model = build(drop_path_rate=0.2)
    x = images(model, n=8)
    traced = tf.function(lambda t: model(t, training=True), input_signature=[tf.TensorSpec((None, *SHAPE))])
    assert tuple(traced(x).shape) == (8, 5)  # an unknown batch size in a graph
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    loss = model.train_on_batch(x, np.arange(8) % 5)
    assert np.isfinite(loss)


def test_keras_file_round_trip(tmp_path):
    model = build(drop_path_rate=0.3)
    path = tmp_path / "dp.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = images(model)
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False)))
    configs = [layer.get_config() for layer in drop_paths(model)]
    assert [layer.get_config() for layer in drop_paths(loaded)] == configs
    assert [round(layer.rate, 6) for layer in drop_paths(loaded)] == [round(0.3 * i / 8, 6) for i in range(9)]


@pytest.mark.parametrize("bad", [1.0, -0.1, "high"])
def test_bad_drop_path_rate(bad):
    with pytest.raises(ValueError, match=r"^`drop_path_rate` must .*Received: drop_path_rate=") as err:
        kcnn.build("resnet20", drop_path_rate=bad)
    assert "\n" not in str(err.value)


def test_transfer_backbone_passes_the_option():
    plain = kcnn.transfer.backbone("resnet20", None, (32, 32, 3))
    bb = kcnn.transfer.backbone("resnet20", None, (32, 32, 3), options={"drop_path_rate": 0.1})
    rates = [round(layer.rate, 6) for layer in drop_paths(bb.model)]
    assert rates == [round(0.1 * i / 8, 6) for i in range(9)]
    assert bb.block_names == plain.block_names
    assert trainable(bb.model) == trainable(plain.model)
