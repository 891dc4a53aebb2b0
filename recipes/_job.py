"""The one skeleton of the training recipes (train, pretrain, finetune): what they share, in the order it must run.

1. check every input           the recipe's ``check`` (flags), then the run folder (`kcnn.runs.RunDir.check`):
                               a refusal writes nothing
2. precision, strategy, seed   the Keras dtype policy (config["precision"]); the strategy and seed before anything
                               starts TensorFlow's runtime (logical CPU devices, collectives)
3. data, model, checks         under the strategy's scope; bad data, backbone names or weight files fail here,
                               then the pre-flight checks (kcnn.checks: a "fail" refuses to train), still
                               before anything is written to --out
   (--show-batch)              augment.png of the training batches as the model sees them, then stop
4. open the run folder         the marker first, then config.toml and state.json (the chief's; other workers of
                               a multiworker run write a temporary folder they delete); augment.png
5. fit                         `kcnn.training.fit_run`: per-epoch checkpoints, exact resume, one history
6. finish                      the chief evaluates and writes model.keras, report.json, plots; returns the report

A recipe gives a `Job`: its settings and the few functions that differ between recipes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from recipes import _cli


@dataclass
class Job:
    """What one recipe run needs from its recipe.

    Attributes:
        recipe: "train", "pretrain" or "finetune" (the run folder's marker and default name).
        cfg: The recipe's config (fields out, resume, overwrite, seed, verbose, distribute, cpu_devices).
        config: What the run folder's config.toml records.
        schedule: The `kcnn.transfer.Schedule` to fit, or ``(splits) -> Schedule`` when it depends on the data
            (``recipes.finetune --schedule auto``); the one used is put in ``resolved_schedule["schedule"]``.
        augmented: Whether the training data are randomly augmented (no feature cache then).
        load_data: ``() -> kcnn.data.Splits``.
        build: ``(splits) -> (model, backbone)``, called under the strategy's scope.
        extra: ``(run, model, backbone, splits, strategy) -> dict`` of report entries (may train more, e.g. the
            from-scratch comparison); default none.
        before_report: ``(run, model, backbone, splits) -> None``: files to write before report.json marks the
            run finished (pretrain's checkpoint metadata).
        best: The `kcnn.training.BestEpoch` of ``--restore-best`` / ``--patience``, or None.
        tta: Test-time augmentation of the report ("none" or "flip").
        show_batch: Write ``augment.png`` (training images as the model sees them) and stop before training.
        title: ``(backbone) -> str``, the plots' title.
        describe: ``(report, run) -> str``, the last line printed.
    """

    recipe: str
    cfg: Any
    config: dict
    schedule: Any
    augmented: bool
    load_data: Callable
    build: Callable
    title: Callable
    describe: Callable
    extra: Callable | None = None
    before_report: Callable | None = None
    resolved_schedule: dict = field(default_factory=dict)
    best: Any = None
    tta: str = "none"
    show_batch: bool = False
    strategy: Any = field(default=None, repr=False)


def execute(job: Job) -> int:
    """Run ``job`` through the skeleton; returns the exit code (0).

    Ctrl-C and SIGTERM say where the run stands: before the run folder is opened nothing was written to --out;
    after, the message names the folder to continue with ``--resume``."""
    from recipes import _signals

    opened = []
    try:
        with _cli.keras_policy(job.config.get("precision", "float32")), _signals.terminate_as_interrupt():
            return _execute(job, opened)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (a `_signals.Terminated`): raised again, with where
        terminated = isinstance(err, _signals.Terminated)  # the run stands
        kind = _signals.Terminated if terminated else KeyboardInterrupt
        if opened:  # SIGTERM: training saved the very step it was at (kcnn.training.fit_run)
            saved = "the run is saved where it stopped" if terminated else "the last finished epoch is saved"
            raise kind(f"{_signals.what(err)}; {saved}: continue with the same command plus --resume --out "
                       f"{opened[0]}") from None
        raise kind(f"{_signals.what(err)} before the run folder was opened; nothing was written to --out: run the "
                   "same command again") from None


def _execute(job: Job, opened: list) -> int:
    _cli.check_distribute(job.cfg)
    from kcnn import distribute, runs

    cfg = job.cfg
    out = cfg.out or runs.default_out(job.recipe)
    run = distribute.run_dir_for(cfg.distribute, out, recipe=job.recipe, overwrite=cfg.overwrite,
                                 resume=cfg.resume, config=job.config)
    run.check()  # refusals before anything starts
    strategy = distribute.make_strategy(cfg.distribute, cpu_devices=cfg.cpu_devices)
    job.strategy = strategy
    from kcnn import training

    training.set_seed(cfg.seed)
    splits = job.load_data()
    if cfg.verbose:
        sizes = ", ".join(f"{k} {v}" for k, v in splits.num_examples.items())
        print(f"data {getattr(cfg, 'data', '')}: {len(splits.class_names)} classes; {sizes}", flush=True)
    distribute.check_batch(strategy, splits)  # multiworker: a global batch the replicas cannot split
    if callable(job.schedule):
        job.schedule = job.schedule(splits)
        if cfg.verbose:
            print(f"schedule for {splits.num_examples['train']} training images: " + ", then ".join(
                f"{p.name} {p.epochs} epochs" for p in job.schedule), flush=True)
    job.resolved_schedule["schedule"] = job.schedule
    if job.show_batch:
        from kcnn import plots

        path = plots.augment_grid(splits, runs.new_file(runs.default_out("augment").with_suffix(".png")))
        print(f"training images as the model sees them (epoch 1): {path}", flush=True)
        return 0
    with strategy.scope():  # the model, its optimizers and the fit views are made under the strategy
        model, bb = job.build(splits)
        from kcnn import transfer

        transfer.make_plan(model, bb, job.schedule)  # a schedule block the backbone lacks fails here
        from kcnn import checks

        found = checks.preflight(model, bb, splits, job.schedule, image_size=splits.image_size)
        if cfg.verbose and distribute.is_chief(strategy):
            print(checks.format_checks(found), flush=True)
        checks.raise_on_fail(found)  # a "fail" refuses to train, before anything is written
        run.open()
        opened.append(run.path)
        if distribute.is_chief(strategy) and not (run.path / "augment.png").exists():
            from kcnn import plots

            plots.augment_grid(splits, run.path / "augment.png")
        from recipes import _signals

        with _signals.deferred():  # SIGTERM: the loop saves the step it is at, then stops
            history = training.fit_run(run, model, bb, job.schedule, splits, strategy=strategy,
                                       augmented=job.augmented, verbose=cfg.verbose, best=job.best,
                                       checkpoint_every=getattr(cfg, "checkpoint_every", None),
                                       stop_requested=_signals.pending)
    if distribute.finish_worker(run, strategy):
        return 0
    extra = {"checks": found, "distribute": cfg.distribute, "replicas": strategy.num_replicas_in_sync,
             "skipped_files": [{"path": str(path), "reason": reason} for path, reason in splits.skipped],
             "kept_epoch": training.best_summary(run, job.best, splits.num_examples.get("val"))}
    from recipes import _toolbox

    if isinstance(cfg, _toolbox.Toolbox):
        extra["toolbox"] = _toolbox.settings(cfg)
    if job.extra is not None:
        extra.update(job.extra(run, model, bb, splits, strategy))
    hook = None if job.before_report is None else (lambda run_: job.before_report(run_, model, bb, splits))
    report = training.finish_run(run, model, test_ds=splits.test, class_names=splits.class_names,
                                 history=history, seed=cfg.seed, extra=extra, title=job.title(bb),
                                 before_report=hook, comparison=run.state.get("comparison_history"),
                                 tta=job.tta)
    print(job.describe(report, run), flush=True)
    return 0
