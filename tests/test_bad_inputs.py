"""Bad input, table-driven, across the recipes: each gives exit code 2, one line on stderr, no traceback, and
changes nothing of the user's (no --out folder appears; a user's folder keeps its files)."""
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recipes import _toolbox, finetune, predict, pretrain, train, tune

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


def _write_bytes(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _run_folder(root: Path, recipe: str, state) -> str:
    """An unfinished kcnn run of ``recipe`` whose state.json holds ``state`` (text, or a value as JSON)."""
    root.mkdir()
    (root / "kcnn-run.json").write_text(json.dumps({"format": "kcnn-run", "recipe": recipe}))
    (root / "state.json").write_text(state if isinstance(state, str) else json.dumps(state))
    return str(root)


def _search_folder(root: Path, text: str) -> str:
    """A kcnn search folder whose search.json holds ``text``."""
    root.mkdir()
    (root / "kcnn-run.json").write_text(json.dumps({"format": "kcnn-run", "recipe": "tune"}))
    (root / "search.json").write_text(text)
    return str(root)


def _checkpoint(root: Path, text=None, **changes) -> str:
    """A kcnn checkpoint folder (pretrain's) whose kcnn.json has ``changes`` (or is ``text``)."""
    root.mkdir()
    meta = {"format": "kcnn-checkpoint", "version": 1, "arch": "vgg_cifar", "input_shape": [16, 16, 3],
            "classes": 10, "class_names": [str(d) for d in range(10)], "preprocessing": "unit", **changes}
    (root / "kcnn.json").write_text(json.dumps(meta) if text is None else text)
    (root / "model.keras").write_text("not read: kcnn.json is refused first")
    return str(root)


#: A run state as kcnn writes it, for the cases that break one part of it.
STATE = {"config": {}, "epochs_done": 0, "history": [], "checkpoint": None, "phases": []}


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
    # the training toolbox (recipes/_toolbox.py), across the three training recipes
    "train label smoothing 1.0": (train, lambda t: ["--label-smoothing", "1.0"],
                                  "--label-smoothing must be in [0, 1)"),
    "finetune label smoothing -0.1": (finetune, lambda t: ["--label-smoothing", "-0.1"],
                                      "--label-smoothing must be in [0, 1)"),
    "pretrain label smoothing nan": (pretrain, lambda t: ["--label-smoothing", "nan"],
                                     "--label-smoothing must be in [0, 1)"),
    "train mix prob 2": (train, lambda t: ["--mix-prob", "2"], "--mix-prob must be in [0, 1]"),
    "finetune mix prob -0.5": (finetune, lambda t: ["--mixup", "0.2", "--mix-prob", "-0.5"],
                               "--mix-prob must be in [0, 1]"),
    "finetune mixup -0.2": (finetune, lambda t: ["--mixup", "-0.2"], "--mixup takes a finite alpha >= 0"),
    "train mixup inf": (train, lambda t: ["--mixup", "inf"], "--mixup takes a finite alpha >= 0"),
    "pretrain cutmix nan": (pretrain, lambda t: ["--cutmix", "nan"], "--cutmix takes a finite alpha >= 0"),
    "finetune mix off epoch -1": (finetune, lambda t: ["--mixup", "0.2", "--mix-off-epoch", "-1"],
                                  "--mix-off-epoch must be >= 0"),
    "train mix off epoch not a number": (train, lambda t: ["--mix-off-epoch", "two"], "invalid int value"),
    "train augment magnitude 11": (train, lambda t: ["--augment-magnitude", "11"],
                                   "--augment-magnitude must be in [0, 10]"),
    "pretrain augment magnitude -1": (pretrain, lambda t: ["--augment-magnitude", "-1"],
                                      "--augment-magnitude must be in [0, 10]"),
    "finetune erase 1.5": (finetune, lambda t: ["--erase", "1.5"], "--erase must be in [0, 1]"),
    "train erase -0.1": (train, lambda t: ["--erase", "-0.1"], "--erase must be in [0, 1]"),
    "train ema 1.0": (train, lambda t: ["--ema", "1.0"], "--ema must be in [0, 1)"),
    "finetune ema -0.5": (finetune, lambda t: ["--ema", "-0.5"], "--ema must be in [0, 1)"),
    "pretrain accumulate 0": (pretrain, lambda t: ["--accumulate", "0"], "--accumulate must be >= 1"),
    "train accumulate with mirrored": (train, lambda t: ["--accumulate", "2", "--distribute", "mirrored",
                                                         "--cpu-devices", "2"],
                                       "--accumulate 2 does not work with --distribute mirrored"),
    "finetune accumulate with multiworker": (
        finetune, lambda t: ["--accumulate", "4", "--distribute", "multiworker"],
        "--accumulate 4 does not work with --distribute multiworker"),
    "pretrain accumulate with mirrored": (pretrain, lambda t: ["--accumulate", "2", "--distribute", "mirrored"],
                                          "does not work with --distribute mirrored"),
    "train sched outside the choices": (train, lambda t: ["--sched", "zigzag"], "invalid choice"),
    "train drop path 1.5": (train, lambda t: ["--drop-path", "1.5"], "--drop-path must be in [0, 1)"),
    "finetune drop path on a VGG": (finetune, lambda t: ["--drop-path", "0.1"], "--drop-path is for kcnn's"),
    "pretrain drop path on a VGG": (pretrain, lambda t: ["--drop-path", "0.2"], "--drop-path is for kcnn's"),
    "train drop path on a VGG": (train, lambda t: ["--model", "vgg11", "--drop-path", "0.1"], "vgg11 has no"),
    "train patience -1": (train, lambda t: ["--patience", "-1"], "--patience must be >= 1"),
    "finetune patience 0": (finetune, lambda t: ["--patience", "0"], "--patience must be >= 1"),
    "train monitor unknown": (train, lambda t: ["--monitor", "val_f1"], "invalid choice"),
    "pretrain monitor unknown": (pretrain, lambda t: ["--monitor", "accuracy"], "invalid choice"),
    "finetune tta with a value": (finetune, lambda t: ["--tta=yes"], "ignored explicit argument"),
    "train restore best with a value": (train, lambda t: ["--restore-best=1"], "ignored explicit argument"),
    "config tta as a string": (finetune, lambda t: ["--config", _write(t / "c.toml", 'tta = "yes"\n')],
                               "tta must be true or false"),
    "config label smoothing as a string": (
        train, lambda t: ["--config", _write(t / "c.toml", 'label_smoothing = "0.1"\n')],
        "label_smoothing must be a number"),
    "config accumulate 1.5": (pretrain, lambda t: ["--config", _write(t / "c.toml", "accumulate = 1.5\n")],
                              "accumulate must be an integer"),
    "config monitor outside the choices": (train, lambda t: ["--config", _write(t / "c.toml", 'monitor = "acc"\n')],
                                           "monitor must be one of val_accuracy, val_loss"),
    "config sched outside the choices": (finetune, lambda t: ["--config", _write(t / "c.toml", 'sched = "zig"\n')],
                                         "sched must be one of"),
    "config ema 1 in the file": (finetune, lambda t: ["--config", _write(t / "c.toml", "ema = 1\n")],
                                 "--ema must be in [0, 1)"),
    # --schedule: the rules (auto, fastai, bit, keras-guide), presets and files
    "schedule rule misspelled": (finetune, lambda t: ["--schedule", "kerasguide"],
                                 "--schedule 'kerasguide' is not a rule (auto, fastai, bit, keras-guide)"),
    "schedule rule bitt": (finetune, lambda t: ["--schedule", "bitt"], "did you mean 'bit'?"),
    "checkpoint-every not a time": (train, lambda t: ["--checkpoint-every", "10 parsecs"],
                                    "--checkpoint-every must be a number of steps"),
    "checkpoint-every negative": (finetune, lambda t: ["--checkpoint-every", "-5"], "--checkpoint-every"),
    "schedule rule with lr 0": (finetune, lambda t: ["--schedule", "bit", "--lr", "0"], "--lr must be > 0"),
    "schedule rule with epochs 0": (finetune, lambda t: ["--schedule", "fastai", "--epochs", "0"],
                                    "--epochs must be >= 1"),
    "schedule rule with patience 0": (finetune, lambda t: ["--schedule", "auto", "--patience", "0"],
                                      "--patience must be >= 1"),
    "schedule rule with accumulate 0": (finetune, lambda t: ["--schedule", "keras-guide", "--accumulate", "0"],
                                        "--accumulate must be >= 1"),
    "config schedule as a number": (finetune, lambda t: ["--config", _write(t / "c.toml", "schedule = 3\n")],
                                    "schedule must be a string"),
    "schedule file that is a folder": (
        finetune, lambda t: ["--schedule", str((t / "sched").mkdir() or t / "sched")], "is not a rule"),
    # malformed state files: one line naming the file
    "search.json holding a list": (tune, lambda t: ["--out", _search_folder(t / "s", "[]")],
                                   "search.json is not a kcnn search (it holds a JSON list"),
    "search.json not JSON": (tune, lambda t: ["--out", _search_folder(t / "s", "{")], "search.json is unreadable"),
    "kcnn.json with a string version": (finetune, lambda t: ["--weights", _checkpoint(t / "ck", version="1")],
                                        "kcnn.json: version must be a whole number"),
    "kcnn.json holding a list": (finetune, lambda t: ["--weights", _checkpoint(t / "ck", text="[1]")],
                                 "kcnn.json is not a kcnn checkpoint (it holds a JSON list"),
    "kcnn.json with a bad input shape": (finetune, lambda t: ["--weights", _checkpoint(t / "ck", input_shape="16")],
                                         "kcnn.json: input_shape must be"),
    "kcnn.json not JSON": (finetune, lambda t: ["--weights", _checkpoint(t / "ck", text="{")], "Unreadable"),
    "kcnn.json from a newer kcnn": (finetune, lambda t: ["--weights", _checkpoint(t / "ck", version=9)],
                                    "checkpoint version 9"),
    "kcnn.json given as the file": (finetune, lambda t: ["--weights", _checkpoint(t / "ck", arch=3) + "/kcnn.json"],
                                    "kcnn.json: arch must be"),
    "weights folder without kcnn.json": (finetune, lambda t: ["--weights", _user_folder(t / "w")],
                                         "is not a kcnn checkpoint"),
    "state.json holding a list": (finetune, lambda t: ["--resume", "--out", _run_folder(t / "r", "finetune", "[]")],
                                  "is not a kcnn run state"),
    "state.json not JSON": (finetune, lambda t: ["--resume", "--out", _run_folder(t / "r", "finetune", "{")],
                            "state.json is unreadable"),
    "state.json with config a list": (
        train, lambda t: ["--resume", "--out", _run_folder(t / "r", "train", {**STATE, "config": []})],
        "config is not an object"),
    "state.json with history rows as numbers": (
        train, lambda t: ["--resume", "--out", _run_folder(t / "r", "train", {**STATE, "history": [1]})],
        "history is not a list of rows"),
    "state.json with best a list": (
        pretrain, lambda t: ["--resume", "--out", _run_folder(t / "r", "pretrain", {**STATE, "best": [1]})],
        "best is not null or an object"),
    "state.json with phases an object": (
        finetune, lambda t: ["--resume", "--out", _run_folder(t / "r", "finetune", {**STATE, "phases": {}})],
        "phases is not a list"),
    "state.json with epochs done a string": (
        train, lambda t: ["--resume", "--out", _run_folder(t / "r", "train", {**STATE, "epochs_done": "3"})],
        "epochs_done '3' is not a count"),
    "config.toml with a table for a flag": (
        train, lambda t: ["--config", _write(t / "config.toml", "data = {x = 1}\n")], "data must be a string"),
    "config.toml with a list for epochs": (
        pretrain, lambda t: ["--config", _write(t / "config.toml", "epochs = [1]\n")], "epochs must be an integer"),
    "config.toml with a section": (
        finetune, lambda t: ["--config", _write(t / "config.toml", "[train]\nepochs = 3\n")],
        "unknown option 'train'"),
    "config.toml not UTF-8": (train, lambda t: ["--config", _write_bytes(t / "config.toml", b"seed = \xff\n")],
                              "not valid TOML"),
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


def _fingerprint(module, make_args, folder: Path) -> tuple:
    """What a case gives the recipe: its module, the arguments (paths relative to its folder) and the files it
    made (their names and contents)."""
    folder.mkdir()
    args = tuple(a.replace(str(folder), "<tmp>") for a in make_args(folder))
    made = tuple(sorted((str(p.relative_to(folder)), hashlib.sha256(p.read_bytes()).hexdigest())
                        for p in folder.rglob("*") if p.is_file()))
    return module.__name__, args, made


def test_the_table_covers_at_least_sixty_distinct_inputs(tmp_path):
    # every case is collected by the test above
    harness = test_bad_input_is_one_line_exit_2_and_nothing_changes
    marks = [m for m in harness.pytestmark if m.name == "parametrize"]
    assert marks and list(marks[0].args[1]) == sorted(CASES)
    # and no two give the recipe the same input
    seen = {}
    for i, (name, (module, make_args, _)) in enumerate(sorted(CASES.items())):
        seen.setdefault(_fingerprint(module, make_args, tmp_path / str(i)), []).append(name)
    duplicates = [names for names in seen.values() if len(names) > 1]
    assert not duplicates and len(seen) >= 60, (len(seen), duplicates)
    # every training recipe and tune are among them, and every flag of the training toolbox
    assert {module for module, _, _ in seen} == {m.__name__ for m in (finetune, pretrain, train, tune)}
    given = {a.split("=")[0] for _, args, _ in seen for a in args if a.startswith("--")}
    toolbox = {"--" + f.name.replace("_", "-") for f in dataclasses.fields(_toolbox.Toolbox)}
    assert toolbox - given == set()
