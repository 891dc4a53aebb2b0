"""Reports and plots, the pretrained-checkpoint cache, the recipes' argument layer, no side effects at import."""
import json

import numpy as np
import pytest
import tensorflow as tf

import keras
import kcnn
from kcnn import training
from recipes import _cli
from recipes.finetune import FinetuneConfig


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
    run = training.RunDir(tmp_path / "run", config={}, recipe="train").open()
    history = [{"epoch": 1, "phase": "head", "loss": 1.0, "accuracy": 0.5},
               {"epoch": 2, "phase": "all", "loss": 0.8, "accuracy": 0.6}]
    report = training.finish_run(run, model, test_ds=ds, class_names=["a", "b", "c"], history=history, seed=3,
                                 extra={"scratch_test_accuracy": 0.1})
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"model.keras", "labels.json", "config.toml", "history.csv", "report.json", "curves.png",
            "confusion.png", "kcnn-run.json"} <= names
    assert "state.json" not in names
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert saved["test_accuracy"] == report["test_accuracy"] == metrics["test_accuracy"]
    assert saved["seed"] == 3 and saved["scratch_test_accuracy"] == 0.1
    assert saved["versions"]["keras"] == keras.__version__


def test_cli_precedence_and_errors(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('data = "glyphs"\nbatch-size = 8\nseed = 4\ndropout = 0\n')
    cfg = _cli.parse(FinetuneConfig, ["--config", str(config), "--seed", "5"], "p", "d")
    assert (cfg.data, cfg.batch_size, cfg.seed, cfg.image_size) == ("glyphs", 8, 5, None)  # None: the backbone's
    assert cfg.dropout == 0.0 and isinstance(cfg.dropout, float)
    config.write_text("bogus = 1\n")
    with pytest.raises(_cli.UsageError, match="unknown option 'bogus'"):
        _cli.parse(FinetuneConfig, ["--config", str(config)], "p", "d")

    def boom(cfg):  # a refusal of the recipe's (a ValueError from outside kcnn is a bug: test_cli_errors.py)
        raise _cli.UsageError("bad thing\n happened")

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
    assert path.name == "vgg_cifar-glyphs-n100-e1-px16-b32-lr0.002-s0-v3"
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


@pytest.mark.parametrize("text, message", [
    ('epochs = "5"', r'epochs must be an integer; got "5" \(a string\)'),
    ("epochs = 2.5", "epochs must be an integer; got 2.5"),
    ('head = "bogus"', "head must be one of gap, dense, conv; got 'bogus'"),
    ('overwrite = "false"', r'overwrite must be true or false; got "false" \(a string\)'),
    ("lr_scale = 1", "unknown option 'lr_scale'"),
    ("seed = true", "seed must be an integer; got True"),
    ('dropout = "0.1"', "dropout must be a number"),
])
def test_config_files_are_typed_like_the_flags(tmp_path, text, message):
    config = tmp_path / "c.toml"
    config.write_text(text + "\n")
    with pytest.raises(_cli.UsageError, match=message) as info:
        _cli.parse(FinetuneConfig, ["--config", str(config)], "p", "d")
    assert str(config) in str(info.value)


def test_a_preset_outside_the_choices_is_one_line(tmp_path, capsys):
    from recipes import train

    config = tmp_path / "c.toml"
    config.write_text('preset = "x"\n')
    assert train.main(["--config", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "preset must be one of default, fast, he2015; got 'x'" in err
    assert not (tmp_path / "out").exists()


def test_pretrained_checkpoint_cache_never_deletes_another_process_checkpoint(tmp_path, monkeypatch):
    """A tuning chief and its workers may ask for the same checkpoint at once: the one that finishes second
    keeps the first one's checkpoint and removes only its own temporary folder."""
    import os as _os

    kwargs = dict(examples=40, epochs=1, image_size=16, batch_size=32, verbose=0, cache_dir=tmp_path)
    real_rename = _os.rename
    calls = []

    def rename_after_another_process(src, dst):
        calls.append(dst)
        # another process finished first: its checkpoint is already in place
        training.pretrained_checkpoint("vgg_cifar", **kwargs) if len(calls) == 1 else None
        return real_rename(src, dst)

    monkeypatch.setattr(training.os, "rename", rename_after_another_process)
    path = training.pretrained_checkpoint("vgg_cifar", **kwargs)
    assert len(calls) == 2 and (path / "kcnn.json").is_file() and (path / "model.keras").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary folders left


def _fresh_python(code: str, env_extra=None) -> str:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env.update(env_extra or {})
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_importing_kcnn_changes_nothing_in_the_callers_process():
    # TensorFlow itself draws from Python's random module when it is imported: import it first
    code = ("import matplotlib, os, random, numpy as np, tensorflow, keras, keras_tuner; matplotlib.use('svg'); "
            "random.seed(7); "
            "a = random.random(); np.random.seed(7); b = np.random.rand(); random.seed(7); np.random.seed(7); "
            "import kcnn, kcnn.training, kcnn.plots, kcnn.transfer, kcnn.data, kcnn.tuning, kcnn.distribute; "
            "print(matplotlib.get_backend(), os.environ.get('TF_ENABLE_ONEDNN_OPTS'), random.random() == a, "
            "np.random.rand() == b)")
    assert _fresh_python(code) == "svg None True True"


def test_the_recipes_turn_onednn_on_and_leave_a_users_choice_alone():
    code = ("from recipes import _cli; _cli.use_onednn(); import os; from kcnn import perf; "
            "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), perf.onednn_enabled())")
    import platform

    if platform.machine().lower() in ("x86_64", "amd64"):
        assert _fresh_python(code) == "1 True"
    assert _fresh_python(code, {"TF_ENABLE_ONEDNN_OPTS": "0"}) == "0 False"


def test_curves_join_the_epochs_that_were_validated(tmp_path):
    """Validated every few epochs (fit_schedule's validation_freq), the val curve joins those points
    instead of vanishing between gaps."""
    from kcnn import plots

    assert plots._present([1, 2, 3, 4], [np.nan, 0.5, np.nan, 0.25]) == ([2, 4], [0.5, 0.25])
    rows = [{"epoch": e, "loss": 1.0 / e, **({"val_loss": 2.0 / e} if e % 3 == 0 else {})} for e in range(1, 61)]
    path = plots.learning_curves(rows, tmp_path / "curves.png", comparison=rows)
    assert path.stat().st_size > 1000
