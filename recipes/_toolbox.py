"""The training toolbox the training recipes share (train, finetune, pretrain): one field per flag, spelled as timm's
users know them, and the three places each lands.

=====================  ==========================================  ============================================
flag                   where it lands                              default
=====================  ==========================================  ============================================
--label-smoothing F    every `Phase`'s ``label_smoothing``         the schedule's (0 unless it says)
--ema DECAY            every `Phase`'s ``ema`` (weight average)    the schedule's (off unless it says)
--accumulate N         every `Phase`'s ``accumulate``              the schedule's (1: off)
--sched NAME           every `Phase`'s ``schedule``                the schedule's
--mixup A, --cutmix A  the data: `kcnn.data.Mixing`                0 (off)
--mix-prob P           the data: the share of mixed batches        1
--mix-off-epoch E      the data: epochs after E are not mixed      never
--augment-magnitude M  the data: strength of photo / randaugment   the library's
--erase P              the data: random erasing per image          0 (off)
--drop-path RATE       the model: stochastic depth (kcnn ResNets)  0 (off)
--restore-best         the run: keep the best validated epoch      off
--patience N           the run: end a phase after N epochs         never
                       without a better score
--monitor NAME         the run: what "best" means                  val_accuracy (ties: the lower val_loss)
--tta                  the report: flip test-time augmentation     off
                       beside the plain score
=====================  ==========================================  ============================================

Each is a field of the recipe's config, so it is a flag, a key of ``--config FILE.toml``, recorded in the run's
config.toml and report.json, and a resume with another value is refused with the difference named.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from kcnn import options
from recipes import _cli


@dataclass
class Toolbox:
    """The toolbox fields; a recipe's config inherits them."""

    label_smoothing: float | None = field(default=None, metadata={
        "help": "label smoothing of the cross-entropy, in [0, 1) (default: the schedule's, 0 unless it says)",
        "metavar": "F"})
    mixup: float = field(default=0.0, metadata={"help": "mixup alpha (0: off; e.g. 0.2)", "metavar": "ALPHA"})
    cutmix: float = field(default=0.0, metadata={"help": "cutmix alpha (0: off; e.g. 1.0)", "metavar": "ALPHA"})
    mix_prob: float = field(default=1.0, metadata={"help": "share of training batches mixed when mixing is on",
                                                   "metavar": "P"})
    mix_off_epoch: int | None = field(default=None, metadata={"help": "no mixing after this epoch (1-based count)",
                                                              "metavar": "E"})
    augment_magnitude: float | None = field(default=None, metadata={
        "help": "strength of --augment photo / randaugment, 0-10 (default: the library's)", "metavar": "M"})
    erase: float = field(default=0.0, metadata={"help": "random erasing: probability per training image",
                                                "metavar": "P"})
    ema: float | None = field(default=None, metadata={
        "help": "decay of a weight moving average that is validated and saved (0: off; e.g. 0.999; default: the "
                "schedule's, off unless it says)", "metavar": "DECAY"})
    accumulate: int | None = field(default=None, metadata={
        "help": "gradient accumulation: batches per optimizer step (default: the schedule's, 1)", "metavar": "N"})
    sched: str | None = field(default=None, metadata={"help": "learning-rate shape of every phase (default: the "
                                                      "schedule's own)", "choices": list(options.LR_SCHEDULES)})
    drop_path: float = field(default=0.0, metadata={"help": "stochastic depth rate of kcnn ResNets (linear over "
                                                    "depth), in [0, 1)", "metavar": "RATE"})
    restore_best: bool = field(default=False, metadata={"help": "end with the best validated epoch's weights "
                                                        "(else the last epoch's)"})
    patience: int | None = field(default=None, metadata={"help": "end a phase after N epochs without a better "
                                                         "score (default: never)", "metavar": "N"})
    monitor: str = field(default="val_accuracy", metadata={"help": "the score of --restore-best / --patience: "
                                                           "val_accuracy (ties: lower val_loss) | val_loss",
                                                           "choices": list(options.MONITORS)})
    tta: bool = field(default=False, metadata={"help": "also report the test scores of flip test-time "
                                               "augmentation"})
    checkpoint_every: str = field(default="10min", metadata={
        "help": "also checkpoint inside long epochs: every N training steps (e.g. 500), every TIME (10min, 90s, "
                "1h), or off; a run killed there resumes at the next batch", "metavar": "N|TIME"})


#: Toolbox fields that go into every phase of the schedule (`kcnn.transfer.Phase` fields of the same meaning).
PHASE_FIELDS = {"label_smoothing": "label_smoothing", "ema": "ema", "accumulate": "accumulate", "sched": "schedule"}


def check(cfg) -> None:
    """Every toolbox flag, before anything is loaded or written (one line naming the flag and the fix)."""
    def unit(name, value, closed=False):
        if not (0 <= value <= 1 if closed else 0 <= value < 1):
            span = "[0, 1]" if closed else "[0, 1)"
            raise _cli.UsageError(f"--{name.replace('_', '-')} must be in {span}; got {value}")

    for name in ("label_smoothing", "ema", "erase", "drop_path"):
        if getattr(cfg, name) is not None:
            unit(name, getattr(cfg, name), closed=name == "erase")
    unit("mix_prob", cfg.mix_prob, closed=True)
    for name in ("mixup", "cutmix"):
        if not (0 <= getattr(cfg, name) < math.inf):  # also nan
            raise _cli.UsageError(f"--{name} takes a finite alpha >= 0 (0: off); got {getattr(cfg, name)}")
    if cfg.mix_off_epoch is not None and cfg.mix_off_epoch < 0:
        raise _cli.UsageError(f"--mix-off-epoch must be >= 0; got {cfg.mix_off_epoch}")
    if cfg.augment_magnitude is not None and not 0 <= cfg.augment_magnitude <= 10:
        raise _cli.UsageError(f"--augment-magnitude must be in [0, 10]; got {cfg.augment_magnitude}")
    if cfg.accumulate is not None and cfg.accumulate < 1:
        raise _cli.UsageError(f"--accumulate must be >= 1; got {cfg.accumulate}")
    if (cfg.accumulate or 1) > 1 and getattr(cfg, "distribute", "none") != "none":
        # Keras 3.15 updates accumulated gradients inside a conditional, where replicas cannot synchronize
        raise _cli.UsageError(f"--accumulate {cfg.accumulate} does not work with --distribute {cfg.distribute} "
                              "(Keras' gradient accumulation cannot synchronize replicas); raise --batch-size "
                              "instead, the replicas already add their batches up")
    if cfg.patience is not None and cfg.patience < 1:
        raise _cli.UsageError(f"--patience must be >= 1; got {cfg.patience}")
    from kcnn.runs import CheckpointEvery  # no Keras: a flag check stays fast

    try:
        CheckpointEvery.parse(cfg.checkpoint_every)
    except ValueError as err:
        raise _cli.UsageError(f"--{str(err).replace('_', '-')}") from None


def schedule_with(cfg, schedule):
    """``schedule`` with the toolbox's phase fields set on every phase (flags not given change nothing, so a
    preset's or schedule file's own values stay)."""
    from kcnn import transfer

    changes = {phase_field: getattr(cfg, name) for name, phase_field in PHASE_FIELDS.items()
               if getattr(cfg, name) is not None}
    if not changes:
        return schedule
    return transfer.Schedule([dataclasses.replace(p, **changes) for p in schedule])


def mixing(cfg):
    """The `kcnn.data.Mixing` of the flags, or None when neither mixup nor cutmix is on."""
    if not (cfg.mixup or cfg.cutmix):
        return None
    from kcnn import data as kdata

    return kdata.Mixing(mixup=cfg.mixup, cutmix=cfg.cutmix, prob=cfg.mix_prob, off_epoch=cfg.mix_off_epoch)


def data_options(cfg) -> dict:
    """The `kcnn.data.load` arguments of the flags (augmentation strength, erasing, mixing)."""
    out = {"erase": cfg.erase, "mixing": mixing(cfg)}
    if cfg.augment_magnitude is not None:
        out["augment_magnitude"] = cfg.augment_magnitude
    return out


def randomized(cfg, augment: str) -> bool:
    """Whether the training batches are random (no feature cache then)."""
    return augment != "none" or bool(cfg.erase) or mixing(cfg) is not None


def model_options(cfg, name: str) -> dict:
    """Builder options of the flags: ``drop_path_rate`` for kcnn ResNets (refused for other models)."""
    if not cfg.drop_path:
        return {}
    if not str(name).lower().startswith("resnet") or name[:1].isupper():
        raise _cli.UsageError(f"--drop-path is for kcnn's ResNets (resnet20 ... resnet152); {name} has no "
                              "residual blocks of kcnn's: leave --drop-path at 0")
    return {"drop_path_rate": cfg.drop_path}


def best_epoch(cfg):
    """The run's `kcnn.training.BestEpoch`, or None when neither --restore-best nor --patience is given."""
    if not cfg.restore_best and cfg.patience is None:
        return None
    from kcnn import training

    return training.BestEpoch(monitor=cfg.monitor, patience=cfg.patience, restore=cfg.restore_best)


def tta(cfg) -> str:
    return "flip" if cfg.tta else "none"


def settings(cfg) -> dict:
    """The toolbox values, for report.json."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(Toolbox) if f.name not in NOT_TRAINING}


#: Toolbox fields that say how the run is kept, not how it trains: not in the report's toolbox entry, and free to
#: change on --resume (`kcnn.runs.RunDir.RESUME_FREE`).
NOT_TRAINING = ("checkpoint_every",)
