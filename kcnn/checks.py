"""Pre-flight checks: what is cheap to measure before a fine-tuning run and expensive to find out after it.

`preflight(model, backbone, splits, schedule, image_size=...)` runs six checks and returns them as data, one
dict each::

    {"name": "class balance", "status": "ok" | "warn" | "fail", "numbers": {...}, "advice": "what to do"}

============================  ================================================================================
check                         warn / fail when
============================  ================================================================================
``input range``               fail: a training batch has max <= 1 (images scaled to [0, 1]; every kcnn
                              preprocessing mode expects RGB in [0, 255]); warn: values outside [0, 255]
``frozen batch norm``         fail: under the first ``bn="frozen"`` phase's trainability, one fit-mode call
                              (``training=True``) changes a BN layer's statistics, or the backbone's output
                              in fit mode differs from evaluate mode by more than `BN_TOLERANCE` (relative)
``class balance``             warn: largest / smallest training class above `BALANCE_RATIO_WARN` (unless the
                              splits are class-weighted), a validation class with fewer than
                              `MIN_VAL_PER_CLASS` images, a test class with fewer than `MIN_TEST_PER_CLASS`
``image size``                fail: below the backbone's minimum side; warn: below half its native size
                              (`native_size`: keras.applications models' from the family table
                              `kcnn.transfer.families`, kcnn models' the registry's default input)
``duplicates``                warn: validation or test images whose pixels equal a training image's (or test
                              images equal to validation ones); exact duplicates only
``learning rates``            warn: a phase that trains backbone blocks at a peak rate (``lr`` times its
                              largest ``lr_mult`` factor) >= the head phase's ``lr``
============================  ================================================================================

`format_checks` prints them as a short list, one line each; `raise_on_fail` raises `CheckFailed` (a
``ValueError``) naming the failed check and its fix. The checks leave the model as they found it
(trainability and batch-norm statistics are restored) and read the data in their fixed, unaugmented order.
"""
from __future__ import annotations

import hashlib
import math

import keras
import numpy as np

from kcnn.registry import get_entry
from kcnn.transfer import TrainView, block_layers, families, make_plan, prepare_phase, split_model

__all__ = [
    "BALANCE_RATIO_WARN", "BN_TOLERANCE", "CHECKS", "CheckFailed", "MIN_TEST_PER_CLASS", "MIN_VAL_PER_CLASS",
    "STATUSES",
    "check_class_balance", "check_duplicates", "check_frozen_bn", "check_image_size", "check_input_range",
    "check_learning_rates", "format_checks", "native_size", "preflight", "raise_on_fail",
]

STATUSES = ("ok", "warn", "fail")
#: The checks' names, in the order `preflight` runs them.
CHECKS = ("input range", "frozen batch norm", "class balance", "image size", "duplicates", "learning rates")
#: Largest / smallest training-class count above which ``class balance`` warns (unweighted splits).
BALANCE_RATIO_WARN = 3.0
#: Fewest validation images per class before ``class balance`` warns (a class's accuracy then moves in
#: steps of 50% or more, so early stopping and model choice follow noise).
MIN_VAL_PER_CLASS = 2
#: Fewest test images per class before ``class balance`` warns.
MIN_TEST_PER_CLASS = 5
#: Largest difference between fit-mode and evaluate-mode backbone outputs, relative to the largest output.
BN_TOLERANCE = 1e-4
#: Images of the first training batch run through the backbone by ``frozen batch norm``.
BN_CHECK_IMAGES = 8
#: Native input sides of keras.applications models that are not 224 (the size their ImageNet weights saw), read
#: from the family table (`kcnn.transfer.families.FAMILIES`).
KERAS_NATIVE_SIZES = {model: side for family in families.FAMILIES for model, side in family.models.items()
                      if side != families.DEFAULT_NATIVE_SIZE}
KERAS_NATIVE_DEFAULT = families.DEFAULT_NATIVE_SIZE


class CheckFailed(ValueError):
    """A pre-flight check failed; ``checks`` holds every check's dict."""

    def __init__(self, message: str, checks=()):
        super().__init__(message)
        self.checks = list(checks)


def _check(name: str, status: str, numbers: dict, advice: str = "") -> dict:
    assert status in STATUSES, status
    return {"name": name, "status": status, "numbers": numbers, "advice": advice}


def _size_pair(image_size) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        return int(image_size), int(image_size)
    try:
        height, width = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"`image_size` must be an int or (height, width). "
                         f"Received: image_size={image_size!r}") from None
    return height, width


def _first_images(splits) -> np.ndarray:
    """The first batch of the training split in its fixed order (no shuffle, no augmentation), as numpy."""
    for batch in splits.dataset("train", training=False):
        return np.asarray(batch[0])
    return np.zeros((0,), np.float32)


# ----------------------------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------------------------

def check_input_range(images, backbone=None) -> dict:
    """``input range``: what the data deliver (one training batch, before the model) vs [0, 255].

    kcnn's data deliver float RGB in [0, 255] and the classifier's preprocessing layer (every mode of
    `kcnn.transfer.PREPROCESSING`) expects exactly that, so a batch whose max is <= 1 was scaled twice.
    """
    name = "input range"
    x = np.asarray(images, np.float64)
    expected = "[0, 255]"
    numbers = {"expected": expected}
    if backbone is not None:
        numbers["preprocessing"] = backbone.preprocessing
    if x.size == 0:
        return _check(name, "ok", {**numbers, "skipped": "no training images"})
    low, high, mean = float(x.min()), float(x.max()), float(x.mean())
    numbers.update(min=low, max=high, mean=mean)
    if high <= 1.0:
        return _check(name, "fail", numbers,
                      "images look scaled to [0, 1]; the backbone expects [0, 255]: pass RGB in [0, 255] "
                      "(kcnn.data does) and let the classifier's preprocess layer scale it")
    if low < -1e-3 or high > 255.0 + 1e-3:
        return _check(name, "warn", numbers,
                      f"values outside [0, 255] (min {low:.3g}, max {high:.3g}): the images look already "
                      f"preprocessed; pass raw RGB in [0, 255], the classifier preprocesses it itself")
    return _check(name, "ok", numbers)


def _trainable_flags(model) -> list:
    """(layer, trainable) for ``model`` and every layer in it, parents before children (restore order)."""
    out = [(model, model.trainable)]
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out.extend(_trainable_flags(layer))
        else:
            out.append((layer, layer.trainable))
    return out


def _bn_layers(model) -> list:
    """Every BatchNormalization layer in ``model``, nested models included."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(_bn_layers(layer))
    return found


def check_frozen_bn(model, backbone, schedule, images) -> dict:
    """``frozen batch norm``: under the first ``bn="frozen"`` phase's trainability, the backbone as fit calls
    it (`kcnn.transfer.TrainView`, ``training=True``) must change no BN statistic and agree with the backbone
    as evaluate calls it (``training=False``).

    Either fails only when some layer of the backbone uses or updates batch statistics although the phase
    keeps batch norm frozen (a layer that ignores ``training``); its moving statistics would drift during the
    phase. The model's trainability and every BN variable are restored afterwards.
    """
    name = "frozen batch norm"
    if backbone is None:
        return _check(name, "ok", {"skipped": "no backbone (a plain model trains as it is)"})
    plans = make_plan(model, backbone, schedule)
    plan = next((p for p in plans if p.phase.bn == "frozen"), None)
    if plan is None:
        return _check(name, "ok", {"skipped": "no phase keeps batch norm frozen (bn='train' everywhere)"})
    x = np.asarray(images, np.float32)[:BN_CHECK_IMAGES]
    if x.size == 0:
        return _check(name, "ok", {"skipped": "no training images"})
    pre, body, _ = split_model(model)
    flags = _trainable_flags(model)
    bn_layers = _bn_layers(body)
    variables = [v for layer in bn_layers for v in layer.weights]
    saved = [np.array(v.numpy()) for v in variables]
    try:
        prepare_phase(model, backbone, plan)
        view = TrainView(pre, body, [], body_training=plan.phase.bn == "train")
        fit_mode = np.asarray(view(x, training=True), np.float64)
        owners = [layer.name for layer in bn_layers for _ in layer.weights]
        moved = sorted({owner for owner, v, old in zip(owners, variables, saved)
                        if not np.array_equal(v.numpy(), old)})
        eval_mode = np.asarray(view(x, training=False), np.float64)
    finally:
        for variable, value in zip(variables, saved):
            variable.assign(value)
        for layer, flag in flags:
            layer.trainable = flag
    diff = float(np.max(np.abs(fit_mode - eval_mode))) if fit_mode.size else 0.0
    scale = float(np.max(np.abs(eval_mode))) if eval_mode.size else 0.0
    relative = diff / max(scale, 1e-12)
    label = plan.phase.name or plan.phase.train_spec
    numbers = {"phase": f"{plan.number}:{label}", "bn_layers": len(bn_layers),
               "max_abs_diff": diff, "relative_diff": relative, "tolerance": BN_TOLERANCE,
               "stats_changed": len(moved)}
    if moved:
        return _check(name, "fail", numbers,
                      f"phase {plan.number} ({label!r}) keeps bn='frozen' but one fit-mode step changed "
                      f"the statistics of {len(moved)} BN layer(s) (first: {moved[0]!r}); they would drift "
                      "during the phase: replace the layer with keras.layers.BatchNormalization or use "
                      "bn='train'")
    if relative > BN_TOLERANCE:
        return _check(name, "fail", numbers,
                      f"phase {plan.number} ({label!r}) keeps bn='frozen' but the backbone's output changes "
                      f"with training=True (relative difference {relative:.2g}): a layer in it normalises "
                      "with batch statistics regardless of `training`; replace it with "
                      "keras.layers.BatchNormalization or use bn='train'")
    return _check(name, "ok", numbers)


def check_class_balance(splits) -> dict:
    """``class balance``: training counts per class (largest / smallest ratio), the smallest validation and
    test classes."""
    name = "class balance"
    names = list(splits.class_names)
    counts = {s: splits.class_counts(s) for s in ("train", "val", "test")}
    train = counts["train"]
    smallest = int(train.min()) if len(train) else 0
    ratio = float(train.max()) / smallest if smallest else math.inf
    weighted = getattr(splits, "class_weight", None)
    numbers = {"ratio": ratio, "train": {n: int(c) for n, c in zip(names, train)}, "class_weight": weighted}
    problems, advice = [], []
    if ratio > BALANCE_RATIO_WARN and weighted is None:
        low = names[int(np.argmin(train))]
        problems.append("ratio")
        advice.append(f"training classes are imbalanced ({ratio:.3g}:1, fewest: {low!r}); load the data "
                      f"with class_weight='balanced' (--class-weight balanced) or collect more of the small "
                      f"classes")
    for split, minimum in (("val", MIN_VAL_PER_CLASS), ("test", MIN_TEST_PER_CLASS)):
        per_class = counts[split]
        if splits.num_examples.get(split, 0) == 0:
            numbers[f"{split}_min"] = 0
            continue
        numbers[f"{split}_min"] = int(per_class.min())
        few = [n for n, c in zip(names, per_class) if c < minimum]
        if few:
            numbers[f"{split}_below_{minimum}"] = {n: int(per_class[names.index(n)]) for n in few}
            problems.append(split)
            shown = ", ".join(repr(n) for n in few[:3])
            shown += f" and {len(few) - 3} more" if len(few) > 3 else ""
            advice.append(f"{len(few)} class(es) have fewer than {minimum} {split} images ({shown}); raise "
                          f"{split}_fraction or add {split} images, else their {split} accuracy is noise")
    return _check(name, "warn" if problems else "ok", numbers, "; ".join(advice))


def native_size(backbone) -> int:
    """The input side a backbone's architecture (and its published weights) was made for.

    keras.applications: the family table's (`kcnn.transfer.families`; `KERAS_NATIVE_SIZES` or 224). kcnn models:
    the registry's default input side. Else the backbone's own input side.
    """
    if backbone.source == "kcnn":
        try:
            return int(min(get_entry(backbone.name).default_input_shape[:2]))
        except (KeyError, ValueError):
            pass
    else:
        return families.native_size(backbone.name)
    sides = [s for s in backbone.input_shape[:2] if s is not None]
    return int(min(sides)) if sides else KERAS_NATIVE_DEFAULT


def native_size_of(name: str) -> int:
    """`native_size` by a backbone's name (keras.applications or kcnn registry), before anything is built."""
    from kcnn.transfer.names import resolve

    source, arch = resolve(name)
    if source == "kcnn":
        return int(min(get_entry(arch).default_input_shape[:2]))
    return families.native_size(arch)


def check_image_size(backbone, image_size, model=None) -> dict:
    """``image size``: the images' side against the backbone's minimum (fail below) and half its native size
    (warn below: features learned at 224 px lose most of their meaning at a quarter of the scale).

    The side that counts is the smaller of the data's and the one the backbone runs at (``model``'s nested
    backbone input, else ``backbone.input_shape``): upsampling a small image adds no detail.
    """
    name = "image size"
    height, width = _size_pair(image_size)
    if backbone is None:
        return _check(name, "ok", {"image_size": [height, width], "skipped": "no backbone"})
    run_at = backbone.input_shape[:2]
    if model is not None:
        run_at = tuple(split_model(model)[1].inputs[0].shape[1:3])
    sides = [height, width] + [s for s in run_at if s is not None]
    effective = min(sides)
    native = native_size(backbone)
    numbers = {"image_size": [height, width], "backbone_input": [s for s in run_at], "effective": effective,
               "min_size": backbone.min_size, "native": native}
    if effective < backbone.min_size:
        return _check(name, "fail", numbers,
                      f"{backbone.name} needs at least {backbone.min_size} px but sees {effective} px of "
                      f"detail; load the images at --image-size {max(backbone.min_size, native // 2)} or "
                      f"more")
    if effective < native / 2:
        return _check(name, "warn", numbers,
                      f"{effective} px is under half of {backbone.name}'s native {native} px: pretrained "
                      f"features lose much of their meaning; use --image-size {native // 2} or more if the "
                      f"images have the detail")
    return _check(name, "ok", numbers)


def _image_hashes(splits, split: str) -> list[bytes]:
    """A 16-byte hash of each image's pixels (float32 bytes) of ``split``, in its fixed order, by batches."""
    if splits.num_examples.get(split, 0) == 0:
        return []
    out = []
    for batch in splits.dataset(split, training=False, batch_size=256):
        x = np.ascontiguousarray(np.asarray(batch[0], np.float32))
        out.extend(hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in x)
    return out


def check_duplicates(splits) -> dict:
    """``duplicates``: validation / test images whose pixels equal a training (or validation) image's."""
    name = "duplicates"
    hashes = {s: _image_hashes(splits, s) for s in ("train", "val", "test")}
    sets = {s: set(h) for s, h in hashes.items()}
    numbers = {
        "val_in_train": sum(h in sets["train"] for h in hashes["val"]),
        "test_in_train": sum(h in sets["train"] for h in hashes["test"]),
        "test_in_val": sum(h in sets["val"] for h in hashes["test"]),
        "train_repeats": len(hashes["train"]) - len(sets["train"]),
    }
    leaks = {k: v for k, v in numbers.items() if k != "train_repeats" and v}
    if leaks:
        said = ", ".join(f"{v} {k.replace('_in_', ' image(s) also in ')}" for k, v in leaks.items())
        return _check(name, "warn", numbers,
                      f"{said}: remove them from the evaluation split (or split by source image), else "
                      f"validation/test accuracy overstates what the model learned")
    return _check(name, "ok", numbers)


def check_learning_rates(model, backbone, schedule) -> dict:
    """``learning rates``: every phase that trains backbone blocks against the (first) head-only phase.

    A block's peak rate is the phase's ``lr`` times ``lr_mult ** k`` (k = 1 for the deepest block, as
    `kcnn.transfer.lr_multipliers`); the ratio reported is the largest of them over the head phase's ``lr``.
    Fine-tuning pretrained blocks at the rate that trained a fresh head overwrites their features.
    """
    name = "learning rates"
    plans = make_plan(model, backbone, schedule)
    head = next((p for p in plans if p.head_only), None)
    if head is None or backbone is None:
        return _check(name, "ok", {"skipped": "no head-only phase to compare with"})
    order = [b for b, _ in block_layers(model, backbone)]
    ratios, high = {}, []
    for plan in plans:
        if plan.head_only:
            continue
        mult = 1.0
        if plan.phase.lr_mult is not None:
            depths = [len(order) - order.index(b) for b in plan.blocks]
            mult = max(plan.phase.lr_mult ** d for d in depths)
        label = f"{plan.number}:{plan.phase.name or plan.phase.train_spec}"
        ratios[label] = plan.phase.lr * mult / head.phase.lr
        if ratios[label] >= 1.0:
            high.append(label)
    numbers = {"head_lr": head.phase.lr, "ratios": ratios}
    if high:
        worst = max(ratios[k] for k in high)
        return _check(name, "warn", numbers,
                      f"phase(s) {', '.join(high)} train backbone blocks at {worst:.3g}x the head phase's "
                      f"rate {head.phase.lr:g}; use about a tenth of it or less "
                      f"(e.g. lr={head.phase.lr / 10:g}) so the pretrained features are refined, not "
                      f"overwritten")
    return _check(name, "ok", numbers)


# ----------------------------------------------------------------------------------------------------------
# All of them
# ----------------------------------------------------------------------------------------------------------

def preflight(model, backbone, splits, schedule, *, image_size=None, skip=()) -> list[dict]:
    """Run every pre-flight check of a fine-tuning run before it starts.

    Args:
        model: The model to train: a `kcnn.transfer.classifier` (or a plain model with ``backbone=None``; the
            checks that need a backbone then report "ok" with a ``skipped`` number).
        backbone: Its `kcnn.transfer.Backbone`, or None.
        splits: The `kcnn.data.Splits` it trains on.
        schedule: What `kcnn.transfer.fit_schedule` gets: a `Schedule`, phases, a preset name or a file.
        image_size: The side (int) or (height, width) the images are loaded at; default ``splits.image_size``.
        skip: Names of checks not to run (e.g. ``("duplicates",)``, which reads every image once: a full pass
            over a large dataset).

    Returns:
        One dict per check, in the order of the table in this module's docstring: ``name``, ``status`` ("ok",
        "warn" or "fail"), ``numbers`` (what was measured) and ``advice`` (empty when ok).

    Example:
        >>> checks = preflight(model, bb, splits, schedule, image_size=32)
        >>> print(format_checks(checks))
        >>> raise_on_fail(checks)
    """
    image_size = splits.image_size if image_size is None else image_size
    unknown = sorted(set(skip) - set(CHECKS))
    if unknown:
        raise ValueError(f"Unknown check {unknown[0]!r}; the checks are {list(CHECKS)}. "
                         f"Received: skip={skip!r}")
    images = _first_images(splits) if {"input range", "frozen batch norm"} - set(skip) else None
    run = {
        "input range": lambda: check_input_range(images, backbone),
        "frozen batch norm": lambda: check_frozen_bn(model, backbone, schedule, images),
        "class balance": lambda: check_class_balance(splits),
        "image size": lambda: check_image_size(backbone, image_size, model if backbone is not None else None),
        "duplicates": lambda: check_duplicates(splits),
        "learning rates": lambda: check_learning_rates(model, backbone, schedule),
    }
    return [run[name]() for name in CHECKS if name not in skip]


def short_name(value) -> str:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.3g}"
    if isinstance(value, dict):
        if len(value) > 6:
            return f"{len(value)} entries"
        return "{" + ", ".join(f"{k} {short_name(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return str(value)


def format_checks(checks) -> str:
    """The checks as a short list, one line each: status, name, the numbers, and the advice when not ok."""
    lines = []
    for check in checks:
        numbers = ", ".join(f"{k} {short_name(v)}" for k, v in check["numbers"].items() if v is not None)
        if len(numbers) > 110:
            numbers = numbers[:107] + "..."
        line = f"{check['status'].upper():4}  {check['name']:<18} {numbers}"
        if check["status"] != "ok" and check["advice"]:
            line += f"  -> {check['advice']}"
        lines.append(line)
    return "\n".join(lines)


def raise_on_fail(checks) -> None:
    """Raise `CheckFailed` (one line: the failed check and the fix) if any check failed; else return None."""
    failed = [c for c in checks if c["status"] == "fail"]
    if not failed:
        return
    first = failed[0]
    more = f" (also failed: {', '.join(c['name'] for c in failed[1:])})" if len(failed) > 1 else ""
    raise CheckFailed(f"pre-flight check {first['name']!r} failed: {first['advice']}{more}", checks)
