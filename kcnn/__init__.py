"""kcnn: convolutional-network architectures and transfer learning for Keras 3.

    >>> import kcnn
    >>> kcnn.list_models()[:3]
    ['allcnn_a', 'allcnn_b', 'allcnn_c']
    >>> model = kcnn.build("resnet20", classes=10)

Importing kcnn sets no environment variable, random seed, determinism flag or plotting backend, and loads
neither TensorFlow nor Keras: its names and submodules load on first use. So ``kcnn.perf.enable_onednn()``
can still turn TensorFlow's oneDNN kernels on when it is called before anything touches TensorFlow.
"""
__version__ = "0.1.0"

#: name -> the module that defines it (loaded on first use)
_EXPORTS = {
    **dict.fromkeys(("ReceptiveField", "conv_output_size", "padding_for", "receptive_field", "same_padding"),
                    "kcnn.arithmetic"),
    **dict.fromkeys(("count_macs", "summary"), "kcnn.model_summary"),
    **dict.fromkeys(("ModelEntry", "ModelSpec", "build", "get_entry", "list_models", "register_model"),
                    "kcnn.registry"),
    "WeightsError": "kcnn.weights",
}
_SUBMODULES = ("arithmetic", "convert", "data", "distribute", "layers", "model_summary", "models", "options",
               "perf", "plots", "registry", "runs", "training", "transfer", "tuning", "weights")

__all__ = sorted(_EXPORTS)

if "keras" in __import__("sys").modules:  # Keras is loaded already: register kcnn's layers (fused batch norm,
    from kcnn import layers as _layers  # noqa: F401   DropPath), so that a .keras file that holds them loads


def __getattr__(name):
    import importlib

    if name in _EXPORTS:
        if _EXPORTS[name] == "kcnn.registry":
            importlib.import_module("kcnn.models")  # importing the builders registers every architecture
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"kcnn.{name}")
    raise AttributeError(f"module 'kcnn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))
