"""Train any kcnn registry model from scratch.

    python -m recipes.train --data digits --model resnet20 --epochs 10
    python -m recipes.train --data tfds:cifar10 --model resnet20 --preset he2015     # the ResNet paper's recipe
    python -m recipes.train --distribute mirrored                                    # all local GPUs
    TF_CONFIG='{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}' \
        python -m recipes.train --distribute multiworker                             # on every machine, own index

--batch-size is the global batch, split between the replicas. --distribute mirrored trains with Keras' fit under
tf.distribute.MirroredStrategy; --distribute multiworker with kcnn.distribute.fit_distributed, a custom loop under
MultiWorkerMirroredStrategy (Keras' fit fails there). Batch norm uses global-batch statistics in both. Only the
chief (worker 0) writes the run folder; resume it with --resume on every worker.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from kcnn import options
from recipes import _cli, _job, _toolbox

#: Training presets. he2015: He et al. 2015, section 4.2 (CIFAR): SGD momentum 0.9, weight decay 1e-4, batch 128,
#: lr 0.1, divided by 10 at 32k and 48k iterations, stop at 64k (= 82 + 41 + 41 epochs of 391 steps on 50k images);
#: 4-px pad + random 32-px crop + horizontal flip. kcnn's weight decay is decoupled (AdamW-style), the paper's is
#: an L2 term; at this rate the difference is small.
PRESETS = {
    "default": dict(batch_size=32, augment="none", phases=[dict(epochs=10, lr=1e-3, optimizer="adam")]),
    # fast: a short modern from-scratch recipe for a CPU (one-cycle SGD with Nesterov momentum, label smoothing,
    # pad-crop + flip, decoupled weight decay, batch 128), chosen on Fashion-MNIST's validation split (README,
    # "Fashion-MNIST")
    "fast": dict(batch_size=128, augment="standard", phases=[
        dict(epochs=20, lr=0.1, optimizer="sgd", momentum=0.9, nesterov=True, weight_decay=5e-4,
             schedule="onecycle", label_smoothing=0.1, name="onecycle")]),
    "he2015": dict(batch_size=128, augment="standard", phases=[
        dict(epochs=82, lr=0.1, optimizer="sgd", momentum=0.9, weight_decay=1e-4, name="lr0.1"),
        dict(epochs=41, lr=0.01, optimizer="sgd", momentum=0.9, weight_decay=1e-4, name="lr0.01"),
        dict(epochs=41, lr=0.001, optimizer="sgd", momentum=0.9, weight_decay=1e-4, name="lr0.001"),
    ]),
}


@dataclass
class TrainConfig(_toolbox.Toolbox):
    data: str = field(default="digits", metadata={"help": "digits | glyphs | tfds:NAME | a folder of class folders"})
    model: str = field(default="resnet20", metadata={"help": "a kcnn registry model (see kcnn.list_models())"})
    preset: str = field(default="default", metadata={"help": "training recipe", "choices": sorted(PRESETS)})
    epochs: int | None = field(default=None, metadata={"help": "total epochs (rescales the preset)"})
    batch_size: int | None = field(default=None, metadata={"help": "images per step (default: the preset's)"})
    lr: float | None = field(default=None, metadata={"help": "peak learning rate (default: the preset's)"})
    image_size: int = field(default=32, metadata={"help": "side in pixels"})
    augment: str | None = _cli.augment_field(None, "default: the preset's")
    norm: str = field(default="batch", metadata={"help": "batch | none",
                                                 "choices": [n or "none" for n in reversed(options.NORMS)]})
    class_weight: str = field(default="none", metadata={"help": "none | balanced (weights each training image by "
                                                        "n / (classes x its class's count))",
                                                        "choices": list(options.CLASS_WEIGHTS)})
    out: str | None = field(default=None, metadata={"help": "run folder (default runs/train-<time>)"})
    resume: bool = field(default=False, metadata={"help": "continue the interrupted run in --out"})
    overwrite: bool = field(default=False, metadata={"help": "replace the kcnn run in --out (never another "
                                                     "folder)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    verbose: int = field(default=1, metadata={"help": "0 silent, 1 progress bars, 2 one line per epoch"})
    show_batch: bool = _cli.show_batch_field()
    precision: str = _cli.precision_field()
    distribute: str = _cli.distribute_field()
    cpu_devices: int | None = _cli.cpu_devices_field()


def check(cfg: TrainConfig) -> None:
    """Every flag and the model name, before anything is loaded or written."""
    from kcnn import get_entry

    preset = PRESETS[cfg.preset]
    batch_size = cfg.batch_size or preset["batch_size"]
    for name, value in (("epochs", cfg.epochs), ("batch-size", batch_size), ("image-size", cfg.image_size)):
        if value is not None and value < 1:
            raise _cli.UsageError(f"--{name} must be >= 1; got {value}")
    if cfg.lr is not None and not cfg.lr > 0:
        raise _cli.UsageError(f"--lr must be > 0; got {cfg.lr}")
    _toolbox.check(cfg)
    _cli.check_distribute(cfg)
    get_entry(cfg.model)  # unknown names fail here, with the closest names
    _toolbox.model_options(cfg, cfg.model)


def run(cfg: TrainConfig) -> int:
    check(cfg)
    from kcnn import transfer

    preset = PRESETS[cfg.preset]
    batch_size = cfg.batch_size or preset["batch_size"]
    augment = cfg.augment or preset["augment"]
    phases = [dict(p, train="all", bn="train") for p in preset["phases"]]
    if cfg.lr is not None:
        scale = cfg.lr / phases[0]["lr"]
        phases = [dict(p, lr=p["lr"] * scale) for p in phases]
    schedule = transfer.Schedule([transfer.Phase(**p) for p in phases])
    if cfg.epochs is not None:
        schedule = schedule.scale_epochs(max(cfg.epochs, len(schedule)))
    schedule = _toolbox.schedule_with(cfg, schedule)

    def load_data():
        from kcnn import data as kdata

        return kdata.load(cfg.data, image_size=cfg.image_size, batch_size=batch_size, seed=cfg.seed,
                          augment=None if augment == "none" else augment, class_weight=cfg.class_weight,
                          **_toolbox.data_options(cfg))

    def build(splits):
        options = {"norm": None if cfg.norm == "none" else "batch", **_toolbox.model_options(cfg, cfg.model)}
        bb = transfer.backbone(cfg.model, None, (cfg.image_size, cfg.image_size, 3), options=options)
        return transfer.classifier(bb, len(splits.class_names)), bb

    config = _cli.run_config(cfg, batch_size=batch_size, augment=augment,
                             schedule_phases=schedule.to_dict()["phase"])
    return _job.execute(_job.Job(
        recipe="train", cfg=cfg, config=config, schedule=schedule, augmented=_toolbox.randomized(cfg, augment),
        load_data=load_data, build=build, best=_toolbox.best_epoch(cfg), tta=_toolbox.tta(cfg),
        show_batch=cfg.show_batch,
        extra=lambda run_dir, model, bb, splits, strategy: {"model": cfg.model, "data": cfg.data,
                                                           "preset": cfg.preset},
        describe=lambda report, run_dir: f"test accuracy {report['test_accuracy']:.3f}  ({run_dir.path})",
        title=lambda bb: f"{cfg.model} on {cfg.data}"))


def main(argv=None) -> int:
    return _cli.run(run, TrainConfig, argv, prog="python -m recipes.train", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
