"""Classify images with a trained model: one line per image, ``PATH<TAB>LABEL<TAB>PROBABILITY``.

    python -m recipes.predict runs/finetune-20261126-101500 photo1.jpg photo2.png
    python -m recipes.predict runs/x/model.keras *.jpg --top 3

MODEL is a run folder (its model.keras and labels.json) or a .keras file (labels.json beside it, else class
numbers). With --top K each line holds K label/probability pairs. Unreadable images are named on stderr and
skipped; the exit code is 2 when none could be read.
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


def _load(model_arg: str):
    import keras

    import kcnn  # noqa: F401  (registers kcnn's layers for loading)

    path = Path(model_arg)
    file = path / "model.keras" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no model at {model_arg}: pass a run folder with model.keras or a .keras file")
    try:
        model = keras.saving.load_model(file, compile=False)
    except Exception as err:  # corrupt or foreign file
        raise ValueError(f"cannot load {file}: {' '.join(str(err).split())[:200]}") from None
    labels_file = file.parent / "labels.json"
    labels = json.loads(labels_file.read_text()) if labels_file.is_file() else None
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
            print(f"warning: skipped {image_path}: {type(err).__name__}: {err}", file=sys.stderr)
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
    return 0


def main(argv=None) -> int:
    return _cli.run(run, PredictConfig, argv, prog="python -m recipes.predict", description=__doc__,
                    positional=("model", "images"))


if __name__ == "__main__":
    sys.exit(main())
