"""Find a learning rate for the first phase of a fine-tuning run (the learning-rate range test).

Takes the data and backbone options of recipes.finetune, builds the same classifier, trains the first phase of
the schedule for up to --steps batches with the rate growing exponentially from --start to --end, and writes
lr_find.png (loss against rate) and lr_find.json to --out. It prints the suggested rate (the steepest descent
of the smoothed loss) and the recipes.finetune command line that uses it.

    python -m recipes.lr_find
    python -m recipes.lr_find --data path/to/folders --backbone VGG16 --weights imagenet --image-size 128
"""
from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

from recipes import _cli
from recipes import finetune

#: The recipes.finetune options that choose the data, the backbone, the head and the schedule: lr_find takes them
#: with the same defaults and help.
SHARED = ("data", "per_class", "image_size", "backbone", "weights", "pretrain_examples", "pretrain_epochs",
          "schedule", "epochs", "batch_size", "head", "dropout", "hidden", "augment", "seed", "verbose")


def _shared_field(name: str):
    source = {f.name: f for f in dataclasses.fields(finetune.FinetuneConfig)}[name]
    return name, source.type, dataclasses.field(default=source.default, metadata=dict(source.metadata))


LrFindConfig = dataclasses.make_dataclass("LrFindConfig", [_shared_field(name) for name in SHARED] + [
    ("start", "float", dataclasses.field(default=1e-7, metadata={"help": "first learning rate"})),
    ("end", "float", dataclasses.field(default=1.0, metadata={"help": "last learning rate"})),
    ("steps", "int", dataclasses.field(default=100, metadata={"help": "batches at most (the rate grows "
                                                                      "exponentially over them)"})),
    ("smooth", "float", dataclasses.field(default=0.98, metadata={"help": "moving-average factor of the "
                                                                        "smoothed loss, in [0, 1)"})),
    ("out", "str | None", dataclasses.field(default=None, metadata={"help": "output folder (default "
                                                                           "runs/lr_find-<time>)"})),
])
LrFindConfig.__doc__ = "recipes.lr_find's options: recipes.finetune's data/backbone/schedule options plus the test's."


def finetune_config(cfg) -> finetune.FinetuneConfig:
    """The recipes.finetune config with ``cfg``'s shared options (everything else at finetune's defaults)."""
    return finetune.FinetuneConfig(**{name: getattr(cfg, name) for name in SHARED})


def check(cfg) -> None:
    """recipes.finetune's checks of the shared options, then the range test's own."""
    finetune.check(finetune_config(cfg))
    if not cfg.start > 0:
        raise _cli.UsageError(f"--start must be > 0; got {cfg.start}")
    if not cfg.end > cfg.start:
        raise _cli.UsageError(f"--end must be > --start ({cfg.start:g}); got {cfg.end}")
    if cfg.steps < 2:
        raise _cli.UsageError(f"--steps must be >= 2; got {cfg.steps}")
    if not 0 <= cfg.smooth < 1:
        raise _cli.UsageError(f"--smooth must be in [0, 1); got {cfg.smooth}")


def finetune_command(cfg, lr: float) -> str:
    """``python -m recipes.finetune`` with ``cfg``'s non-default shared options and ``--lr`` set to ``lr``."""
    words = ["python", "-m", "recipes.finetune"]
    for f in dataclasses.fields(finetune.FinetuneConfig):
        if f.name not in SHARED or f.name == "verbose":
            continue
        value = getattr(cfg, f.name)
        if value != f.default:
            words += ["--" + f.name.replace("_", "-"), str(value)]
    words += ["--lr", f"{lr:.2g}"]
    return " ".join(shlex.quote(w) for w in words)


def load(cfg):
    """(model, backbone, splits, schedule) as recipes.finetune builds them for the same options."""
    from kcnn import data as kdata
    from kcnn import training, transfer

    fcfg = finetune.resolved(finetune_config(cfg))
    cfg = dataclasses.replace(cfg, backbone=fcfg.backbone, image_size=fcfg.image_size)
    schedule = finetune.schedule_of(fcfg)
    per_class = (finetune.DEMO_PER_CLASS if cfg.data == "digits" else 0) if cfg.per_class == -1 else cfg.per_class
    splits = kdata.load(cfg.data, image_size=cfg.image_size, batch_size=cfg.batch_size, seed=cfg.seed,
                        per_class=per_class or None, augment=None if cfg.augment == "none" else cfg.augment)
    weights = {"none": None}.get(cfg.weights.lower(), cfg.weights)
    name = cfg.backbone
    if cfg.weights == "glyphs":
        weights = training.pretrained_checkpoint(cfg.backbone, examples=cfg.pretrain_examples,
                                                 epochs=cfg.pretrain_epochs, image_size=cfg.image_size,
                                                 seed=cfg.seed, verbose=cfg.verbose)
        name = None
    bb = transfer.backbone(name, weights, (cfg.image_size, cfg.image_size, 3))
    model = transfer.classifier(bb, len(splits.class_names), head=cfg.head, dropout=cfg.dropout,
                                hidden=(cfg.hidden,) if cfg.hidden else ())
    return model, bb, splits, schedule


def run(cfg) -> int:
    check(cfg)
    from kcnn import lr_find, training
    from kcnn.runs import atomic_write_text, default_out, jsonable

    out = Path(cfg.out) if cfg.out else default_out("lr_find")
    if out.exists() and not out.is_dir():
        raise _cli.UsageError(f"--out {out}: exists and is not a folder")
    training.set_seed(cfg.seed)
    model, bb, splits, schedule = load(cfg)
    phase = schedule[0]
    if cfg.verbose:
        print(f"lr range test: phase 1 {phase.name!r} (train={phase.train_spec}, {phase.optimizer}, scheduled "
              f"lr {phase.lr:g}), up to {cfg.steps} steps from {cfg.start:g} to {cfg.end:g}", flush=True)
    started = time.perf_counter()
    result = lr_find.lr_range_test(model, bb, splits, phase, start=cfg.start, end=cfg.end, steps=cfg.steps,
                                   smooth=cfg.smooth)
    seconds = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    lr_find.plot_lr_find(result, out / "lr_find.png", title=f"lr range test: {bb.name} on {cfg.data}, "
                                                              f"phase {phase.name!r}")
    nan_free = {k: ([None if v != v else v for v in result[k]]) for k in ("lrs", "losses", "raw_losses")}
    record = {"suggestion": result["suggestion"], "method": result["method"],
              "lr_min_over_10": result["lr_min_over_10"], "scheduled_lr": phase.lr, "phase": phase.name,
              "steps": result["steps"], "stopped_early": result["stopped_early"], "seconds": round(seconds, 1),
              "finetune_command": finetune_command(cfg, result["suggestion"]), **nan_free}
    atomic_write_text(out / "lr_find.json", json.dumps(jsonable(record), indent=1))
    print(f"suggested learning rate: {result['suggestion']:.2e} (steepest descent of the smoothed loss; "
          f"minimum/10: {result['lr_min_over_10']:.2e}; the schedule's phase 1 uses {phase.lr:g})  ({out})")
    print(f"to use it: {record['finetune_command']}", flush=True)
    return 0


def main(argv=None) -> int:
    return _cli.run(run, LrFindConfig, argv, prog="python -m recipes.lr_find", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
