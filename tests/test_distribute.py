"""kcnn.distribute: strategies, the custom loop, mirrored == one device, two workers on 127.0.0.1.

Logical CPU devices and multi-worker collectives must be set up before TensorFlow initializes, so the
mirrored and multi-worker checks run in fresh processes (scripts below); the rest runs in the test process.
"""
import json
import os
import socket
import subprocess
import time
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcnn import distribute, transfer
from kcnn.distribute import loop as distribute_loop
from recipes import pretrain, train

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))


def _run_script(tmp_path, source, args, timeout):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    result = subprocess.run([sys.executable, str(script), *map(str, args)], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(command, tmp_path, count=2, env=None):
    """Start ``count`` processes of ``command`` with a TF_CONFIG each (worker i of a cluster on 127.0.0.1)."""
    addresses = [f"127.0.0.1:{p}" for p in _free_ports(count)]
    procs = []
    for index in range(count):
        config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        log = open(tmp_path / f"worker{index}.log", "w")
        procs.append(subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                      env=dict(ENV, **(env or {}), TF_CONFIG=json.dumps(config))))
    return procs


def _wait_all(procs, tmp_path, timeout):
    """Wait for every worker; as soon as one fails, or after ``timeout`` s, kill the others (a peer that lost its
    partner would otherwise wait for it until the collective times out)."""
    deadline = time.time() + timeout
    while any(p.poll() is None for p in procs):
        if any(p.poll() not in (None, 0) for p in procs) or time.time() > deadline:
            for p in procs:
                p.kill()
            for p in procs:
                p.wait()
            state = "a worker failed" if time.time() <= deadline else f"workers still running after {timeout}s"
            pytest.fail(f"{state}: " + _logs(tmp_path, len(procs)))
        time.sleep(0.2)
    assert [p.returncode for p in procs] == [0] * len(procs), _logs(tmp_path, len(procs))


def _logs(tmp_path, count):
    return "\n".join(f"--- worker {i}\n" + (tmp_path / f"worker{i}.log").read_text()[-3000:] for i in range(count))


# ------------------------------------------------------------------------------------------------------------
# Strategies and TF_CONFIG
# ------------------------------------------------------------------------------------------------------------


def test_make_strategy_none_and_argument_errors():
    assert distribute.make_strategy("none") is tf.distribute.get_strategy()
    with pytest.raises(distribute.DistributeError, match="must be one of"):
        distribute.make_strategy("horovod")
    with pytest.raises(distribute.DistributeError, match="mirrored"):
        distribute.make_strategy("none", cpu_devices=2)
    with pytest.raises(distribute.DistributeError, match=">= 1"):
        distribute.make_strategy("mirrored", cpu_devices=0)


def test_cpu_devices_after_tensorflow_started_is_a_clear_error():
    tf.constant(1.0)  # TensorFlow is initialized now
    have = len(tf.config.list_logical_devices("CPU"))
    with pytest.raises(distribute.DistributeError, match="already initialized its devices"):
        distribute.make_strategy("mirrored", cpu_devices=have + 1)


@pytest.mark.parametrize("value,message", [
    (None, "TF_CONFIG environment variable, which is not set"),
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', 'no "cluster"'),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}}', 'no "task"'),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}', "from 0 to 0"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}}', "not in its cluster"),
    ('{"cluster": {"worker": "127.0.0.1:1"}, "task": {"type": "worker", "index": 0}}', "host:port"),
])
def test_multiworker_needs_a_valid_tf_config(monkeypatch, value, message):
    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(distribute.DistributeError, match=message) as info:
        distribute.make_strategy("multiworker")
    assert "TF_CONFIG" in str(info.value)


def test_chief_from_tf_config():
    def config(kind, index, chief=False):
        cluster = {"worker": ["h:1", "h:2"], **({"chief": ["h:0"]} if chief else {})}
        return {"cluster": cluster, "task": {"type": kind, "index": index}}

    assert distribute.tf_config_is_chief(config("worker", 0))
    assert not distribute.tf_config_is_chief(config("worker", 1))
    assert distribute.tf_config_is_chief(config("chief", 0, chief=True))
    assert not distribute.tf_config_is_chief(config("worker", 0, chief=True))
    assert distribute.is_chief() and distribute.worker_index() == 0
    assert distribute.write_dir("runs/x") == "runs/x"


def test_synchronized_batch_norm_is_restored():
    bb = transfer.backbone("resnet20", None, (16, 16, 3))
    model = transfer.classifier(bb, 3)
    with distribute.synchronized_batch_norm(model) as bn_layers:
        assert len(bn_layers) == 19 and all(layer.synchronized for layer in bn_layers)
    assert not any(layer.synchronized for layer in bn_layers)


# ------------------------------------------------------------------------------------------------------------
# fit_distributed on one device
# ------------------------------------------------------------------------------------------------------------


def _digits(n=64, size=12):
    from kcnn import data as kdata

    x, y = kdata.load("digits", image_size=size).arrays["train"]
    return x[:n], y[:n]


def _classifier(seed=0, size=12):
    keras.utils.set_random_seed(seed)
    bb = transfer.backbone("allcnn_a", None, (size, size, 3), options={"norm": None})
    return bb, transfer.classifier(bb, 10)


SCHEDULE = transfer.Schedule([
    transfer.Phase(1, train="head", lr=0.05, optimizer="sgd", momentum=0.0, name="head"),
    transfer.Phase(2, train="top:1", lr=0.02, optimizer="sgd", momentum=0.0, name="top"),
])


def test_fit_distributed_runs_a_schedule_like_fit_schedule():
    x, y = _digits()
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(24)  # 24 + 24 + 16: a smaller last batch
    bb, model = _classifier()
    init = model.get_weights()
    expected = transfer.fit_schedule(model, bb, SCHEDULE, data, data, verbose=0, steps_per_execution=1,
                                     feature_cache=False)
    bb2, model2 = _classifier()
    model2.set_weights(init)
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, self.model is model2, sorted(logs)))

    got = distribute.fit_distributed(model2, data, data, backbone=bb2, schedule=SCHEDULE, callbacks=[Spy()],
                                     verbose=0)
    assert [r["epoch"] for r in got.epochs] == [1, 2, 3] and [r["phase_name"] for r in got.epochs] == [
        "head", "top", "top"]
    assert [r["lr"] for r in got.epochs] == pytest.approx([0.05, 0.02, 0.02])
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [r[key] for r in got.epochs] == pytest.approx([r[key] for r in expected.epochs], rel=1e-4), key
    assert max(np.max(np.abs(a - b)) for a, b in zip(model.get_weights(), model2.get_weights())) < 1e-5
    assert [p["blocks"] for p in got.phases] == [[], ["block3"]]
    keys = ["accuracy", "loss", "top5_accuracy", "val_accuracy", "val_loss", "val_top5_accuracy"]  # 10 classes
    assert seen == [(e, True, keys) for e in range(3)]
    for key in ("top5_accuracy", "val_top5_accuracy"):
        assert [r[key] for r in got.epochs] == pytest.approx([r[key] for r in expected.epochs], rel=1e-4), key


def test_fit_distributed_resumes_and_stops():
    """Epochs 1-3 in one go == epoch 1, then a resume from initial_epoch=1 (SGD without momentum: no state)."""
    x, y = _digits()
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    bb, model = _classifier()
    init = model.get_weights()
    distribute.fit_distributed(model, data, backbone=bb, schedule=SCHEDULE, verbose=0)
    bb2, model2 = _classifier()
    model2.set_weights(init)
    first = distribute.fit_distributed(model2, data, backbone=bb2, schedule=SCHEDULE[:1], verbose=0)
    rest = distribute.fit_distributed(model2, data, backbone=bb2, schedule=SCHEDULE, initial_epoch=1, verbose=0)
    assert [r["epoch"] for r in first.epochs + rest.epochs] == [1, 2, 3]
    assert [p["skipped"] for p in rest.phases] == [True, False]
    assert max(np.max(np.abs(a - b)) for a, b in zip(model.get_weights(), model2.get_weights())) < 1e-6

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    stopped = distribute.fit_distributed(model2, data, backbone=bb2, schedule=SCHEDULE, callbacks=[Stop()],
                                         verbose=0)
    assert [r["epoch"] for r in stopped.epochs] == [1, 2]  # stop_training ends the current phase only


def test_fit_distributed_plain_model_and_errors():
    x, y = _digits(48)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.BatchNormalization(),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, activation="softmax")])
    history = distribute.fit_distributed(model, (x, y), epochs=3, optimizer="adam", lr=1e-2, verbose=0)
    losses = [r["loss"] for r in history.epochs]
    assert len(losses) == 3 and losses[-1] < losses[0] and "val_loss" not in history.epochs[0]
    assert not model.layers[2].synchronized  # restored after training
    with pytest.raises(ValueError, match="epochs"):
        distribute.fit_distributed(model, (x, y))
    with pytest.raises(ValueError, match="backbone"):
        distribute.fit_distributed(model, (x, y), schedule="two-phase")


def test_fit_distributed_tensorboard_on_an_uncompiled_model(tmp_path):
    """Keras' TensorBoard callback (the recipes' run folders) reads model.optimizer on every epoch end; the loop
    shows it the phase's optimizer, and afterwards the model is as it was (no optimizer to save with it)."""
    x, y = _digits(32)
    bb, model = _classifier()
    assert not hasattr(model, "optimizer")
    history = distribute.fit_distributed(model, (x, y), backbone=bb, schedule=SCHEDULE[:1], verbose=0,
                                         callbacks=[keras.callbacks.TensorBoard(str(tmp_path / "logs"))])
    assert [r["epoch"] for r in history.epochs] == [1]
    assert not hasattr(model, "optimizer")
    assert len(list((tmp_path / "logs" / "train").iterdir())) == 1


# ------------------------------------------------------------------------------------------------------------
# Recipes
# ------------------------------------------------------------------------------------------------------------


def test_train_recipe_distribute_flags(tmp_path, capsys, monkeypatch):
    out = ["--out", str(tmp_path / "r"), "--verbose", "0"]
    assert train.main(["--cpu-devices", "2"] + out) == 2
    assert "--cpu-devices" in capsys.readouterr().err
    assert train.main(["--distribute", "gpus"] + out) == 2
    assert "invalid choice" in capsys.readouterr().err
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert train.main(["--distribute", "multiworker"] + out) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "TF_CONFIG" in err and "Traceback" not in err
    tf.constant(1.0)  # too late for logical devices in this process: one clear line, exit 2
    have = len(tf.config.list_logical_devices("CPU"))
    assert train.main(["--distribute", "mirrored", "--cpu-devices", str(have + 1)] + out) == 2
    assert "already initialized" in capsys.readouterr().err


def test_pretrain_recipe_distribute_flags(tmp_path, capsys):
    out = ["--out", str(tmp_path / "r"), "--verbose", "0"]
    assert pretrain.main(["--distribute", "mirrored", "--cpu-devices", "0"] + out) == 2
    assert "--cpu-devices takes N >= 1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before the run folder is made


def test_finetune_recipe_mirrored_over_two_cpus(tmp_path):
    """recipes.finetune --distribute mirrored --cpu-devices 2 (fresh process): a complete run on 2 replicas,
    the scratch comparison beside it, and no placement option in config.toml (resuming elsewhere is allowed)."""
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "recipes.finetune", "--data", "digits", "--per-class", "3", "--image-size", "16",
         "--batch-size", "30", "--backbone", "allcnn_a", "--weights", "none", "--schedule", "two-phase",
         "--epochs", "2", "--distribute", "mirrored", "--cpu-devices", "2", "--out", str(run), "--verbose", "0"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((run / "report.json").read_text())
    assert report["distribute"] == "mirrored" and report["replicas"] == 2 and report["epochs"] == 2
    assert 0.0 <= report["test_accuracy"] <= 1.0 and 0.0 <= report["scratch_test_accuracy"] <= 1.0
    config = (run / "config.toml").read_text()
    assert "distribute" not in config and "cpu_devices" not in config and "per_class = 3" in config


# ------------------------------------------------------------------------------------------------------------
# Mirrored over 2 logical CPUs == one device (fresh process)
# ------------------------------------------------------------------------------------------------------------

MIRRORED_SCRIPT = """
    import json, os, sys
    from kcnn import distribute
    strategy = distribute.make_strategy("mirrored", cpu_devices=2)  # first: before TensorFlow starts
    import numpy as np, keras, tensorflow as tf
    from kcnn import data as kdata, transfer

    out, arch, size, with_bn = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    x, y = kdata.load("digits", image_size=size).arrays["train"]
    x, y = x[:96], y[:96]
    ds = lambda: tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    schedule = transfer.Schedule([  # head on cached features, then everything: both under the strategy
        transfer.Phase(1, train="head", lr=0.05, optimizer="sgd", momentum=0.9, name="head"),
        transfer.Phase(1, train="all", bn="train", lr=0.02, optimizer="sgd", momentum=0.9, name="all")])

    def build(norm):
        keras.utils.set_random_seed(0)
        bb = transfer.backbone(arch, None, (size, size, 3), options={"norm": norm})
        return bb, transfer.classifier(bb, 10)

    def diff(a, b):
        return max(float(np.max(np.abs(p - q))) for p, q in zip(a, b))

    result = {"replicas": strategy.num_replicas_in_sync}
    bb, model = build(None)
    init = model.get_weights()
    single = transfer.fit_schedule(model, bb, schedule, ds(), ds(), verbose=0, steps_per_execution=1)
    single_w = model.get_weights()
    result["moved"] = diff(init, single_w)
    result["single"] = [[r["loss"], r["val_loss"]] for r in single.epochs]
    with strategy.scope():  # the recipe's pattern: model and fit_schedule under the scope
        bb, model = build(None)
        model.set_weights(init)
        mirrored = transfer.fit_schedule(model, bb, schedule, ds(), ds(), verbose=0, steps_per_execution=1)
    result["variable_type"] = type(model.weights[0].value).__name__
    result["fit"] = [[r["loss"], r["val_loss"]] for r in mirrored.epochs]
    result["fit_diff"] = diff(single_w, model.get_weights())
    with strategy.scope():
        bb, model = build(None)
        model.set_weights(init)
        loop = distribute.fit_distributed(model, ds(), ds(), strategy=strategy, backbone=bb, schedule=schedule,
                                          verbose=0)
    result["loop"] = [[r["loss"], r["val_loss"]] for r in loop.epochs]
    result["loop_diff"] = diff(single_w, model.get_weights())

    # sync_from_chief: replicas that disagree end with replica 0's values, and the chief's epoch
    variable = model.weights[0].value
    replica_id = lambda: tf.distribute.get_replica_context().replica_id_in_sync_group
    strategy.run(lambda: variable.assign(tf.fill(variable.shape, tf.cast(replica_id(), "float32") + 1.0)))
    before = [float(c.numpy().flat[0]) for c in variable.values]
    epoch = distribute.sync_from_chief(strategy, [variable], 3)
    result["sync"] = [before, [float(c.numpy().flat[0]) for c in variable.values], epoch]

    if with_bn:  # global-batch BN statistics: both replicas' moving statistics stay identical
        with strategy.scope():
            bb, model = build("batch")
            before = {v.path: v.numpy() for v in model.weights if "moving_" in v.path}
            distribute.fit_distributed(model, ds(), None, strategy=strategy, backbone=bb, schedule=schedule[1:],
                                       verbose=0)
        moving = [v for v in model.weights if "moving_" in v.path]
        result["bn_replica_diff"] = max(float(np.max(np.abs(v.value.values[0].numpy() - v.value.values[1].numpy())))
                                        for v in moving)
        result["bn_moved"] = max(float(np.max(np.abs(v.numpy() - before[v.path]))) for v in moving)
    json.dump(result, open(out, "w"))
"""


def _check_mirrored(result):
    assert result["replicas"] == 2 and result["variable_type"] == "MirroredVariable"
    assert result["moved"] > 1e-3  # training changed the weights ...
    assert result["fit_diff"] < 1e-4 and result["loop_diff"] < 1e-4  # ... and 2 replicas changed them alike
    for key in ("fit", "loop"):
        np.testing.assert_allclose(result[key], result["single"], rtol=1e-4)
    assert result["sync"] == [[1.0, 2.0], [1.0, 1.0], 3]


def test_mirrored_two_cpus_matches_one_device_small(tmp_path):
    """All-CNN-A at 12 px: Keras fit under MirroredStrategy and fit_distributed both equal the one-device run."""
    out = tmp_path / "result.json"
    _run_script(tmp_path, MIRRORED_SCRIPT, [out, "allcnn_a", 12, 0], timeout=300)
    _check_mirrored(json.loads(out.read_text()))


@pytest.mark.slow
def test_mirrored_two_cpus_matches_one_device_resnet20(tmp_path):
    """ResNet-20 at 16 px, two SGD epochs (head, then all); with BN, both replicas keep identical statistics."""
    out = tmp_path / "result.json"
    _run_script(tmp_path, MIRRORED_SCRIPT, [out, "resnet20", 16, 1], timeout=600)
    result = json.loads(out.read_text())
    _check_mirrored(result)
    assert result["bn_replica_diff"] == 0.0 and result["bn_moved"] > 1e-3


# ------------------------------------------------------------------------------------------------------------
# Two workers on 127.0.0.1 (fresh processes)
# ------------------------------------------------------------------------------------------------------------

WORKER_SCRIPT = """
    import json, os, sys
    from kcnn import distribute
    strategy = distribute.make_strategy("multiworker")  # first: before TensorFlow starts
    import numpy as np, keras, tensorflow as tf
    from kcnn import data as kdata, transfer

    out = sys.argv[1]
    index = distribute.worker_index(strategy)
    keras.utils.set_random_seed(0)
    x, y = kdata.load("digits", image_size=12).arrays["train"]
    train = tf.data.Dataset.from_tensor_slices((x[:120], y[:120])).batch(32)  # 3 full batches + 24
    val = tf.data.Dataset.from_tensor_slices((x[200:264], y[200:264])).batch(32)
    with strategy.scope():
        bb = transfer.backbone("allcnn_a", None, (12, 12, 3), options={"norm": "batch"})
        model = transfer.classifier(bb, 10)
        if index == 1:  # as if only the chief had restored a checkpoint: fit_distributed syncs the weights
            model.set_weights([w + 1.0 for w in model.get_weights()])
        schedule = transfer.Schedule([
            transfer.Phase(1, train="head", lr=0.05, optimizer="sgd", name="head"),
            transfer.Phase(3, train="all", bn="train", lr=0.02, optimizer="sgd", name="all")])
        ends = []

        class Ends(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                ends.append(epoch + 1)

        history = distribute.fit_distributed(model, train, val, strategy=strategy, backbone=bb, schedule=schedule,
                                             initial_epoch=1 if index == 0 else 0, callbacks=[Ends()], verbose=1)
    np.savez(os.path.join(out, f"weights{index}.npz"), *model.get_weights())

    def mlp():  # no BN: two workers must compute what one process computes, to float rounding
        keras.utils.set_random_seed(1)
        return keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Rescaling(1 / 255),
                                 keras.layers.Flatten(), keras.layers.Dense(16, activation="relu"),
                                 keras.layers.Dense(10, activation="softmax")])

    with strategy.scope():
        both = mlp()
        distribute.fit_distributed(both, train, epochs=2, optimizer="sgd", lr=0.1, strategy=strategy, verbose=0)
    alone = mlp()  # outside the scope: TensorFlow's default strategy, this process only
    distribute.fit_distributed(alone, train, epochs=2, optimizer="sgd", lr=0.1, verbose=0)
    mlp_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(both.get_weights(), alone.get_weights()))
    json.dump({"epochs": history.epochs, "ends": ends, "chief": distribute.is_chief(strategy), "mlp_diff": mlp_diff},
              open(os.path.join(out, f"history{index}.json"), "w"))
"""


@pytest.mark.slow
def test_two_workers_finish_with_identical_weights(tmp_path):
    """Two MultiWorkerMirroredStrategy workers on 127.0.0.1 running fit_distributed with BN and two phases.

    Worker 1 starts from other weights and initial_epoch 0, the chief from initial_epoch 1: both must take the
    chief's (the resume path) and finish with identical weights and history, the loss going down.
    """
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER_SCRIPT))
    _wait_all(_start_workers([sys.executable, str(script), str(tmp_path)], tmp_path), tmp_path, timeout=600)
    weights = [np.load(tmp_path / f"weights{i}.npz") for i in range(2)]
    assert len(weights[0].files) == len(weights[1].files) > 0
    assert all(np.array_equal(weights[0][k], weights[1][k]) for k in weights[0].files)
    runs = [json.loads((tmp_path / f"history{i}.json").read_text()) for i in range(2)]
    assert runs[0]["epochs"] == runs[1]["epochs"]
    assert [r["epoch"] for r in runs[0]["epochs"]] == [2, 3, 4] == runs[1]["ends"]
    assert [run["chief"] for run in runs] == [True, False]
    assert runs[0]["mlp_diff"] < 1e-5  # the global batch is split between workers, not one batch per worker
    losses = [r["loss"] for r in runs[0]["epochs"]]
    assert losses[-1] < losses[0], losses
    assert "epoch 4/4" in (tmp_path / "worker0.log").read_text()  # the chief prints ...
    assert "epoch 4/4" not in (tmp_path / "worker1.log").read_text()  # ... the others do not


@pytest.mark.slow
def test_train_recipe_two_workers(tmp_path):
    """recipes.train --distribute multiworker: the chief writes the run folder, the other worker nothing."""
    run = tmp_path / "run"
    worker_tmp = tmp_path / "tmp"
    worker_tmp.mkdir()
    command = [sys.executable, "-m", "recipes.train", "--data", "digits", "--model", "allcnn_a", "--image-size",
               "12", "--epochs", "2", "--batch-size", "64", "--lr", "0.01", "--distribute", "multiworker",
               "--out", str(run), "--verbose", "2"]
    _wait_all(_start_workers(command, tmp_path, env={"TMPDIR": str(worker_tmp)}), tmp_path, timeout=600)
    report = json.loads((run / "report.json").read_text())
    assert report["distribute"] == "multiworker" and report["replicas"] == 2 and report["epochs"] == 2
    assert (run / "model.keras").is_file() and not (run / "state.json").exists()
    rows = (run / "history.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,phase,lr")
    assert "the chief writes the run folder" in (tmp_path / "worker1.log").read_text()
    assert not list(worker_tmp.glob("kcnn-worker*"))  # the other worker's temporary run folder is gone


# ------------------------------------------------------------------------------------------------------------
# Each worker reads its own shard of the training files
# ------------------------------------------------------------------------------------------------------------


def _id_splits(n=45, batch_size=12):
    """``n`` random 8 px images, one class each: an example's label names it."""
    from kcnn import data as kdata

    x = np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3)).astype("float32")
    return kdata.load((x, np.arange(n)), image_size=8, batch_size=batch_size, val_fraction=0, test_fraction=0,
                      augment="standard", seed=3)


@pytest.mark.parametrize("local_replicas", [1, 2])
def test_shard_dataset_function_gives_each_worker_its_own_files(local_replicas):
    """The dataset_fn fit_distributed gives distribute_datasets_from_function, called with the InputContext of
    each of 2 workers: disjoint shards that cover the split, equal steps, global batch / replicas per replica."""
    splits = _id_splits()  # 45 examples, global batch 12: shards of 23, 4 steps of 6 per worker
    replicas = 2 * local_replicas
    per_worker = distribute.per_worker_batch(12, replicas, 2)
    assert per_worker == 6
    labels, sizes = [], []
    for index in range(2):
        data = transfer.EpochData(splits, shard=(index, 2), batch_size=per_worker)
        assert data.steps == 4
        dataset_fn = distribute_loop._shard_input_fn(data, 3, 12)
        batches = [y.numpy().tolist() for _, y in dataset_fn(tf.distribute.InputContext(2, index, replicas))]
        resumed = transfer.EpochData(_id_splits(), shard=(index, 2), batch_size=per_worker)  # a new process
        again = distribute_loop._shard_input_fn(resumed, 3, 12)(tf.distribute.InputContext(2, index, replicas))
        assert [y.numpy().tolist() for _, y in again] == batches  # epoch-keyed: a resumed run reads the same
        labels.append([label for batch in batches for label in batch])
        sizes.append([len(batch) for batch in batches])
        with pytest.raises(distribute.DistributeError, match="input context"):
            dataset_fn(tf.distribute.InputContext(2, 1 - index, replicas))
    # each replica dequeues one batch a step: 4 steps x local_replicas batches of 12 / replicas
    expected = [6, 6, 6, 5] if local_replicas == 1 else [3, 3, 3, 3, 3, 3, 3, 2]
    assert sizes == [expected, expected]
    assert len(labels[0]) == len(labels[1]) == 23
    assert not set(labels[0]) & set(labels[1])
    assert set(labels[0]) | set(labels[1]) == set(range(45))
    assert len(set(labels[0])) + len(set(labels[1])) == 45  # worker 1's 22 examples, one of them twice


def test_global_batch_must_divide_by_the_replicas():
    with pytest.raises(distribute.DistributeError, match=r"--batch-size 10 .* 4 replicas .* 8 or 12") as info:
        distribute.per_worker_batch(10, 4, 2)
    assert "\n" not in str(info.value)
    with pytest.raises(distribute.DistributeError, match="--batch-size 4"):
        distribute.per_worker_batch(3, 4, 4)
    assert distribute.per_worker_batch(64, 4, 2) == 32
    assert distribute_loop._workers(tf.distribute.get_strategy()) == (1, 0)  # one worker: nothing is sharded
    with pytest.raises(ValueError, match="Splits only"):
        transfer.EpochData(tf.data.Dataset.range(4).batch(2), shard=(0, 2))


def test_the_recipes_check_the_global_batch_before_the_run_opens(monkeypatch):
    """recipes/_job.py calls check_batch before the run folder opens: a bad --batch-size writes nothing."""
    import types

    from kcnn import data as kdata

    splits = kdata.load("digits", image_size=8, batch_size=7)
    strategy = types.SimpleNamespace(num_replicas_in_sync=2)
    assert distribute.check_batch(strategy, splits) is None  # one worker: nothing is sharded
    monkeypatch.setattr(distribute_loop, "_workers", lambda strategy: (2, 0))
    with pytest.raises(distribute.DistributeError, match=r"--batch-size 7 .* 2 replicas .* 6 or 8"):
        distribute.check_batch(strategy, splits)
    assert distribute.check_batch(strategy, kdata.load("digits", image_size=8, batch_size=8)) == 4
    source = open(os.path.join(os.path.dirname(__file__), "..", "recipes", "_job.py")).read()
    assert source.index("distribute.check_batch(") < source.index("run.open()")


SHARD_SCRIPT = """
    import json, os, sys
    from kcnn import distribute
    strategy = distribute.make_strategy("multiworker")  # first: before TensorFlow starts
    import numpy as np, keras, tensorflow as tf
    from kcnn import data as kdata

    out, n, epochs = sys.argv[1], 45, 2
    index = distribute.worker_index(strategy)
    x = np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3)).astype("float32")
    splits = kdata.load((x, np.arange(n)), image_size=8, batch_size=10, val_fraction=0, test_fraction=0,
                        augment="standard", seed=3)  # one class per example: a label names its example
    make, epochs_seen = splits.dataset, []

    def recording(split="train", **kwargs):  # notes the labels of every training batch this worker reads
        ds, seen = make(split, **kwargs), []
        if not kwargs.get("training"):
            return ds
        epochs_seen.append(seen)

        def note(labels):
            seen.append(labels.numpy().tolist())
            return labels

        def mapped(images, labels):
            noted = tf.py_function(note, [labels], labels.dtype)
            noted.set_shape(labels.shape)
            return images, noted

        return ds.map(mapped)

    splits.dataset = recording

    def mlp():  # no BN: the distributed steps must equal one process's steps on the two shards' batches
        keras.utils.set_random_seed(1)
        return keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                                 keras.layers.Dense(16, activation="relu"),
                                 keras.layers.Dense(n, activation="softmax")])

    val = (x[:8], np.arange(8))
    with strategy.scope():
        both = mlp()
        history = distribute.fit_distributed(both, splits, val, epochs=epochs, optimizer="sgd", lr=0.1,
                                             strategy=strategy, verbose=0)
    np.savez(os.path.join(out, f"weights{index}.npz"), *both.get_weights())

    def global_batches(e):  # step k's global batch: worker 0's k-th batch and worker 1's, as one batch
        shards = [make("train", training=True, epoch=e, shard=(k, 2), batch_size=5) for k in range(2)]
        return tf.data.Dataset.zip(tuple(shards)).map(lambda a, b: (tf.concat([a[0], b[0]], 0),
                                                                     tf.concat([a[1], b[1]], 0)))

    replay = global_batches(0)
    for e in range(1, epochs):
        replay = replay.concatenate(global_batches(e))
    alone = mlp()  # outside the scope: TensorFlow's default strategy, this process only, one optimizer
    distribute.fit_distributed(alone, replay, epochs=1, optimizer="sgd", lr=0.1, verbose=0)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(both.get_weights(), alone.get_weights()))
    json.dump({"seen": epochs_seen, "epochs": history.epochs, "alone_diff": diff},
              open(os.path.join(out, f"shard{index}.json"), "w"))
"""


def test_two_workers_read_disjoint_shards(tmp_path):
    """Two workers on 127.0.0.1, fit_distributed on a Splits of 45 examples, global batch 10, 2 epochs: each
    worker reads 23 examples an epoch in 5 batches of 5 (3 last); the two shards are disjoint and cover the
    split; the workers end with identical weights, equal (to float rounding) to one process trained on each
    step's two worker batches as one global batch: the loss is the mean over the global batch."""
    script = tmp_path / "shard.py"
    script.write_text(textwrap.dedent(SHARD_SCRIPT))
    _wait_all(_start_workers([sys.executable, str(script), str(tmp_path)], tmp_path), tmp_path, timeout=300)
    runs = [json.loads((tmp_path / f"shard{i}.json").read_text()) for i in range(2)]
    for epoch in range(2):
        batches = [run["seen"][epoch] for run in runs]
        assert [[len(b) for b in worker] for worker in batches] == [[5, 5, 5, 5, 3]] * 2
        read = [[label for batch in worker for label in batch] for worker in batches]
        assert not set(read[0]) & set(read[1])
        assert set(read[0]) | set(read[1]) == set(range(45))
        assert [len(set(r)) for r in read] == [23, 22]  # worker 1's short shard repeats one example
    assert runs[0]["seen"][0] != runs[0]["seen"][1]  # reshuffled each epoch ...
    assert set(sum(runs[0]["seen"][0], [])) == set(sum(runs[0]["seen"][1], []))  # ... within the same files
    assert len(runs[0]["seen"]) == 2  # one shard dataset an epoch, nothing else read for training
    weights = [np.load(tmp_path / f"weights{i}.npz") for i in range(2)]
    assert all(np.array_equal(weights[0][k], weights[1][k]) for k in weights[0].files)
    assert runs[0]["epochs"] == runs[1]["epochs"] and [r["epoch"] for r in runs[0]["epochs"]] == [1, 2]
    assert runs[0]["alone_diff"] < 1e-5
