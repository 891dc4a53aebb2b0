"""Fast versions of claims whose full tests are marked slow (CI runs only the default suite): the same seed gives
the same numbers, and a search runs with a chief and two workers. Tiny data, one or two epochs.

The full versions stay: tests/test_recipes.py::test_same_seed_same_numbers (with the scratch comparison) and
tests/test_tuning.py::test_chief_and_two_workers (6 trials of 2 epochs, every worker gets trials)."""
import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from recipes import finetune

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--data", "digits", "--image-size", "16", "--backbone", "vgg_cifar", "--weights", "none",
        "--schedule", "two-phase", "--epochs", "2", "--per-class", "3", "--batch-size", "30", "--verbose", "0",
        "--no-compare-scratch", "--seed", "0"]  # 30 training images: one step per epoch


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _weights(run):
    from kcnn import perf

    return [np.asarray(w) for w in perf.load_model(run / "model.keras").weights]


def test_same_seed_same_numbers_fast(tmp_path):
    """Two runs of seed 0 (the recipes' op determinism on): the same history (losses to the last digit), report
    and weights, bit for bit."""
    runs = []
    for name in ("a", "b"):
        assert finetune.main([*TINY, "--out", str(tmp_path / name)]) == 0
        runs.append(dict(report=json.loads((tmp_path / name / "report.json").read_text()),
                         history=_rows(tmp_path / name / "history.csv"), weights=_weights(tmp_path / name)))
    a, b = runs
    assert len(a["history"]) == 2 and a["history"] == b["history"]
    assert float(a["history"][0]["loss"]) != float(a["history"][1]["loss"])  # real numbers, not constants
    for key in ("test_accuracy", "test_loss", "confusion_matrix"):
        assert a["report"][key] == b["report"][key], key
    assert len(a["weights"]) == len(b["weights"]) > 0
    assert all(np.array_equal(x, y) for x, y in zip(a["weights"], b["weights"]))


FAST_SEARCH = ["--data", "digits", "--image-size", "12", "--per-class", "10", "--models", "allcnn_a",
               "--fix", "batch_norm=false,optimizer=sgd", "--epochs", "1", "--verbose", "0",
               "--tuner", "random", "--max-trials", "3"]


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tune(args, **extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT), **extra)
    return subprocess.Popen([sys.executable, "-m", "recipes.tune", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_chief_and_two_workers_fast(tmp_path):
    """recipes.tune with a chief oracle and two workers on 127.0.0.1: 3 one-epoch trials, all completed by the
    workers, one trials.csv and report written by the chief."""
    out = tmp_path / "search"
    args = [*FAST_SEARCH, "--out", str(out)]
    common = dict(KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(_free_port()))
    chief = _tune(args, KERASTUNER_TUNER_ID="chief", **common)
    workers = [_tune(args, KERASTUNER_TUNER_ID=f"tuner{i}", **common) for i in range(2)]
    try:
        logs = [p.communicate(timeout=600)[0] for p in workers]
        chief_log = chief.communicate(timeout=300)[0]
    finally:
        for p in (chief, *workers):
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in workers] == [0, 0], [log[-1500:] for log in logs]
    assert chief.returncode == 0, chief_log[-3000:]
    rows = _rows(out / "trials.csv")
    assert [r["status"] for r in rows] == ["COMPLETED"] * 3
    assert {r["worker"] for r in rows} <= {"tuner0", "tuner1"}
    report = json.loads((out / "report.json").read_text())
    assert report["search"]["completed"] == 3 and 0.0 <= report["test_accuracy"] <= 1.0
