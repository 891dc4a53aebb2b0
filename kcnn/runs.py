"""The run folder: what one training job writes, how it is resumed, and what kcnn may delete.

A run folder holds::

    kcnn-run.json    the marker: written first when kcnn opens the folder; only a folder holding it is ever
                     replaced by --overwrite (kcnn deletes only what kcnn made)
    config.toml      the settings, enough to rerun the job
    state.json       (while running) finished epochs, history rows, phase records and the checkpoint's name
    checkpoint-NNNN.npz  (while running) the last finished epoch: every model variable (weights, batch-norm
                     statistics, dropout seeds), the optimizer's variables (slots, iteration count: the
                     learning-rate schedule's position, a weight average) and the epoch (the data order's position)
    best-NNNN.npz    (while running, with --restore-best) the model variables of the best epoch so far
    model.keras, labels.json, history.csv, report.json, curves.png, confusion.png   (when finished)

Writes are atomic: a checkpoint goes to a temporary name, is flushed to disk and renamed, and ``state.json`` names
it only after it exists; the previous checkpoint is deleted last. One epoch's end is one write of ``state.json``:
the history row, the checkpoint's name, the record of a phase that ends with the epoch and the best epoch so far
together. A run killed at any moment therefore leaves the last good checkpoint usable and its state whole.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kcnn.files import (TEMP_FILE, TEMP_MARKER, FilesError, atomic_write_bytes, atomic_write_text,  # noqa: F401
                        check_only_own, clear_owned, discard, disk_error, foreign_entries, remove_owned)

MARKER = "kcnn-run.json"
MARKER_FORMAT = "kcnn-run"
FINAL_FILES = ("model.keras", "report.json")
RECIPES = ("finetune", "train", "pretrain", "tune", "lr_find")
_CHECKPOINT_NAME = re.compile(r"^checkpoint-\d{4,}\.npz$")
_BEST_NAME = re.compile(r"^best-\d{4,}\.npz$")
_STEP_NAME = re.compile(r"^step-\d{4,}-\d{7,}\.npz$")
#: What kcnn writes in a run folder of train / finetune / pretrain (glob patterns): ``--overwrite`` deletes these and
#: refuses when the folder holds anything else. ``export``/``export.json``: recipes.export's default output.
RUN_FILES = (MARKER, "config.toml", "state.json", "history.csv", "checkpoint-*.npz", "best-*.npz", "step-*.npz",
             "model.keras", "labels.json", "report.json", "kcnn.json", "curves.png", "confusion.png", "gradcam.png",
             "top_losses.png", "augment.png", "logs", "error.log", "export", "export.json")
#: What ``recipes.tune`` writes in its folder (keras-tuner's project folder is ``search``).
TUNE_FILES = RUN_FILES + ("search.json", "search", "trials.csv", "trials.png", "best_hyperparameters.json")
#: What ``recipes.lr_find`` writes in its folder.
LR_FIND_FILES = (MARKER, "lr_find.png", "lr_find.json", "error.log")


class RunError(FilesError):
    """A run folder that cannot be used as asked (finished run without --overwrite, resume mismatch, ...)."""


def default_out(recipe: str) -> Path:
    """``runs/<recipe>-<YYYYmmdd-HHMMSS>``."""
    return Path("runs") / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"


def new_file(path) -> Path:
    """``path``, or ``path`` with ``-2``, ``-3``, ... before its suffix when that name is taken: a file kcnn writes
    without replacing anything."""
    path = Path(path)
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    candidate.parent.mkdir(parents=True, exist_ok=True)
    return candidate


# --- writing files safely -----------------------------------------------------------------------------------------

def jsonable(value):
    """``value`` as plain JSON types (paths and other objects become strings)."""
    return json.loads(json.dumps(value, default=str))


# --- TOML (the standard library reads TOML; tomli-w writes it) ---------------------------------------------------

def _toml_ready(value, where: str):
    """``value`` as TOML types: None dropped from tables (unset), paths as text, tuples as arrays, NumPy scalars
    as Python numbers; a None inside an array, or a type TOML has no form for, is a `RunError` naming ``where``."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise RunError(f"cannot write {where}: key {key!r} is not text")
            if item is not None:
                out[key] = _toml_ready(item, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        if any(item is None for item in value):
            raise RunError(f"cannot write {where}: TOML arrays cannot hold None ({list(value)!r})")
        return [_toml_ready(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    raise RunError(f"cannot write {where}: a {type(value).__name__} has no TOML form ({value!r})")


def dumps_toml(config: dict) -> str:
    """``config`` as TOML (`tomli_w`): tables and arrays of tables at any depth, NaN and infinities, paths; keys
    whose value is None are left out (unset). ``tomllib.loads`` of the text gives ``config`` back.

    Raises:
        RunError: a value TOML cannot hold (None inside an array, an object), before anything is written.
    """
    import tomli_w

    return tomli_w.dumps(_toml_ready(dict(config), "config"))


def write_history_csv(path, history: list[dict]) -> None:
    """One row per epoch: epoch, phase, lr, then every metric seen."""
    keys = ["epoch", "phase", "lr"]
    for row in history:
        keys += [k for k in row if k not in keys]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in keys})
    atomic_write_text(path, buffer.getvalue())


# --- what a folder holds -------------------------------------------------------------------------------------------

def read_marker(path) -> dict | None:
    """The marker of the kcnn run in folder ``path``, or None if the folder holds none."""
    marker = Path(path) / MARKER
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MARKER_FORMAT else None


def holds_kcnn_run(path) -> bool:
    """Whether ``path`` is a folder that kcnn made for a run (it holds kcnn's marker)."""
    return Path(path).is_dir() and read_marker(path) is not None


def check_out(path, *, recipe: str, overwrite: bool = False, resume: bool = False) -> str:
    """Decide what opening ``path`` as a run folder would do, without touching it.

    Returns:
        ``"new"`` (missing or empty folder), ``"overwrite"`` (a kcnn run to replace) or ``"resume"``.

    Raises:
        RunError: one line naming the folder and the fix: a file, a non-empty folder kcnn did not make, a
            finished run without --overwrite, an unfinished one without --resume, --overwrite with --resume.
    """
    p = Path(path)
    if overwrite and resume:
        raise RunError("--overwrite and --resume contradict each other: --resume continues the run in --out, "
                       "--overwrite replaces it; pass one")
    if p.exists() and not p.is_dir():
        raise RunError(f"--out {p} is a file, not a folder; choose another --out")
    try:
        # a temporary folder kcnn made for a worker (kcnn.files.make_temp_dir) holds only its marker: empty
        empty = not p.exists() or not any(c.name != TEMP_MARKER for c in p.iterdir())
    except OSError as err:
        raise disk_error(p, err) from None
    if empty:
        if resume:
            raise RunError(f"--resume: {p} holds no run to resume; run without --resume to start one")
        return "new"
    marker = read_marker(p)
    if marker is None:
        raise RunError(f"--out {p} is a folder kcnn did not make (no {MARKER}); kcnn never replaces it, even "
                       "with --overwrite: choose an empty or new folder")
    finished = all((p / f).exists() for f in FINAL_FILES)
    if resume:
        if finished:
            raise RunError(f"{p} holds a finished run; nothing to resume (use --overwrite to run it again)")
        if not (p / "state.json").is_file():
            raise RunError(f"{p} holds no resumable run (no state.json); use another --out or --overwrite")
        if marker.get("recipe") != recipe:
            raise RunError(f"--resume {p}: it holds a {marker.get('recipe')} run, not a {recipe} run")
        return "resume"
    if not overwrite:
        what = "a finished run" if finished else "an unfinished run (use --resume to continue it)"
        raise RunError(f"{p} already holds {what}; pass --overwrite to replace it, or choose another --out")
    check_only_own(p, owned_files(marker.get("recipe")), error=RunError)
    return "overwrite"


def owned_files(recipe) -> tuple:
    """The glob patterns of what ``recipe`` writes in its folder (`RUN_FILES`, `TUNE_FILES`, `LR_FIND_FILES`)."""
    return {"tune": TUNE_FILES, "lr_find": LR_FIND_FILES}.get(recipe, RUN_FILES)


@dataclass
class CheckpointEvery:
    """How often `fit_run` checkpoints inside a long epoch: every ``steps`` training steps, or every ``seconds``
    (whichever is set; neither: only at epoch ends). Parsed from ``"500"`` (steps), ``"10min"``, ``"90s"``,
    ``"1h"`` or ``"off"``.

    Example:
        >>> CheckpointEvery.parse("10min").seconds, CheckpointEvery.parse(500).steps
        (600.0, 500)
    """

    steps: int | None = None
    seconds: float | None = None

    UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0}

    def __post_init__(self):
        self.start()

    @classmethod
    def parse(cls, value) -> "CheckpointEvery":
        if isinstance(value, CheckpointEvery):
            return value
        if value is None or (isinstance(value, str) and value.strip().lower() in ("off", "none", "0", "")):
            return cls()
        if isinstance(value, bool):
            raise ValueError(f"checkpoint_every must be steps, a time like '10min', or 'off'; got {value!r}")
        if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
            steps = int(value)
            if steps < 1:
                raise ValueError(f"checkpoint_every: a number of steps must be >= 1; got {value!r}")
            return cls(steps=steps)
        text = str(value).strip().lower()
        for unit in sorted(cls.UNITS, key=len, reverse=True):
            number = text[: -len(unit)]
            if text.endswith(unit) and number.replace(".", "", 1).isdigit() and float(number) > 0:
                return cls(seconds=float(number) * cls.UNITS[unit])
        raise ValueError(f"checkpoint_every must be a number of steps (e.g. 500), a time (e.g. 10min, 90s, 1h) or "
                         f"'off'; got {value!r}")

    def start(self, step: int = 0) -> None:
        """Count from now and from ``step`` of the current epoch (after a checkpoint; 0 at an epoch's end)."""
        self._since, self._last_step = time.perf_counter(), int(step)

    def due(self, step: int) -> bool:
        """Whether a checkpoint is due after ``step`` steps of the current epoch."""
        if self.steps is not None:
            return step - self._last_step >= self.steps
        if self.seconds is not None:
            return time.perf_counter() - self._since >= self.seconds
        return False


# --- the run folder ------------------------------------------------------------------------------------------------

@dataclass
class RunDir:
    """A run folder, opened for a new run or for resuming an unfinished one.

    Args:
        path: The folder.
        overwrite: Replace a folder that holds a kcnn run (never any other folder).
        resume: Continue the unfinished run in the folder from its last finished epoch.
        config: The run's settings; on resume, they must match what the folder was started with (except the
            keys in ``RESUME_FREE``).
        recipe: Which job made the run (written in the marker; a resume must be the same job).
    """

    path: Path
    overwrite: bool = False
    resume: bool = False
    config: dict = field(default_factory=dict)
    recipe: str = "train"
    state: dict = field(default_factory=dict)

    RESUME_FREE = ("resume", "overwrite", "out", "verbose", "checkpoint_every")

    def __post_init__(self):
        self.path = Path(self.path)

    @property
    def finished(self) -> bool:
        return all((self.path / f).exists() for f in FINAL_FILES)

    def check(self) -> str:
        """`check_out` plus, on resume, the saved state and settings; touches nothing."""
        dumps_toml(self.config)  # a setting TOML cannot hold is refused before anything is written
        action = check_out(self.path, recipe=self.recipe, overwrite=self.overwrite, resume=self.resume)
        if action == "resume":
            self.state = self._read_state()
            old = {k: v for k, v in self.state.get("config", {}).items() if k not in self.RESUME_FREE}
            new = {k: v for k, v in jsonable(self.config).items() if k not in self.RESUME_FREE}
            if "precision" in new:  # runs started before the setting existed trained in float32
                old.setdefault("precision", "float32")
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if changed:
                diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
                raise RunError(f"--resume {self.path}: settings differ from the interrupted run ({diffs}); "
                               "resume with the same settings, or use --overwrite")
        return action

    def open(self) -> "RunDir":
        """Check the folder and prepare it; raises RunError without touching anything on a refusal."""
        action = self.check()
        if action == "resume":
            for leftover in self.path.iterdir():  # temporary files of a write that was interrupted
                if TEMP_FILE.match(leftover.name):
                    with contextlib.suppress(OSError):
                        discard(leftover)
            return self
        p = self.path
        try:
            if action == "overwrite":  # a kcnn run folder: only the files kcnn writes, or a refusal naming others
                clear_owned(p, owned_files((read_marker(p) or {}).get("recipe")))
            p.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise disk_error(p, err) from None
        atomic_write_text(p / MARKER, json.dumps({"format": MARKER_FORMAT, "recipe": self.recipe,
                                                  "created": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
        self.state = {"config": jsonable(self.config), "epochs_done": 0, "history": [], "checkpoint": None,
                      "phases": []}
        atomic_write_text(p / "config.toml", dumps_toml(self.config))
        self._save_state()
        return self

    # state -------------------------------------------------------------------------------------------------------
    def _read_state(self) -> dict:
        state_file = self.path / "state.json"
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError) as err:
            raise RunError(f"{state_file} is unreadable ({type(err).__name__}); the run cannot be resumed: "
                           "use --overwrite to start it again") from None
        if not isinstance(state, dict) or not isinstance(state.get("history", []), list):
            raise RunError(f"{state_file} is not a kcnn run state; use --overwrite to start the run again")

        def count(value) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        # every part a resume reads, checked here: a malformed one is a one-line refusal, not a crash later
        for key, ok, what in (
                ("config", lambda v: isinstance(v, dict), "an object of settings"),
                ("history", lambda v: all(isinstance(r, dict) and count(r.get("epoch")) for r in v),
                 "a list of rows with an integer epoch"),
                ("phases", lambda v: isinstance(v, list) and all(isinstance(p, dict) for p in v),
                 "a list of phase records"),
                ("best", lambda v: v is None or (isinstance(v, dict) and count(v.get("epoch"))),
                 "null or an object with an integer epoch")):
            if key in state and not ok(state[key]):
                raise RunError(f"{state_file}: {key} is not {what}; it is not a kcnn run state: use --overwrite "
                               "to start the run again")
        name = state.get("checkpoint")
        if name is not None:
            if not isinstance(name, str) or not _CHECKPOINT_NAME.match(name) or Path(name).name != name:
                raise RunError(f"{state_file} names checkpoint {name!r}, which is not a checkpoint file of this "
                               "run folder; refusing to use it (use --overwrite to start the run again)")
            if not (self.path / name).is_file():
                raise RunError(f"{state_file} names checkpoint {name}, which is missing; use --overwrite to "
                               "start the run again")
        epochs = state.get("epochs_done", 0)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise RunError(f"{state_file}: epochs_done {epochs!r} is not a count; use --overwrite")
        return state

    @property
    def epochs_done(self) -> int:
        return int(self.state.get("epochs_done", 0))

    @property
    def history(self) -> list[dict]:
        return list(self.state.get("history", []))

    def _save_state(self):
        atomic_write_text(self.path / "state.json", json.dumps(self.state, indent=1))

    def checkpoint(self, row: dict, arrays: dict[str, np.ndarray] | None = None, *, phase: dict | None = None,
                   best: dict | None = None, best_arrays: dict[str, np.ndarray] | None = None,
                   epochs_done: int | None = None) -> None:
        """Record one finished epoch: the files first (atomically), then one write of the state that names them.

        Args:
            row: The epoch's history row (``epoch`` is the global 1-based number).
            arrays: What to save (see `kcnn.transfer.training_state`); None records the row only.
            phase: The record of the phase this epoch is part of (as `record_phase` takes), in the same write.
            best: The best epoch so far (``epoch``, scores), in the same write; with ``best_arrays`` (the model
                variables of that epoch) they are saved as ``best-NNNN.npz`` first.
            epochs_done: The epochs the state counts as done (default ``row["epoch"]``): a phase stopped early
                counts its planned epochs, so that a resume starts the next phase.
        """
        epoch = int(row["epoch"])
        old = self.state.get("checkpoint")
        old_best = (self.state.get("best") or {}).get("file")
        name = old
        if arrays is not None:
            name = f"checkpoint-{epoch:04d}.npz"
            self._write_arrays(name, arrays)
        if best is not None:
            best = dict(best)
            if best_arrays is not None:
                best["file"] = f"best-{int(best['epoch']):04d}.npz"
                self._write_arrays(best["file"], best_arrays)
            else:
                best.setdefault("file", old_best)
            self.state["best"] = jsonable(best)
        if phase is not None:
            self._merge_phase(phase)
        self.state["history"] = [r for r in self.state.get("history", []) if int(r["epoch"]) < epoch] + [row]
        self.state["epochs_done"] = epoch if epochs_done is None else int(epochs_done)
        self.state["checkpoint"] = name
        old_step = (self.state.pop("inside_epoch", None) or {}).get("file")  # the epoch's end supersedes it
        self._save_state()
        write_history_csv(self.path / "history.csv", self.state["history"])
        new_best = (self.state.get("best") or {}).get("file")
        for stale in {old, old_best, old_step} - {name, new_best, None}:
            with contextlib.suppress(OSError):
                remove_owned(self.path, stale, RUN_FILES)

    def checkpoint_inside(self, arrays: dict[str, np.ndarray], *, epoch: int, step: int) -> None:
        """Record a checkpoint written inside epoch ``epoch`` (1-based) after ``step`` of its training steps:
        ``step-EEEE-SSSSSSS.npz`` first, then the state names it (``inside_epoch``); the previous one goes last.
        The next epoch-end `checkpoint` supersedes it."""
        old = (self.state.get("inside_epoch") or {}).get("file")
        name = f"step-{int(epoch):04d}-{int(step):07d}.npz"
        self._write_arrays(name, arrays)
        self.state["inside_epoch"] = {"epoch": int(epoch), "step": int(step), "file": name}
        self._save_state()
        if old and old != name:
            with contextlib.suppress(OSError):
                remove_owned(self.path, old, RUN_FILES)

    def inside_epoch(self) -> tuple[int, dict[str, np.ndarray]] | None:
        """``(steps done, arrays)`` of a checkpoint written inside the epoch after the last finished one, or None."""
        entry = self.state.get("inside_epoch")
        if not entry:
            return None
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not _STEP_NAME.match(name) or int(entry.get("epoch", -1)) != \
                self.epochs_done + 1:
            raise RunError(f"{self.path / 'state.json'}: its inside_epoch entry {entry!r} is not one of this run's; "
                           "use --overwrite to start the run again")
        return int(entry["step"]), self._read_arrays(name)

    def _write_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(self.path / name, buffer.getvalue())

    def load_best(self) -> dict[str, np.ndarray] | None:
        """The model arrays of the best epoch kept so far (``--restore-best``), or None."""
        name = (self.state.get("best") or {}).get("file")
        if not name:
            return None
        if not isinstance(name, str) or not _BEST_NAME.match(name):
            raise RunError(f"{self.path / 'state.json'} names best-epoch file {name!r}, which is not one of this "
                           "run's; use --overwrite to start the run again")
        return self._read_arrays(name)

    def load_checkpoint(self) -> dict[str, np.ndarray] | None:
        """The arrays of the last checkpoint, or None when no epoch has finished."""
        name = self.state.get("checkpoint")
        return self._read_arrays(name) if name else None

    def _read_arrays(self, name: str) -> dict[str, np.ndarray]:
        try:
            with np.load(self.path / name, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError) as err:
            raise RunError(f"{self.path / name} is unreadable ({err}); use --overwrite to start the run "
                           "again") from None

    def record_phase(self, info: dict) -> None:
        """Record (or update) a phase's summary: index, name, blocks, epochs, seconds summed over resumes."""
        self._merge_phase(info)
        self._save_state()

    def _merge_phase(self, info: dict) -> None:
        phases = [p for p in self.state.get("phases", []) if p.get("index") != info.get("index")]
        self.state["phases"] = sorted(phases + [jsonable(info)], key=lambda p: p.get("index", 0))

    def phase_seconds(self, index: int) -> float:
        """Seconds a phase already ran in earlier (interrupted) parts of this run."""
        previous = next((p for p in self.state.get("phases", []) if p.get("index") == index), {})
        return float(previous.get("seconds", 0.0))

    def save_extra(self, key: str, value) -> None:
        self.state[key] = jsonable(value)
        self._save_state()

    def complete(self) -> None:
        """Remove the resume state once the final files are written."""
        for pattern in ("checkpoint-*.npz", "best-*.npz", "step-*.npz"):
            for f in self.path.glob(pattern):
                remove_owned(self.path, f.name, RUN_FILES)
        remove_owned(self.path, "state.json", RUN_FILES)
