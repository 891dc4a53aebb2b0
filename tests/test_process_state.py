"""A library call leaves the process as it found it: op determinism, Keras' dtype policy, TensorFlow's threads.

kcnn's fits change none of them; the setters that do (`kcnn.training.set_seed`, `kcnn.perf.apply_settings`) put
them back at the end of a ``with`` block, and change them for good only when called plainly (the recipes)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh process: thread pools can only be set before TensorFlow's runtime starts, and op determinism
# is one flag for the process (the suite's own tests turn it on).
FRESH = r"""
import json, sys, tempfile
from pathlib import Path
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import config  # is_op_determinism_enabled: not exported by TensorFlow 2.21
import keras
import kcnn

tf.config.threading.set_intra_op_parallelism_threads(2)  # the caller's choices, not TensorFlow's defaults
tf.config.threading.set_inter_op_parallelism_threads(1)

def state():
    return dict(determinism=config.is_op_determinism_enabled(),
                policy=keras.mixed_precision.global_policy().name,
                intra=tf.config.threading.get_intra_op_parallelism_threads(),
                inter=tf.config.threading.get_inter_op_parallelism_threads())

before = state()
from kcnn import data, perf, runs, training, transfer

rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (24, 12, 12, 3)).astype("float32")
splits = data.load((x, np.arange(24) % 2), image_size=12, batch_size=8, val_fraction=0.25, test_fraction=0.1)
schedule = transfer.Schedule([transfer.Phase(epochs=1, train="all", lr=1e-3, bn="train")])
folder = Path(tempfile.mkdtemp())

# 1. the library fit on its own
bb = transfer.backbone("allcnn_a", None, (12, 12, 3))
model = transfer.classifier(bb, 2)
run = runs.RunDir(folder / "plain", config={}, recipe="train").open()
training.fit_run(run, model, bb, schedule, splits, augmented=False, verbose=0)
after_fit = state()

# 2. the setters, scoped: on inside the block, back after it
settings = perf.auto_settings("cpu", mixed_precision="mixed_bfloat16")
with training.set_seed(0), perf.apply_settings(settings) as kw:
    inside = state()
    bb = transfer.backbone("allcnn_a", None, (12, 12, 3))
    model = transfer.classifier(bb, 2)
    transfer.fit_schedule(model, bb, schedule, splits, verbose=0, augmented=False,
                          steps_per_execution=kw["steps_per_execution"])
after_scoped = state()
print(json.dumps(dict(before=before, after_fit=after_fit, inside=inside, after_scoped=after_scoped,
                      kwargs=dict(kw))))
"""


def test_a_library_fit_and_the_scoped_setters_leave_the_process_as_they_found_it():
    import json

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("KCNN_PRECISION", None)  # nothing of kcnn may lean on the suite's pin
    out = subprocess.run([sys.executable, "-c", FRESH], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    before = seen["before"]
    assert before == {"determinism": False, "policy": "float32", "intra": 2, "inter": 1}
    assert seen["after_fit"] == before
    assert seen["inside"] == {**before, "determinism": True, "policy": "mixed_bfloat16"}
    assert seen["after_scoped"] == before
    assert seen["kwargs"] == {"steps_per_execution": 16, "jit_compile": False}


@pytest.fixture
def determinism():
    """Op determinism off for one test, and the suite's value put back after."""
    from tensorflow.python.framework import config  # TensorFlow 2.21 exports neither reading nor turning it off

    was = config.is_op_determinism_enabled()
    config.disable_op_determinism()
    yield config.is_op_determinism_enabled
    (config.enable_op_determinism if was else config.disable_op_determinism)()


def test_set_seed_called_plainly_keeps_determinism_on_as_the_recipes_need(determinism):
    from kcnn import training

    seeded = training.set_seed(0)
    assert determinism()  # for the rest of the process: a recipe run is deterministic from start to end
    seeded.restore()
    assert not determinism()
    seeded.restore()  # twice: harmless
    assert not determinism()


def test_set_seed_in_a_with_block_puts_back_what_was_there(determinism):
    import tensorflow as tf

    from kcnn import training

    with training.set_seed(0):
        assert determinism()
    assert not determinism()
    tf.config.experimental.enable_op_determinism()
    with training.set_seed(1):
        pass
    assert determinism()  # it was on before the block: it stays on
    with training.set_seed(2, deterministic=False):  # seeds only: the flag is not touched
        assert determinism()
    assert determinism()


def test_apply_settings_returns_compile_kwargs_and_restores_the_policy_in_a_with_block():
    import keras

    from kcnn import perf

    before = keras.mixed_precision.global_policy().name
    settings = perf.auto_settings("cpu", mixed_precision="mixed_bfloat16", steps_per_execution=4)
    with perf.apply_settings(settings) as kwargs:
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        assert kwargs == {"steps_per_execution": 4, "jit_compile": False}
    assert keras.mixed_precision.global_policy().name == before
    plain = perf.apply_settings(settings)  # plainly: for the rest of the process, until restore()
    try:
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    finally:
        plain.restore()
    assert keras.mixed_precision.global_policy().name == before
