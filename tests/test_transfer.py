"""Tests for kcnn.transfer: backbones, classifiers, schedules, fit_schedule, feature caching, checkpoints.

Small and seeded: 32-px images, All-CNN-C with batch norm as the trainable backbone, a few dozen examples.
"""
import contextlib
import io
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import kcnn
from kcnn import transfer as T
from kcnn.transfer.families import FAMILIES, Family
from kcnn.transfer.names import keras_family
from kcnn.weights import WeightsError

CLASSES = 3


def _images(n, size=32, seed=0):
    rng = np.random.RandomState(seed)
    return rng.uniform(0, 255, (n, size, size, 3)).astype("float32"), (np.arange(n) % CLASSES).astype("int64")


def _dataset(x, y, batch=16):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def _bn_layers(model):
    body = model.get_layer("backbone")
    return [layer for layer in body.layers if isinstance(layer, keras.layers.BatchNormalization)]


def _bn_state(model):
    return {layer.name: (layer.moving_mean.numpy().copy(), layer.moving_variance.numpy().copy())
            for layer in _bn_layers(model)}


# ---------------------------------------------------------------------------------------------------------------
# Backbones
# ---------------------------------------------------------------------------------------------------------------


def test_vgg16_blocks_cover_every_layer_in_order():
    bb = T.backbone("VGG16", input_shape=(32, 32, 3))
    assert bb.name == "VGG16" and bb.source == "keras.applications"
    assert bb.block_names == ["block1", "block2", "block3", "block4", "block5"]
    assert dict(bb.blocks)["block1"] == ["block1_conv1", "block1_conv2", "block1_pool"]
    names = [layer.name for layer in bb.model.layers[1:]]
    assert [n for _, block in bb.blocks for n in block] == names
    assert bb.model.name == "backbone" and bb.model.output.shape[1:] == (1, 1, 512)
    assert bb.preprocessing == "caffe" and bb.min_size == 32


def test_resnet50_blocks():
    bb = T.backbone("ResNet50", input_shape=(32, 32, 3))
    assert bb.block_names == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    blocks = dict(bb.blocks)
    assert blocks["conv1"][:2] == ["conv1_pad", "conv1_conv"] and "pool1_pool" in blocks["conv1"]
    assert blocks["conv5"][-1] == "conv5_block3_out"
    assert sum(len(v) for v in blocks.values()) == len(bb.model.layers) - 1
    assert len([n for n in blocks["conv4"] if n.endswith("_out")]) == 6  # six bottleneck blocks


def test_kcnn_model_blocks_follow_the_registry():
    bb = T.backbone("resnet20")
    assert bb.source == "kcnn" and bb.input_shape == (32, 32, 3)
    assert bb.block_names == list(kcnn.get_entry("resnet20").blocks) == ["conv1", "conv2", "conv3", "conv4"]
    assert all(n == "conv4" or n.startswith("conv4_") for n in dict(bb.blocks)["conv4"])
    assert bb.preprocessing == "unit" and bb.min_size == 8


def test_names_are_case_insensitive_and_unknown_names_list_the_closest():
    assert T.backbone("vgg16", input_shape=(32, 32, 3)).source == "kcnn"      # lower case: the registry
    assert T.backbone("Vgg16", input_shape=(32, 32, 3)).name == "VGG16"       # otherwise keras.applications
    assert T.preprocessing_mode("mobilenetv2") == "tf"
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnt20'.*resnet20 \(kcnn\)"):
        T.backbone("resnt20")
    with pytest.raises(ValueError, match=r"VGG16 \(keras.applications\)"):
        T.backbone("VGG61")


def test_image_smaller_than_the_minimum_names_the_minimum():
    with pytest.raises(ValueError, match="at least 32x32"):
        T.backbone("VGG16", input_shape=(16, 16, 3))
    with pytest.raises(ValueError, match="at least 75x75"):
        T.backbone("InceptionV3", input_shape=(64, 64, 3))
    bb = T.backbone("resnet20")
    with pytest.raises(ValueError, match="at least 8x8"):
        T.classifier(bb, CLASSES, image_size=4)


def _fail_fetch(*args, **kwargs):
    raise Exception("URL fetch failure on https://storage.googleapis.com/tensorflow/keras-applications/"
                    "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5: None -- "
                    "[Errno -2] Name or service not known")


def test_offline_imagenet_is_a_clear_error(monkeypatch, tmp_path):
    from keras.src.utils import file_utils

    monkeypatch.setattr(file_utils, "get_file", _fail_fetch)
    monkeypatch.setattr(keras.utils, "get_file", _fail_fetch)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as info:
        T.backbone("MobileNetV2", weights="imagenet", input_shape=(96, 96, 3))
    message = str(info.value)
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5" in message
    assert str(tmp_path / "models") in message and "weights=PATH" in message
    with pytest.raises(WeightsError, match="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        T.backbone("vgg16", weights="imagenet", input_shape=(32, 32, 3))  # kcnn's own resolver


# ---------------------------------------------------------------------------------------------------------------
# The keras.applications family table: every per-family test below is parametrized over it
# ---------------------------------------------------------------------------------------------------------------


def _by_name(families):
    return pytest.mark.parametrize("family", families, ids=[f.name for f in families])


def test_the_family_table_lists_every_keras_application_once():
    listed = [model for family in FAMILIES for model in family.models]
    keras_models = {n for n in dir(keras.applications)
                    if n[:1].isupper() and callable(getattr(keras.applications, n))}
    assert len(listed) == len(set(listed))
    missing = sorted(keras_models - set(listed))
    assert missing == [], f"add them to a Family in kcnn/transfer/families.py: {missing}"
    assert set(listed) == keras_models
    assert len({f.name for f in FAMILIES}) == len(FAMILIES)
    for family in FAMILIES:
        assert {keras_family(m) for m in family.models} == {family.name}
        assert family.preprocessing in T.PREPROCESSING
        assert family.staged == (not family.block_rules)


def test_a_family_entry_is_checked_when_written():
    with pytest.raises(ValueError, match="not both"):
        Family("toy", {"Toy": 224}, "tf", block_rules=[(r"^(a)_", r"\1")], unit_pattern=r"^b")
    with pytest.raises(ValueError, match="below min_size=75"):
        Family("toy", {"Toy": 64}, "tf", min_size=75)
    with pytest.raises(ValueError, match="must map model names"):
        Family("toy", (), "tf")
    toy = Family("toy", {"Toy": 224}, "tf", block_rules=[[r"^(a)_", r"\1"]])
    assert toy.block_rules == ((r"^(a)_", r"\1"),) and not toy.staged and hash(toy) == hash(toy)


@_by_name(FAMILIES)
def test_preprocess_equals_keras_preprocess_input(family):
    x, _ = _images(2, size=8)
    x[0, 0, 0] = (0.0, 127.5, 255.0)
    expected = getattr(keras.applications, family.name).preprocess_input(x.copy())
    got = np.asarray(T.preprocess_layer(family.preprocessing)(x))
    if family.preprocessing in ("caffe", "none"):
        np.testing.assert_array_equal(got, expected)  # exact: a 0/1 kernel and one addition
    else:
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
    assert {T.preprocessing_mode(m) for m in family.models} == {family.preprocessing}


@_by_name(FAMILIES)
def test_family_minimum_is_the_one_keras_applications_enforces(family):
    m = family.min_size
    for model in family.models:
        with pytest.raises(ValueError, match=f"at least {m}x{m}"):  # keras' own check, before building
            getattr(keras.applications, model)(weights=None, include_top=False, input_shape=(m - 1, m - 1, 3))
        with pytest.raises(ValueError, match=f"{model} needs images of at least {m}x{m} pixels"):
            T.backbone(model, input_shape=(m - 1, m - 1, 3))


def test_backbone_preprocess_matches_its_family():
    bb = T.backbone("VGG16", input_shape=(32, 32, 3))
    x, _ = _images(2)
    np.testing.assert_array_equal(np.asarray(bb.preprocess(x)),
                                  keras.applications.vgg16.preprocess_input(x.copy()))
    assert [T.preprocessing_mode(n) for n in ("ResNet50", "ResNet50V2", "DenseNet121", "EfficientNetB0")] == \
        ["caffe", "tf", "torch", "none"]
    assert T.preprocessing_mode("resnet50", weights="imagenet") == "caffe"
    assert T.preprocessing_mode("resnet20") == "unit"


def test_weights_from_a_local_h5_file(tmp_path):
    keras.utils.set_random_seed(1)
    source = keras.applications.MobileNetV2(include_top=True, weights=None, input_shape=(32, 32, 3),
                                            classes=5)
    path = tmp_path / "mobilenet_v2_full.h5"
    source.save(path)  # legacy HDF5 of the full model, top included
    bb = T.backbone("MobileNetV2", weights=str(path), input_shape=(32, 32, 3))
    x, _ = _images(2)
    x = keras.applications.mobilenet_v2.preprocess_input(x)
    expected = keras.Model(source.input, source.get_layer("out_relu").output)(x)
    np.testing.assert_allclose(np.asarray(bb.model(x)), np.asarray(expected), rtol=1e-5, atol=1e-5)
    assert bb.weights == str(path)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        T.backbone("MobileNetV2", weights=str(tmp_path / "missing.h5"), input_shape=(32, 32, 3))


# ---------------------------------------------------------------------------------------------------------------
# Classifier
# ---------------------------------------------------------------------------------------------------------------


def test_classifier_takes_raw_images_of_any_size():
    keras.utils.set_random_seed(2)
    bb = T.backbone("resnet20")
    model = T.classifier(bb, CLASSES, head_init="glorot_uniform")  # random head: outputs differ per image
    names = [layer.name for layer in model.layers]
    assert names == ["image", "resize", "preprocess", "backbone", "avg_pool", "predictions"]
    assert model.input.shape == (None, None, None, 3)
    big, _ = _images(2, size=48)
    small = tf.image.resize(big, (32, 32)).numpy()
    out_big, out_small = np.asarray(model(big)), np.asarray(model(small))
    assert out_big.shape == (2, CLASSES)
    np.testing.assert_allclose(out_big.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out_big, out_small, atol=1e-6)
    assert model.count_params() - bb.model.count_params() == 64 * CLASSES + CLASSES
    assert len(model.trainable_variables) == 2  # the backbone comes back frozen


def test_classifier_options_and_errors():
    bb = T.backbone("allcnn_c", input_shape=(32, 32, 3))
    model = T.classifier(bb, 4, head="dense", hidden=(8,), dropout=0.5, image_size=48)
    assert model.get_layer("backbone").input.shape == (None, 48, 48, 3)
    assert [layer.name for layer in model.layers[4:]] == ["flatten", "fc1", "fc1_dropout", "predictions"]
    with pytest.raises(ValueError, match="hidden"):
        T.classifier(bb, 4, dropout=0.2)
    with pytest.raises(ValueError, match="head"):
        T.classifier(bb, 4, head="mlp")


def test_classifier_head_starts_at_zero():
    """BiT's zero-initialized head: every class scores the same until the labelled examples move it."""
    keras.utils.set_random_seed(4)
    bb = T.backbone("resnet20")
    x, _ = _images(3)
    model = T.classifier(bb, CLASSES)
    assert not np.any(np.asarray(model.get_layer("predictions").kernel))
    np.testing.assert_allclose(np.asarray(model(x)), 1.0 / CLASSES, rtol=1e-6)
    conv = T.classifier(bb, CLASSES, head="conv")
    assert not np.any(np.asarray(conv.get_layer("predictions_conv").kernel))
    glorot = T.classifier(bb, CLASSES, head_init="glorot_uniform")
    assert np.std(np.asarray(glorot.get_layer("predictions").kernel)) > 0.05
    with pytest.raises(ValueError, match="head_init.*'bogus'"):
        T.classifier(bb, CLASSES, head_init="bogus")


def test_classifier_keras_round_trip_is_identical(tmp_path):
    keras.utils.set_random_seed(3)
    bb = T.backbone("VGG16", input_shape=(32, 32, 3))
    model = T.classifier(bb, CLASSES, hidden=(16,), head_init="glorot_uniform")
    path = tmp_path / "clf.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # safe mode: no Lambda layers
    x, _ = _images(3, size=40)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(loaded(x)))
    assert loaded.get_layer("preprocess").trainable is False
    assert T.block_layers(loaded, bb) == T.block_layers(model, bb)


# ---------------------------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------------------------


def test_presets():
    lecture = T.load_schedule("lecture")
    assert [(p.train, p.lr) for p in lecture] == [("head", 1e-3)]
    two = T.load_schedule("two-phase")
    assert [(p.name, p.train, p.lr) for p in two] == [("head", "head", 1e-3), ("fine-tune", "all", 1e-4)]
    assert two[1].lr == two[0].lr / 10 and two[1].bn == "frozen"
    gradual = T.load_schedule("Gradual")
    assert [p.train for p in gradual] == ["head", "top:1", "top:2", "top:3"]
    assert T.load_schedule("two_phase") == two
    with pytest.raises(ValueError, match="not a preset.*lecture, two-phase, gradual"):
        T.load_schedule("three-phase")


TOML = """
name = "mine"
[[phase]]
name = "head"
epochs = 2
train = "head"
lr = 1e-3

[[phase]]
name = "unfreeze"
epochs = 3
train = ["block2", "block3"]
lr = 1e-4
lr_mult = 0.5
bn = "train"
optimizer = "sgd"
warmup = 1
schedule = "cosine"
weight_decay = 1e-4
momentum = 0.8
"""


def test_schedule_files_toml_and_json(tmp_path):
    toml_path = tmp_path / "s.toml"
    toml_path.write_text(TOML)
    schedule = T.load_schedule(toml_path)
    assert len(schedule) == 2 and schedule.total_epochs == 5
    second = schedule[1]
    got = (second.train, second.lr_mult, second.bn, second.optimizer, second.warmup, second.schedule,
           second.weight_decay, second.momentum)
    assert got == (("block2", "block3"), 0.5, "train", "sgd", 1.0, "cosine", 1e-4, 0.8)
    json_path = tmp_path / "s.json"
    json_path.write_text(json.dumps(schedule.to_dict()))
    assert T.load_schedule(json_path) == schedule
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps([{"epochs": 1}, {"epochs": 2, "train": "top:2", "lr": 1e-4}]))
    loaded = T.load_schedule(str(bare))
    assert [(p.name, p.epochs) for p in loaded] == [("head", 1), ("top:2", 2)]


@pytest.mark.parametrize("phase, message", [
    ({"epochs": 1, "lrr": 0.1}, "phase 2 ('bad'): unknown field 'lrr'; valid fields: epochs, train, lr"),
    ({"lr": 0.1}, "phase 2 ('bad'): missing field 'epochs'"),
    ({"epochs": 0}, "phase 2 ('bad'): field 'epochs' must be >= 1; got 0"),
    ({"epochs": 1.5}, "phase 2 ('bad'): field 'epochs' must be an integer; got 1.5"),
    ({"epochs": 1, "lr": -1}, "phase 2 ('bad'): field 'lr' must be > 0; got -1"),
    ({"epochs": 1, "lr": "fast"}, "phase 2 ('bad'): field 'lr' must be a number; got 'fast'"),
    ({"epochs": 1, "train": "top:0"}, "phase 2 ('bad'): field 'train': train must be"),
    ({"epochs": 1, "train": "some"}, "phase 2 ('bad'): field 'train': train must be"),
    ({"epochs": 1, "train": []}, "phase 2 ('bad'): field 'train' must be 'head', 'all', 'top:N' or a non"),
    ({"epochs": 1, "bn": "off"}, "phase 2 ('bad'): field 'bn' must be one of 'frozen', 'train'; got 'off'"),
    ({"epochs": 1, "optimizer": "lion"}, "phase 2 ('bad'): field 'optimizer' must be one of 'adam', 'sgd'"),
    ({"epochs": 1, "schedule": "step"}, "phase 2 ('bad'): field 'schedule' must be one of 'constant', 'cos"),
    ({"epochs": 2, "warmup": 3}, "phase 2 ('bad'): field 'warmup' (3 epochs) is longer than the phase (2 ep"),
    ({"epochs": 1, "warmup": -0.5}, "phase 2 ('bad'): field 'warmup' must be >= 0"),
    ({"epochs": 1, "lr_mult": 0}, "phase 2 ('bad'): field 'lr_mult' must be > 0; got 0"),
    ({"epochs": 1, "momentum": 1.0}, "phase 2 ('bad'): field 'momentum' must be < 1; got 1.0"),
    ({"epochs": 1, "weight_decay": -1}, "phase 2 ('bad'): field 'weight_decay' must be >= 0"),
    ({"epochs": True}, "phase 2 ('bad'): field 'epochs' must be an integer; got True"),
])
def test_schedule_errors_name_phase_and_field(tmp_path, phase, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"phase": [{"epochs": 1, "name": "ok"}, dict(phase, name="bad")]}))
    with pytest.raises(ValueError) as info:
        T.load_schedule(path)
    assert str(info.value).startswith(message)


def test_schedule_file_errors(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[[phase]]\nepochs = 1\n[[phaze]]\nepochs = 2\n')
    with pytest.raises(ValueError, match="unknown top-level key 'phaze'"):
        T.load_schedule(path)
    path.write_text("[[phase]\nepochs = 1\n")
    with pytest.raises(ValueError, match="invalid TOML"):
        T.load_schedule(path)
    path.write_text('name = "empty"\n')
    with pytest.raises(ValueError, match="no phases"):
        T.load_schedule(path)
    path.write_text('[[phase]]\nepochs = 1\nlr = 1e-3\n[[phase]]\nepochs = 1\nname = 2\n')
    with pytest.raises(ValueError, match="phase 2: field 'name' must be a non-empty string; got 2"):
        T.load_schedule(path)
    with pytest.raises(ValueError, match=r"Phase 'x': field 'bn'"):
        T.Phase(1, bn="on", name="x")


def test_scale_epochs():
    schedule = T.Schedule([T.Phase(5, "head", warmup=2), T.Phase(5, "all", warmup=0.2), T.Phase(10, "top:1")])
    by_total = schedule.scale_epochs(8)
    assert [p.epochs for p in by_total] == [2, 2, 4] and by_total.total_epochs == 8
    assert by_total[0].warmup == pytest.approx(0.4)  # 2 of 5 epochs -> a fraction of the shorter phase
    assert by_total[1].warmup == 0.2
    assert [p.epochs for p in schedule.scale_epochs(0.5)] == [2, 2, 5]  # round half to even, at least 1
    assert [p.epochs for p in schedule.scale_epochs(3)] == [1, 1, 1]
    assert [p.epochs for p in schedule.scale_epochs(factor=2.0)] == [10, 10, 20]
    assert schedule.scale_epochs(total=21).total_epochs == 21
    with pytest.raises(ValueError, match="number of phases"):
        schedule.scale_epochs(2)
    with pytest.raises(ValueError):
        schedule.scale_epochs(True)


def test_phase_learning_rate_warmup_and_cosine():
    rate = T.PhaseLearningRate(1.0, total_steps=10, warmup_steps=2, decay="cosine")
    values = [rate.value(s) for s in range(10)]
    assert values[0] == pytest.approx(0.5) and values[1] == pytest.approx(1.0)
    assert values[6] == pytest.approx(0.5 * (1 + np.cos(np.pi * 4 / 8)))
    resumed = T.PhaseLearningRate(1.0, 10, 2, "cosine", offset=6)
    assert resumed.value(0) == pytest.approx(values[6])
    assert T.PhaseLearningRate.from_config(rate.get_config()).value(3) == pytest.approx(values[3])


def test_layerwise_optimizer_scales_each_variables_step():
    inputs = keras.Input((2,))
    first = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros", name="first")
    second = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros", name="second")
    model = keras.Model(inputs, keras.layers.Add()([first(inputs), second(inputs)]))
    optimizer = T.make_optimizer(T.Phase(1, optimizer="sgd", lr=0.1, momentum=0.0),
                                 lr_multipliers={second.kernel.path: 0.1})
    assert type(optimizer).__name__ == "LayerwiseSGD"
    grads = [tf.ones((2, 1)), tf.ones((2, 1))]
    optimizer.apply_gradients(zip(grads, [first.kernel, second.kernel]))
    np.testing.assert_allclose(first.kernel.numpy(), -0.1)
    np.testing.assert_allclose(second.kernel.numpy(), -0.01)
    assert model.count_params() == 4
    clone = T.LayerwiseSGD.from_config(optimizer.get_config())
    assert clone.lr_multipliers == {second.kernel.path: 0.1}


# ---------------------------------------------------------------------------------------------------------------
# fit_schedule: one run of three phases, checked from several sides
# ---------------------------------------------------------------------------------------------------------------

SCHEDULE = [
    T.Phase(1, "head", lr=0.05, optimizer="sgd", momentum=0.0, name="head"),
    T.Phase(2, "top:1", lr=0.01, optimizer="sgd", momentum=0.0, name="unfreeze"),
    T.Phase(1, "top:2", lr=0.01, optimizer="sgd", momentum=0.0, bn="train", name="bn-train"),
]


class _Watch(keras.callbacks.Callback):
    """Records, per global epoch, what a user callback sees."""

    def __init__(self):
        super().__init__()
        self.seen = {}
        self.snapshots = {}

    def on_epoch_end(self, epoch, logs=None):
        bn = [layer for layer in self.model.get_layer("backbone").layers
              if isinstance(layer, keras.layers.BatchNormalization)]
        self.seen[epoch + 1] = (self.model, bn[-1].momentum)
        self.snapshots[epoch + 1] = self.model.get_weights()


@pytest.fixture(scope="module")
def run():
    keras.utils.set_random_seed(4)
    bb = T.backbone("allcnn_c", options={"norm": "batch"})
    model = T.classifier(bb, CLASSES)
    x, y = _images(32)
    train = _dataset(x, y)
    watch = _Watch()
    trainable, bn_after = [], []
    bn_before = _bn_state(model)

    def on_phase_end(number, phase, history):
        trainable.append(sorted(v.path for v in model.trainable_variables))
        bn_after.append(_bn_state(model))

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        history = T.fit_schedule(model, bb, SCHEDULE, train, train, callbacks=[watch], verbose=2,
                                 bn_momentum=0.8, on_phase_end=on_phase_end)
    return dict(bb=bb, model=model, history=history, train=train, x=x, watch=watch, trainable=trainable,
                bn_before=bn_before, bn_after=bn_after, stdout=out.getvalue(), final=model.get_weights())


def test_epochs_are_continuous_across_phases(run):
    history = run["history"]
    assert [e["epoch"] for e in history.epochs] == [1, 2, 3, 4]
    assert [e["phase"] for e in history.epochs] == [1, 2, 2, 3]
    assert [e["phase_name"] for e in history.epochs] == ["head", "unfreeze", "unfreeze", "bn-train"]
    assert [e["lr"] for e in history.epochs] == pytest.approx([0.05, 0.01, 0.01, 0.01])
    metrics = ("loss", "accuracy", "val_loss", "val_accuracy")
    assert all(np.isfinite(e[k]) for e in history.epochs for k in metrics)
    assert history.history["epoch"] == [1, 2, 3, 4] and history.epoch == [0, 1, 2, 3]
    assert history.last_epoch == 4
    assert [(p["first_epoch"], p["last_epoch"], p["epochs_run"]) for p in history.phases] == \
        [(1, 1, 1), (2, 3, 2), (4, 4, 1)]
    assert [p["blocks"] for p in history.phases] == [[], ["block3"], ["block2", "block3"]]
    assert T.ScheduleHistory.from_dict(json.loads(json.dumps(history.to_dict()))).epochs == history.epochs


def test_phase_lines_are_printed(run):
    lines = run["stdout"].splitlines()
    assert "phase 1/3 'head': train=head, lr=5e-2, epochs 1-1, cached features" in lines
    assert "phase 2/3 'unfreeze': train=top:1, lr=1e-2, epochs 2-3" in lines
    assert "phase 3/3 'bn-train': train=top:2, lr=1e-2, epochs 4-4, bn=train" in lines
    assert sum(line.startswith("phase 2/3 'unfreeze' done: 2 epochs in ") for line in lines) == 1


def test_only_the_phase_blocks_train(run):
    bb, trainable = run["bb"], run["trainable"]
    blocks = dict(bb.blocks)

    def owners(paths):
        return sorted({next((b for b, names in blocks.items() if p.split("/")[0] in names), p.split("/")[0])
                       for p in paths})

    assert owners(trainable[0]) == ["predictions"]
    assert owners(trainable[1]) == ["block3", "predictions"]
    assert owners(trainable[2]) == ["block2", "block3", "predictions"]
    assert run["history"].phases[0]["trainable_params"] == 192 * CLASSES + CLASSES
    assert not any(layer.trainable for layer in run["model"].layers[1:3])  # resize, preprocess


def test_frozen_bn_keeps_moving_statistics_bit_for_bit(run):
    before = run["bn_before"]
    for after in run["bn_after"][:2]:  # bn="frozen": no BN layer changes, not even in the trained block3
        for name, (mean, var) in before.items():
            assert np.array_equal(after[name][0], mean) and np.array_equal(after[name][1], var), name
    last = run["bn_after"][2]  # bn="train" on block2..3: those move, block1 stays bit for bit
    block_of = {n: b for b, names in run["bb"].blocks for n in names}
    changed = {block_of[name] for name, (mean, _) in before.items()
               if not np.array_equal(last[name][0], mean)}
    assert changed == {"block2", "block3"}
    for name, (mean, var) in before.items():
        if block_of[name] == "block1":
            assert np.array_equal(last[name][0], mean) and np.array_equal(last[name][1], var)


def test_callbacks_see_the_full_model_and_bn_momentum_is_restored(run):
    seen = run["watch"].seen
    assert sorted(seen) == [1, 2, 3, 4]
    assert all(model is run["model"] for model, _ in seen.values())
    assert [momentum for _, momentum in seen.values()] == [0.9, 0.9, 0.9, 0.8]
    assert _bn_layers(run["model"])[-1].momentum == 0.9


def test_resume_from_a_finished_epoch_gives_the_same_weights(run):
    model, bb = run["model"], run["bb"]
    model.set_weights(run["watch"].snapshots[2])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        history = T.fit_schedule(model, bb, SCHEDULE, run["train"], initial_epoch=2, verbose=0,
                                 bn_momentum=0.8)
    assert [e["epoch"] for e in history.epochs] == [3, 4]
    assert [e["phase"] for e in history.epochs] == [2, 3]
    assert [p["skipped"] for p in history.phases] == [True, False, False]
    assert out.getvalue() == ""
    for resumed, straight in zip(model.get_weights(), run["final"]):
        np.testing.assert_allclose(resumed, straight, rtol=1e-5, atol=1e-6)


def test_unknown_block_in_a_phase_is_an_error_before_training(run):
    with pytest.raises(ValueError, match=r"phase 1 \('conv9'\): unknown block 'conv9' in train; blocks are: "
                                         r"block1, block2, block3"):
        T.fit_schedule(run["model"], run["bb"], [T.Phase(1, ["conv9"])], run["train"], verbose=0)


def test_checkpoint_round_trip(run, tmp_path):
    model, bb = run["model"], run["bb"]
    path = T.save_checkpoint(tmp_path / "ckpt", model, arch="allcnn_c", input_shape=(32, 32, 3),
                             class_names=["a", "b", "c"], preprocessing="unit")
    meta = json.loads((path / "kcnn.json").read_text())
    assert (meta["format"], meta["arch"], meta["classes"], meta["input_shape"]) == \
        ("kcnn-checkpoint", "allcnn_c", 3, [32, 32, 3])
    restored = T.backbone(None, weights=path)
    assert (restored.name, restored.preprocessing, restored.block_names, restored.input_shape) == \
        ("allcnn_c", "unit", bb.block_names, (32, 32, 3))
    x = np.asarray(bb.preprocess(run["x"][:4]))
    np.testing.assert_array_equal(np.asarray(restored.model(x)), np.asarray(model.get_layer("backbone")(x)))
    bigger = T.backbone("allcnn_c", weights=path / "kcnn.json", input_shape=(40, 40, 3))
    assert bigger.model.input.shape == (None, 40, 40, 3)
    np.testing.assert_array_equal(bigger.model.get_weights()[0], restored.model.get_weights()[0])
    with pytest.raises(WeightsError, match="holds a allcnn_c, not a resnet20"):
        T.backbone("resnet20", weights=path)
    with pytest.raises(ValueError, match="class_names` has 2 names"):
        T.save_checkpoint(tmp_path / "bad", model, arch="allcnn_c", input_shape=(32, 32, 3), class_names="ab",
                          preprocessing="unit")


def test_checkpoint_of_a_plain_kcnn_model_keeps_the_body(tmp_path):
    keras.utils.set_random_seed(5)
    full = kcnn.build("resnet20", classes=CLASSES)
    T.save_checkpoint(tmp_path / "ck", full, arch="resnet20", input_shape=(32, 32, 3),
                      class_names=["0", "1", "2"], preprocessing="unit")
    bb = T.backbone(None, weights=tmp_path / "ck" / "model.keras")
    x, _ = _images(2)
    x /= 255.0
    expected = keras.Model(full.input, full.get_layer("avg_pool").input)(x)
    np.testing.assert_allclose(np.asarray(bb.model(x)), np.asarray(expected), rtol=1e-6, atol=1e-6)
    assert bb.block_names == ["conv1", "conv2", "conv3", "conv4"]
    assert "avg_pool" not in [layer.name for layer in bb.model.layers]


# ---------------------------------------------------------------------------------------------------------------
# Feature caching
# ---------------------------------------------------------------------------------------------------------------


def test_feature_cache_equals_running_the_backbone():
    keras.utils.set_random_seed(6)
    bb = T.backbone("resnet20")
    model = T.classifier(bb, CLASSES)
    start = model.get_weights()
    x, y = _images(48, seed=1)
    train, val = _dataset(x, y), _dataset(x[:16], y[:16])
    schedule = [T.Phase(2, "head", lr=0.1, optimizer="sgd", momentum=0.0)]
    naive = T.fit_schedule(model, bb, schedule, train, val, verbose=0, feature_cache=False)
    naive_head = model.get_layer("predictions").get_weights()
    model.set_weights(start)
    cached = T.fit_schedule(model, bb, schedule, train, val, verbose=0)
    cached_head = model.get_layer("predictions").get_weights()
    assert (naive.phases[0]["cached"], cached.phases[0]["cached"]) == (False, True)
    for a, b in zip(naive_head, cached_head):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(naive.history[key], cached.history[key], rtol=1e-4, atol=1e-5)
    assert not np.allclose(naive_head[0], start[-2])  # the head did train


def test_feature_cache_detects_augmentation_and_shuffling():
    from kcnn.transfer import feature_cache

    bb = T.backbone("allcnn_c")
    model = T.classifier(bb, CLASSES)
    pre, body, head = T.split_model(model)
    x, y = _images(20)
    plain = _dataset(x, y, batch=8)
    shuffled = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(20, seed=1).batch(8)
    rng = np.random.RandomState(0)  # augmentation that differs on every pass over the data
    noisy = tf.data.Dataset.from_generator(
        lambda: ((x[i:i + 8] + rng.uniform(0, 1, x[i:i + 8].shape).astype("float32"), y[i:i + 8])
                 for i in range(0, 20, 8)),
        output_signature=(tf.TensorSpec((None, 32, 32, 3), tf.float32), tf.TensorSpec((None,), tf.int64)))
    plan, _ = feature_cache._cache_plan(plain, None, pre, body, head[0], 0)
    assert plan[0].shape == (20, 192) and plan[2] == 8 and plan[3] is False
    np.testing.assert_array_equal(plan[1][0], y)
    plan, _ = feature_cache._cache_plan(shuffled, None, pre, body, head[0], 0)
    assert plan[3] is True and sorted(plan[1][0].tolist()) == sorted(y.tolist())
    assert feature_cache._cache_plan(noisy, None, pre, body, head[0], 0)[0] is None
    assert feature_cache._cache_plan(noisy, False, pre, body, head[0], 0)[0][0].shape == (20, 192)


#: First and last block of some keras.applications backbones (at `_blocks_size`), as regression values.
BLOCK_ENDS = {"MobileNetV2": ("stage1", "stage5"), "EfficientNetB0": ("stem", "top"),
              "ConvNeXtTiny": ("stem", "stage3"), "DenseNet121": ("conv1", "conv5"),
              "ResNet50V2": ("conv1", "conv5"), "Xception": ("block1", "block14")}


def _blocks_size(family):
    return max(64, family.min_size)


@pytest.mark.slow
@_by_name(FAMILIES)
def test_keras_application_blocks_and_round_trip(family, tmp_path):
    name, size = next(iter(family.models)), _blocks_size(family)  # the family's smallest model
    bb = T.backbone(name, input_shape=(size, size, 3))
    assert sum(len(names) for _, names in bb.blocks) == len(bb.model.layers) - 1
    assert [n for _, names in bb.blocks for n in names] == [layer.name for layer in bb.model.layers[1:]]
    assert len(bb.block_names) >= 2 and len(set(bb.block_names)) == len(bb.block_names)
    if family.staged:
        assert bb.block_names == [f"stage{i}" for i in range(1, len(bb.block_names) + 1)]
    if name in BLOCK_ENDS:
        assert (bb.block_names[0], bb.block_names[-1]) == BLOCK_ENDS[name]
    model = T.classifier(bb, CLASSES)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    x, _ = _images(2, size=size + 8)
    # Not bit for bit: squeeze-excite / layer-norm reductions vary in the last bits between calls.
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(loaded(x)), rtol=1e-5, atol=1e-6)


def test_stop_training_ends_only_the_current_phase():
    keras.utils.set_random_seed(7)
    bb = T.backbone("resnet20")
    model = T.classifier(bb, CLASSES)
    x, y = _images(32, seed=2)

    class StopAtSecond(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:  # global epoch 2, inside phase 1
                self.model.stop_training = True

    schedule = [T.Phase(4, "head"), T.Phase(2, "head", name="more")]
    history = T.fit_schedule(model, bb, schedule, (x, y), callbacks=[StopAtSecond()], verbose=0)
    assert [e["epoch"] for e in history.epochs] == [1, 2, 5, 6]  # phase 2 keeps its planned epochs
    assert [p["epochs_run"] for p in history.phases] == [2, 2]
    assert [p["cached"] for p in history.phases] == [True, True]
    assert model.evaluate(x, y, verbose=0)[0] == pytest.approx(history.epochs[-1]["loss"], rel=0.2)


def test_discriminative_rates_per_block():
    bb = T.backbone("allcnn_c", options={"norm": "batch"})
    model = T.classifier(bb, CLASSES)
    trained = T.set_trainable(model, bb, "top:2")
    assert trained == ["block2", "block3"]
    multipliers = T.lr_multipliers(model, bb, trained, 0.5)
    assert multipliers["block3_conv2/kernel"] == 0.5 and multipliers["block2_conv1_bn/gamma"] == 0.25
    assert len(multipliers) == len(model.trainable_variables) - 2  # all but the head's kernel and bias
    optimizer = T.make_optimizer(T.Phase(1, "top:2", lr_mult=0.5), 1e-3, multipliers)
    optimizer.build(model.trainable_variables)
    assert len(optimizer._multiplier_by_key) == len(multipliers)
    with pytest.raises(ValueError, match="unknown block 'conv9'"):
        T.lr_multipliers(model, bb, ["conv9"], 0.5)


@pytest.mark.parametrize("batches", [3, 70])
def test_progress_is_true_and_short(capsys, batches):
    """Short epochs: one bar per phase over its epochs; long ones: Keras' step bar, never past the last step
    ("128/113" when steps_per_execution overshoots) and headed with the global epoch numbers."""
    import re

    bb = T.backbone("allcnn_a", None, (12, 12, 3))
    model = T.classifier(bb, 2)
    x = np.zeros((batches, 12, 12, 3), "float32")
    ds = tf.data.Dataset.from_tensor_slices((x, np.arange(batches) % 2)).batch(1)
    T.fit_schedule(model, bb, [T.Phase(3, "head", lr=1e-3), T.Phase(2, "all", lr=1e-4)], ds, verbose=1,
                   feature_cache=False)
    out = capsys.readouterr().out
    bars = "\n".join(line for line in re.sub(r"\x1b\[[0-9;]*m", "", out).split("\n")
                     if not line.startswith(("phase ", "Epoch ")))
    counts = [(int(a), int(b)) for a, b in re.findall(r"(\d+)/(\d+) ", bars)]
    assert counts and all(a <= b for a, b in counts)
    if batches == 3:  # one bar over 3, then 2 epochs
        assert {b for _, b in counts} == {3, 2}
    else:
        assert "Epoch 5/5" in out and "Epoch 4/5" in out and {b for _, b in counts} == {70}


def test_short_epochs_run_as_one_fit_with_the_weights_of_one_fit_per_epoch(monkeypatch):
    """A phase of short keyed epochs is one ``fit`` over all its epochs (Keras' per-call setup dominated the
    demo's one-step epochs); the batches, hence the weights and history, equal one ``fit`` per epoch, with the
    feature cache (head phase) and without (all layers, augmented)."""
    from kcnn import data as kdata
    from kcnn.transfer import fit as fit_module

    assert fit_module.fit_segments(2, 5, 3) == [(2, 5)] and fit_module.fit_segments(2, 4, 64) == [(2, 3), (3, 4)]
    assert [fit_module.segment_execution(s, 16) for s in (1, 3, 12, 48, 17)] == [1, 3, 12, 16, 1]
    calls = []
    original = keras.Model.fit

    def counted(self, *args, **kwargs):
        calls.append((kwargs["initial_epoch"], kwargs["epochs"], self.steps_per_execution))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", counted)

    def train(long_epoch_steps):
        monkeypatch.setattr(fit_module, "LONG_EPOCH_STEPS", long_epoch_steps)
        calls.clear()
        splits = kdata.load("digits", image_size=12, per_class=6, batch_size=20, augment="standard", seed=3)
        keras.utils.set_random_seed(5)
        bb = T.backbone("allcnn_a", None, (12, 12, 3), options={"norm": "batch"})
        model = T.classifier(bb, 10)
        schedule = [T.Phase(3, "head", lr=0.05, name="head"), T.Phase(2, "all", lr=0.01, bn="train", name="all")]
        history = T.fit_schedule(model, bb, schedule, splits, verbose=0, augmented=False)
        return model.get_weights(), history, list(calls)

    weights_one, history_one, calls_one = train(64)     # 3 steps an epoch: one fit per phase
    weights_each, history_each, calls_each = train(1)   # every epoch its own fit
    assert calls_one == [(0, 3, 3), (3, 5, 3)]
    assert [c[:2] for c in calls_each] == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert [p["cached"] for p in history_one.phases] == [True, False]
    assert all(np.array_equal(a, b) for a, b in zip(weights_one, weights_each))
    assert history_one.epochs == history_each.epochs


def test_resident_validation_keeps_the_batches():
    from kcnn import data as kdata
    from kcnn.transfer import fit as fit_module

    splits = kdata.load("digits", image_size=8, batch_size=50, seed=1)
    light = fit_module.resident(splits.val)
    ours = [tuple(t.numpy() for t in b) for b in light]
    theirs = [tuple(t.numpy() for t in b) for b in splits.val]
    assert len(ours) == len(theirs) == splits.steps_per_epoch("val") > 1
    assert all(len(a) == len(b) == 2 and all(np.array_equal(x, y) for x, y in zip(a, b))
               for a, b in zip(ours, theirs))
    assert fit_module.resident(splits.val, limit=1000) is splits.val   # too large: the dataset itself
    assert fit_module.resident(None) is None


def test_validation_freq_validates_every_nth_epoch_and_each_phase_end():
    from kcnn import data as kdata

    splits = kdata.load("digits", image_size=12, per_class=3, seed=2)
    bb = T.backbone("allcnn_a", None, (12, 12, 3))
    model = T.classifier(bb, 10)
    schedule = [T.Phase(4, "head", lr=0.05), T.Phase(3, "all", lr=0.01)]
    history = T.fit_schedule(model, bb, schedule, splits, verbose=0, validation_freq=3)
    assert [row["epoch"] for row in history.epochs if "val_loss" in row] == [3, 4, 6, 7]
    assert all("loss" in row for row in history.epochs) and len(history.epochs) == 7
    with pytest.raises(ValueError, match="validation_freq"):
        T.fit_schedule(model, bb, schedule, splits, verbose=0, validation_freq=0)


def test_epoch_data_gives_one_epoch_from_its_traced_once_stream():
    """fit_schedule's long epochs (one fit each) read EpochData's one stream, not a new Splits.epochs per epoch
    (a flat_map traced per call, about a second for a folder); several epochs at once are Splits.epochs."""
    from kcnn import data as kdata
    from kcnn.transfer.datasets import EpochData

    splits = kdata.load("digits", image_size=8, batch_size=500, seed=0)
    data = EpochData(splits)
    assert data.epochs(3, 4) is data.epochs(5, 6) is data.epoch(0)
    one = [x.numpy() for x, _ in data.epochs(2, 3)]
    both = [x.numpy() for x, _ in data.epochs(1, 3)]
    assert len(one) == data.steps and len(both) == 2 * data.steps
    assert all(np.array_equal(a, b) for a, b in zip(one, both[data.steps:]))
    with pytest.raises(ValueError, match="one epoch at a time"):
        EpochData(splits.train).epochs(0, 2)
