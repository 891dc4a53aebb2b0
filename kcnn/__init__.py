"""kcnn: convolutional-network architectures and transfer learning for Keras 3.

    >>> import kcnn
    >>> kcnn.list_models()[:3]
    ['allcnn_a', 'allcnn_b', 'allcnn_c']
    >>> model = kcnn.build("resnet20", classes=10)

Importing kcnn sets no environment variable, random seed, determinism flag or plotting backend.
"""
__version__ = "0.1.0"

from kcnn import arithmetic, convert, layers, model_summary, registry  # noqa: F401
from kcnn import models  # noqa: F401  (importing the builders registers every built-in architecture)
from kcnn.arithmetic import (  # noqa: F401
    ReceptiveField, conv_output_size, padding_for, receptive_field, same_padding,
)
from kcnn.model_summary import count_macs, summary  # noqa: F401
from kcnn.registry import ModelEntry, ModelSpec, build, get_entry, list_models, register_model  # noqa: F401
from kcnn.weights import WeightsError  # noqa: F401

_LAZY = ("data", "transfer", "training", "tuning", "plots", "distribute", "perf")


def __getattr__(name):  # kcnn.data, kcnn.transfer, ... import on first use (keras-tuner is slow to import)
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"kcnn.{name}")
    raise AttributeError(f"module 'kcnn' has no attribute {name!r}")
