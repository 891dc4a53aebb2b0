"""recipes.export: SavedModel and TFLite exports of a run's model.keras match Keras; bad input is one line, exit 2."""
from __future__ import annotations

import json

import numpy as np
import pytest

import keras
from kcnn import perf
from recipes import export


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder with a tiny classifier of raw images of any size (resize -> conv -> BN -> pool -> softmax)."""
    folder = tmp_path_factory.mktemp("run")
    keras.utils.set_random_seed(0)
    image = keras.Input((None, None, 3), name="image")
    x = keras.layers.Resizing(12, 12, name="resize")(image)
    x = keras.layers.Rescaling(1 / 255.0)(x)
    x = keras.layers.Conv2D(6, 3, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(image, keras.layers.Dense(10, activation="softmax")(x))
    perf.save_portable(model, folder / "model.keras")
    (folder / "report.json").write_text(json.dumps({"data": "digits"}))
    return folder


def _records(folder):
    return json.loads((folder / "export.json").read_text())


def test_saved_model_matches_keras(run_dir, capsys):
    assert export.main([str(run_dir), "--format", "saved_model"]) == 0
    record = _records(run_dir)["saved_model"]
    assert record["path"] == str(run_dir / "export" / "saved_model")
    assert (run_dir / "export" / "saved_model" / "saved_model.pb").is_file()
    assert record["max_abs_diff"] < 1e-4
    assert record["images"] == 16  # 8 random + 8 digits test images (report.json names digits)
    assert record["input_size"] == [12, 12, 3]
    assert "saved_model:" in capsys.readouterr().out


def test_tflite_matches_keras_and_keeps_other_records(run_dir, tmp_path):
    out = tmp_path / "m.tflite"
    assert export.main([str(run_dir / "model.keras"), "--format", "tflite", "--out", str(out),
                        "--images", "3"]) == 0
    records = _records(run_dir)
    assert set(records) >= {"saved_model", "tflite"}
    assert records["tflite"]["path"] == str(out) and out.stat().st_size > 0
    assert records["tflite"]["max_abs_diff"] < 1e-4
    assert records["tflite"]["images"] == 3 + 3


@pytest.mark.parametrize("argv,message", [
    (["{missing}", "--format", "saved_model"], "no model at"),
    (["{run}", "--format", "pytorch"], "invalid choice"),
    (["{run}", "--images", "0"], "--images must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_2(run_dir, tmp_path, capsys, argv, message):
    argv = [a.format(missing=tmp_path / "nope", run=run_dir) for a in argv]
    assert export.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_onnx_without_the_converter_says_what_to_install(run_dir, capsys, monkeypatch):
    monkeypatch.setattr(export, "onnx_available", lambda: False)
    assert export.main([str(run_dir), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert "tf2onnx" in err and "pip install" in err and len(err.strip().splitlines()) == 1


def test_not_a_keras_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "model.keras"
    bad.write_text("not a zip")
    assert export.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_input_size_of_a_fixed_model():
    model = keras.Sequential([keras.Input((7, 9, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    assert export.input_size(model) == (7, 9, 3)
    images, what = export.check_images(export.Path("/nonexistent/model.keras"), (7, 9, 3), 4, 0)
    assert images.shape == (4, 7, 9, 3) and 0 <= images.min() and images.max() <= 255 and what == "4 random"
    assert np.isfinite(images).all()


def test_export_replaces_only_its_own_earlier_export(run_dir, tmp_path, capsys):
    foreign = tmp_path / "theirs.tflite"
    foreign.write_bytes(b"the user's")
    assert export.main([str(run_dir), "--format", "tflite", "--out", str(foreign), "--overwrite"]) == 2
    assert "is not an export kcnn wrote for this run" in capsys.readouterr().err
    assert foreign.read_bytes() == b"the user's"
    mine = tmp_path / "mine.tflite"
    assert export.main([str(run_dir), "--format", "tflite", "--out", str(mine), "--images", "1"]) == 0
    first = mine.read_bytes()
    assert export.main([str(run_dir), "--format", "tflite", "--out", str(mine), "--images", "1"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert export.main([str(run_dir), "--format", "tflite", "--out", str(mine), "--images", "1",
                        "--overwrite"]) == 0
    assert mine.read_bytes() == first and sorted(p.name for p in tmp_path.iterdir()) == ["mine.tflite",
                                                                                         "theirs.tflite"]
