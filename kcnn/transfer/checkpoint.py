"""The kcnn checkpoint format (what recipes.pretrain writes): ``model.keras`` + ``kcnn.json``."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import keras
from keras import layers

from kcnn import files, perf
from kcnn.transfer.names import check_shape, min_size_of, resolve_arch, short_name
from kcnn.transfer.preprocessing import check_mode
from kcnn.weights import WeightsError


CHECKPOINT_FORMAT = "kcnn-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_MODEL = "model.keras"
CHECKPOINT_META = "kcnn.json"
#: Layer names `kcnn.layers.classifier_head` creates; the body of a saved model ends before them.
_HEAD_NAME = re.compile(r"^(flatten|avg_pool|max_pool|predictions|predictions_conv|fc\d+|fc\d+_dropout)$")


def save_checkpoint(path, model: keras.Model, *, arch: str, input_shape, class_names,
                    preprocessing: str) -> Path:
    """Write a pretraining checkpoint: ``<path>/model.keras`` and ``<path>/kcnn.json``.

    ``kcnn.json`` holds ``{"format": "kcnn-checkpoint", "version": 1, "arch", "input_shape", "classes",
    "class_names", "preprocessing", "keras_version"}``. The model is written to a temporary file first and
    renamed, so an interrupted save never leaves a half-written ``model.keras``.

    Args:
        path: Directory to write (created if missing).
        model: The trained model: a `classifier` (its nested "backbone" is the body) or any kcnn/keras model
            with a `kcnn.layers.classifier_head` head (everything before the head is the body).
        arch: Architecture name (keras.applications or kcnn registry).
        input_shape: (height, width, channels) the body was trained at.
        class_names: Names of the output classes, in output order.
        preprocessing: Preprocessing mode the body was trained with (a key of `PREPROCESSING`).

    Returns:
        The checkpoint directory.

    Example:
        >>> save_checkpoint("runs/pre/ckpt", model, arch="resnet20", input_shape=(32, 32, 3),
        ...                 class_names=list("0123456789"), preprocessing="unit")
    """
    source, canonical = resolve_arch(arch)
    shape = check_shape(canonical, input_shape, min_size_of(source, canonical))
    mode = check_mode(preprocessing)
    names = [str(c) for c in class_names]
    units = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
    if units is not None and units != len(names):
        raise ValueError(
            f"`class_names` has {len(names)} names but the model outputs {units} classes. "
            f"Received: class_names={names[:10]}{'...' if len(names) > 10 else ''}"
        )
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    perf.save_portable(model, directory / CHECKPOINT_MODEL)  # atomic, and loadable without kcnn
    meta = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "arch": canonical, "source": source,
        "input_shape": list(shape), "classes": len(names), "class_names": names, "preprocessing": mode,
        "keras_version": keras.__version__,
    }
    # the metadata last, atomically: a checkpoint with it is complete
    files.atomic_write_text(directory / CHECKPOINT_META, json.dumps(meta, indent=2) + "\n")
    return directory


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_checkpoint_meta(directory, *, check_format: bool = True) -> dict:
    """The ``kcnn.json`` of the checkpoint in ``directory``, checked field by field before anything uses it.

    ``check_format=False`` checks the fields without asking for ``"format": "kcnn-checkpoint"`` (a recipe's early
    look at the fields it reads; `load_checkpoint` asks for the format).

    Raises:
        WeightsError: one line naming the file: unreadable JSON, not a JSON object, another format, a version
            that is not a whole number or newer than this kcnn reads, an ``arch`` that is not a name, an
            ``input_shape`` that is not (height, width, channels) of positive integers, ``class_names`` that are
            not a list of strings, ``classes`` that is not a count, ``preprocessing`` that is not a string.
    """
    file = Path(directory) / CHECKPOINT_META
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise WeightsError(f"Unreadable {file}: {short_name(err)}") from None
    if not isinstance(meta, dict):
        kind = {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(meta), "number")
        raise WeightsError(f"{file} is not a kcnn checkpoint (it holds a JSON {kind}, not an object).")
    if check_format and meta.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{file} is not a kcnn checkpoint (format != {CHECKPOINT_FORMAT!r}).")

    def bad(key: str, expected: str):
        return WeightsError(f"{file}: {key} must be {expected}; got {meta[key]!r}. The file is not as kcnn "
                            "writes it: pretrain again (python -m recipes.pretrain) or restore the file.")

    version = meta.get("version", 0)
    if not _is_count(version) or version < 0:
        raise bad("version", "a whole number (the checkpoint format's version)")
    if version > CHECKPOINT_VERSION:
        raise WeightsError(f"{Path(directory)} has checkpoint version {version}; this kcnn reads up to "
                           f"{CHECKPOINT_VERSION}. Upgrade kcnn.")
    if not isinstance(meta.get("arch"), str) or not meta["arch"].strip():
        if "arch" not in meta:
            raise WeightsError(f"{file} names no arch (the architecture); it is not as kcnn writes it: "
                               "pretrain again (python -m recipes.pretrain) or restore the file.")
        raise bad("arch", "the architecture's name")
    shape = meta.get("input_shape")
    if "input_shape" in meta and not (isinstance(shape, list) and len(shape) == 3
                                      and all(_is_count(s) and s > 0 for s in shape)):
        raise bad("input_shape", "[height, width, channels] of positive integers")
    names = meta.get("class_names")
    if "class_names" in meta and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise bad("class_names", "a list of strings")
    if "classes" in meta and not (_is_count(meta["classes"]) and meta["classes"] > 0):
        raise bad("classes", "a positive whole number")
    if "preprocessing" in meta and not isinstance(meta["preprocessing"], str):
        raise bad("preprocessing", "a string")
    return meta


def find_checkpoint_dir(weights) -> Path | None:
    if weights is None or (isinstance(weights, str) and weights == "imagenet"):
        return None
    try:
        path = Path(os.fspath(weights))
    except TypeError:
        return None
    if path.is_dir():
        if (path / CHECKPOINT_META).is_file():
            return path
        raise FileNotFoundError(
            f"{path} is a directory without {CHECKPOINT_META}: not a kcnn checkpoint. Pass a checkpoint "
            f"directory written by kcnn.transfer.save_checkpoint or a weights file. "
            f"Received: weights={os.fspath(weights)!r}"
        )
    if path.name in (CHECKPOINT_META, CHECKPOINT_MODEL) and (path.parent / CHECKPOINT_META).is_file():
        return path.parent
    return None


def load_checkpoint(path) -> tuple[keras.Model, dict]:
    """Load a checkpoint written by `save_checkpoint`.

    Args:
        path: The checkpoint directory, or its ``model.keras`` or ``kcnn.json``.

    Returns:
        ``(model, meta)``: the saved model (not compiled) and the parsed ``kcnn.json``.

    Raises:
        FileNotFoundError: no checkpoint there.
        WeightsError: an unreadable, foreign or malformed ``kcnn.json`` (`read_checkpoint_meta`).
    """
    directory = find_checkpoint_dir(path)
    if directory is None:
        raise FileNotFoundError(f"No kcnn checkpoint at {path} (expected {CHECKPOINT_META} and "
                                f"{CHECKPOINT_MODEL}).")
    meta = read_checkpoint_meta(directory)
    model_path = directory / CHECKPOINT_MODEL
    if not model_path.is_file():
        raise FileNotFoundError(f"Checkpoint {directory} has no {CHECKPOINT_MODEL}.")
    model = perf.load_model(model_path)
    return model, meta


def checkpoint_body(model: keras.Model) -> keras.Model:
    """The body of a saved model: its nested "backbone", or everything before its classifier head."""
    try:
        nested = model.get_layer("backbone")
    except ValueError:
        nested = None
    if isinstance(nested, keras.Model):
        return nested
    body_layers = [layer for layer in model.layers if not isinstance(layer, layers.InputLayer)]
    first_head = len(body_layers)
    while first_head > 0 and _HEAD_NAME.match(body_layers[first_head - 1].name):
        first_head -= 1
    if first_head == len(body_layers):
        return keras.Model(model.input, model.output, name="backbone")
    if first_head == 0:
        raise WeightsError("The checkpoint's model has no layers before its classifier head.")
    return keras.Model(model.input, body_layers[first_head].input, name="backbone")
