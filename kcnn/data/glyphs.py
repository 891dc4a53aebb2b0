"""The 8x8 block-count sources: scikit-learn's ``"digits"`` and kcnn's synthetic ``"glyphs"``.

Both are images of 8x8 counts in 0..16 (the on-pixels of each 4x4 block of a 32x32 binary bitmap), turned into
RGB images at any size by the one function :func:`render_counts`. The glyphs are made the way the UCI digits
were made, so a network pretrained on them transfers to ``"digits"``: it copies their acquisition process.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from kcnn.data.errors import DataError, valid_image_size, check_positive_int
from kcnn.data.splits import memory_parts

#: The glyphs drawn by the "glyphs" source unless the source string names others.
GLYPH_CLASSES = "0123456789"
#: Examples the "glyphs" source makes in all splits together unless told otherwise.
GLYPHS_DEFAULT_EXAMPLES = 12_000


def render_counts(counts, image_size, *, max_count: int = 16) -> tf.Tensor:
    """Images from 8×8 block counts: scale to [0, 255], resize (bilinear), repeat to 3 channels.

    The one resize path of the ``"digits"`` and ``"glyphs"`` sources, so that synthetic glyphs and real
    digits look alike at any image size.

    Args:
        counts: ``(N, h, w)`` array or tensor of counts in ``0..max_count``.
        image_size: ``int`` or ``(height, width)`` of the output.
        max_count: The count shown as 255 (16 for 4×4 blocks).

    Returns:
        float32 tensor ``(N, height, width, 3)`` in [0, 255].

    Example:
        >>> float(render_counts(np.full((1, 8, 8), 16, np.uint8), 32).numpy().max())
        255.0
    """
    size = valid_image_size(image_size)
    x = tf.cast(counts, tf.float32)[..., None] * (255.0 / max_count)
    if tuple(x.shape[1:3]) != size:
        x = tf.clip_by_value(tf.image.resize(x, size, method="bilinear"), 0.0, 255.0)
    return tf.repeat(x, 3, axis=-1)


def digits_parts(size, fractions, seed, source="digits"):
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts = np.rint(digits.images).astype(np.uint8)
    labels = digits.target.astype(np.int32)
    names = [str(n) for n in digits.target_names]
    render = functools.partial(render_counts, image_size=size)
    return names, memory_parts(counts, labels, fractions, seed, render, source)


def glyphs_parts(size, fractions, seed, count, chars, source="glyphs"):
    counts, labels = make_glyphs(count, seed=seed, classes=chars)
    return list(chars), memory_parts(counts, labels, fractions, seed,
                                      functools.partial(render_counts, image_size=size), source)


_GLYPH_CANVAS = 96                                 # px, side of the canvas each glyph variant is drawn on
_GLYPH_FONT_SIZES = (40, 46, 52, 58, 64)           # px, Pillow's built-in scalable font
_GLYPH_STROKES = (0.0, 0.02, 0.04, 0.06, 0.08)     # extra stroke width as a fraction of the font size
_GLYPH_ROTATION = 0.2                              # rad, uniform in ±
_GLYPH_SHEAR = 0.3                                 # x += shear * y, uniform in ±
_GLYPH_X_SCALE = (0.55, 1.0)                       # width squeeze: the digits are narrower than the font
_GLYPH_FIT = (30.0, 32.0)                          # px, longer side after fitting into the 32x32 bitmap
_GLYPH_MIN_WIDTH = (14.0, 24.0)                    # px, narrow glyphs stretched to at least this width
_GLYPH_JITTER = 1.0                                # px, uniform in ± around the centre
_PEN_BOX = (40, 60)                                # px, width and height of a pen-drawn digit on the canvas
_PEN_WIDTHS = (8, 10, 12, 14)                      # px, pen widths
_PEN_WOBBLE = 0.06                                 # control points moved up to this fraction of the box
_PEN_COPIES = 4                                    # wobbled copies of each pen digit per width
_PEN_SHARE = 0.7                                   # fraction of the digits drawn by pen rather than the font


def _arc(cx, cy, rx, ry, start, stop, steps=16):
    """Points on an ellipse in the unit box (y down), from angle ``start`` to ``stop`` in degrees."""
    a = np.radians(np.linspace(start, stop, steps))
    return list(zip(cx + rx * np.cos(a), cy + ry * np.sin(a)))


#: Handwritten forms of the digits as pen strokes in a unit box (x right, y down): the shapes a font does not
#: draw (a one-stroke 1, an open 4, a crossed 7, a 9 with a straight stem, a 6 with a straight top).
_PEN_DIGITS = {
    "0": [[_arc(.5, .5, .45, .5, -90, 270)]],
    "1": [[[(.5, 0), (.5, 1)]], [[(.15, .25), (.55, 0), (.55, 1)]], [[(.2, .25), (.55, 0), (.55, 1)], [(.2, 1), (.9, 1)]]],  # noqa: E501
    "2": [[_arc(.5, .3, .45, .3, 200, 400) + [(0, 1), (1, 1)]]],
    "3": [[_arc(.5, .26, .42, .26, 200, 450) + _arc(.5, .74, .47, .26, 270, 520)[1:]],
          [[(.05, 0), (.95, 0), (.4, .42)] + _arc(.5, .72, .47, .28, 250, 520)]],
    "4": [[[(.7, 0), (0, .68), (1, .68)], [(.7, 0), (.7, 1)]], [[(.15, 0), (.05, .62), (1, .62)], [(.78, .15), (.78, 1)]]],  # noqa: E501
    "5": [[[(.95, 0), (.2, 0), (.12, .45)] + _arc(.5, .68, .45, .32, 215, 510)]],
    "6": [[[(.75, 0), (.35, .25)] + _arc(.5, .7, .45, .3, 200, 560)], [[(.6, 0), (.08, .7)] + _arc(.5, .7, .42, .3, 180, 540)]],  # noqa: E501
    "7": [[[(0, 0), (1, 0), (.35, 1)]], [[(0, 0), (1, 0), (.35, 1)], [(.25, .52), (.85, .52)]]],
    "8": [[_arc(.5, .25, .36, .25, 90, 450), _arc(.5, .74, .45, .26, -90, 270)],
          [_arc(.62, .24, .3, .24, 90, 450), _arc(.4, .74, .36, .26, -90, 270)]],
    "9": [[_arc(.5, .25, .42, .25, 0, 360), [(.92, .25), (.85, 1)]],
          [_arc(.5, .25, .42, .25, 0, 360), [(.92, .25), (.85, .7), (.4, 1)]],
          [_arc(.55, .22, .38, .22, 0, 360), [(.93, .22), (.3, 1)]]],
}


def _outline(mask):
    """Canvas-centred (x, y) pixel centres holding each row's and column's extreme on-pixels (the convex hull)."""
    n = mask.shape[0]
    rows, cols = np.nonzero(mask)
    ends = []
    for a, b in ((rows, cols), (cols, rows)):
        order = np.lexsort((b, a))
        a, b = a[order], b[order]
        first = np.r_[True, a[1:] != a[:-1]]
        last = np.r_[a[1:] != a[:-1], True]
        ends.append(np.stack([a[first | last], b[first | last]], 1))
    rc = np.concatenate([ends[0], ends[1][:, ::-1]])  # (row, col)
    return rc[:, ::-1].astype(np.float32) + 0.5 - n / 2


def _pen_masks(ch, rng):
    """Binary bitmaps of the pen-drawn forms of ``ch`` (none when it has no pen form)."""
    from PIL import Image, ImageDraw

    n, (bw, bh) = _GLYPH_CANVAS, _PEN_BOX
    masks = []
    for form in _PEN_DIGITS.get(ch, []):
        for width in _PEN_WIDTHS:
            for _ in range(_PEN_COPIES):
                image = Image.new("L", (n, n))
                draw = ImageDraw.Draw(image)
                for stroke in form:
                    p = np.asarray(stroke, np.float64)
                    p = p + rng.uniform(-_PEN_WOBBLE, _PEN_WOBBLE, p.shape)
                    xy = [(float((n - bw) / 2 + x * bw), float((n - bh) / 2 + y * bh)) for x, y in p]
                    draw.line(xy, fill=255, width=width, joint="curve")
                    for x, y in (xy[0], xy[-1]):
                        r = width / 2
                        draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
                masks.append(np.asarray(image) >= 128)
    return masks


class GlyphBank(NamedTuple):
    """The rendered glyph variants that :func:`make_glyphs` warps (read-only arrays).

    Attributes:
        masks: ``(M, canvas**2)`` bool, each variant's binary bitmap on a 96x96 canvas, flattened.
        points: ``(M, K, 2)`` float32 (x, y) canvas-centred pixel centres that contain the convex hull (each
            row's and column's extreme on-pixels, padded by repeating one).
        font: ``(len(chars), 2)`` int, each character's first font-drawn mask and their count (5 font sizes
            x 5 stroke widths = 25).
        pen: ``(len(chars), 2)`` int, each character's first pen-drawn mask and their count (0 when the
            character has no handwritten form: only the digits 0-9 have one).
    """

    masks: np.ndarray
    points: np.ndarray
    font: np.ndarray
    pen: np.ndarray


def glyph_bank(chars: str = GLYPH_CLASSES) -> GlyphBank:
    """The glyph variants of ``chars`` (font sizes x stroke widths, then pen forms x widths x wobbles).

    Rendered once per ``chars`` and cached; :func:`make_glyphs` draws its examples from them.

    Example:
        >>> bank = glyph_bank("AB")
        >>> bank.font[:, 1].tolist(), bank.pen[:, 1].tolist()
        ([25, 25], [0, 0])
    """
    if not isinstance(chars, str) or len(chars) < 1:
        raise ValueError(f"`chars` must be a non-empty string, one character per class. "
                         f"Received: chars={chars!r}")
    return _glyph_bank(chars)


@functools.lru_cache(maxsize=4)
def _glyph_bank(chars: str) -> GlyphBank:
    from PIL import Image, ImageDraw, ImageFont

    n = _GLYPH_CANVAS
    rng = np.random.default_rng(0)
    masks, font_ranges, pen_ranges = [], [], []
    for ch in chars:
        start = len(masks)
        for font_size in _GLYPH_FONT_SIZES:
            font = ImageFont.load_default(size=font_size)
            for stroke in _GLYPH_STROKES:
                image = Image.new("L", (n, n))
                ImageDraw.Draw(image).text((n / 2, n / 2), ch, font=font, fill=255, anchor="mm",
                                           stroke_width=int(round(stroke * font_size)), stroke_fill=255)
                mask = np.asarray(image) >= 128
                if not mask.any():
                    raise DataError(f"The built-in font draws nothing for {ch!r}; choose other "
                                    f"glyphs characters.")
                masks.append(mask)
        font_ranges.append((start, len(masks) - start))
        start = len(masks)
        masks += _pen_masks(ch, rng)
        pen_ranges.append((start, len(masks) - start))
    outlines = [_outline(m) for m in masks]
    k = max(len(p) for p in outlines)
    points = np.stack([np.concatenate([p, np.repeat(p[:1], k - len(p), 0)]) for p in outlines])
    flat = np.stack(masks).reshape(len(masks), -1)
    bank = GlyphBank(flat, points, np.array(font_ranges), np.array(pen_ranges))
    for array in bank:
        array.setflags(write=False)
    return bank


def make_glyphs(num_examples: int, *, seed: int = 0, classes: str = GLYPH_CLASSES, chunk: int = 2048
                ) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic glyph images made the way scikit-learn's digits were made: 8×8 block counts in 0..16.

    Each example: a glyph of ``classes`` as a binary bitmap, either drawn with Pillow's built-in scalable font
    (``ImageFont.load_default(size=...)``, no system fonts needed) at a random font size and stroke width, or,
    for the digits 0-9 and with probability 0.7, one of their handwritten forms drawn as pen strokes (a
    one-stroke 1, an open 4, a crossed 7, a straight-stemmed 9, ...) at a random pen width with wobbled
    control points; a random rotation, shear and width squeeze; cropped to its bounding box and fitted into a
    32×32 binary bitmap (longer side 30–32 px, aspect kept except that narrow glyphs are widened to 14–24 px,
    as the UCI digits' 1s are; centred ±1 px), like the UCI digits' normalized bitmaps; then the on-pixels of
    each 4×4 block counted, giving 8×8 values in 0..16. The pen forms and the widening lift a 5-nearest-
    neighbour classifier fitted on 8,000 glyphs from 0.56 to 0.81 on the real digits (0.1 is chance). Render
    them with :func:`render_counts`, as the digits are. Rendered glyph variants are cached; the warps are
    vectorized numpy.

    Args:
        num_examples: Number of examples.
        seed: Everything is determined by it.
        classes: One class per character, label ``i`` for ``classes[i]``.
        chunk: Examples warped at a time (memory ``chunk * 12`` KiB).

    Returns:
        ``(counts, labels)``: uint8 ``(num_examples, 8, 8)`` and int32 ``(num_examples,)``, every class
        ``num_examples // len(classes)`` or one more times, in random order.

    Example:
        >>> counts, labels = make_glyphs(100, seed=1)
        >>> counts.shape, int(counts.max()) <= 16, np.bincount(labels).tolist()
        ((100, 8, 8), True, [10, 10, 10, 10, 10, 10, 10, 10, 10, 10])
    """
    num_examples = check_positive_int("num_examples", num_examples)
    masks, points, font, pen = _glyph_bank(classes)
    rng = np.random.default_rng([seed, 0])
    n = num_examples
    labels = rng.permutation(np.arange(n) % len(classes)).astype(np.int32)
    by_pen = (rng.random(n) < _PEN_SHARE) & (pen[labels, 1] > 0)
    first, count = np.where(by_pen[:, None], pen[labels], font[labels]).T
    glyph = first + np.floor(rng.random(n) * count).astype(np.int64)
    theta = rng.uniform(-_GLYPH_ROTATION, _GLYPH_ROTATION, n)
    shear = rng.uniform(-_GLYPH_SHEAR, _GLYPH_SHEAR, n)
    squeeze = rng.uniform(*_GLYPH_X_SCALE, n)
    fit = rng.uniform(*_GLYPH_FIT, n)
    min_width = rng.uniform(*_GLYPH_MIN_WIDTH, n)
    jitter = rng.uniform(-_GLYPH_JITTER, _GLYPH_JITTER, (n, 2))
    cos, sin = np.cos(theta), np.sin(theta)
    # A = rotation @ shear @ diag(squeeze, 1): glyph canvas coordinates -> warped coordinates.
    warp = np.empty((n, 2, 2))
    warp[:, 0, 0] = cos * squeeze
    warp[:, 0, 1] = cos * shear - sin
    warp[:, 1, 0] = sin * squeeze
    warp[:, 1, 1] = sin * shear + cos
    inverse = np.linalg.inv(warp).astype(np.float32)
    warp = warp.astype(np.float32)
    grid = np.arange(32, dtype=np.float32) + 0.5
    half = _GLYPH_CANVAS / 2
    out = np.empty((n, 8, 8), np.uint8)
    for start in range(0, n, chunk):
        s = slice(start, min(n, start + chunk))
        m = s.stop - s.start
        warped = points[glyph[s]] @ np.swapaxes(warp[s], 1, 2)           # (m, K, 2)
        low = warped.min(1) - 0.5
        extent = warped.max(1) + 0.5 - low                               # (m, 2) bounding box w, h
        scale = (fit[s] / extent.max(1))[:, None].repeat(2, 1)           # fit the longer side
        scale[:, 0] = np.maximum(scale[:, 0], np.minimum(min_width[s], 32.0) / extent[:, 0])
        offset = (32 - extent * scale) / 2 + jitter[s]                   # centre in the 32x32 bitmap
        # Output pixel centre -> warped coordinates -> glyph canvas pixel (nearest).
        tx = (grid[None, None, :] - offset[:, 0, None, None]) / scale[:, 0, None, None] + low[:, 0, None, None]
        ty = (grid[None, :, None] - offset[:, 1, None, None]) / scale[:, 1, None, None] + low[:, 1, None, None]
        inv = inverse[s]
        qx = np.floor(inv[:, 0, 0, None, None] * tx + inv[:, 0, 1, None, None] * ty + half).astype(np.int32)
        qy = np.floor(inv[:, 1, 0, None, None] * tx + inv[:, 1, 1, None, None] * ty + half).astype(np.int32)
        inside = (qx >= 0) & (qx < _GLYPH_CANVAS) & (qy >= 0) & (qy < _GLYPH_CANVAS)
        flat = np.where(inside, qy * _GLYPH_CANVAS + qx, 0)
        bits = masks[glyph[s, None, None], flat] & inside                # (m, 32, 32) binary bitmap
        out[s] = bits.reshape(m, 8, 4, 8, 4).sum(axis=(2, 4), dtype=np.uint8)
    return out, labels
