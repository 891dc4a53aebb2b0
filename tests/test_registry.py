"""The registry and the builders share one spec per architecture; builders show keras.applications' signature."""
import ast
import inspect
import pathlib
import re
import subprocess
import sys

import pytest

import keras
import kcnn
from kcnn import registry

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAMES = kcnn.list_models()
# keras.applications' own parameters, read from its builders rather than written down here.
KERAS_PARAMS = set(inspect.signature(keras.applications.VGG16).parameters) | set(
    inspect.signature(keras.applications.ResNet50).parameters)
# Each family's first registered (smallest) member, for the checks that build a model at the spec's default or
# minimum size; read from the registry, so a new family is tested without an edit here.
ONE_PER_FAMILY = [members[0] for members in registry.families().values()]


def test_keras_params_are_the_documented_ones():
    assert KERAS_PARAMS == {"include_top", "weights", "input_tensor", "input_shape", "pooling", "classes",
                            "classifier_activation", "name"}


@pytest.mark.parametrize("name", NAMES)
def test_builder_signature_lists_keras_applications_parameters(name):
    fn = kcnn.get_entry(name).fn
    assert fn is getattr(kcnn.models, name) and fn.__name__ == name
    params = inspect.signature(fn).parameters
    assert KERAS_PARAMS <= set(params)
    assert {"norm", "spatial_dropout", "dropout", "head", "fc_units"} <= set(params)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())  # no **kwargs
    assert "**" not in str(inspect.signature(fn))


@pytest.mark.parametrize("name", NAMES)
def test_builder_docstring_documents_every_parameter(name):
    fn = kcnn.get_entry(name).fn
    doc = inspect.getdoc(fn)
    assert "\nArgs:\n" in doc and "\nReturns:\n" in doc and "\nExample:\n" in doc
    missing = [p for p in inspect.signature(fn).parameters if f"\n    {p}: " not in doc]
    assert missing == []


@pytest.mark.parametrize("name", NAMES)
def test_spec_defaults_are_the_builders_defaults(name):
    entry = kcnn.get_entry(name)
    params = inspect.signature(entry.fn).parameters
    assert params["classes"].default == entry.default_classes == entry.spec.default_classes
    assert params["input_shape"].default is None  # None means the spec's default_input_shape
    assert f"default {entry.default_input_shape}" in entry.fn.__doc__
    assert re.search(rf"at least {entry.min_size}\b", entry.fn.__doc__)


@pytest.mark.parametrize("name", NAMES)
def test_builder_enforces_the_spec_minimum_size(name):
    m = kcnn.get_entry(name).min_size
    with pytest.raises(ValueError, match=f"at least {m}x{m} pixels"):
        kcnn.build(name, input_shape=(m - 1, m - 1, 3), include_top=False)


@pytest.mark.parametrize("name", ONE_PER_FAMILY)
def test_builder_uses_the_spec_input_shape_and_minimum(name):
    entry = kcnn.get_entry(name)
    assert kcnn.build(name, include_top=False).input_shape[1:] == entry.default_input_shape
    m = entry.min_size
    assert kcnn.build(name, include_top=False, input_shape=(m, m, 3)).input_shape[1:] == (m, m, 3)


def test_families_group_every_model_in_registration_order(monkeypatch):
    grouped = registry.families()
    assert sorted(n for members in grouped.values() for n in members) == NAMES
    assert all(members and {kcnn.get_entry(n).family for n in members} == {family}
               for family, members in grouped.items())
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    spec = kcnn.ModelSpec("toy", (16, 16, 3), min_size=4, default_classes=10)

    def toy_b(*, input_shape=None, classes=10):
        raise AssertionError("never built")

    def toy_a(*, input_shape=None, classes=10):
        raise AssertionError("never built")

    kcnn.register_model(spec)(toy_b)
    kcnn.register_model(spec)(toy_a)
    assert registry.families()["toy"] == ["toy_b", "toy_a"]  # registration order, not sorted
    assert list(registry.families())[:len(grouped)] == list(grouped)


def test_register_model_rejects_a_builder_that_contradicts_its_spec(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    spec = kcnn.ModelSpec("toy", (16, 16, 3), min_size=4, default_classes=10)

    def toy_wrong(*, input_shape=None, classes=7):
        raise AssertionError("never built")

    def toy_shape(*, input_shape=(8, 8, 3), classes=10):
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="default_classes"):
        kcnn.register_model(spec)(toy_wrong)
    with pytest.raises(ValueError, match="default_input_shape"):
        kcnn.register_model(spec)(toy_shape)
    assert "toy_wrong" not in kcnn.list_models() and "toy_shape" not in kcnn.list_models()


def test_register_model_with_a_spec_or_its_fields(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    spec = kcnn.ModelSpec("toy", (16, 16, 3), min_size=4, default_classes=3, blocks=["conv"])

    @kcnn.register_model(spec)
    def toy(*, input_shape=None, classes=spec.default_classes):
        inputs = keras.Input(input_shape or spec.default_input_shape)
        return keras.Model(inputs, keras.layers.Dense(classes)(keras.layers.GlobalAveragePooling2D()(inputs)))

    @kcnn.register_model(family="toy", default_input_shape=(8, 8, 1), min_size=2, default_classes=2)
    def toy_fields(**kwargs):
        return toy(**kwargs)

    assert kcnn.build("toy").output_shape == (None, 3)
    assert kcnn.get_entry("toy").blocks == ("conv",) and kcnn.get_entry("toy").spec is spec
    assert kcnn.get_entry("toy_fields").default_input_shape == (8, 8, 1)
    with pytest.raises(TypeError, match="not both"):
        kcnn.register_model(spec, family="toy")


def test_unknown_model_message_is_unchanged():
    with pytest.raises(ValueError, match=r"Unknown model 'vgg61'\. Did you mean .*vgg16.*See kcnn.list_models\(\) "
                                         rf"for all {len(NAMES)} names\. Received: name='vgg61'"):
        kcnn.get_entry("vgg61")
    assert kcnn.get_entry("VGG16").name == "vgg16"


def test_registry_module_imports_no_kcnn_module():
    tree = ast.parse(ROOT.joinpath("kcnn", "registry.py").read_text())
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
    assert [m for m in imported if m and m.split(".")[0] == "kcnn"] == []


def test_loading_the_registry_alone_loads_no_model_module():
    """kcnn.registry works on its own: loading its file imports nothing of kcnn (so no kcnn.models circle)."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('registry_alone', {str(ROOT / 'kcnn' / 'registry.py')!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['registry_alone'] = module\n"
        "spec.loader.exec_module(module)\n"
        "loaded = sorted(m for m in sys.modules if m == 'kcnn' or m.startswith('kcnn.'))\n"
        "assert loaded == [], loaded\n"
        "assert module.list_models() == []\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=ROOT.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")

