"""The training toolbox: each option's effect is asserted against its formula, not only that it runs."""
import json

import numpy as np
import pytest


def _phase(**kw):
    from kcnn import transfer

    return transfer.Phase(**{"epochs": 1, "train": "all", "bn": "train", **kw})


# --- label smoothing, metrics -------------------------------------------------------------------------------------

def test_smoothed_loss_equals_the_formula_for_integer_and_soft_labels():
    from kcnn import transfer

    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], "float32")
    labels = np.array([0, 2])
    eps, k = 0.1, 3
    target = np.eye(k)[labels] * (1 - eps) + eps / k
    expected = float(np.mean(-(target * np.log(probs)).sum(axis=1)))
    loss = transfer.CrossEntropy(label_smoothing=eps)
    assert float(loss(labels, probs)) == pytest.approx(expected, rel=1e-6)
    assert float(loss(np.eye(k)[labels].astype("float32"), probs)) == pytest.approx(expected, rel=1e-6)
    soft = np.array([[0.6, 0.4, 0.0], [0.0, 0.25, 0.75]], "float32")
    expected_soft = float(np.mean(-(soft * np.log(probs)).sum(axis=1)))
    assert float(transfer.CrossEntropy()(soft, probs)) == pytest.approx(expected_soft, rel=1e-6)
    import keras

    plain = float(keras.losses.sparse_categorical_crossentropy(labels, probs).numpy().mean())
    assert float(transfer.CrossEntropy()(labels, probs)) == pytest.approx(plain, rel=1e-6)


def test_metrics_match_scikit_learn_for_integer_and_soft_labels():
    from sklearn.metrics import f1_score

    from kcnn import transfer

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(12), size=200).astype("float32")
    labels = rng.integers(0, 12, 200)
    pred = probs.argmax(1)
    soft = (np.eye(12)[labels] * 0.7 + np.eye(12)[rng.integers(0, 12, 200)] * 0.3).astype("float32")
    for y in (labels, soft):
        hard = labels if y is labels else soft.argmax(1)
        f1 = transfer.MacroF1(12)
        f1.update_state(y[:100], probs[:100])
        f1.update_state(y[100:], probs[100:])
        assert float(f1.result()) == pytest.approx(f1_score(hard, pred, average="macro"), abs=1e-6)
        top5 = transfer.TopKAccuracy(5)
        top5.update_state(y, probs)
        expected = np.mean([h in np.argsort(-p)[:5] for h, p in zip(hard, probs)])
        assert float(top5.result()) == pytest.approx(expected, abs=1e-6)
        acc = transfer.Accuracy()
        acc.update_state(y, probs)
        assert float(acc.result()) == pytest.approx(np.mean(pred == hard), abs=1e-6)
    assert [m.name for m in transfer.metrics_for(5)] == ["accuracy", "macro_f1"]
    assert [m.name for m in transfer.metrics_for(10)] == ["accuracy", "macro_f1", "top5_accuracy"]


# --- learning-rate shapes ------------------------------------------------------------------------------------------

def test_onecycle_and_linear_rates_follow_their_formulas():
    from kcnn import transfer

    one = transfer.phase_rate(_phase(epochs=4, lr=0.1, schedule="onecycle"), 25, 0)
    assert one.value(0) == pytest.approx(0.1 / 25, rel=1e-5)
    assert one.value(25) == pytest.approx(0.1, rel=1e-5)            # the peak after a quarter of 100 steps
    down = 1e-6 + (0.1 - 1e-6) * 0.5 * (1 + np.cos(np.pi * 30 / 75))
    assert one.value(25 + 30) == pytest.approx(down, rel=1e-5)      # a cosine fall to lr / 1e5
    assert one.value(100) == pytest.approx(0.1 / 1e5, rel=1e-3)
    linear = transfer.phase_rate(_phase(epochs=4, lr=0.1, schedule="linear", warmup=1), 10, 0)
    assert [round(linear.value(s), 6) for s in (0, 9, 10, 25, 40)] == [0.01, 0.1, 0.1, 0.05, 0.0]
    accumulated = transfer.phase_rate(_phase(epochs=4, lr=0.1, schedule="linear", accumulate=2), 10, 0)
    assert accumulated.total_steps == 20 and accumulated.at_batch(21) == accumulated.value(10)


# --- weight average (EMA) -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("warmup, accumulate", [(False, 1), (True, 1), (False, 2)])
def test_the_weight_average_equals_the_recurrence(warmup, accumulate):
    import keras
    import tensorflow as tf

    from kcnn import transfer

    decay = 0.9
    w = keras.Variable(np.array([1.0, 2.0, -1.0], "float32"))
    opt = transfer.make_optimizer(_phase(lr=0.1, optimizer="sgd", momentum=0.0, ema=decay, ema_warmup=warmup,
                                         accumulate=accumulate))
    opt.build([w])
    step = tf.function(lambda g: opt.apply([g], [w]))
    grads = np.random.default_rng(1).normal(size=(8, 3)).astype("float32")
    average, updates = np.asarray(w, np.float64), 0
    for i, g in enumerate(grads):
        step(tf.constant(g))
        if (i + 1) % accumulate == 0:
            d = min(decay, (1 + updates) / (10 + updates)) if warmup else decay
            average = d * average + (1 - d) * np.asarray(w, np.float64)
            updates += 1
    np.testing.assert_allclose(np.asarray(opt.averages[0]), average, rtol=1e-6)
    assert int(opt.average_updates.numpy()) == updates
    raw = np.asarray(w).copy()
    with transfer.averaged_weights(opt):
        np.testing.assert_allclose(np.asarray(w), average, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(w), raw)
    assert len(opt.variables) > 3  # the average is in the optimizer's variables: every checkpoint holds it


def test_a_phase_with_ema_ends_holding_the_average_and_validates_it():
    import tensorflow as tf

    from kcnn import training, transfer

    training.set_seed(0)
    x = np.random.default_rng(0).uniform(0, 255, (32, 12, 12, 3)).astype("float32")
    y = np.arange(32) % 2
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    bb = transfer.backbone("allcnn_a", None, (12, 12, 3))
    model = transfer.classifier(bb, 2)
    seen = {}

    def on_epoch_end(row, model_, optimizer, number):
        seen["average"] = [np.asarray(a).copy() for a in optimizer.averages]
        seen["vars"] = optimizer.averaged
        return False

    history = transfer.fit_schedule(model, bb, [_phase(epochs=2, lr=1e-2, ema=0.5)], ds, ds, verbose=0,
                                    on_epoch_end=on_epoch_end)
    for variable, average in zip(seen["vars"], seen["average"]):
        np.testing.assert_array_equal(np.asarray(variable), average)
    scores = model.evaluate(ds, verbose=0, return_dict=True)
    assert history.epochs[-1]["val_accuracy"] == pytest.approx(scores["accuracy"], abs=1e-6)


# --- gradient accumulation ----------------------------------------------------------------------------------------

def test_accumulating_n_batches_equals_one_batch_n_times_larger():
    """SGD without momentum on a model without batch norm: 4 accumulated batches of 4 are one batch of 16."""
    import keras
    import tensorflow as tf

    from kcnn import training, transfer

    x = np.random.default_rng(2).uniform(0, 255, (32, 12, 12, 3)).astype("float32")
    y = np.arange(32) % 3

    def trained(batch, accumulate):
        training.set_seed(3)
        bb = transfer.backbone("allcnn_a", None, (12, 12, 3))
        model = transfer.classifier(bb, 3)
        assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in bb.model.layers)
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
        transfer.fit_schedule(model, bb, [_phase(epochs=2, lr=0.05, optimizer="sgd", momentum=0.0,
                                                 accumulate=accumulate)], ds, verbose=0, feature_cache=False,
                              steps_per_execution=1)
        return [np.asarray(w) for w in model.weights]

    for a, b in zip(trained(4, 4), trained(16, 1)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# --- restore the best epoch, early stopping, atomic epoch ends -----------------------------------------------------

def _tiny_run(tmp_path, name="run"):
    """A run folder and a tiny classifier on random labels: its validation scores go up and down."""
    from kcnn import data as kdata
    from kcnn import runs, training, transfer

    training.set_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (48, 12, 12, 3)).astype("float32")
    splits = kdata.load((x, rng.integers(0, 3, 48)), image_size=12, batch_size=8, val_fraction=0.25,
                        test_fraction=0.1)
    bb = transfer.backbone("allcnn_a", None, (12, 12, 3))
    model = transfer.classifier(bb, 3)
    run = runs.RunDir(tmp_path / name, config={}, recipe="train").open()
    return run, model, bb, splits


def test_restore_best_returns_the_kept_epochs_weights_bit_for_bit(tmp_path):
    import keras

    from kcnn import training, transfer

    run, model, bb, splits = _tiny_run(tmp_path)
    weights = {}

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            weights[epoch + 1] = [np.asarray(v).copy() for v in model.variables]

    best = training.BestEpoch(monitor="val_loss")
    schedule = transfer.Schedule([_phase(epochs=6, lr=3e-2)])
    training.fit_run(run, model, bb, schedule, splits, augmented=False, verbose=0, callbacks=[Snapshot()],
                     best=best)
    rows = run.history
    kept = best.best_of(rows)
    assert run.state["best"]["epoch"] == kept["epoch"] == min(rows, key=lambda r: r["val_loss"])["epoch"]
    assert kept["epoch"] != rows[-1]["epoch"], "pick data where the last epoch is not the best"
    for variable, value in zip(model.variables, weights[kept["epoch"]]):
        np.testing.assert_array_equal(np.asarray(variable), value)
    summary = training.best_summary(run, best, 24)
    assert summary["kept"]["epoch"] == kept["epoch"] and summary["last"]["epoch"] == rows[-1]["epoch"]
    assert summary["validation_examples"] == 24


def test_best_epoch_ranks_accuracy_then_loss():
    from kcnn import training

    best = training.BestEpoch()
    rows = [{"epoch": 1, "val_accuracy": 0.5, "val_loss": 1.0}, {"epoch": 2, "val_accuracy": 0.6, "val_loss": 1.2},
            {"epoch": 3, "val_accuracy": 0.6, "val_loss": 1.1}, {"epoch": 4, "val_accuracy": 0.6, "val_loss": 1.3},
            {"epoch": 5}]
    assert best.best_of(rows)["epoch"] == 3
    assert training.BestEpoch(monitor="val_loss").best_of(rows)["epoch"] == 1
    assert training.BestEpoch(patience=1).stop(rows[:4]) and not training.BestEpoch(patience=2).stop(rows[:4])
    with pytest.raises(ValueError, match="--monitor must be one of val_accuracy, val_loss"):
        training.BestEpoch(monitor="accuracy")


def test_patience_ends_the_phase_records_it_in_one_write_and_a_resume_starts_the_next(tmp_path):
    from kcnn import runs, training, transfer

    run, model, bb, splits = _tiny_run(tmp_path)
    schedule = transfer.Schedule([_phase(epochs=30, lr=3e-2, name="long"), _phase(epochs=2, lr=1e-3, name="next")])
    best = training.BestEpoch(monitor="val_loss", patience=2, restore=False)
    writes = []
    real = runs.RunDir.checkpoint

    def spy(self, row, arrays=None, **kwargs):
        real(self, row, arrays, **kwargs)
        writes.append(json.loads((self.path / "state.json").read_text()))

    import unittest.mock

    with unittest.mock.patch.object(runs.RunDir, "checkpoint", spy):
        training.fit_run(run, model, bb, schedule, splits, augmented=False, verbose=0, best=best)
    rows = run.history
    first = [r for r in rows if r["phase"] == "long"]
    assert len(first) < 30 and first[-1]["epoch"] - best.best_of(first)["epoch"] == 2
    assert [r["epoch"] for r in rows if r["phase"] == "next"] == [31, 32]
    stop_state = next(w for w in writes if w["history"][-1]["epoch"] == first[-1]["epoch"])
    assert stop_state["epochs_done"] == 30  # a resume from here starts phase 2
    assert stop_state["phases"][0]["stopped_early"] and stop_state["phases"][0]["last_run_epoch"] == first[-1]["epoch"]
    assert [p["index"] for p in run.state["phases"]] == [1, 2]


def test_a_kill_at_a_phases_last_epoch_keeps_its_record(tmp_path, monkeypatch):
    """The window of a kill between an epoch's checkpoint and its phase record is gone: one write holds both."""
    from kcnn import runs, training, transfer

    run, model, bb, splits = _tiny_run(tmp_path)
    schedule = transfer.Schedule([_phase(epochs=2, lr=1e-2, name="a"), _phase(epochs=2, lr=1e-3, name="b")])
    real = runs.RunDir.checkpoint

    def killed_after(self, row, arrays=None, **kwargs):
        real(self, row, arrays, **kwargs)
        if int(row["epoch"]) == 2:
            raise KeyboardInterrupt  # right after the state write of phase 1's last epoch

    monkeypatch.setattr(runs.RunDir, "checkpoint", killed_after)
    with pytest.raises(KeyboardInterrupt):
        training.fit_run(run, model, bb, schedule, splits, augmented=False, verbose=0)
    monkeypatch.undo()
    state = json.loads((run.path / "state.json").read_text())
    assert [(p["index"], p["epochs"]) for p in state["phases"]] == [(1, [1, 2])]
    resumed = runs.RunDir(run.path, resume=True, config={}, recipe="train").open()
    training.set_seed(0)
    training.fit_run(resumed, model, bb, schedule, splits, augmented=False, verbose=0)
    assert [(p["index"], p["epochs"]) for p in resumed.state["phases"]] == [(1, [1, 2]), (2, [3, 4])]


# --- test-time augmentation ---------------------------------------------------------------------------------------

def test_flip_tta_averages_the_mirrored_predictions():
    import tensorflow as tf

    from kcnn import training, transfer

    training.set_seed(0)
    x = np.random.default_rng(4).uniform(0, 255, (12, 12, 12, 3)).astype("float32")
    y = np.arange(12) % 2
    bb = transfer.backbone("allcnn_a", None, (12, 12, 3))
    model = transfer.classifier(bb, 2)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(5)
    result = training.evaluate(model, ds, ["a", "b"], tta="flip")
    probs = (np.asarray(model(x, training=False)) + np.asarray(model(x[:, :, ::-1], training=False))) / 2
    assert result["tta_test_accuracy"] == pytest.approx(np.mean(probs.argmax(1) == y))
    assert result["tta_test_loss"] == pytest.approx(-np.mean(np.log(probs[np.arange(12), y])), rel=1e-5)
    plain = np.asarray(model(x, training=False))
    assert result["test_accuracy"] == pytest.approx(np.mean(plain.argmax(1) == y))


# --- search ---------------------------------------------------------------------------------------------------------

def test_the_hypermodels_search_label_smoothing_mixup_and_augmentation_strength():
    import keras_tuner as kt
    import tensorflow as tf

    from kcnn import tuning
    from kcnn.tuning import hypermodels

    hp = kt.HyperParameters()
    hp.Fixed("label_smoothing", 0.2)
    hypermodel = tuning.HyperCNN(3, (16, 16, 3), models=["resnet20"], toolbox=True)
    model = hypermodel.build(hp)
    assert model.loss.label_smoothing == 0.2
    assert {"label_smoothing", "mixup", "augment_magnitude"} <= {p.name for p in hp.space}
    assert tuning.HyperCNN(3, (16, 16, 3), models=["resnet20"]).build(kt.HyperParameters()).loss.label_smoothing == 0
    x = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, np.arange(8) % 3)).batch(4)
    batches = list(hypermodels.toolbox_stream(ds, {"mixup": 0.4, "augment_magnitude": 5.0}, 3))
    images, soft = (np.asarray(t) for t in batches[0])
    assert soft.shape == (4, 3) and np.allclose(soft.sum(1), 1.0)
    assert not np.array_equal(images, x[:4])
    again = list(hypermodels.toolbox_stream(ds, {"mixup": 0.4, "augment_magnitude": 5.0}, 3))
    np.testing.assert_array_equal(np.asarray(again[1][0]), np.asarray(batches[1][0]))  # keyed, reproducible
    assert hypermodels.toolbox_stream(ds, {"mixup": 0.0, "augment_magnitude": 0.0}, 3) is ds
    finetune = tuning.HyperFineTune(["resnet20"], None, num_classes=3, image_size=16, epochs=4, toolbox=True)
    hp2 = kt.HyperParameters()
    hp2.Fixed("label_smoothing", 0.1)
    assert [p.label_smoothing for p in finetune.schedule(hp2)] == [0.1, 0.1]


def test_gradient_accumulation_with_several_replicas_is_refused_in_one_line(capsys):
    from recipes import train

    assert train.main(["--accumulate", "2", "--distribute", "mirrored", "--cpu-devices", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--accumulate 2 does not work with --distribute mirrored" in err
