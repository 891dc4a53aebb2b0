"""Fine-tune a pretrained backbone on a small labelled dataset with a freeze -> unfreeze schedule.

With no arguments: the lecture's transfer-learning claim, offline. A small VGG (``vgg_cifar``) pretrained on kcnn's
synthetic glyphs (cached under ~/.cache/kcnn after the first run) is fine-tuned on 1 labelled digit per class
from scikit-learn's handwritten digits, the same network is trained from scratch on the same 10 images, and
both test accuracies are reported.

    python -m recipes.finetune
    python -m recipes.finetune --data path/to/folders --backbone VGG16 --weights imagenet --image-size 128
    python -m recipes.finetune --schedule my_schedule.toml --out runs/mine
    python -m recipes.finetune --out runs/mine --resume       # after an interruption
    python -m recipes.finetune --distribute mirrored          # all local GPUs (see recipes.train for multiworker)
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field

from kcnn import options
from recipes import _cli, _job, _toolbox


@dataclass
class FinetuneConfig(_toolbox.Toolbox):
    # what to learn ---------------------------------------------------------------------------------------------
    data: str = field(default="digits", metadata={"help": "digits | glyphs | tfds:NAME | a folder of class "
                                                  "folders"})
    per_class: int = field(default=-1, metadata={"help": "labelled training images per class (-1: 1 for the "
                                                 "digits demo, all otherwise; 0: all)"})
    image_size: int | None = field(default=None, metadata={
        "help": "side in pixels the images are loaded and the backbone run at (default: 32 for the digits demo, a "
                "kcnn checkpoint's own, else the backbone's native input: 224 for keras.applications, the "
                "registry's for kcnn models)"})
    # the backbone ----------------------------------------------------------------------------------------------
    backbone: str | None = field(default=None, metadata={
        "help": "keras.applications name (VGG16, ResNet50, MobileNetV2, ...) or a kcnn model (vgg_cifar, resnet20, "
                "...) (default: a kcnn checkpoint's own architecture with --weights CHECKPOINT, else vgg_cifar)"})
    weights: str = field(default="glyphs", metadata={"help": "glyphs (pretrain on kcnn's synthetic glyphs, "
                                                     "cached) | imagenet | none | PATH (.h5) | kcnn checkpoint"})
    pretrain_examples: int = field(default=8000, metadata={"help": "synthetic images for --weights glyphs"})
    pretrain_epochs: int = field(default=3, metadata={"help": "epochs for --weights glyphs"})
    # how to fine-tune -----------------------------------------------------------------------------------------
    schedule: str | None = field(default=None, metadata={
        "help": "a rule computed from the training set's size: auto (kcnn's, README), fastai (fine_tune), bit "
                "(BiT-HyperRule), keras-guide; a preset (demo, lecture, two-phase, gradual) or a TOML/JSON "
                "schedule file (default: demo for the digits demo, else auto)"})
    epochs: int | None = field(default=None, metadata={"help": "total epochs; rescales the schedule's phases"})
    lr: float | None = field(default=None, metadata={"help": "learning rate of the first phase; every phase's rate "
                                                     "is scaled by the same factor (e.g. what python -m "
                                                     "recipes.lr_find suggests)"})
    class_weight: str = field(default="none", metadata={"help": "none | balanced (weights each training image by "
                                                        "n / (classes x its class's count))",
                                                        "choices": list(options.CLASS_WEIGHTS)})
    batch_size: int = field(default=32, metadata={"help": "images per step"})
    head: str = field(default="gap", metadata={"help": "gap | dense | conv", "choices": list(options.HEADS)})
    dropout: float = field(default=0.0, metadata={"help": "dropout in the new head (with --hidden)"})
    hidden: int = field(default=0, metadata={"help": "width of a hidden layer in the new head (0: none)"})
    augment: str = _cli.augment_field("none")
    compare_scratch: bool | None = field(default=None, metadata={
        "help": "also train the same network from scratch on the same data and report both (default: on for the "
                "digits demo only)"})
    # the run ---------------------------------------------------------------------------------------------------
    out: str | None = field(default=None, metadata={"help": "run folder (default runs/finetune-<time>)"})
    resume: bool = field(default=False, metadata={"help": "continue the interrupted run in --out"})
    overwrite: bool = field(default=False, metadata={"help": "replace the kcnn run in --out (never another "
                                                     "folder)"})
    seed: int = field(default=0, metadata={"help": "random seed (same seed, same numbers on one machine)"})
    verbose: int = field(default=1, metadata={"help": "0 silent, 1 progress bars, 2 one line per epoch"})
    show_batch: bool = _cli.show_batch_field()
    precision: str = _cli.precision_field()
    distribute: str = _cli.distribute_field()
    cpu_devices: int | None = _cli.cpu_devices_field()


#: Labelled digits per class in the demo: 1, so 10 training images.
DEMO_PER_CLASS = 1
#: The demo's backbone and image side (the defaults when --data is the digits and no checkpoint says otherwise).
DEMO_BACKBONE, DEMO_IMAGE_SIZE = "vgg_cifar", 32


def checkpoint_meta(weights: str) -> dict | None:
    """The metadata (kcnn.json: arch, input_shape, ...) of a kcnn checkpoint given as --weights, else None."""
    import json
    from pathlib import Path

    path = Path(weights)
    folder = path if path.is_dir() else path.parent
    meta = folder / "kcnn.json"
    if weights.lower() in ("glyphs", "imagenet", "none") or not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def resolved(cfg):
    """``cfg`` with the defaults that depend on other flags filled in: --backbone (a checkpoint's own
    architecture, else the demo's), --image-size (the demo's 32 on the digits, a checkpoint's own, else the
    backbone's native input side) and --compare-scratch (the demo only)."""
    from kcnn import checks

    meta = checkpoint_meta(cfg.weights)
    backbone = cfg.backbone or (str(meta["arch"]) if meta and meta.get("arch") else DEMO_BACKBONE)
    image_size = cfg.image_size
    if image_size is None:
        if cfg.data == "digits":
            image_size = DEMO_IMAGE_SIZE
        elif meta and meta.get("input_shape"):
            image_size = int(meta["input_shape"][0])
        else:
            image_size = checks.native_size_of(backbone)
    changes = {"backbone": backbone, "image_size": image_size,
               "schedule": cfg.schedule or ("demo" if cfg.data == "digits" else "auto")}
    if getattr(cfg, "compare_scratch", False) is None:
        changes["compare_scratch"] = cfg.data == "digits"
    return dataclasses.replace(cfg, **changes)

#: The demo's schedule: the (zero-initialized) head on cached features, then everything with BN frozen at a 30th of
#: the rate, as in the Keras transfer-learning guide (README, "The demo").
DEMO_SCHEDULE = [
    dict(epochs=100, train="head", lr=3e-3, name="head"),
    dict(epochs=30, train="all", lr=1e-4, name="fine-tune"),
]


def check(cfg: FinetuneConfig) -> None:
    """Every flag, the schedule and the backbone name, before anything is loaded or written."""
    for name in ("image_size", "batch_size", "pretrain_examples", "pretrain_epochs"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise _cli.UsageError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(cfg, name)}")
    if cfg.epochs is not None and cfg.epochs < 1:
        raise _cli.UsageError(f"--epochs must be >= 1; got {cfg.epochs}")
    if cfg.lr is not None and not cfg.lr > 0:
        raise _cli.UsageError(f"--lr must be > 0; got {cfg.lr}")
    if cfg.per_class < -1:
        raise _cli.UsageError(f"--per-class must be >= 0 (or -1 for the default); got {cfg.per_class}")
    if cfg.dropout < 0 or cfg.dropout >= 1:
        raise _cli.UsageError(f"--dropout must be in [0, 1); got {cfg.dropout}")
    if cfg.hidden < 0:
        raise _cli.UsageError(f"--hidden must be >= 0; got {cfg.hidden}")
    _toolbox.check(cfg)
    _cli.check_distribute(cfg)
    _cli.check_weights(cfg.weights, special=("glyphs", "imagenet", "none"))
    from kcnn import transfer

    meta = checkpoint_meta(cfg.weights)
    if meta and cfg.backbone and meta.get("arch") and str(meta["arch"]).lower() != cfg.backbone.lower():
        raise _cli.UsageError(f"--weights {cfg.weights} holds a {meta['arch']}, not a {cfg.backbone}: leave "
                              f"--backbone out (or pass --backbone {meta['arch']}) to fine-tune it")
    cfg = resolved(cfg)
    transfer.preprocessing_mode(cfg.backbone)  # an unknown name fails here, with the closest names
    _toolbox.model_options(cfg, cfg.backbone)


def is_rule(schedule) -> bool:
    """Whether --schedule names a rule of `kcnn.transfer.RULES` (computed from the training set's size)."""
    from kcnn.transfer.rules import rule_name

    return isinstance(schedule, str) and rule_name(schedule) is not None


def _named_or_file(name):
    """A preset or schedule file; an unknown name is one line listing every rule and preset, closest first."""
    import difflib
    from pathlib import Path

    from kcnn import transfer

    if not Path(str(name)).is_file() and str(name).lower().replace("_", "-") not in transfer.PRESETS:
        names = [*transfer.RULES, "demo", *transfer.PRESETS]
        close = difflib.get_close_matches(str(name).lower(), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise _cli.UsageError(f"--schedule {name!r} is not a rule ({', '.join(transfer.RULES)}), a preset (demo, "
                              f"{', '.join(transfer.PRESETS)}) or a schedule file{hint}")
    return transfer.load_schedule(name)


def schedule_of(cfg: FinetuneConfig, train_examples: int | None = None):
    """The run's schedule: the demo's, a rule's for ``train_examples`` (`kcnn.transfer.RULES`), a preset
    or a file, rescaled to --epochs and --lr."""
    from kcnn import transfer

    if cfg.schedule == "demo":
        schedule = transfer.Schedule([transfer.Phase(**p) for p in DEMO_SCHEDULE])
    elif is_rule(cfg.schedule):
        schedule = transfer.rule_schedule(cfg.schedule, train_examples or 1, cfg.batch_size)
    else:
        schedule = _named_or_file(cfg.schedule)
    if cfg.lr is not None:
        factor = cfg.lr / schedule[0].lr
        schedule = transfer.Schedule([dataclasses.replace(p, lr=p.lr * factor) for p in schedule])
    schedule = schedule.scale_epochs(cfg.epochs) if cfg.epochs is not None else schedule
    return _toolbox.schedule_with(cfg, schedule)


def run(cfg: FinetuneConfig) -> int:
    check(cfg)
    cfg = resolved(cfg)
    # auto: the schedule follows the training set's size, known once the data are loaded
    schedule = (lambda splits: schedule_of(cfg, splits.num_examples["train"])) if is_rule(cfg.schedule) \
        else schedule_of(cfg)
    ran = {}
    per_class = (DEMO_PER_CLASS if cfg.data == "digits" else 0) if cfg.per_class == -1 else cfg.per_class
    hidden = (cfg.hidden,) if cfg.hidden else ()
    weights = {"none": None}.get(cfg.weights.lower(), cfg.weights)
    used = {"weights": str(weights)}

    def load_data():
        from kcnn import data as kdata

        return kdata.load(cfg.data, image_size=cfg.image_size, batch_size=cfg.batch_size, seed=cfg.seed,
                          per_class=per_class or None, augment=None if cfg.augment == "none" else cfg.augment,
                          class_weight=cfg.class_weight, **_toolbox.data_options(cfg))

    def build(splits):
        from kcnn import training, transfer

        name, source = cfg.backbone, weights
        if cfg.weights == "glyphs":
            source = training.pretrained_checkpoint(cfg.backbone, examples=cfg.pretrain_examples,
                                                    epochs=cfg.pretrain_epochs, image_size=cfg.image_size,
                                                    seed=cfg.seed, verbose=cfg.verbose)
            name = None
            used["weights"] = str(source)
        bb = transfer.backbone(name, source, (cfg.image_size, cfg.image_size, 3),
                               options=_toolbox.model_options(cfg, cfg.backbone))
        model = transfer.classifier(bb, len(splits.class_names), head=cfg.head, dropout=cfg.dropout,
                                    hidden=hidden)
        return model, bb

    def extra(run_dir, model, bb, splits, strategy):
        result = {"backbone": bb.name, "weights": used["weights"], "schedule": cfg.schedule, "data": cfg.data,
                  "labels_per_class": per_class, "train_examples": splits.num_examples.get("train")}
        if cfg.compare_scratch:
            result.update(_scratch(cfg, run_dir, bb, ran["schedule"], splits, hidden))
        return result

    def describe(report, run_dir):
        line = f"test accuracy: fine-tuned {report['test_accuracy']:.3f}"
        if "scratch_test_accuracy" in report:
            line += f", from scratch {report['scratch_test_accuracy']:.3f}"
        return f"{line}  ({run_dir.path})"

    phases = {} if callable(schedule) else {"schedule_phases": schedule.to_dict()["phase"]}
    config = _cli.run_config(cfg, per_class=per_class, **phases)
    return _job.execute(_job.Job(
        recipe="finetune", cfg=cfg, config=config, schedule=schedule, resolved_schedule=ran,
        augmented=_toolbox.randomized(cfg, cfg.augment), load_data=load_data, build=build, extra=extra,
        describe=describe, best=_toolbox.best_epoch(cfg), tta=_toolbox.tta(cfg), show_batch=cfg.show_batch,
        title=lambda bb: f"fine-tune {bb.name} on {cfg.data}"))


#: The scratch comparison validates every 10th epoch (and its last): its curve is drawn beside the run's, and
#: validating the demo's 180 images cost more than its one-step epochs.
SCRATCH_VALIDATION_FREQ = 10


def _scratch(cfg, run_dir, bb, schedule, splits, hidden) -> dict:
    """The same network from random weights on the same data for as many epochs (saved in the run state).

    Seeded like the run, and its data order keyed by epoch, so a run interrupted during the comparison and
    resumed reports what an uninterrupted run reports."""
    if "scratch" in run_dir.state:
        return run_dir.state["scratch"]
    from kcnn import training, transfer

    training.set_seed(cfg.seed)
    started = time.perf_counter()
    fresh = transfer.backbone(bb.name, None, bb.input_shape, preprocessing=bb.preprocessing)
    model = transfer.classifier(fresh, len(splits.class_names), head=cfg.head, dropout=cfg.dropout, hidden=hidden)
    # the rule's runs get a scratch run with the rule's decay (cosine, a short warm-up); the others a constant rate
    shape = dict(schedule="cosine", warmup=0.05) if is_rule(cfg.schedule) else {}
    plan = _toolbox.schedule_with(cfg, transfer.Schedule([transfer.Phase(
        epochs=schedule.total_epochs, train="all", lr=schedule[0].lr, bn="train", name="scratch", **shape)]))
    if cfg.verbose:
        print(f"training {bb.name} from scratch on the same data for comparison", flush=True)
    history = transfer.fit_schedule(model, fresh, plan, splits, verbose=cfg.verbose,
                                    augmented=_toolbox.randomized(cfg, cfg.augment), feature_cache=False,
                                    validation_freq=SCRATCH_VALIDATION_FREQ)
    metrics = training.evaluate(model, splits.test, splits.class_names, tta=_toolbox.tta(cfg))
    result = {"scratch_test_accuracy": metrics["test_accuracy"],
              **({"scratch_tta_test_accuracy": metrics["tta_test_accuracy"]} if cfg.tta else {}),
              "scratch_seconds": round(time.perf_counter() - started, 1)}
    keys = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")
    run_dir.save_extra("comparison_history", [{k: row[k] for k in keys if k in row} for row in history.epochs])
    run_dir.save_extra("scratch", result)  # last: a run with it skips the comparison when resumed
    return result


def main(argv=None) -> int:
    return _cli.run(run, FinetuneConfig, argv, prog="python -m recipes.finetune", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
