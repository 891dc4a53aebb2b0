"""kcnn.perf and recipes.bench: the fused batch-norm layer equals Keras', the per-device settings, the bench's
output. Nothing here times anything (the bench runs on 3 tiny steps and only its output format is checked)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras
import kcnn
from kcnn import perf
from recipes import bench

RESNET20_MACS = 40_551_040  # kcnn.count_macs(resnet20 at 32 px)
RESNET20_PARAMS = 271_098


def _pair(shape=(6, 5, 5, 4), momentum=0.9, epsilon=1.001e-5, seed=0):
    rng = np.random.default_rng(seed)
    keras_bn = keras.layers.BatchNormalization(momentum=momentum, epsilon=epsilon, name="bn")
    fused_bn = perf.FusedBatchNormalization(momentum=momentum, epsilon=epsilon, name="bn")
    for layer in (keras_bn, fused_bn):
        layer.build(shape)
    weights = [rng.normal(size=shape[-1]), rng.normal(size=shape[-1]), rng.normal(size=shape[-1]),
               rng.uniform(0.5, 2.0, size=shape[-1])]
    weights = [w.astype("float32") for w in weights]
    keras_bn.set_weights(weights)
    fused_bn.set_weights(weights)
    x = rng.normal(1.5, 3.0, size=shape).astype("float32")
    return keras_bn, fused_bn, x


@pytest.mark.parametrize("training", [True, False])
def test_fused_batch_norm_equals_keras(training):
    keras_bn, fused_bn, x = _pair()
    for _ in range(3):  # three steps: the moving statistics move (training) or stay (inference)
        got, want = fused_bn(x, training=training), keras_bn(x, training=training)
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5, rtol=1e-5)
    for got, want in zip(fused_bn.get_weights(), keras_bn.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    moved = not np.allclose(keras_bn.moving_mean.numpy(), _pair()[0].moving_mean.numpy())
    assert moved == training


@pytest.mark.parametrize("training", [True, False])
def test_fused_batch_norm_gradients_equal_keras(training):
    keras_bn, fused_bn, x = _pair(seed=1)
    target = tf.constant(np.random.default_rng(2).normal(size=x.shape).astype("float32"))
    grads = []
    for layer in (keras_bn, fused_bn):
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(layer(xt, training=training) * target)
        grads.append(tape.gradient(loss, [xt, *layer.trainable_weights]))
    for got, want in zip(grads[1], grads[0]):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4, rtol=1e-5)


def test_fused_batch_norm_has_keras_weights_and_config():
    keras_bn, fused_bn, _ = _pair()
    assert [w.path for w in fused_bn.weights] == [w.path for w in keras_bn.weights] == [
        "bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance"]
    assert fused_bn.get_config() == keras_bn.get_config()
    assert isinstance(fused_bn, keras.layers.BatchNormalization)


def test_fused_batch_norm_falls_back_outside_4d_channels_last():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 5)).astype("float32")
    fused, plain = perf.FusedBatchNormalization(momentum=0.9), keras.layers.BatchNormalization(momentum=0.9)
    np.testing.assert_allclose(fused(x, training=True).numpy(), plain(x, training=True).numpy(), atol=1e-6)
    np.testing.assert_allclose(fused.moving_variance.numpy(), plain.moving_variance.numpy(), atol=1e-6)


def test_kcnn_models_use_the_fused_layer_and_it_can_be_switched_off():
    model = kcnn.build("resnet20", input_shape=(16, 16, 3), classes=3)
    kinds = {type(layer) for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert kinds == {perf.FusedBatchNormalization}
    before = perf.use_fused_batch_norm(False)
    try:
        plain = kcnn.build("resnet20", input_shape=(16, 16, 3), classes=3)
    finally:
        perf.use_fused_batch_norm(before)
    assert before is True
    assert {type(la) for la in plain.layers if isinstance(la, keras.layers.BatchNormalization)} == {
        keras.layers.BatchNormalization}
    assert model.count_params() == plain.count_params()
    assert [w.path for w in model.weights] == [w.path for w in plain.weights]


def test_fused_batch_norm_round_trips_keras_file(tmp_path):
    keras.utils.set_random_seed(0)
    model = kcnn.build("resnet20", input_shape=(16, 16, 3), classes=3)
    x = np.random.default_rng(4).uniform(0, 1, size=(4, 16, 16, 3)).astype("float32")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(x, np.array([0, 1, 2, 0]), epochs=1, verbose=0)  # moves the moving statistics off their start
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert type(loaded.get_layer("conv1_bn")) is perf.FusedBatchNormalization
    # A fresh process that only imports kcnn (as recipes.predict does) finds the class.
    code = ("import keras, kcnn; m = keras.saving.load_model(%r); "
            "print(keras.saving.get_registered_name(type(m.get_layer('conv1_bn'))))" % str(path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "kcnn>FusedBatchNormalization"


@pytest.mark.parametrize("fmt", ["weights.h5", "keras"])
def test_weight_files_are_interchangeable_with_keras_batch_norm(tmp_path, fmt):
    """Keras 3 files address variables by class name: the fused layer must read and write Keras' layout."""
    def net(bn_class):
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
        x = bn_class(name="bn")(x)
        x = bn_class(name="bn2")(keras.layers.Conv2D(4, 3, name="conv2")(x))
        return keras.Model(inputs, x)

    keras.utils.set_random_seed(5)
    x = np.random.default_rng(6).normal(size=(2, 8, 8, 3)).astype("float32")
    for source, target in ((keras.layers.BatchNormalization, perf.FusedBatchNormalization),
                           (perf.FusedBatchNormalization, keras.layers.BatchNormalization)):
        model = net(source)
        for layer in model.layers:  # non-default statistics, so a silent non-load would show
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.set_weights([w + np.random.default_rng(7).uniform(0.5, 1.0, w.shape).astype("float32")
                                   for w in layer.get_weights()])
        path = tmp_path / f"{source.__module__}.{fmt}"
        if fmt == "keras":
            model.save(path)
            other = net(target)
            other.load_weights(path)
        else:
            model.save_weights(path)
            other = net(target)
            other.load_weights(path)
        np.testing.assert_allclose(other.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_auto_settings_on_cpu_and_overrides():
    assert perf.auto_settings("cpu") == dict(device="cpu", steps_per_execution=16, jit_compile=False,
                                             mixed_precision="float32", measured=True)
    if perf.detect_device() == "cpu":
        assert perf.auto_settings() == perf.auto_settings("cpu")
    gpu = perf.auto_settings("gpu")
    assert (gpu["jit_compile"], gpu["measured"], gpu["steps_per_execution"]) == (True, False, 16)
    assert perf.auto_settings("cpu", steps_per_execution=4, jit_compile=None)["steps_per_execution"] == 4
    assert perf.auto_settings("cpu", mixed_precision="mixed_bfloat16")["mixed_precision"] == "mixed_bfloat16"
    for bad in (dict(device="tpu"), dict(steps_per_execution=0), dict(jit_compile="yes"),
                dict(mixed_precision="fp8"), dict(threads=2)):
        with pytest.raises(ValueError, match="Received"):
            perf.auto_settings(**({"device": "cpu"} | bad))


def test_fit_schedule_defaults_to_the_perf_steps_per_execution():
    import inspect

    from kcnn import transfer

    default = inspect.signature(transfer.fit_schedule).parameters["steps_per_execution"].default
    assert default == perf.DEFAULT_STEPS_PER_EXECUTION == perf.auto_settings("cpu")["steps_per_execution"]


def _last_json(text):
    return json.loads(text.strip().splitlines()[-1])


def test_bench_json_last_line(capsys):
    code = bench.main(["--steps", "3", "--batch-size", "8", "--epochs", "1", "--peak-size", "128", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    result = _last_json(out)
    assert result["images_per_sec"] > 0 and result["inference_images_per_sec"] > 0
    assert result["macs_per_image"] == RESNET20_MACS and result["params"] == RESNET20_PARAMS
    assert (result["model"], result["batch_size"], result["image_size"]) == ("resnet20", 8, 32)
    settings = (result["steps_per_execution"], result["jit_compile"], result["mixed_precision"])
    assert settings == (16, False, "float32")
    gflops = 6 * RESNET20_MACS * result["images_per_sec"] / 1e9  # 3 forward passes x 2 FLOPs per MAC
    assert result["train_gflops"] == pytest.approx(gflops, rel=0.01)
    fraction = result["train_gflops"] / result["peak_gflops"]
    assert result["train_peak_fraction"] == pytest.approx(fraction, rel=0.05)


def test_bench_feature_cache_mode(capsys):
    code = bench.main(["--feature-cache", "--model", "resnet20", "--image-size", "16", "--cache-images", "64",
                       "--batch-size", "32", "--epochs", "1", "--peak-size", "0", "--json"])
    result = _last_json(capsys.readouterr().out)
    assert code == 0
    assert result["mode"] == "feature_cache" and result["cache_images"] == 64
    assert result["feature_cache_speedup"] == pytest.approx(
        result["naive_epoch_seconds"] / result["cached_epoch_seconds"], rel=0.05)


def test_reference_torch_without_torch_exits_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails now, installed or not
    monkeypatch.delitem(sys.modules, "recipes.bench_torch", raising=False)
    assert bench.main(["--steps", "1", "--reference", "torch"]) == 2
    assert "pip install -e .[bench]" in capsys.readouterr().err


def test_bench_refuses_bad_options(capsys):
    assert bench.main(["--steps", "0"]) == 2
    assert bench.main(["--feature-cache", "--reference", "torch"]) == 2
    assert bench.main(["--precision", "fp8"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 3


@pytest.mark.parametrize("arch,shape", [("resnet20", (32, 32, 3)), ("resnet18", (64, 64, 3)),
                                        ("resnet50", (64, 64, 3))])
def test_torch_twins_have_kcnn_parameter_counts(arch, shape):
    pytest.importorskip("torch")
    from recipes import bench_torch

    model = kcnn.build(arch, input_shape=shape, classes=10)
    assert bench_torch.count_params(bench_torch.build(arch, 10)) == model.count_params()


def _fresh(code, env_value=None):
    """Run ``code`` in a fresh interpreter without TF_ENABLE_ONEDNN_OPTS (or with it set to ``env_value``)."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if env_value is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = env_value
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


# kcnn/perf.py loaded on its own (not through kcnn/__init__), so enable_onednn's logic is tested before
# TensorFlow is imported whatever the package imports eagerly.
_LOAD_PERF = ("import importlib.util, os, sys; "
              "spec = importlib.util.spec_from_file_location('perf_alone', %r); "
              "perf = importlib.util.module_from_spec(spec); spec.loader.exec_module(perf); ")


@pytest.mark.parametrize("setting, expected", [(None, "False True 1"), ("0", "False False 0"),
                                               ("1", "False True 1")])
def test_enable_onednn_before_tensorflow_sets_only_an_unset_variable(setting, expected):
    """TensorFlow leaves oneDNN off on x86 CPUs without AVX-512 VNNI/BF16 or AMX (slow training on AVX2)."""
    code = (_LOAD_PERF % perf.__file__) + (
        "tf_before = 'tensorflow' in sys.modules; on = perf.enable_onednn(); "
        "print(tf_before, on, os.environ.get('TF_ENABLE_ONEDNN_OPTS'))")
    assert _fresh(code, setting) == expected


def test_enable_onednn_after_tensorflow_reports_tensorflow_state():
    code = ("import os, tensorflow; from kcnn import perf; before = os.environ.get('TF_ENABLE_ONEDNN_OPTS'); "
            "on = perf.enable_onednn(); "
            "print(on == perf.onednn_enabled(), os.environ.get('TF_ENABLE_ONEDNN_OPTS') == before)")
    assert _fresh(code, "0") == "True True"


def test_import_kcnn_perf_changes_nothing_in_the_environment():
    code = ("import os, sys; before = dict(os.environ); import kcnn.perf; "
            "print(dict(os.environ) == before)")
    assert _fresh(code) == "True"


#: TensorFlow's default without TF_ENABLE_ONEDNN_OPTS on Linux (DefaultOneDnnPolicy / IsMklEnabled in
#: tensorflow/core/util/port.cc): oneDNN on for CPUs with any of these features, off otherwise (AVX2-only CPUs).
_ONEDNN_DEFAULT_FLAGS = frozenset({"avx512_vnni", "avx512_bf16", "avx_vnni",
                                   "amx_tile", "amx_int8", "amx_bf16"})


@pytest.mark.parametrize("setting", [None, "0", "1"])
def test_onednn_enabled_is_tensorflow_answer(setting):
    """In a fresh process under a controlled TF_ENABLE_ONEDNN_OPTS: the variable's value when it is set, the
    CPU-feature default of TensorFlow's x86 Linux build when it is not."""
    import platform

    if not (sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")):
        pytest.skip("the documented default is that of TensorFlow's x86 Linux build")
    expected = bool(perf.cpu_flags() & _ONEDNN_DEFAULT_FLAGS) if setting is None else setting == "1"
    code = ("import os; from kcnn import perf; "
            "print(perf.onednn_enabled(), os.environ.get('TF_ENABLE_ONEDNN_OPTS'))")
    assert _fresh(code, setting) == f"{expected} {setting}"


def test_onednn_enabled_reads_the_variable_where_tensorflow_cannot_answer(monkeypatch):
    from kcnn import _compat

    def no_hook():
        raise _compat.CompatError("no IsMklEnabled in this TensorFlow")

    monkeypatch.setattr(_compat, "tf_onednn_enabled", no_hook)
    for value, expected in (("1", True), ("true", True), ("TRUE", True), ("0", False), ("false", False),
                            ("yes", False)):
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", value)
        assert perf.onednn_enabled() is expected, value
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")
    assert perf.onednn_enabled() is False


def test_bench_uses_no_keras_internals_directly():
    import pathlib

    text = pathlib.Path(bench.__file__).read_text()
    assert "keras.src" not in text and "unittest" not in text and "_compat.keras_auto_jit" in text


# --- the fair comparison (one process per library) ----------------------------------------------------------

def _fake_launch(rates):
    """A launcher returning fixed per-epoch figures: (library, round) -> JSON, as the workers print it."""
    calls = []

    def launch(library, peak_size):
        calls.append((library, peak_size))
        index = sum(1 for name, _ in calls if name == library) - 1
        return dict(images_per_sec_epochs=rates[library][index], inference_images_per_sec_repeats=[100.0],
                    macs_per_image=1_000_000, peak_gflops=50.0 if peak_size else None, peak_dtype="float32",
                    params=10, version="x", device="cpu")

    return launch, calls


def test_fair_orchestration_alternates_and_reports_median_ratio(capsys):
    from recipes import bench_fair

    rates = {"kcnn": [[100.0, 110.0], [90.0, 120.0], [105.0, 95.0]],
             "torch": [[200.0, 190.0], [210.0, 180.0], [205.0, 195.0]]}
    launch, calls = _fake_launch(rates)
    result = bench_fair.orchestrate(3, 3, launch, peak_size=64)
    out = capsys.readouterr().out
    assert [c[0] for c in calls] == ["kcnn", "torch", "torch", "kcnn", "kcnn", "torch"]
    assert [c[1] for c in calls if c[0] == "kcnn"] == [64, 0, 0]  # the peak only in the first round
    kcnn_rates = [r for run in rates["kcnn"] for r in run]
    assert result["kcnn"]["median"] == pytest.approx(np.median(kcnn_rates))
    assert result["kcnn"]["best"] == 120.0
    assert result["kcnn"]["spread"] == pytest.approx((120 - 90) / np.median(kcnn_rates), abs=1e-3)
    within = sorted([10 / 105, 30 / 105, 10 / 100])  # (max - min) / median of each round's epochs
    assert result["kcnn"]["spread_within"] == pytest.approx(within[1], abs=1e-3)
    assert "within one process: 10.0%" in out
    assert result["ratio"] == pytest.approx(result["kcnn"]["median"] / result["torch"]["median"], abs=1e-3)
    assert result["ratio_best"] == pytest.approx(120.0 / 210.0, abs=1e-3)
    assert f"training {result['ratio']:.3f}x (median / median)" in out
    assert result["kcnn"]["peak_fraction"] == pytest.approx(
        3 * 2 * 1_000_000 * result["kcnn"]["median"] / 1e9 / 50.0, abs=1e-3)


def test_fair_orchestration_reports_a_failed_worker_as_not_measured(capsys):
    from recipes import bench_fair

    def launch(library, peak_size):
        if library == "kcnn":
            return {"error": "the kcnn worker exited 1: No module named 'tensorflow'"}
        return dict(images_per_sec_epochs=[10.0, 12.0], params=1)

    result = bench_fair.orchestrate(2, 3, launch, peak_size=0)
    out = capsys.readouterr().out
    assert "kcnn  not measured: the kcnn worker exited 1: No module named 'tensorflow'" in out
    assert "ratio" not in result and result["torch"]["median"] == 11.0


def _figures(out):
    import re

    medians = dict(re.findall(r"^training\s+(kcnn|torch)\s+([\d,.]+) img/s median", out, re.M))
    ratio = re.search(r"kcnn / torch: training ([\d.]+)x \(median / median\)", out).group(1)
    return {k: float(v.replace(",", "")) for k, v in medians.items()}, float(ratio)


@pytest.mark.slow
def test_fair_mode_end_to_end_in_subprocesses(capsys):
    """Two real worker processes (TensorFlow and PyTorch start-up: slow on a busy 2-core machine)."""
    pytest.importorskip("torch")
    code = bench.main(["--reference", "torch", "--rounds", "1", "--steps", "2", "--epochs", "1",
                       "--batch-size", "8", "--peak-size", "64", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    result = _last_json(out)
    medians, ratio = _figures(out)
    assert medians["kcnn"] > 0 and medians["torch"] > 0
    assert ratio == pytest.approx(medians["kcnn"] / medians["torch"], abs=1e-3)
    assert result["kcnn"]["params"] == result["torch"]["params"] == RESNET20_PARAMS
    assert result["kcnn"]["macs_per_image"] == result["torch"]["macs_per_image"] == RESNET20_MACS


def test_in_process_mode_is_labelled_unfair(capsys):
    pytest.importorskip("torch")
    code = bench.main(["--reference", "torch", "--in-process", "--steps", "2", "--epochs", "1",
                       "--batch-size", "8", "--peak-size", "0", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    assert "NOT a fair comparison" in out
    assert _last_json(out)["torch"]["images_per_sec"] > 0


def test_bench_head_only_phase(capsys):
    code = bench.main(["--train", "head", "--steps", "2", "--batch-size", "4", "--epochs", "1",
                       "--peak-size", "0", "--json"])
    result = _last_json(capsys.readouterr().out)
    assert code == 0 and result["train"] == "head" and result["images_per_sec"] > 0


@pytest.mark.parametrize("arch,size", [("vgg16", 32), ("VGG16", 32), ("resnet50", 64), ("ResNet50", 64)])
def test_torch_twins_match_the_bench_model(arch, size):
    """The twin has the parameters and MACs of classifier(backbone(arch)), the model the bench times."""
    pytest.importorskip("torch")
    from kcnn import count_macs, transfer
    from recipes import bench_torch

    model = transfer.classifier(transfer.backbone(arch, None, (size, size, 3)), 10)
    twin = bench_torch.build(arch, 10)
    constants = sum(layer.count_params() for layer in model.layers if layer.name == "preprocess")
    assert bench_torch.count_params(twin) == model.count_params() - constants
    # keras.applications' preprocessing (a few ops per pixel) is all the arithmetic the twin leaves out.
    macs = count_macs(model, input_shape=(size, size, 3))
    assert bench_torch.count_macs(twin, size) == (macs if not constants else pytest.approx(macs, rel=1e-3))


def test_torch_worker_head_only_trains_only_the_last_layer(capsys):
    torch = pytest.importorskip("torch")
    from recipes import bench_torch

    ref = bench_torch.Reference("resnet20", 4, 16, train="head")
    before = [p.detach().clone() for p in ref.model.parameters()]
    ref.train_epoch(1)
    changed = [not torch.equal(a, b.detach()) for a, b in zip(before, ref.model.parameters())]
    assert changed[-2:] == [True, True] and not any(changed[:-2])
    assert bench_torch.main(["--model", "resnet20", "--batch-size", "4", "--image-size", "16", "--steps", "1",
                             "--epochs", "1", "--peak-size", "32", "--json"]) == 0
    result = _last_json(capsys.readouterr().out)
    assert result["images_per_sec_epochs"][0] > 0 and result["device"] == "cpu"
    if not torch.cuda.is_available():
        assert bench_torch.main(["--device", "cuda"]) == 2  # one line naming the reason, not a traceback
        assert "PyTorch sees no GPU" in capsys.readouterr().err


def test_keras_applications_backbones_get_the_fused_layer_with_the_same_weights_and_outputs():
    """backbone("ResNet50") swaps keras.applications' own batch norm for the fused layer (docs/performance.md)."""
    from kcnn.transfer import backbone

    keras.utils.set_random_seed(8)
    stock = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    for layer in stock.layers:  # statistics off their defaults, so a weight that did not move over would show
        if isinstance(layer, keras.layers.BatchNormalization):
            rng = np.random.default_rng(len(layer.name))
            layer.set_weights([w + rng.uniform(0.1, 0.5, w.shape).astype("float32") for w in layer.get_weights()])
    stock.layers[5].trainable = False
    fused = perf.fuse_batch_norm(stock)
    norms = [la for la in fused.layers if isinstance(la, keras.layers.BatchNormalization)]
    assert len(norms) == 53 and {type(la) for la in norms} == {perf.FusedBatchNormalization}
    assert [la.name for la in fused.layers] == [la.name for la in stock.layers]
    assert [la.trainable for la in fused.layers] == [la.trainable for la in stock.layers]
    assert [w.path for w in fused.weights] == [w.path for w in stock.weights]
    for got, want in zip(fused.get_weights(), stock.get_weights()):
        np.testing.assert_array_equal(got, want)
    x = np.random.default_rng(9).normal(size=(4, 32, 32, 3)).astype("float32")
    for training in (False, True):
        got, want = fused(x, training=training).numpy(), stock(x, training=training).numpy()
        # measured: 3.6e-6 (moving statistics) and 5.1e-3 of outputs up to 10.3 (batch statistics of 4 images
        # at 1x1 px in the last stage, where float32 round-off in 53 normalisations adds up)
        assert np.abs(got - want).max() <= (1e-3 if training else 1e-5) * np.abs(want).max()
    assert perf.fuse_batch_norm(fused) is fused  # nothing left to swap
    bb = backbone("ResNet50", input_shape=(32, 32, 3))
    assert {type(la) for la in bb.model.layers if isinstance(la, keras.layers.BatchNormalization)} == {
        perf.FusedBatchNormalization}
    before = perf.use_fused_batch_norm(False)
    try:
        assert perf.fuse_batch_norm(stock) is stock
        plain = backbone("ResNet50", input_shape=(32, 32, 3))
    finally:
        perf.use_fused_batch_norm(before)
    assert {type(la) for la in plain.model.layers if isinstance(la, keras.layers.BatchNormalization)} == {
        keras.layers.BatchNormalization}
