"""kcnn: convolutional-network architectures and transfer learning for Keras 3.

    >>> import kcnn
    >>> kcnn.list_models()[:3]
    ['allcnn_a', 'allcnn_b', 'allcnn_c']
    >>> model = kcnn.build("resnet20", classes=10)
"""
__version__ = "0.1.0"

from kcnn import convert, layers, models  # noqa: E402,F401
from kcnn.registry import build, get_entry, list_models, register_model  # noqa: E402,F401
from kcnn.weights import WeightsError  # noqa: E402,F401

from kcnn.shapes import (  # noqa: E402,F401
    conv_output_size, count_macs, padding_for, receptive_field, same_padding, summary,
)

_LAZY = ("data", "transfer", "training", "tuning", "plots", "distribute", "perf")


def __getattr__(name):  # kcnn.data, kcnn.transfer, ... import on first use (keras-tuner is slow to import)
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"kcnn.{name}")
    raise AttributeError(f"module 'kcnn' has no attribute {name!r}")
