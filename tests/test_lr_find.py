"""kcnn.lr_find and recipes.lr_find: the range test leaves the model as it was, stops on divergence, suggests."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

import keras
from kcnn import lr_find, transfer
from recipes import lr_find as recipe


def _data(n=24, size=32, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n, size, size, 3)).astype("float32")
    y = rng.integers(0, classes, n).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


@pytest.fixture(scope="module")
def classifier():
    keras.utils.set_random_seed(0)
    bb = transfer.backbone("vgg_cifar", None, (32, 32, 3))
    return transfer.classifier(bb, 3), bb


@pytest.mark.parametrize("phase", [transfer.Phase(epochs=1, train="all", lr=1e-3, bn="train", name="all"),
                                   transfer.Phase(epochs=1, train="head", lr=1e-3, name="head")])
def test_model_is_left_as_it_was(classifier, phase):
    model, bb = classifier
    before = [v.numpy().copy() for v in model.variables]
    flags = [(layer.name, layer.trainable) for layer in model.get_layer("backbone").layers]
    trainable_count = len(model.trainable_variables)
    result = lr_find.lr_range_test(model, bb, _data(), phase, start=1e-5, end=1e-1, steps=6)
    assert result["steps"] == len(result["lrs"]) == len(result["losses"]) == len(result["raw_losses"]) == 6
    np.testing.assert_allclose(result["lrs"], np.geomspace(1e-5, 1e-1, 6), rtol=1e-9)
    for variable, value in zip(model.variables, before):  # weights and BN moving statistics
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
    assert [(layer.name, layer.trainable) for layer in model.get_layer("backbone").layers] == flags
    assert len(model.trainable_variables) == trainable_count
    assert 1e-6 <= result["suggestion"] <= 1e-1 * (1 + 1e-9) and result["method"] in ("steepest", "min/10")
    assert result["phase"] == phase.name


def test_the_training_changes_weights_while_it_runs(classifier):
    """The test trains what the phase trains: the loss of a head-only phase moves from its start."""
    model, bb = classifier
    result = lr_find.lr_range_test(model, bb, _data(), "two-phase", start=1e-4, end=1.0, steps=10, smooth=0.0)
    assert result["raw_losses"][-1] != pytest.approx(result["raw_losses"][0], abs=1e-6)


def test_stops_when_the_loss_diverges():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(64, 4)).astype("float32"), rng.integers(0, 3, 64))
    phase = transfer.Phase(epochs=1, train="all", lr=0.1, optimizer="sgd", momentum=0.9)
    result = lr_find.lr_range_test(model, None, data, phase, start=1e-4, end=1e4, steps=60, smooth=0.5)
    assert result["stopped_early"] and result["steps"] < 60
    assert result["suggestion"] < 1e4


def test_suggestion_is_the_steepest_descent_else_min_over_10():
    lrs = np.geomspace(1e-6, 1, 61)
    losses = 2.0 - np.tanh(2 * (np.log10(lrs) + 3))  # falls fastest at 1e-3, flat after
    losses[-5:] = [3, 4, 5, 6, 7]
    picked = lr_find.suggest(lrs, losses)
    assert picked["method"] == "steepest" and picked["suggestion"] == pytest.approx(1e-3, rel=0.3)
    falling_at_once = lr_find.suggest([1e-3, 1e-2, 1e-1], [1.0, 5.0, 9.0])
    assert falling_at_once == {"suggestion": pytest.approx(1e-4), "lr_min_over_10": pytest.approx(1e-4),
                               "method": "min/10"}
    with pytest.raises(ValueError, match="no finite loss"):
        lr_find.suggest([1e-3], [float("nan")])


def test_bad_arguments_name_them(classifier):
    model, bb = classifier
    for kwargs, name in [({"start": 0}, "start"), ({"end": 1e-8}, "end"), ({"steps": 1}, "steps"),
                         ({"smooth": 1.0}, "smooth")]:
        with pytest.raises(ValueError, match=name):
            lr_find.lr_range_test(model, bb, _data(), "two-phase", **kwargs)


def test_plot(tmp_path):
    lrs = list(np.geomspace(1e-6, 1, 20))
    result = {"lrs": lrs, "losses": list(np.linspace(2, 1, 20)), "raw_losses": list(np.linspace(2, 0.5, 20)),
              "suggestion": 1e-3, "method": "steepest"}
    assert lr_find.plot_lr_find(result, tmp_path / "lr_find.png").stat().st_size > 1000


def test_recipe_writes_the_json_and_prints_the_finetune_command(tmp_path, capsys):
    out = tmp_path / "lr"
    assert recipe.main(["--weights", "none", "--steps", "6", "--out", str(out), "--verbose", "0"]) == 0
    record = json.loads((out / "lr_find.json").read_text())
    assert set(record) >= {"suggestion", "lrs", "losses"} and len(record["lrs"]) == 6
    assert (out / "lr_find.png").is_file()
    printed = capsys.readouterr().out
    assert f"--lr {record['suggestion']:.2g}" in printed
    assert "python -m recipes.finetune --weights none --lr" in printed


def test_finetune_command_keeps_the_options_that_differ():
    cfg = recipe.LrFindConfig(backbone="resnet20", image_size=48, steps=5)
    assert recipe.finetune_command(cfg, 0.00123) == ("python -m recipes.finetune --image-size 48 --backbone resnet20 "
                                                     "--lr 0.0012")


@pytest.mark.parametrize("argv,message", [(["--steps", "1"], "--steps must be >= 2"),
                                          (["--start", "1", "--end", "0.5"], "--end must be > --start"),
                                          (["--smooth", "1"], "--smooth must be in [0, 1)"),
                                          (["--backbone", "VGG61"], "VGG61")])
def test_recipe_bad_input_is_one_line(argv, message, capsys):
    assert recipe.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
