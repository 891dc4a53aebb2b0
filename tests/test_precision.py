"""--precision: bfloat16 compute on CPUs with AMX, float32 elsewhere; a run records the precision it resolved to;
saved files carry no mixed policy. The suite pins float32 (conftest), these tests choose for themselves."""
import platform
import zipfile

import numpy as np
import pytest

import keras
from kcnn import perf
from kcnn.transfer import backbone, classifier
from recipes import bench_fair, train

AMX = frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
NO_AMX = frozenset({"avx512f", "avx512_bf16"})  # AVX512_BF16 without AMX: bfloat16 was slower there


@pytest.fixture
def policy():
    """Set the global Keras policy for one test and put the previous one back."""
    before = keras.mixed_precision.global_policy()
    yield keras.mixed_precision.set_global_policy
    keras.mixed_precision.set_global_policy(before)


def test_auto_precision_follows_the_cpu_and_the_variable(monkeypatch):
    monkeypatch.delenv("KCNN_PRECISION", raising=False)
    monkeypatch.setattr(perf, "cpu_flags", lambda: AMX)
    assert perf.auto_precision("cpu") == perf.resolve_precision("auto", "cpu") == "mixed_bfloat16"
    assert perf.auto_settings("cpu")["mixed_precision"] == "mixed_bfloat16"
    assert perf.auto_precision("gpu") == "float32"  # not measured on a GPU: no automatic bfloat16 there
    monkeypatch.setattr(perf, "cpu_flags", lambda: NO_AMX)
    assert perf.auto_precision("cpu") == perf.auto_settings("cpu")["mixed_precision"] == "float32"
    assert perf.resolve_precision("mixed_bfloat16", "cpu") == "mixed_bfloat16"
    monkeypatch.setenv("KCNN_PRECISION", "mixed_bfloat16")
    assert perf.resolve_precision("auto", "cpu") == "mixed_bfloat16"
    assert perf.resolve_precision("float32", "cpu") == "float32"  # an explicit choice wins over the variable
    monkeypatch.setenv("KCNN_PRECISION", "fp8")
    with pytest.raises(ValueError, match=r"\$KCNN_PRECISION must be one of float32, mixed_bfloat16"):
        perf.auto_precision("cpu")
    with pytest.raises(ValueError, match="Received: precision='half'"):
        perf.resolve_precision("half", "cpu")


def test_cpu_flags_reads_the_cpu():
    flags = perf.cpu_flags()
    assert isinstance(flags, frozenset)
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        assert {"sse2", "fpu"} <= flags


def test_fair_bench_gives_the_twin_kcnns_automatic_precision(monkeypatch):
    class Cfg:
        classes, steps, epochs, train, seed, steps_per_execution, jit_compile = 10, 2, 1, "all", 0, 0, "auto"
        batch_norm, data, prefetch, intra_op, inter_op, remapper = "fused", "repeat", True, 0, 0, "on"
        precision, torch_device = "auto", "cpu"

    monkeypatch.delenv("KCNN_PRECISION", raising=False)
    for flags, amp in ((AMX, "bfloat16"), (NO_AMX, "none")):
        monkeypatch.setattr(perf, "cpu_flags", lambda flags=flags: flags)
        torch = bench_fair.worker_commands(Cfg, "resnet20", 8, 32, "resnet20")["torch"]
        assert torch[torch.index("--amp") + 1] == amp


def test_bfloat16_model_saves_as_float32_and_loads_in_the_loaders_policy(tmp_path, policy):
    policy("mixed_bfloat16")
    bb = backbone("resnet20", input_shape=(16, 16, 3))
    model = classifier(bb, 3)
    assert model.get_layer("predictions").compute_dtype == "float32"  # class scores and softmax in float32
    assert bb.model.get_layer("conv1_conv").compute_dtype == "bfloat16"
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    path = tmp_path / "m.keras"
    perf.save_portable(model, path)
    text = zipfile.ZipFile(path).read("config.json").decode()
    assert "mixed_bfloat16" not in text  # (the graph's symbolic tensors keep their dtype; loading recomputes it)
    policy("float32")
    loaded = keras.saving.load_model(path, safe_mode=True)
    inner = loaded.get_layer("backbone")
    assert {layer.compute_dtype for layer in [*loaded.layers, *inner.layers]} == {"float32"}
    want = model(x, training=False).numpy()
    np.testing.assert_allclose(loaded(x, training=False).numpy(), want, atol=0.05)  # bfloat16 vs float32 compute
    policy("mixed_bfloat16")
    again = perf.load_model(path)
    assert again.get_layer("backbone").get_layer("conv1_conv").compute_dtype == "bfloat16"
    assert again.get_layer("predictions").compute_dtype == "float32"
    np.testing.assert_array_equal(again(x, training=False).numpy(), want)  # the same bfloat16 model again


def test_a_bfloat16_run_records_its_precision_and_resumes_exactly_in_it(tmp_path, capsys, monkeypatch):
    from tests.test_resume import Interrupt, _largest_difference

    args = ["--data", "digits", "--model", "resnet20", "--image-size", "12", "--epochs", "2", "--verbose", "0",
            "--batch-size", "64", "--precision", "mixed_bfloat16"]
    straight, out = tmp_path / "straight", tmp_path / "t"
    assert train.main([*args, "--out", str(straight)]) == 0
    assert keras.mixed_precision.global_policy().name == "float32"  # the caller's policy is left as it was
    assert 'precision = "mixed_bfloat16"' in (straight / "config.toml").read_text()
    assert "mixed_bfloat16" not in zipfile.ZipFile(straight / "model.keras").read("config.json").decode()
    interrupt = Interrupt(monkeypatch, "after checkpoint", 1)
    assert train.main([*args, "--out", str(out)]) == 130 and interrupt.fired
    monkeypatch.undo()
    monkeypatch.setenv("KCNN_PRECISION", "float32")
    capsys.readouterr()
    assert train.main([*args[:-2], "--out", str(out), "--resume"]) == 2  # auto is float32 here: refused
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "precision: 'mixed_bfloat16' -> 'float32'" in err
    assert train.main([*args, "--out", str(out), "--resume"]) == 0
    assert keras.mixed_precision.global_policy().name == "float32"
    assert _largest_difference(straight, out) == 0.0  # bit for bit, as in float32
