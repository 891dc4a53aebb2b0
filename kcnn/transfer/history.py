"""What a schedule run records and prints: `ScheduleHistory`, its per-epoch recorder, the phase lines."""
from __future__ import annotations

import keras

from kcnn.transfer.optim import PhaseLearningRate


class ScheduleHistory:
    """What `fit_schedule` returns: one record across all phases.

    Attributes:
        epochs: One dict per epoch run: ``epoch`` (1-based global number, as Keras prints it; pass the last
            one as ``initial_epoch`` to resume after it), ``phase`` (1-based), ``phase_name``, ``lr`` (the
            head's rate at the epoch's first step), ``loss``, ``accuracy`` and, with validation data,
            ``val_loss``, ``val_accuracy``.
        phases: One dict per phase: ``phase``, ``name``, ``train``, ``blocks`` (trained), ``first_epoch``,
            ``last_epoch`` (1-based, inclusive, as planned), ``epochs_run``, ``skipped`` (all its epochs were
            before ``initial_epoch``), ``cached`` (head trained on cached features), ``trainable_params``,
            ``seconds``, ``cache_seconds``.
    """

    def __init__(self, epochs=None, phases=None):
        self.epochs: list[dict] = list(epochs or [])
        self.phases: list[dict] = list(phases or [])

    @property
    def history(self) -> dict[str, list]:
        """Metric -> list over epochs, like ``keras.callbacks.History.history`` (missing values are None)."""
        keys = []
        for record in self.epochs:
            keys += [k for k in record if k not in keys]
        return {k: [record.get(k) for record in self.epochs] for k in keys}

    @property
    def epoch(self) -> list[int]:
        """0-based epoch indices, like ``keras.callbacks.History.epoch``."""
        return [record["epoch"] - 1 for record in self.epochs]

    @property
    def last_epoch(self) -> int:
        """The last finished global epoch (1-based), 0 if none ran."""
        return self.epochs[-1]["epoch"] if self.epochs else 0

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {"epochs": self.epochs, "phases": self.phases}

    @classmethod
    def from_dict(cls, data: dict) -> "ScheduleHistory":
        """Inverse of `to_dict`."""
        return cls(data.get("epochs"), data.get("phases"))

    def __len__(self):
        return len(self.epochs)

    def __repr__(self):
        return f"ScheduleHistory({len(self.epochs)} epochs, {len(self.phases)} phases)"


class EpochRecorder(keras.callbacks.Callback):
    """Appends one entry per epoch to the `ScheduleHistory`."""

    def __init__(self, history, number, phase, rate, first, steps):
        super().__init__()
        self.history, self.number, self.phase = history, number, phase
        self.rate, self.first, self.steps = rate, first, steps
        self.lr = None

    def on_epoch_begin(self, epoch, logs=None):
        if isinstance(self.rate, PhaseLearningRate):
            self.lr = self.rate.at_batch((epoch - self.first) * self.steps)
        else:
            self.lr = float(self.rate)

    def on_epoch_end(self, epoch, logs=None):
        entry = {"epoch": epoch + 1, "phase": self.number, "phase_name": self.phase.name, "lr": self.lr}
        for key, value in (logs or {}).items():
            try:
                entry[key] = float(value)
            except (TypeError, ValueError):
                pass
        self.history.epochs.append(entry)


def _fmt_lr(value: float) -> str:
    mantissa, exponent = f"{value:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def phase_record(plan, skipped: bool) -> dict:
    """The `ScheduleHistory.phases` entry of a `kcnn.transfer.plan.PhasePlan`, before it runs."""
    return dict(phase=plan.number, name=plan.phase.name, train=plan.phase.train_spec, blocks=list(plan.blocks),
                first_epoch=plan.start + 1, last_epoch=plan.end, epochs_run=0, skipped=skipped, cached=False,
                trainable_params=0, seconds=0.0, cache_seconds=0.0)


def phase_header(number, count, phase, start, end, first, multipliers, cached) -> str:
    """The line printed before a phase, e.g. ``phase 2/3 'unfreeze': train=top:2, lr=1e-4, epochs 4-6``."""
    extras = [f"bn={phase.bn}"] if phase.bn != "frozen" else []
    if phase.schedule != "constant":
        extras.append(f"schedule={phase.schedule}")
    if phase.warmup:
        extras.append(f"warmup={phase.warmup:g}")
    if multipliers:
        extras.append(f"lr_mult={phase.lr_mult:g}")
    if first > start:
        extras.append(f"resuming after epoch {first}")
    if cached:
        extras.append("cached features")
    return (f"phase {number}/{count} {phase.name!r}: train={phase.train_spec}, lr={_fmt_lr(phase.lr)}, "
            f"epochs {start + 1}-{end}" + "".join(f", {e}" for e in extras))


def phase_summary(number, count, phase, record, epochs) -> str:
    """The line printed after a phase: epochs run, seconds and the last epoch's loss and accuracy."""
    text = (f"phase {number}/{count} {phase.name!r} done: {record['epochs_run']} epochs "
            f"in {record['seconds']:.1f}s")
    if not epochs:
        return text
    last = epochs[-1]
    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    metrics = ", ".join(f"{k} {last[k]:.4f}" for k in keys if k in last)
    tail = f" (features cached in {record['cache_seconds']:.1f}s)" if record["cached"] else ""
    return f"{text}: {metrics}{tail}"
