"""Export a trained model for serving: a TensorFlow SavedModel, a TFLite file or an ONNX file, checked against Keras.

    python -m recipes.export runs/finetune-20261126-101500 --format saved_model
    python -m recipes.export runs/finetune-20261126-101500 --format tflite --out model.tflite
    python -m recipes.export runs/x --format onnx          # needs: pip install "tf2onnx>=1.17" onnxruntime

RUN is a run folder (its model.keras, loaded in Keras' safe mode) or a .keras file. The default --out is
RUN/export/saved_model, RUN/export/model.tflite or RUN/export/model.onnx. After exporting, the export and the
Keras model classify the same images, random images in [0, 255] at the model's input size plus, when the run's
report.json names a built-in source (digits, glyphs), some of its test images, and the largest absolute
difference between their outputs is printed and recorded in export.json beside the model ({format: {"path",
"max_abs_diff", "images"}}; other formats already recorded there are kept).

The SavedModel is Keras' ExportArchive with one endpoint, ``serve``: the model in inference mode
(``training=False``), on images of the model's own input shape. TFLite
converts a SavedModel of the model at its fixed input size (batch size free) with ``tf.lite.TFLiteConverter``.
ONNX runs tf2onnx's converter on that SavedModel; tf2onnx 1.17 converts TensorFlow 2.21 SavedModels (its
``from_keras`` does not take Keras 3 models, so it is not used) and onnxruntime runs the check.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from recipes import _cli

FORMATS = ("saved_model", "tflite", "onnx")
DEFAULT_NAMES = {"saved_model": "saved_model", "tflite": "model.tflite", "onnx": "model.onnx"}
#: Built-in sources whose test images the check uses when the run's report.json names them.
KNOWN_SOURCES = ("digits", "glyphs")
ONNX_NEEDS = 'pip install "tf2onnx>=1.17" onnxruntime'


@dataclass
class ExportConfig:
    run: str = field(default="", metadata={"help": "run folder (with model.keras) or a .keras file"})
    format: str = field(default="saved_model", metadata={"help": "saved_model | tflite | onnx",
                                                         "choices": list(FORMATS)})
    out: str | None = field(default=None, metadata={"help": "where to write the export (default RUN/export/"
                                                    "saved_model, RUN/export/model.tflite or RUN/export/model.onnx)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an export this run wrote before at --out "
                                                     "(never a file or folder kcnn did not write)"})
    images: int = field(default=8, metadata={"help": "random images in the check"})
    seed: int = field(default=0, metadata={"help": "seed of the random images"})


def _model_file(run: str) -> Path:
    path = Path(run)
    file = path / "model.keras" if path.is_dir() else path
    if not file.is_file():
        raise _cli.UsageError(f"no model at {run}: pass a run folder with model.keras or a .keras file")
    return file


def input_size(model) -> tuple[int, int, int]:
    """(height, width, channels) the model runs at: its input's, else a classifier's ``resize`` layer's, else its
    nested backbone's input."""
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3:
        raise _cli.UsageError(f"the model takes inputs of shape {shape}; export checks image models (H, W, C)")
    height, width, channels = shape
    if height is None or width is None:
        for layer in model.layers:
            if hasattr(layer, "height") and hasattr(layer, "width"):  # keras.layers.Resizing
                height, width = int(layer.height), int(layer.width)
                break
            if hasattr(layer, "layers") and len(getattr(layer, "inputs", []) or []) == 1:
                inner = tuple(layer.inputs[0].shape[1:3])
                if None not in inner:
                    height, width = inner
                    break
    if height is None or width is None:
        raise _cli.UsageError("the model has no fixed input size (no Resizing layer, no sized backbone); export "
                              "a model with one")
    return int(height), int(width), int(channels or 3)


def check_images(run_file: Path, size, count: int, seed: int):
    """(images, what they are): ``count`` random images in [0, 255], plus test images of a known source."""
    import numpy as np

    height, width, channels = size
    rng = np.random.default_rng(seed)
    images = [rng.uniform(0, 255, (count, height, width, channels)).astype("float32")]
    what = [f"{count} random"]
    report = run_file.parent / "report.json"
    source = None
    if report.is_file():
        try:
            source = json.loads(report.read_text()).get("data")
        except (OSError, ValueError, AttributeError):
            source = None
    if source in KNOWN_SOURCES and channels == 3:
        from kcnn import data as kdata

        options = {"num_examples": 200} if source == "glyphs" else {}
        splits = kdata.load(source, image_size=(height, width), batch_size=count, seed=seed, **options)
        x, _ = next(iter(splits.test))
        images.append(np.asarray(x, dtype="float32"))
        what.append(f"{len(images[-1])} {source} test")
    return np.concatenate(images), " + ".join(what)


def write_saved_model(model, path, shape=None) -> None:
    """A SavedModel whose ``serve`` endpoint is ``model(x, training=False)`` on float32 images of ``shape``
    (default: the model's own input shape; the batch size is always free).

    ``training=False`` is explicit because Keras 3.15's ``model.export`` serves ``model.__call__`` without it:
    a model whose first layer is a ``Resizing`` (whose ``call`` defaults to ``training=True``) then runs every
    later layer in training mode, so a trainable BatchNormalization normalizes with the batch's statistics."""
    import keras
    import tensorflow as tf

    shape = tuple(model.inputs[0].shape[1:]) if shape is None else tuple(shape)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda x: model(x, training=False),
                         input_signature=[tf.TensorSpec((None, *shape), tf.float32, name="image")])
    archive.write_out(str(path), verbose=False)


def export_saved_model(model, size, out: Path):
    import tensorflow as tf

    from kcnn import files

    tmp = files.partial_dir(out)
    try:
        write_saved_model(model, tmp)
    except BaseException:
        files.discard_partial_dir(tmp)
        raise
    files.replace_dir(tmp, out)
    served = tf.saved_model.load(str(out))
    return lambda x: served.serve(tf.constant(x)).numpy()


def export_tflite(model, size, out: Path):
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="kcnn-export-") as folder:
        write_saved_model(model, folder, size)
        content = tf.lite.TFLiteConverter.from_saved_model(folder).convert()
    from kcnn import files

    files.atomic_write_bytes(out, content)
    return lambda x: _tflite_predict(content, x)


def _tflite_predict(content: bytes, x):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():  # TF 2.21's tf.lite.Interpreter warns that it moves to ai_edge_litert
        warnings.simplefilter("ignore")
        interpreter = Interpreter(model_content=content)
    entry = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(entry["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(entry["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def onnx_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("tf2onnx", "onnxruntime"))


def export_onnx(model, size, out: Path):
    import onnxruntime

    from kcnn import files

    tmp = files.temp_sibling(out)
    with tempfile.TemporaryDirectory(prefix="kcnn-export-") as folder:
        write_saved_model(model, folder)
        done = subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", folder,
                               "--output", str(tmp)], capture_output=True, text=True)
    if done.returncode != 0 or not tmp.is_file():
        files.discard(tmp)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise _cli.UsageError(f"tf2onnx could not convert the model: {lines[-1] if lines else done.returncode}")
    files.replace(tmp, out)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _records(record_file: Path) -> dict:
    """The run's ``export.json``: what recipes.export wrote for it, by format (a malformed file: nothing)."""
    try:
        records = json.loads(record_file.read_text()) if record_file.is_file() else {}
    except (OSError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def check_out(out: Path, fmt: str, records: dict, overwrite: bool) -> None:
    """Refuse, before anything is loaded or written, an --out that exists and is not this run's own earlier
    export of ``fmt`` (recorded in its export.json), and an own one without --overwrite."""
    if not (out.exists() or out.is_symlink()):
        return
    own = [r.get("path") for r in records.values() if isinstance(r, dict)]
    ours = any(isinstance(p, str) and Path(p).resolve() == out.resolve() for p in own) and \
        (out.is_dir() == (fmt == "saved_model")) and not out.is_symlink()
    if not ours:
        raise _cli.UsageError(f"--out {out} exists and is not an export kcnn wrote for this run; kcnn never "
                              "replaces it: choose another --out")
    if not overwrite:
        raise _cli.UsageError(f"--out {out} holds this run's earlier {fmt} export; pass --overwrite to replace "
                              "it, or choose another --out")


EXPORTERS = {"saved_model": export_saved_model, "tflite": export_tflite, "onnx": export_onnx}


def run(cfg: ExportConfig) -> int:
    if cfg.format not in FORMATS:
        raise _cli.UsageError(f"--format must be one of {', '.join(FORMATS)}; got {cfg.format!r}")
    if cfg.images < 1:
        raise _cli.UsageError(f"--images must be >= 1; got {cfg.images}")
    file = _model_file(cfg.run)
    if cfg.format == "onnx" and not onnx_available():
        raise _cli.UsageError(f"--format onnx needs tf2onnx (>= 1.17; 1.17 converts TensorFlow 2.21 "
                              f"SavedModels) and onnxruntime, which are not installed: {ONNX_NEEDS}")
    out = Path(cfg.out) if cfg.out else file.parent / "export" / DEFAULT_NAMES[cfg.format]
    record_file = file.parent / "export.json"
    records = _records(record_file)
    check_out(out, cfg.format, records, cfg.overwrite)
    import numpy as np

    from kcnn import perf
    from kcnn.runs import atomic_write_text, jsonable

    model = perf.load_model(file)
    size = input_size(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    predict = EXPORTERS[cfg.format](model, size, out)
    images, what = check_images(file, size, cfg.images, cfg.seed)
    expected = np.asarray(model(images, training=False))
    got = np.asarray(predict(images)).reshape(expected.shape)
    diff = float(np.max(np.abs(got - expected)))
    records[cfg.format] = {"path": str(out), "max_abs_diff": diff, "images": int(len(images)),
                           "check_images": what, "input_size": list(size)}
    atomic_write_text(record_file, json.dumps(jsonable(records), indent=1))
    print(f"{cfg.format}: {out}  (max |export - keras| = {diff:.2e} over {what} images; {record_file})",
          flush=True)
    return 0


def main(argv=None) -> int:
    return _cli.run(run, ExportConfig, argv, prog="python -m recipes.export", description=__doc__,
                    positional=("run",))


if __name__ == "__main__":
    sys.exit(main())
