"""The learning-rate range test: which rate to give the first phase of a fine-tuning schedule.

Leslie Smith's range test ("Cyclical Learning Rates for Training Neural Networks", WACV 2017), as fastai's
``lr_find`` runs it: train for up to ``steps`` batches with the rate growing exponentially from ``start`` to
``end``, record the loss of every batch, smooth it with an exponential moving average (bias-corrected, as in
Adam), and stop once the smoothed loss exceeds 4 times its minimum (the rate is then far too high). The model
trains exactly as the phase would (its trainable blocks, optimizer, per-block rate multipliers and BN mode,
through `kcnn.transfer.prepare_phase` and `kcnn.transfer.phase_runner`), and every weight and trainability flag
is put back afterwards.

The suggestion is the rate at the steepest descent of the smoothed loss (the most negative slope of the
smoothed loss against log10(rate), looked for before the loss's minimum): the rate at which the loss falls
fastest. The result also holds ``lr_min_over_10``, a tenth of the rate at the minimum (fastai's other rule of
thumb). The smoothing lags: with ``smooth=0.98`` and 100 steps (fastai's defaults) on a data set that fits in a
batch or two, the smoothed curve falls later than the batch losses, which moves both rates up.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from kcnn import plots


def _first_phase(phase):
    from kcnn import transfer

    if isinstance(phase, transfer.Phase):
        return phase
    schedule = transfer.load_schedule(phase)
    return schedule[0]


def _check(start, end, steps, smooth, diverge):
    if not (isinstance(start, (int, float)) and start > 0 and math.isfinite(start)):
        raise ValueError(f"`start` must be a rate > 0. Received: start={start!r}")
    if not (isinstance(end, (int, float)) and end > start and math.isfinite(end)):
        raise ValueError(f"`end` must be a rate > start ({start:g}). Received: end={end!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"`steps` must be an integer >= 2. Received: steps={steps!r}")
    if not (isinstance(smooth, (int, float)) and 0 <= smooth < 1):
        raise ValueError(f"`smooth` must be in [0, 1). Received: smooth={smooth!r}")
    if not (isinstance(diverge, (int, float)) and diverge > 1):
        raise ValueError(f"`diverge` must be > 1. Received: diverge={diverge!r}")


def _all_layers(model) -> list:
    out = [model]
    for layer in getattr(model, "layers", []):
        out.extend(_all_layers(layer) if hasattr(layer, "layers") else [layer])
    return out


def suggest(lrs, losses) -> dict:
    """The suggested rates from a range test's rates and smoothed losses.

    Returns:
        ``{"suggestion": rate at the steepest descent, "lr_min_over_10": rate at the minimum / 10,
        "method": "steepest" or "min/10"}``; the steepest descent needs 3 points before the minimum, else the
        suggestion falls back to min/10 (and says so in ``method``).
    """
    lrs = np.asarray(lrs, dtype="float64")
    losses = np.asarray(losses, dtype="float64")
    finite = np.isfinite(losses)
    if not finite.any():
        raise ValueError("the range test recorded no finite loss; lower `start`")
    lowest = int(np.nanargmin(np.where(finite, losses, np.inf)))
    min_over_10 = float(lrs[lowest] / 10.0)
    if lowest >= 2:
        slopes = np.gradient(losses[:lowest + 1], np.log10(lrs[:lowest + 1]))
        steepest = int(np.argmin(slopes))
        if slopes[steepest] < 0:
            return {"suggestion": float(lrs[steepest]), "lr_min_over_10": min_over_10, "method": "steepest"}
    return {"suggestion": min_over_10, "lr_min_over_10": min_over_10, "method": "min/10"}


def lr_range_test(model, backbone, splits, phase, *, start: float = 1e-7, end: float = 1.0, steps: int = 100,
                  smooth: float = 0.98, diverge: float = 4.0, verbose: int = 0) -> dict:
    """Run the learning-rate range test on the first phase of a schedule; the model is left as it was.

    Step ``i`` (0-based) trains one batch at ``start * (end / start) ** (i / (steps - 1))``. The phase's
    optimizer is made with a constant rate (`kcnn.transfer.make_optimizer`) whose value is set before each
    step; its warm-up and cosine decay are not used. Batches come from the training data epoch after epoch
    (a dataset smaller than ``steps`` batches is repeated).

    Args:
        model: A `kcnn.transfer.classifier` (or a plain model with ``backbone=None`` and a phase training "all").
        backbone: Its `kcnn.transfer.Backbone`, or None.
        splits: A `kcnn.data.Splits`, a batched ``tf.data.Dataset`` of (images, labels) or ``(x, y)`` arrays.
        phase: A `kcnn.transfer.Phase`, or a schedule (`Schedule`, preset name, file, list of phases) whose
            first phase is used.
        start: First rate (> 0).
        end: Last rate (> start).
        steps: Batches at most (>= 2).
        smooth: Exponential-moving-average factor of the smoothed loss, in [0, 1).
        diverge: Stop once the smoothed loss exceeds ``diverge`` times its minimum.
        verbose: 1: one line at the end.

    Returns:
        ``{"lrs": [...], "losses": [...] (smoothed), "raw_losses": [...], "suggestion": rate,
        "method": "steepest" | "min/10", "lr_min_over_10": rate, "stopped_early": bool, "phase": name}``.
    """
    from kcnn import transfer

    _check(start, end, steps, smooth, diverge)
    phase = _first_phase(phase)
    plan = transfer.make_plan(model, backbone, transfer.Schedule([phase]))[0]
    layers = _all_layers(model)
    trainable = [(layer, layer.trainable) for layer in layers]
    variables = list(model.variables)
    saved = [np.array(v.numpy(), copy=True) for v in variables]
    restore_momentum = {}
    lrs, raw, smoothed = [], [], []
    stopped = False
    try:
        multipliers = transfer.prepare_phase(model, backbone, plan)
        runner, restore_momentum = transfer.phase_runner(model, backbone, plan)
        optimizer = transfer.make_optimizer(phase, float(start), multipliers)
        runner.compile(optimizer=optimizer, loss=transfer.LOSS, steps_per_execution=1)
        data = transfer.EpochData(splits)
        rates = [float(r) for r in np.geomspace(start, end, steps)]  # exact at both ends
        average, best, epoch = 0.0, math.inf, 0
        while len(lrs) < steps and not stopped:
            for x, *rest in data.epoch(epoch):
                i = len(lrs)
                lr = rates[i]
                optimizer.learning_rate = lr
                loss = float(runner.train_on_batch(x, rest[0], return_dict=True)["loss"])
                lrs.append(lr)
                raw.append(loss)
                if not math.isfinite(loss):
                    smoothed.append(math.nan)
                    stopped = True
                    break
                average = smooth * average + (1.0 - smooth) * loss
                value = average / (1.0 - smooth ** (i + 1))
                smoothed.append(value)
                best = min(best, value)
                if value > diverge * best:
                    stopped = True
                    break
                if len(lrs) >= steps:
                    break
            epoch += 1
    finally:
        for layer, momentum in restore_momentum.items():
            layer.momentum = momentum
        for layer, flag in trainable:  # outer first: a container's setter cascades, its layers then override
            layer.trainable = flag
        for variable, value in zip(variables, saved):
            variable.assign(value)
    picked = suggest(lrs, smoothed)
    result = {"lrs": lrs, "losses": smoothed, "raw_losses": raw, **picked, "stopped_early": stopped,
              "phase": phase.name, "steps": len(lrs)}
    if verbose:
        print(f"lr range test: {len(lrs)} steps from {start:g} to {lrs[-1]:g}; suggested rate "
              f"{picked['suggestion']:.2e} ({picked['method']})", flush=True)
    return result


def plot_lr_find(result: dict, path, title: str = "learning-rate range test") -> Path:
    """The smoothed (and raw) loss against the rate on a log axis, the suggestion marked.

    Args:
        result: What `lr_range_test` returned (at least ``lrs``, ``losses`` and ``suggestion``).
        path: Output PNG (e.g. ``lr_find.png``).
        title: Figure title.

    Returns:
        The path written.
    """
    lrs = np.asarray(result["lrs"], dtype="float64")
    losses = np.asarray(result["losses"], dtype="float64")
    fig = plots.figure(figsize=(6, 4))
    ax = fig.subplots()
    if "raw_losses" in result:
        ax.plot(lrs, np.asarray(result["raw_losses"], dtype="float64"), color="gray", alpha=0.35, lw=1,
                label="batch loss")
    ax.plot(lrs, losses, color="tab:blue", lw=2, label="smoothed loss")
    suggestion = result.get("suggestion")
    if suggestion:
        ax.axvline(suggestion, color="tab:red", ls="--", lw=1,
                   label=f"suggestion {suggestion:.1e} ({result.get('method', 'steepest')})")
    finite = losses[np.isfinite(losses)]
    if finite.size:  # the divergence at the end would squash the curve
        low, high = float(finite.min()), float(finite[0]) if finite[0] > finite.min() else float(finite.max())
        span = max(high - low, 1e-6)
        ax.set_ylim(low - 0.1 * span, high + 0.6 * span)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


__all__ = ["lr_range_test", "plot_lr_find", "suggest"]
