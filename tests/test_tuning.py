"""kcnn.tuning and recipes.tune: search spaces, defaults and hp.Fixed, the fine-tuning schedule's phases, the
recipe end to end, resume, failed trials, bad input; slow: a killed trial, memory over 20 trials, chief +
workers.

Small on purpose: digits at 12 px, 10 images per class, All-CNN-A without batch norm and plain SGD (its
training step traces in a few seconds), one epoch per trial.
"""
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np
import pytest
import tensorflow as tf

from kcnn import transfer, tuning
from recipes import tune

ROOT = Path(__file__).resolve().parents[1]
SIZE = 12
FAST = ["--data", "digits", "--image-size", str(SIZE), "--per-class", "10", "--models", "allcnn_a",
        "--fix", "batch_norm=false,optimizer=sgd", "--epochs", "1", "--verbose", "0"]


def _digits(n=60, size=SIZE, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.uniform(0, 255, (n, size, size, 3)).astype("float32")
    y = (np.arange(n) % 10).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(20)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
            for p in sorted(folder.rglob("*"))}


# ------------------------------------------------------------------------------------------------------------
# HyperCNN
# ------------------------------------------------------------------------------------------------------------


def test_hypercnn_defaults():
    hypermodel = tuning.HyperCNN(10, (16, 16, 3))
    assert hypermodel.models == ("resnet20", "resnet32", "allcnn_c")  # vgg11 needs 32 px
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    assert hp.values == {"model": "resnet20", "batch_norm": True, "spatial_dropout": 0.0, "shortcut": "A",
                         "head": "gap", "fc_units": 0, "optimizer": "adam", "learning_rate": 1e-3,
                         "weight_decay": 0.0}
    assert "downsample" not in hp.values and "dropout" not in hp.values  # conditional, inactive here
    assert model.name == "resnet20_tuned" and model.output.shape[-1] == 10
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(1e-3)
    assert isinstance(model.loss, transfer.CrossEntropy) and model.loss.label_smoothing == 0.0
    assert model.get_layer("backbone").trainable  # from scratch: everything trains
    assert model.count_params() == 271_098  # ResNet-20 (0.27M) with a 64 -> 10 dense head
    names = [p.name for p in hp.space]
    assert {"downsample", "shortcut", "dropout"} <= set(names)
    downsample = next(p for p in hp.space if p.name == "downsample")
    assert downsample.conditions[0].values == ["allcnn_c"]
    assert tuning.HyperCNN(10, (32, 32, 3)).models == ("resnet20", "resnet32", "allcnn_c", "vgg11")


def test_hypercnn_fixed_values_win():
    hypermodel = tuning.HyperCNN(10, (16, 16, 3))
    hp = tuning.fixed_hyperparameters({"model": "allcnn_c", "downsample": "max", "learning_rate": 0.05,
                                       "optimizer": "sgd", "fc_units": 128, "dropout": 0.5,
                                       "batch_norm": False})
    model = hypermodel.build(hp)
    body = model.get_layer("backbone")
    layer_names = [layer.name for layer in body.layers]
    assert "block1_pool" in layer_names and "block1_conv3" not in layer_names  # pooling, not a strided conv
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in body.layers)
    assert model.get_layer("fc1").units == 128 and model.get_layer("fc1_dropout").rate == 0.5
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.05)
    assert hp.values["downsample"] == "max" and hp.values["model"] == "allcnn_c"


def test_fixed_values_hold_in_a_random_search(tmp_path):
    hp = tuning.fixed_hyperparameters({"model": "allcnn_c", "downsample": "conv", "fc_units": 0})
    tuner = tuning.make_tuner("random", tuning.HyperCNN(10, (16, 16, 3)), directory=tmp_path, max_trials=12,
                              hyperparameters=hp, seed=3)
    values = [tuner.oracle.populate_space(str(i))["values"] for i in range(12)]  # what the oracle would run
    assert [v["model"] for v in values] == ["allcnn_c"] * 12
    assert [v["downsample"] for v in values] == ["conv"] * 12
    assert sum(v["fc_units"] for v in values) == 0
    assert len({v["learning_rate"] for v in values}) == 12  # the rest is still searched


def test_hypercnn_rejects_models_too_large_for_the_images():
    with pytest.raises(ValueError, match="vgg11 needs inputs of at least 32x32"):
        tuning.HyperCNN(10, (16, 16, 3), models=["resnet20", "vgg11"])
    with pytest.raises(ValueError, match="Unknown model 'resnet21'"):
        tuning.HyperCNN(10, (16, 16, 3), models=["resnet21"])


def _nan_weighted(dataset):
    """``dataset`` with a NaN sample weight on every example: the loss is NaN by construction.

    NaN images are not enough: with TensorFlow's oneDNN kernels (on by default on many x86 CPUs) NaN does not
    propagate through the network (All-CNN-A's loss came out log(10), finite), and an absurd learning rate
    gives a huge but finite loss there. A NaN weight multiplies the per-example losses after the network, so
    the loss is NaN on every kernel and every CPU.
    """
    return dataset.map(lambda images, labels: (images, labels, tf.fill(tf.shape(labels), np.nan)))


def test_nan_loss_fails_the_trial():
    hypermodel = tuning.HyperCNN(10, (SIZE, SIZE, 3), models=["allcnn_a"])
    hp = tuning.fixed_hyperparameters({"batch_norm": False, "optimizer": "sgd"})
    model = hypermodel.build(hp)
    stopped = []
    stop = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: stopped.append(epoch))
    with pytest.raises(kt.errors.FailedTrialError, match="loss became nan in epoch 1"):
        hypermodel.fit(hp, model, _nan_weighted(_digits(40)), epochs=3, callbacks=[stop], verbose=0)
    assert stopped == [0]  # TerminateOnNaN ended the fit in its first epoch


# ------------------------------------------------------------------------------------------------------------
# HyperFineTune
# ------------------------------------------------------------------------------------------------------------


def test_hyperfinetune_defaults_and_schedule():
    hypermodel = tuning.HyperFineTune(["allcnn_a"], None, num_classes=10, image_size=SIZE, epochs=4,
                                      max_unfreeze=3)
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    assert hp.values == {"backbone": "allcnn_a", "head_units": 0, "head_epochs": 2, "head_lr": 1e-3,
                         "unfreeze_blocks": 2, "lr_ratio": 0.1, "lr_mult": 1.0, "bn": "frozen"}
    assert not model.get_layer("backbone").trainable  # phase 1 state
    schedule = hypermodel.schedule(hp)
    assert [(p.epochs, p.train, p.bn) for p in schedule] == [(2, "head", "frozen"), (2, "top:2", "frozen")]
    assert schedule[1].lr == pytest.approx(1e-4) and schedule[1].lr_mult is None
    fixed = tuning.fixed_hyperparameters({"head_epochs": 1, "unfreeze_blocks": 3, "lr_mult": 0.5,
                                          "bn": "train", "head_units": 64, "head_dropout": 0.25})
    model = hypermodel.build(fixed)
    assert model.get_layer("fc1").units == 64 and model.get_layer("fc1_dropout").rate == 0.25
    schedule = hypermodel.schedule(fixed)
    assert [(p.epochs, p.train, p.bn, p.lr_mult) for p in schedule] == [(1, "head", "frozen", None),
                                                                       (3, "top:3", "train", 0.5)]


def test_hyperfinetune_fit_runs_both_phases():
    keras.utils.set_random_seed(0)
    hypermodel = tuning.HyperFineTune(["allcnn_a"], None, num_classes=10, image_size=SIZE, epochs=3)
    hp = tuning.fixed_hyperparameters({"head_epochs": 1, "unfreeze_blocks": 1})
    model = hypermodel.build(hp)
    train, val = _digits(60), _digits(20, seed=1)
    history = hypermodel.fit(hp, model, train, validation_data=val, epochs=3)
    assert history.epoch == [0, 1, 2]
    assert sorted(history.history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert len(history.history["val_accuracy"]) == 3
    phases = history.schedule_history.phases
    assert [(p["name"], p["epochs_run"], p["blocks"]) for p in phases] == [("head", 1, []),
                                                                          ("fine-tune", 2, ["block3"])]
    head_params = model.get_layer("predictions").count_params()
    assert phases[0]["trainable_params"] == head_params
    body = model.get_layer("backbone")
    block3 = sum(body.get_layer(n).count_params() for n in ("block3_conv1", "block3_conv2"))
    assert phases[1]["trainable_params"] == head_params + block3
    assert phases[0]["cached"] is True and phases[1]["cached"] is False


def test_hyperfinetune_maps_hyperband_budgets_onto_one_schedule():
    """Round 1 (epochs=1) trains the head only; round 2 (initial_epoch=1, epochs=4) continues the same
    schedule: the rest of the head phase, then the fine-tune phase lengthened to the larger budget."""
    hypermodel = tuning.HyperFineTune(["allcnn_a"], None, num_classes=10, image_size=SIZE, epochs=3)
    hp = tuning.fixed_hyperparameters({"head_epochs": 2})
    model = hypermodel.build(hp)
    train = _digits(40)
    first = hypermodel.fit(hp, model, train, epochs=1)
    assert [(p["name"], p["epochs_run"]) for p in first.schedule_history.phases] == [("head", 1)]
    second = hypermodel.fit(hp, model, train, epochs=4, initial_epoch=1)
    assert second.epoch == [1, 2, 3]
    assert [(p["name"], p["first_epoch"], p["last_epoch"], p["epochs_run"], p["skipped"])
            for p in second.schedule_history.phases] == [("head", 1, 2, 1, False),
                                                         ("fine-tune", 3, 4, 2, False)]


# ------------------------------------------------------------------------------------------------------------
# Tuners: failures
# ------------------------------------------------------------------------------------------------------------


class _Flaky(tuning.HyperCNN):
    """Trial 1 runs out of memory, trial 2's loss is NaN (NaN sample weights), the rest train normally."""

    calls = 0

    def fit(self, hp, model, x, **kwargs):
        type(self).calls += 1
        if self.calls == 1:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape [4096]")
        if self.calls == 2:
            x = _nan_weighted(x)
        return super().fit(hp, model, x, **kwargs)


def test_failed_trials_are_recorded_and_the_search_goes_on(tmp_path):
    _Flaky.calls = 0
    hypermodel = _Flaky(10, (SIZE, SIZE, 3), models=["allcnn_a"])
    hp = tuning.fixed_hyperparameters({"batch_norm": False, "optimizer": "sgd"})
    tuner = tuning.make_tuner("random", hypermodel, directory=tmp_path, max_trials=3, hyperparameters=hp)
    tuner.search(_digits(40), validation_data=_digits(20, seed=1), epochs=1, verbose=0)
    rows = tuning.trial_records(tuner)
    assert [r["status"] for r in rows] == ["FAILED", "FAILED", "COMPLETED"]
    assert "ResourceExhaustedError" in rows[0]["reason"] and "OOM when allocating" in rows[0]["reason"]
    assert "loss became nan in epoch 1" in rows[1]["reason"]
    assert rows[2]["reason"] is None and 0.0 <= rows[2]["score"] <= 1.0
    assert [r["epochs"] for r in rows] == [0, 1, 1]
    tuning.write_trials_csv(rows, tmp_path / "trials.csv")
    table = _rows(tmp_path / "trials.csv")
    assert [r["status"] for r in table] == ["FAILED", "FAILED", "COMPLETED"]
    assert "OOM when allocating" in table[0]["reason"]
    summary = tuning.search_summary(rows)
    assert (summary["trials"], summary["completed"], summary["failed"], summary["epochs"]) == (3, 1, 2, 2)
    assert tuning.best_hyperparameters(tuner)["trial_id"] == rows[2]["trial_id"]


# ------------------------------------------------------------------------------------------------------------
# The recipe
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One random search of 2 trials with the recipe (shared below; tests that change it use a copy)."""
    out = tmp_path_factory.mktemp("tune") / "search"
    code = tune.main([*FAST, "--tuner", "random", "--max-trials", "2", "--out", str(out)])
    return out, code


def test_recipe_end_to_end(searched):
    out, code = searched
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert {"search.json", "best_hyperparameters.json", "trials.csv", "trials.png", "report.json",
            "model.keras", "labels.json", "history.csv", "curves.png", "confusion.png", "search"} <= names
    rows = _rows(out / "trials.csv")
    assert [r["trial_id"] for r in rows] == ["0", "1"] and [r["status"] for r in rows] == ["COMPLETED"] * 2
    assert [r["epochs"] for r in rows] == ["1", "1"] and [r["worker"] for r in rows] == ["tuner0"] * 2
    assert {"model", "learning_rate", "head", "batch_norm"} <= set(rows[0])
    assert [r["batch_norm"] for r in rows] == ["False", "False"]  # --fix held
    best = json.loads((out / "best_hyperparameters.json").read_text())
    scores = [float(r["score"]) for r in rows]
    assert best["score"] == pytest.approx(max(scores))
    assert best["trial_id"] == rows[int(np.argmax(scores))]["trial_id"]
    assert best["hyperparameters"]["optimizer"] == "sgd"
    report = json.loads((out / "report.json").read_text())
    assert 0.0 <= report["test_accuracy"] <= 1.0 and report["test_examples"] == 359
    assert report["best_trial"] == best["trial_id"] and report["train_examples"] == 100 + 180
    assert report["search"]["trials"] == 2 and report["search"]["epochs"] == 2
    ident = json.loads((out / "search.json").read_text())
    assert (ident["space"], ident["tuner"], ident["data"], ident["image_size"], ident["precision"]) == \
        ("cnn", "random", "digits", SIZE, "float32")  # --precision auto is float32 in the suite (conftest)
    model = keras.saving.load_model(out / "model.keras")
    assert model(np.zeros((2, 30, 30, 3), "float32")).shape == (2, 10)  # raw images of any size


def test_resume_keeps_finished_trials_and_adds_new_ones(searched, tmp_path, capsys):
    out = tmp_path / "search"
    shutil.copytree(searched[0], out)
    before = {r["trial_id"]: r for r in _rows(out / "trials.csv")}
    again = [*FAST, "--tuner", "random", "--max-trials", "3", "--no-retrain", "--out", str(out)]
    assert tune.main(again) == 0
    rows = _rows(out / "trials.csv")
    assert [r["trial_id"] for r in rows] == ["0", "1", "2"]
    assert [r["status"] for r in rows] == ["COMPLETED"] * 3
    for row in rows[:2]:  # not redone: run once, same duration, same score
        old = before[row["trial_id"]]
        assert (row["runs"], row["seconds"], row["score"]) == ("1", old["seconds"], old["score"])
    capsys.readouterr()
    assert tune.main(again) == 0
    assert len(_rows(out / "trials.csv")) == 3
    printed = capsys.readouterr().out
    assert "search: 3 trials (3 completed, 0 failed), 3 training epochs" in printed


def test_max_trials_default_caps_random_and_bayesian_not_hyperband():
    assert tune.max_trials_of(tune.TuneConfig()) is None  # Hyperband runs all its brackets
    assert tune.max_trials_of(tune.TuneConfig(tuner="random")) == 20
    assert tune.max_trials_of(tune.TuneConfig(tuner="bayesian")) == 20
    assert tune.max_trials_of(tune.TuneConfig(tuner="hyperband", max_trials=7)) == 7


@pytest.mark.parametrize("args, message", [
    (["--space", "pixels"], "error: unknown --space 'pixels'; choose one of cnn, finetune"),
    (["--tuner", "grid"], "error: unknown --tuner 'grid'; choose one of hyperband, bayesian, random"),
    (["--max-trials", "0"], "error: --max-trials must be >= 1; got 0"),
    (["--objective", "f1"], "error: unknown --objective 'f1'"),
    (["--fix", "learning_rate"], "error: --fix takes NAME=VALUE pairs"),
    (["--models", "vgg11"], "error: vgg11 needs inputs of at least 32x32 pixels"),
])
def test_bad_input_exits_2_with_one_line(args, message, tmp_path, capsys):
    out = tmp_path / "never"
    assert tune.main([*FAST, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not out.exists()


def test_out_holding_another_search_is_refused_untouched(searched, capsys):
    out = searched[0]
    before = _snapshot(out)
    finetune = ["--space", "finetune", "--backbones", "allcnn_a", "--weights", "none", "--epochs", "2"]
    for args, diff in ((finetune, "space: 'cnn' -> 'finetune'"),
                       (["--data", "glyphs"], "data: 'digits' -> 'glyphs'"),
                       (["--tuner", "hyperband"], "tuner: 'random' -> 'hyperband'"),
                       (["--precision", "mixed_bfloat16"], "precision: 'float32' -> 'mixed_bfloat16'")):
        capsys.readouterr()
        argv = [*FAST, "--tuner", "random", "--max-trials", "2", *args, "--out", str(out)]
        assert tune.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out {out} holds a different search (") and diff in err
        assert err.count("\n") == 1
    assert _snapshot(out) == before


def test_out_holding_something_else_is_refused(tmp_path, capsys):
    out = tmp_path / "other"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert tune.main([*FAST, "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --out {out} is not empty and holds no kcnn search")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


# ------------------------------------------------------------------------------------------------------------
# Slow: processes
# ------------------------------------------------------------------------------------------------------------


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT), **extra)
    for key in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        if key not in extra:
            env.pop(key, None)
    return env


def _recipe(args, **env):
    return subprocess.Popen([sys.executable, "-m", "recipes.tune", *args], cwd=ROOT, env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_a_trial_killed_midway_is_retried(tmp_path):
    out = tmp_path / "search"
    args = [*FAST, "--tuner", "random", "--max-trials", "3", "--epochs", "3", "--out", str(out)]
    proc = _recipe(args)
    trial = out / "search" / "trial_1" / "trial.json"
    deadline = time.time() + 300
    while not trial.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert trial.exists(), proc.communicate()[0][-2000:]
    time.sleep(2.0)  # trial 1 is building or training
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads(trial.read_text())["status"] == "RUNNING"
    first = json.loads((out / "search" / "trial_0" / tuning.TRIAL_FILE).read_text())
    proc = _recipe(args)
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, log[-2000:]
    rows = _rows(out / "trials.csv")
    assert [r["status"] for r in rows] == ["COMPLETED"] * 3
    assert rows[0]["runs"] == "1" and float(rows[0]["seconds"]) == first["seconds"]  # finished: not redone
    assert rows[1]["epochs"] == "3"  # the killed trial ran again, in full


MEMORY_SCRIPT = r"""
import json, os, sys
import numpy as np, tensorflow as tf
from kcnn import data, tuning

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

class Measured(tuning.RandomSearch):
    rss = []
    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        self.rss.append(rss_mb())

splits = data.load("digits", image_size=12, per_class=10, seed=0)
hypermodel = tuning.HyperCNN(10, (12, 12, 3), models=["allcnn_a", "allcnn_b"])
tuner = Measured(hypermodel=hypermodel, objective="val_accuracy", max_trials=20, seed=0,
                 directory=sys.argv[1], project_name="memory", max_consecutive_failed_trials=20)
tuner.search(splits.train, validation_data=splits.val, epochs=1, verbose=0)
rows = tuning.trial_records(tuner)
print(json.dumps({"rss": Measured.rss, "statuses": [r["status"] for r in rows]}))
"""


@pytest.mark.slow
def test_memory_stays_flat_over_20_trials(tmp_path):
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rss = result["rss"]
    assert len(rss) == 20 and result["statuses"].count("COMPLETED") >= 18
    growth = rss[-1] - rss[0]
    print(f"resident memory after trial 1: {rss[0]:.0f} MB, after trial 20: {rss[-1]:.0f} MB, "
          f"growth {growth:.0f} MB; max {max(rss):.0f} MB")
    assert growth < 200


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_chief_and_two_workers(tmp_path):
    out = tmp_path / "search"
    args = [*FAST, "--tuner", "random", "--max-trials", "6", "--epochs", "2", "--out", str(out)]
    port = str(_free_port())
    common = dict(KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=port)
    chief = _recipe(args, KERASTUNER_TUNER_ID="chief", **common)
    workers = [_recipe(args, KERASTUNER_TUNER_ID=f"tuner{i}", **common) for i in range(2)]
    logs = [p.communicate(timeout=900)[0] for p in workers]
    chief_log = chief.communicate(timeout=600)[0]
    assert [p.returncode for p in workers] == [0, 0], [log[-1500:] for log in logs]
    assert chief.returncode == 0, chief_log[-3000:]
    rows = _rows(out / "trials.csv")
    assert len(rows) == 6 and [r["status"] for r in rows] == ["COMPLETED"] * 6
    by_worker = {w: sum(r["worker"] == w for r in rows) for w in ("tuner0", "tuner1")}
    print(f"trials per worker: {by_worker}")
    assert by_worker["tuner0"] >= 1 and by_worker["tuner1"] >= 1 and sum(by_worker.values()) == 6
    report = json.loads((out / "report.json").read_text())
    assert 0.0 <= report["test_accuracy"] <= 1.0 and report["search"]["completed"] == 6
