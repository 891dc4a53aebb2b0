"""Pretrain a backbone on a source dataset and save it as a kcnn checkpoint for `recipes.finetune --weights`.

The run folder is itself the checkpoint: ``model.keras`` plus ``kcnn.json`` (architecture, input size, class
names, preprocessing), beside the usual history, report and plots.

    python -m recipes.pretrain --data shapes --backbone vgg_cifar --examples 20000 --epochs 5 --out runs/pre
    python -m recipes.finetune --weights runs/pre
    python -m recipes.pretrain --distribute mirrored          # all local GPUs (see recipes.train for multiworker)
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from recipes import _cli


@dataclass
class PretrainConfig:
    data: str = field(default="shapes", metadata={"help": "source dataset: shapes | digits | tfds:NAME | folder"})
    backbone: str = field(default="vgg_cifar", metadata={"help": "kcnn model or keras.applications name"})
    examples: int = field(default=8000, metadata={"help": "images to generate (shapes) or use at most (others)"})
    epochs: int = field(default=6, metadata={"help": "training epochs"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate (Adam, cosine decay)"})
    image_size: int = field(default=32, metadata={"help": "side in pixels"})
    batch_size: int = field(default=64, metadata={"help": "images per step"})
    out: str | None = field(default=None, metadata={"help": "run folder = checkpoint (default runs/pretrain-<time>)"})
    resume: bool = field(default=False, metadata={"help": "continue the interrupted run in --out"})
    overwrite: bool = field(default=False, metadata={"help": "replace a finished run in --out"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    verbose: int = field(default=1, metadata={"help": "0 silent, 1 progress bars, 2 one line per epoch"})
    distribute: str = _cli.distribute_field()
    cpu_devices: int | None = _cli.cpu_devices_field()


def run(cfg: PretrainConfig) -> int:
    for name in ("examples", "epochs", "image_size", "batch_size"):
        if getattr(cfg, name) < 1:
            raise _cli.UsageError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(cfg, name)}")
    if not cfg.lr > 0:
        raise _cli.UsageError(f"--lr must be > 0; got {cfg.lr}")
    _cli.check_distribute(cfg)
    from kcnn import data as kdata
    from kcnn import distribute, training, transfer

    # multiworker: only the chief writes the run folder; the strategy comes before TensorFlow starts
    run_dir = distribute.open_run_dir(cfg.distribute, cfg.out or training.default_out("pretrain"),
                                      overwrite=cfg.overwrite, resume=cfg.resume, config=_cli.run_config(cfg))
    strategy = distribute.make_strategy(cfg.distribute, cpu_devices=cfg.cpu_devices)
    training.set_seed(cfg.seed)
    splits = kdata.load(cfg.data, image_size=cfg.image_size, batch_size=cfg.batch_size, seed=cfg.seed,
                        **training._size_option(cfg.data, cfg.examples))
    schedule = training.pretrain_schedule(cfg.epochs, cfg.lr)
    with strategy.scope():
        bb = transfer.backbone(cfg.backbone, None, (cfg.image_size, cfg.image_size, 3))
        model = transfer.classifier(bb, len(splits.class_names))
        history = distribute.fit_recipe(strategy, run_dir, model, bb, schedule, splits, augmented=False,
                                        verbose=cfg.verbose)
    if distribute.finish_worker(run_dir, strategy):
        return 0
    report = training.finish_run(run_dir, model, test_ds=splits.test, class_names=splits.class_names,
                                 history=history, seed=cfg.seed, extra={"backbone": bb.name, "data": cfg.data,
                                        "distribute": cfg.distribute,
                                        "replicas": strategy.num_replicas_in_sync},
                                 title=f"pretrain {bb.name} on {cfg.data}")
    transfer.save_checkpoint(run_dir.path, model, arch=bb.name, input_shape=bb.input_shape,
                             class_names=splits.class_names, preprocessing=bb.preprocessing)
    print(f"test accuracy {report['test_accuracy']:.3f}; checkpoint: {run_dir.path} "
          f"(use: python -m recipes.finetune --weights {run_dir.path})", flush=True)
    return 0


def main(argv=None) -> int:
    return _cli.run(run, PretrainConfig, argv, prog="python -m recipes.pretrain", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
