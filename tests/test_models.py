"""Every registered model: shapes, gradients, config and .keras round trips, faithful sizes and weights."""
import inspect

import numpy as np
import pytest
import tensorflow as tf

import keras
import kcnn
from kcnn import registry

# Small but faithful settings, read from each model's spec and builder so that a new family needs no entry here:
# the spec's minimum side (at least SMALL_SIDE), SMALL_CLASSES classes, and hidden widths of 32 where the builder's
# default head has any (VGG's 4096s), so the registry-wide tests stay fast on 2 cores.
SMALL_SIDE = 16
SMALL_CLASSES = 5
HEAVY = {"resnet101", "resnet152", "resnet110", "resnet56", "resnet44"}  # full round trips of these are slow-marked
# Each family's first registered (smallest) model, for the tests of options every family has.
ONE_PER_FAMILY = [members[0] for members in registry.families().values()]


def small_settings(name):
    entry = kcnn.get_entry(name)
    side = max(entry.min_size, SMALL_SIDE)
    settings = dict(input_shape=(side, side, entry.default_input_shape[2]), classes=SMALL_CLASSES)
    fc_units = inspect.signature(entry.fn).parameters["fc_units"].default
    if fc_units:
        settings["fc_units"] = (32,) * len(fc_units)
    return settings


def small(name, **extra):
    keras.utils.set_random_seed(0)
    return kcnn.build(name, **{**small_settings(name), **extra})


def batch(model, n=2, seed=0):
    shape = model.input_shape[1:]
    return np.random.default_rng(seed).uniform(0, 1, size=(n, *shape)).astype("float32")


def test_registry_lists_every_family():
    names = kcnn.list_models()
    grouped = registry.families()
    assert names == sorted(set(names)) == sorted(n for members in grouped.values() for n in members)
    assert kcnn.list_models("resnet*") == [n for n in names if n.startswith("resnet")]
    assert {kcnn.get_entry(n).family for n in names} == set(grouped)
    assert [kcnn.get_entry(n).family for n in ONE_PER_FAMILY] == list(grouped)
    assert all(kcnn.get_entry(n).family == family for family, members in grouped.items() for n in members)


@pytest.mark.parametrize("name", kcnn.list_models())
def test_forward_shape_and_gradients(name):
    model = small(name)
    x = batch(model)
    assert model.output_shape == (None, SMALL_CLASSES)
    with tf.GradientTape() as tape:
        y = model(x, training=True)
        loss = keras.losses.sparse_categorical_crossentropy(np.array([0, 3]), y)
    assert y.shape == (2, SMALL_CLASSES)
    assert np.all(np.isfinite(y.numpy()))
    np.testing.assert_allclose(y.numpy().sum(axis=1), 1.0, rtol=1e-5)
    grads = tape.gradient(loss, model.trainable_weights)
    missing = [w.path for w, g in zip(model.trainable_weights, grads) if g is None]
    assert missing == []
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in grads) > 0
    assert all(bool(tf.reduce_all(tf.math.is_finite(g))) for g in grads)


@pytest.mark.parametrize(
    "name", [n for n in kcnn.list_models() if n not in HEAVY]
    + [pytest.param(n, marks=pytest.mark.slow) for n in sorted(HEAVY)]
)
def test_config_round_trip(name):
    model = small(name)
    clone = keras.Model.from_config(model.get_config())
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
    assert clone.count_params() == model.count_params()
    clone.set_weights(model.get_weights())
    x = batch(model)
    np.testing.assert_allclose(clone(x), model(x), atol=1e-6)


@pytest.mark.parametrize(
    "name", [n for n in kcnn.list_models() if n not in HEAVY]
    + [pytest.param(n, marks=pytest.mark.slow) for n in sorted(HEAVY)]
)
def test_keras_save_load(name, tmp_path):
    model = small(name, norm="batch", spatial_dropout=0.1) if name.startswith("vgg") else small(name)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe mode: no Lambda layers anywhere
    x = batch(model)
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)


# --- faithful to keras.applications, torchvision and the papers -------------------------------------------------

def _weight_signature(model):
    return [(w.path, tuple(w.shape)) for w in model.weights]


def _layer_names(model):
    return [layer.name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


@pytest.mark.parametrize("name,app", [("vgg16", "VGG16"), ("vgg19", "VGG19"), ("resnet50", "ResNet50")])
def test_same_as_keras_applications(name, app):
    ours = kcnn.build(name)
    theirs = getattr(keras.applications, app)(weights=None)
    assert ours.count_params() == theirs.count_params()
    assert _layer_names(ours) == _layer_names(theirs)
    assert _weight_signature(ours) == _weight_signature(theirs)


@pytest.mark.slow
@pytest.mark.parametrize("name,app", [("resnet101", "ResNet101"), ("resnet152", "ResNet152")])
def test_deep_resnets_same_as_keras_applications(name, app):
    ours, theirs = kcnn.build(name), getattr(keras.applications, app)(weights=None)
    assert ours.count_params() == theirs.count_params()
    assert _weight_signature(ours) == _weight_signature(theirs)


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("name,expected", [
    ("vgg16", 138_357_544),  # config D, the lecture's and keras.applications' figure
    ("resnet18", 11_689_512),  # torchvision
    ("resnet34", 21_797_672),  # torchvision
    ("allcnn_c", 1_369_738),  # Springenberg et al., with biases
])
def test_exact_sizes(name, expected):
    assert _trainable(kcnn.build(name)) == expected


@pytest.mark.parametrize("name,paper", [
    ("resnet20", 0.27e6), ("resnet32", 0.46e6), ("resnet44", 0.66e6), ("resnet56", 0.85e6), ("resnet110", 1.7e6),
])
def test_cifar_resnet_sizes_match_the_paper(name, paper):
    assert abs(_trainable(kcnn.build(name)) - paper) / paper < 0.03


def test_cifar_shortcut_b_adds_projections():
    a, b = kcnn.build("resnet20"), kcnn.build("resnet20", shortcut="B")
    # two projection shortcuts (16->32, 32->64): 1x1 conv without bias + BN gamma/beta
    assert _trainable(b) - _trainable(a) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert "conv3_block1_0_zeropad" in _layer_names(a) and "conv3_block1_0_conv" in _layer_names(b)


def test_vgg_cifar_is_a_small_vgg():
    model = kcnn.build("vgg_cifar")
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 32, 64, 64, 128, 128]
    assert {c.kernel_size for c in convs} == {(3, 3)}
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 288_746
    assert kcnn.count_macs(model) == 38_634_752
    assert kcnn.get_entry("vgg_cifar").blocks == ("block1", "block2", "block3")
    assert model.output_shape == (None, 10)


def test_vgg_family_depths():
    convs = {n: sum(isinstance(layer, keras.layers.Conv2D) for layer in small(n).layers)
             for n in ("vgg11", "vgg13", "vgg16", "vgg19")}
    assert convs == {"vgg11": 8, "vgg13": 10, "vgg16": 13, "vgg19": 16}


def test_allcnn_has_no_pooling_and_no_dense():
    model = kcnn.build("allcnn_c")
    kinds = {type(layer).__name__ for layer in model.layers}
    assert not kinds & {"MaxPooling2D", "AveragePooling2D", "Dense", "Flatten"}
    assert model.get_layer("block3_conv1").output.shape[1:3] == (6, 6)


# --- the kcnn options, applied the same way everywhere ----------------------------------------------------------

@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_norm_and_spatial_dropout_options(name):
    plain = small(name, norm=None)
    model = small(name, norm="batch", spatial_dropout=0.2)
    convs = [la for la in model.layers if isinstance(la, keras.layers.Conv2D) and la.name != "predictions_conv"]
    bns = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    sdrops = [la for la in model.layers if isinstance(la, keras.layers.SpatialDropout2D)]
    assert len(bns) == len(convs)
    assert not any(isinstance(la, keras.layers.BatchNormalization) for la in plain.layers)
    assert sdrops and all(la.rate == 0.2 for la in sdrops)
    assert all(bn.momentum == kcnn.layers.BN_MOMENTUM for bn in bns)


@pytest.mark.parametrize("head,kinds", [
    ("dense", {"Flatten", "Dense"}), ("gap", {"GlobalAveragePooling2D", "Dense"}),
    ("conv", {"GlobalAveragePooling2D", "Conv2D"}),
])
def test_heads(head, kinds):
    model = kcnn.build("vgg11", input_shape=(32, 32, 3), classes=7, head=head, fc_units=(16,), dropout=0.5)
    tail = {type(la).__name__ for la in model.layers[-6:]}
    assert kinds <= tail
    assert model.output_shape == (None, 7)
    assert model.get_layer("fc1_dropout").rate == 0.5


def test_conv_head_equals_dense_head_with_reshaped_weights():
    dense = kcnn.build("vgg11", input_shape=(64, 64, 3), classes=4, fc_units=(8, 8), head="dense")
    conv = kcnn.build("vgg11", input_shape=(64, 64, 3), classes=4, fc_units=(8, 8), head="conv")
    for layer in dense.layers:
        ws = layer.get_weights()
        if ws:
            target = conv.get_layer("predictions_conv" if layer.name == "predictions" else layer.name)
            target.set_weights([ws[0].reshape(target.get_weights()[0].shape), ws[1]])
    x = np.random.default_rng(1).uniform(0, 255, size=(2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(conv.predict(x, verbose=0), dense.predict(x, verbose=0), atol=1e-5)


def test_include_top_false_and_pooling():
    fmap = kcnn.build("resnet18", include_top=False, input_shape=(64, 64, 3))
    assert fmap.output_shape == (None, 2, 2, 512)
    assert kcnn.build("resnet18", include_top=False, pooling="avg", input_shape=(64, 64, 3)).output_shape == (None, 512)
    free = kcnn.build("vgg11", include_top=False, pooling="max", input_shape=(None, None, 3))
    assert free.predict(np.zeros((1, 96, 64, 3), "float32"), verbose=0).shape == (1, 512)


def test_strided_conv_downsampling_options():
    vgg = small("vgg11", downsample="conv")
    base = kcnn.build("allcnn_c", downsample="max")
    assert not any(isinstance(la, keras.layers.MaxPooling2D) for la in vgg.layers)
    assert vgg.get_layer("block1_pool").strides == (2, 2)
    assert sum(isinstance(la, keras.layers.MaxPooling2D) for la in base.layers) == 2
    assert kcnn.build("allcnn_c", paper_dropout=True).get_layer("input_dropout").rate == 0.2


# --- bad input ---------------------------------------------------------------------------------------------------

def test_unknown_name_lists_closest():
    with pytest.raises(ValueError, match="Did you mean .*resnet50"):
        kcnn.build("resnet05")


def test_input_too_small_names_the_minimum():
    with pytest.raises(ValueError, match="at least 32x32"):
        kcnn.build("vgg16", input_shape=(16, 16, 3))


@pytest.mark.parametrize("kwargs,match", [
    (dict(classes=0), r"Received: classes=0"),
    (dict(dropout=1.0), r"Received: dropout=1.0"),
    (dict(spatial_dropout=-0.1), r"Received: spatial_dropout=-0.1"),
    (dict(norm="layer"), r"Received: norm='layer'"),
    (dict(head="mlp"), r"Received: head='mlp'"),
    (dict(weights="imagenet"), r"Received: weights='imagenet'"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kcnn.build("resnet20", **kwargs)


def test_dense_head_needs_a_fixed_size():
    with pytest.raises(ValueError, match="head='dense'.*fixed input size"):
        kcnn.build("vgg11", input_shape=(None, None, 3))


# --- weights -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("include_top", [True, False])
def test_keras_applications_vgg16_h5_loads(tmp_path, include_top):
    keras.utils.set_random_seed(1)
    kw = dict(input_shape=(32, 32, 3), include_top=include_top)
    if include_top:
        kw["classes"] = 3
    theirs = keras.applications.VGG16(weights=None, **kw)
    path = tmp_path / "vgg16.h5"
    theirs.save(path)
    ours = kcnn.build("vgg16", weights=str(path), **kw)
    x = np.random.default_rng(2).uniform(0, 255, size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(ours.predict(x, verbose=0), theirs.predict(x, verbose=0), atol=1e-4)


def test_keras_applications_resnet50_weights_h5_and_notop(tmp_path):
    keras.utils.set_random_seed(2)
    theirs = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), include_top=False)
    theirs.save_weights(tmp_path / "r50.weights.h5")
    theirs.save(tmp_path / "r50_notop.h5")
    x = np.random.default_rng(3).uniform(0, 255, size=(2, 32, 32, 3)).astype("float32")
    ours = kcnn.build("resnet50", weights=str(tmp_path / "r50.weights.h5"), include_top=False,
                      input_shape=(32, 32, 3))
    np.testing.assert_allclose(ours.predict(x, verbose=0), theirs.predict(x, verbose=0), atol=1e-4)
    # a notop file into a model with a new 4-class top: backbone weights by layer name
    topped = kcnn.build("resnet50", weights=str(tmp_path / "r50_notop.h5"), classes=4, input_shape=(32, 32, 3))
    np.testing.assert_array_equal(topped.get_layer("conv5_block3_3_conv").get_weights()[0],
                                  theirs.get_layer("conv5_block3_3_conv").get_weights()[0])


def test_weights_for_another_architecture_is_a_clear_error(tmp_path):
    kcnn.build("resnet20").save_weights(tmp_path / "r20.weights.h5")
    with pytest.raises(kcnn.WeightsError, match="does not fit vgg11"):
        kcnn.build("vgg11", weights=str(tmp_path / "r20.weights.h5"), **small_settings("vgg11"))
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        kcnn.build("resnet20", weights=str(tmp_path / "missing.h5"))


def test_imagenet_offline_error_names_file_cache_and_path(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: [Errno -2] Name or service not known")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(kcnn.WeightsError) as err:
        kcnn.build("vgg16", weights="imagenet", include_top=False, input_shape=(32, 32, 3))
    message = str(err.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "models") in message and "weights=PATH" in message
    assert "Errno" not in message


def test_imagenet_uses_keras_cache_file(monkeypatch, tmp_path):
    keras.utils.set_random_seed(4)
    ref = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    ref.save(tmp_path / "cached.h5")
    seen = {}

    def cached(fname, origin, cache_subdir, file_hash):
        seen.update(fname=fname, origin=origin, subdir=cache_subdir, md5=file_hash)
        return str(tmp_path / "cached.h5")

    monkeypatch.setattr(keras.utils, "get_file", cached)
    ours = kcnn.build("vgg16", weights="imagenet", include_top=False, input_shape=(32, 32, 3))
    assert seen == dict(fname="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                        origin=keras.src.applications.vgg16.WEIGHTS_PATH_NO_TOP, subdir="models",
                        md5="6d6bbae143d832006294945121d1f1fc")
    np.testing.assert_array_equal(ours.get_layer("block5_conv3").get_weights()[0],
                                  ref.get_layer("block5_conv3").get_weights()[0])
