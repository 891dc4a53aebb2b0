"""Schedule rules: fine-tuning schedules computed from the size of the training set.

A rule is a function ``(train_examples, batch_size) -> Schedule``. ``auto`` is kcnn's default for a user's data;
``fastai``, ``bit`` and ``keras-guide`` write three well-known fine-tuning recipes as kcnn schedules, so they can
be run on the same data and compared (``recipes.finetune --schedule bit``). Where a recipe needs something kcnn's
phases do not have, the docstring says what stands in for it.
"""
from __future__ import annotations

import math

from kcnn.options import SCHEDULE_RULES
from kcnn.transfer.schedule import Phase, Schedule

#: The rule behind ``auto_schedule`` (BiT's HyperRule in spirit: the length follows the training set's size):
#: (largest training set, optimizer steps in all). Epochs are then bounded by `AUTO_EPOCHS`.
AUTO_STEPS = ((20_000, 500), (500_000, 5_000), (float("inf"), 10_000))
#: The fewest and most epochs ``auto_schedule`` gives (a tiny set reaches its steps in hundreds of epochs).
AUTO_EPOCHS = (4, 100)
#: BiT-HyperRule's step boundaries by training-set size: (largest set, (warm-up end, then the steps where the
#: rate drops tenfold, the last one the end)).
BIT_STEPS = ((20_000, (100, 200, 300, 400, 500)), (500_000, (500, 3_000, 6_000, 9_000, 10_000)),
             (float("inf"), (500, 6_000, 12_000, 18_000, 20_000)))
#: BiT-HyperRule's rate (SGD, momentum 0.9).
BIT_LR = 3e-3


def _steps_per_epoch(train_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(int(train_examples) / int(batch_size)))


def auto_epochs(train_examples: int, batch_size: int) -> int:
    """The total epochs of `auto_schedule`: ``AUTO_STEPS`` optimizer steps, bounded by ``AUTO_EPOCHS``."""
    steps = next(count for limit, count in AUTO_STEPS if train_examples < limit)
    low, high = AUTO_EPOCHS
    return min(high, max(low, math.ceil(steps / _steps_per_epoch(train_examples, batch_size))))


def auto_schedule(train_examples: int, batch_size: int) -> Schedule:
    """The fine-tuning schedule kcnn uses for a user's data: its length from the training set's size.

    ``AUTO_STEPS`` gives the optimizer steps for ``train_examples`` (500 below 20,000 images, 5,000 below
    500,000, else 10,000), turned into epochs of ``ceil(train_examples / batch_size)`` steps and bounded by
    ``AUTO_EPOCHS``. Then two phases: the head alone for a fifth of the epochs (Adam 3e-3, the backbone frozen
    with its batch-norm statistics, on cached features when the data are not augmented), then every layer for the
    rest (Adam 1e-3, a tenth of the phase warming up, cosine decay to 0) with batch norm *training*, so it adapts to
    the target's statistics.

    Example:
        >>> [p.epochs for p in auto_schedule(500, 32)]
        [6, 26]
    """
    epochs = auto_epochs(train_examples, batch_size)
    head = max(1, round(epochs / 5))
    return Schedule([
        Phase(epochs=head, train="head", lr=3e-3, name="head"),
        Phase(epochs=epochs - head, train="all", lr=1e-3, bn="train", schedule="cosine", warmup=0.1,
              name="fine-tune"),
    ])


def fastai_schedule(train_examples: int, batch_size: int) -> Schedule:
    """fastai's ``fine_tune`` defaults as kcnn phases, as long in all as `auto_schedule`.

    One frozen epoch (one-cycle at 2e-3 rising over 99% of it), then every layer for the rest at half that rate
    (one-cycle rising over 30%) with discriminative rates: each block from the top at a tenth of the one above it,
    as fastai's ``slice(lr / 100, lr)`` gives its two body groups. AdamW with weight decay 0.01 as fastai's
    default optimizer; batch norm trains in the second phase. What differs from fastai: its one-cycle in the
    second phase starts at lr / 5 (kcnn's at lr / 25), and fastai also trains the backbone's batch-norm layers in
    the frozen epoch.
    """
    epochs = max(2, auto_epochs(train_examples, batch_size))
    return Schedule([
        Phase(epochs=1, train="head", lr=2e-3, optimizer="adamw", weight_decay=0.01, schedule="onecycle",
              warmup=0.99, name="frozen"),
        Phase(epochs=epochs - 1, train="all", lr=1e-3, lr_mult=0.1, optimizer="adamw", weight_decay=0.01,
              bn="train", schedule="onecycle", warmup=0.3, name="unfrozen"),
    ])


def bit_schedule(train_examples: int, batch_size: int) -> Schedule:
    """BiT-HyperRule as kcnn phases: every layer from the start, SGD with momentum 0.9 at 3e-3.

    The steps come from ``BIT_STEPS`` (below 20,000 images: a linear warm-up over 100 steps, then the rate drops
    tenfold at steps 200, 300 and 400, ending at 500), turned into epochs of ``ceil(train_examples /
    batch_size)`` steps: one phase per rate. What differs from BiT: kcnn's ``batch_size`` (BiT uses 512), a new
    optimizer state per phase, batch norm (BiT's networks use group norm and weight standardization), no MixUp
    (BiT's is for sets over 20,000 images) and no resizing (BiT's rule for images below 96 px upsamples them).
    """
    per_epoch = _steps_per_epoch(train_examples, batch_size)
    bounds = next(steps for limit, steps in BIT_STEPS if train_examples < limit)
    ends = [max(i + 1, round(step / per_epoch)) for i, step in enumerate(bounds)]
    ends = [max(end, ends[i - 1] + 1) if i else end for i, end in enumerate(ends)]
    warmup, first, *rest = ends
    phases = [Phase(epochs=first, train="all", lr=BIT_LR, optimizer="sgd", momentum=0.9, bn="train",
                    warmup=warmup, name="bit1")]
    for k, (start, end) in enumerate(zip([first, *rest], rest), start=1):
        lr = float(f"{BIT_LR / 10 ** k:.6g}")  # 3e-4, not 0.00030000000000000003
        phases.append(Phase(epochs=end - start, train="all", lr=lr, optimizer="sgd", momentum=0.9, bn="train",
                            name=f"bit{k + 1}"))
    return Schedule(phases)


def keras_guide_schedule(train_examples: int, batch_size: int) -> Schedule:
    """The Keras transfer-learning guide's two phases, as long in all as `auto_schedule`.

    The head on the frozen base with Adam at 1e-3 for two thirds of the epochs (the guide's 20 of 30), then every
    layer at 1e-5 for the rest with batch norm frozen (the guide keeps the base in inference mode).
    """
    epochs = max(2, auto_epochs(train_examples, batch_size))
    head = min(epochs - 1, max(1, round(epochs * 2 / 3)))
    return Schedule([
        Phase(epochs=head, train="head", lr=1e-3, name="head"),
        Phase(epochs=epochs - head, train="all", lr=1e-5, bn="frozen", name="fine-tune"),
    ])


#: Schedule rules by name: ``recipes.finetune --schedule NAME`` computes the schedule from the training set.
RULES = dict(zip(SCHEDULE_RULES, (auto_schedule, fastai_schedule, bit_schedule, keras_guide_schedule)))


def rule_name(name) -> str | None:
    """The key of `RULES` that ``name`` spells (case and "_" / "-" alike), or None when it names no rule."""
    key = str(name).lower().replace("_", "-")
    return key if key in RULES else None


def rule_schedule(name: str, train_examples: int, batch_size: int) -> Schedule:
    """The schedule rule ``name`` (a key of `RULES`; "_" and "-" alike) applied to a training set.

    Raises:
        ValueError: an unknown rule, naming the known ones.
    """
    key = rule_name(name)
    if key is None:
        raise ValueError(f"Unknown schedule rule {name!r}; rules: {', '.join(RULES)}")
    return RULES[key](int(train_examples), int(batch_size))
