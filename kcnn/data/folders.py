"""The image-folder source: a folder of class sub-folders, or of ``train/`` ``val/`` ``test/`` split folders.

``load`` lists the files, checks each one cheaply (below), and makes the seeded stratified split on the file
list. Images are decoded in the ``tf.data`` graph, in parallel, where the file allows: a JPEG in RGB or
grayscale without an EXIF rotation by ``tf.io.decode_jpeg`` (accurate integer DCT), at the largest DCT scale
1/2, 1/4 or 1/8 that keeps it at least the target size (Pillow's draft rule), and an 8-bit RGB, RGBA, L or LA
PNG by ``tf.io.decode_png`` (alpha dropped). Every other file goes through Pillow (``tf.numpy_function``),
converted to RGB: palette, CMYK and 16-bit images included; an animated GIF gives its first frame; an
EXIF-rotated JPEG comes out upright as a photo viewer shows it. Then one resize in the graph, to uint8:
bilinear, antialiased when it reduces by more than 1.25x on an axis (as Pillow's BILINEAR), plain bilinear
below that (as close to a Lanczos reference there, and cheaper). Where a split is decoded depends on its
size and on ``cache``:

* ``cache=True`` (the default) or ``"memory"``, and the split's decoded images (``n * height * width * 3``
  bytes) at most :data:`FOLDER_MEMORY_BYTES`: decoded once, by the same pipeline in file order, into memory
  when the split is first used.
* Otherwise the split streams: ``tf.data`` decodes the files it needs, in parallel, in the pipeline, so memory
  stays bounded by the prefetch whatever the folder's size. ``"memory"`` keeps each decoded image in memory
  once decoded (the cache fills during the first epoch; once full, an epoch only reads it); a path keeps
  them in a file (see :class:`_FileStore`); ``False``, or ``True`` above the threshold, decodes every epoch.

Both ways give the same batches for the same seed: one decoder, and the order is a permutation of indices.

Checks while listing: a file that is empty, that Pillow cannot identify from its header, whose header declares
more pixels than Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, 89.5 million by default;
applied to the PNGs and JPEGs TensorFlow decodes as to Pillow's), or that is cut short (a JPEG without its
end-of-image marker, a PNG without its IEND chunk, in its last KiB) is skipped, listed in ``Splits.skipped``
as ``(path, reason)`` and named in one warning; this reads each file's header and tail, not the whole file.
Other formats (GIF, BMP), rarer and cheap to decode, are decoded in full while listing. A file that passes
these checks and still fails to decode later (corrupt inside, or gone) keeps its place so that every epoch has
exactly ``steps_per_epoch`` batches: TensorFlow's decoders raise on it, the batch's failed
examples are dropped (``ignore_errors``) and decoded again by Pillow (resized by Pillow's BILINEAR), and
where Pillow fails too the example is a black image, added to ``Splits.skipped`` with the reason and named
in a warning. Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left as it is (off by default): turned on, it
makes truncated files decode with grey tails instead of failing.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import threading
import warnings
import weakref
from pathlib import Path

import numpy as np
import tensorflow as tf

from kcnn.data.arrays import as_float
from kcnn.data.errors import IMAGE_EXTENSIONS, SPLITS, DataError, DataNotFoundError
from kcnn.data.pipeline import index_dataset, MemoryPart, Part
from kcnn.data.probe import JPEG_RATIOS, check_file, image_files
from kcnn.data.splits import carve_split, carve_sizes, stratified_indices

#: A split whose decoded images (uint8, ``n * height * width * 3`` bytes) take at most this many bytes is
#: decoded into memory when first used, if ``cache`` is ``True`` or ``"memory"``; larger ones stream.
#: 256 MiB is about 1,700 images at 224×224 or 87,000 at 32×32.
FOLDER_MEMORY_BYTES = 256 * 2**20

_SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
_CACHE_VERSION = b"kcnn-folder-cache-2"
_ROTATED = (5, 6, 7, 8)   # EXIF orientations that swap width and height
_ANTIALIAS_ABOVE = 1.25   # reductions by more than this factor are antialiased


# ---------------------------------------------------------------------------------------------------------
# Decoding (listing and the cheap look at each file: kcnn.data.probe)
# ---------------------------------------------------------------------------------------------------------

def _pillow_rgb(path, size) -> np.ndarray:
    """uint8 ``(h, w, 3)`` of an image file decoded by Pillow, upright, not resized (a large JPEG is decoded
    at the DCT scale that keeps it at least ``size``)."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        if image.format == "JPEG":
            orientation = image.getexif().get(0x0112, 1)
            image.draft(None, (size[0], size[1]) if orientation in _ROTATED else (size[1], size[0]))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):                 # 16-bit grayscale
            a = np.asarray(image, np.float64) / 257.0
            image = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        elif image.mode in ("I", "F"):                                          # 32-bit
            a = np.asarray(image, np.float64)
            a = a / 257.0 if a.max() > 255 else a
            image = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        elif image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        image = image.convert("RGB")    # L, LA, P, PA, RGBA, CMYK, YCbCr -> RGB; alpha dropped
        return np.asarray(image, np.uint8)


def _resize(image: tf.Tensor, size) -> tf.Tensor:
    """uint8 ``size + (3,)`` of a uint8 ``(h, w, 3)`` image: unchanged at that size, else bilinear, rounded.

    A reduction by more than :data:`_ANTIALIAS_ABOVE` on either axis is antialiased (a triangle filter as wide
    as the reduction, Pillow's BILINEAR); a smaller one or an enlargement samples plain bilinear, which is as
    close to a Lanczos reference there and cheaper.
    """
    shape = tf.shape(image)[:2]
    factor = tf.reduce_max(tf.cast(shape, tf.float32) / tf.constant(size, tf.float32))
    which = tf.where(tf.reduce_all(tf.equal(shape, size)), 0, tf.where(factor > _ANTIALIAS_ABOVE, 2, 1))

    def bilinear(antialias):
        return lambda: tf.saturate_cast(tf.round(tf.image.resize(image, size, antialias=antialias)), tf.uint8)

    out = tf.switch_case(which, [lambda: image, bilinear(False), bilinear(True)])
    out.set_shape(tuple(size) + (3,))
    return out


#: Graph functions are traced as written: AutoGraph's conversion (they have no Python control flow to
#: convert) took most of a first epoch's start-up.
_plain = tf.autograph.experimental.do_not_convert


def _map_threads(fn, items) -> list:
    workers = min(16, 2 * (os.cpu_count() or 1), max(1, len(items)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


# ---------------------------------------------------------------------------------------------------------
# Caches of decoded images, random access by index
# ---------------------------------------------------------------------------------------------------------

class _MemoryStore:
    """Decoded images kept in memory as they are first decoded (pages are allocated as they fill).

    It keeps a corrupt file's black image too: that file was named once already in this process."""

    keeps_failed = True

    def __init__(self, n: int, size):
        self._shape, self._images = (n,) + tuple(size) + (3,), None
        self._filled, self._lock = np.zeros(n, bool), threading.Lock()

    def get(self, i: int):
        return self._images[i] if self._filled[i] else None

    def complete(self) -> bool:
        return bool(self._filled.all())

    def get_many(self, index: np.ndarray):
        """All of ``index``'s images as one array if all are cached, else ``None``."""
        return self._images[index] if self._filled[index].all() else None

    def put(self, i: int, image: np.ndarray) -> None:
        with self._lock:
            if self._images is None:
                self._images = np.zeros(self._shape, np.uint8)
        self._images[i] = image
        self._filled[i] = True


class _FileStore:
    """Decoded images in one file, ``path``: record ``i`` is the image's bytes then a done byte.

    The file is created sparse at its full size; a record whose done byte is 0 was never written (or was
    interrupted) and is decoded again. Reads and writes are ``pread``/``pwrite`` (no memory map), so the
    cache takes disk space, not memory. Several processes may share it: they write the same bytes.
    """

    def __init__(self, path: str, n: int, size):
        self.path, self._image_bytes, self._n = path, int(np.prod(size)) * 3, n
        self._record, self._shape = self._image_bytes + 1, tuple(size) + (3,)
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            weakref.finalize(self, os.close, self._fd)
            if os.fstat(self._fd).st_size < n * self._record:
                os.ftruncate(self._fd, n * self._record)
        except OSError as err:
            raise DataError(f"Cannot write the image cache file {path!r} ({err.strerror}); pass a writable "
                            f"path prefix as `cache`, or cache='memory' or False.") from None

    keeps_failed = False    # a later process names the file again

    def complete(self) -> bool:
        return all(os.pread(self._fd, 1, i * self._record + self._image_bytes) == b"\x01"
                   for i in range(len(self)))

    def __len__(self) -> int:
        return self._n

    def get_many(self, index: np.ndarray):
        """All of ``index``'s images as one array if all are cached, else ``None``."""
        out = np.empty((len(index),) + self._shape, np.uint8)
        for k, i in enumerate(index):
            image = self.get(int(i))
            if image is None:
                return None
            out[k] = image
        return out

    def get(self, i: int):
        data = os.pread(self._fd, self._record, i * self._record)
        if len(data) < self._record or data[-1] != 1:
            return None
        return np.frombuffer(data, np.uint8, self._image_bytes).reshape(self._shape)

    def put(self, i: int, image: np.ndarray) -> None:
        offset = i * self._record
        os.pwrite(self._fd, np.ascontiguousarray(image, np.uint8).tobytes(), offset)
        os.pwrite(self._fd, b"\x01", offset + self._image_bytes)


# ---------------------------------------------------------------------------------------------------------
# One split's files
# ---------------------------------------------------------------------------------------------------------

class _FilePart(Part):
    """One split's image files with labels: decoded into memory once (small splits) or in the pipeline."""

    def __init__(self, paths, y, sizes, mtimes, decoders, image_size, cache, skipped: list, split: str,
                 source: str):
        self.paths, self.y = np.asarray(paths, object), np.asarray(y, np.int32)
        self.sizes, self.mtimes = np.asarray(sizes, np.int64), np.asarray(mtimes, np.int64)
        self.decoders = np.asarray(decoders, np.int32)
        self.image_size, self.cache, self.split, self.source = tuple(image_size), cache, split, source
        self.skipped, self.num_examples = skipped, len(self.y)
        self._memory: MemoryPart | None = None
        self._store = None
        self._prepared = False
        self._graph = None
        self._lock = threading.Lock()
        self._failed: set[str] = set()

    def take(self, keep, split: str | None = None) -> "_FilePart":
        return _FilePart(self.paths[keep], self.y[keep], self.sizes[keep], self.mtimes[keep], self.decoders[keep],
                         self.image_size, self.cache, self.skipped, split or self.split, self.source)

    @property
    def in_memory(self) -> bool:
        """Whether this split is decoded into memory at once rather than streamed."""
        decoded = self.num_examples * self.image_size[0] * self.image_size[1] * 3
        return self.cache in (True, "memory") and decoded <= FOLDER_MEMORY_BYTES

    def cache_key(self) -> str:
        """A hash of everything that changes the decoded images: the files (path, size, modification time)
        and their labels, in order, the image size and the decoder's version."""
        digest = hashlib.sha256(_CACHE_VERSION)
        digest.update(repr(self.image_size).encode())
        for path, size, mtime, label in zip(self.paths, self.sizes, self.mtimes, self.y):
            digest.update(f"\0{os.path.abspath(path)}\0{size}\0{mtime}\0{label}".encode())
        return digest.hexdigest()[:16]

    def _pillow(self, i) -> np.ndarray:
        """Example ``i`` decoded by Pillow, upright, not resized; a black image at the output size (named in
        ``skipped`` and a warning, once) if Pillow cannot decode it either."""
        path = self.paths[int(i)]
        try:
            return _pillow_rgb(path, self.image_size)
        except Exception as err:  # noqa: BLE001 - a corrupt file becomes a black image, named once
            with self._lock:
                new = path not in self._failed
                self._failed.add(path)
            if new:
                reason = f"{type(err).__name__}: {err}; used as a black image to keep the epoch's batches"
                self.skipped.append((str(path), reason))
                warnings.warn(f"kcnn.data: could not decode {path} ({reason}).", stacklevel=2)
            return np.zeros(self.image_size + (3,), np.uint8)

    def _pillow_tensor(self, i: tf.Tensor) -> tf.Tensor:
        image = tf.numpy_function(self._pillow, [i], tf.uint8, stateful=True)
        image.set_shape((None, None, 3))
        return image

    def _tensors(self):
        """The graph's constants and functions, made once, eagerly: each ``batches`` call then reuses them
        instead of tracing again (which took most of a new epoch's start-up)."""
        if self._graph is None:
            shape = self.image_size + (3,)
            paths, decoders = tf.constant(self.paths.astype(str)), tf.constant(self.decoders)
            self._graph = {"paths": paths, "decoders": decoders, "labels": tf.constant(self.y)}
            self._graph["decode_one"] = tf.function(self._decode_one, autograph=False,
                                                    input_signature=[tf.TensorSpec((), tf.int64)])
            self._graph["complete"] = tf.function(self._complete, autograph=False, input_signature=[
                tf.TensorSpec((None,), tf.int64), tf.TensorSpec((None,), tf.int32),
                tf.TensorSpec((None,) + shape, tf.uint8)])
        return self._graph

    def _decode_one(self, i: tf.Tensor) -> tf.Tensor:
        """uint8 ``image_size + (3,)`` of example ``i``: decoded in the graph where the file allows, by Pillow
        otherwise, then resized. Raises (in the pipeline) if the graph's decoder fails: see ``_decode_batch``."""
        paths, decoders = self._graph["paths"], self._graph["decoders"]

        def jpeg(ratio):
            return lambda: tf.io.decode_jpeg(tf.io.read_file(paths[i]), 3, ratio=ratio,
                                             dct_method="INTEGER_ACCURATE")

        branches = [lambda: self._pillow_tensor(i), lambda: tf.io.decode_png(tf.io.read_file(paths[i]), 3)]
        branches += [jpeg(r) for r in JPEG_RATIOS]
        image = tf.switch_case(decoders[i], branches)
        image.set_shape((None, None, 3))
        return _resize(image, self.image_size)

    def _decode_batch(self, index: tf.Tensor) -> tf.data.Dataset:
        """One element, ``(positions, images)``: the uint8 images of ``index`` (one batch of example indices)
        that TensorFlow's decoders decoded, in parallel, and their positions in ``index``, then ``-1`` and a
        black image (so that the element exists even if every file failed).

        TensorFlow's decoders raise on a corrupt or vanished file, and raising would end the epoch: the
        failed elements are dropped (``ignore_errors``) here, and :meth:`_complete` decodes them again.
        """
        n = tf.shape(index)[0]
        end = tf.data.Dataset.from_tensors((tf.constant(-1), tf.zeros(self.image_size + (3,), tf.uint8)))
        return (tf.data.Dataset.from_tensor_slices((tf.range(n), index))
                .map(_plain(lambda p, i: (p, self._graph["decode_one"](i))), num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=True)
                .ignore_errors()
                .concatenate(end)
                .batch(2**31 - 1))

    def _complete(self, index: tf.Tensor, got: tf.Tensor, images: tf.Tensor) -> tf.Tensor:
        """The uint8 images of ``index`` from :meth:`_decode_batch`'s; the files TensorFlow could not decode
        are decoded again by Pillow and resized by it (:meth:`_pillow_resized`), so every example keeps its
        place."""
        n, shape = tf.shape(index)[0], self.image_size + (3,)
        got, images = got[:-1], images[:-1]

        def fill():
            missing = tf.cast(tf.where(~tf.reduce_any(tf.range(n)[:, None] == got[None, :], 1))[:, 0], tf.int32)
            again = tf.numpy_function(self._pillow_resized, [tf.gather(index, missing)], tf.uint8, stateful=True)
            return tf.dynamic_stitch([got, missing], [images, tf.ensure_shape(again, (None,) + shape)])

        out = tf.cond(tf.shape(got)[0] == n, lambda: images, fill)
        out.set_shape((None,) + shape)
        return out

    def _pillow_resized(self, index: np.ndarray) -> np.ndarray:
        """uint8 images of ``index`` decoded and resized (bilinear, antialiased) by Pillow, black where Pillow
        fails too: for the rare files that pass the listing checks and that TensorFlow cannot decode."""
        from PIL import Image

        out = np.zeros((len(index),) + self.image_size + (3,), np.uint8)
        for k, i in enumerate(index):
            image = self._pillow(i)
            if image.shape[:2] != self.image_size:
                image = Image.fromarray(image).resize(self.image_size[::-1], Image.BILINEAR)
            out[k] = image
        return out

    def _images(self, index: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
        """``(uint8 images, indices)`` batches of the examples ``index`` gives, in its order: two batches
        decode at a time, each in parallel; with a cache, a batch it holds entirely is read from it instead."""
        graph = self._tensors()          # made eagerly, once, before the functions below capture them
        complete = graph["complete"]
        index = index.batch(batch_size)
        store, shape = self._store, self.image_size + (3,)
        if store is not None and store.complete():     # every image cached: read them, nothing else
            return index.map(_plain(lambda i: (tf.ensure_shape(tf.numpy_function(store.get_many, [i], tf.uint8,
                                                                                 stateful=True), (None,) + shape), i)),
                             num_parallel_calls=2, deterministic=True)
        if store is None:
            return (index.interleave(_plain(lambda i: self._decode_batch(i).map(_plain(lambda p, x: (i, p, x)))),
                                     cycle_length=2,
                                     num_parallel_calls=2, deterministic=True)
                    .map(_plain(lambda i, p, x: (complete(i, p, x), i))))

        def get(i):
            images = store.get_many(i)
            return np.zeros((0,) + shape, np.uint8) if images is None else images

        def put(i, images):
            for k, j in enumerate(i):
                if store.keeps_failed or self.paths[j] not in self._failed:
                    store.put(int(j), images[k])
            return np.int32(len(i))

        def cached(i):
            images = tf.numpy_function(get, [i], tf.uint8, stateful=True)
            return i, tf.ensure_shape(images, (None,) + shape)

        def decode(i, images):
            hit = tf.data.Dataset.from_tensors((i, tf.constant([-1]), images, True))
            miss = self._decode_batch(i).map(_plain(lambda p, x: (i, p, x, False)))
            return hit.filter(_plain(lambda i, p, x, h: tf.shape(x)[0] > 0)).concatenate(miss).take(1)

        def keep(i, p, x, hit):
            def decoded():
                images = complete(i, p, x)
                done = tf.numpy_function(put, [i, images], tf.int32, stateful=True)
                with tf.control_dependencies([done]):
                    return tf.identity(images)

            images = tf.cond(hit, lambda: x, decoded)
            images.set_shape((None,) + shape)
            return images, i

        return (index.map(_plain(cached))
                .interleave(_plain(decode), cycle_length=2, num_parallel_calls=2, deterministic=True)
                .map(_plain(keep)))

    def _memory_part(self) -> MemoryPart:
        if self._memory is None:
            x = np.zeros((self.num_examples,) + self.image_size + (3,), np.uint8)
            start = 0
            for images, _ in self._images(tf.data.Dataset.range(self.num_examples), 64):
                x[start:start + len(images)] = images.numpy()
                start += len(images)
            self._memory = MemoryPart(x, self.y, as_float)
        return self._memory

    def _prepare_stream(self) -> None:
        if self._prepared:
            return
        if self.num_examples and self.cache == "memory":
            self._store = _MemoryStore(self.num_examples, self.image_size)
        elif self.num_examples and isinstance(self.cache, (str, os.PathLike)):
            name = Path(self.source).name or "folder"
            self._store = _FileStore(f"{os.fspath(self.cache)}-{name}-{self.cache_key()}-{self.split}.cache",
                                     self.num_examples, self.image_size)
        self._prepared = True

    def batches(self, batch_size, shuffle_seed, epoch=None, shard=None):
        if self.in_memory:
            return self._memory_part().batches(batch_size, shuffle_seed, epoch, shard)
        self._prepare_stream()
        labels = self._tensors()["labels"]
        images = self._images(index_dataset(self.num_examples, shuffle_seed, epoch, shard), batch_size)
        return images.map(_plain(lambda x, i: (as_float(x), tf.gather(labels, i))),
                          num_parallel_calls=tf.data.AUTOTUNE)

    def numpy(self):
        if self.in_memory:
            return self._memory_part().numpy()
        xs = [x.numpy() for x, _ in self.batches(256, None)]
        x = np.concatenate(xs) if xs else np.zeros((0,) + self.image_size + (3,), np.float32)
        return x, self.y


# ---------------------------------------------------------------------------------------------------------
# The source
# ---------------------------------------------------------------------------------------------------------

def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_parts(root: Path, size, fractions, seed, cache=True):
    if not root.exists():
        raise DataNotFoundError(f"Data folder {str(root)!r} does not exist. Give a folder of class "
                                f"sub-folders (or of train/ val/ test/ split folders). "
                                f"Received: source={str(root)!r}")
    if not root.is_dir():
        raise DataError(f"{str(root)!r} is a file, not a folder of class sub-folders. "
                        f"Received: source={str(root)!r}")
    subdirs = _class_folders(root)
    names = [p.name for p in subdirs]
    split_layout = "train" in names and all(n in _SPLIT_FOLDERS for n in names)
    if split_layout:
        given = {_SPLIT_FOLDERS[n]: root / n for n in names}
        if len(given) < len(names):
            raise DataError(f"{str(root)!r} has both val/ and validation/ folders; keep one.")
    else:
        given = {"train": root}
    skipped: list[tuple[str, str]] = []
    empty: list[str] = []
    read: dict[str, _FilePart] = {}
    class_names: list[str] = []
    total = 0
    for split in ("train", "val", "test"):
        if split not in given:
            continue
        folder = given[split]
        classes = _class_folders(folder)
        files: list[Path] = []
        file_class: list[str] = []
        for c in classes:
            found = image_files(c)
            if not found:
                empty.append(str(c))
            files += found
            file_class += [c.name] * len(found)
        checks = _map_threads(lambda f: check_file(f, size), files)
        total += len(files)
        ok = [i for i, check in enumerate(checks) if check[0] is None]
        skipped += [(str(path), check[0]) for path, check in zip(files, checks) if check[0] is not None]
        ok_classes = [file_class[i] for i in ok]
        if split == "train":
            class_names = sorted(set(ok_classes))
            for c in classes:
                if c.name not in class_names and str(c) not in empty:
                    empty.append(f"{c} (no decodable images)")
            if not files:
                raise DataError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) in class sub-folders of "
                                f"{str(folder)!r}. Expected {folder}/<class name>/<image files>.")
            if len(class_names) < 2:
                raise DataError(f"{str(folder)!r} has {len(class_names)} class folder(s) with decodable "
                                f"images ({class_names}); classification needs at least 2. Expected "
                                f"{folder}/<class name>/<image files>.")
        index = {c: i for i, c in enumerate(class_names)}
        keep = []
        for i in ok:
            if file_class[i] in index:
                keep.append(i)
            else:
                skipped.append((str(files[i]), f"class {file_class[i]!r} is not among the train classes"))
        read[split] = _FilePart([str(files[i]) for i in keep], [index[file_class[i]] for i in keep],
                                [checks[i][1] for i in keep], [checks[i][2] for i in keep],
                                [checks[i][3] for i in keep], size, cache, skipped, split, str(root))
    if skipped:
        shown = "; ".join(f"{p} ({r})" for p, r in skipped[:10])
        more = f"; and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        warnings.warn(f"kcnn.data: skipped {len(skipped)} of {total} image files under {root}: {shown}{more}",
                      stacklevel=3)
    if empty:
        warnings.warn(f"kcnn.data: {len(empty)} class folder(s) without images, left out of the classes: "
                      f"{', '.join(empty)}", stacklevel=3)
    train = read["train"]
    if not split_layout:
        index = stratified_indices(train.y, fractions, seed, str(root))
        return class_names, {s: train.take(index[s], s) for s in SPLITS}, skipped
    for split in ("val", "test"):
        if split in read and read[split].num_examples == 0:
            raise DataError(f"The {split} folder {str(given[split])!r} has no decodable images of the "
                            f"train classes {class_names}; add some, or remove the folder to carve the "
                            f"{split} split from train.")
    sizes = carve_sizes(train.num_examples, fractions, len(class_names), str(root),
                          splits=[s for s in ("val", "test") if s not in read])
    keep = np.arange(train.num_examples)
    parts: dict[str, Part] = {}
    for salt, split in enumerate(("val", "test"), start=3):
        if split not in read:
            keep_rel, carved_rel = carve_split(train.y[keep], sizes[split], seed, salt)
            parts[split] = train.take(keep[carved_rel], split)
            keep = keep[keep_rel]
        else:
            parts[split] = read[split]
    parts["train"] = train.take(keep, "train")
    return class_names, parts, skipped
