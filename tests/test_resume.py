"""Exact resume: a run interrupted at any moment and resumed ends with the weights of an uninterrupted run, bit for
bit (same seed, same machine). Small and fast: tiny images, a few steps per epoch."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kcnn import runs
from kcnn.transfer import history as transfer_history
from recipes import finetune, pretrain, train

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = ["--data", "digits", "--image-size", "16", "--backbone", "vgg_cifar", "--weights", "none",
            "--schedule", "two-phase", "--epochs", "4", "--per-class", "3", "--batch-size", "8", "--seed", "0",
            "--verbose", "0"]


class Interrupt:
    """Raise KeyboardInterrupt (Ctrl-C) at a chosen moment of the run: `when(kind, epoch)` returns True."""

    def __init__(self, monkeypatch, kind, epoch):
        self.kind, self.epoch, self.fired = kind, epoch, False
        real_checkpoint, real_write = runs.RunDir.checkpoint, runs.atomic_write_bytes
        real_epoch_end = transfer_history.EpochRecorder.on_epoch_end
        interrupt = self

        def checkpoint(run, row, arrays=None, **kwargs):
            real_checkpoint(run, row, arrays, **kwargs)
            interrupt.maybe("after checkpoint", int(row["epoch"]))

        def write(path, data):
            if interrupt.kind == "inside checkpoint write" and Path(path).name.startswith("checkpoint-") \
                    and not interrupt.fired and int(Path(path).name[11:15]) == interrupt.epoch:
                interrupt.fired = True
                Path(path).with_name(f".{Path(path).name}.{os.getpid()}.tmp").write_bytes(data[: len(data) // 2])
                raise KeyboardInterrupt
            real_write(path, data)

        def on_epoch_end(recorder, epoch, logs=None):
            real_epoch_end(recorder, epoch, logs)
            interrupt.maybe("inside epoch", epoch + 1)

        monkeypatch.setattr(runs.RunDir, "checkpoint", checkpoint)
        monkeypatch.setattr(runs, "atomic_write_bytes", write)
        monkeypatch.setattr(transfer_history.EpochRecorder, "on_epoch_end", on_epoch_end)

    def maybe(self, kind, epoch):
        if kind == self.kind and epoch == self.epoch and not self.fired:
            self.fired = True
            raise KeyboardInterrupt


def _weights(folder):
    from kcnn import perf

    return [np.asarray(w) for w in perf.load_model(Path(folder) / "model.keras").weights]


def _largest_difference(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(_weights(a), _weights(b)))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted runs, one per setting."""
    done = {}

    def get(main, args):
        key = (main.__module__, tuple(args))
        if key not in done:
            out = tmp_path_factory.mktemp("straight")
            assert main([*args, "--out", str(out / "run")]) == 0
            done[key] = out / "run"
        return done[key]

    return get


@pytest.mark.parametrize("augment, kind, epoch", [
    ("none", "after checkpoint", 1),           # between epochs, in the head phase on cached features
    pytest.param("none", "inside epoch", 2,    # the epoch's steps ran, its checkpoint did not: redone
                 marks=pytest.mark.slow),      # (the kill -9 test below kills inside an epoch in every run)
    pytest.param("standard", "after checkpoint", 3, marks=pytest.mark.slow),  # between epochs, augmented
    ("standard", "inside checkpoint write", 3),  # a half-written checkpoint file: the previous one is used
])
def test_finetune_interrupted_and_resumed_ends_bit_identical(tmp_path, monkeypatch, capsys, straight, augment,
                                                              kind, epoch):
    args = [*FINETUNE, "--augment", augment, "--no-compare-scratch"]
    reference = straight(finetune.main, args)
    out = tmp_path / "run"
    interrupt = Interrupt(monkeypatch, kind, epoch)
    assert finetune.main([*args, "--out", str(out)]) == 130
    assert interrupt.fired
    assert capsys.readouterr().err == ("error: interrupted; the last finished epoch is saved: continue with the "
                                       f"same command plus --resume --out {out}\n")
    state = json.loads((out / "state.json").read_text())
    assert state["epochs_done"] == (epoch - 1 if kind != "after checkpoint" else epoch)
    monkeypatch.undo()
    assert finetune.main([*args, "--out", str(out), "--resume"]) == 0
    assert not list(out.glob(".*.tmp"))  # the interrupted write's temporary file is gone
    assert _largest_difference(reference, out) == 0.0
    assert json.loads((out / "report.json").read_text())["test_accuracy"] == \
        json.loads((reference / "report.json").read_text())["test_accuracy"]
    rows = [r.split(",")[:4] for r in (out / "history.csv").read_text().splitlines()]
    assert rows == [r.split(",")[:4] for r in (reference / "history.csv").read_text().splitlines()]


def test_interrupted_scratch_comparison_resumes_to_the_same_numbers(tmp_path, monkeypatch, straight):
    args = [*FINETUNE, "--epochs", "2", "--augment", "none"]
    reference = straight(finetune.main, args)
    out = tmp_path / "run"
    calls = []
    from kcnn import transfer

    real = transfer.fit_schedule

    def fit(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # the first call is the fine-tuning, the second the scratch comparison
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(transfer, "fit_schedule", fit)
    assert finetune.main([*args, "--out", str(out)]) == 130
    monkeypatch.undo()
    assert finetune.main([*args, "--out", str(out), "--resume"]) == 0
    ours, theirs = (json.loads((p / "report.json").read_text()) for p in (out, reference))
    assert (ours["test_accuracy"], ours["scratch_test_accuracy"]) == \
        (theirs["test_accuracy"], theirs["scratch_test_accuracy"])
    assert _largest_difference(reference, out) == 0.0


def test_train_and_pretrain_resume_bit_identical(tmp_path, monkeypatch, straight):
    """train: SGD with momentum (optimizer slots); pretrain: cosine decay (the schedule's position)."""
    cases = [
        (train.main, ["--data", "digits", "--image-size", "12", "--model", "allcnn_a", "--epochs", "3",
                      "--batch-size", "64", "--augment", "standard", "--seed", "1", "--verbose", "0",
                      "--lr", "0.05", "--preset", "he2015"]),
        (pretrain.main, ["--data", "glyphs", "--examples", "120", "--image-size", "12", "--backbone", "allcnn_a",
                         "--epochs", "3", "--batch-size", "32", "--seed", "2", "--verbose", "0"]),
    ]
    for main, args in cases:
        reference = straight(main, args)
        out = tmp_path / main.__module__
        Interrupt(monkeypatch, "after checkpoint", 2)
        assert main([*args, "--out", str(out)]) == 130
        monkeypatch.undo()
        assert main([*args, "--out", str(out), "--resume"]) == 0
        assert _largest_difference(reference, out) == 0.0, main.__module__


def test_kill_9_inside_an_epoch_then_resume_is_bit_identical(tmp_path, straight):
    """A real kill -9 of the process, at a moment inside the fine-tuning phase."""
    args = [*FINETUNE, "--augment", "standard", "--no-compare-scratch"]
    reference = straight(finetune.main, args)
    out = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "recipes.finetune", *args, "--out", str(out)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            if json.loads((out / "state.json").read_text())["epochs_done"] >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    time.sleep(0.3)  # into epoch 3 (or its checkpoint write)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "report.json").exists(), "the run finished before it was killed; kill it earlier"
    done = subprocess.run([sys.executable, "-m", "recipes.finetune", *args, "--out", str(out), "--resume"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _largest_difference(reference, out) == 0.0


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """A NaN loss in epoch 2 (sample weights turned NaN after epoch 1): the run stops with one clear error,
    state.json still names epoch 1's checkpoint and records where it diverged."""
    import tensorflow as tf

    from kcnn import training, transfer

    training.set_seed(0)
    x = np.random.default_rng(0).uniform(0, 255, (16, 12, 12, 3)).astype("float32")
    y = np.arange(16) % 2
    weight = tf.Variable(1.0)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).map(
        lambda a, b: (a, b, tf.fill(tf.shape(b), weight)))
    bb = transfer.backbone("allcnn_a", None, (12, 12, 3))
    model = transfer.classifier(bb, 2)
    run = runs.RunDir(tmp_path / "run", config={}, recipe="train").open()

    schedule = transfer.Schedule([transfer.Phase(epochs=3, train="all", lr=1e-3, bn="train")])
    real = runs.RunDir.checkpoint

    def checkpoint_then_poison(self, row, arrays=None, **kwargs):
        real(self, row, arrays, **kwargs)
        weight.assign(float("nan"))  # every later batch's loss is NaN

    monkeypatch.setattr(runs.RunDir, "checkpoint", checkpoint_then_poison)
    with pytest.raises(transfer.Diverged, match=r"loss was nan in epoch 2 .*last good epoch \(1\) is kept"):
        training.fit_run(run, model, bb, schedule, ds, augmented=False, verbose=0)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["epochs_done"] == 1 and state["checkpoint"] == "checkpoint-0001.npz"
    assert state["diverged"]["epoch"] == 2
    assert (tmp_path / "run" / "checkpoint-0001.npz").is_file()


def test_ctrl_c_before_the_run_folder_opens_says_nothing_was_written(tmp_path, monkeypatch, capsys):
    from kcnn import data as kdata

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(kdata, "load", interrupted)
    assert finetune.main([*FINETUNE, "--out", str(tmp_path / "run")]) == 130
    assert "nothing was written to --out" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


TOOLBOX = ["--data", "digits", "--image-size", "16", "--model", "resnet20", "--epochs", "4", "--batch-size", "64",
           "--seed", "3", "--verbose", "0", "--augment", "randaugment", "--erase", "0.25", "--mixup", "0.2",
           "--cutmix", "1.0", "--mix-off-epoch", "3", "--label-smoothing", "0.1", "--ema", "0.9", "--accumulate", "2",
           "--sched", "onecycle", "--drop-path", "0.1", "--restore-best", "--patience", "3", "--tta"]


def test_every_toolbox_option_on_interrupted_inside_an_epoch_resumes_bit_identical(tmp_path, monkeypatch, straight):
    """Augmentation, erasing, mixing (switched off after epoch 3), label smoothing, the weight average, gradient
    accumulation, one-cycle, drop path, restore-best and patience together: killed inside epoch 2, resumed."""
    reference = straight(train.main, TOOLBOX)
    out = tmp_path / "run"
    interrupt = Interrupt(monkeypatch, "inside epoch", 2)
    assert train.main([*TOOLBOX, "--out", str(out)]) == 130
    assert interrupt.fired
    monkeypatch.undo()
    assert train.main([*TOOLBOX, "--out", str(out), "--resume"]) == 0
    assert _largest_difference(reference, out) == 0.0
    ours, theirs = (json.loads((p / "report.json").read_text()) for p in (out, reference))
    assert ours["kept_epoch"] == theirs["kept_epoch"] and ours["tta_test_accuracy"] == theirs["tta_test_accuracy"]
    assert ours["toolbox"]["ema"] == 0.9 and (out / "augment.png").is_file()


def test_sigterm_stops_like_ctrl_c_exits_143_and_resumes_bit_identical(tmp_path, monkeypatch, capsys, straight):
    """SIGTERM (a scheduler's stop) sent to the process inside epoch 3: one line with the resume command, exit 143,
    the scheduler's signal handler put back; the resumed run ends where the uninterrupted one ends."""
    args = [*FINETUNE, "--augment", "standard", "--no-compare-scratch"]
    reference = straight(finetune.main, args)
    out = tmp_path / "run"
    real_epoch_end = transfer_history.EpochRecorder.on_epoch_end

    def on_epoch_end(recorder, epoch, logs=None):
        real_epoch_end(recorder, epoch, logs)
        if epoch + 1 == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (main) thread: the handler raises here

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(transfer_history.EpochRecorder, "on_epoch_end", on_epoch_end)
    assert finetune.main([*args, "--out", str(out)]) == 143
    monkeypatch.undo()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: terminated (SIGTERM); the run is saved where it stopped: continue with the same command "
                   f"plus --resume --out {out}"]
    assert signal.getsignal(signal.SIGTERM) is before
    assert json.loads((out / "state.json").read_text())["epochs_done"] in (1, 2)
    assert finetune.main([*args, "--out", str(out), "--resume"]) == 0
    assert _largest_difference(reference, out) == 0.0


TRAIN_LONG = ["--data", "digits", "--image-size", "12", "--model", "allcnn_a", "--epochs", "2", "--batch-size", "4",
              "--augment", "standard", "--seed", "3", "--verbose", "0", "--lr", "0.02", "--preset", "he2015"]


def test_sigterm_inside_a_long_epoch_saves_that_step_and_resumes_bit_identical(tmp_path, monkeypatch, capsys,
                                                                              straight):
    """Epochs of 288 steps (digits at batch 4), a checkpoint every 50 steps: SIGTERM arrives in epoch 2 after its
    first inside checkpoint; the run saves the step it is at, exits 143; the resume goes on at the next batch of
    that epoch and ends with the uninterrupted run's weights and history, bit for bit."""
    reference = straight(train.main, [*TRAIN_LONG, "--checkpoint-every", "off"])
    out = tmp_path / "run"
    real = runs.RunDir.checkpoint_inside
    seen = []

    def checkpoint_inside(run, arrays, *, epoch, step):
        real(run, arrays, epoch=epoch, step=step)
        seen.append((epoch, step))
        if epoch == 2 and len([s for s in seen if s[0] == 2]) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # deferred: the loop saves its next step, then stops

    monkeypatch.setattr(runs.RunDir, "checkpoint_inside", checkpoint_inside)
    assert train.main([*TRAIN_LONG, "--out", str(out), "--checkpoint-every", "50"]) == 143
    monkeypatch.undo()
    assert "terminated (SIGTERM); the run is saved where it stopped" in capsys.readouterr().err
    state = json.loads((out / "state.json").read_text())
    inside = state["inside_epoch"]
    assert state["epochs_done"] == 1 and inside["epoch"] == 2 and 64 <= inside["step"] < 288
    assert inside["step"] == seen[-1][1] and seen[-2][0] == 2 and seen[-1][1] - seen[-2][1] == 16
    assert [p.name for p in out.glob("step-*.npz")] == [inside["file"]]
    assert seen[0] == (1, 64)  # the first due after 50 steps (graph calls of 16 steps)
    assert train.main([*TRAIN_LONG, "--out", str(out), "--resume"]) == 0
    assert _largest_difference(reference, out) == 0.0
    ours, theirs = ((p / "history.csv").read_text() for p in (out, reference))
    assert ours == theirs  # the resumed epoch's running metrics were restored: its row is the straight run's
    assert list(out.glob("step-*.npz")) == []


def test_checkpoint_every_parses_steps_times_and_off():
    from kcnn.runs import CheckpointEvery

    assert CheckpointEvery.parse("500") == CheckpointEvery(steps=500)
    assert CheckpointEvery.parse("10min").seconds == 600 and CheckpointEvery.parse("1.5h").seconds == 5400
    assert CheckpointEvery.parse("90s").seconds == 90 and CheckpointEvery.parse("off") == CheckpointEvery()
    every = CheckpointEvery.parse(50)
    every.start(0)
    assert [every.due(s) for s in (16, 48, 64)] == [False, False, True]
    every.start(64)
    assert [every.due(s) for s in (96, 112, 128)] == [False, False, True]
    assert CheckpointEvery.parse("0") == CheckpointEvery()  # 0 steps: off
    for bad in ("-5", "10 parsecs", "min", True, "0min"):
        with pytest.raises(ValueError, match="checkpoint_every"):
            CheckpointEvery.parse(bad)
