"""Batched training augmentations beyond the pad-crop, random erasing, and mixup / cutmix (:class:`Mixing`).

Every function takes a whole batch, float32 ``(B, H, W, 3)`` in [0, 255], and a stateless seed (``(2,)``
int64), draws each image's randomness from stateless random ops keyed by that seed, and returns a batch of the
same shape, dtype and range. Per-batch choices (mix or not, mixup or cutmix) are ``tf.cond``; per-image
parameters are vectors; RandAugment's per-image op choice partitions the batch by op, runs each op once on
its images (the geometric ones in one ``ImageProjectiveTransformV3`` call) and stitches the batch back.

RandAugment's magnitude ``M`` is on timm's / the paper's scale, [0, 10], ``m = M / 10``, a fixed magnitude
(timm's ``mstd0``), every drawn op applied (the paper's; timm applies each with probability 0.5), and every op
stronger as ``m`` grows (the paper's direction; timm's default "Solarize" and "Posterize" run the other way):

* rotate: ``±30·m`` degrees about the centre (random sign);
* shear x / y: factor ``±0.3·m``, about the centre;
* translate x / y: ``±0.45·m`` of the side (timm's ``translate_pct``);
* solarize: invert the pixels ``>= 256·(1 - m)``;
* posterize: keep ``8 - round(4·m)`` bits (8 down to 4);
* color, contrast, brightness, sharpness: PIL's ``ImageEnhance`` blends, factor ``1 ± 0.9·m`` (random sign);
* identity, auto-contrast, equalize: no magnitude (PIL's ``ImageOps`` definitions, per channel).

Geometric ops sample bilinearly and fill with 0, like the zero padding of the pad-crop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

#: RandAugment's magnitude scale: ``augment_magnitude`` is in ``[0, MAGNITUDE_MAX]``.
MAGNITUDE_MAX = 10.0
#: The default ``augment_magnitude`` (timm's ``rand-m9``).
DEFAULT_MAGNITUDE = 9.0
#: The ops RandAugment and TrivialAugment draw from, uniformly.
RAND_OPS = ("identity", "autocontrast", "equalize", "rotate", "solarize", "color", "posterize", "contrast",
            "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")
_OP = {name: i for i, name in enumerate(RAND_OPS)}
_GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
_RAND_OPS_PER_IMAGE = 2
_ATTEMPTS = 10  # boxes drawn per image for a random resized crop or an erased rectangle; the first that fits
_GRAY = (0.299, 0.587, 0.114)  # PIL's "L" conversion


@dataclass(frozen=True)
class Mixing:
    """Mixup / cutmix of training batches (timm's ``--mixup``, ``--cutmix``, ``--mixup-prob``,
    ``--mixup-switch-prob``, ``--mixup-off-epoch``).

    Per batch: with probability ``prob`` the batch is mixed, by cutmix with probability ``switch_prob`` when
    both alphas are > 0, else by the one that is. ``lam ~ Beta(alpha, alpha)`` per batch. Each image is mixed
    with its partner in the batch reversed (image ``i`` with ``B - 1 - i``, timm's choice; the batch order
    is already a seeded shuffle). Mixup: ``lam * x + (1 - lam) * x[::-1]``; cutmix: one box of area about
    ``1 - lam`` (timm's ``rand_bbox``, the same box for the whole batch) pasted from ``x[::-1]``, ``lam`` then
    set to ``1 - box area / image area``. Labels become ``lam * onehot(y) + (1 - lam) * onehot(y[::-1])``.

    Attributes:
        mixup: Mixup's Beta parameter alpha; 0 turns mixup off.
        cutmix: Cutmix's Beta parameter alpha; 0 turns cutmix off.
        prob: Probability that a batch is mixed.
        switch_prob: Probability of cutmix rather than mixup when both are on.
        off_epoch: No mixing in the 0-based epochs ``E >= off_epoch`` (their labels stay one-hot); ``None``
            mixes every epoch. Not applied to ``Splits.train``, which has no epoch number.

    Example:
        >>> Mixing(mixup=0.8, cutmix=1.0).active
        True
    """

    mixup: float = 0.0
    cutmix: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    off_epoch: int | None = None

    def __post_init__(self):
        for name, bound in (("mixup", None), ("cutmix", None), ("prob", 1.0), ("switch_prob", 1.0)):
            value = getattr(self, name)
            number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and value >= 0 and (bound is None or value <= bound)):
                want = ("a number >= 0 (Beta(alpha, alpha)'s alpha; 0 turns it off)" if bound is None
                        else "a probability in [0, 1]")
                raise ValueError(f"Mixing `{name}` must be {want}. Received: {name}={value!r}")
            object.__setattr__(self, name, float(value))
        off = self.off_epoch
        if off is not None:
            if isinstance(off, bool) or not isinstance(off, (int, np.integer)) or off < 0:
                raise ValueError(f"Mixing `off_epoch` must be None (mix every epoch) or a 0-based epoch "
                                 f"int >= 0. Received: off_epoch={off!r}")
            object.__setattr__(self, "off_epoch", int(off))

    @property
    def active(self) -> bool:
        """Whether anything is mixed: ``mixup > 0 or cutmix > 0``."""
        return self.mixup > 0 or self.cutmix > 0


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------

def _keys(seed, n: int):
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def _per_image(v):
    """``(B,)`` -> ``(B, 1, 1, 1)``, to broadcast over images."""
    return tf.reshape(v, [-1, 1, 1, 1])


def _clip(x):
    return tf.clip_by_value(x, 0.0, 255.0)


def _gray(images):
    """PIL's luminance, ``(B, H, W, 1)``."""
    return tf.reduce_sum(images * tf.constant(_GRAY, tf.float32), axis=-1, keepdims=True)


def _blend(degenerate, images, factor):
    """PIL's ``Image.blend(degenerate, image, factor)``, clipped: ``factor`` (B,) per image."""
    return _clip(degenerate + _per_image(factor) * (images - degenerate))


def _first_fit(fits, *values):
    """Per image the values of its first attempt that fits, and whether any did (``fits``: (B, attempts))."""
    pick = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    return (tf.reduce_any(fits, axis=1),) + tuple(tf.gather(v, pick, batch_dims=1) for v in values)


# ---------------------------------------------------------------------------------------------------------
# colour ops (PIL's definitions, batched)
# ---------------------------------------------------------------------------------------------------------

def _autocontrast(images):
    """Each channel stretched to [0, 255] (a constant channel is left as it is)."""
    lo = tf.reduce_min(images, axis=[1, 2], keepdims=True)
    hi = tf.reduce_max(images, axis=[1, 2], keepdims=True)
    span = hi - lo
    return tf.where(span > 0, _clip((images - lo) * (255.0 / tf.maximum(span, 1e-6))), images)


def _equalize(images):
    """PIL's ``ImageOps.equalize`` per channel of the images rounded to integers: one bincount, one gather."""
    shape = tf.shape(images)
    rows = shape[0] * 3
    q = tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.int32)
    flat = tf.reshape(tf.transpose(q, [0, 3, 1, 2]), [rows, -1])
    offset = tf.range(rows)[:, None] * 256
    hist = tf.reshape(tf.math.bincount(tf.reshape(flat + offset, [-1]), minlength=rows * 256,
                                       maxlength=rows * 256), [rows, 256])
    last = 255 - tf.argmax(tf.reverse(tf.cast(hist > 0, tf.int32), [1]), axis=1, output_type=tf.int32)
    step = (tf.reduce_sum(hist, axis=1) - tf.gather(hist, last, batch_dims=1)) // 256
    step = step[:, None]
    lut = tf.minimum((step // 2 + tf.cumsum(hist, axis=1, exclusive=True)) // tf.maximum(step, 1), 255)
    lut = tf.where(step > 0, lut, tf.range(256)[None])
    out = tf.gather(lut, flat, batch_dims=1)
    out = tf.transpose(tf.reshape(out, [shape[0], 3, shape[1], shape[2]]), [0, 2, 3, 1])
    return tf.cast(out, tf.float32)


def _solarize(images, threshold):
    """Pixels ``>= threshold`` (B,) inverted: ``255 - x``."""
    return tf.where(images >= _per_image(threshold), 255.0 - images, images)


def _posterize(images, dropped_bits):
    """The lowest ``dropped_bits`` (B,) bits cleared: ``floor(x / 2**d) * 2**d``."""
    div = _per_image(tf.pow(2.0, dropped_bits))
    return tf.where(div > 1, tf.floor(images / div) * div, images)


def _contrast(images, factor):
    mean = tf.reduce_mean(_gray(images), axis=[1, 2, 3], keepdims=True)
    return _blend(mean, images, factor)


def _color(images, factor):
    return _blend(_gray(images), images, factor)


def _sharpness(images, factor):
    """PIL's ``ImageEnhance.Sharpness``: blend with the 3x3 smoothed image, the border pixels kept."""
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(images, kernel, strides=[1, 1, 1, 1], padding="SAME")
    shape = tf.shape(images)
    r, c = tf.range(shape[1]), tf.range(shape[2])
    inner = ((r >= 1) & (r <= shape[1] - 2))[:, None] & ((c >= 1) & (c <= shape[2] - 2))[None, :]
    smooth = tf.where(inner[None, :, :, None], smooth, images)
    return _blend(smooth, images, factor)


# ---------------------------------------------------------------------------------------------------------
# RandAugment / TrivialAugment
# ---------------------------------------------------------------------------------------------------------

def _geometric(images, op, v):
    """Rotate / shear / translate each image by its signed strength ``v`` (B,) in [-1, 1] where ``op`` (B,)
    says so, the others unchanged: one batched bilinear projective transform, zero fill."""
    shape = tf.shape(images)
    h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    cy, cx = (h - 1) / 2, (w - 1) / 2

    def where(name, value):
        return tf.where(op == _OP[name], value, tf.zeros_like(v))

    angle = where("rotate", v * (30.0 * math.pi / 180.0))
    shear_x, shear_y = where("shear_x", 0.3 * v), where("shear_y", 0.3 * v)
    move_x, move_y = where("translate_x", 0.45 * v * w), where("translate_y", 0.45 * v * h)
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Output pixel (x, y) reads input (a0 x + a1 y + a2, b0 x + b1 y + b2); one op at most per image.
    a0, a1, b0, b1 = cos, sin + shear_x, shear_y - sin, cos
    a2 = cx - a0 * cx - a1 * cy - move_x
    b2 = cy - b0 * cx - b1 * cy - move_y
    zero = tf.zeros_like(v)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zero, zero], axis=1)
    out = tf.raw_ops.ImageProjectiveTransformV3(images=images, transforms=transforms,
                                                output_shape=shape[1:3], fill_value=0.0,
                                                interpolation="BILINEAR", fill_mode="CONSTANT")
    moved = tf.reduce_any(tf.stack([op == _OP[g] for g in _GEOMETRIC]), axis=0)
    return tf.where(_per_image(moved), out, images)


def _apply_ops(images, op, m, sign):
    """One op per image: ``op`` (B,) indexes :data:`RAND_OPS`, ``m`` (B,) in [0, 1], ``sign`` (B,) ±1.

    The batch is partitioned by op (``tf.dynamic_partition``), each op runs once on its images (the geometric
    ones together, one projective transform) and ``tf.dynamic_stitch`` puts the images back in order: each
    image costs one op, not all of them.
    """
    group = tf.gather(tf.constant(_GROUP_OF_OP, tf.int32), op)
    index = tf.range(tf.shape(images)[0])
    indices = tf.dynamic_partition(index, group, len(_GROUPS))
    parts = tf.dynamic_partition(images, group, len(_GROUPS))
    outs = []
    for fn, idx, part in zip(_GROUPS, indices, parts):
        outs.append(fn(part, tf.gather(op, idx), tf.gather(m, idx), tf.gather(sign, idx)))
    out = tf.dynamic_stitch(indices, outs)
    out.set_shape(images.shape)
    return out


def _enhance_factor(m, sign):
    return 1.0 + 0.9 * m * sign


#: One function per group of ops, ``(images, op, m, sign) -> images``; the geometric ops are one group.
_GROUPS = (
    lambda x, op, m, sign: x,
    lambda x, op, m, sign: _autocontrast(x),
    lambda x, op, m, sign: _equalize(x),
    lambda x, op, m, sign: _solarize(x, 256.0 * (1.0 - m)),
    lambda x, op, m, sign: _color(x, _enhance_factor(m, sign)),
    lambda x, op, m, sign: _posterize(x, tf.round(4.0 * m)),
    lambda x, op, m, sign: _contrast(x, _enhance_factor(m, sign)),
    lambda x, op, m, sign: _blend(0.0, x, _enhance_factor(m, sign)),
    lambda x, op, m, sign: _sharpness(x, _enhance_factor(m, sign)),
    lambda x, op, m, sign: _geometric(x, op, m * sign),
)
_GROUP_NAMES = ("identity", "autocontrast", "equalize", "solarize", "color", "posterize", "contrast",
                "brightness", "sharpness")
_GROUP_OF_OP = tuple(_GROUP_NAMES.index(name) if name in _GROUP_NAMES else len(_GROUP_NAMES)
                     for name in RAND_OPS)


def _draw_ops(seed, batch):
    op_key, sign_key = _keys(seed, 2)
    op = tf.random.stateless_uniform([batch], op_key, minval=0, maxval=len(RAND_OPS), dtype=tf.int32)
    sign = tf.where(tf.random.stateless_uniform([batch], sign_key) < 0.5, -1.0, 1.0)
    return op, sign


def rand_augment(images, seed, magnitude: float = DEFAULT_MAGNITUDE, ops: int = _RAND_OPS_PER_IMAGE):
    """RandAugment: ``ops`` ops per image, each drawn uniformly from :data:`RAND_OPS`, at ``magnitude``.

    Args:
        images: float32 ``(B, H, W, 3)`` in [0, 255].
        seed: Stateless seed, ``(2,)`` int.
        magnitude: ``M`` in [0, 10].
        ops: Ops per image, applied one after the other.

    Returns:
        The augmented batch, same shape and dtype, in [0, 255].
    """
    batch = tf.shape(images)[0]
    m = tf.fill([batch], tf.cast(magnitude / MAGNITUDE_MAX, tf.float32))
    out = images
    for key in _keys(seed, ops):
        op, sign = _draw_ops(key, batch)
        out = _apply_ops(out, op, m, sign)
    out.set_shape(images.shape)
    return out


def trivial_augment(images, seed):
    """TrivialAugment: one op per image from :data:`RAND_OPS`, its magnitude uniform in [0, 10] per image."""
    batch = tf.shape(images)[0]
    draw_key, m_key = _keys(seed, 2)
    op, sign = _draw_ops(draw_key, batch)
    out = _apply_ops(images, op, tf.random.stateless_uniform([batch], m_key), sign)
    out.set_shape(images.shape)
    return out


# ---------------------------------------------------------------------------------------------------------
# photo: random resized crop, flip, colour jitter
# ---------------------------------------------------------------------------------------------------------

def photo(images, seed, magnitude: float = DEFAULT_MAGNITUDE, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)):
    """Random resized crop (torchvision's sampling, bilinear), horizontal flip, colour jitter.

    The crop covers a fraction ``U(scale)`` of the image area with aspect ratio ``w / h`` log-uniform in
    ``ratio``: the first of 10 draws that fits, else the whole image. The jitter multiplies brightness, then
    contrast, then saturation by factors in ``1 ± 0.04 * magnitude`` (0.4 at 10, timm's ``--color-jitter``).

    Args:
        images: float32 ``(B, H, W, 3)`` in [0, 255].
        seed: Stateless seed, ``(2,)`` int.
        magnitude: Jitter strength on the [0, 10] scale.
        scale: Range of the crop's area fraction.
        ratio: Range of the crop's aspect ratio.

    Returns:
        The augmented batch, same shape and dtype, in [0, 255].
    """
    shape = tf.shape(images)
    batch = shape[0]
    h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    area_key, ratio_key, top_key, left_key, flip_key, jitter_key = _keys(seed, 6)
    area = tf.random.stateless_uniform([batch, _ATTEMPTS], area_key, scale[0], scale[1])
    aspect = tf.exp(tf.random.stateless_uniform([batch, _ATTEMPTS], ratio_key, math.log(ratio[0]),
                                                math.log(ratio[1])))
    crop_w = tf.sqrt(area * h * w * aspect)
    crop_h = tf.sqrt(area * h * w / aspect)
    fits, crop_h, crop_w = _first_fit((crop_h <= h) & (crop_w <= w), crop_h, crop_w)
    crop_h, crop_w = tf.where(fits, crop_h, h), tf.where(fits, crop_w, w)
    top = tf.random.stateless_uniform([batch], top_key) * (h - crop_h)
    left = tf.random.stateless_uniform([batch], left_key) * (w - crop_w)
    # crop_and_resize samples box coordinate y at pixel y * (H - 1): the output's pixel centres are placed
    # at top + (i + 0.5) * crop_h / H - 0.5, the first and the last of them define the box.
    y1 = (top + 0.5 * crop_h / h - 0.5) / tf.maximum(h - 1, 1.0)
    y2 = (top + crop_h - 0.5 * crop_h / h - 0.5) / tf.maximum(h - 1, 1.0)
    x1 = (left + 0.5 * crop_w / w - 0.5) / tf.maximum(w - 1, 1.0)
    x2 = (left + crop_w - 0.5 * crop_w / w - 0.5) / tf.maximum(w - 1, 1.0)
    mirror = tf.random.stateless_uniform([batch], flip_key) < 0.5
    x1, x2 = tf.where(mirror, x2, x1), tf.where(mirror, x1, x2)  # x1 > x2 samples the crop mirrored
    out = tf.image.crop_and_resize(images, tf.stack([y1, x1, y2, x2], axis=1), tf.range(batch), shape[1:3],
                                   method="bilinear")
    strength = 0.04 * float(magnitude)
    if strength > 0:
        factors = tf.random.stateless_uniform([3, batch], jitter_key, 1.0 - strength, 1.0 + strength)
        out = _blend(0.0, _clip(out), factors[0])
        out = _contrast(out, factors[1])
        out = _color(out, factors[2])
    out = _clip(out)
    out.set_shape(images.shape)
    return out


# ---------------------------------------------------------------------------------------------------------
# random erasing
# ---------------------------------------------------------------------------------------------------------

def random_erase(images, seed, prob: float, area=(0.02, 1 / 3), aspect=(0.3, 1 / 0.3)):
    """timm's ``RandomErasing(mode="pixel")``: with probability ``prob`` per image, one rectangle filled with
    per-pixel uniform values in [0, 255].

    The rectangle's area fraction is ``U(area)``, its aspect ratio log-uniform in ``aspect``, rounded to whole
    pixels: the first of 10 draws that is smaller than the image and whose rounded area is within ``area``;
    an image with none is left as it is.

    Args:
        images: float32 ``(B, H, W, 3)`` in [0, 255].
        seed: Stateless seed, ``(2,)`` int.
        prob: Probability that an image is erased.
        area: Range of the rectangle's fraction of the image area.
        aspect: Range of its aspect ratio ``h / w``.

    Returns:
        The batch with the erased rectangles, same shape and dtype.
    """
    shape = tf.shape(images)
    batch = shape[0]
    h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    apply_key, area_key, aspect_key, top_key, left_key, fill_key = _keys(seed, 6)
    target = tf.random.stateless_uniform([batch, _ATTEMPTS], area_key, area[0], area[1]) * h * w
    ratio = tf.exp(tf.random.stateless_uniform([batch, _ATTEMPTS], aspect_key, math.log(aspect[0]),
                                               math.log(aspect[1])))
    eh, ew = tf.round(tf.sqrt(target * ratio)), tf.round(tf.sqrt(target / ratio))
    fits = ((eh >= 1) & (ew >= 1) & (eh < h) & (ew < w)
            & (eh * ew >= area[0] * h * w) & (eh * ew <= area[1] * h * w))
    fits, eh, ew = _first_fit(fits, eh, ew)
    erased = fits & (tf.random.stateless_uniform([batch], apply_key) < prob)
    top = tf.floor(tf.random.stateless_uniform([batch], top_key) * (h - eh + 1))
    left = tf.floor(tf.random.stateless_uniform([batch], left_key) * (w - ew + 1))
    rows = tf.range(h)[None, :]
    cols = tf.range(w)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
    mask = in_rows[:, :, None, None] & in_cols[:, None, :, None] & _per_image(erased)
    noise = tf.random.stateless_uniform(shape, fill_key, 0.0, 255.0)
    out = tf.where(mask, noise, images)
    out.set_shape(images.shape)
    return out


# ---------------------------------------------------------------------------------------------------------
# mixup / cutmix
# ---------------------------------------------------------------------------------------------------------

def _beta(seed, alpha):
    """One ``Beta(alpha, alpha)`` draw from two stateless gamma draws (float64, so tiny alphas do not
    underflow), float32."""
    k1, k2 = _keys(seed, 2)
    alpha = tf.cast(alpha, tf.float64)
    g1 = tf.random.stateless_gamma([], k1, alpha, dtype=tf.float64)
    g2 = tf.random.stateless_gamma([], k2, alpha, dtype=tf.float64)
    total = g1 + g2
    return tf.cast(tf.where(total > 0, g1 / tf.where(total > 0, total, 1.0), 0.5), tf.float32)


def _cutmix_box(seed, lam, h, w):
    """timm's ``rand_bbox``: a box of about ``1 - lam`` of the image centred on a random pixel, clipped;
    returns the ``(1, H, W, 1)`` mask and ``lam`` corrected to ``1 - box area / image area``."""
    cy_key, cx_key = _keys(seed, 2)
    cut = tf.sqrt(1.0 - lam)
    half_h = tf.cast(tf.cast(h, tf.float32) * cut, tf.int32) // 2
    half_w = tf.cast(tf.cast(w, tf.float32) * cut, tf.int32) // 2
    cy = tf.random.stateless_uniform([], cy_key, minval=0, maxval=h, dtype=tf.int32)
    cx = tf.random.stateless_uniform([], cx_key, minval=0, maxval=w, dtype=tf.int32)
    y0, y1 = tf.clip_by_value(cy - half_h, 0, h), tf.clip_by_value(cy + half_h, 0, h)
    x0, x1 = tf.clip_by_value(cx - half_w, 0, w), tf.clip_by_value(cx + half_w, 0, w)
    rows, cols = tf.range(h), tf.range(w)
    mask = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None, :]
    box = tf.cast((y1 - y0) * (x1 - x0), tf.float32)
    return mask[None, :, :, None], 1.0 - box / tf.cast(h * w, tf.float32)


def mix_batch(images, labels, seed, mixing: Mixing, num_classes: int, weights=None, enabled=True):
    """One batch mixed as :class:`Mixing` says, with soft labels (and mixed sample weights).

    Args:
        images: float32 ``(B, H, W, 3)``.
        labels: int ``(B,)`` class indices.
        seed: Stateless seed, ``(2,)`` int.
        mixing: An active :class:`Mixing`.
        num_classes: Width of the soft labels.
        weights: ``None`` or float32 ``(num_classes,)`` class weights: each example's sample weight is then
            ``lam * weights[y] + (1 - lam) * weights[y[::-1]]``.
        enabled: Scalar bool (tensor): ``False`` leaves the batch unmixed (one-hot labels).

    Returns:
        ``(images, soft labels (B, num_classes) float32)``, plus ``sample_weights (B,)`` with ``weights``.
    """
    apply_key, switch_key, beta_key, box_key = _keys(seed, 4)
    shape = tf.shape(images)
    apply = tf.logical_and(tf.cast(enabled, tf.bool),
                           tf.random.stateless_uniform([], apply_key) < mixing.prob)
    use_cutmix = tf.random.stateless_uniform([], switch_key) < mixing.switch_prob

    def mixup():
        lam = _beta(beta_key, mixing.mixup)
        return lam * images + (1.0 - lam) * tf.reverse(images, [0]), lam

    def cutmix():
        mask, lam = _cutmix_box(box_key, _beta(beta_key, mixing.cutmix), shape[1], shape[2])
        return tf.where(mask, tf.reverse(images, [0]), images), lam

    def mixed():
        if mixing.mixup > 0 and mixing.cutmix > 0:
            return tf.cond(use_cutmix, cutmix, mixup)
        return cutmix() if mixing.cutmix > 0 else mixup()

    out, lam = tf.cond(apply, mixed, lambda: (images, tf.constant(1.0)))  # only the chosen branch runs
    out.set_shape(images.shape)
    onehot = tf.one_hot(labels, num_classes, dtype=tf.float32)
    soft = lam * onehot + (1.0 - lam) * tf.reverse(onehot, [0])
    if weights is None:
        return out, soft
    w = tf.gather(tf.constant(np.asarray(weights, np.float32)), labels)
    return out, soft, lam * w + (1.0 - lam) * tf.reverse(w, [0])
