"""Time kcnn's own training path on synthetic data: images/s, GFLOP/s and the fraction of this machine's peak.

What is timed is what the recipes run: ``kcnn.transfer.fit_schedule`` on ``classifier(backbone(MODEL))`` with
one ``train="all"`` phase (SGD, momentum 0.9, batch norm in training mode) and kcnn's per-device settings
(`kcnn.perf.auto_settings`), on one in-memory random batch repeated ``--steps`` times per epoch. The first
epoch (tracing) is not timed; the figures are medians over ``--epochs`` timed epochs. Inference is
``model.predict`` over the same batches.

GFLOP/s convention: a multiply-accumulate is 2 FLOPs; MACs per image are `kcnn.count_macs` (convolutions and
dense layers); a training step costs 3 forward passes (forward + backward), so training GFLOP/s =
3 x 2 x MACs x images/s (1 x for ``--train head``: the frozen backbone only runs forward) and inference
GFLOP/s = 2 x MACs x images/s. The peak is a matmul timed by each library itself, in float32, or in the
compute dtype of a mixed-precision policy.

    python -m recipes.bench                              # ResNet-20, batch 128, 32 px
    python -m recipes.bench --reference torch            # + the same net in PyTorch and the ratio
    python -m recipes.bench --model resnet50 --image-size 224 --batch-size 32 --steps 8
    python -m recipes.bench --feature-cache              # frozen-backbone epoch: naive vs cached features
    python -m recipes.bench --steps-per-execution 1 --batch-norm keras   # the levers, one at a time
    python -m recipes.bench --json                       # last line: one JSON object

    python -m recipes.bench --model VGG16 --image-size 224 --batch-size 32 --train head --reference torch

``--reference torch`` times the same net in PyTorch (``recipes.bench_torch``) fairly: each library in its own
process (``python -m recipes.bench`` and ``python -m recipes.bench_torch`` with ``--json``), one after the
other, alternated over ``--rounds`` rounds (kcnn first in odd rounds, PyTorch first in even ones), each timing
``--epochs`` epochs after a warm-up. Per library it prints the median and the best epoch img/s over all rounds
and the spread (max - min) / median of the epochs; the headline is the ratio of the medians (and best / best).
``--in-process`` instead interleaves PyTorch's epochs with kcnn's in one process, as earlier versions did: not
a fair comparison (both libraries' thread pools, allocators and caches share the process). ``--train head``
times the frozen-backbone (head-only) phase: the backbone runs in inference mode and only the head learns.
PyTorch is the ``[bench]`` extra (``pip install -e .[bench]``); on a GPU the PyTorch side uses CUDA and AMP
(float16 where kcnn's policy is mixed_float16).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from kcnn import options
from recipes import _cli


def _opt(default, help_text, choices=None):
    metadata = {"help": help_text} if choices is None else {"help": help_text, "choices": list(choices)}
    return field(default=default, metadata=metadata)


@dataclass
class BenchConfig:
    # what to time -------------------------------------------------------------------------------------------
    model: str | None = _opt(None, "kcnn or keras.applications name (default resnet20; VGG16 with "
                                   "--feature-cache)")
    batch_size: int | None = _opt(None, "images per step (default 128; 32 with --feature-cache)")
    image_size: int | None = _opt(None, "side in pixels (default 32; 64 with --feature-cache)")
    classes: int = _opt(10, "output classes")
    steps: int = _opt(64, "training steps (batches) per timed epoch")
    epochs: int = _opt(3, "timed epochs (repeats) after one untimed warm-up epoch; medians are reported")
    train: str = _opt("all", "all (every layer learns) | head (frozen backbone, head-only phase)",
                      ("all", "head"))
    reference: str = _opt("none", "none | torch: also time the same net in PyTorch (eager, channels-last), "
                                  "each library in its own process, and print kcnn/torch", ("none", "torch"))
    rounds: int = _opt(3, "with --reference torch: rounds of (kcnn process, torch process), order alternated")
    in_process: bool = _opt(False, "with --reference torch: interleave PyTorch's epochs with kcnn's in this "
                                   "process instead (NOT a fair comparison)")
    torch_device: str = _opt("auto", "auto | cpu | cuda: PyTorch's device (auto: a GPU when it sees one)",
                             ("auto", "cpu", "cuda"))
    worker_timeout: int = _opt(1800, "seconds one worker process may take (--reference torch)")
    feature_cache: bool = _opt(False, "time a frozen-backbone (head-only) epoch naive vs on cached features")
    cache_images: int = _opt(512, "training images for --feature-cache")
    # the levers (default: kcnn.perf.auto_settings for this device) ------------------------------------------
    steps_per_execution: int = _opt(0, "training steps per graph call (0: auto, 16)")
    jit_compile: str = _opt("auto", "auto | on | off: XLA (auto: off on CPU, Keras' default on GPU)",
                            ("auto", "on", "off"))
    precision: str = _opt("auto", "auto | float32 | mixed_float16 | mixed_bfloat16 (spelled as the training "
                                  "recipes' --precision; mixed_float16 for GPUs)", ("auto", *options.POLICIES))
    batch_norm: str = _opt("fused", "fused (kcnn.perf.FusedBatchNormalization, kcnn's default) | keras "
                                    "(keras.layers.BatchNormalization)", ("fused", "keras"))
    data: str = _opt("repeat", "repeat (one batch: Dataset.from_tensors().repeat()) | slices (8 distinct "
                               "batches: from_tensor_slices().batch().cache())", ("repeat", "slices"))
    prefetch: bool = _opt(True, "end the input pipeline with prefetch(AUTOTUNE)")
    intra_op: int = _opt(0, "TensorFlow intra-op threads (0: TensorFlow's default)")
    inter_op: int = _opt(0, "TensorFlow inter-op threads (0: TensorFlow's default)")
    remapper: str = _opt("on", "on | off: TensorFlow's remapper, the graph pass that fuses ops such as "
                               "Conv2D+BiasAdd+Relu into one oneDNN kernel", ("on", "off"))
    # output -------------------------------------------------------------------------------------------------
    peak_size: int = _opt(4096, "side of the float32 matmul that measures the peak (0: skip)")
    json: bool = _opt(False, "print one JSON object as the last line")
    seed: int = _opt(0, "random seed of the synthetic data and weights")


def check(cfg: BenchConfig) -> None:
    for name in ("classes", "steps", "epochs", "cache_images", "rounds", "worker_timeout"):
        if getattr(cfg, name) < 1:
            raise _cli.UsageError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(cfg, name)}")
    for name in ("batch_size", "image_size"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise _cli.UsageError(f"--{name.replace('_', '-')} must be >= 1; got {value}")
    for name in ("steps_per_execution", "intra_op", "inter_op", "peak_size"):
        if getattr(cfg, name) < 0:
            raise _cli.UsageError(f"--{name.replace('_', '-')} must be >= 0; got {getattr(cfg, name)}")
    if cfg.feature_cache and cfg.reference != "none":
        raise _cli.UsageError("--feature-cache times kcnn against itself; drop --reference")
    if cfg.in_process and cfg.reference != "torch":
        raise _cli.UsageError("--in-process goes with --reference torch")


def _defaults(cfg: BenchConfig) -> tuple[str, int, int]:
    if cfg.feature_cache:
        return cfg.model or "VGG16", cfg.batch_size or 32, cfg.image_size or 64
    return cfg.model or "resnet20", cfg.batch_size or 128, cfg.image_size or 32


def _bench_torch():
    try:
        from recipes import bench_torch
    except ImportError as err:
        raise _cli.UsageError(f"--reference torch needs PyTorch ({err}); install the bench extra: "
                              "pip install -e .[bench]") from None
    return bench_torch


def _twin(bench_torch, arch):
    twin = bench_torch.twin_name(arch)
    if twin is None:
        raise _cli.UsageError(f"no PyTorch reference for {arch!r}; --reference torch supports "
                              f"{', '.join([*bench_torch.ARCHS, *bench_torch.ALIASES])}")
    return twin


def amp_policy(mixed_precision: str) -> str:
    return {"auto": "auto", "float32": "none", "mixed_float16": "float16",
            "mixed_bfloat16": "bfloat16"}[mixed_precision]


def _torch_reference(cfg, arch, batch_size, image_size):
    bench_torch = _bench_torch()
    return bench_torch, bench_torch.Reference(_twin(bench_torch, arch), batch_size, image_size, cfg.classes,
                                              seed=cfg.seed, device=cfg.torch_device,
                                              amp=amp_policy(cfg.precision), train=cfg.train)


def _load() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


@contextmanager
def _jit(value: bool | None):
    """Make Keras' compile(jit_compile="auto") resolve to ``value`` (fit_schedule compiles with "auto")."""
    if value is None:
        yield
        return
    from kcnn import _compat

    with _compat.keras_auto_jit(value):
        yield


def _preprocess_params(model) -> int:
    try:
        return int(model.get_layer("preprocess").count_params())
    except ValueError:
        return 0


def _median(values):
    return statistics.median(values) if values else float("nan")


def _rate(images, seconds):
    return [images / s for s in seconds]


def _synthetic(batch_size, image_size, classes, steps, mode, prefetch, seed, labels=True):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    count = 1 if mode == "repeat" else min(steps, 8)
    x = rng.uniform(0, 255, size=(count * batch_size, image_size, image_size, 3)).astype("float32")
    y = rng.integers(0, classes, size=count * batch_size).astype("int32")
    items = (x, y) if labels else x
    if mode == "repeat":
        ds = tf.data.Dataset.from_tensors(items).repeat(steps)
    else:
        ds = tf.data.Dataset.from_tensor_slices(items).batch(batch_size).cache().repeat().take(steps)
    return ds.prefetch(tf.data.AUTOTUNE) if prefetch else ds


def _epoch_timer(between=None):
    """A Keras callback that times each epoch and runs ``between(epoch)`` after it (outside the timing)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds, self.started = [], None

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.started)
            if between is not None:
                between(epoch)

    return EpochTimer()


def _print_rate(label, rates, macs, factor, peak):
    value = _median(rates)
    gflops = factor * 2 * macs * value / 1e9
    text = (f"{label:<17} {value:8,.0f} img/s (median of {len(rates)}; best {max(rates):,.0f})  "
            f"{gflops:7.1f} GFLOP/s")
    if peak:
        text += f"  {gflops / peak:.2f} of peak"
    print(text, flush=True)
    return value, gflops


def run(cfg: BenchConfig) -> int:
    check(cfg)
    arch, batch_size, image_size = _defaults(cfg)
    reference = None
    if cfg.reference == "torch" and not cfg.in_process:
        from recipes import bench_fair

        return bench_fair.compare(cfg, arch, batch_size, image_size)
    if cfg.reference == "torch":
        torch_module, reference = _torch_reference(cfg, arch, batch_size, image_size)
        print("in-process interleaved mode: NOT a fair comparison (both libraries share this process's "
              "threads, allocators and caches); drop --in-process for one process per library", flush=True)
    import keras
    import tensorflow as tf

    from kcnn import perf

    perf.set_threads(cfg.intra_op, cfg.inter_op)
    if cfg.remapper == "off":
        tf.config.optimizer.set_experimental_options({"remapping": False})
    settings = perf.auto_settings(
        steps_per_execution=cfg.steps_per_execution or None,
        jit_compile={"auto": None, "on": True, "off": False}[cfg.jit_compile],
        mixed_precision=None if cfg.precision == "auto" else cfg.precision)
    if cfg.jit_compile == "auto":  # what Keras' "auto" resolves to, which fit_schedule's compile uses
        settings["jit_compile"] = settings["device"] == "gpu"
    keras.utils.set_random_seed(cfg.seed)
    before = perf.use_fused_batch_norm(cfg.batch_norm == "fused")
    policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(settings["mixed_precision"])
    load_before = _load()
    result = dict(library="kcnn", model=arch, batch_size=batch_size, image_size=image_size,
                  classes=cfg.classes, train=cfg.train,
                  steps=cfg.steps, epochs=cfg.epochs, device=settings["device"],
                  steps_per_execution=settings["steps_per_execution"],
                  jit_compile=settings["jit_compile"], mixed_precision=settings["mixed_precision"],
                  settings_measured=settings["measured"], batch_norm=cfg.batch_norm, data=cfg.data,
                  prefetch=cfg.prefetch, onednn=perf.onednn_enabled(), remapper=cfg.remapper,
                  intra_op=tf.config.threading.get_intra_op_parallelism_threads(),
                  inter_op=tf.config.threading.get_inter_op_parallelism_threads(),
                  cpu_count=os.cpu_count(), tensorflow=tf.__version__, keras=keras.__version__,
                  load_average_before=load_before)
    work = (f"{cfg.cache_images} images" if cfg.feature_cache else
            f"{cfg.steps} steps, data {cfg.data}{' + prefetch' if cfg.prefetch else ''}")
    print(f"kcnn bench: {arch} (train {cfg.train}), batch {batch_size}, {image_size}x{image_size} px, "
          f"{work} x {cfg.epochs} "
          f"epochs (+1 untimed); {settings['device']}, "
          f"steps_per_execution={settings['steps_per_execution']}, "
          f"jit_compile={settings['jit_compile']}, {settings['mixed_precision']}, "
          f"batch norm {cfg.batch_norm}, oneDNN {'on' if result['onednn'] else 'off'}; "
          f"TF {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, "
          f"load average {load_before}",
          flush=True)
    peak_dtype = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}.get(settings["mixed_precision"],
                                                                                 "float32")
    try:
        peak = perf.matmul_peak_gflops(cfg.peak_size, dtype=peak_dtype) if cfg.peak_size else None
        result.update(peak_gflops=None if peak is None else round(peak, 1), peak_dtype=peak_dtype)
        if peak:
            print(f"matmul peak ({peak_dtype}, {cfg.peak_size}x{cfg.peak_size} through TensorFlow, best of "
                  f"5): {peak:,.0f} GFLOP/s", flush=True)
        with _jit(settings["jit_compile"] if cfg.jit_compile != "auto" else None):
            if cfg.feature_cache:
                _bench_feature_cache(cfg, arch, batch_size, image_size, result)
            else:
                _bench_training(cfg, arch, batch_size, image_size, settings, peak, reference, result)
    finally:
        perf.use_fused_batch_norm(before)
        keras.mixed_precision.set_global_policy(policy)
    result["load_average_after"] = _load()
    print(f"load average after: {result['load_average_after']}", flush=True)
    if cfg.json:
        print(json.dumps(result), flush=True)
    return 0


def _bench_training(cfg, arch, batch_size, image_size, settings, peak, reference, result):
    from kcnn import count_macs, transfer

    bb = transfer.backbone(arch, None, (image_size, image_size, 3))
    model = transfer.classifier(bb, cfg.classes)
    macs = count_macs(model, input_shape=(image_size, image_size, 3))
    result["macs_per_image"] = macs
    # The backbone's and the head's parameters; the preprocessing layer's constants (keras.applications' mean
    # and variance) are not counted, as the PyTorch twins have no such layer.
    result["params"] = int(model.count_params()) - _preprocess_params(model)
    factor = 3 if cfg.train == "all" else 1
    print(f"MACs per image (forward, kcnn.count_macs): {macs / 1e6:,.1f} M; params {result['params']:,}; "
          f"GFLOP/s = 2 x MACs x img/s, x{factor} for training", flush=True)
    if reference is not None:
        from recipes import bench_torch

        result["torch_params"] = bench_torch.count_params(reference.model)
        if result["torch_params"] != result["params"]:
            print(f"warning: the PyTorch twin has {result['torch_params']:,} parameters, kcnn "
                  f"{result['params']:,}", flush=True)
    images = batch_size * cfg.steps
    torch_train, torch_infer = [], []

    def torch_epoch(epoch):
        if reference is not None:
            seconds = reference.train_epoch(cfg.steps)
            if epoch > 0:
                torch_train.append(seconds)

    timer = _epoch_timer(torch_epoch)
    train_ds = _synthetic(batch_size, image_size, cfg.classes, cfg.steps, cfg.data, cfg.prefetch, cfg.seed)
    phase = transfer.Phase(epochs=cfg.epochs + 1, train=cfg.train, lr=0.01, optimizer="sgd", momentum=0.9,
                           bn="train" if cfg.train == "all" else "frozen", name="bench")
    transfer.fit_schedule(model, bb, [phase], train_ds, None, verbose=0, feature_cache=False,
                          steps_per_execution=settings["steps_per_execution"], callbacks=[timer])
    train_rates = _rate(images, timer.seconds[1:])
    # Inference: the trained classifier's predict over the same batches, interleaved with PyTorch's.
    infer_ds = _synthetic(batch_size, image_size, cfg.classes, cfg.steps, cfg.data, cfg.prefetch, cfg.seed,
                          labels=False)
    infer_seconds = []
    for repeat in range(cfg.epochs + 1):
        started = time.perf_counter()
        model.predict(infer_ds, verbose=0)
        if repeat:
            infer_seconds.append(time.perf_counter() - started)
        if reference is not None:
            seconds = reference.infer_epoch(cfg.steps)
            if repeat:
                torch_infer.append(seconds)
    infer_rates = _rate(images, infer_seconds)
    train, train_gflops = _print_rate("training   kcnn", train_rates, macs, factor, peak)
    infer, infer_gflops = _print_rate("inference  kcnn", infer_rates, macs, 1, peak)
    result.update(images_per_sec=round(train, 1), images_per_sec_epochs=[round(r, 1) for r in train_rates],
                  train_gflops=round(train_gflops, 1),
                  inference_images_per_sec=round(infer, 1),
                  inference_images_per_sec_repeats=[round(r, 1) for r in infer_rates],
                  inference_gflops=round(infer_gflops, 1))
    if peak:
        result.update(train_peak_fraction=round(train_gflops / peak, 3),
                      inference_peak_fraction=round(infer_gflops / peak, 3))
    if reference is None:
        return
    import torch

    t_rates, t_infer = _rate(images, torch_train), _rate(images, torch_infer)
    t_train, t_train_gflops = _print_rate("training   torch", t_rates, macs, factor, peak)
    t_inf, t_infer_gflops = _print_rate("inference  torch", t_infer, macs, 1, peak)
    result["torch"] = dict(version=torch.__version__, threads=reference.threads,
                           images_per_sec=round(t_train, 1),
                           images_per_sec_epochs=[round(r, 1) for r in t_rates],
                           inference_images_per_sec=round(t_inf, 1),
                           inference_images_per_sec_repeats=[round(r, 1) for r in t_infer],
                           train_gflops=round(t_train_gflops, 1), inference_gflops=round(t_infer_gflops, 1))
    # Ratios of epochs run back to back (kcnn epoch k, then torch epoch k): less exposed to load swings.
    pairs = [a / b for a, b in zip(train_rates, t_rates)]
    infer_pairs = [a / b for a, b in zip(infer_rates, t_infer)]
    result.update(ratio_vs_torch=round(_median(pairs), 3),
                  inference_ratio_vs_torch=round(_median(infer_pairs), 3))
    print(f"kcnn / torch ({torch.__version__}, {reference.threads} threads): training "
          f"{result['ratio_vs_torch']:.2f}x, inference {result['inference_ratio_vs_torch']:.2f}x "
          f"(median of per-epoch ratios; in-process, NOT a fair comparison)", flush=True)


def _bench_feature_cache(cfg, arch, batch_size, image_size, result):
    import numpy as np
    import tensorflow as tf

    from kcnn import transfer

    rng = np.random.default_rng(cfg.seed)
    x = rng.uniform(0, 255, size=(cfg.cache_images, image_size, image_size, 3)).astype("float32")
    y = rng.integers(0, cfg.classes, size=cfg.cache_images).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    bb = transfer.backbone(arch, None, (image_size, image_size, 3))
    phase = transfer.Phase(epochs=cfg.epochs + 1, train="head", lr=1e-3, name="head")
    times = {}
    for mode in ("naive", "cached"):
        model = transfer.classifier(bb, cfg.classes)
        timer = _epoch_timer()
        history = transfer.fit_schedule(model, bb, [phase], ds, None, verbose=0,
                                        feature_cache=mode == "cached", augmented=False, callbacks=[timer])
        record = history.phases[0]
        if mode == "cached" and not record["cached"]:
            raise ValueError(f"fit_schedule did not cache the features of {arch}; nothing to compare")
        times[mode] = dict(epoch_seconds=_median(timer.seconds[1:]),
                           epochs=[round(s, 4) for s in timer.seconds],
                           cache_seconds=record["cache_seconds"], phase_seconds=record["seconds"])
    naive, cached = times["naive"]["epoch_seconds"], times["cached"]["epoch_seconds"]
    ratio = naive / cached
    total_naive = times["naive"]["phase_seconds"]
    total_cached = times["cached"]["phase_seconds"] + times["cached"]["cache_seconds"]
    print(f"frozen {arch} backbone, head-only epoch over {cfg.cache_images} images at {image_size} px, batch "
          f"{batch_size} (median of {cfg.epochs} epochs after the first):", flush=True)
    print(f"  naive  (backbone every epoch)  {naive:8.3f} s/epoch", flush=True)
    fill = times["cached"]["cache_seconds"]
    print(f"  cached (features once: {fill:.2f} s)  {cached:8.3f} s/epoch", flush=True)
    print(f"  per-epoch speed-up {ratio:,.1f}x; whole phase of {cfg.epochs + 1} epochs incl. extraction "
          f"{total_naive / total_cached:.1f}x", flush=True)
    result.update(mode="feature_cache", cache_images=cfg.cache_images, naive_epoch_seconds=round(naive, 4),
                  cached_epoch_seconds=round(cached, 4), cache_seconds=round(fill, 3),
                  feature_cache_speedup=round(ratio, 1), phase_speedup=round(total_naive / total_cached, 2),
                  naive_epochs=times["naive"]["epochs"], cached_epochs=times["cached"]["epochs"],
                  images_per_sec=round(cfg.cache_images / cached, 1),
                  naive_images_per_sec=round(cfg.cache_images / naive, 1))


def main(argv=None) -> int:
    return _cli.run(run, BenchConfig, argv, prog="python -m recipes.bench", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
