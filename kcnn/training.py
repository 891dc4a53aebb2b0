"""Training jobs: seeding, the run-folder fit (checkpoints, exact resume), evaluation, reports, the demo's cache.

The run folder itself (marker, state, checkpoints, atomic writes) is `kcnn.runs`; the fit engines are
`kcnn.transfer.fit_schedule` (Keras fit: one device or MirroredStrategy) and `kcnn.distribute.fit_distributed`
(a custom loop under MultiWorkerMirroredStrategy). `fit_run` joins them: both run the same phase plan and call
the same per-epoch hook, which writes one history row and one checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import time
import uuid
from pathlib import Path

import keras
import numpy as np

import kcnn
from kcnn import perf, plots
from kcnn.runs import (FINAL_FILES, RunDir, RunError, atomic_write_text, default_out, dumps_toml,  # noqa: F401
                       jsonable, write_history_csv)


def set_seed(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and TensorFlow; optionally make TensorFlow ops deterministic.

    Determinism makes two runs on the same machine give the same numbers (and a resumed run end where an
    uninterrupted one ends); it costs some speed because TensorFlow must pick deterministic kernels.
    """
    keras.utils.set_random_seed(int(seed))
    if deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


# --- evaluation and the report --------------------------------------------------------------------------------------

def evaluate(model, dataset, class_names) -> dict:
    """Accuracy, loss, per-class precision/recall and the confusion matrix of ``model`` on ``dataset``."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true, probs = [], []
    for x, y in dataset:
        probs.append(np.asarray(model(x, training=False)))
        y_true.append(np.asarray(y))
    probs = np.concatenate(probs)
    y_true = np.concatenate(y_true).astype(int).reshape(-1)
    probs = probs.reshape(len(y_true), -1)
    y_pred = probs.argmax(axis=1)
    labels = list(range(len(class_names)))
    precision, recall, _, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    eps = 1e-7
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0))))
    return {
        "test_accuracy": float(np.mean(y_pred == y_true)),
        "test_loss": loss,
        "test_examples": int(len(y_true)),
        "per_class": {
            str(name): {"precision": float(p), "recall": float(r), "support": int(s)}
            for name, p, r, s in zip(class_names, precision, recall, support)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def versions() -> dict:
    import tensorflow as tf

    return {"kcnn": kcnn.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def finish_run(run: RunDir, model, *, test_ds, class_names, history, seed, extra: dict | None = None,
               title: str = "", before_report=None, comparison: list[dict] | None = None) -> dict:
    """Evaluate on test and write model.keras, labels.json, history.csv, the plots, then report.json.

    report.json is written last and atomically: a folder with it is a finished run. ``before_report(run)``
    writes what must exist before that (e.g. a pretraining checkpoint's metadata). ``comparison``: history rows
    drawn beside the run's in curves.png (the from-scratch comparison)."""
    metrics = evaluate(model, test_ds, class_names)
    report = {
        **{k: metrics[k] for k in ("test_accuracy", "test_loss", "test_examples", "per_class")},
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


def fit_run(run: RunDir, model, bb, schedule, splits, *, strategy=None, augmented: bool, verbose=1,
            steps_per_execution: int | None = None, callbacks=()) -> list[dict]:
    """Fit ``schedule`` inside ``run``: a checkpoint and a history row per epoch, exact resume, phase records.

    The engine follows the strategy: MultiWorkerMirroredStrategy runs `kcnn.distribute.fit_distributed` (Keras'
    fit fails there); MirroredStrategy runs `kcnn.transfer.fit_schedule` with synchronized batch norm; no
    strategy runs `kcnn.transfer.fit_schedule`. Both get the same hooks. A resumed run restores every model
    and optimizer variable of its last checkpoint and continues the data order at the next epoch, so with the
    same seed it ends with the weights of an uninterrupted run.

    Returns:
        The run's history rows (list of dicts: epoch, phase, lr, metrics).
    """
    import tensorflow as tf

    from kcnn import distribute, transfer

    strategy = strategy or tf.distribute.get_strategy()
    resume = run.load_checkpoint()
    initial = run.epochs_done
    if resume is not None:
        transfer.restore_model_state(model, resume)
    if initial and verbose and distribute.is_chief(strategy):
        print(f"resuming {run.path} after epoch {initial} of {schedule.total_epochs}", flush=True)

    def on_epoch_end(row, model_, optimizer, phase_number):
        record = {"epoch": row["epoch"], "phase": row["phase_name"], "lr": row.get("lr"),
                  **{k: v for k, v in row.items() if k not in ("epoch", "phase", "phase_name", "lr")}}
        run.checkpoint(record, transfer.training_state(model_, optimizer, phase=phase_number,
                                                       epoch=row["epoch"]))

    def on_phase_end(number, phase, history):
        record = next(p for p in history.phases if p["phase"] == number)
        run.record_phase({"index": number, "name": phase.name, "train": record["train"],
                          "blocks": record["blocks"], "epochs": [record["first_epoch"], record["last_epoch"]],
                          "lr": phase.lr, "cached_features": record["cached"],
                          "seconds": round(run.phase_seconds(number) + record["seconds"], 3)})

    if distribute.is_chief(strategy):
        callbacks = [keras.callbacks.TensorBoard(str(run.path / "logs"), write_graph=False), *callbacks]
    if initial >= schedule.total_epochs:
        return run.history
    try:
        _fit_engine(model, bb, schedule, splits, strategy=strategy, augmented=augmented,
                    steps_per_execution=steps_per_execution, callbacks=list(callbacks), initial_epoch=initial,
                    verbose=verbose, on_phase_end=on_phase_end, on_epoch_end=on_epoch_end, resume_state=resume)
    except transfer.Diverged as err:
        run.save_extra("diverged", {"epoch": err.epoch, "phase": err.phase, "loss": str(err.loss)})
        raise
    return run.history


def _fit_engine(model, bb, schedule, splits, *, strategy, augmented, steps_per_execution, **common):
    """The engine for ``strategy`` (see `fit_run`); ``common``: the arguments both engines take."""
    import tensorflow as tf

    from kcnn import distribute, transfer

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
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
    tmp = directory.with_name(f"{directory.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        transfer.save_checkpoint(tmp, model, arch=arch, input_shape=bb.input_shape,
                                 class_names=splits.class_names, preprocessing=bb.preprocessing)
        os.rename(tmp, directory)  # atomic; fails if another process put its checkpoint there first
    except OSError:
        if not (directory / transfer.CHECKPOINT_META).is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only this process's own temporary folder
    if verbose:
        print(f"pretraining took {time.perf_counter() - started:.0f} s", flush=True)
    return directory
