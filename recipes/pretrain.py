"""Pretrain a backbone on a source dataset and save it as a kcnn checkpoint for `recipes.finetune --weights`.

The run folder is itself the checkpoint: ``model.keras`` plus ``kcnn.json`` (architecture, input size, class
names, preprocessing), beside the usual history, report and plots.

    python -m recipes.pretrain --data glyphs --backbone vgg_cifar --examples 20000 --epochs 5 --out runs/pre
    python -m recipes.finetune --weights runs/pre
    python -m recipes.pretrain --distribute mirrored          # all local GPUs (see recipes.train for multiworker)
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from recipes import _cli, _job, _toolbox


@dataclass
class PretrainConfig(_toolbox.Toolbox):
    data: str = field(default="glyphs", metadata={"help": "source dataset: glyphs | digits | fashion_mnist | mnist | "
                                                  "cifar10 | cifar100 (a class subset: fashion_mnist[0-4]) | "
                                                  "tfds:NAME | folder"})
    backbone: str = field(default="vgg_cifar", metadata={"help": "kcnn model or keras.applications name"})
    examples: int = field(default=8000, metadata={"help": "images to generate (glyphs) or use at most (others)"})
    epochs: int = field(default=6, metadata={"help": "training epochs"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (Adam, cosine decay)"})
    image_size: int = field(default=32, metadata={"help": "side in pixels"})
    batch_size: int = field(default=64, metadata={"help": "images per step"})
    augment: str = _cli.augment_field("none")
    out: str | None = field(default=None, metadata={"help": "run folder = checkpoint (default runs/pretrain-<time>)"})
    resume: bool = field(default=False, metadata={"help": "continue the interrupted run in --out"})
    overwrite: bool = field(default=False, metadata={"help": "replace the kcnn run in --out (never another "
                                                     "folder)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    verbose: int = field(default=1, metadata={"help": "0 silent, 1 progress bars, 2 one line per epoch"})
    precision: str = _cli.precision_field()
    distribute: str = _cli.distribute_field()
    cpu_devices: int | None = _cli.cpu_devices_field()


def check(cfg: PretrainConfig) -> None:
    """Every flag and the backbone name, before anything is loaded or written."""
    for name in ("examples", "epochs", "image_size", "batch_size"):
        if getattr(cfg, name) < 1:
            raise _cli.UsageError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(cfg, name)}")
    if not cfg.lr > 0:
        raise _cli.UsageError(f"--lr must be > 0; got {cfg.lr}")
    _cli.check_distribute(cfg)
    from kcnn import transfer

    transfer.preprocessing_mode(cfg.backbone)  # an unknown name fails here, with the closest names
    _toolbox.check(cfg)
    _toolbox.model_options(cfg, cfg.backbone)


def load_data(cfg: PretrainConfig):
    """The source's splits with at most ``--examples`` training examples (glyphs: that many generated).

    A training split smaller than ``--examples`` is used whole, and the recipe says how many it has.
    """
    from kcnn import data as kdata
    from kcnn import training

    common = dict(image_size=cfg.image_size, batch_size=cfg.batch_size, seed=cfg.seed,
                  augment=None if cfg.augment == "none" else cfg.augment, **_toolbox.data_options(cfg))
    option = training.size_option(cfg.data, cfg.examples)
    try:
        return kdata.load(cfg.data, **common, **option)
    except kdata.DataError as err:
        if "limit" not in option:
            raise
        refused = err
    splits = kdata.load(cfg.data, **common)  # fails as above when the limit was not the problem
    n = splits.num_examples["train"]
    if n >= cfg.examples:
        raise refused
    if cfg.verbose:
        print(f"--examples {cfg.examples}: the training split has {n} examples; using all {n}", flush=True)
    return splits


def run(cfg: PretrainConfig) -> int:
    check(cfg)
    from kcnn import training, transfer

    schedule = _toolbox.schedule_with(cfg, training.pretrain_schedule(cfg.epochs, cfg.lr))

    def build(splits):
        bb = transfer.backbone(cfg.backbone, None, (cfg.image_size, cfg.image_size, 3),
                               options=_toolbox.model_options(cfg, cfg.backbone))
        return transfer.classifier(bb, len(splits.class_names)), bb

    def before_report(run_dir, model, bb, splits):
        # the checkpoint is complete before report.json marks the run finished
        transfer.save_checkpoint(run_dir.path, model, arch=bb.name, input_shape=bb.input_shape,
                                 class_names=splits.class_names, preprocessing=bb.preprocessing)

    return _job.execute(_job.Job(
        recipe="pretrain", cfg=cfg, config=_cli.run_config(cfg), schedule=schedule,
        augmented=_toolbox.randomized(cfg, cfg.augment), load_data=lambda: load_data(cfg), build=build,
        before_report=before_report, best=_toolbox.best_epoch(cfg), tta=_toolbox.tta(cfg),
        extra=lambda run_dir, model, bb, splits, strategy: {"backbone": bb.name, "data": cfg.data},
        describe=lambda report, run_dir: (f"test accuracy {report['test_accuracy']:.3f}; checkpoint: "
                                          f"{run_dir.path} (use: python -m recipes.finetune --weights "
                                          f"{run_dir.path})"),
        title=lambda bb: f"pretrain {bb.name} on {cfg.data}"))


def main(argv=None) -> int:
    return _cli.run(run, PretrainConfig, argv, prog="python -m recipes.pretrain", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
