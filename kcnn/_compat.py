"""Every reach into a dependency's private modules, in one place, each with a version guard.

kcnn uses public APIs wherever one exists. The few things that have none (keras.applications' weight-file
URLs and hashes, TensorFlow's gradient registry and eager-context state, keras-tuner's distributed-mode helpers,
Keras' auto-jit resolution) are reached here and nowhere else. Each function checks that what it reaches
still exists and raises `CompatError` naming the dependency and its version when it does not, so a moved
internal fails loudly (``tests/test_compat.py`` calls every one) instead of silently changing behaviour.
"""
from __future__ import annotations

import contextlib
import importlib


class CompatError(ImportError):
    """A private part of a dependency that kcnn relies on has moved or changed."""


def _version(package: str) -> str:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:  # pragma: no cover
        return "unknown"


def _module(name: str, package: str):
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise CompatError(f"kcnn needs {name} (private to {package} {_version(package)}); it has moved: "
                          f"{err}. Install a {package} release kcnn supports (see setup.cfg).") from None


def _attr(obj, name: str, package: str):
    if not hasattr(obj, name):
        raise CompatError(f"kcnn needs {getattr(obj, '__name__', obj)}.{name} (private to {package} "
                          f"{_version(package)}); it has moved. Install a {package} release kcnn supports.")
    return getattr(obj, name)


# --- keras ------------------------------------------------------------------------------------------------------

def keras_applications_module(name: str):
    """``keras.src.applications.<name>`` (vgg16, vgg19, resnet): the weight files' URLs and hashes live there."""
    return _module(f"keras.src.applications.{name}", "keras")


def keras_trainer_class():
    """``keras.src.trainers.trainer.Trainer`` (the bench patches its auto-jit resolution)."""
    module = _module("keras.src.trainers.trainer", "keras")
    trainer = _attr(module, "Trainer", "keras")
    _attr(trainer, "_resolve_auto_jit_compile", "keras")
    return trainer


@contextlib.contextmanager
def keras_auto_jit(value: bool):
    """Within the block, Keras' ``compile(jit_compile="auto")`` resolves to ``value`` (the bench's XLA switch):
    the Trainer's private ``_resolve_auto_jit_compile`` is replaced and put back."""
    trainer = keras_trainer_class()
    original = trainer.__dict__["_resolve_auto_jit_compile"]
    trainer._resolve_auto_jit_compile = lambda self: value
    try:
        yield
    finally:
        trainer._resolve_auto_jit_compile = original


def keras_nodes_by_depth(model) -> dict:
    """A functional model's graph as ``{depth: [node, ...]}`` (Keras' private ``_nodes_by_depth``)."""
    return _attr(model, "_nodes_by_depth", "keras")


def keras_is_functional(model) -> bool:
    """Whether ``model`` exposes a functional graph kcnn can walk (`keras_nodes_by_depth`)."""
    return hasattr(model, "_nodes_by_depth")


def keras_sequential_graph(model):
    """The functional graph a built Sequential keeps (Keras' private ``_functional``), or None before it is built."""
    return getattr(model, "_functional", None)


def keras_history(tensor):
    """The (operation, node index, tensor index) record of a symbolic Keras tensor (private ``_keras_history``),
    or None for a tensor that no layer made."""
    return getattr(tensor, "_keras_history", None)


def keras_variable_key(optimizer, variable):
    """The key a Keras optimizer indexes a variable's slots by (its private ``_var_key``)."""
    return _attr(optimizer, "_var_key", "keras")(variable)


# --- tensorflow -------------------------------------------------------------------------------------------------

def tf_gradient_registry() -> dict | None:
    """TensorFlow's global gradient-function registry (a private dict), or None where it is not found."""
    ops = _module("tensorflow.python.framework.ops", "tensorflow")
    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    return registry if isinstance(registry, dict) else None


def tf_context_initialized() -> bool:
    """Whether TensorFlow's eager context has started (after which devices cannot be reconfigured)."""
    context = _module("tensorflow.python.eager.context", "tensorflow")
    return _attr(context.context(), "_context_handle", "tensorflow") is not None


def tf_op_determinism():
    """TensorFlow's op-determinism switch: ``enable_op_determinism`` is public, but reading it
    (``is_op_determinism_enabled``) and turning it off (``disable_op_determinism``) live only in the module that
    defines them (TensorFlow 2.21 exports neither)."""
    config = _module("tensorflow.python.framework.config", "tensorflow")
    for name in ("enable_op_determinism", "disable_op_determinism", "is_op_determinism_enabled"):
        _attr(config, name, "tensorflow")
    return config


def tf_onednn_enabled() -> bool:
    """TensorFlow's own answer to whether its oneDNN kernels are on in this process."""
    port = _module("tensorflow.python.util._pywrap_util_port", "tensorflow")
    return bool(_attr(port, "IsMklEnabled", "tensorflow")())


# --- keras-tuner ------------------------------------------------------------------------------------------------

def kt_oracle_client_class():
    """keras-tuner's ``OracleClient`` (a worker's proxy to the chief's oracle)."""
    module = _module("keras_tuner.src.distribute.oracle_client", "keras-tuner")
    return _attr(module, "OracleClient", "keras-tuner")


def kt_distribute_utils():
    """keras-tuner's distributed-mode helpers (``has_chief_oracle``, ``is_chief_oracle``)."""
    module = _module("keras_tuner.src.distribute.utils", "keras-tuner")
    _attr(module, "has_chief_oracle", "keras-tuner")
    _attr(module, "is_chief_oracle", "keras-tuner")
    return module


def kt_config_module():
    """keras-tuner's ``config`` module (its ``DEBUG`` switch shows full trial tracebacks)."""
    module = _module("keras_tuner.src.config", "keras-tuner")
    _attr(module, "DEBUG", "keras-tuner")
    return module
