"""One phase plan, two engines: what each phase of a schedule trains, read by `fit_schedule` (Keras fit) and by
`kcnn.distribute.fit_distributed` (a custom loop under MultiWorkerMirroredStrategy) alike.

A plan is data: per phase its number, the `Phase` (epochs, optimizer, rates, BN mode), the global epochs it
spans and the backbone blocks it trains. `phase_runner` turns one phase into what an engine trains: the
trainability set on the classifier, the view that calls the backbone in the phase's BN mode, the per-block
learning-rate multipliers and the BN momentum to restore afterwards.
"""
from __future__ import annotations

import math
import time
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


class PhaseRun:
    """One phase's set-up and tear-down, shared by both engines; each engine keeps only its epoch loop.

    On entry: the phase's record is appended to ``history.phases``; a phase that ended by ``initial_epoch`` is
    ``skipped`` (the engine ``continue``s); otherwise the trainability is set (`prepare_phase`), and the first
    epoch, the per-block multipliers, whether the optimizer is restored from ``resume_state`` and the learning
    rate (`kcnn.transfer.optim.phase_rate`: a restored optimizer carries the schedule's position) are known.
    The engine makes its runner, calls `optimizer` (then `restore_optimizer` once it is built), `header`, and
    `epoch_done` after each epoch. On a normal exit the weight average is copied into the model (its result),
    and the record's time and epoch count are final, the summary is printed and ``on_phase_end`` called; on
    any exit the BN momenta in ``bn_restore`` are put back.

    Example:
        >>> for plan in plans:
        ...     with PhaseRun(plan, model, backbone, history, count=len(plans), steps=steps) as run:
        ...         if run.skipped:
        ...             continue
        ...         runner, run.bn_restore = phase_runner(model, backbone, plan)
        ...         optimizer = run.optimizer()
        ...         ...  # the engine's epochs; run.epoch_done() after each
    """

    def __init__(self, plan: PhasePlan, model, backbone, history, *, count: int, steps: int,
                 initial_epoch: int = 0, resume_state: dict | None = None, verbose: bool = True,
                 on_phase_end=None, resume_step: int = 0):
        self.plan, self.model, self.backbone, self.history = plan, model, backbone, history
        self.count, self.steps, self.initial_epoch, self.resume_state = count, steps, initial_epoch, resume_state
        self.verbose, self.on_phase_end = verbose, on_phase_end
        self.resume_step = int(resume_step or 0)
        self.phase, self.number = plan.phase, plan.number
        self.bn_restore: dict = {}
        self._optimizer = None

    def __enter__(self) -> "PhaseRun":
        from kcnn.transfer.history import phase_record
        from kcnn.transfer.optim import phase_rate
        from kcnn.transfer.state import checkpoint_phase

        plan = self.plan
        self.skipped = plan.end <= self.initial_epoch
        self.record = phase_record(plan, skipped=self.skipped)
        self.history.phases.append(self.record)
        if self.skipped:
            return self
        self.first = plan.first_epoch(self.initial_epoch)
        self.multipliers = prepare_phase(self.model, self.backbone, plan)
        self.record["trainable_params"] = int(sum(math.prod(v.shape) for v in self.model.trainable_variables))
        inside = self.resume_step > 0 and self.first == self.initial_epoch  # written inside epoch `first`
        self.restoring = (self.first > plan.start or inside) and checkpoint_phase(self.resume_state) == self.number
        self.resume_step = self.resume_step if self.restoring and inside else 0
        self.rate = phase_rate(self.phase, self.steps,
                               offset=0 if self.restoring else (self.first - plan.start) * self.steps)
        #: the epoch the rate schedule counts from (a restored optimizer: the phase's start)
        self.origin = plan.start if self.restoring else self.first
        self.start_clock()
        return self

    def start_clock(self) -> None:
        """Count the phase's seconds from now (the feature cache's fill is counted apart)."""
        self.started, self.before = time.perf_counter(), len(self.history.epochs)

    def optimizer(self):
        """The phase's optimizer: `kcnn.transfer.make_optimizer` with its rate and the block multipliers."""
        from kcnn.transfer.optim import make_optimizer

        self._optimizer = make_optimizer(self.phase, self.rate, self.multipliers)
        return self._optimizer

    def restore_optimizer(self, variables) -> None:
        """When the phase resumes from ``resume_state``: build the optimizer on ``variables`` (if not yet built)
        and load its slots and iteration count."""
        from kcnn.transfer.state import restore_optimizer_state

        if self.restoring:
            if not self._optimizer.built:
                self._optimizer.build(variables)
            restore_optimizer_state(self._optimizer, self.resume_state)

    def header(self, cached: bool = False) -> None:
        from kcnn.transfer.history import phase_header

        if self.verbose:
            print(phase_header(self.number, self.count, self.phase, self.plan.start, self.plan.end, self.first,
                               self.multipliers, cached), flush=True)

    def epoch_done(self) -> None:
        """After each epoch's history row: the record's epoch count and seconds so far."""
        self.record["epochs_run"] = len(self.history.epochs) - self.before
        self.record["seconds"] = time.perf_counter() - self.started

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self.skipped:
            return False
        for layer, momentum in self.bn_restore.items():
            layer.momentum = momentum
        if exc_type is not None:
            return False
        from kcnn.transfer.history import phase_summary
        from kcnn.transfer.optim import copy_average

        if self._optimizer is not None:
            copy_average(self._optimizer)  # the phase's result is its weight average
        self.epoch_done()
        if self.verbose:
            print(phase_summary(self.number, self.count, self.phase, self.record,
                                self.history.epochs[self.before:]), flush=True)
        if self.on_phase_end is not None:
            self.on_phase_end(self.number, self.phase, self.history)
        return False
