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

from recipes import _cli, _job, _toolbox


@dataclass
class FinetuneConfig(_toolbox.Toolbox):
    # what to learn ---------------------------------------------------------------------------------------------
    data: str = field(default="digits", metadata={"help": "digits | glyphs | tfds:NAME | a folder of class "
                                                  "folders"})
    per_class: int = field(default=-1, metadata={"help": "labelled training images per class (-1: 1 for the "
                                                 "digits demo, all otherwise; 0: all)"})
    image_size: int = field(default=32, metadata={"help": "side in pixels the images are loaded and the backbone "
                                                  "run at"})
    # the backbone ----------------------------------------------------------------------------------------------
    backbone: str = field(default="vgg_cifar", metadata={"help": "keras.applications name (VGG16, ResNet50, "
                                                         "MobileNetV2, ...) or a kcnn model (vgg_cifar, resnet20, "
                                                         "...)"})
    weights: str = field(default="glyphs", metadata={"help": "glyphs (pretrain on kcnn's synthetic glyphs, "
                                                     "cached) | imagenet | none | PATH (.h5) | kcnn checkpoint"})
    pretrain_examples: int = field(default=8000, metadata={"help": "synthetic images for --weights glyphs"})
    pretrain_epochs: int = field(default=3, metadata={"help": "epochs for --weights glyphs"})
    # how to fine-tune -----------------------------------------------------------------------------------------
    schedule: str = field(default="demo", metadata={"help": "preset (demo, lecture, two-phase, gradual) or a "
                                                    "TOML/JSON schedule file"})
    epochs: int | None = field(default=None, metadata={"help": "total epochs; rescales the schedule's phases"})
    lr: float | None = field(default=None, metadata={"help": "learning rate of the first phase; every phase's rate "
                                                     "is scaled by the same factor (e.g. what python -m "
                                                     "recipes.lr_find suggests)"})
    class_weight: str = field(default="none", metadata={"help": "none | balanced (weights each training image by "
                                                        "n / (classes x its class's count))",
                                                        "choices": ["none", "balanced"]})
    batch_size: int = field(default=32, metadata={"help": "images per step"})
    head: str = field(default="gap", metadata={"help": "gap | dense | conv", "choices": ["gap", "dense", "conv"]})
    dropout: float = field(default=0.0, metadata={"help": "dropout in the new head (with --hidden)"})
    hidden: int = field(default=0, metadata={"help": "width of a hidden layer in the new head (0: none)"})
    augment: str = _cli.augment_field("none")
    compare_scratch: bool = field(default=True, metadata={"help": "also train the same network from scratch on "
                                                          "the same data and report both"})
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

#: The demo's schedule: the (zero-initialized) head on cached features, then everything with BN frozen at a 30th of
#: the rate, as in the Keras transfer-learning guide (README, "The demo").
DEMO_SCHEDULE = [
    dict(epochs=100, train="head", lr=3e-3, name="head"),
    dict(epochs=30, train="all", lr=1e-4, name="fine-tune"),
]


def check(cfg: FinetuneConfig) -> None:
    """Every flag, the schedule and the backbone name, before anything is loaded or written."""
    for name in ("image_size", "batch_size", "pretrain_examples", "pretrain_epochs"):
        if getattr(cfg, name) < 1:
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

    transfer.preprocessing_mode(cfg.backbone)  # an unknown name fails here, with the closest names
    _toolbox.model_options(cfg, cfg.backbone)


def schedule_of(cfg: FinetuneConfig):
    """The run's schedule: the demo's, a preset or a file, rescaled to --epochs."""
    from kcnn import transfer

    schedule = transfer.Schedule([transfer.Phase(**p) for p in DEMO_SCHEDULE]) if cfg.schedule == "demo" \
        else transfer.load_schedule(cfg.schedule)
    if cfg.lr is not None:
        factor = cfg.lr / schedule[0].lr
        schedule = transfer.Schedule([dataclasses.replace(p, lr=p.lr * factor) for p in schedule])
    schedule = schedule.scale_epochs(cfg.epochs) if cfg.epochs is not None else schedule
    return _toolbox.schedule_with(cfg, schedule)


def run(cfg: FinetuneConfig) -> int:
    check(cfg)
    schedule = schedule_of(cfg)
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
                               **({"options": _toolbox.model_options(cfg, cfg.backbone)} if cfg.drop_path else {}))
        model = transfer.classifier(bb, len(splits.class_names), head=cfg.head, dropout=cfg.dropout,
                                    hidden=hidden)
        return model, bb

    def extra(run_dir, model, bb, splits, strategy):
        result = {"backbone": bb.name, "weights": used["weights"], "schedule": cfg.schedule, "data": cfg.data,
                  "labels_per_class": per_class, "train_examples": splits.num_examples.get("train")}
        if cfg.compare_scratch:
            result.update(_scratch(cfg, run_dir, bb, schedule, splits, hidden))
        return result

    def describe(report, run_dir):
        line = f"test accuracy: fine-tuned {report['test_accuracy']:.3f}"
        if "scratch_test_accuracy" in report:
            line += f", from scratch {report['scratch_test_accuracy']:.3f}"
        return f"{line}  ({run_dir.path})"

    config = _cli.run_config(cfg, per_class=per_class, schedule_phases=schedule.to_dict()["phase"])
    return _job.execute(_job.Job(
        recipe="finetune", cfg=cfg, config=config, schedule=schedule,
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
    plan = _toolbox.schedule_with(cfg, transfer.Schedule([transfer.Phase(
        epochs=schedule.total_epochs, train="all", lr=schedule[0].lr, bn="train", name="scratch")]))
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
