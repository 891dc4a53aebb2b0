"""Tests of kcnn.data's augmentations (photo, randaugment, trivialaugment), random erasing, mixup / cutmix
(kcnn.data.Mixing) and kcnn.plots.augment_grid, on tiny arrays."""
import hashlib

import numpy as np
import pytest
import tensorflow as tf

from kcnn import data as kdata
from kcnn import plots
from kcnn.data import augment as kaug

NEW_AUGMENTS = ("photo", "randaugment", "trivialaugment")


def _load(x, y, **kwargs):
    kwargs.setdefault("val_fraction", 0)
    kwargs.setdefault("test_fraction", 0)
    kwargs.setdefault("seed", 3)
    return kdata.load((x, y), image_size=x.shape[1:3], **kwargs)


def _random_images(n=24, size=(16, 16), seed=7):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n,) + size + (3,), dtype=np.uint8), np.arange(n) % 3


def _batches(ds):
    return [tuple(t.numpy() for t in batch) for batch in ds]


def _digest(ds):
    h = hashlib.sha256()
    for batch in ds:
        for t in batch:
            h.update(np.ascontiguousarray(t.numpy()).tobytes())
    return h.hexdigest()[:16]


def _same(a, b):
    return len(a) == len(b) and all(len(p) == len(q) and all(np.array_equal(u, v) for u, v in zip(p, q))
                                    for p, q in zip(a, b))


# --------------------------------------------------------------------------------------------------------
# names and the unchanged augmentations
# --------------------------------------------------------------------------------------------------------

def test_augment_names_live_in_one_tuple():
    assert kdata.AUGMENTS == ("none", "standard", "crop", "photo", "randaugment", "trivialaugment",
                              "standard-noflip")
    assert len(kdata.RAND_OPS) == 14 and kdata.DEFAULT_MAGNITUDE == 9.0


# Checksums of epochs 0 and 1 (and a class-weighted epoch 2) of today's "standard" and "crop", computed with
# the code before photo / randaugment / erasing / mixing were added: those outputs must never change.
BEFORE = {"standard": ("0915f6f388780fe0", "7925aa6e79526e01", "3c1966077084b339"),
          "crop": ("5c1f4b7dbed165e7", "9791acd5213a617f", "8329d0448fca0bfd")}


@pytest.mark.parametrize("augment", ["standard", "crop"])
def test_standard_and_crop_are_unchanged(augment):
    x, y = _random_images()
    splits = _load(x, y, batch_size=8, augment=augment)
    weighted = _load(x, y, batch_size=8, augment=augment, class_weight="balanced")
    got = (_digest(splits.dataset(training=True, epoch=0)), _digest(splits.dataset(training=True, epoch=1)),
           _digest(weighted.dataset(training=True, epoch=2)))
    assert got == BEFORE[augment]


# --------------------------------------------------------------------------------------------------------
# photo, randaugment, trivialaugment
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("augment", NEW_AUGMENTS)
def test_new_augments_are_deterministic_per_epoch_and_in_range(augment):
    x, y = _random_images(size=(16, 20))
    splits = _load(x, y, batch_size=8, augment=augment)
    first, other = (_batches(splits.dataset(training=True, epoch=e)) for e in (1, 2))
    again = _batches(_load(x, y, batch_size=8, augment=augment).dataset(training=True, epoch=1))
    order = _batches(_load(x, y, batch_size=8).dataset(training=True, epoch=1))
    assert _same(first, again)
    assert not any(np.array_equal(a[0], b[0]) for a, b in zip(first, other))
    for (images, labels), (raw, raw_labels) in zip(first, order):
        assert images.shape == raw.shape == (8, 16, 20, 3) and images.dtype == np.float32
        assert images.min() >= 0 and images.max() <= 255
        np.testing.assert_array_equal(labels, raw_labels)   # the same order as without augmentation
        assert not np.array_equal(images, raw)
    if augment == "photo":   # the tensor-epoch path agrees (the epoch only enters the per-batch key)
        assert _same(_batches(splits.epochs(1, 3)), first + other)


def test_magnitude_sets_the_strength():
    x = tf.constant(_random_images(n=8)[0], tf.float32)
    key = tf.constant([5, 6], tf.int64)
    for fn in (kaug.rand_augment, kaug.photo):
        strong, weak, again = fn(x, key, 9.0).numpy(), fn(x, key, 5.0).numpy(), fn(x, key, 9.0).numpy()
        np.testing.assert_array_equal(strong, again)
        assert not np.array_equal(strong, weak)
    # photo at magnitude 0: no colour jitter, so a crop of a constant image stays constant
    flat = kaug.photo(tf.fill([4, 12, 12, 3], 80.0), key, 0.0).numpy()
    np.testing.assert_allclose(flat, 80.0, atol=1e-4)


def test_randaugment_starts_from_the_standard_crop():
    """``randaugment`` is ``standard``'s batch, then the ops: at magnitude 0 only the magnitude-free ops
    (auto-contrast, equalize) and float rounding separate them."""
    x, y = _random_images(n=64)
    std = _batches(_load(x, y, batch_size=64, augment="standard").dataset(training=True, epoch=0))[0][0]
    ra = _batches(_load(x, y, batch_size=64, augment="randaugment", augment_magnitude=0)
                  .dataset(training=True, epoch=0))[0][0]
    close = np.abs(ra - std).reshape(64, -1).max(axis=1) < 1e-3
    assert 0.4 < close.mean() < 1.0   # 12 of 14 ops are the identity at M = 0, drawn twice: (12/14)^2 = 0.73


def _pil_batch(images, fn):
    from PIL import Image
    return np.stack([np.asarray(fn(Image.fromarray(im)), np.float32) for im in images.astype(np.uint8)])


def test_colour_ops_match_pil():
    from PIL import ImageEnhance, ImageOps
    x, _ = _random_images(n=6, size=(12, 10))
    x[0] //= 3                                   # a low-contrast image
    x[1, ..., 2] = 77                            # a constant channel
    t = tf.constant(x, tf.float32)
    ones = tf.ones([6])
    np.testing.assert_array_equal(kaug._equalize(t).numpy(), _pil_batch(x, ImageOps.equalize))
    np.testing.assert_array_equal(kaug._solarize(t, 100 * ones).numpy(),
                                  _pil_batch(x, lambda im: ImageOps.solarize(im, 100)))
    np.testing.assert_array_equal(kaug._posterize(t, 3 * ones).numpy(),
                                  _pil_batch(x, lambda im: ImageOps.posterize(im, 5)))
    assert np.abs(kaug._autocontrast(t).numpy() - _pil_batch(x, ImageOps.autocontrast)).max() <= 1.0
    for ours, enhance in ((kaug._color, ImageEnhance.Color), (kaug._contrast, ImageEnhance.Contrast),
                          (kaug._sharpness, ImageEnhance.Sharpness),
                          (lambda im, f: kaug._blend(0.0, im, f), ImageEnhance.Brightness)):
        for factor in (0.4, 1.6):
            reference = _pil_batch(x, lambda im: enhance(im).enhance(factor))
            assert np.abs(ours(t, factor * ones).numpy() - reference).max() <= 2.0   # PIL rounds to uint8


def test_geometric_ops():
    rng = np.random.default_rng(0)
    x = rng.uniform(1, 255, (2, 21, 20, 3)).astype(np.float32)
    op = tf.constant([kaug._OP["translate_x"], kaug._OP["identity"]])
    out = kaug._geometric(tf.constant(x), op, tf.constant([1.0, 1.0])).numpy()
    shift = 9                                      # 0.45 of 20 px
    np.testing.assert_allclose(out[0, :, shift:], x[0, :, :-shift], atol=1e-3)
    assert np.abs(out[0, :, :shift]).max() == 0    # filled with 0
    np.testing.assert_array_equal(out[1], x[1])
    square = rng.uniform(1, 255, (1, 21, 21, 3)).astype(np.float32)
    turned = kaug._geometric(tf.constant(square), tf.constant([kaug._OP["rotate"]]),
                             tf.constant([1.0])).numpy()
    np.testing.assert_allclose(turned[0, 10, 10], square[0, 10, 10], atol=1e-2)   # about the centre
    assert np.abs(turned - square).mean() > 10 and turned[0, 0, 0].max() == 0     # 30 degrees: corners fill


# --------------------------------------------------------------------------------------------------------
# random erasing
# --------------------------------------------------------------------------------------------------------

def _erased_masks(out, ref):
    return (out != ref).any(axis=-1)


def _is_filled_rectangle(mask):
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all() and mask.sum() == len(rows) * len(cols)


def test_erase_probability_and_area():
    n = 2000
    x = np.full((n, 16, 16), 100, np.uint8)
    splits = _load(x, np.arange(n) % 2, batch_size=250, erase=0.5)
    out = np.concatenate([b[0] for b in _batches(splits.dataset(training=True, epoch=0))])
    masks = _erased_masks(out, 100.0)
    erased = masks.any(axis=(1, 2))
    # the erased fraction of 2000 images: std sqrt(0.25 / 2000) = 0.011, so 0.05 is 4.5 standard deviations
    assert abs(erased.mean() - 0.5) < 0.05
    area = masks[erased].sum(axis=(1, 2)) / 256
    assert area.min() >= 0.02 and area.max() <= 1 / 3
    assert all(_is_filled_rectangle(m) for m in masks[erased][:200])
    assert out.min() >= 0 and out.max() <= 255
    assert splits.erase == 0.5 and "erase=0.5" in repr(splits)


@pytest.mark.parametrize("augment", ["none", "standard", "crop", "photo", "randaugment", "trivialaugment"])
def test_erase_after_every_augment(augment):
    x, y = _random_images(n=16)
    ref = _batches(_load(x, y, batch_size=16, augment=augment).dataset(training=True, epoch=2))[0]
    out = _batches(_load(x, y, batch_size=16, augment=augment, erase=1.0).dataset(training=True, epoch=2))[0]
    masks = _erased_masks(out[0], ref[0])
    np.testing.assert_array_equal(out[1], ref[1])
    assert all(_is_filled_rectangle(m) for m in masks)     # every image: one rectangle, the rest unchanged
    assert 0.02 <= masks.sum(axis=(1, 2)).min() / 256 and masks.sum(axis=(1, 2)).max() / 256 <= 1 / 3


# --------------------------------------------------------------------------------------------------------
# mixup / cutmix
# --------------------------------------------------------------------------------------------------------

def _distinct(n=32, size=8):
    """``n`` constant images of distinct values, each its own class."""
    x = np.repeat((10 + 7 * np.arange(n, dtype=np.float32))[:, None, None], size, 1)
    return np.repeat(x[:, :, :, None], size, 2), np.arange(n)


def _pairs(mixed, plain):
    """Per batch ``(images, unmixed images, soft labels, int labels, lam)``: lam from image 0's soft label."""
    for (xm, soft, *_), (x, y, *_) in zip(mixed, plain):
        yield xm, x, soft, y, soft[0, y[0]]


def test_mixup_is_a_convex_combination_with_the_reversed_batch():
    x, y = _distinct(n=32)
    mixing = kdata.Mixing(mixup=0.4)
    mixed = _load(x, y, batch_size=8, augment="standard", mixing=mixing)
    plain = _load(x, y, batch_size=8, augment="standard")
    assert mixed.soft_labels and not plain.soft_labels
    for epoch in range(3):
        for xm, x0, soft, y0, lam in _pairs(_batches(mixed.dataset(training=True, epoch=epoch)),
                                            _batches(plain.dataset(training=True, epoch=epoch))):
            assert soft.dtype == np.float32 and soft.shape == (8, 32)
            np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-6)
            expected_soft = lam * np.eye(32)[y0] + (1 - lam) * np.eye(32)[y0[::-1]]
            np.testing.assert_allclose(soft, expected_soft, atol=1e-6)
            np.testing.assert_allclose(xm, lam * x0 + (1 - lam) * x0[::-1], rtol=1e-5, atol=1e-5)


def _lams(mixing, n_batches, seed=0):
    """lam of each of ``n_batches`` two-image batches (their labels differ, so lam is readable)."""
    n = 2 * n_batches
    x = np.zeros((n, 2, 2), np.uint8)
    y = np.arange(n)
    mixed = _batches(_load(x, y, batch_size=2, seed=seed, mixing=mixing).dataset(training=True, epoch=0))
    order = [b[1] for b in _batches(_load(x, y, batch_size=2, seed=seed).dataset(training=True, epoch=0))]
    return np.array([soft[0, labels[0]] for (_, soft), labels in zip(mixed, order)])


def test_mixup_lam_is_beta_distributed():
    lam = _lams(kdata.Mixing(mixup=0.4), 2000)
    # Beta(0.4, 0.4): mean 0.5, variance 1 / (4 (2 alpha + 1)) = 0.1389, excess kurtosis -1.58. Over 2000
    # draws the mean's std is sqrt(0.1389 / 2000) = 0.0083 and the sample variance's std is
    # 0.1389 * sqrt((1.42 - 1) / 2000) = 0.0020: tolerances of about 4 standard deviations.
    assert abs(lam.mean() - 0.5) < 0.035
    assert abs(lam.var() - 1 / (4 * 1.8)) < 0.0085
    assert lam.min() >= 0 and lam.max() <= 1


def test_mix_probability():
    lam = _lams(kdata.Mixing(mixup=1.0, prob=0.3), 1000)
    # 1000 batches, each mixed with probability 0.3: std sqrt(0.21 / 1000) = 0.0145; 0.06 is 4 of them
    assert abs((lam < 1).mean() - 0.3) < 0.06
    assert (_lams(kdata.Mixing(mixup=1.0, prob=0.0), 50) == 1).all()


def test_cutmix_pastes_a_box_of_area_one_minus_lam():
    x, y = _distinct(n=32, size=16)
    mixed = _load(x, y, batch_size=8, mixing=kdata.Mixing(cutmix=1.0))
    plain = _load(x, y, batch_size=8)
    boxes = 0
    for epoch in range(4):
        for xm, x0, soft, y0, lam in _pairs(_batches(mixed.dataset(training=True, epoch=epoch)),
                                            _batches(plain.dataset(training=True, epoch=epoch))):
            pasted = (xm == x0[::-1]).all(axis=-1)
            np.testing.assert_array_equal(np.where(pasted[..., None], x0[::-1], x0), xm)  # box or own
            assert all(np.array_equal(p, pasted[0]) for p in pasted)     # one box for the batch
            np.testing.assert_allclose(pasted.sum(axis=(1, 2)) / 256, 1 - lam, atol=1e-6)
            np.testing.assert_allclose(soft[np.arange(8), y0], lam, atol=1e-6)
            if pasted[0].any():
                boxes += 1
                assert _is_filled_rectangle(pasted[0])
    assert boxes >= 8


def test_switch_between_mixup_and_cutmix():
    x, y = _distinct(n=400, size=8)
    splits = _load(x, y, batch_size=4, mixing=kdata.Mixing(mixup=1.0, cutmix=1.0, switch_prob=0.5))
    cut = mix = 0
    for xm, x0, *_ in _pairs(_batches(splits.dataset(training=True, epoch=0)),
                             _batches(_load(x, y, batch_size=4).dataset(training=True, epoch=0))):
        own, other = (xm == x0).all(axis=-1), (xm == x0[::-1]).all(axis=-1)
        if (own | other).all() and other.any():
            cut += 1
        elif not (own | other).all():
            mix += 1
    # 100 batches, cutmix with probability 0.5 (some cutmix boxes are empty): std 5 batches
    assert cut + mix >= 90 and abs(cut - mix) < 30


def test_mixing_stops_at_off_epoch():
    x, y = _distinct(n=32)
    splits = _load(x, y, batch_size=8, augment="crop", mixing=kdata.Mixing(mixup=1.0, off_epoch=1))
    plain = _load(x, y, batch_size=8, augment="crop")
    through = _batches(splits.epochs(0, 3))          # the epoch as a tensor (flat_map)
    for e in range(3):
        ours, ref = _batches(splits.dataset(training=True, epoch=e)), _batches(plain.dataset(training=True,
                                                                                             epoch=e))
        assert _same(ours, through[4 * e:4 * e + 4])
        one_hot = all(np.array_equal(s, np.eye(32, dtype=np.float32)[y0]) and np.array_equal(xm, x0)
                      for (xm, s), (x0, y0) in zip(ours, ref))
        assert one_hot == (e >= 1)


def test_mixed_class_weights():
    x = np.random.default_rng(1).uniform(0, 255, (40, 8, 8)).astype(np.float32)
    y = np.array([0] * 30 + [1] * 10)
    mixed = _load(x, y, batch_size=8, class_weight="balanced", mixing=kdata.Mixing(mixup=1.0))
    plain = _load(x, y, batch_size=8, class_weight="balanced")
    w_class = mixed.class_weights
    checked = 0
    for e in range(3):
        for (xm, soft, sw), (x0, y0, w0) in zip(_batches(mixed.dataset(training=True, epoch=e)),
                                                _batches(plain.dataset(training=True, epoch=e))):
            np.testing.assert_allclose(w0, w_class[y0], rtol=1e-6)
            differ = np.flatnonzero(y0 != y0[::-1])
            if len(differ):
                lam = soft[differ[0], y0[differ[0]]]
                np.testing.assert_allclose(sw, lam * w0 + (1 - lam) * w0[::-1], rtol=1e-5)
                checked += 1
            np.testing.assert_allclose(soft @ w_class, sw, rtol=1e-5)
    assert checked >= 6
    fixed = next(iter(mixed.dataset("train")))
    assert fixed[1].dtype == tf.float32 and fixed[1].shape == (8, 2) and len(fixed) == 3


def test_train_stream_mixes_and_is_seeded():
    x, y = _distinct(n=32)

    def first():
        return next(iter(_load(x, y, batch_size=8, mixing=kdata.Mixing(mixup=1.0, off_epoch=0)).train))

    a, b = first(), first()
    np.testing.assert_array_equal(a[0], b[0])
    assert float(tf.reduce_max(a[1][0])) < 1.0        # mixed: off_epoch does not apply to the stream


def test_validation_and_test_batches_never_change():
    x, y = _random_images(n=60)
    plain = _load(x, y, batch_size=8, val_fraction=0.2, test_fraction=0.2)
    busy = _load(x, y, batch_size=8, val_fraction=0.2, test_fraction=0.2, augment="randaugment", erase=1.0,
                 class_weight="balanced", mixing=kdata.Mixing(mixup=1.0, cutmix=1.0))
    for split in ("val", "test"):
        ref = _batches(getattr(plain, split))
        assert _same(_batches(getattr(busy, split)), ref)
        assert _same(_batches(busy.dataset(split)), ref)
        assert all(len(b) == 2 and b[1].dtype == np.int32 for b in ref)


def test_with_mixing_is_a_copy():
    x, y = _random_images()
    splits = _load(x, y, batch_size=8, augment="crop", class_weight="balanced")
    mixing = kdata.Mixing(mixup=0.2, cutmix=1.0, prob=0.5, off_epoch=4)
    mixed = splits.with_mixing(mixing)
    assert splits.mixing is None and not splits.soft_labels and mixed.mixing == mixing and mixed.soft_labels
    assert "mixing=Mixing(mixup=0.2, cutmix=1.0, prob=0.5, switch_prob=0.5, off_epoch=4)" in repr(mixed)
    assert "augment_magnitude=9" in repr(mixed)
    assert next(iter(mixed.train))[1].shape == (8, 3) and next(iter(splits.train))[1].shape == (8,)
    assert _same(_batches(mixed.with_mixing(None).dataset(training=True, epoch=1)),
                 _batches(splits.dataset(training=True, epoch=1)))
    assert not kdata.Mixing().active and kdata.Mixing(cutmix=0.5).active
    assert not splits.with_mixing(kdata.Mixing()).soft_labels     # an inactive Mixing leaves int labels


@pytest.mark.parametrize("kwargs,match", [
    ({"augment_magnitude": 11},
     r"`augment_magnitude` must be .* in \[0, 10\]. Received: augment_magnitude=11"),
    ({"augment_magnitude": True}, "augment_magnitude=True"),
    ({"erase": 1.5}, r"`erase` must be .* in \[0, 1\]. Received: erase=1.5"),
    ({"erase": float("nan")}, "erase=nan"),
    ({"mixing": {"mixup": 0.2}}, "`mixing` must be None or a kcnn.data.Mixing"),
    ({"augment": "mixup"}, "'photo', 'randaugment', 'trivialaugment'"),
])
def test_bad_values(kwargs, match):
    x, y = _random_images(n=8)
    with pytest.raises(ValueError, match=match):
        _load(x, y, **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    ({"mixup": -1}, r"`mixup` must be a number >= 0 .*mixup=-1"),
    ({"cutmix": "1"}, "cutmix='1'"),
    ({"prob": 1.5}, r"`prob` must be a probability in \[0, 1\]"),
    ({"switch_prob": -0.1}, "switch_prob=-0.1"),
    ({"off_epoch": -1}, "`off_epoch` must be None .* off_epoch=-1"),
    ({"off_epoch": 2.0}, "off_epoch=2.0"),
])
def test_bad_mixing(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kdata.Mixing(**kwargs)


# --------------------------------------------------------------------------------------------------------
# augment_grid
# --------------------------------------------------------------------------------------------------------

def test_augment_grid_writes_a_png(tmp_path):
    import matplotlib.image
    x, y = _random_images(n=24)
    splits = _load(x, y, batch_size=8, augment="photo", erase=0.25, mixing=kdata.Mixing(mixup=0.4),
                   class_names=["bag", "shirt", "shoe"])
    path = plots.augment_grid(splits, tmp_path / "grid.png", epoch=1, count=10)
    assert path == tmp_path / "grid.png" and path.stat().st_size > 0
    assert matplotlib.image.imread(path).shape[:2] == (600, 760)   # 3 x 4 panels, 2.0 x 1.9 in, 100 dpi
    assert plots._label_title(np.array([0.38, 0.0, 0.62], np.float32), ["bag", "shirt", "shoe"]) == \
        "shoe .62 / bag .38"
    assert plots._label_title(np.eye(3, dtype=np.float32)[1], ["bag", "shirt", "shoe"]) == "shirt"
    with pytest.raises(ValueError, match="count=0"):
        plots.augment_grid(splits, tmp_path / "none.png", count=0)
