"""kcnn.convert: dense_to_conv, pool_to_conv, copy_dense_head_to_conv and the lecture's FC-as-conv demo."""
import os
import resource
import time

import keras
import numpy as np
import pytest
from keras import layers

import kcnn
from kcnn import convert

TOL = 1e-5


def rand(*shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def run(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def small_cnn(head_activation="softmax", pool=layers.MaxPooling2D, size=22, name="small_cnn"):
    """Valid padding throughout: 22 -> 20 -> 10 -> 8 -> 4 (total stride 4), then a Flatten/Dense head."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((size, size, 3), name="image")
    x = layers.Conv2D(4, 3, activation="relu", name="conv1")(inputs)
    x = pool(2, name="pool1")(x)
    x = layers.Conv2D(6, 3, activation="relu", name="conv2")(x)
    x = pool(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(16, activation="relu", name="fc1")(x)
    x = layers.Dropout(0.5, name="fc1_dropout")(x)
    x = layers.BatchNormalization(name="fc1_bn")(x)
    x = layers.Dense(5, activation=head_activation, name="predictions")(x)
    return keras.Model(inputs, x, name=name)


@pytest.fixture(scope="module")
def vgg_small():
    keras.utils.set_random_seed(0)
    return kcnn.build("vgg16", input_shape=(64, 64, 3), classes=10, fc_units=(64, 64),
                      classifier_activation=None)


@pytest.fixture(scope="module")
def vgg_small_conv(vgg_small):
    return convert.dense_to_conv(vgg_small)


@pytest.fixture(scope="module")
def cnn():
    return small_cnn(head_activation=None)


# --------------------------------------------------------------------------------------- the lecture's demo
def test_fc_as_conv_demo_gives_three_equal_outputs():
    dense, conv, conv1x1 = convert.fc_as_conv_demo()
    assert dense.shape == (1, 3) and conv.shape == (1, 1, 1, 3) and conv1x1.shape == (1, 1, 1, 3)
    np.testing.assert_allclose(conv.reshape(1, 3), dense, atol=1e-6)
    np.testing.assert_allclose(conv1x1.reshape(1, 3), dense, atol=1e-6)
    # x = [1, 2, 3, 4], W[i, j] = (3 i + j - 6) / 10, b = (-0.5, 0, 0.5): unit j = sum_i x_i W[i, j] + b_j
    np.testing.assert_allclose(dense[0], [-0.5, 1.0, 2.5], atol=1e-6)


# -------------------------------------------------------------------------------------------- dense_to_conv
def test_vgg16_dense_head_same_outputs_at_built_size(vgg_small, vgg_small_conv):
    x = rand(2, 64, 64, 3)
    before = run(vgg_small, x)
    y = run(vgg_small_conv, x)
    assert y.shape == (2, 1, 1, 10)
    assert max_diff(y.reshape(2, 10), before) < TOL
    assert max_diff(run(vgg_small, x), before) == 0.0  # the original is untouched
    assert vgg_small_conv.input_shape == (None, None, None, 3)
    kept = [lay.name for lay in vgg_small.layers if lay.name != "flatten"]
    assert [lay.name for lay in vgg_small_conv.layers] == kept
    assert vgg_small_conv.get_layer("fc1").kernel.shape == (2, 2, 512, 64)
    assert vgg_small_conv.get_layer("fc2").kernel.shape == (1, 1, 64, 64)
    assert vgg_small_conv.get_layer("predictions").kernel.shape == (1, 1, 64, 10)
    np.testing.assert_array_equal(vgg_small_conv.get_layer("fc1").kernel.numpy().reshape(2048, 64),
                                  vgg_small.get_layer("fc1").kernel.numpy())
    assert vgg_small_conv.count_params() == vgg_small.count_params()
    # the Conv2D keeps the Dense's settings (it was built with zeros, then given the Dense's weights)
    assert vgg_small_conv.get_layer("fc1").get_config()["kernel_initializer"]["class_name"] == "GlorotUniform"
    assert vgg_small_conv.get_layer("fc1").activation is vgg_small.get_layer("fc1").activation


@pytest.mark.parametrize("size, cells", [(96, 2), (128, 3)])
def test_vgg16_larger_input_gives_a_map(vgg_small_conv, size, cells):
    assert run(vgg_small_conv, rand(1, size, size, 3)).shape == (1, cells, cells, 10)


def test_vgg16_default_widths_same_outputs():
    keras.utils.set_random_seed(0)
    model = kcnn.build("vgg16", input_shape=(64, 64, 3), classes=10)
    fcn = convert.dense_to_conv(model)
    x = rand(2, 64, 64, 3, seed=1)
    assert fcn.get_layer("fc1").kernel.shape == (2, 2, 512, 4096)
    assert max_diff(run(fcn, x).reshape(2, 10), run(model, x)) < TOL


def test_softmax_is_applied_per_cell(vgg_small, vgg_small_conv):
    soft = kcnn.build("vgg16", input_shape=(64, 64, 3), classes=10, fc_units=(64, 64))
    soft.set_weights(vgg_small.get_weights())
    fcn = convert.dense_to_conv(soft)
    x = rand(1, 96, 96, 3, seed=2) * 50.0  # logits far from zero, so a wrong axis would show
    probabilities, logits = run(fcn, x), run(vgg_small_conv, x)
    assert probabilities.shape == (1, 2, 2, 10)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
    assert max_diff(probabilities, keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))) < TOL


def test_sliding_window_equals_original_on_each_window(cnn):
    fcn = convert.dense_to_conv(cnn)
    x = rand(2, 30, 30, 3, seed=3)  # 22 + 2 * 4: 3 x 3 windows at stride 4
    scores = run(fcn, x)
    assert scores.shape == (2, 3, 3, 5)
    diffs = [max_diff(scores[:, i, j], run(cnn, x[:, 4 * i:4 * i + 22, 4 * j:4 * j + 22]))
             for i in range(3) for j in range(3)]
    assert max(diffs) < TOL
    assert np.std(scores) > 1e-3  # the cells are not trivially equal


def test_sequential_model_stays_sequential():
    keras.utils.set_random_seed(2)
    model = keras.Sequential([
        keras.Input((22, 22, 3)),
        layers.Conv2D(4, 3, activation="relu", name="c1"), layers.MaxPooling2D(name="p1"),
        layers.Conv2D(6, 3, activation="relu", name="c2"), layers.MaxPooling2D(name="p2"),
        layers.Flatten(name="flat"),
        layers.Dense(16, activation="relu", name="fc1"), layers.Dropout(0.3, name="drop"),
        layers.Dense(5, activation="softmax", name="predictions"),
    ], name="seq")
    fcn = convert.dense_to_conv(model)
    assert isinstance(fcn, keras.Sequential) and fcn.name == "seq"
    assert [lay.name for lay in fcn.layers] == ["c1", "p1", "c2", "p2", "fc1", "drop", "predictions"]
    assert fcn.input_shape == (None, None, None, 3)
    x = rand(3, 22, 22, 3, seed=4)
    assert max_diff(run(fcn, x).reshape(3, 5), run(model, x)) < TOL
    big = rand(1, 26, 30, 3, seed=5)
    scores = run(fcn, big)
    assert scores.shape == (1, 2, 3, 5)
    assert max_diff(scores[0, 1, 2], run(model, big[:, 4:26, 8:30])[0]) < TOL
    before = run(model, x)  # the copies are independent: changing one model leaves the other alone
    fcn.get_layer("fc1").kernel.assign(np.zeros((4, 4, 6, 16), "float32"))
    fcn.get_layer("c1").bias.assign_add(np.ones(4, "float32"))
    assert max_diff(run(model, x), before) == 0.0
    allconv = convert.pool_to_conv(model)
    assert isinstance(allconv, keras.Sequential)
    kinds = [type(allconv.get_layer(n)).__name__ for n in ("p1", "p2", "flat")]
    assert kinds == ["Conv2D", "Conv2D", "Flatten"]
    assert allconv.output_shape == model.output_shape == (None, 5)


def test_multi_input_multi_output_model():
    keras.utils.set_random_seed(6)
    image, meta = keras.Input((16, 16, 3), name="image"), keras.Input((4,), name="meta")
    x = layers.Conv2D(4, 3, activation="relu", name="conv")(image)
    flat = layers.Flatten(name="flatten")(x)
    scores = layers.Add(name="add")([layers.Dense(5, name="fc_a")(flat), layers.Dense(5, name="fc_b")(flat)])
    scores = layers.Softmax(name="probabilities")(scores)
    pooled = layers.Concatenate(name="concat")([layers.GlobalAveragePooling2D(name="avg_pool")(x), meta])
    aux = layers.Dense(2, name="aux")(pooled)
    side = layers.Dense(2, name="side")(keras.ops.relu(meta))  # no image in it: it stays a Dense
    model = keras.Model({"image": image, "meta": meta}, {"scores": scores, "aux": aux, "side": side})
    fcn = convert.dense_to_conv(model)
    assert [type(fcn.get_layer(n)).__name__ for n in ("fc_a", "fc_b", "aux", "side")] == ["Conv2D", "Conv2D",
                                                                                           "Dense", "Dense"]
    inputs = {"image": rand(2, 16, 16, 3, seed=17), "meta": rand(2, 4, seed=18)}
    want, got = model(inputs), fcn(inputs)
    assert got["scores"].shape == (2, 1, 1, 5)
    assert max(max_diff(np.reshape(got[k], want[k].shape), want[k]) for k in want) < TOL
    big = fcn({"image": rand(2, 20, 19, 3, seed=19), "meta": inputs["meta"]})
    assert big["scores"].shape == (2, 5, 4, 5) and big["aux"].shape == (2, 2)
    assert max_diff(big["side"], want["side"]) == 0.0


def test_nested_backbone_and_nested_head():
    keras.utils.set_random_seed(3)
    base_in = keras.Input((22, 22, 3), name="base_input")
    y = layers.Conv2D(4, 3, activation="relu", name="b_conv1")(base_in)
    y = layers.MaxPooling2D(2, name="b_pool1")(y)
    y = layers.Conv2D(6, 3, activation="relu", name="b_conv2")(y)
    base = keras.Model(base_in, layers.MaxPooling2D(2, name="b_pool2")(y), name="backbone")
    base.trainable = False
    head = keras.Sequential([keras.Input((96,)), layers.Dense(8, activation="relu", name="h_fc1"),
                             layers.Dense(3, name="h_out")], name="head")
    inputs = keras.Input((22, 22, 3), name="image")
    x = base(inputs, training=False)
    x = layers.Flatten(name="flatten")(x)
    model = keras.Model(inputs, head(x), name="transfer")
    fcn = convert.dense_to_conv(model)
    assert [lay.name for lay in fcn.layers] == ["image", "backbone", "head"]
    assert fcn.get_layer("backbone").trainable is False
    assert not fcn.get_layer("backbone").trainable_weights
    assert fcn.get_layer("head").get_layer("h_fc1").kernel.shape == (4, 4, 6, 8)
    x = rand(2, 22, 22, 3, seed=6)
    assert max_diff(run(fcn, x).reshape(2, 3), run(model, x)) < TOL
    big = rand(1, 26, 26, 3, seed=7)
    scores = run(fcn, big)
    assert scores.shape == (1, 2, 2, 3)
    assert max_diff(scores[0, 1, 0], run(model, big[:, 4:26, 0:22])[0]) < TOL


def test_resnet50_gap_head():
    keras.utils.set_random_seed(4)
    model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)
    fcn = convert.dense_to_conv(model)
    assert fcn.input_shape == (None, None, None, 3) and fcn.output_shape == (None, 10)
    assert [lay.name for lay in fcn.layers[-3:]] == ["predictions", "avg_pool", "predictions_activation"]
    assert fcn.get_layer("predictions").kernel.shape == (1, 1, 2048, 10)
    x = rand(2, 64, 64, 3, seed=8)
    assert max_diff(run(fcn, x), run(model, x)) < TOL
    # at 96 px: the same backbone with free size and global pooling, then the Dense by hand
    backbone = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg",
                                           input_shape=(None, None, 3))
    backbone.set_weights(model.get_weights()[:-2])
    kernel, bias = model.get_layer("predictions").get_weights()
    big = rand(2, 96, 96, 3, seed=9)
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(run(backbone, big) @ kernel + bias))
    assert max_diff(run(fcn, big), expected) < TOL


def test_gap_dropout_dense_head_moves_before_the_pool():
    keras.utils.set_random_seed(5)
    inputs = keras.Input((None, None, 3), name="image")
    x = layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(0.2, name="top_dropout")(x)
    x = layers.Dense(6, activation="relu", name="fc1")(x)  # after this one, the vector is pooled for good
    x = layers.Dense(4, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, x)
    fcn = convert.dense_to_conv(model)
    names = [(lay.name, type(lay).__name__) for lay in fcn.layers]
    assert names == [("image", "InputLayer"), ("conv", "Conv2D"), ("top_dropout", "Dropout"),
                     ("fc1", "Conv2D"), ("avg_pool", "GlobalAveragePooling2D"),
                     ("fc1_activation", "Activation"), ("predictions", "Dense")]
    assert fcn.get_layer("top_dropout").noise_shape == (None, 1, 1, None)
    for size in (20, 33):
        x = rand(2, size, size, 3, seed=size)
        assert max_diff(run(fcn, x), run(model, x)) < TOL


def test_global_max_pool_head_keeps_its_dense():
    inputs = keras.Input((16, 16, 3))
    x = layers.GlobalMaxPooling2D(name="max_pool")(layers.Conv2D(4, 3, name="conv")(inputs))
    model = keras.Model(inputs, layers.Dense(3, name="predictions")(x))
    fcn = convert.dense_to_conv(model)
    assert isinstance(fcn.get_layer("predictions"), layers.Dense)
    x = rand(1, 16, 16, 3)
    assert max_diff(run(fcn, x), run(model, x)) == 0.0
    assert run(fcn, rand(1, 24, 20, 3)).shape == (1, 3)


def _reshape_trick():
    inputs = keras.Input((8, 8, 2))
    x = layers.Reshape((128,), name="as_flatten")(inputs)
    return keras.Model(inputs, layers.Dense(3, name="fc")(x)), "as_flatten"


def _lambda_layer():
    inputs = keras.Input((8, 8, 2))
    x = layers.Lambda(lambda t: t * 2.0, name="double")(inputs)
    x = layers.Dense(3, name="fc")(layers.Flatten()(x))
    return keras.Model(inputs, x), "double"


def _flat_input():
    inputs = keras.Input((20,))
    return keras.Model(inputs, layers.Dense(3, name="mlp_fc")(inputs)), "mlp_fc"


def _flatten_output():
    inputs = keras.Input((8, 8, 2))
    features = layers.Flatten(name="features")(layers.Conv2D(2, 3, name="c")(inputs))
    return keras.Model(inputs, features), "features"


def _norm_after_flatten():
    inputs = keras.Input((8, 8, 2))
    x = layers.BatchNormalization(name="flat_bn")(layers.Flatten()(inputs))
    return keras.Model(inputs, layers.Dense(3, name="fc")(x)), "flat_bn"


class _Opaque(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = layers.Conv2D(2, 3)

    def call(self, x):
        return self.conv(x)


def _subclassed_nested():
    inputs = keras.Input((8, 8, 2))
    x = _Opaque(name="opaque")(inputs)
    return keras.Model(inputs, layers.Dense(3, name="fc")(layers.Flatten()(x))), "opaque"


def _unbuilt_sequential():
    return keras.Sequential([layers.Flatten(), layers.Dense(3)], name="no_input"), "no_input"


@pytest.mark.parametrize("make", [_reshape_trick, _lambda_layer, _flat_input, _flatten_output,
                                  _norm_after_flatten, _subclassed_nested, _unbuilt_sequential])
def test_refusals_name_the_layer(make):
    model, name = make()
    with pytest.raises(ValueError, match=f"'{name}'"):
        convert.dense_to_conv(model)


def test_not_a_model_is_refused():
    with pytest.raises(ValueError, match="Received: model="):
        convert.dense_to_conv(layers.Dense(3))
    with pytest.raises(ValueError, match="Received: init='max'"):
        convert.pool_to_conv(small_cnn(), init="max")


# -------------------------------------------------------------------------------- kcnn head="conv" equality
def test_kcnn_conv_head_equals_dense_to_conv(vgg_small, vgg_small_conv):
    conv_head = kcnn.build("vgg16", input_shape=(64, 64, 3), classes=10, fc_units=(64, 64), head="conv",
                           classifier_activation=None)
    convert.copy_dense_head_to_conv(vgg_small, conv_head)
    x = rand(2, 64, 64, 3, seed=10)
    assert max_diff(run(conv_head, x), run(vgg_small_conv, x).reshape(2, 10)) < TOL
    assert max_diff(run(conv_head, x), run(vgg_small, x)) < TOL
    for name in ("fc1", "fc2"):
        np.testing.assert_array_equal(conv_head.get_layer(name).kernel.numpy(),
                                      vgg_small_conv.get_layer(name).kernel.numpy())
    np.testing.assert_array_equal(conv_head.get_layer("predictions_conv").kernel.numpy(),
                                  vgg_small_conv.get_layer("predictions").kernel.numpy())
    with pytest.raises(ValueError, match="fc1"):  # wrong widths are refused, naming the layer
        convert.copy_dense_head_to_conv(vgg_small, kcnn.build(
            "vgg16", input_shape=(64, 64, 3), classes=10, fc_units=(32, 64), head="conv"))


# --------------------------------------------------------------------------------------------- pool_to_conv
def test_pool_to_conv_average_init_equals_average_pooling():
    model = small_cnn(pool=layers.AveragePooling2D, head_activation=None)
    allconv = convert.pool_to_conv(model, init="average")
    for name in ("pool1", "pool2"):
        conv = allconv.get_layer(name)
        assert isinstance(conv, layers.Conv2D) and conv.trainable
        assert conv.strides == (2, 2) and conv.padding == "valid"
        assert conv.output.shape == model.get_layer(name).output.shape
    kernel = allconv.get_layer("pool2").kernel.numpy()
    assert kernel.shape == (2, 2, 6, 6)
    assert np.all(kernel[:, :, np.arange(6), np.arange(6)] == 0.25) and kernel.sum() == pytest.approx(6.0)
    assert [lay.name for lay in allconv.layers] == [lay.name for lay in model.layers]
    x = rand(3, 22, 22, 3, seed=11)
    assert max_diff(run(allconv, x), run(model, x)) < TOL
    extra = len(allconv.trainable_weights) - len(model.trainable_weights)
    assert extra == 4  # kernel and bias of two convs


def test_pool_to_conv_same_padding_differs_only_at_the_border():
    inputs = keras.Input((5, 5, 2))
    model = keras.Model(inputs, layers.AveragePooling2D(3, strides=1, padding="same", name="pool")(inputs))
    allconv = convert.pool_to_conv(model, init="average")
    x = rand(1, 5, 5, 2, seed=12) + 1.0
    pooled, conv = run(model, x), run(allconv, x)
    assert conv.shape == pooled.shape == (1, 5, 5, 2)
    assert max_diff(conv[:, 1:4, 1:4], pooled[:, 1:4, 1:4]) < TOL
    np.testing.assert_allclose(conv[0, 0, 0], pooled[0, 0, 0] * 4 / 9, rtol=1e-5)  # 4 of 9 taps in the image


def test_pool_to_conv_on_max_pooling_keeps_shapes(vgg_small):
    allconv = convert.pool_to_conv(vgg_small, init="average")
    randomly = convert.pool_to_conv(vgg_small, seed=0)
    for b, channels in enumerate((64, 128, 256, 512, 512), start=1):
        name = f"block{b}_pool"
        assert isinstance(allconv.get_layer(name), layers.Conv2D)
        assert allconv.get_layer(name).kernel.shape == (2, 2, channels, channels)
        assert allconv.get_layer(name).output.shape == vgg_small.get_layer(name).output.shape
        assert randomly.get_layer(name).trainable
    assert allconv.output_shape == vgg_small.output_shape
    assert np.count_nonzero(randomly.get_layer("block1_pool").kernel.numpy()) > 0.9 * 2 * 2 * 64 * 64
    x = rand(1, 64, 64, 3, seed=13)
    assert max_diff(run(allconv, x), run(vgg_small, x)) > 1e-4  # an init, not an exact max pool
    np.testing.assert_array_equal(allconv.get_layer("fc1").kernel.numpy(),
                                  vgg_small.get_layer("fc1").kernel.numpy())


# --------------------------------------------------------------------------------------------- save and load
def gap_model():
    keras.utils.set_random_seed(7)
    inputs = keras.Input((12, 12, 3))
    x = layers.GlobalAveragePooling2D(name="avg_pool")(layers.Conv2D(4, 3, name="conv")(inputs))
    x = layers.Dense(3, activation="softmax", name="predictions")(layers.Dropout(0.1, name="drop")(x))
    return keras.Model(inputs, x)


def nested_model():
    keras.utils.set_random_seed(8)
    base_in = keras.Input((10, 10, 3))
    base = keras.Model(base_in, layers.MaxPooling2D(name="pool")(layers.Conv2D(4, 3, name="conv")(base_in)),
                       name="base")
    return keras.Sequential([keras.Input((10, 10, 3)), base, layers.Flatten(name="flat"),
                             layers.Dense(3, name="predictions")])


@pytest.mark.parametrize("kind", ["dense_to_conv", "sequential", "gap", "nested", "pool_to_conv"])
def test_keras_file_round_trip(tmp_path, cnn, kind):
    if kind == "gap":
        model, x = convert.dense_to_conv(gap_model()), rand(2, 17, 15, 3, seed=20)
    elif kind == "nested":
        model, x = convert.dense_to_conv(nested_model()), rand(2, 14, 12, 3, seed=21)
    elif kind == "dense_to_conv":
        model, x = convert.dense_to_conv(small_cnn()), rand(2, 30, 26, 3, seed=14)
    elif kind == "sequential":
        seq = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(4, 3, name="c"),
                                layers.Flatten(name="f"),
                                layers.Dense(5, activation="softmax", name="predictions")])
        model, x = convert.dense_to_conv(seq), rand(2, 11, 9, 3, seed=15)
    else:
        model, x = convert.pool_to_conv(cnn, init="average"), rand(2, 22, 22, 3, seed=16)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    assert [lay.name for lay in loaded.layers] == [lay.name for lay in model.layers]
    np.testing.assert_array_equal(run(loaded, x), run(model, x))


# --------------------------------------------------------------------------------------------- measurement
@pytest.mark.slow
def test_measure_vgg16_224_conversion():
    """Time and peak memory of dense_to_conv on the full VGG16 (138M parameters): printed, not asserted."""
    model = kcnn.build("vgg16")
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    fcn = convert.dense_to_conv(model)
    seconds = time.perf_counter() - start
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"\ndense_to_conv(vgg16 @224): {seconds:.2f} s, peak RSS {peak_before / 1e6:.2f} -> "
          f"{peak_after / 1e6:.2f} GB (Linux ru_maxrss in KiB)")
    assert fcn.get_layer("fc1").kernel.shape == (7, 7, 512, 4096)
    assert fcn.count_params() == model.count_params() == 138_357_544


def test_public_api_stays_on_kcnn_convert():
    assert kcnn.convert is convert
    assert sorted(convert.__all__) == sorted(
        ["dense_to_conv", "pool_to_conv", "copy_dense_head_to_conv", "fc_as_conv_demo", "POOL_INITS"])
    assert all(callable(getattr(convert, name)) for name in convert.__all__ if name != "POOL_INITS")
    assert convert.POOL_INITS == ("random", "average")
