"""Defaults that fit a user's data: the schedule rule, --backbone / --image-size / --compare-scratch / --schedule
resolved from the other flags, and class subsets of the Keras datasets."""
import dataclasses
import gzip
import json

import numpy as np
import pytest

from recipes import finetune


def test_auto_schedule_scales_with_the_training_set():
    from kcnn import transfer

    assert [p.epochs for p in transfer.auto_schedule(50, 32)] == [20, 80]       # 2 steps an epoch: capped at 100
    assert [p.epochs for p in transfer.auto_schedule(500, 32)] == [6, 26]       # 500 steps of 16
    assert [p.epochs for p in transfer.auto_schedule(19_000, 32)] == [1, 3]     # 500 steps, at least 4 epochs
    assert sum(p.epochs for p in transfer.auto_schedule(54_000, 128)) == 12     # 5,000 steps of 422
    head, tune = transfer.auto_schedule(500, 32)
    assert (head.train, head.bn, head.lr) == ("head", "frozen", 3e-3)
    assert (tune.train, tune.bn, tune.schedule, tune.lr) == ("all", "train", "cosine", 1e-3)


def _cfg(**kw):
    return finetune.resolved(finetune.FinetuneConfig(**kw))


def test_finetune_defaults_follow_the_data_and_the_weights(tmp_path):
    demo = _cfg()
    assert (demo.backbone, demo.image_size, demo.compare_scratch, demo.schedule) == ("vgg_cifar", 32, True, "demo")
    folder = _cfg(data=str(tmp_path), backbone="ResNet50", weights="imagenet")
    assert (folder.image_size, folder.compare_scratch, folder.schedule) == (224, False, "auto")
    assert _cfg(data=str(tmp_path), backbone="resnet20", weights="none").image_size == 32
    assert _cfg(data=str(tmp_path), backbone="resnet20", compare_scratch=True).compare_scratch is True
    checkpoint = tmp_path / "pre"
    checkpoint.mkdir()
    (checkpoint / "kcnn.json").write_text(json.dumps({"arch": "resnet20", "input_shape": [28, 28, 3]}))
    mine = _cfg(data="fashion_mnist", weights=str(checkpoint))
    assert (mine.backbone, mine.image_size) == ("resnet20", 28)
    from recipes import _cli

    with pytest.raises(_cli.UsageError, match=r"holds a resnet20, not a vgg_cifar: leave --backbone out \(or pass "
                                              r"--backbone resnet20\)"):
        finetune.check(finetune.FinetuneConfig(weights=str(checkpoint), backbone="vgg_cifar"))


def _fashion(folder, train_labels, test_labels):
    """Tiny Fashion-MNIST IDX files: each image's pixels are its index (mod 256)."""
    folder.mkdir(parents=True)
    for prefix, labels in (("train", train_labels), ("t10k", test_labels)):
        n = len(labels)
        images = (np.arange(n)[:, None, None] % 256 * np.ones((1, 28, 28))).astype(np.uint8)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(bytes([0, 0, 8, 3]) + np.array([n, 28, 28], ">i4").tobytes() + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(bytes([0, 0, 8, 1]) + np.array([n], ">i4").tobytes() + np.asarray(labels, np.uint8).tobytes())


def test_a_class_subset_keeps_those_classes_relabelled(tmp_path, monkeypatch):
    from kcnn import data as kdata

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    _fashion(tmp_path / "keras" / "datasets" / "fashion-mnist", np.arange(100) % 10, np.arange(40) % 10)
    splits = kdata.load("fashion_mnist[7,1]", image_size=28, val_fraction=0.2)
    assert splits.class_names == ["Sneaker", "Trouser"]
    assert splits.num_examples == {"train": 16, "val": 4, "test": 8}
    x, y = splits.arrays["test"]
    assert list(y) == [1, 0, 1, 0, 1, 0, 1, 0]          # test images 1, 7, 11, 17, ...: Trouser -> 1, Sneaker -> 0
    assert [int(v) for v in x[:4, 0, 0, 0]] == [1, 7, 11, 17]
    assert kdata.load("fashion_mnist[5-9]", image_size=28, val_fraction=0.2).class_names[0] == "Sandal"
    with pytest.raises(ValueError, match=r"NAME\[first-last\]"):
        kdata.load("fashion_mnist[x]", image_size=28)
    with pytest.raises(ValueError, match="classes 0..9"):
        kdata.load("fashion_mnist[8-12]", image_size=28)


def test_the_anchor_rules_as_kcnn_schedules():
    from kcnn import transfer

    def shape(schedule):
        return [(p.epochs, p.train, p.lr, p.optimizer, p.bn) for p in schedule]

    # fastai fine_tune: 1 frozen epoch, then everything at half the rate, blocks a tenth each, as long as auto
    frozen, unfrozen = transfer.rule_schedule("fastai", 50, 32)
    assert (frozen.epochs, frozen.train, frozen.lr, frozen.schedule, frozen.warmup) == \
        (1, "head", 2e-3, "onecycle", 0.99)
    assert (unfrozen.epochs, unfrozen.lr, unfrozen.lr_mult, unfrozen.warmup) == (99, 1e-3, 0.1, 0.3)
    assert frozen.optimizer == unfrozen.optimizer == "adamw" and frozen.weight_decay == 0.01
    # BiT-HyperRule below 20k images: warm-up 100 steps, tenfold drops at 200/300/400, end at 500 (2 steps an epoch)
    bit = transfer.rule_schedule("bit", 50, 32)
    assert shape(bit) == [(100, "all", 3e-3, "sgd", "train"), (50, "all", 3e-4, "sgd", "train"),
                          (50, "all", 3e-5, "sgd", "train"), (50, "all", 3e-6, "sgd", "train")]
    assert bit[0].warmup == 50 and bit.total_epochs == 250
    assert [p.epochs for p in transfer.rule_schedule("bit", 500, 32)] == [12, 7, 6, 6]     # 16 steps an epoch
    assert transfer.rule_schedule("bit", 100_000, 100).total_epochs == 10_000 // 1000
    # the Keras guide: head two thirds at 1e-3, then everything at 1e-5 with BN frozen
    assert shape(transfer.rule_schedule("keras_guide", 500, 32)) == [(21, "head", 1e-3, "adam", "frozen"),
                                                                     (11, "all", 1e-5, "adam", "frozen")]
    assert shape(transfer.rule_schedule("AUTO", 500, 32)) == shape(transfer.auto_schedule(500, 32))
    with pytest.raises(ValueError, match="Unknown schedule rule 'bitt'; rules: auto, fastai, bit, keras-guide"):
        transfer.rule_schedule("bitt", 50, 32)


def test_finetune_takes_a_rule_by_name(tmp_path):
    cfg = _cfg(data=str(tmp_path), backbone="resnet20", weights="none", schedule="bit")
    assert finetune.is_rule(cfg.schedule) and not finetune.is_rule("two-phase")
    assert [p.name for p in finetune.schedule_of(cfg, 50)] == ["bit1", "bit2", "bit3", "bit4"]
    assert finetune.schedule_of(dataclasses.replace(cfg, epochs=25), 50).total_epochs == 25
