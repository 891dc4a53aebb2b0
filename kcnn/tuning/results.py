"""Reading a search back: `trial_records` (one row per trial), `write_trials_csv`, `search_summary`,
`plot_trials`, `best_hyperparameters`, and `retrain` (the best configuration trained from scratch).

Also the small JSON helpers the tuners and ``recipes.tune`` write their files with: `write_json` (atomic:
written to a temporary file, then renamed) and `read_json` (None for a missing or unreadable file).
"""
from __future__ import annotations

import csv
import gc
import io
import json
import math
import time
from pathlib import Path

import keras
import numpy as np

from kcnn import files
from kcnn.tuning.hypermodels import fixed_hyperparameters

#: Per-trial record written into each trial folder by the tuners of `kcnn.tuning.make_tuner`.
TRIAL_FILE = "kcnn_trial.json"


def trial_records(tuner) -> list[dict]:
    """One row per trial, in the order they were started.

    Row keys: ``trial_id``, ``status`` (COMPLETED, FAILED, INVALID: crashed and waiting for a retry, RUNNING:
    interrupted, to be retried on resume), ``score`` (the objective of the best epoch), ``epochs`` (epochs
    trained in this trial: Hyperband's later rounds continue a checkpoint and count only their own),
    ``seconds``, ``worker`` (tuner id), ``runs``, every hyperparameter value (Hyperband's ``tuner/...``
    bookkeeping included) and ``reason`` (why a trial failed).

    Args:
        tuner: A tuner from `make_tuner` (on the chief in distributed mode).

    Returns:
        A list of dicts.
    """
    oracle = tuner.oracle
    order = list(getattr(oracle, "start_order", [])) or sorted(oracle.trials)
    order += [t for t in sorted(oracle.trials) if t not in order]
    rows = []
    for trial_id in order:
        trial = oracle.trials[trial_id]
        info = read_json(Path(tuner.project_dir) / f"trial_{trial_id}" / TRIAL_FILE) or {}
        score = trial.score
        if score is None and trial.metrics.exists(oracle.objective.name):
            score = trial.metrics.get_best_value(oracle.objective.name)
        row = {"trial_id": trial_id, "status": trial.status,
               "score": None if score is None or not math.isfinite(score) else float(score),
               "epochs": info.get("epochs"), "seconds": info.get("seconds"), "worker": info.get("worker"),
               "runs": info.get("runs")}
        row.update(trial.hyperparameters.values)
        reason = info.get("error") if trial.status != "COMPLETED" else None
        if not reason and trial.status in ("FAILED", "INVALID") and trial.message:
            lines = [line for line in str(trial.message).splitlines() if line.strip()]
            reason = one_line(lines[-1]) if lines else None
        row["reason"] = reason
        rows.append(row)
    return rows


def write_trials_csv(rows: list[dict], path) -> Path:
    """Write `trial_records` rows as CSV (fixed columns first, then hyperparameters, ``reason`` last)."""
    first = ["trial_id", "status", "score", "epochs", "seconds", "worker", "runs"]
    keys = list(first)
    for row in rows:
        keys += [k for k in row if k not in keys and k != "reason"]
    keys.append("reason")
    path = Path(path)
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in keys})
    files.atomic_write_text(path, buffer.getvalue())
    return path


def search_summary(rows: list[dict], objective: str = "val_accuracy") -> dict:
    """Counts and costs of a search: trials by status, total epochs and seconds, the best score.

    Args:
        rows: `trial_records` rows.
        objective: The objective's name ("loss" in it means lower is better).

    Returns:
        ``{"trials", "completed", "failed", "epochs", "seconds", "best_score", "best_trial"}``.
    """
    done = [r for r in rows if r["status"] == "COMPLETED" and r["score"] is not None]
    lower = "loss" in objective
    best = (min if lower else max)(done, key=lambda r: r["score"]) if done else None
    return {
        "trials": len(rows), "completed": len(done),
        "failed": sum(1 for r in rows if r["status"] in ("FAILED", "INVALID")),
        "epochs": int(sum(r["epochs"] or 0 for r in rows)),
        "seconds": round(float(sum(r["seconds"] or 0 for r in rows)), 1),
        "best_score": None if best is None else best["score"],
        "best_trial": None if best is None else best["trial_id"],
    }


def plot_trials(rows: list[dict], path, objective: str = "val_accuracy", title: str = "") -> Path:
    """Plot a search: each trial's score in start order (coloured by architecture) with the best so far, and
    the best score against the training epochs spent. Failed trials are marked with a red x on the axis.

    Args:
        rows: `trial_records` rows.
        path: Output PNG.
        objective: Name of the score, for the axis label.
        title: Figure title.

    Returns:
        The path written.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lower = "loss" in objective
    arch_key = next((k for k in ("model", "backbone") if any(k in r for r in rows)), None)
    archs = sorted({str(r.get(arch_key)) for r in rows}) if arch_key else ["trial"]
    tab10 = matplotlib.colormaps["tab10"]
    colors = {a: tab10(i % 10) for i, a in enumerate(archs)}
    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)  # renders off-screen; the user's pyplot backend and figures are left alone
    axes = fig.subplots(1, 2)
    ax = axes[0]
    best, best_curve, spent, spent_curve = None, [], 0, []
    scores = [r["score"] for r in rows if r["score"] is not None]
    floor = min(scores) if scores else 0.0
    for i, row in enumerate(rows):
        score = row["score"] if row["status"] == "COMPLETED" else None
        spent += row.get("epochs") or 0
        if score is not None:
            arch = str(row.get(arch_key)) if arch_key else "trial"
            ax.scatter(i, score, color=colors[arch], s=22, zorder=3)
            if best is None or (score < best if lower else score > best):
                best = score
        elif row["status"] in ("FAILED", "INVALID"):
            ax.scatter(i, floor, marker="x", color="red", s=30, zorder=3)
        best_curve.append(np.nan if best is None else best)
        spent_curve.append(spent)
    ax.plot(range(len(rows)), best_curve, "-", color="black", lw=1, label="best so far")
    for arch in archs if arch_key else []:
        ax.scatter([], [], color=colors[arch], label=arch, s=22)
    if any(r["status"] in ("FAILED", "INVALID") for r in rows):
        ax.scatter([], [], marker="x", color="red", label="failed")
    ax.set_xlabel("trial (start order)")
    ax.set_ylabel(objective)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    axes[1].plot(spent_curve, best_curve, "-o", ms=3)
    axes[1].set_xlabel("training epochs spent (all trials)")
    axes[1].set_ylabel(f"best {objective}")
    axes[1].grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def best_hyperparameters(tuner) -> dict:
    """The best completed trial: ``{"trial_id", "score", "objective", "hyperparameters", "tuner"}``.

    ``hyperparameters`` are the searched values; ``tuner`` holds Hyperband's bookkeeping (``epochs``,
    ``initial_epoch``, ``bracket``, ``round``, ``trial_id`` of the checkpoint it continued) where present.

    Raises:
        ValueError: no trial completed.
    """
    trials = [t for t in tuner.oracle.get_best_trials(1) if t.status == "COMPLETED"]
    if not trials:
        raise ValueError("no trial of the search completed; see trials.csv for the reasons")
    trial = trials[0]
    values = dict(trial.hyperparameters.values)
    return {"trial_id": trial.trial_id, "score": trial.score, "objective": tuner.oracle.objective.name,
            "hyperparameters": {k: v for k, v in values.items() if not k.startswith("tuner/")},
            "tuner": {k[len("tuner/"):]: v for k, v in values.items() if k.startswith("tuner/")}}


def retrain(hypermodel, hyperparameters, train_ds, *, epochs: int, verbose=0):
    """Build ``hypermodel`` with ``hyperparameters`` and train it from scratch on ``train_ds``.

    Args:
        hypermodel: The hypermodel of the search.
        hyperparameters: A `keras_tuner.HyperParameters` (e.g. the best trial's) or a dict of values.
        train_ds: Training data (e.g. train + validation), batched.
        epochs: Epochs (for `HyperFineTune`: the length of its schedule window).
        verbose: Keras verbosity.

    Returns:
        ``(model, history rows, phases)``: the trained model, one dict per epoch (``epoch``, ``loss``,
        ``accuracy``, ...) and the phases run (``index``, ``name``, ``train``, ``epochs``, ``seconds``).
    """
    if isinstance(hyperparameters, dict):
        hyperparameters = fixed_hyperparameters(hyperparameters)
    keras.backend.clear_session()
    gc.collect()
    model = hypermodel.build(hyperparameters)
    started = time.perf_counter()
    history = hypermodel.fit(hyperparameters, model, train_ds, epochs=int(epochs), verbose=verbose)
    seconds = round(time.perf_counter() - started, 3)
    keys = list(history.history)
    rows = [{"epoch": i + 1, **{k: history.history[k][i] for k in keys}} for i in range(len(history.epoch))]
    schedule_history = getattr(history, "schedule_history", None)
    if schedule_history is not None:
        for row, record in zip(rows, schedule_history.epochs):
            row.update(epoch=record["epoch"], phase=record["phase_name"], lr=record.get("lr"))
        phases = [{"index": p["phase"], "name": p["name"], "train": p["train"], "blocks": p["blocks"],
                   "epochs": [p["first_epoch"], p["last_epoch"]], "cached_features": p["cached"],
                   "seconds": round(p["seconds"], 3)} for p in schedule_history.phases]
    else:
        for row in rows:
            row["phase"] = "train"
        phases = [{"index": 1, "name": "train", "train": "all", "epochs": [1, len(rows)], "seconds": seconds}]
    return model, rows, phases



# ------------------------------------------------------------------------------------------------------------
# Small file helpers
# ------------------------------------------------------------------------------------------------------------

def read_json(path):
    """The JSON value stored in ``path``, or None when the file is missing or does not parse.

    Args:
        path: A file written by `write_json` (or any JSON file).

    Returns:
        The decoded value, or None.
    """
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path, value) -> Path:
    """Write ``value`` as indented JSON to ``path`` atomically (a temporary file in the same folder, renamed).

    A reader never sees a half-written file, and processes writing the same file (the chief and workers of a
    distributed search) do not interleave. Values JSON cannot hold (paths, numpy scalars, ...) are written as
    their ``str``.

    Args:
        path: The file to write; its folder must exist.
        value: A JSON-serialisable value.

    Returns:
        The path written.
    """
    path = Path(path)
    files.atomic_write_text(path, json.dumps(value, indent=1, default=str))
    return path


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["trial_records", "write_trials_csv", "search_summary", "plot_trials", "best_hyperparameters",
           "retrain", "read_json", "write_json", "TRIAL_FILE"]
