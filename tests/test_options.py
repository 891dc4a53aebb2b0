"""Choices have one home: every choice list of a recipe flag is one of kcnn.options' tuples, and the library checks
its arguments against the same tuples."""
import dataclasses

import pytest

from kcnn import options


def _library_lists() -> set:
    lists = {tuple(v) for k, v in vars(options).items() if k.isupper() and isinstance(v, tuple)}
    return lists | {tuple(sorted(v, key=str)) for v in lists} | {tuple(n or "none" for n in reversed(options.NORMS))}


def test_every_recipe_choice_list_comes_from_kcnn_options():
    from recipes import export, finetune, pretrain, train, tune

    own = {("train", "preset"): tuple(sorted(train.PRESETS)), ("export", "format"): tuple(export.FORMATS)}
    seen = 0
    for name, cls in (("train", train.TrainConfig), ("finetune", finetune.FinetuneConfig),
                      ("pretrain", pretrain.PretrainConfig), ("tune", tune.TuneConfig),
                      ("export", export.ExportConfig)):
        for field in dataclasses.fields(cls):
            choices = field.metadata.get("choices")
            if choices is None:
                continue
            seen += 1
            expected = own.get((name, field.name))
            if expected is not None:
                assert tuple(choices) == expected, (name, field.name)
            else:
                assert tuple(choices) in _library_lists(), f"{name} --{field.name}: {choices} is a copy"
    assert seen >= 15


def test_the_library_uses_the_same_tuples():
    from kcnn import distribute, layers, perf, transfer

    assert layers.HEADS is options.HEADS and layers.NORMS is options.NORMS
    assert perf.PRECISIONS is options.PRECISIONS and perf.MIXED_PRECISION_POLICIES is options.POLICIES
    assert distribute.KINDS is options.DISTRIBUTE_KINDS
    assert tuple(transfer.RULES) == options.SCHEDULE_RULES
    assert transfer.LR_SCHEDULES is options.LR_SCHEDULES and transfer.OPTIMIZERS is options.OPTIMIZERS
    with pytest.raises(ValueError, match="head"):
        layers.classifier_head(__import__("keras").Input((4, 4, 2)), 3, head="nope")
