"""Training jobs: seeding, the run-folder fit (checkpoints, exact resume), evaluation, reports, the demo's cache.

The run folder itself (marker, state, checkpoints, atomic writes) is `kcnn.runs`; the fit engines are
`kcnn.transfer.fit_schedule` (Keras fit: one device or MirroredStrategy) and `kcnn.distribute.fit_distributed`
(a custom loop under MultiWorkerMirroredStrategy). `fit_run` joins them: both run the same phase plan and call
the same per-epoch hook, which writes one history row and one checkpoint.

The fits change no process-wide setting (op determinism, Keras' dtype policy, TensorFlow's thread pools):
`set_seed` is the one function here that does, for the rest of the process when called plainly (the recipes,
processes of their own) or for a ``with`` block (your code).
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

import kcnn
from kcnn import files, options, perf, plots
from kcnn.runs import (FINAL_FILES, CheckpointEvery, RunDir, RunError, atomic_write_text,  # noqa: F401
                       default_out, dumps_toml,  # noqa: F401
                       jsonable, write_history_csv)


def _determinism():
    """TensorFlow's op-determinism switch (`kcnn._compat.tf_op_determinism`)."""
    from kcnn import _compat

    return _compat.tf_op_determinism()


class Seeded(perf.ScopedChange):
    """What `set_seed` changed beyond the seeds, and how to put it back: TensorFlow's op determinism.

    ``with`` it (or call `restore`) to have the determinism flag the process had before `set_seed`; the seeds
    stay as set (seeding is what the caller asked for). Restoring twice is harmless. ``before`` None: `set_seed`
    did not touch the flag.
    """

    def put_back(self, before: bool) -> None:
        switch = _determinism()
        (switch.enable_op_determinism if before else switch.disable_op_determinism)()


def set_seed(seed: int, deterministic: bool = True) -> Seeded:
    """Seed Python, NumPy and TensorFlow; optionally make TensorFlow ops deterministic.

    Determinism makes two runs on the same machine give the same numbers (and a resumed run end where an
    uninterrupted one ends); it costs some speed because TensorFlow must pick deterministic kernels.

    Op determinism is one flag for the whole process. Called plainly, ``set_seed`` turns it on for the rest
    of the process: that is what the recipes do (each is a process of its own; ``--seed`` makes the run
    deterministic from start to end). In your own code, scope it to a block, and the flag is put back as it was
    before the call when the block ends::

        with kcnn.training.set_seed(0):
            kcnn.training.fit_run(...)

    No other function of kcnn changes it (nor the dtype policy or the thread pools: see `kcnn.perf`).

    Returns:
        `Seeded`, whose ``restore()`` (or the end of the ``with`` block) puts op determinism back.
    """
    switch = _determinism()
    before = switch.is_op_determinism_enabled() if deterministic else None
    keras.utils.set_random_seed(int(seed))
    if deterministic:
        switch.enable_op_determinism()
    return Seeded(before)


# --- evaluation and the report --------------------------------------------------------------------------------------

def predict_probs(model, images, tta: str = "none", plain=None):
    """Class probabilities of a batch; ``tta="flip"`` averages them with those of the mirrored images
    (test-time augmentation). ``plain``: the batch's probabilities without TTA, when already computed."""
    probs = np.asarray(model(images, training=False), np.float64) if plain is None else plain
    if tta == "flip":
        probs = (probs + np.asarray(model(np.asarray(images)[:, :, ::-1], training=False), np.float64)) / 2
    return probs


def evaluate(model, dataset, class_names, *, tta: str = "none") -> dict:
    """Accuracy, loss, top-5 accuracy (10 classes or more), macro-F1, per-class precision/recall and the confusion
    matrix of ``model`` on ``dataset``. With ``tta="flip"`` the same scores of the flip-averaged predictions are
    added as ``tta_test_*`` beside the plain ones."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    if tta not in options.TTA_MODES:
        raise ValueError(f"--tta must be one of {', '.join(options.TTA_MODES)}; got {tta!r}")
    y_true, probs, flipped = [], [], []
    for x, y in dataset:
        probs.append(predict_probs(model, x))
        if tta != "none":  # the plain pass is shared, only the mirrored images run again
            flipped.append(predict_probs(model, x, tta, plain=probs[-1]))
        y_true.append(np.asarray(y))
    y_true = np.concatenate(y_true).astype(int).reshape(-1)
    labels = list(range(len(class_names)))

    def scores(p, prefix):
        p = np.concatenate(p).reshape(len(y_true), -1)
        pred = p.argmax(axis=1)
        out = {f"{prefix}accuracy": float(np.mean(pred == y_true)),
               f"{prefix}loss": float(-np.mean(np.log(np.clip(p[np.arange(len(y_true)), y_true], 1e-7, 1.0)))),
               f"{prefix}macro_f1": float(f1_score(y_true, pred, average="macro", zero_division=0))}
        if len(class_names) >= 10:
            top5 = np.argsort(-p, axis=1)[:, :5]
            out[f"{prefix}top5_accuracy"] = float(np.mean((top5 == y_true[:, None]).any(axis=1)))
        return out, pred

    plain, y_pred = scores(probs, "test_")
    precision, recall, _, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    result = {
        **plain,
        "test_examples": int(len(y_true)),
        "per_class": {
            str(name): {"precision": float(p), "recall": float(r), "support": int(s)}
            for name, p, r, s in zip(class_names, precision, recall, support)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    if tta != "none":
        result.update(scores(flipped, "tta_test_")[0])
        result["tta"] = tta
    return result


def versions() -> dict:
    import tensorflow as tf

    return {"kcnn": kcnn.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def finish_run(run: RunDir, model, *, test_ds, class_names, history, seed, extra: dict | None = None,
               title: str = "", before_report=None, comparison: list[dict] | None = None,
               tta: str = "none") -> dict:
    """Evaluate on test and write model.keras, labels.json, history.csv, the plots, then report.json.

    report.json is written last and atomically: a folder with it is a finished run. ``before_report(run)``
    writes what must exist before that (e.g. a pretraining checkpoint's metadata). ``comparison``: history rows
    drawn beside the run's in curves.png (the from-scratch comparison)."""
    metrics = evaluate(model, test_ds, class_names, tta=tta)
    report = {
        **{k: v for k, v in metrics.items() if k != "confusion_matrix"},
        "phases": run.state.get("phases", []),
        "epochs": len(history),
        "seed": seed,
        "versions": versions(),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        **(extra or {}),
        "confusion_matrix": metrics["confusion_matrix"],
    }
    atomic_write_text(run.path / "labels.json", json.dumps(list(map(str, class_names)), indent=1))
    write_history_csv(run.path / "history.csv", history)
    plots.learning_curves(history, run.path / "curves.png", title=title, comparison=comparison)
    plots.confusion_matrix_plot(metrics["confusion_matrix"], class_names, run.path / "confusion.png")
    report.update(_interpretation(run, model, test_ds, class_names, metrics["confusion_matrix"]))
    # uncompiled (the last phase's optimizer is of no use to someone who loads it), loadable without kcnn
    perf.save_portable(keras.Model(model.inputs, model.outputs, name=model.name), run.path / "model.keras")
    if before_report is not None:
        before_report(run)
    atomic_write_text(run.path / "report.json", json.dumps(jsonable(report), indent=1))
    run.complete()
    return report


# --- jobs: what the recipes run, usable from Python too ----------------------------------------------------------

def _interpretation(run: RunDir, model, test_ds, class_names, confusion) -> dict:
    """top_losses.png, gradcam.png and the report's most confused pairs and highest-loss test images."""
    from kcnn import interpret

    worst = interpret.top_losses(model, test_ds, class_names, k=9)
    interpret.plot_top_losses(worst, test_ds, class_names, run.path / "top_losses.png")
    shown = worst[:6]
    images = interpret.images_at(test_ds, [r["index"] for r in shown])
    try:
        maps = interpret.gradcam(model, images)
        interpret.plot_gradcam(images, maps, [f"{r['true']} / {r['predicted']} ({r['probability']:.2f})"
                                              for r in shown], run.path / "gradcam.png")
    except ValueError:  # a model without a spatial (4-D) feature map has nothing to map
        pass
    return {"confused_pairs": interpret.confused_pairs(confusion, class_names, k=5), "top_losses": worst}


def cache_root() -> Path:
    """Where kcnn caches pretrained checkpoints: ``$KCNN_CACHE``, else ``$XDG_CACHE_HOME/kcnn``, else ~/.cache/kcnn."""
    if os.environ.get("KCNN_CACHE"):
        return Path(os.environ["KCNN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kcnn"


@dataclass(frozen=True)
class BestEpoch:
    """Which epoch a run keeps (``--restore-best``) and when a phase stops early (``--patience``).

    The score of an epoch is its validation accuracy, ties broken by the lower validation loss
    (``monitor="val_accuracy"``, the default), or its validation loss alone (``monitor="val_loss"``). Accuracy is
    what a user reads; on small validation sets (the demo's 180 images) it moves in steps of 1/n and ties often,
    which the loss breaks. Epochs without validation (``validation_freq``) are never kept.

    Args:
        monitor: "val_accuracy" or "val_loss".
        patience: End a phase when its best score has not improved by ``min_delta`` for this many epochs (counted
            within the phase, as Keras' EarlyStopping counts within one ``fit``); None: never.
        min_delta: The smallest change of the monitored value that counts as an improvement.
        restore: Keep the best epoch's weights as the run's result (else the last epoch's).
    """

    monitor: str = "val_accuracy"
    patience: int | None = None
    min_delta: float = 0.0
    restore: bool = True

    MONITORS = options.MONITORS

    def __post_init__(self):
        if self.monitor not in self.MONITORS:
            raise ValueError(f"--monitor must be one of {', '.join(self.MONITORS)}; got {self.monitor!r}")
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise ValueError(f"--patience must be an integer >= 1; got {self.patience!r}")
        if isinstance(self.min_delta, bool) or not isinstance(self.min_delta, (int, float)) or self.min_delta < 0:
            raise ValueError(f"--min-delta must be a number >= 0; got {self.min_delta!r}")

    def better(self, row: dict, than: dict | None) -> bool:
        """Whether epoch ``row`` scores better than epoch ``than`` (None: any validated row does)."""
        if row.get(self.monitor) is None or row.get("val_loss") is None:
            return False
        if than is None:
            return True
        if self.monitor == "val_loss":
            return row["val_loss"] < than["val_loss"] - self.min_delta
        if row["val_accuracy"] > than["val_accuracy"] + self.min_delta:
            return True
        return abs(row["val_accuracy"] - than["val_accuracy"]) <= self.min_delta and \
            row["val_accuracy"] >= than["val_accuracy"] and row["val_loss"] < than["val_loss"]

    def best_of(self, rows) -> dict | None:
        """The best row of ``rows`` (the earliest among equals), or None when none was validated."""
        best = None
        for row in rows:
            if self.better(row, best):
                best = row
        return best

    def stop(self, phase_rows) -> bool:
        """Whether the phase whose epochs so far are ``phase_rows`` ends now (``patience`` epochs past its best)."""
        if self.patience is None or not phase_rows:
            return False
        best = self.best_of(phase_rows)
        if best is None:
            return False
        return int(phase_rows[-1]["epoch"]) - int(best["epoch"]) >= self.patience


def fit_run(run: RunDir, model, bb, schedule, splits, *, strategy=None, augmented: bool, verbose=1,
            steps_per_execution: int | None = None, callbacks=(), best: BestEpoch | None = None,
            checkpoint_every=None, stop_requested=None) -> list[dict]:
    """Fit ``schedule`` inside ``run``: a checkpoint and a history row per epoch, exact resume, phase records.

    The engine follows the strategy: MultiWorkerMirroredStrategy runs `kcnn.distribute.fit_distributed` (Keras'
    fit fails there); MirroredStrategy runs `kcnn.transfer.fit_schedule` with synchronized batch norm; no
    strategy runs `kcnn.transfer.fit_schedule`. Both get the same hooks. A resumed run restores every model
    and optimizer variable of its last checkpoint and continues the data order at the next epoch, so with the
    same seed it ends with the weights of an uninterrupted run.

    Each epoch's end is one state write (`kcnn.runs.RunDir.checkpoint`): the row, the checkpoint, the record of the
    phase it belongs to and the best epoch so far. With ``best``: the best epoch's weights are kept in the run
    folder as it goes, a phase ends early after ``best.patience`` epochs without improvement (a decision made
    from the recorded rows, so a resumed run makes the same one), and with ``best.restore`` the model ends with
    the best epoch's weights (`best_summary` says which, for the report).

    Inside long epochs (one ``fit`` per epoch: `kcnn.transfer.fit.LONG_EPOCH_STEPS` steps or more), with
    ``checkpoint_every`` (`CheckpointEvery`: a number of training steps, or seconds) the state is also saved
    between two steps (``step-EEEE-SSSSSSS.npz``: model, optimizer, the epoch's running metrics, the step): a run
    killed there resumes at the next batch of that epoch and ends with the same weights as the uninterrupted
    run. ``stop_requested()`` is asked after each graph call and each epoch: an exception it returns (a recipe's
    SIGTERM) is raised once the state of exactly that step is saved. The custom loop of multi-worker training
    checkpoints at epoch ends only.

    Returns:
        The run's history rows (list of dicts: epoch, phase, lr, metrics).
    """
    import tensorflow as tf

    from kcnn import distribute, transfer

    strategy = strategy or tf.distribute.get_strategy()
    resume = run.load_checkpoint()
    initial = run.epochs_done
    inside = run.inside_epoch()
    resume_step = 0
    if inside is not None:
        resume_step, resume = inside
    if resume is not None:
        transfer.restore_model_state(model, resume)
    if (initial or resume_step) and verbose and distribute.is_chief(strategy):
        where = f" and {resume_step} steps of epoch {initial + 1}" if resume_step else ""
        print(f"resuming {run.path} after epoch {initial}{where} of {schedule.total_epochs}", flush=True)
    every = CheckpointEvery.parse(checkpoint_every)
    every.start(resume_step)
    ends = dict(enumerate((end for _, end in schedule.boundaries()), start=1))
    history = transfer.ScheduleHistory()
    earlier = {}  # phase number -> seconds it ran before this process (an interrupted run)
    started, announced = time.perf_counter(), []

    def on_epoch_end(row, model_, optimizer, phase_number):
        record = {"epoch": row["epoch"], "phase": row["phase_name"], "lr": row.get("lr"),
                  **{k: v for k, v in row.items() if k not in ("epoch", "phase", "phase_name", "lr")}}
        rows = run.history + [record]
        start = ends[phase_number] - schedule[phase_number - 1].epochs
        phase_rows = [r for r in rows if start < int(r["epoch"]) <= ends[phase_number]]
        stop = best is not None and best.stop(phase_rows) and int(row["epoch"]) < ends[phase_number]
        last = stop or int(row["epoch"]) >= ends[phase_number]
        if last:
            transfer.copy_average(optimizer)  # the phase's result is its weight average
        kept, kept_arrays = None, None
        if best is not None:
            previous = run.state.get("best")
            if best.better(record, previous):
                kept = {"epoch": record["epoch"], "phase": record["phase"],
                        **{k: record[k] for k in record if k.startswith("val_")}}
                with transfer.averaged_weights(optimizer):  # the scores are the average's
                    kept_arrays = transfer.training_state(model_, None, phase=phase_number, epoch=row["epoch"])
        earlier.setdefault(phase_number, run.phase_seconds(phase_number))
        info = next(p for p in history.phases if p["phase"] == phase_number)
        phase = schedule[phase_number - 1]
        phase_info = {"index": phase_number, "name": phase.name, "train": info["train"], "blocks": info["blocks"],
                      "epochs": [info["first_epoch"], info["last_epoch"]], "lr": phase.lr,
                      "cached_features": info["cached"], "last_run_epoch": int(row["epoch"]),
                      "stopped_early": bool(stop), "seconds": round(earlier[phase_number] + info["seconds"], 3)}
        run.checkpoint(record, transfer.training_state(model_, optimizer, phase=phase_number, epoch=row["epoch"]),
                       phase=phase_info, best=kept, best_arrays=kept_arrays,
                       epochs_done=ends[phase_number] if stop else None)
        if verbose and distribute.is_chief(strategy) and not announced:
            announced.append(True)
            print(eta_line(time.perf_counter() - started, int(row["epoch"]) - initial,
                           schedule.total_epochs - int(row["epoch"])), flush=True)
        if stop and verbose and distribute.is_chief(strategy):
            print(f"phase {phase_number} '{phase.name}': no better {best.monitor} for {best.patience} epochs; "
                  f"stopping it after epoch {row['epoch']}", flush=True)
        every.start()
        pending = stop_requested() if stop_requested is not None else None
        if pending is not None:
            raise pending  # the epoch's checkpoint is written: a resume starts the next epoch
        return stop

    def on_step(runner, optimizer, phase_number, epoch, step):
        pending = stop_requested() if stop_requested is not None else None
        if pending is None and not every.due(step):
            return
        arrays = transfer.training_state(model, optimizer, phase=phase_number, epoch=epoch)
        arrays.update(transfer.metric_state(runner))
        run.checkpoint_inside(arrays, epoch=epoch + 1, step=step)
        every.start(step)
        if pending is not None:
            raise pending

    if distribute.is_chief(strategy):
        callbacks = [keras.callbacks.TensorBoard(str(run.path / "logs"), write_graph=False), *callbacks]
    if initial < schedule.total_epochs:
        try:
            _fit_engine(model, bb, schedule, splits, strategy=strategy, augmented=augmented,
                        steps_per_execution=steps_per_execution, callbacks=list(callbacks), initial_epoch=initial,
                        verbose=verbose, on_epoch_end=on_epoch_end, resume_state=resume, history=history,
                        on_step=on_step if distribute.is_chief(strategy) else None, resume_step=resume_step)
        except transfer.Diverged as err:
            run.save_extra("diverged", {"epoch": err.epoch, "phase": err.phase, "loss": str(err.loss)})
            raise
    if best is not None and best.restore:
        kept = run.state.get("best")
        if kept and run.history and int(kept["epoch"]) != int(run.history[-1]["epoch"]):
            transfer.restore_model_state(model, run.load_best())
            if verbose and distribute.is_chief(strategy):
                print(f"keeping epoch {kept['epoch']} (best {best.monitor}: {kept.get(best.monitor):.4f}) "
                      f"over the last, epoch {run.history[-1]['epoch']}", flush=True)
    return run.history


def eta_line(seconds: float, epochs_run: int, epochs_left: int) -> str:
    """What the first epoch says of the whole run: its time and the remaining epochs' at the same pace (an upper
    bound: the first epoch also traces the graphs)."""
    if epochs_left <= 0:
        return f"epoch took {seconds:.0f} s"
    per = seconds / max(1, epochs_run)
    left = per * epochs_left
    when = f"{left / 60:.0f} min" if left >= 90 else f"{left:.0f} s"
    if left >= 5400:
        when = f"{left / 3600:.1f} h"
    return (f"first epoch took {seconds:.0f} s; the remaining {epochs_left} epochs will take about {when} at this "
            "pace (an upper bound)")


def best_summary(run: RunDir, best: BestEpoch | None, validation_examples: int | None) -> dict:
    """The report's ``kept_epoch`` entry: which epoch the model holds, the last epoch, their validation scores,
    and how many validation images the choice rests on."""
    rows = run.history
    if not rows:
        return {}
    last = rows[-1]
    scores = lambda r: {k: r[k] for k in r if k.startswith("val_")}  # noqa: E731
    kept = run.state.get("best") if best is not None and best.restore else None
    kept_row = next((r for r in rows if kept and int(r["epoch"]) == int(kept["epoch"])), last)
    return {"monitor": best.monitor if best else None, "restore_best": bool(best and best.restore),
            "patience": best.patience if best else None,
            "kept": {"epoch": kept_row["epoch"], **scores(kept_row)},
            "last": {"epoch": last["epoch"], **scores(last)},
            "validation_examples": validation_examples}


def _fit_engine(model, bb, schedule, splits, *, strategy, augmented, steps_per_execution, **common):
    """The engine for ``strategy`` (see `fit_run`); ``common``: the arguments both engines take."""
    import tensorflow as tf

    from kcnn import distribute, transfer

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        common.pop("on_step", None)  # the custom loop checkpoints at epoch ends
        if common.pop("resume_step", 0):
            raise RunError("this run was checkpointed inside an epoch by a single-process run; resume it without "
                           "--distribute multiworker")
        distribute.fit_distributed(model, splits, strategy=strategy, backbone=bb, schedule=schedule, **common)
        return
    if steps_per_execution is not None:
        common["steps_per_execution"] = steps_per_execution
    synced = strategy.num_replicas_in_sync > 1
    with distribute.synchronized_batch_norm(model) if synced else contextlib.nullcontext():
        transfer.fit_schedule(model, bb, schedule, splits, augmented=augmented, **common)


def pretrain_schedule(epochs: int, lr: float):
    """The one schedule that trains a backbone from random weights (recipes.pretrain and the demo's cache):
    everything, Adam with cosine decay from ``lr``, and BN training. From random weights BN must learn its
    statistics; the Phase default, "frozen", would keep them at 0 and 1."""
    from kcnn import transfer

    return transfer.Schedule([transfer.Phase(epochs=epochs, train="all", lr=lr, schedule="cosine", bn="train",
                                             name="pretrain")])


#: Bumped when pretraining or the synthetic source changes, so that stale cached checkpoints are not reused
#: (2: BN statistics learned during pretraining, and the glyphs' pen-drawn forms; 3: the key holds the learning
#: rate and batch size, and the data order is keyed by epoch).
PRETRAIN_VERSION = 3


def size_option(source: str, examples: int) -> dict:
    """How ``examples`` limits a source in `kcnn.data.load`: generated count for glyphs, a limit otherwise."""
    return {"num_examples": examples} if source.split(":")[0] in ("glyphs", "shapes") else {"limit": examples}


def pretrained_checkpoint(arch: str, *, source: str = "glyphs", examples: int = 8000, epochs: int = 3,
                          image_size: int = 32, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                          verbose=1, cache_dir=None) -> Path:
    """A checkpoint of ``arch`` pretrained on ``source``, from the cache or trained now (then cached).

    The default is the offline transfer demo's source: kcnn's synthetic glyphs, made the way scikit-learn's
    digits were made (a glyph drawn in a 32x32 bitmap, 4x4 blocks counted into an 8x8 image of 0..16), which is
    why they transfer to the digits. The cache key holds every setting that changes the weights (the Keras dtype
    policy it trains under among them), so a changed setting trains anew. Safe under concurrency (a tuning chief
    and its workers asking at once): each process trains into its own temporary folder and renames it into place;
    a process that finds the checkpoint already there keeps that one and deletes only its own temporary folder.
    """
    import keras

    from kcnn import data as kdata
    from kcnn import transfer

    policy = keras.mixed_precision.global_policy().name  # bfloat16 pretraining gives other weights
    key = (f"{arch}-{source.replace(':', '_').replace('/', '_')}-n{examples}-e{epochs}-px{image_size}"
           f"-b{batch_size}-lr{lr:g}-s{seed}-v{PRETRAIN_VERSION}{'' if policy == 'float32' else '-' + policy}")
    directory = Path(cache_dir or cache_root() / "pretrained") / key
    if (directory / transfer.CHECKPOINT_META).is_file() and (directory / transfer.CHECKPOINT_MODEL).is_file():
        if verbose:
            print(f"pretrained {arch}: using the cached checkpoint {directory}", flush=True)
        return directory
    if verbose:
        print(f"pretraining {arch} on {examples:,} '{source}' images for {epochs} epochs "
              f"(cached at {directory} for next time)", flush=True)
    started = time.perf_counter()
    splits = kdata.load(source, image_size=image_size, batch_size=batch_size, seed=seed,
                        val_fraction=0.05, test_fraction=0.05, **size_option(source, examples))
    bb = transfer.backbone(arch, None, (image_size, image_size, 3))
    model = transfer.classifier(bb, len(splits.class_names))
    transfer.fit_schedule(model, bb, pretrain_schedule(epochs, lr), splits, verbose=verbose,
                          augmented=False, feature_cache=False)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = files.partial_dir(directory)
    try:
        transfer.save_checkpoint(tmp, model, arch=arch, input_shape=bb.input_shape,
                                 class_names=splits.class_names, preprocessing=bb.preprocessing)
    except BaseException:
        files.discard_partial_dir(tmp)  # only this process's own temporary folder
        raise
    if not files.publish_dir(tmp, directory) and not (directory / transfer.CHECKPOINT_META).is_file():
        raise OSError(f"cannot publish the pretrained checkpoint at {directory}")
    if verbose:
        print(f"pretraining took {time.perf_counter() - started:.0f} s", flush=True)
    return directory
