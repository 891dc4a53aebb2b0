"""Fine-tuning schedules as data: `Phase`, `Schedule`, the presets, schedule files and train specs."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


from kcnn.options import BN_MODES, LR_SCHEDULES, OPTIMIZERS  # noqa: F401  (their home is kcnn.options)


class _FieldError(ValueError):
    """A bad value of one `Phase` field (``field`` names it)."""

    def __init__(self, name, message):
        super().__init__(message)
        self.field = name


def _number(name, value, *, minimum=None, strict=False, maximum=None, integer=False):
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not numeric or (integer and not float(value).is_integer()):
        kind = "an integer" if integer else "a number"
        raise _FieldError(name, f"field '{name}' must be {kind}; got {value!r}")
    value = int(value) if integer else float(value)
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise _FieldError(name, f"field '{name}' must be {'>' if strict else '>='} {minimum}; got {value!r}")
    if maximum is not None and value >= maximum:
        raise _FieldError(name, f"field '{name}' must be < {maximum}; got {value!r}")
    return value


def _choice(name, value, choices):
    if value not in choices:
        options = ", ".join(map(repr, choices))
        raise _FieldError(name, f"field '{name}' must be one of {options}; got {value!r}")
    return value


@dataclass(frozen=True)
class Phase:
    """One phase of a fine-tuning schedule: which blocks train, for how long, and how.

    Args:
        epochs: Epochs in this phase (>= 1).
        train: "head" (only the new head), "top:N" (the head and the N deepest blocks), "all", or a list of
            block names (the head always trains).
        lr: Peak learning rate of the head.
        lr_mult: Discriminative rates: the k-th trained block counted from the top of the backbone trains at
            ``lr * lr_mult**k`` (e.g. 0.1: the deepest block at lr/10, the next at lr/100). None: one rate.
            Implemented per variable in the optimizer's update (not by scaling gradients, which Adam undoes).
        bn: "frozen" (every backbone BN layer uses its moving statistics; none of them changes) or "train" (BN
            layers of trained blocks use batch statistics and update their moving averages).
        optimizer: "adam", "sgd", "adamw" or "rmsprop".
        warmup: Linear warm-up from ~0 to `lr`: a number >= 1 is epochs, below 1 a fraction of the phase.
        schedule: "constant"; "cosine" (decay to 0 by the end of the phase, after the warm-up); "linear" (linear
            decay to 0 after the warm-up); "onecycle" (Smith's one-cycle as fastai's ``fit_one_cycle``: a cosine
            rise from ``lr / 25`` to ``lr`` over the warm-up, a quarter of the phase when ``warmup`` is 0, then a
            cosine fall to ``lr / 1e5``).
        weight_decay: Decoupled weight decay (biases and BN parameters excluded).
        momentum: SGD momentum.
        nesterov: Nesterov momentum (SGD).
        label_smoothing: In [0, 1): cross-entropy against targets smoothed toward uniform
            (`kcnn.transfer.CrossEntropy`).
        ema: Decay of an exponential moving average of the trained weights (e.g. 0.999; 0: off). The average is what
            is validated during the phase and what the model holds after it; it is part of every checkpoint.
        ema_warmup: Ramp the EMA decay up as ``min(ema, (1 + t) / (10 + t))`` at update ``t`` (timm's warm-up), so
            the average forgets its starting weights quickly in short phases.
        accumulate: Gradient accumulation: the optimizer steps once every ``accumulate`` batches, with their mean
            gradient (an effective batch ``accumulate`` times larger); 1: off. The learning-rate schedule counts
            optimizer steps.
        name: A name for logs; default derived from `train` ("head", "top:2", "all", ...).

    Example:
        >>> Phase(epochs=3, train="top:2", lr=1e-4, name="unfreeze")
    """

    epochs: int
    train: object = "head"
    lr: float = 1e-3
    lr_mult: float | None = None
    bn: str = "frozen"
    optimizer: str = "adam"
    warmup: float = 0
    schedule: str = "constant"
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    label_smoothing: float = 0.0
    ema: float = 0.0
    ema_warmup: bool = True
    accumulate: int = 1
    name: str | None = None

    def __post_init__(self):
        try:
            values = _validate_phase(self)
        except _FieldError as err:
            label = f" {self.name!r}" if isinstance(self.name, str) else ""
            raise ValueError(f"Phase{label}: {err}") from None
        for key, value in values.items():
            object.__setattr__(self, key, value)

    @property
    def train_spec(self) -> str:
        """`train` as text: "head", "all", "top:N" or comma-separated block names."""
        return self.train if isinstance(self.train, str) else ",".join(self.train)

    @property
    def warmup_epochs(self) -> float:
        """The warm-up length in epochs."""
        return self.warmup * self.epochs if 0 < self.warmup < 1 else float(self.warmup)

    def to_dict(self) -> dict:
        """The phase as a plain dict (the fields of a ``[[phase]]`` table)."""
        out = dataclasses.asdict(self)
        out["train"] = self.train if isinstance(self.train, str) else list(self.train)
        return out


PHASE_FIELDS = tuple(f.name for f in dataclasses.fields(Phase))


def _validate_phase(phase: Phase) -> dict:
    epochs = _number("epochs", phase.epochs, minimum=1, integer=True)
    train = phase.train
    if isinstance(train, str):
        if train not in ("head", "all"):
            try:
                _top_count(train)
            except ValueError as err:
                raise _FieldError("train", f"field 'train': {err}") from None
    elif isinstance(train, (list, tuple)) and train and all(isinstance(b, str) and b for b in train):
        train = tuple(train)
    else:
        raise _FieldError("train", f"field 'train' must be 'head', 'all', 'top:N' or a non-empty list of "
                                   f"block names; got {train!r}")
    lr = _number("lr", phase.lr, minimum=0, strict=True)
    lr_mult = None if phase.lr_mult is None else _number("lr_mult", phase.lr_mult, minimum=0, strict=True)
    _choice("bn", phase.bn, BN_MODES)
    _choice("optimizer", phase.optimizer, OPTIMIZERS)
    warmup = _number("warmup", phase.warmup, minimum=0)
    if warmup >= 1 and warmup > epochs:
        raise _FieldError("warmup", f"field 'warmup' ({warmup:g} epochs) is longer than the phase ({epochs} "
                          "epochs)")
    _choice("schedule", phase.schedule, LR_SCHEDULES)
    weight_decay = _number("weight_decay", phase.weight_decay, minimum=0)
    momentum = _number("momentum", phase.momentum, minimum=0, maximum=1)
    for flag in ("nesterov", "ema_warmup"):
        if not isinstance(getattr(phase, flag), bool):
            raise _FieldError(flag, f"field '{flag}' must be true or false; got {getattr(phase, flag)!r}")
    label_smoothing = _number("label_smoothing", phase.label_smoothing, minimum=0, maximum=1)
    ema = _number("ema", phase.ema, minimum=0, maximum=1)
    accumulate = _number("accumulate", phase.accumulate, minimum=1, integer=True)
    name = phase.name
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise _FieldError("name", f"field 'name' must be a non-empty string; got {name!r}")
    if name is None:
        name = train if isinstance(train, str) else "+".join(train)
    return dict(epochs=epochs, train=train, lr=lr, lr_mult=lr_mult, warmup=warmup, weight_decay=weight_decay,
                momentum=momentum, label_smoothing=label_smoothing, ema=ema, accumulate=accumulate, name=name)


class Schedule(list):
    """A fine-tuning schedule: a list of `Phase` run one after another with continuous epoch numbers."""

    def __init__(self, phases=()):
        phases = list(phases)
        for i, phase in enumerate(phases, start=1):
            if not isinstance(phase, Phase):
                raise ValueError(f"phase {i}: expected a kcnn.transfer.Phase, got {type(phase).__name__}")
        if not phases:
            raise ValueError("A schedule needs at least one phase.")
        super().__init__(phases)

    @property
    def total_epochs(self) -> int:
        """Epochs of all phases together."""
        return sum(p.epochs for p in self)

    def boundaries(self) -> list[tuple[int, int]]:
        """(first, end) global epoch indices of each phase: phase k runs epochs first..end-1 (0-based)."""
        out, start = [], 0
        for phase in self:
            out.append((start, start + phase.epochs))
            start += phase.epochs
        return out

    def scale_epochs(self, total_or_factor=None, *, total: int | None = None, factor: float | None = None):
        """A copy with rescaled epochs (for a recipe's ``--epochs``); every phase keeps at least one epoch.

        Args:
            total_or_factor: An int is the new total number of epochs (split in proportion to the phases'
                epochs, largest remainders first); a float is a factor applied to every phase.
            total: Same as an int `total_or_factor`.
            factor: Same as a float `total_or_factor`.

        Returns:
            A new `Schedule`; warm-ups given in epochs scale with their phase.

        Example:
            >>> load_schedule("two-phase").scale_epochs(4).total_epochs
            4
        """
        if total_or_factor is not None:
            if isinstance(total_or_factor, bool) or not isinstance(total_or_factor, (int, float)):
                raise ValueError("scale_epochs takes an int total or a float factor; got "
                                 f"{total_or_factor!r}")
            if isinstance(total_or_factor, int):
                total = total_or_factor
            else:
                factor = total_or_factor
        if (total is None) == (factor is None):
            raise ValueError("scale_epochs needs exactly one of a total (int) or a factor (float)")
        old = [p.epochs for p in self]
        if total is not None:
            if isinstance(total, bool) or not isinstance(total, int) or total < len(self):
                raise ValueError(f"total epochs must be an integer >= the number of phases ({len(self)}); "
                                 f"got {total!r}")
            raw = [e * total / sum(old) for e in old]
            new = [max(1, math.floor(r)) for r in raw]
            order = sorted(range(len(raw)), key=lambda i: raw[i] - math.floor(raw[i]), reverse=True)
            i = 0
            while sum(new) < total:
                new[order[i % len(order)]] += 1
                i += 1
            while sum(new) > total:  # only when max(1, ...) lifted phases; take from the longest
                j = max(range(len(new)), key=lambda k: new[k])
                new[j] -= 1
        else:
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0:
                raise ValueError(f"factor must be a number > 0; got {factor!r}")
            new = [max(1, int(round(e * factor))) for e in old]
        phases = []
        for phase, epochs in zip(self, new):
            warmup = phase.warmup
            if warmup >= 1:
                scaled = warmup * epochs / phase.epochs
                warmup = scaled if scaled >= 1 else warmup / phase.epochs
            phases.append(dataclasses.replace(phase, epochs=epochs, warmup=warmup))
        return Schedule(phases)

    def to_dict(self) -> dict:
        """``{"phase": [...]}``, the layout of a schedule file."""
        return {"phase": [p.to_dict() for p in self]}


#: Built-in schedules. "lecture": the lecture's transfer-learning demo (train only the new output layer).
#: "two-phase": the Keras transfer-learning guide (train the head on the frozen base, then unfreeze the whole
#: base at a tenth of the rate with BN kept in inference mode). "gradual": ULMFiT-style gradual unfreezing,
#: one more block per phase from the top.
PRESETS = {
    "lecture": [dict(epochs=10, train="head", lr=1e-3, name="head")],
    "two-phase": [
        dict(epochs=5, train="head", lr=1e-3, name="head"),
        dict(epochs=5, train="all", lr=1e-4, name="fine-tune"),
    ],
    "gradual": [
        dict(epochs=3, train="head", lr=1e-3, name="head"),
        dict(epochs=2, train="top:1", lr=1e-4, name="unfreeze1"),
        dict(epochs=2, train="top:2", lr=1e-4, name="unfreeze2"),
        dict(epochs=2, train="top:3", lr=1e-4, name="unfreeze3"),
    ],
}
_SCHEDULE_KEYS = ("phase", "name", "description")

def load_schedule(preset_or_path) -> Schedule:
    """A schedule from a preset name, a TOML/JSON file, or a list of phases/dicts.

    A file holds ``[[phase]]`` tables (TOML) or ``{"phase": [{...}, ...]}`` / a bare list (JSON); each phase
    takes the fields of `Phase`. Optional top-level keys: ``name``, ``description``.

    Example TOML::

        [[phase]]
        name = "head"
        epochs = 3
        train = "head"
        lr = 1e-3

        [[phase]]
        name = "unfreeze"
        epochs = 3
        train = "top:2"
        lr = 1e-4
        schedule = "cosine"

    Args:
        preset_or_path: "lecture", "two-phase", "gradual", a ``.toml``/``.json`` path, a `Schedule`, or a list
            of `Phase` objects or dicts.

    Returns:
        A `Schedule`.

    Raises:
        ValueError: unknown preset or missing file; unknown keys or bad values, naming the phase (1-based
            index and name) and the field, e.g.
            ``phase 2 ('unfreeze'): unknown field 'lrr'; valid fields: ...``.
    """
    if isinstance(preset_or_path, Schedule):
        return Schedule(list(preset_or_path))
    if isinstance(preset_or_path, (list, tuple)):
        return _schedule_from_list(list(preset_or_path), "schedule")
    if not isinstance(preset_or_path, (str, os.PathLike)):
        raise ValueError("load_schedule takes a preset name, a path or a list of phases; got "
                         f"{preset_or_path!r}")
    text = os.fspath(preset_or_path)
    key = text.lower().replace("_", "-")
    if key in PRESETS:
        return _schedule_from_list([dict(p) for p in PRESETS[key]], f"preset {key!r}")
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"Unknown schedule {text!r}: not a preset ({', '.join(PRESETS)}) and no such file.")
    content = path.read_text()
    if path.suffix.lower() == ".toml":
        data = _parse_toml(content, path)
    elif path.suffix.lower() == ".json":
        data = _parse_json(content, path)
    else:
        try:
            data = json.loads(content)
        except ValueError:
            data = _parse_toml(content, path)
    if isinstance(data, dict):
        unknown = [k for k in data if k not in _SCHEDULE_KEYS]
        if unknown:
            valid = ", ".join(_SCHEDULE_KEYS)
            raise ValueError(f"{path}: unknown top-level key {unknown[0]!r}; valid keys: {valid} "
                             f"(phases go in [[phase]] tables)")
        if "phase" not in data:
            raise ValueError(f"{path}: no phases; add [[phase]] tables (TOML) or a \"phase\" list (JSON)")
        data = data["phase"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: 'phase' must be a list of tables; got {type(data).__name__}")
    return _schedule_from_list(data, str(path))


def _parse_toml(text, path):
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: invalid TOML: {err}") from None


def _parse_json(text, path):
    try:
        return json.loads(text)
    except ValueError as err:
        raise ValueError(f"{path}: invalid JSON: {err}") from None


def _schedule_from_list(items, where) -> Schedule:
    if not items:
        raise ValueError(f"{where}: a schedule needs at least one phase")
    phases = []
    for i, item in enumerate(items, start=1):
        if isinstance(item, Phase):
            phases.append(item)
            continue
        if not isinstance(item, dict):
            raise ValueError(f"{where}: phase {i}: expected a table of fields; got {item!r}")
        label = f"phase {i}" + (f" ({item['name']!r})" if isinstance(item.get("name"), str) else "")
        unknown = [k for k in item if k not in PHASE_FIELDS]
        if unknown:
            valid = ", ".join(PHASE_FIELDS)
            raise ValueError(f"{label}: unknown field {unknown[0]!r}; valid fields: {valid}")
        if "epochs" not in item:
            raise ValueError(f"{label}: missing field 'epochs'")
        try:
            phases.append(Phase(**item))
        except ValueError as err:
            message = str(err).split(": ", 1)[-1] if str(err).startswith("Phase") else str(err)
            raise ValueError(f"{label}: {message}") from None
    return Schedule(phases)


def resolve_train(train, block_names: Sequence[str]) -> list[str]:
    """The blocks a ``train`` spec trains ("head" -> none, "all", "top:N", or a list), shallow to deep."""
    block_names = list(block_names)
    if isinstance(train, str):
        if train == "head":
            return []
        if train == "all":
            return block_names
        count = _top_count(train)
        return block_names[len(block_names) - min(count, len(block_names)):]
    unknown = [b for b in train if b != "head" and b not in block_names]
    if unknown:
        raise ValueError(f"unknown block {unknown[0]!r} in train; blocks are: {', '.join(block_names)}")
    return [b for b in block_names if b in set(train)]


def _top_count(spec: str) -> int:
    match = re.fullmatch(r"top:(\d+)", spec)
    if not match or int(match.group(1)) < 1:
        raise ValueError("train must be 'head', 'all', 'top:N' (N >= 1) or a list of block names; got "
                         f"{spec!r}")
    return int(match.group(1))
