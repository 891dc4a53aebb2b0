"""The fair kcnn-vs-PyTorch comparison of ``python -m recipes.bench --reference torch``: a process each.

Each round runs ``python -m recipes.bench --json`` (kcnn) and ``python -m recipes.bench_torch --json`` (the
PyTorch twin) one after the other, each in a fresh process that times ``--epochs`` epochs after a warm-up; the
order alternates between rounds (kcnn first in rounds 1, 3, ...; PyTorch first in rounds 2, 4, ...) so a drift
in machine load does not favour one side. The epochs of all rounds are pooled per library:

* median and best epoch img/s, and the spread (max - min) / median of the epochs, pooled and within one process
  (the median over the rounds: how steady one run is, apart from the differences between processes);
* GFLOP/s of the median (``factor x 2 x MACs x img/s``, factor 3 for all-layers training, 1 for the
  frozen-backbone phase) and its fraction of the matmul peak that library measured in its first round;
* the headline: median / median, and best / best, computed from the rounded figures printed above them.

This parent process does not import TensorFlow (it imports PyTorch only to check that the twin exists). A
worker that fails is reported as "not measured" with the end of its error output, and the other library's
figures are still printed.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable

LIBRARIES = ("kcnn", "torch")
ROOT = Path(__file__).resolve().parents[1]


def worker_commands(cfg, arch: str, batch_size: int, image_size: int, twin: str) -> dict:
    """The two worker command lines (without the per-round ``--peak-size``), keyed by library."""
    common = ["--batch-size", str(batch_size), "--image-size", str(image_size), "--classes", str(cfg.classes),
              "--steps", str(cfg.steps), "--epochs", str(cfg.epochs), "--train", cfg.train,
              "--seed", str(cfg.seed), "--json"]
    kcnn = [sys.executable, "-m", "recipes.bench", "--model", arch, *common,
            "--steps-per-execution", str(cfg.steps_per_execution), "--jit-compile", cfg.jit_compile,
            "--precision", cfg.precision, "--batch-norm", cfg.batch_norm, "--data", cfg.data,
            "--prefetch" if cfg.prefetch else "--no-prefetch", "--intra-op", str(cfg.intra_op),
            "--inter-op", str(cfg.inter_op), "--remapper", cfg.remapper]
    precision = cfg.precision
    if precision == "auto" and cfg.torch_device != "cuda" and not _cuda():
        # kcnn's automatic CPU precision (bfloat16 with AMX, read from the CPU's flags without TensorFlow): the
        # twin runs the same, so the ratio compares like with like
        from kcnn import perf

        precision = perf.auto_precision("cpu")
    from recipes.bench import amp_policy

    amp = amp_policy(precision)
    torch = [sys.executable, "-m", "recipes.bench_torch", "--model", twin, *common,
             "--device", cfg.torch_device, "--amp", amp]
    return {"kcnn": kcnn, "torch": torch}


def _cuda() -> bool:
    """Whether PyTorch sees a GPU (the parent imports PyTorch, never TensorFlow)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def subprocess_launcher(commands: dict, timeout: int) -> Callable:
    """``launch(library, peak_size)``: run a library's worker, echo its summary, return its JSON or error."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])

    def launch(library: str, peak_size: int) -> dict:
        command = [*commands[library], "--peak-size", str(peak_size)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                                  cwd=str(ROOT))
        except subprocess.TimeoutExpired:
            return {"error": f"the {library} worker ran past --worker-timeout {timeout} s"}
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines or not lines[-1].startswith("{"):
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            return {"error": f"the {library} worker exited {done.returncode}: {tail}"}
        for line in lines[:-1]:
            if line.startswith(("training", "inference", "torch ", "kcnn bench", "matmul peak")):
                print(f"    {library}: {line}", flush=True)
        return json.loads(lines[-1])

    return launch


def _summary(runs: list, factor: int) -> dict:
    """Pool the per-epoch rates of a library's rounds: median, best, spread, GFLOP/s, peak fraction."""
    rates = [r for run in runs for r in run["images_per_sec_epochs"]]
    infer = [r for run in runs for r in run.get("inference_images_per_sec_repeats", [])]
    median = round(statistics.median(rates), 1)
    first = runs[0]
    macs, peak = first.get("macs_per_image"), first.get("peak_gflops")
    within = [(max(run["images_per_sec_epochs"]) - min(run["images_per_sec_epochs"]))
              / statistics.median(run["images_per_sec_epochs"]) for run in runs if run["images_per_sec_epochs"]]
    out = dict(median=median, best=round(max(rates), 1), spread=round((max(rates) - min(rates)) / median, 3),
               spread_within=round(statistics.median(within), 3) if within else None,
               epochs=len(rates), rates=rates,
               inference_median=round(statistics.median(infer), 1) if infer else None,
               macs_per_image=macs, peak_gflops=peak, peak_dtype=first.get("peak_dtype"),
               params=first.get("params"), version=first.get("version") or first.get("tensorflow"),
               device=first.get("device"), gpu=first.get("gpu"))
    if macs:
        out["train_gflops"] = round(factor * 2 * macs * median / 1e9, 1)
        if peak:
            out["peak_fraction"] = round(out["train_gflops"] / peak, 3)
    return out


def orchestrate(rounds: int, factor: int, launch: Callable, peak_size: int) -> dict:
    """Run the rounds through ``launch`` and print the per-library figures and the ratios; returns them."""
    runs = {library: [] for library in LIBRARIES}
    errors = {}
    for index in range(rounds):
        order = LIBRARIES if index % 2 == 0 else LIBRARIES[::-1]
        print(f"  round {index + 1}/{rounds}: {' then '.join(order)}", flush=True)
        for library in order:
            if library in errors:
                continue
            got = launch(library, peak_size if not runs[library] else 0)
            if "error" in got:
                errors[library] = got["error"]
                print(f"    {library}: not measured: {got['error']}", flush=True)
            else:
                runs[library].append(got)
    result = {"mode": "fair", "rounds": rounds, "errors": errors}
    for library in LIBRARIES:
        if not runs[library]:
            print(f"training   {library:<5} not measured: {errors[library]}", flush=True)
            continue
        s = result[library] = _summary(runs[library], factor)
        text = (f"training   {library:<5} {s['median']:10,.1f} img/s median of {s['epochs']} epochs; "
                f"best {s['best']:,.1f}; spread {100 * s['spread']:.1f}%")
        if s["spread_within"] is not None:
            text += f" (within one process: {100 * s['spread_within']:.1f}%, median of the rounds)"
        if "train_gflops" in s:
            text += f"; {s['train_gflops']:,.1f} GFLOP/s"
        if "peak_fraction" in s:
            text += (f", {s['peak_fraction']:.3f} of its {s['peak_dtype']} matmul peak "
                     f"({s['peak_gflops']:,.0f})")
        print(text, flush=True)
        if s["inference_median"]:
            print(f"inference  {library:<5} {s['inference_median']:10,.1f} img/s median", flush=True)
    if all(library in result for library in LIBRARIES):
        k, t = result["kcnn"], result["torch"]
        result["ratio"] = round(k["median"] / t["median"], 3)
        result["ratio_best"] = round(k["best"] / t["best"], 3)
        if k["params"] and t["params"] and k["params"] != t["params"]:
            print(f"warning: the PyTorch twin has {t['params']:,} parameters, kcnn {k['params']:,}",
                  flush=True)
        line = (f"kcnn / torch: training {result['ratio']:.3f}x (median / median); best / best "
                f"{result['ratio_best']:.3f}x")
        if k["inference_median"] and t["inference_median"]:
            result["inference_ratio"] = round(k["inference_median"] / t["inference_median"], 3)
            line += f"; inference {result['inference_ratio']:.3f}x"
        print(line, flush=True)
    return result


def compare(cfg, arch: str, batch_size: int, image_size: int, launch: Callable | None = None) -> int:
    """The fair mode of the bench: 0 when both libraries were measured, 1 when one was not."""
    from recipes import bench

    bench_torch = bench._bench_torch()
    twin = bench._twin(bench_torch, arch)
    if launch is None:
        launch = subprocess_launcher(worker_commands(cfg, arch, batch_size, image_size, twin),
                                     cfg.worker_timeout)
    print(f"kcnn vs torch, fair mode: {arch} / twin {twin} (train {cfg.train}), batch {batch_size}, "
          f"{image_size} px, {cfg.steps} steps x {cfg.epochs} timed epochs per process, {cfg.rounds} rounds, "
          f"each library in its own process, order alternated", flush=True)
    result = orchestrate(cfg.rounds, 3 if cfg.train == "all" else 1, launch, cfg.peak_size)
    result.update(model=arch, twin=twin, train=cfg.train, batch_size=batch_size, image_size=image_size,
                  steps=cfg.steps, epochs=cfg.epochs)
    if cfg.json:
        print(json.dumps(result), flush=True)
    return 0 if not result["errors"] else 1
