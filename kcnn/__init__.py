"""kcnn: convolutional-network architectures and transfer learning for Keras 3.

    >>> import kcnn
    >>> kcnn.list_models()[:3]
    ['allcnn_a', 'allcnn_b', 'allcnn_c']
    >>> model = kcnn.build("resnet20", classes=10)
"""
__version__ = "0.1.0"

import os as _os
import platform as _platform

# TensorFlow turns its oneDNN kernels on by default only on x86 CPUs with AVX-512 VNNI/BF16 or AMX; elsewhere
# (e.g. AVX2 CPUs) convolutions run through Eigen. Measured on a 2-core AVX2 AMD EPYC: a ResNet-20 training step
# at batch 128 takes 0.43 s with oneDNN and 0.69-0.79 s without (kcnn.perf). It must be set before TensorFlow is
# imported; a value the user set wins (TF_ENABLE_ONEDNN_OPTS=0 turns it off).
if _platform.machine().lower() in ("x86_64", "amd64") and "tensorflow" not in __import__("sys").modules:
    _os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

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
