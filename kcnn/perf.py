"""Training speed: the per-device settings kcnn trains with, a fused batch-norm layer, and the machine's peak.

What each setting is for (the measurements, with their commands and machines, are in docs/performance.md;
re-measure with ``python -m recipes.bench`` and its lever options):

* `FusedBatchNormalization` computes batch norm with TensorFlow's fused kernel (``FusedBatchNormV3``); Keras
  3's own layer builds it from separate ops (moments, then normalisation), a large share of a ResNet's training
  step. keras.applications backbones get it too (`fuse_batch_norm`).
* bfloat16 on AMX: oneDNN runs bfloat16 convolutions on the AMX tiles; the variables stay float32. Without AMX
  bfloat16 was slower than float32, so `auto_precision` picks it only where the CPU reports ``amx_bf16``.
* ``steps_per_execution=16`` (16 training steps per call into the graph) pays on short epochs and older
  machines and costs nothing elsewhere. XLA and fewer inter-op threads were slower on the CPUs measured.
* oneDNN: TensorFlow turns it on by default only on CPUs with AVX-512 VNNI/BF16 or AMX; without it a ResNet
  step runs through Eigen at about half the speed. `enable_onednn` turns it on for the process (call it before
  TensorFlow is imported; the recipes do); importing kcnn changes no environment variable.

``import kcnn.perf`` imports neither TensorFlow nor Keras: the functions import them when called, and the
fused batch-norm class is made on first use (at import when Keras is already loaded).

Process-wide settings: kcnn's training functions change none (`kcnn.training.fit_run` and
`kcnn.transfer.fit_schedule` leave op determinism, Keras' dtype policy and TensorFlow's thread pools as they
found them; ``tests/test_process_state.py``). Only the setters named for it do: `apply_settings` (the dtype
policy; ``with`` its result to put the previous one back), `kcnn.training.set_seed` (op determinism, likewise),
`set_threads` (for good: TensorFlow cannot change its pools once started) and `enable_onednn` (an environment
variable, before TensorFlow loads). The recipes call ``set_seed``, ``set_threads`` and ``enable_onednn``
plainly, because each recipe is a process of its own, and run under their ``--precision`` with the caller's
dtype policy put back afterwards.

On an NVIDIA GPU `auto_settings` returns the usual defaults there (``mixed_float16`` on tensor-core GPUs,
XLA on: what Keras' ``jit_compile="auto"`` already picks on a GPU), which have **not been measured** with
kcnn; override them where they do not win.
"""
from __future__ import annotations

import os
import sys
import time

#: Training steps per ``tf.function`` call (``compile(steps_per_execution=...)``); see `auto_settings`.
DEFAULT_STEPS_PER_EXECUTION = 16
#: The keys `auto_settings` returns and accepts as overrides.
SETTINGS = ("device", "steps_per_execution", "jit_compile", "mixed_precision", "measured")
from kcnn.options import POLICIES as MIXED_PRECISION_POLICIES  # noqa: E402  (its home is kcnn.options)
DEVICES = ("cpu", "gpu")

# ------------------------------------------------------------------------------------------------------------
# Per-device settings
# ------------------------------------------------------------------------------------------------------------


def detect_device() -> str:
    """``"gpu"`` when TensorFlow sees a GPU, else ``"cpu"``."""
    import tensorflow as tf

    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def _tensor_cores() -> bool:
    """Whether the first GPU has compute capability >= 7.0 (float16 tensor cores); unknown counts as yes."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return False
    try:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
    except (AttributeError, ValueError, RuntimeError):
        capability = None
    return capability is None or tuple(capability) >= (7, 0)


def cpu_flags() -> frozenset:
    """The CPU's feature flags as Linux reports them (``/proc/cpuinfo``); empty where that file does not exist."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


#: The training precisions of the recipes' ``--precision``; "auto" resolves through `auto_precision`.
from kcnn.options import PRECISIONS  # noqa: E402  (its home is kcnn.options)
PRECISION_VARIABLE = "KCNN_PRECISION"


def auto_precision(device: str | None = None) -> str:
    """The training precision kcnn's recipes use with ``--precision auto``.

    ``"mixed_bfloat16"`` on a CPU with AMX (Intel's matrix units, flag ``amx_bf16``): oneDNN runs bfloat16
    convolutions and matmuls there on the AMX tiles, much faster than float32 (docs/performance.md); the variables
    stay float32. ``"float32"`` on every other CPU (without AMX, bfloat16 was slower than float32) and on a GPU
    (not measured with kcnn; pass ``precision="mixed_bfloat16"`` yourself). ``$KCNN_PRECISION`` (float32 or
    mixed_bfloat16), when set, is the
    answer instead: one machine's or one test suite's fixed choice.

    Raises:
        ValueError: ``$KCNN_PRECISION`` holds something else.
    """
    forced = os.environ.get(PRECISION_VARIABLE)
    if forced:
        if forced not in PRECISIONS[1:]:
            raise ValueError(f"${PRECISION_VARIABLE} must be one of {', '.join(PRECISIONS[1:])} or unset. "
                             f"Received: {PRECISION_VARIABLE}={forced!r}")
        return forced
    if device is None:
        device = detect_device()
    return "mixed_bfloat16" if device == "cpu" and "amx_bf16" in cpu_flags() else "float32"


def resolve_precision(precision: str, device: str | None = None) -> str:
    """``precision`` (one of `PRECISIONS`) as a Keras dtype policy name: "auto" becomes `auto_precision`.

    Raises:
        ValueError: another value.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {list(PRECISIONS)}. Received: precision={precision!r}")
    return auto_precision(device) if precision == "auto" else precision


def auto_settings(device: str | None = None, **overrides) -> dict:
    """The training settings kcnn uses on a device, with any of them overridden.

    ========================  ==============  =========================================================
    setting                   CPU (measured)  NVIDIA GPU (documented defaults, not measured with kcnn)
    ========================  ==============  =========================================================
    ``steps_per_execution``   16              16
    ``jit_compile``           False           True
    ``mixed_precision``       (1)             "mixed_float16" (compute capability >= 7.0, else float32)
    ========================  ==============  =========================================================

    (1) `auto_precision`: "mixed_bfloat16" on a CPU with AMX, "float32" on other CPUs.

    Args:
        device: "cpu", "gpu" or None (detect: "gpu" when TensorFlow sees one).
        **overrides: Values that win over the automatic ones: ``steps_per_execution`` (int >= 1),
            ``jit_compile`` (bool), ``mixed_precision`` (one of `MIXED_PRECISION_POLICIES`). None means
            "automatic".

    Returns:
        dict with ``device``, ``steps_per_execution``, ``jit_compile``, ``mixed_precision`` and ``measured``
        (whether kcnn's automatic values for this device were chosen by measurement: True on CPU, False on
        GPU).

    Raises:
        ValueError: an unknown device, setting or value.

    Example:
        >>> auto_settings("cpu", mixed_precision="float32")
        {'device': 'cpu', 'steps_per_execution': 16, 'jit_compile': False, 'mixed_precision': 'float32', \
'measured': True}
    """
    if device is None:
        device = detect_device()
    if device not in DEVICES:
        raise ValueError(f"`device` must be one of {list(DEVICES)} or None. Received: device={device!r}")
    if device == "cpu":  # mixed_precision: `auto_precision` (bfloat16 on CPUs with AMX, else float32)
        settings = dict(device="cpu", steps_per_execution=DEFAULT_STEPS_PER_EXECUTION, jit_compile=False,
                        mixed_precision=auto_precision("cpu"), measured=True)
    else:
        settings = dict(device="gpu", steps_per_execution=DEFAULT_STEPS_PER_EXECUTION, jit_compile=True,
                        mixed_precision="mixed_float16" if _tensor_cores() else "float32", measured=False)
    unknown = [k for k in overrides if k not in SETTINGS[1:4]]
    if unknown:
        raise ValueError(f"Unknown setting {unknown[0]!r}; settings are: {', '.join(SETTINGS[1:4])}. "
                         f"Received: {unknown[0]}={overrides[unknown[0]]!r}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    spe = overrides.get("steps_per_execution")
    if spe is not None and (isinstance(spe, bool) or not isinstance(spe, int) or spe < 1):
        raise ValueError("`steps_per_execution` must be an integer >= 1. "
                         f"Received: steps_per_execution={spe!r}")
    jit = overrides.get("jit_compile")
    if jit is not None and not isinstance(jit, bool):
        raise ValueError(f"`jit_compile` must be True or False. Received: jit_compile={jit!r}")
    policy = overrides.get("mixed_precision")
    if policy is not None and policy not in MIXED_PRECISION_POLICIES:
        raise ValueError(f"`mixed_precision` must be one of {list(MIXED_PRECISION_POLICIES)}. "
                         f"Received: mixed_precision={policy!r}")
    settings.update(overrides)
    return settings


class ScopedChange:
    """A process-wide setting a call changed, and how to put it back: `restore` (once; again is harmless) or the
    end of a ``with`` block. ``before`` None: nothing was changed. Subclasses put ``before`` back in `put_back`."""

    def __init__(self, before):
        self._before = before

    def put_back(self, before) -> None:
        raise NotImplementedError

    def restore(self) -> None:
        if self._before is not None:
            before, self._before = self._before, None
            self.put_back(before)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        self.restore()
        return False


class CompileSettings(ScopedChange, dict):
    """The ``model.compile`` kwargs `apply_settings` returns; ``with`` it to put the dtype policy back after.

    A plain dict of ``steps_per_execution`` and ``jit_compile`` (``model.compile(**kwargs)``) that also ends
    the policy `apply_settings` set: at the end of a ``with`` block, or on `restore`, Keras' global dtype
    policy is again the one it was before the call. Restoring twice is harmless.
    """

    def __init__(self, kwargs: dict, policy_before):
        dict.__init__(self, kwargs)
        ScopedChange.__init__(self, policy_before)

    def put_back(self, before) -> None:
        import keras

        keras.mixed_precision.set_global_policy(before)


def apply_settings(settings: dict) -> CompileSettings:
    """Set the global Keras dtype policy from ``settings["mixed_precision"]``; returns the compile kwargs.

    Call it before building the model (the policy applies to layers created afterwards). Keras has one dtype
    policy for the whole process: called plainly, ``apply_settings`` changes it for the rest of the process. To
    change it for one block only, ``with`` the result; the previous policy is back when the block ends::

        with kcnn.perf.apply_settings(kcnn.perf.auto_settings()) as compile_kwargs:
            model = kcnn.build("resnet20", classes=10)
            model.compile(..., **compile_kwargs)

    Nothing else in kcnn sets the policy: the recipes run under their ``--precision`` and put the caller's
    policy back (``recipes._cli.keras_policy``); ``import kcnn`` leaves it alone.

    Returns:
        `CompileSettings`: ``dict(steps_per_execution=..., jit_compile=...)`` for ``model.compile``, which
        also puts the previous policy back (``with`` or ``restore()``).
    """
    import keras

    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(settings["mixed_precision"])
    return CompileSettings(dict(steps_per_execution=settings["steps_per_execution"],
                                jit_compile=settings["jit_compile"]), before)


def set_threads(intra_op: int = 0, inter_op: int = 0) -> None:
    """TensorFlow's thread pools (0: TensorFlow's default, one thread per core). Call before any op runs.

    Process-wide and for good: TensorFlow sizes its pools once, when its runtime starts, and refuses a change
    afterwards, so this cannot be scoped or undone. Only ``recipes.bench`` (a process of its own, ``--intra-op``
    / ``--inter-op``) calls it; no other kcnn function touches the thread settings.
    """
    import tensorflow as tf

    if intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(int(intra_op))
    if inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(int(inter_op))


ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true")


def enable_onednn() -> bool:
    """Turn TensorFlow's oneDNN kernels on for this process unless the user chose; call before importing it.

    Sets ``TF_ENABLE_ONEDNN_OPTS=1`` when the variable is unset and TensorFlow has not been imported yet
    (TensorFlow reads it once, at import). A value the user set is left alone (``TF_ENABLE_ONEDNN_OPTS=0``
    keeps oneDNN off). Nothing is changed on import of kcnn: the recipes call this first thing.

    When it matters: TensorFlow turns oneDNN on by itself only on x86 CPUs with AVX-512 VNNI/BF16 or AMX. On
    AVX2-only x86 CPUs (many AMD EPYC and older Intel parts) it is off by default, and convolutions run
    through Eigen at about half the speed (docs/performance.md). It has no effect on GPU kernels.

    Returns:
        True if oneDNN will be (or already is) on in this process: the variable was set to 1 here, the user
        had set it on, or TensorFlow is already loaded with oneDNN on. False if the user set it off, or
        TensorFlow was imported before this call with oneDNN off (too late: restart the process and call this
        first).
    """
    if "tensorflow" in sys.modules:
        return onednn_enabled()
    value = os.environ.get(ONEDNN_VARIABLE)
    if value is None:
        os.environ[ONEDNN_VARIABLE] = "1"
        return True
    return _truthy(value)


def onednn_enabled() -> bool:
    """Whether TensorFlow's oneDNN kernels are on in this process: TensorFlow's answer (imports TensorFlow).

    TensorFlow decides at import: ``TF_ENABLE_ONEDNN_OPTS`` if set, else on only for x86 CPUs with AVX-512
    VNNI/BF16 or AMX (see `enable_onednn`). Where TensorFlow offers no way to ask, the variable answers.
    """
    from kcnn import _compat

    try:
        return _compat.tf_onednn_enabled()
    except _compat.CompatError:  # a TensorFlow without the hook: go by the variable
        return _truthy(os.environ.get(ONEDNN_VARIABLE))


def matmul_peak_gflops(size: int = 4096, repeats: int = 5, dtype: str = "float32") -> float:
    """This machine's matmul throughput through TensorFlow: the best of ``repeats`` timed square products.

    A square matmul is ``2 * size**3`` floating-point operations; the first product (tracing, warm-up) is not
    timed. The result is the fastest repeat, i.e. an estimate of the achievable peak.

    Args:
        size: Side of the square matrices.
        repeats: Timed products.
        dtype: "float32" (default) or another TensorFlow float dtype.

    Returns:
        GFLOP/s.
    """
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal((size, size)), dtype=dtype)
    b = tf.constant(rng.standard_normal((size, size)), dtype=dtype)

    @tf.function
    def product(a, b):
        return tf.reduce_sum(tf.matmul(a, b)[0, :1])  # a scalar back, so the host copy is not timed

    product(a, b).numpy()
    best = float("inf")
    for _ in range(max(1, int(repeats))):
        started = time.perf_counter()
        product(a, b).numpy()
        best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 / best / 1e9


# ------------------------------------------------------------------------------------------------------------
# Batch norm through TensorFlow's fused kernel
# ------------------------------------------------------------------------------------------------------------

_FUSED = {"enabled": True}
#: Epsilon below which the fused kernel is not used (cuDNN's minimum; the layer falls back to Keras' ops).
FUSED_MIN_EPSILON = 1.001e-5


def use_fused_batch_norm(enabled: bool | None = None) -> bool:
    """Whether `kcnn.layers.batch_norm` makes `FusedBatchNormalization` (True, default) or Keras' layer.

    Args:
        enabled: New value; None only reads it.

    Returns:
        The value before the call.
    """
    before = _FUSED["enabled"]
    if enabled is not None:
        _FUSED["enabled"] = bool(enabled)
    return before


_CLASS: dict = {}


def _fused_class():
    """Make (once) and register the fused batch-norm class; imports Keras and TensorFlow."""
    if "class" in _CLASS:
        return _CLASS["class"]
    import keras
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="kcnn", name="FusedBatchNormalization")
    class BatchNormalization(keras.layers.BatchNormalization):
        """`keras.layers.BatchNormalization` computed by TensorFlow's fused kernel (``FusedBatchNormV3``).

        Same constructor, weights (gamma, beta, moving_mean, moving_variance, in that order), names, config
        and semantics as Keras 3's layer, so keras.applications weight files load into it and
        ``isinstance(layer, keras.layers.BatchNormalization)`` holds. The class is called
        ``BatchNormalization`` (also exported as `FusedBatchNormalization`) on purpose: Keras 3's
        ``.weights.h5`` and ``.keras`` files address a layer's variables by its class name in snake case
        (``layers/batch_normalization_3/vars``), so only this name keeps weight files interchangeable with
        Keras' own layer. ``.keras`` configs record it as ``kcnn>FusedBatchNormalization``; ``import kcnn``
        registers it for loading.

        In training mode (``training=True`` and ``trainable``) it normalises with the batch statistics and
        updates the moving statistics exactly as Keras does (``moving = moving * momentum + batch * (1 -
        momentum)`` with the *biased* batch variance); otherwise it uses the moving statistics. Under a
        mixed-precision policy it keeps half-precision activations (the statistics stay float32).

        The fused path runs for 4-D channels-last inputs on the TensorFlow backend; anything else (a mask,
        ``renorm``, ``synchronized``, another axis or rank, ``epsilon`` < 1.001e-5) falls back to Keras' ops.
        """

        def _fusable(self, inputs, mask) -> bool:
            return (keras.backend.backend() == "tensorflow" and mask is None and not self.renorm
                    and not self.synchronized and len(inputs.shape) == 4 and self.axis in (-1, 3)
                    and self.epsilon >= FUSED_MIN_EPSILON
                    and keras.backend.standardize_dtype(inputs.dtype) in ("float32", "float16", "bfloat16"))

        def call(self, inputs, training=None, mask=None):
            if not self._fusable(inputs, mask):
                return super().call(inputs, training=training, mask=mask)
            x = tf.convert_to_tensor(inputs)
            channels = x.shape[-1]
            scale = tf.cast(self.gamma, "float32") if self.scale else tf.ones((channels,), "float32")
            offset = tf.cast(self.beta, "float32") if self.center else tf.zeros((channels,), "float32")
            moving_mean = tf.cast(self.moving_mean, "float32")
            moving_variance = tf.cast(self.moving_variance, "float32")
            if training and self.trainable:
                empty = tf.constant([], "float32")
                y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                    x=x, scale=scale, offset=offset, mean=empty, variance=empty, epsilon=self.epsilon,
                    exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
                # The kernel returns the unbiased (Bessel-corrected) variance; Keras averages the biased one.
                count = tf.cast(tf.size(x, out_type=tf.int64) // channels, "float32")
                variance = variance * (tf.maximum(count - 1.0, 1.0) / count)
                self.moving_mean.assign(moving_mean * self.momentum + mean * (1.0 - self.momentum))
                self.moving_variance.assign(
                    moving_variance * self.momentum + variance * (1.0 - self.momentum))
                return y
            y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=scale, offset=offset, mean=moving_mean, variance=moving_variance,
                epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC", is_training=False)
            return y

    BatchNormalization.__module__ = __name__
    BatchNormalization.__qualname__ = "BatchNormalization"
    _CLASS["class"] = BatchNormalization
    return BatchNormalization


def __getattr__(name):
    # BatchNormalization and FusedBatchNormalization (one class, named for weight-file compatibility; use the
    # descriptive name) are made on first use.
    if name in ("BatchNormalization", "FusedBatchNormalization"):
        return _fused_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def batch_norm_class():
    """The class `kcnn.layers.batch_norm` instantiates (see `use_fused_batch_norm`)."""
    if _FUSED["enabled"]:
        return _fused_class()
    import keras

    return keras.layers.BatchNormalization


_FUSED_CONFIG = {"module": "kcnn.perf", "class_name": "BatchNormalization",
                 "registered_name": "kcnn>FusedBatchNormalization"}
_STOCK_CONFIG = {"module": "keras.layers", "class_name": "BatchNormalization", "registered_name": None}


def _map_dicts(config, fn):
    """A copy of a .keras config (nested dicts and lists) with ``fn`` applied to every dict, innermost first."""
    if isinstance(config, list):
        return [_map_dicts(v, fn) for v in config]
    if not isinstance(config, dict):
        return config
    return fn({k: _map_dicts(v, fn) for k, v in config.items()})


def _swap_batch_norm(config, old: dict, new: dict):
    """A .keras config with every batch-norm entry recorded as ``old`` recorded as ``new`` instead."""
    def swap(entry):
        return {**entry, **new} if all(entry.get(k) == v for k, v in old.items()) else entry

    return _map_dicts(config, swap)


def fuse_batch_norm(model):
    """``model`` with Keras' batch-norm layers computed by `FusedBatchNormalization`: a copy, or ``model`` itself.

    keras.applications builds its networks with Keras' own ``BatchNormalization``, which computes batch norm
    from separate ops; this rebuilds a functional model from its config with kcnn's fused layer in their place
    (same names, config, weights, trainable flags and outputs) and copies the weights over. A model without such
    a layer, one that is not functional, or any model after ``use_fused_batch_norm(False)`` comes back as it is.
    Measured on ResNet-50 (224 px, batch 16, all layers learning, 2 CPU cores): README, "Performance".
    """
    import keras

    if not _FUSED["enabled"] or not hasattr(model, "get_config"):
        return model
    stock = keras.layers.BatchNormalization
    if not any(type(layer) is stock for layer in getattr(model, "layers", [])):  # noqa: E721
        return model
    try:
        config = model.get_config()
    except NotImplementedError:  # a subclassed model
        return model
    swapped = _swap_batch_norm(config, _STOCK_CONFIG, _FUSED_CONFIG)
    _fused_class()
    clone = model.__class__.from_config(swapped)
    clone.set_weights(model.get_weights())
    clone.trainable = model.trainable  # first: setting it sets every layer's flag
    flags = {layer.name: layer.trainable for layer in model.layers}
    for layer in clone.layers:
        layer.trainable = flags.get(layer.name, layer.trainable)
    return clone


def _drop_mixed_dtypes(config):
    """A .keras config without the dtype of layers that computed under a mixed-precision policy: loaded, they
    follow the loading process's policy (float32 by default) instead; explicit float32 layers stay float32."""
    def drop(entry):
        dtype = entry.get("dtype")
        name = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
        if isinstance(name, str) and name.startswith("mixed_"):
            return {k: v for k, v in entry.items() if k != "dtype"}
        return entry

    return _map_dicts(config, drop)


def _rewrite_keras_file(src, dst, transform) -> None:
    import json
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                data = json.dumps(transform(json.loads(data))).encode()
            zout.writestr(item, data)


def save_portable(model, path) -> None:
    """``model.save(path)`` (a ``.keras`` file) that loads where kcnn is not installed, written atomically.

    kcnn's fused batch norm has Keras' config, weights and semantics, so the file records it as Keras' stock
    ``BatchNormalization``; every other layer kcnn builds is a stock Keras layer already. A model trained under
    a mixed-precision policy (its variables are float32) is saved without that policy on its layers: the file
    loads as a float32 model, or in the policy of the process that loads it (``kcnn.perf.load_model`` under
    ``mixed_bfloat16`` trains it on in bfloat16). The file is written to a temporary name in the same folder
    and renamed.
    """
    from pathlib import Path

    from kcnn import files

    path = Path(path)
    raw, tmp = files.temp_sibling(path, "raw.keras"), files.temp_sibling(path)
    try:
        model.save(raw)
        _rewrite_keras_file(raw, tmp, lambda config: _drop_mixed_dtypes(
            _swap_batch_norm(config, _FUSED_CONFIG, _STOCK_CONFIG)))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        files.replace(tmp, path)
    finally:
        for leftover in (raw, tmp):
            files.discard(leftover)


def load_model(path):
    """Load a ``.keras`` file in safe mode (no code runs), uncompiled, with Keras' batch norm computed by kcnn's
    fused layer (`batch_norm_class`): the file stays portable, kcnn trains it at kcnn's speed.

    Raises:
        ValueError: one line naming the file when it cannot be loaded (not a .keras file, or one that would
            need to run code, such as a ``Lambda`` layer).
    """
    import tempfile

    import keras

    try:
        if not _FUSED["enabled"]:
            return keras.saving.load_model(path, compile=False, safe_mode=True)
        _fused_class()  # registered before the file names it
        with tempfile.TemporaryDirectory(prefix="kcnn-load-") as folder:
            local = os.path.join(folder, "model.keras")
            _rewrite_keras_file(path, local,
                                lambda config: _swap_batch_norm(config, _STOCK_CONFIG, _FUSED_CONFIG))
            return keras.saving.load_model(local, compile=False, safe_mode=True)
    except Exception as err:  # Keras raises ValueError, TypeError, OSError, zipfile errors...
        text = " ".join(str(err).split())
        raise ValueError(f"{path}: not a loadable .keras model ({type(err).__name__}: {text[:300]})") from None


if "keras" in sys.modules:  # Keras is loaded already (kcnn.layers imports it first): register the class now,
    _fused_class()          # so that loading a .keras file after `import kcnn` finds it


__all__ = [
    "auto_settings", "apply_settings", "CompileSettings", "detect_device", "set_threads", "enable_onednn",
    "onednn_enabled", "ScopedChange",
    "matmul_peak_gflops", "save_portable", "load_model", "fuse_batch_norm", "cpu_flags", "auto_precision",
    "resolve_precision", "PRECISIONS",
    "BatchNormalization", "FusedBatchNormalization", "use_fused_batch_norm", "batch_norm_class",
    "DEFAULT_STEPS_PER_EXECUTION", "MIXED_PRECISION_POLICIES",
]
