"""Measure the streaming folder source: peak memory and images/s, side by side with Keras' loader.

Not a test (pytest does not collect it). Run it by hand::

    python tests/bench_folders.py [--small 2000] [--large 20000] [--repeats 3] [--dir /tmp]

It writes two folders of 256x256 JPEGs (10 classes, small quality, into ``--dir``), then for each
measurement starts a fresh Python process (so that peak RSS is that run's alone) that loads the folder at
224x224 and iterates training epochs:

* peak RSS (``ru_maxrss``) after one training epoch of the small and of the large folder, kcnn streaming
  (``cache=False``) and ``keras.utils.image_dataset_from_directory``; the growth from small to large is what
  the folder's size costs;
* images/s of the small folder's first epoch (decoding) and of the cached epochs (kcnn ``cache="memory"``
  and a file cache, Keras with ``.cache()``), the loaders run alternately, the median of ``--repeats``;
  ``images_per_s`` counts the making of each epoch's dataset (``Splits.epochs``; Keras makes its one at load),
  ``iterating_images_per_s`` only the iteration.

The folders are deleted at the end. Timings on a shared machine are noisy; compare medians.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

SIZE = 224
BATCH = 32
CLASSES = 10


def _size(folder) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)


def make_folder(root: str, n: int) -> None:
    """``n`` 256x256 JPEGs of smooth random colour fields with some noise, in ``CLASSES`` class folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(n)
    for c in range(CLASSES):
        os.makedirs(os.path.join(root, f"class{c}"), exist_ok=True)
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((256, 256),
                                                                                     Image.BICUBIC)
        noisy = np.asarray(small, np.int16) + rng.integers(-12, 13, (256, 256, 3), dtype=np.int16)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
            os.path.join(root, f"class{i % CLASSES}", f"{i:06d}.jpg"), quality=60)


def child(loader: str, folder: str, epochs: int, cache_dir: str) -> dict:
    """One measurement in this process: load, iterate ``epochs`` epochs, report rates and peak RSS."""
    import resource

    import tensorflow as tf

    start = time.perf_counter()
    if loader.startswith("kcnn"):
        from kcnn import data as kdata

        cache = {"kcnn-stream": False, "kcnn-memory": "memory",
                 "kcnn-file": os.path.join(cache_dir, "c")}[loader]
        import kcnn.data.folders as kfolders

        kfolders.FOLDER_MEMORY_BYTES = 0            # measure the streaming path at every size
        splits = kdata.load(folder, image_size=SIZE, batch_size=BATCH, val_fraction=0, test_fraction=0,
                            cache=cache, seed=0)

        def epoch(e):  # what a training run iterates each epoch (kcnn.transfer.EpochData builds it once)
            return splits.dataset("train", training=True, epoch=e)
    else:
        import keras

        ds = keras.utils.image_dataset_from_directory(folder, image_size=(SIZE, SIZE), batch_size=BATCH,
                                                      shuffle=True, seed=0, verbose=False)
        if loader == "keras-cache":
            ds = ds.cache()
        ds = ds.prefetch(tf.data.AUTOTUNE)

        def epoch(e):
            return ds
    load_s = time.perf_counter() - start
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rates, iterating = [], []
    for e in range(epochs):
        images, t0 = 0, time.perf_counter()
        ds = epoch(e)
        t1 = time.perf_counter()
        for x, _ in ds:
            images += int(x.shape[0])
        rates.append(images / (time.perf_counter() - t0))
        iterating.append(images / (time.perf_counter() - t1))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"loader": loader, "load_s": round(load_s, 2), "rss_after_load_mb": round(rss_before),
            "peak_rss_mb": round(peak), "images_per_s": [round(r) for r in rates],
            "iterating_images_per_s": [round(r) for r in iterating]}


def run_child(loader: str, folder: str, epochs: int, cache_dir: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", loader, folder, str(epochs), cache_dir],
                         capture_output=True, text=True, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--child", nargs=4)
    args = parser.parse_args()
    if args.child:
        loader, folder, epochs, cache_dir = args.child
        print(json.dumps(child(loader, folder, int(epochs), cache_dir)))
        return
    base = tempfile.mkdtemp(prefix="kcnn_bench_folders_", dir=args.dir)
    try:
        folders = {}
        for n in (args.small, args.large):
            folders[n] = os.path.join(base, f"jpegs{n}")
            t0 = time.perf_counter()
            make_folder(folders[n], n)
            print(f"generated {n} JPEGs in {time.perf_counter() - t0:.0f}s "
                  f"({_size(folders[n]) / 2**20:.0f} MiB)",
                  flush=True)
        results: dict[str, list[dict]] = {}

        def measure(key, loader, n, epochs):
            cache_dir = tempfile.mkdtemp(dir=base)
            r = run_child(loader, folders[n], epochs, cache_dir)
            shutil.rmtree(cache_dir, ignore_errors=True)
            results.setdefault(key, []).append(r)
            print(key, r, flush=True)

        for _ in range(args.repeats):
            for n in (args.small, args.large):
                measure(f"rss kcnn-stream {n}", "kcnn-stream", n, 1)
                measure(f"rss keras {n}", "keras", n, 1)
            measure("speed kcnn-memory", "kcnn-memory", args.small, 3)
            measure("speed kcnn-file", "kcnn-file", args.small, 3)
            measure("speed keras-cache", "keras-cache", args.small, 3)
        print("\nmedians of", args.repeats)
        for key, rs in results.items():
            peak = statistics.median(r["peak_rss_mb"] for r in rs)
            first = statistics.median(r["images_per_s"][0] for r in rs)
            later = [statistics.median(r["images_per_s"][e] for r in rs) for e in range(1, len(rs[0]["images_per_s"]))]
            load = statistics.median(r["load_s"] for r in rs)
            print(f"{key:28s} load {load:6.2f}s  peak RSS {peak:6.0f} MB  epoch 1 {first:6.0f} img/s"
                  + (f"  later epochs {', '.join(f'{v:.0f}' for v in later)} img/s" if later else ""))
        for loader in ("kcnn-stream", "keras"):
            small = statistics.median(r["peak_rss_mb"] for r in results[f"rss {loader} {args.small}"])
            large = statistics.median(r["peak_rss_mb"] for r in results[f"rss {loader} {args.large}"])
            print(f"{loader}: peak RSS growth {args.small} -> {args.large} images: {large - small:+.0f} MB")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
