"""Run folders (refusals, resume state), the TOML writer, reports and plots, the recipes' argument layer."""
import json
import tomllib

import numpy as np
import pytest
import tensorflow as tf

import keras
import kcnn
from kcnn import training
from recipes import _cli
from recipes.finetune import FinetuneConfig


def test_toml_round_trip():
    config = {"data": "digits", "epochs": 3, "lr": 1e-3, "augment": None, "flag": True, "sizes": [1, 2],
              "path": "a \"quoted\" \\ path", "phase": [{"epochs": 2, "train": "head"}, {"epochs": 1, "train": "all"}]}
    parsed = tomllib.loads(training.dumps_toml(config))
    assert parsed == {k: v for k, v in config.items() if v is not None}


def test_run_dir_refuses_finished_run_without_overwrite(tmp_path):
    out = tmp_path / "run"
    run = training.RunDir(out, config={"a": 1}).open()
    assert json.loads((out / "state.json").read_text())["epochs_done"] == 0
    (out / "model.keras").write_text("x")
    (out / "report.json").write_text("{}")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(training.RunError, match="finished run.*--overwrite"):
        training.RunDir(out, config={"a": 1}).open()
    with pytest.raises(training.RunError, match="nothing to resume"):
        training.RunDir(out, resume=True, config={"a": 1}).open()
    assert sorted(p.name for p in out.iterdir()) == before  # nothing touched
    training.RunDir(out, overwrite=True, config={"a": 2}).open()
    assert not (out / "report.json").exists()
    assert run.path == out


def test_run_dir_checkpoint_and_resume(tmp_path):
    model = kcnn.build("resnet20", input_shape=(8, 8, 3), classes=3)
    run = training.RunDir(tmp_path / "r", config={"lr": 0.1}).open()
    run.checkpoint(model, {"epoch": 1, "phase": "head", "lr": 0.1, "loss": 2.0})
    model.get_layer("predictions").set_weights([w * 0 for w in model.get_layer("predictions").get_weights()])
    run.checkpoint(model, {"epoch": 2, "phase": "head", "lr": 0.1, "loss": 1.5})
    assert sorted(p.name for p in (tmp_path / "r").glob("checkpoint-*")) == ["checkpoint-0002.weights.h5"]
    with pytest.raises(training.RunError, match="unfinished run"):
        training.RunDir(tmp_path / "r", config={"lr": 0.1}).open()
    with pytest.raises(training.RunError, match="settings differ.*lr: 0.1 -> 0.2"):
        training.RunDir(tmp_path / "r", resume=True, config={"lr": 0.2}).open()
    resumed = training.RunDir(tmp_path / "r", resume=True, config={"lr": 0.1, "resume": True}).open()
    fresh = kcnn.build("resnet20", input_shape=(8, 8, 3), classes=3)
    assert resumed.restore(fresh) == 2
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert float(np.abs(fresh.get_layer("predictions").get_weights()[0]).sum()) == 0.0
    rows = (tmp_path / "r" / "history.csv").read_text().splitlines()
    assert rows[0] == "epoch,phase,lr,loss" and len(rows) == 3


def test_evaluate_and_finish_run(tmp_path):
    keras.utils.set_random_seed(0)
    model = kcnn.build("allcnn_a", input_shape=(12, 12, 3), classes=3)
    x = np.random.default_rng(0).uniform(0, 255, (12, 12, 12, 3)).astype("float32")
    y = np.arange(12) % 3
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(5)
    metrics = training.evaluate(model, ds, ["a", "b", "c"])
    pred = np.asarray(model(x)).argmax(1)
    assert metrics["test_accuracy"] == pytest.approx(float(np.mean(pred == y)))
    assert np.array(metrics["confusion_matrix"]).sum() == 12
    assert sum(v["support"] for v in metrics["per_class"].values()) == 12
    run = training.RunDir(tmp_path / "run", config={}).open()
    history = [{"epoch": 1, "phase": "head", "loss": 1.0, "accuracy": 0.5},
               {"epoch": 2, "phase": "all", "loss": 0.8, "accuracy": 0.6}]
    report = training.finish_run(run, model, test_ds=ds, class_names=["a", "b", "c"], history=history, seed=3,
                                 extra={"scratch_test_accuracy": 0.1})
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"model.keras", "labels.json", "config.toml", "history.csv", "report.json", "curves.png",
            "confusion.png"} <= names
    assert "state.json" not in names
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["test_accuracy"] == report["test_accuracy"] == metrics["test_accuracy"]
    assert saved["seed"] == 3 and saved["scratch_test_accuracy"] == 0.1
    assert saved["versions"]["keras"] == keras.__version__


def test_cli_precedence_and_errors(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('data = "shapes"\nbatch-size = 8\nseed = 4\n')
    cfg = _cli.parse(FinetuneConfig, ["--config", str(config), "--seed", "5"], "p", "d")
    assert (cfg.data, cfg.batch_size, cfg.seed, cfg.image_size) == ("shapes", 8, 5, 32)
    config.write_text("bogus = 1\n")
    with pytest.raises(_cli.UsageError, match="unknown option 'bogus'"):
        _cli.parse(FinetuneConfig, ["--config", str(config)], "p", "d")

    def boom(cfg):
        raise ValueError("bad thing\n happened")

    assert _cli.run(boom, FinetuneConfig, [], "p", "d") == 2
    assert capsys.readouterr().err == "error: bad thing happened\n"
    assert _cli.run(boom, FinetuneConfig, ["--epochs", "x"], "p", "d") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument --epochs: invalid int value") and err.count("\n") == 1


def test_pretrained_checkpoint_learns_bn_statistics_and_is_cached(tmp_path):
    """Pretraining starts from random weights, so its BN layers must train: frozen BN would keep moving
    statistics at 0 and 1 and hand fine-tuning an unnormalized backbone (the demo's checkpoints were like that)."""
    path = training.pretrained_checkpoint("vgg_cifar", examples=100, epochs=1, image_size=16, batch_size=32,
                                          verbose=0, cache_dir=tmp_path)
    assert path.name == "vgg_cifar-shapes-n100-e1-px16-s0-v2"
    model = keras.saving.load_model(path / "model.keras", compile=False)
    means = [np.asarray(w) for w in model.weights if w.path.endswith("moving_mean")]
    variances = [np.asarray(w) for w in model.weights if w.path.endswith("moving_variance")]
    assert len(means) == 6
    assert all(np.abs(m).max() > 1e-3 for m in means)
    assert all(np.abs(v - 1.0).max() > 1e-3 for v in variances)
    stamp = (path / "model.keras").stat().st_mtime_ns
    assert training.pretrained_checkpoint("vgg_cifar", examples=100, epochs=1, image_size=16, batch_size=32,
                                          verbose=0, cache_dir=tmp_path) == path
    assert (path / "model.keras").stat().st_mtime_ns == stamp   # reused, not trained again
