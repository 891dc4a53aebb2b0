"""Classify images with a trained model: one line per image, ``PATH<TAB>LABEL<TAB>PROBABILITY``.

    python -m recipes.predict runs/finetune-20261126-101500 photo1.jpg photo2.png
    python -m recipes.predict runs/x/model.keras *.jpg --top 3

MODEL is a run folder (its model.keras and labels.json) or a .keras file (labels.json beside it, else class
numbers). With --top K each line holds K label/probability pairs. The model loads in Keras' safe mode: a file
that would run code is refused. An unreadable image is named on its own line on stderr and the others are
still predicted; the exit code is 0 when every image was predicted, 1 when some could not be read, 2 when none
could (or on bad input: a missing model, a malformed labels.json).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from recipes import _cli


@dataclass
class PredictConfig:
    model: str = field(default="", metadata={"help": "run folder or .keras file"})
    images: list = field(default_factory=list, metadata={"help": "image files"})
    top: int = field(default=1, metadata={"help": "labels per image, most probable first"})


def _labels(file: Path, classes: int):
    """The class names in ``file`` (labels.json): a list of ``classes`` strings, else a UsageError naming it."""
    try:
        labels = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise _cli.UsageError(f"{file}: not readable JSON ({type(err).__name__}); it must be a list of "
                              f"{classes} class names") from None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise _cli.UsageError(f"{file}: must be a JSON list of class names (strings)")
    if len(labels) != classes:
        raise _cli.UsageError(f"{file}: lists {len(labels)} class names but the model has {classes} outputs")
    return labels


def _load(model_arg: str):
    from kcnn import perf

    path = Path(model_arg)
    file = path / "model.keras" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no model at {model_arg}: pass a run folder with model.keras or a .keras file")
    model = perf.load_model(file)  # safe mode: one line for a file that would run code
    classes = int(model.outputs[0].shape[-1])
    labels_file = file.parent / "labels.json"
    labels = _labels(labels_file, classes) if labels_file.is_file() else None
    return model, labels


def run(cfg: PredictConfig) -> int:
    if cfg.top < 1:
        raise _cli.UsageError(f"--top must be >= 1; got {cfg.top}")
    import numpy as np
    from PIL import Image

    model, labels = _load(cfg.model)
    ok = 0
    for image_path in cfg.images:
        try:
            with Image.open(image_path) as img:
                x = np.asarray(img.convert("RGB"), dtype="float32")[None]
        except Exception as err:
            print(f"error: {image_path}: unreadable image ({type(err).__name__})", file=sys.stderr)
            continue
        probs = np.asarray(model(x, training=False)).reshape(-1)
        order = np.argsort(-probs)[: cfg.top]
        fields = [image_path]
        for k in order:
            fields += [labels[k] if labels and k < len(labels) else str(k), f"{probs[k]:.4f}"]
        print("\t".join(fields), flush=True)
        ok += 1
    if not ok:
        raise _cli.UsageError("no image could be read")
    return 0 if ok == len(cfg.images) else 1


def main(argv=None) -> int:
    return _cli.run(run, PredictConfig, argv, prog="python -m recipes.predict", description=__doc__,
                    positional=("model", "images"))


if __name__ == "__main__":
    sys.exit(main())
