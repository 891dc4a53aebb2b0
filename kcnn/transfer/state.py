"""A training state as arrays: what a per-epoch checkpoint holds so that a resumed run ends bit for bit where an
uninterrupted one ends.

* every variable of the model (``model.variables``): weights, batch-norm moving statistics and the state of
  every dropout layer's seed generator;
* every variable of the phase's optimizer: its iteration count (which is also the learning-rate schedule's
  position) and its slots (Adam's moments, SGD's momentum);
* the phase number and the global epoch, which with the run's seed fix the data order and augmentation of
  the next epoch (kcnn's training pipelines are keyed by (seed, epoch)).

Keras' ``BackupAndRestore`` and timm's ``--resume`` restore weights and optimizer; the data position is what
they leave out.
"""
from __future__ import annotations

import numpy as np


def training_state(model, optimizer, *, phase: int, epoch: int) -> dict[str, np.ndarray]:
    """The arrays of a checkpoint (see the module docstring); keys ``model_NNNNN``, ``optimizer_NNNNN``,
    ``model_paths``, ``phase``, ``epoch``."""
    arrays = {f"model_{i:05d}": np.asarray(v) for i, v in enumerate(model.variables)}
    arrays["model_paths"] = np.array([v.path for v in model.variables])
    if optimizer is not None:
        arrays.update({f"optimizer_{i:05d}": np.asarray(v) for i, v in enumerate(optimizer.variables)})
    arrays["phase"] = np.array(int(phase))
    arrays["epoch"] = np.array(int(epoch))
    return arrays


def _count(arrays, prefix) -> int:
    return sum(1 for key in arrays if key.startswith(prefix) and key[len(prefix):].isdigit())


def restore_model_state(model, arrays: dict) -> None:
    """Assign a checkpoint's model arrays to ``model`` (same architecture, variables in the same order).

    Raises:
        ValueError: the checkpoint was written by another model (count, names or shapes differ).
    """
    variables = model.variables
    count = _count(arrays, "model_")
    if count != len(variables):  # names may differ (Keras numbers unnamed layers per process): order and shapes
        raise ValueError(f"The checkpoint holds {count} model variables but the model has {len(variables)}: "
                         "it was written by another model or other settings.")
    for i, variable in enumerate(variables):
        value = arrays[f"model_{i:05d}"]
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"Checkpoint variable {variable.path} has shape {value.shape}, the model's "
                             f"{tuple(variable.shape)}: it was written by another model or other settings.")
        variable.assign(value)


def restore_optimizer_state(optimizer, arrays: dict) -> bool:
    """Assign a checkpoint's optimizer arrays to a *built* optimizer; returns False if it holds none."""
    count = _count(arrays, "optimizer_")
    if count == 0:
        return False
    variables = optimizer.variables
    if count != len(variables):
        raise ValueError(f"The checkpoint holds {count} optimizer variables but the phase's optimizer has "
                         f"{len(variables)}: it was written with other settings.")
    for i, variable in enumerate(variables):
        variable.assign(arrays[f"optimizer_{i:05d}"])
    return True


def checkpoint_phase(arrays: dict | None) -> int | None:
    """The phase number a checkpoint was written in, or None."""
    if not arrays or "phase" not in arrays:
        return None
    return int(arrays["phase"])
