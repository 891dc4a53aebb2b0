"""Listing an image folder and the cheap look at each file before anything is decoded: which files are images,
which are skipped and why (empty, truncated, too large for Pillow's decompression-bomb limit, unreadable), and
which decoder reads each one (`kcnn.data.folders` decodes them)."""
from __future__ import annotations

import os
from pathlib import Path

from kcnn.data.errors import IMAGE_EXTENSIONS

PILLOW, PNG, JPEG = 0, 1, 2      # decoders; JPEG + k decodes at DCT scale 1 / JPEG_RATIOS[k]
JPEG_RATIOS = (8, 4, 2, 1)
_TAIL_BYTES = 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_END_MARKERS = {"JPEG": (b"\xff\xd9", "JPEG end-of-image marker (FFD9)"), "PNG": (b"IEND", "PNG IEND chunk")}


def image_files(folder: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath) / f for f in sorted(filenames)
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return files


def too_large(width: int, height: int) -> str | None:
    """Why an image of ``width x height`` is skipped, if it declares more pixels than Pillow's limit
    (``PIL.Image.MAX_IMAGE_PIXELS``, read at each call; None: no limit): the decompression-bomb guard, for the
    files TensorFlow's decoders read as for Pillow's."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or width * height <= limit:
        return None
    return (f"too large: its header declares {width} x {height} = {width * height:,} pixels, more than "
            f"PIL.Image.MAX_IMAGE_PIXELS ({int(limit):,}; a decompression-bomb guard: raise it to read the "
            f"file)")


def png_header_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG's IHDR chunk (bytes 16-24), or None if the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def check_file(path: Path, size) -> tuple[str | None, int, int, int]:
    """``(None or why the file is skipped, size in bytes, modification time in ns, decoder)`` from a cheap look.

    The decoder is :data:`PILLOW`, :data:`PNG`, or a JPEG decoded in the graph at DCT scale ``1/ratio``
    (``JPEG_RATIOS``), ``ratio`` the largest of 1, 2, 4, 8 that keeps the image at least ``size`` (Pillow's
    draft rule). A file whose header declares more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` is skipped
    whichever decoder would read it (`too_large`); a PNG's is read from its IHDR before Pillow opens it.
    """
    from PIL import Image

    try:
        stat = path.stat()
        if stat.st_size == 0:
            return "empty file (0 bytes)", 0, stat.st_mtime_ns, PILLOW
        png = png_header_size(path)
        why = too_large(*png) if png is not None else None
        if why:
            return why, 0, 0, PILLOW
        with Image.open(path) as image:
            why = too_large(*image.size)  # JPEG, GIF, BMP, ...: before anything is decoded
            if why:
                return why, 0, 0, PILLOW
            if image.format in _END_MARKERS:
                marker, name = _END_MARKERS[image.format]
                with open(path, "rb") as f:
                    f.seek(max(0, stat.st_size - _TAIL_BYTES))
                    if marker not in f.read():
                        return f"truncated: no {name} in its last {_TAIL_BYTES} bytes", 0, 0, PILLOW
            else:
                image.load()    # GIF (first frame), BMP: rare, cheap to decode
            return None, stat.st_size, stat.st_mtime_ns, decoder(image, size)
    except Exception as err:  # noqa: BLE001 - any failure skips the file with its reason
        return f"{type(err).__name__}: {err}", 0, 0, PILLOW


def decoder(image, size) -> int:
    """How an opened, checked file is decoded: in the graph (plain JPEG, 8-bit PNG) or by Pillow (the rest)."""
    if image.format == "PNG" and image.mode in ("RGB", "RGBA", "L", "LA") and "exif" not in image.info:
        return PNG                         # palette, 1-bit and 16-bit grayscale go to Pillow
    if image.format == "JPEG" and image.mode in ("RGB", "L") and image.getexif().get(0x0112, 1) == 1:
        scale = min(image.size[0] // size[1], image.size[1] // size[0])
        return JPEG + next(k for k, r in enumerate(JPEG_RATIOS) if max(scale, 1) >= r)
    return PILLOW                          # EXIF-rotated or CMYK JPEG, GIF, BMP, TIFF, WebP, ...
