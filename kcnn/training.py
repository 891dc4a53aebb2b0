"""Run folders, per-epoch checkpoints and resume, evaluation reports.

A run folder holds everything one training job produced::

    model.keras      the trained model (takes raw RGB images of any size where the model was built that way)
    labels.json      class names, in output order
    config.toml      the settings, enough to rerun the job
    history.csv      one row per epoch: epoch, phase, lr, losses, metrics
    report.json      test accuracy, per-class precision/recall, phases with epochs and wall time, versions, seed
    curves.png       loss and accuracy with phase boundaries
    confusion.png    the test confusion matrix
    logs/            TensorBoard logs
    state.json       (while running) the last finished epoch and its checkpoint, for --resume
"""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

import kcnn
from kcnn import plots

FINAL_FILES = ("model.keras", "report.json")


class RunError(ValueError):
    """A run folder that cannot be used as asked (finished run without --overwrite, resume mismatch, ...)."""


def set_seed(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and TensorFlow; optionally make TensorFlow ops deterministic.

    Determinism makes two runs on the same machine give the same numbers; it costs some speed because
    TensorFlow must pick deterministic kernels (measured in the README).
    """
    keras.utils.set_random_seed(int(seed))
    if deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def default_out(recipe: str) -> Path:
    return Path("runs") / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- TOML (the standard library reads TOML but does not write it) -------------------------------------------------

def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return json.dumps(str(value))
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Path):
        value = str(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def dumps_toml(config: dict) -> str:
    """Write a dict of scalars, lists and one level of sub-tables (or lists of tables) as TOML."""
    lines, tables = [], []
    for key, value in config.items():
        if value is None:
            continue
        if isinstance(value, dict):
            tables.append((key, value, False))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables.append((key, value, True))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for key, value, is_array in tables:
        for table in (value if is_array else [value]):
            lines.append("")
            lines.append(f"[[{key}]]" if is_array else f"[{key}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None)
    return "\n".join(lines) + "\n"


# --- the run folder -------------------------------------------------------------------------------------------------

@dataclass
class RunDir:
    """A run folder, opened for a new run or for resuming an unfinished one.

    Args:
        path: The folder.
        overwrite: Replace a folder that holds a finished (or unfinished) run.
        resume: Continue the unfinished run in the folder from its last finished epoch.
        config: The run's settings; on resume, they must match what the folder was started with (except the
            keys in ``RESUME_FREE``).
    """

    path: Path
    overwrite: bool = False
    resume: bool = False
    config: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)

    RESUME_FREE = ("resume", "overwrite", "out", "verbose")

    def __post_init__(self):
        self.path = Path(self.path)

    @property
    def finished(self) -> bool:
        return all((self.path / f).exists() for f in FINAL_FILES)

    def open(self) -> "RunDir":
        """Check the folder and prepare it; raises RunError without touching anything on a refusal."""
        p = self.path
        exists = p.exists() and any(p.iterdir()) if p.is_dir() else p.exists()
        if p.exists() and not p.is_dir():
            raise RunError(f"--out {p} is a file, not a folder; choose another --out")
        if exists and self.resume and not self.overwrite:
            if self.finished:
                raise RunError(f"{p} holds a finished run; nothing to resume (use --overwrite to run it again)")
            state_file = p / "state.json"
            if not state_file.exists():
                raise RunError(f"{p} holds no resumable run (no state.json); use another --out or --overwrite")
            self.state = json.loads(state_file.read_text())
            old = {k: v for k, v in self.state.get("config", {}).items() if k not in self.RESUME_FREE}
            new = {k: v for k, v in _jsonable(self.config).items() if k not in self.RESUME_FREE}
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if changed:
                diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
                raise RunError(f"--resume {p}: settings differ from the interrupted run ({diffs}); "
                               "resume with the same settings, or use --overwrite")
            return self
        if exists and not self.overwrite:
            what = "a finished run" if self.finished else "an unfinished run (use --resume to continue it)"
            raise RunError(f"{p} already holds {what}; pass --overwrite to replace it, or choose another --out")
        if exists and self.overwrite:
            shutil.rmtree(p)
        p.mkdir(parents=True, exist_ok=True)
        self.state = {"config": _jsonable(self.config), "epochs_done": 0, "history": [], "checkpoint": None,
                      "phases": []}
        self._save_state()
        (p / "config.toml").write_text(dumps_toml(self.config))
        return self

    # state -------------------------------------------------------------------------------------------------------
    @property
    def epochs_done(self) -> int:
        return int(self.state.get("epochs_done", 0))

    @property
    def history(self) -> list[dict]:
        return list(self.state.get("history", []))

    def _save_state(self):
        _atomic_write(self.path / "state.json", json.dumps(self.state, indent=1))

    def checkpoint(self, model, row: dict) -> None:
        """Record one finished epoch: weights first (new file), then the state that points to them."""
        epoch = int(row["epoch"])
        name = f"checkpoint-{epoch:04d}.weights.h5"
        model.save_weights(self.path / name)
        old = self.state.get("checkpoint")
        self.state["history"] = [r for r in self.state.get("history", []) if int(r["epoch"]) < epoch] + [row]
        self.state["epochs_done"] = epoch
        self.state["checkpoint"] = name
        self._save_state()
        write_history_csv(self.path / "history.csv", self.state["history"])
        if old and old != name and (self.path / old).exists():
            (self.path / old).unlink()

    def restore(self, model) -> int:
        """Load the last checkpoint's weights into ``model``; returns the number of finished epochs."""
        name = self.state.get("checkpoint")
        if name:
            model.load_weights(self.path / name)
        return self.epochs_done

    def record_phase(self, info: dict) -> None:
        phases = [p for p in self.state.get("phases", []) if p.get("index") != info.get("index")]
        self.state["phases"] = sorted(phases + [info], key=lambda p: p.get("index", 0))
        self._save_state()

    def save_extra(self, key: str, value) -> None:
        self.state[key] = _jsonable(value)
        self._save_state()

    def complete(self) -> None:
        """Remove the resume state once the final files are written."""
        for f in self.path.glob("checkpoint-*.weights.h5"):
            f.unlink()
        (self.path / "state.json").unlink(missing_ok=True)


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def write_history_csv(path, history: list[dict]) -> None:
    keys = ["epoch", "phase", "lr"]
    for row in history:
        keys += [k for k in row if k not in keys]
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k, "") for k in keys})
    os.replace(tmp, path)


class EpochRecorder(keras.callbacks.Callback):
    """Checkpoint the run after every epoch: weights, history row (with phase and learning rate), state.

    Set ``phase`` (a name) before each fit; the recipes' schedule runner does that.
    """

    def __init__(self, run: RunDir, phase: str = ""):
        super().__init__()
        self.run = run
        self.phase = phase

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "phase": self.phase, "lr": current_lr(self.model)}
        row.update({k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"})
        self.run.checkpoint(self.model, row)


def current_lr(model) -> float | None:
    opt = getattr(model, "optimizer", None)
    if opt is None:
        return None
    try:
        return float(keras.ops.convert_to_numpy(opt.learning_rate))
    except Exception:  # a schedule object: evaluate it at the current step
        try:
            return float(keras.ops.convert_to_numpy(opt.learning_rate(opt.iterations)))
        except Exception:
            return None


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
               title: str = "") -> dict:
    """Evaluate on test and write model.keras, labels.json, history.csv, report.json and the plots."""
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
    (run.path / "labels.json").write_text(json.dumps(list(map(str, class_names)), indent=1))
    write_history_csv(run.path / "history.csv", history)
    plots.learning_curves(history, run.path / "curves.png", title=title)
    plots.confusion_matrix_plot(metrics["confusion_matrix"], class_names, run.path / "confusion.png")
    # saved uncompiled: the last phase's optimizer state is of no use to someone who loads the model
    keras.Model(model.inputs, model.outputs, name=model.name).save(run.path / "model.keras")
    _atomic_write(run.path / "report.json", json.dumps(_jsonable(report), indent=1))
    run.complete()
    return report


# --- jobs: what the recipes run, usable from Python too ----------------------------------------------------------

def cache_root() -> Path:
    """Where kcnn caches pretrained checkpoints: ``$KCNN_CACHE``, else ``$XDG_CACHE_HOME/kcnn``, else ~/.cache/kcnn."""
    if os.environ.get("KCNN_CACHE"):
        return Path(os.environ["KCNN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kcnn"


class _PhaseTagger(keras.callbacks.Callback):
    """Write each finished epoch to the run folder, tagged with the phase it belongs to."""

    def __init__(self, run: RunDir, schedule):
        super().__init__()
        self.run = run
        self.bounds = [(start, end, phase.name) for (start, end), phase in zip(schedule.boundaries(), schedule)]

    def on_epoch_end(self, epoch, logs=None):
        number = epoch + 1
        phase = next((name for start, end, name in self.bounds if start < number <= end), "")
        row = {"epoch": number, "phase": phase, "lr": None}
        row.update({k: float(v) for k, v in (logs or {}).items() if k != "learning_rate"})
        self.run.checkpoint(self.model, row)


class _PhaseRecorder:
    """``on_phase_end`` for a schedule fit inside a run folder: records each finished phase (epochs, wall
    time summed over resumed parts, cached features) and each epoch's learning rate for the history."""

    def __init__(self, run: RunDir):
        self.run = run
        self.lrs = {}

    def __call__(self, number, phase, history):
        record = next(p for p in history.phases if p["phase"] == number)
        previous = next((p for p in self.run.state.get("phases", []) if p.get("index") == number), {})
        self.run.record_phase({"index": number, "name": phase.name, "train": record["train"],
                               "blocks": record["blocks"], "epochs": [record["first_epoch"], record["last_epoch"]],
                               "lr": phase.lr, "cached_features": record["cached"],
                               "seconds": round(previous.get("seconds", 0.0) + record["seconds"], 3)})
        for row in history.epochs:
            self.lrs[row["epoch"]] = row.get("lr")

    def history(self) -> list:
        """The run's history rows, with the learning rates of the epochs recorded here filled in."""
        history = self.run.history
        for row in history:
            if row.get("lr") is None and row["epoch"] in self.lrs:
                row["lr"] = self.lrs[row["epoch"]]
        self.run.state["history"] = history
        return history


def fit_run(run: RunDir, model, bb, schedule, splits, *, augmented: bool, verbose=1,
            steps_per_execution: int | None = None, extra_callbacks=()):
    """Run ``schedule`` on ``model`` inside ``run``: per-epoch checkpoints, resume from the last finished epoch,
    phase records and one history across phases. Returns the history rows (list of dicts).

    ``steps_per_execution`` None: `kcnn.perf.DEFAULT_STEPS_PER_EXECUTION` (fit_schedule's default)."""
    from kcnn import perf, transfer

    if steps_per_execution is None:
        steps_per_execution = perf.DEFAULT_STEPS_PER_EXECUTION

    initial = run.restore(model)
    if initial and verbose:
        print(f"resuming {run.path} after epoch {initial} of {schedule.total_epochs}", flush=True)
    recorder = _PhaseRecorder(run)

    callbacks = [_PhaseTagger(run, schedule), keras.callbacks.TensorBoard(str(run.path / "logs"), write_graph=False),
                 *extra_callbacks]
    if initial < schedule.total_epochs:
        transfer.fit_schedule(model, bb, schedule, splits.train, splits.val, callbacks=callbacks,
                              initial_epoch=initial, verbose=verbose, augmented=augmented,
                              steps_per_execution=steps_per_execution, on_phase_end=recorder)
    return recorder.history()


def pretrain_schedule(epochs: int, lr: float):
    """The one schedule that trains a backbone from random weights (recipes.pretrain and the demo's cache):
    everything, Adam with cosine decay from ``lr``, and BN training. From random weights BN must learn its
    statistics; the Phase default, "frozen", would keep them at 0 and 1."""
    from kcnn import transfer

    return transfer.Schedule([transfer.Phase(epochs=epochs, train="all", lr=lr, schedule="cosine", bn="train",
                                             name="pretrain")])


#: Bumped when pretraining or the synthetic source changes, so that stale cached checkpoints are not reused
#: (2: BN statistics learned during pretraining, and the glyphs' pen-drawn forms).
_PRETRAIN_VERSION = 2


def pretrained_checkpoint(arch: str, *, source: str = "shapes", examples: int = 8000, epochs: int = 6,
                          image_size: int = 32, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                          verbose=1, cache_dir=None) -> Path:
    """A checkpoint of ``arch`` pretrained on ``source``, from the cache or trained now (then cached).

    The default is the offline transfer demo's source: kcnn's synthetic glyphs, made the way scikit-learn's
    digits were made (FINDINGS.md). The cache key holds every setting, so a changed setting trains anew.
    """
    from kcnn import data as kdata
    from kcnn import transfer

    key = (f"{arch}-{source.replace(':', '_').replace('/', '_')}-n{examples}-e{epochs}-px{image_size}-s{seed}"
           f"-v{_PRETRAIN_VERSION}")
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
                        val_fraction=0.05, test_fraction=0.05, **_size_option(source, examples))
    bb = transfer.backbone(arch, None, (image_size, image_size, 3))
    model = transfer.classifier(bb, len(splits.class_names))
    transfer.fit_schedule(model, bb, pretrain_schedule(epochs, lr), splits.train, splits.val, verbose=verbose,
                          augmented=False, feature_cache=False)
    tmp = directory.with_name(directory.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    transfer.save_checkpoint(tmp, model, arch=arch, input_shape=bb.input_shape, class_names=splits.class_names,
                             preprocessing=bb.preprocessing)
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    if verbose:
        print(f"pretraining took {time.perf_counter() - started:.0f} s", flush=True)
    return directory


def _size_option(source: str, examples: int) -> dict:
    return {"num_examples": examples} if source.split(":")[0] == "shapes" else {"limit": examples}
