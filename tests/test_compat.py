"""Every reach into a dependency's internals (kcnn._compat) still finds what it needs: fails loudly when one moves."""
import ast
import pathlib

import pytest

from kcnn import _compat

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: The project's own sources (the library and the recipes).
SOURCES = sorted([*ROOT.joinpath("kcnn").rglob("*.py"), *ROOT.joinpath("recipes").rglob("*.py")])


def test_every_keras_application_module_kcnn_reads_is_there():
    for name in ("vgg16", "vgg19", "resnet"):
        module = _compat.keras_applications_module(name)
        assert hasattr(module, "WEIGHTS_PATH") or hasattr(module, "BASE_WEIGHTS_PATH")


def test_tensorflow_and_keras_tuner_internals_are_there():
    assert isinstance(_compat.tf_gradient_registry(), dict)
    assert isinstance(_compat.tf_context_initialized(), bool)
    assert isinstance(_compat.tf_onednn_enabled(), bool)
    assert isinstance(_compat.tf_op_determinism().is_op_determinism_enabled(), bool)
    assert _compat.kt_oracle_client_class().__name__ == "OracleClient"
    assert callable(_compat.kt_distribute_utils().has_chief_oracle)
    assert isinstance(_compat.kt_config_module().DEBUG, bool)
    assert hasattr(_compat.keras_trainer_class(), "_resolve_auto_jit_compile")


def test_a_moved_module_raises_compat_error_naming_the_package():
    with pytest.raises(_compat.CompatError, match="keras"):
        _compat._module("keras.src.no_such_module", "keras")


def test_no_other_module_reaches_into_dependency_internals():
    offenders = []
    for path in SOURCES:
        if path.name == "_compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith(("keras.src", "tensorflow.python", "keras_tuner.src")):
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert offenders == []


def test_no_private_name_is_imported_from_another_package_of_the_project():
    """`from kcnn.x import _y` (or `x._y`) across packages couples modules to each other's insides."""
    files = SOURCES
    modules = {}
    for p in files:
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p

    def package(mod):
        return mod if modules[mod].name == "__init__.py" else mod.rsplit(".", 1)[0]

    found = []
    for mod, path in modules.items():
        aliases = {}
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package(mod).split(".")
                    up = up[:len(up) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    if full in modules:
                        aliases[alias.asname or alias.name] = full
                    elif (base in modules and alias.name.startswith("_") and not alias.name.startswith("__")
                          and package(base) != package(mod)):
                        found.append(f"{mod} imports {base}.{alias.name}")
            elif isinstance(node, ast.Import):
                aliases.update({a.asname or a.name: a.name for a in node.names if a.name in modules})
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                target = aliases[node.value.id]
                if package(target) != package(mod) and target != "kcnn._compat":
                    found.append(f"{mod} uses {target}.{node.attr}")
    assert sorted(set(found)) == []


#: Keras / TensorFlow private attributes kcnn reads; only kcnn/_compat.py may name them.
PRIVATE_ATTRIBUTES = {"_nodes_by_depth", "_keras_history", "_functional", "_var_key", "_resolve_auto_jit_compile",
                      "_gradient_registry", "_context_handle"}


def test_private_attributes_of_dependencies_are_read_only_through_compat():
    offenders = []
    for path in SOURCES:
        if path.name == "_compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.attr if isinstance(node, ast.Attribute) else (
                node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None)
            if name in PRIVATE_ATTRIBUTES:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert offenders == []
    assert "unittest" not in "".join(p.read_text() for p in SOURCES)


def test_the_keras_graph_accessors_see_a_functional_model():
    import keras

    x = keras.Input((4,), name="x")
    model = keras.Model(x, keras.layers.Dense(2, name="d")(x))
    nodes = _compat.keras_nodes_by_depth(model)
    assert sorted(nodes) == [0, 1] and _compat.keras_is_functional(model)
    assert _compat.keras_history(model.outputs[0])[0].name == "d"
    seq = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert _compat.keras_is_functional(_compat.keras_sequential_graph(seq))
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    keys = {_compat.keras_variable_key(optimizer, v) for v in model.trainable_variables}
    assert len(keys) == 2
    trainer = _compat.keras_trainer_class()
    before = trainer.__dict__["_resolve_auto_jit_compile"]
    with _compat.keras_auto_jit(True):
        assert model._resolve_auto_jit_compile() is True
    assert trainer.__dict__["_resolve_auto_jit_compile"] is before


def test_no_private_name_is_imported_from_another_module():
    """A leading underscore means 'used only in this module': `from kcnn.x import _y` anywhere else is refused.
    Package-private modules (``kcnn._compat``, ``recipes._cli``, ...) are modules, not names, and may be imported."""
    modules = set()
    for p in SOURCES:
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("kcnn", "recipes"):
                found += [f"{path.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")
                          and f"{node.module}.{a.name}" not in modules]
    assert found == []
