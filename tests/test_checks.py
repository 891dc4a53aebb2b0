"""Tests for kcnn.checks: each pre-flight check once where it warns or fails and once where it is ok.

Small: array sources of 8-16 px images, vgg_cifar (batch norm, random weights) as the backbone.
"""
import re
import time
import warnings
from types import SimpleNamespace

import keras
import numpy as np
import pytest
from keras import layers, ops

from kcnn import checks, data, transfer
from kcnn.transfer.families import FAMILIES

HEAD_THEN_ALL = [transfer.Phase(epochs=1, train="head", lr=1e-3),
                 transfer.Phase(epochs=1, train="all", lr=1e-4)]


def _images(n, size=16, seed=0, high=255.0):
    return np.random.RandomState(seed).uniform(0, high, (n, size, size, 3)).astype("float32")


def _splits(counts=(20, 20), size=16, seed=0, high=255.0, x=None, **kwargs):
    y = np.concatenate([np.full(c, i) for i, c in enumerate(counts)])
    x = _images(len(y), size, seed, high) if x is None else x
    kwargs.setdefault("val_fraction", 0.25)
    kwargs.setdefault("test_fraction", 0.25)
    return data.load((x, y), image_size=size, seed=seed, **kwargs)


@pytest.fixture(scope="module")
def vgg():
    bb = transfer.backbone("vgg_cifar", None, (16, 16, 3), options={"norm": "batch"})
    return bb, transfer.classifier(bb, 2)


def _status(check):
    return check["status"]


# ----------------------------------------------------------------------------------------------------------
# input range
# ----------------------------------------------------------------------------------------------------------

def test_input_range_fails_on_unit_scaled_images():
    check = checks.check_input_range(_images(4, high=1.0))
    assert check["name"] == "input range" and _status(check) == "fail"
    assert check["numbers"]["max"] <= 1.0 and "[0, 1]" in check["advice"] and "[0, 255]" in check["advice"]


def test_input_range_warns_on_preprocessed_images_and_passes_raw_rgb():
    assert _status(checks.check_input_range(_images(4) - 120.0)) == "warn"
    ok = checks.check_input_range(_images(4))
    assert _status(ok) == "ok" and ok["advice"] == ""
    assert 0 <= ok["numbers"]["min"] < ok["numbers"]["max"] <= 255


def test_preflight_refuses_unit_scaled_data(vgg):
    bb, model = vgg
    with pytest.warns(UserWarning, match="<= 1.0"):
        splits = _splits(high=1.0)
    found = checks.preflight(model, bb, splits, HEAD_THEN_ALL, image_size=16)
    assert [c["name"] for c in found] == ["input range", "frozen batch norm", "class balance", "image size",
                                          "duplicates", "learning rates"]
    assert _status(found[0]) == "fail"
    message = r"'input range' failed: images look scaled to \[0, 1\]"
    with pytest.raises(checks.CheckFailed, match=message) as err:
        checks.raise_on_fail(found)
    assert "\n" not in str(err.value) and isinstance(err.value, ValueError) and err.value.checks == found


# ----------------------------------------------------------------------------------------------------------
# frozen batch norm
# ----------------------------------------------------------------------------------------------------------

class DriftingBN(layers.BatchNormalization):
    """Normalises with its moving mean and moves that mean on every call, whatever `training` says."""

    def call(self, inputs, training=None, mask=None):
        out = super().call(inputs, training=False, mask=mask)
        self.moving_mean.assign(0.5 * self.moving_mean + 0.5 * ops.mean(inputs, axis=(0, 1, 2)))
        return out


def _tiny_classifier(norm):
    """A two-block backbone named like vgg_cifar's blocks, with ``norm`` after the first convolution."""
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(4, 3, padding="same", name="block1_conv1")(inputs)
    x = norm(name="block1_bn1")(x)
    x = layers.Conv2D(4, 3, strides=2, padding="same", name="block2_conv1")(x)
    x = layers.BatchNormalization(name="block2_bn1")(x)
    body = keras.Model(inputs, x, name="backbone")
    blocks = [("block1", ["block1_conv1", "block1_bn1"]), ("block2", ["block2_conv1", "block2_bn1"])]
    bb = transfer.Backbone(name="vgg_cifar", model=body, preprocess=transfer.preprocess_layer("unit"),
                           blocks=blocks, min_size=8, input_shape=(16, 16, 3), preprocessing="unit")
    return bb, transfer.classifier(bb, 2)


def test_frozen_bn_fails_when_statistics_move_in_a_frozen_phase():
    bb, model = _tiny_classifier(DriftingBN)
    layer = model.get_layer("backbone").get_layer("block1_bn1")
    before = layer.moving_mean.numpy().copy()
    flags = [(sub.name, sub.trainable) for sub in model.get_layer("backbone").layers]
    check = checks.check_frozen_bn(model, bb, HEAD_THEN_ALL, _images(4))
    assert _status(check) == "fail" and check["numbers"]["stats_changed"] == 1
    assert check["numbers"]["relative_diff"] > checks.BN_TOLERANCE and "block1_bn1" in check["advice"]
    np.testing.assert_array_equal(layer.moving_mean.numpy(), before)  # restored
    assert flags == [(sub.name, sub.trainable) for sub in model.get_layer("backbone").layers]


def test_frozen_bn_ok_for_keras_batch_norm_in_every_trained_phase(vgg):
    bb, model = vgg
    for schedule in (HEAD_THEN_ALL, [transfer.Phase(epochs=1, train="all", lr=1e-4)]):
        check = checks.check_frozen_bn(model, bb, schedule, _images(4))
        assert _status(check) == "ok" and check["numbers"]["bn_layers"] == 6
        assert check["numbers"]["max_abs_diff"] == 0 and check["numbers"]["stats_changed"] == 0
    assert model.get_layer("backbone").trainable is False  # the classifier's state is restored
    bn_train = [transfer.Phase(epochs=1, train="all", bn="train")]
    skipped = checks.check_frozen_bn(model, bb, bn_train, _images(4))
    assert _status(skipped) == "ok" and "skipped" in skipped["numbers"]


# ----------------------------------------------------------------------------------------------------------
# class balance
# ----------------------------------------------------------------------------------------------------------

def test_class_balance_warns_on_imbalance_unless_weighted():
    splits = _splits((90, 10), size=8, val_fraction=0.2, test_fraction=0)
    check = checks.check_class_balance(splits)
    assert _status(check) == "warn" and check["numbers"]["ratio"] == pytest.approx(72 / 8)
    assert check["numbers"]["train"] == {"0": 72, "1": 8} and "class_weight='balanced'" in check["advice"]
    assert _status(checks.check_class_balance(splits.with_class_weight("balanced"))) == "ok"


def test_class_balance_warns_on_small_validation_and_test_classes():
    check = checks.check_class_balance(_splits((40, 40), size=8, val_fraction=0.025, test_fraction=0.1))
    assert _status(check) == "warn"
    assert check["numbers"]["val_min"] == 1 and check["numbers"]["test_min"] == 4
    assert set(check["numbers"]["val_below_2"]) == {"0", "1"} and "val_fraction" in check["advice"]
    ok = checks.check_class_balance(_splits((40, 40), size=8))
    assert _status(ok) == "ok" and ok["numbers"]["ratio"] == 1.0 and ok["numbers"]["test_min"] == 10


# ----------------------------------------------------------------------------------------------------------
# image size
# ----------------------------------------------------------------------------------------------------------

def test_image_size_fails_below_minimum_warns_below_half_native(vgg):
    bb, _ = vgg  # vgg_cifar: minimum 8, native 32
    assert checks.native_size(bb) == 32
    assert _status(checks.check_image_size(bb, 4)) == "fail"
    warn = checks.check_image_size(bb, 12)
    assert _status(warn) == "warn" and warn["numbers"]["effective"] == 12
    assert "--image-size 16" in warn["advice"]
    assert _status(checks.check_image_size(bb, 16)) == "ok"


def test_image_size_native_sizes_of_keras_applications():
    def fake(name, shape=(224, 224, 3)):
        return SimpleNamespace(source="keras.applications", name=name, min_size=32, input_shape=shape)
    assert checks.native_size(fake("ResNet50")) == 224 and checks.native_size(fake("InceptionV3")) == 299
    check = checks.check_image_size(fake("ResNet50"), 100)
    assert _status(check) == "warn" and check["numbers"]["native"] == 224
    assert _status(checks.check_image_size(fake("ResNet50"), 224)) == "ok"
    # the backbone runs at 64 px: upsampled 224-px images carry 64 px of detail
    assert checks.check_image_size(fake("ResNet50", (64, 64, 3)), 224)["numbers"]["effective"] == 64


def _keras_native_side(model: str, side: int, monkeypatch) -> int:
    """The side keras.applications asks of ``model`` for its ImageNet weights, from its own check: given another
    ``side`` with include_top=True it raises (MobileNetV3: warns) before building anything."""
    from keras.src.utils import file_utils

    def no_download(*args, **kwargs):
        raise AssertionError(f"keras.applications.{model} did not check its input side; it would download")

    monkeypatch.setattr(keras.utils, "get_file", no_download)
    monkeypatch.setattr(file_utils, "get_file", no_download)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with pytest.raises((ValueError, UserWarning)) as info:
            getattr(keras.applications, model)(weights="imagenet", include_top=True, input_shape=(side, side, 3))
    found = re.search(r"\((\d+), \1\b", str(info.value))
    assert found, str(info.value)
    return int(found.group(1))


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
def test_native_sizes_are_the_ones_keras_applications_weights_need(family, monkeypatch):
    for model, native in family.models.items():
        assert checks.native_size_of(model) == native == _keras_native_side(model, family.min_size + 1,
                                                                       monkeypatch)
        fake = SimpleNamespace(source="keras.applications", name=model, min_size=family.min_size,
                               input_shape=(native, native, 3))
        assert checks.native_size(fake) == native
        half = -(-native // 2)  # warns below half the native side
        assert [_status(checks.check_image_size(fake, side)) for side in (half - 1, half)] == ["warn", "ok"]


# ----------------------------------------------------------------------------------------------------------
# duplicates
# ----------------------------------------------------------------------------------------------------------

def test_duplicates_counts_test_and_val_images_seen_in_training():
    unique = _images(30, size=8)
    splits = _splits((30, 30), size=8, x=np.concatenate([unique, unique]))
    check = checks.check_duplicates(splits)
    hashes = {s: {a.tobytes() for a in splits.arrays[s][0]} for s in ("train", "val", "test")}
    expected_test = sum(a.tobytes() in hashes["train"] for a in splits.arrays["test"][0])
    expected_val = sum(a.tobytes() in hashes["train"] for a in splits.arrays["val"][0])
    assert check["numbers"]["test_in_train"] == expected_test
    assert check["numbers"]["val_in_train"] == expected_val
    assert expected_test + expected_val > 0 and _status(check) == "warn" and "test" in check["advice"]


def test_duplicates_ok_for_distinct_images():
    check = checks.check_duplicates(_splits((20, 20), size=8))
    assert _status(check) == "ok" and set(check["numbers"].values()) == {0}


# ----------------------------------------------------------------------------------------------------------
# learning rates
# ----------------------------------------------------------------------------------------------------------

def test_learning_rates_warn_when_blocks_train_at_the_head_rate(vgg):
    bb, model = vgg
    same = [transfer.Phase(epochs=1, train="head", lr=1e-3, name="head"),
            transfer.Phase(epochs=1, train="all", lr=1e-3, name="all")]
    check = checks.check_learning_rates(model, bb, same)
    assert _status(check) == "warn" and check["numbers"]["ratios"] == {"2:all": 1.0}
    assert "2:all" in check["advice"]
    assert checks.check_learning_rates(model, bb, HEAD_THEN_ALL)["numbers"]["ratios"] == {"2:all": 0.1}


def test_learning_rates_count_discriminative_multipliers(vgg):
    bb, model = vgg
    schedule = [transfer.Phase(epochs=1, train="head", lr=1e-3),
                transfer.Phase(epochs=1, train="top:1", lr=2e-3, lr_mult=0.1)]
    check = checks.check_learning_rates(model, bb, schedule)
    assert _status(check) == "ok" and check["numbers"]["ratios"]["2:top:1"] == pytest.approx(0.2)
    scratch = checks.check_learning_rates(model, bb, [transfer.Phase(epochs=1, train="all", lr=1e-3)])
    assert _status(scratch) == "ok" and "skipped" in scratch["numbers"]


# ----------------------------------------------------------------------------------------------------------
# all together
# ----------------------------------------------------------------------------------------------------------

def test_preflight_on_the_digits_demo_is_ok_and_fast():
    splits = data.load("digits", image_size=32, per_class=1, seed=0)
    bb = transfer.backbone("vgg_cifar", None, (32, 32, 3))
    model = transfer.classifier(bb, 10)
    schedule = [transfer.Phase(epochs=100, train="head", lr=3e-3),
                transfer.Phase(epochs=30, train="all", lr=1e-4)]
    checks.preflight(model, bb, splits, schedule, image_size=32)  # first call builds what it calls
    started = time.perf_counter()
    found = checks.preflight(model, bb, splits, schedule, image_size=32)
    seconds = time.perf_counter() - started
    assert [c["status"] for c in found] == ["ok"] * 6, checks.format_checks(found)
    assert seconds < 5, seconds  # about 0.4 s on 2 CPU cores
    checks.raise_on_fail(found)  # nothing to raise
    assert [c["name"] for c in checks.preflight(model, bb, splits, schedule, skip=("duplicates",))] == [
        name for name in checks.CHECKS if name != "duplicates"]
    with pytest.raises(ValueError, match="Unknown check 'dupes'"):
        checks.preflight(model, bb, splits, schedule, skip=("dupes",))
    text = checks.format_checks(found)
    assert len(text.splitlines()) == 6 and text.splitlines()[2].startswith("OK    class balance")


def test_format_checks_one_line_each_with_advice_when_not_ok():
    found = [checks.check_input_range(_images(2)), checks.check_input_range(_images(2, high=1.0))]
    lines = checks.format_checks(found).splitlines()
    assert len(lines) == 2 and lines[0].startswith("OK") and "->" not in lines[0]
    assert lines[1].startswith("FAIL  input range") and "-> images look scaled" in lines[1]
