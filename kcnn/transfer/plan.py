"""One phase plan, two engines: what each phase of a schedule trains, read by `fit_schedule` (Keras fit) and by
`kcnn.distribute.fit_distributed` (a custom loop under MultiWorkerMirroredStrategy) alike.

A plan is data: per phase its number, the `Phase` (epochs, optimizer, rates, BN mode), the global epochs it
spans and the backbone blocks it trains. `phase_runner` turns one phase into what an engine trains: the
trainability set on the classifier, the view that calls the backbone in the phase's BN mode, the per-block
learning-rate multipliers and the BN momentum to restore afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass

import keras

from kcnn import layers as kl
from kcnn.transfer.blocks import block_layers, lr_multipliers, set_trainable, split_model
from kcnn.transfer.schedule import Phase, load_schedule, resolve_train


@dataclass(frozen=True)
class PhasePlan:
    """One phase of a schedule, resolved against a classifier.

    Attributes:
        number: 1-based phase number.
        phase: The `Phase` (epochs, train spec, optimizer, rates, BN mode, ...).
        start: Global epochs finished before the phase (0-based start).
        end: Global epochs finished after it.
        blocks: The backbone blocks it trains (empty: the head only).
    """

    number: int
    phase: Phase
    start: int
    end: int
    blocks: tuple

    @property
    def head_only(self) -> bool:
        return not self.blocks

    def first_epoch(self, initial_epoch: int) -> int:
        """The first epoch (0-based) this phase runs when ``initial_epoch`` epochs are done."""
        return max(self.start, initial_epoch)


def make_plan(model: keras.Model | None, backbone, schedule) -> list[PhasePlan]:
    """The phases of ``schedule`` (a `Schedule`, list of phases, preset name or file) resolved on ``model``.

    With ``backbone`` None (a plain model, not a `classifier`) every phase must train "all".

    Raises:
        ValueError: naming the phase whose ``train`` spec does not fit the backbone's blocks.
    """
    schedule = load_schedule(schedule)
    if backbone is None:
        odd = [p.name for p in schedule if p.train != "all"]
        if odd:
            raise ValueError(f"Phases that train part of a model need `backbone` (a kcnn.transfer classifier); "
                             f"phase {odd[0]!r} does not train 'all'.")
        names = []
    else:
        names = [b for b, _ in block_layers(model, backbone)]
    plans = []
    for number, (phase, (start, end)) in enumerate(zip(schedule, schedule.boundaries()), start=1):
        if backbone is None:
            blocks = ()
        else:
            try:
                blocks = tuple(resolve_train(phase.train, names))
            except ValueError as err:
                raise ValueError(f"phase {number} ({phase.name!r}): {err}") from None
        plans.append(PhasePlan(number, phase, start, end, blocks))
    return plans


class Diverged(ValueError):
    """Training diverged: an epoch ended with a NaN or infinite loss. ``epoch`` (1-based) and ``loss`` say where;
    nothing of that epoch was handed to ``on_epoch_end``, so the last checkpoint is the last good epoch."""

    def __init__(self, epoch: int, phase: str, loss: float):
        super().__init__(f"training diverged: the loss was {loss} in epoch {epoch} (phase {phase!r}); the last "
                         f"good epoch ({epoch - 1}) is kept: lower the learning rate or check the data for "
                         "NaN or infinite values")
        self.epoch, self.phase, self.loss = epoch, phase, loss


def check_finite(row: dict) -> None:
    """Raise `Diverged` when an epoch's training loss is NaN or infinite."""
    import math

    loss = row.get("loss")
    if loss is not None and not math.isfinite(loss):
        raise Diverged(int(row["epoch"]), str(row.get("phase_name", "")), loss)


def check_initial_epoch(initial_epoch) -> int:
    """``initial_epoch`` as a non-negative int, or a ValueError naming it."""
    if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, int) or initial_epoch < 0:
        raise ValueError(f"`initial_epoch` must be an integer >= 0. Received: initial_epoch={initial_epoch!r}")
    return initial_epoch


def sublayers(model) -> list:
    """Every layer of ``model``, nested models' layers included."""
    out = []
    for layer in model.layers:
        out.append(layer)
        if isinstance(layer, keras.Model):
            out.extend(sublayers(layer))
    return out


def set_bn_momentum(body, momentum) -> dict:
    """Set the momentum of the trainable BN layers; returns {layer: old momentum} to restore."""
    if momentum is None:
        return {}
    old = {}
    for layer in sublayers(body):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            old[layer] = layer.momentum
            layer.momentum = float(momentum)
    return old


class TrainView(keras.Model):
    """The classifier's layers called in order, with the backbone's ``training`` flag fixed at run time."""

    def __init__(self, pre, body, head, body_training: bool):
        super().__init__(name="phase_view")
        self.pre_layers = list(pre)
        self.body = body
        self.head_layers = list(head)
        self.body_training = body_training

    def call(self, inputs, training=None):
        x = inputs
        for layer in self.pre_layers:
            x = layer(x)
        x = self.body(x, training=training if self.body_training else False)
        for layer in self.head_layers:
            x = layer(x)
        return x


def prepare_phase(model, backbone, plan: PhasePlan):
    """Set the trainability of ``plan`` on ``model``; returns the per-block lr multipliers (or None)."""
    if backbone is None:
        return None
    set_trainable(model, backbone, list(plan.blocks) or "head")
    if plan.phase.lr_mult is not None and plan.blocks:
        return lr_multipliers(model, backbone, plan.blocks, plan.phase.lr_mult)
    return None


def phase_runner(model, backbone, plan: PhasePlan, bn_momentum: float | None = kl.BN_MOMENTUM):
    """(model to train, {BN layer: momentum to restore}) for one phase on the full data.

    A `classifier` trains through a `TrainView` (backbone in inference mode unless ``bn="train"``, whose
    trained BN layers then use ``bn_momentum``); a plain model trains as it is."""
    if backbone is None:
        return model, {}
    pre, body, head = split_model(model)
    runner = TrainView(pre, body, head, body_training=plan.phase.bn == "train")
    restore = set_bn_momentum(body, bn_momentum) if plan.phase.bn == "train" else {}
    return runner, restore
