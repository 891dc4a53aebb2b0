"""Resolving ``weights=``: None, "imagenet" (keras.applications' published files), or a path.

ImageNet weights are fetched with keras' own ``get_file`` from the same URLs, with the same hashes and into the
same cache (``$KERAS_HOME/models``, default ``~/.keras/models``) as keras.applications, so a file that
keras.applications already downloaded is reused and nothing is downloaded twice. kcnn writes no downloader.
"""
from __future__ import annotations

import os
from pathlib import Path

import keras

from kcnn._compat import keras_applications_module

_keras_resnet = keras_applications_module("resnet")
_keras_vgg16 = keras_applications_module("vgg16")
_keras_vgg19 = keras_applications_module("vgg19")


class WeightsError(ValueError):
    """Weights that cannot be found, fetched or matched to the architecture."""


def _resnet_files(arch: str):
    top_hash, notop_hash = _keras_resnet.WEIGHTS_HASHES[arch]
    base = _keras_resnet.BASE_WEIGHTS_PATH
    top = f"{arch}_weights_tf_dim_ordering_tf_kernels.h5"
    notop = f"{arch}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return {True: (top, base + top, top_hash), False: (notop, base + notop, notop_hash)}


def _vgg_files(module, arch: str, top_hash: str, notop_hash: str):
    return {
        True: (f"{arch}_weights_tf_dim_ordering_tf_kernels.h5", module.WEIGHTS_PATH, top_hash),
        False: (f"{arch}_weights_tf_dim_ordering_tf_kernels_notop.h5", module.WEIGHTS_PATH_NO_TOP, notop_hash),
    }


# (file name, URL, md5) for include_top True/False: the files keras.applications publishes.
IMAGENET_FILES = {
    "vgg16": _vgg_files(_keras_vgg16, "vgg16", "64373286793e3c8b2b4e3219cbf3544b", "6d6bbae143d832006294945121d1f1fc"),
    "vgg19": _vgg_files(_keras_vgg19, "vgg19", "cbe5617147190e668d6c5d5026f83318", "253f8cb515780f3b799900260a226db6"),
    **{arch: _resnet_files(arch) for arch in ("resnet50", "resnet101", "resnet152")},
}


def keras_cache_dir() -> Path:
    """Where keras (and so kcnn) caches downloaded weight files."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def imagenet_file(arch: str, include_top: bool) -> str:
    """Path of the ImageNet weight file for ``arch``, downloading it into the keras cache if it is missing.

    Raises:
        WeightsError: the architecture has no published weights, or the file is neither cached nor downloadable
            (the message names the file, the cache folder, and ``weights=PATH``).
    """
    if arch not in IMAGENET_FILES:
        raise WeightsError(
            f"No ImageNet weights are published for {arch!r}; available for {sorted(IMAGENET_FILES)}. "
            f"Use weights=None or weights=PATH. Received: weights='imagenet'"
        )
    fname, url, md5 = IMAGENET_FILES[arch][bool(include_top)]
    try:
        return keras.utils.get_file(fname, url, cache_subdir="models", file_hash=md5)
    except Exception as err:  # network errors arrive as several exception types
        raise WeightsError(
            f"ImageNet weights for {arch} are not cached and could not be downloaded ({type(err).__name__}). "
            f"Put {fname} (from {url}) into {keras_cache_dir()}, or pass weights=PATH to a local copy."
        ) from None


def load_into(model: keras.Model, weights, arch: str, include_top: bool = True) -> keras.Model:
    """Load ``weights`` (None | "imagenet" | path) into ``model``; returns the model.

    A path may be a keras.applications-style legacy ``.h5`` (as published or written by ``model.save``), a
    ``.weights.h5`` or a ``.keras`` file. A headless (notop) file loads into a model with a top by layer name:
    the backbone gets the weights, the new top keeps its initialisation.
    """
    if weights is None:
        return model
    if isinstance(weights, str) and weights == "imagenet":
        path = imagenet_file(arch, include_top)
    else:
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Weights file not found: {path}. Pass an existing .h5/.weights.h5/.keras file, 'imagenet' "
                f"or None. Received: weights={weights!r}"
            )
    try:
        model.load_weights(path)
    except Exception as first:
        legacy_h5 = path.endswith((".h5", ".hdf5")) and not path.endswith(".weights.h5")
        if not legacy_h5:
            raise WeightsError(f"Weights file {path} does not fit {arch}: {short_name(first)}") from None
        try:  # e.g. a notop file into a model with a new top: match layers by name
            model.load_weights(path, by_name=True)
        except Exception as err:
            raise WeightsError(f"Weights file {path} does not fit {arch}: {short_name(err)}") from None
        if not _any_layer_in_file(model, path):
            raise WeightsError(f"Weights file {path} shares no layer names with {arch}: {short_name(first)}")
    return model


def _any_layer_in_file(model, path) -> bool:
    import h5py

    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        names = set(group.keys())
    return any(layer.name in names for layer in model.layers if layer.weights)


def short_name(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text if len(text) < 300 else text[:297] + "..."
