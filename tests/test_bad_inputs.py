"""Bad input, table-driven, across the recipes: each gives exit code 2, one line on stderr, no traceback, and
changes nothing of the user's (no --out folder appears; a user's folder keeps its files)."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recipes import finetune, predict, pretrain, train, tune

TINY = ["--data", "digits", "--per-class", "3", "--image-size", "16", "--batch-size", "30", "--backbone",
        "vgg_cifar", "--weights", "none", "--schedule", "two-phase", "--epochs", "2", "--verbose", "0"]


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _folder(root: Path, per_class: int) -> str:
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(root / label / f"{i}.png")
    return str(root)


def _user_folder(root: Path) -> str:
    root.mkdir()
    (root / "thesis.txt").write_text("three years of work")
    return str(root)


# (recipe, args built from tmp_path, a piece of the expected message)
CASES = {
    "epochs 0": (finetune, lambda t: ["--epochs", "0"], "--epochs must be >= 1"),
    "batch size -1": (finetune, lambda t: ["--batch-size", "-1"], "--batch-size must be >= 1"),
    "image size below the minimum": (finetune, lambda t: ["--image-size", "4"], "at least"),
    "unknown backbone": (finetune, lambda t: ["--backbone", "resnet05"], "resnet05"),
    "unknown schedule": (finetune, lambda t: ["--schedule", "nonsense"], "schedule"),
    "missing data folder": (finetune, lambda t: ["--data", "/no/such/folder"], "/no/such/folder"),
    "missing weights file": (finetune, lambda t: ["--weights", "/no/such/file.h5"], "/no/such/file.h5"),
    "tfds dataset not prepared": (finetune, lambda t: ["--data", "tfds:no_such_dataset_xyz"], "no_such_dataset"),
    "cpu devices without mirrored": (finetune, lambda t: ["--cpu-devices", "2"], "goes with --distribute"),
    "per class -5": (finetune, lambda t: ["--per-class", "-5"], "--per-class must be >= 0"),
    "dropout 1.5": (finetune, lambda t: ["--dropout", "1.5"], "--dropout must be in [0, 1)"),
    "hidden -1": (finetune, lambda t: ["--hidden", "-1"], "--hidden must be >= 0"),
    "augment outside the choices": (finetune, lambda t: ["--augment", "bogus"], "invalid choice"),
    "missing config file": (finetune, lambda t: ["--config", str(t / "no.toml")], "no such file"),
    "config epochs as a string": (finetune, lambda t: ["--config", _write(t / "c.toml", 'epochs = "5"\n')],
                                  "epochs must be an integer"),
    "config head outside the choices": (finetune, lambda t: ["--config", _write(t / "c.toml", 'head = "x"\n')],
                                        "head must be one of gap, dense, conv"),
    "config overwrite as a string": (finetune, lambda t: ["--config", _write(t / "c.toml", 'overwrite = "false"\n')],
                                     "overwrite must be true or false"),
    "config unknown key": (finetune, lambda t: ["--config", _write(t / "c.toml", "lr_scale = 2\n")],
                           "unknown option 'lr_scale'"),
    "config not TOML": (finetune, lambda t: ["--config", _write(t / "c.toml", "epochs = = 3\n")], "not valid TOML"),
    "overwrite with resume": (finetune, lambda t: ["--overwrite", "--resume"], "contradict"),
    "resume without a run": (finetune, lambda t: ["--resume"], "no run to resume"),
    "out is a file": (finetune, lambda t: ["--out", _write(t / "file.txt", "x")], "is a file"),
    "overwrite a folder kcnn did not make": (finetune, lambda t: ["--overwrite", "--out", _user_folder(t / "u")],
                                             "kcnn did not make"),
    "schedule file with an unknown block": (
        finetune, lambda t: ["--schedule", _write(t / "s.toml", '[[phase]]\nepochs = 1\ntrain = ["conv9"]\n')],
        "conv9"),
    "schedule file with a negative rate": (
        finetune, lambda t: ["--schedule", _write(t / "s.toml", '[[phase]]\nepochs = 1\nlr = -1.0\n')], "lr"),
    "schedule file not TOML": (finetune, lambda t: ["--schedule", _write(t / "s.toml", "[[phase]\n")], "s.toml"),
    "corrupt weights file": (finetune, lambda t: ["--weights", _write(t / "w.h5", "not hdf5")], "w.h5"),
    "folder too small for the splits": (finetune, lambda t: ["--data", _folder(t / "tiny", 2)], "would be empty"),
    "folder without class folders": (finetune, lambda t: ["--data", str((t / "empty").mkdir() or t / "empty")],
                                     "empty"),
    "unknown model": (train, lambda t: ["--model", "nope"], "nope"),
    "preset outside the choices": (train, lambda t: ["--preset", "nope"], "invalid choice"),
    "train lr -1": (train, lambda t: ["--lr", "-1"], "--lr must be > 0"),
    "norm outside the choices": (train, lambda t: ["--norm", "bogus"], "invalid choice"),
    "pretrain examples 0": (pretrain, lambda t: ["--examples", "0"], "--examples must be >= 1"),
    "pretrain unknown backbone": (pretrain, lambda t: ["--backbone", "nope"], "nope"),
    "pretrain lr 0": (pretrain, lambda t: ["--lr", "0"], "--lr must be > 0"),
    "pretrain overwrite a folder kcnn did not make": (
        pretrain, lambda t: ["--overwrite", "--out", _user_folder(t / "u")], "kcnn did not make"),
    "train resume with overwrite": (train, lambda t: ["--overwrite", "--resume"], "contradict"),
    "tune overwrite a folder kcnn did not make": (tune, lambda t: ["--overwrite", "--out", _user_folder(t / "u")],
                                                  "kcnn did not make"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_nothing_changes(tmp_path, capsys, name):
    module, make_args, message = CASES[name]
    args = make_args(tmp_path)
    base = TINY if module is finetune else ["--verbose", "0", "--epochs", "1"]
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "out")]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert module.main([*base, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    import keras

    folder = tmp_path_factory.mktemp("model")
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))
    keras.Model(inputs, outputs).save(folder / "model.keras")
    unsafe = keras.layers.Lambda(lambda x: x * 2)(inputs)
    keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(unsafe))).save(
        folder / "lambda.keras")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "img.png")
    return folder


@pytest.mark.parametrize("labels, message", [
    ({"a": 1}, "must be a JSON list of class names"),
    (["a", "b"], "lists 2 class names but the model has 3 outputs"),
    (["a", 2, "c"], "must be a JSON list of class names"),
    ("not json", "not readable JSON"),
])
def test_predict_refuses_a_malformed_labels_json(tmp_path, capsys, model_file, labels, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes((model_file / "model.keras").read_bytes())
    (run / "labels.json").write_text(labels if isinstance(labels, str) else json.dumps(labels))
    assert predict.main([str(run), str(model_file / "img.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "labels.json" in err


@pytest.mark.parametrize("args, message", [
    (lambda m, t: [str(t / "missing"), str(m / "img.png")], "no model at"),
    (lambda m, t: [str(m / "lambda.keras"), str(m / "img.png")], "not a loadable .keras model"),
    (lambda m, t: [str(m / "model.keras"), str(m / "img.png"), "--top", "0"], "--top must be >= 1"),
    (lambda m, t: [_write(t / "x.keras", "zip? no"), str(m / "img.png")], "not a loadable .keras model"),
])
def test_predict_bad_model_is_one_line(tmp_path, capsys, model_file, args, message):
    assert predict.main(args(model_file, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err and "Traceback" not in err


def test_the_table_covers_at_least_thirty_inputs():
    assert len(CASES) + 4 + 4 >= 30
