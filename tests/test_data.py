"""Tests of kcnn.data: every source on tiny data, splits, subsets, determinism, augmentation and errors."""
import io
import socket
import time
import warnings

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kcnn import data as kdata

DIGITS_TOTAL = 1797


def first_batch(ds):
    x, y = next(iter(ds))
    return x.numpy(), y.numpy()


@pytest.fixture(scope="module")
def digits16():
    return kdata.load("digits", image_size=16)


# --------------------------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------------------------

def test_digits_splits_use_every_image_stratified(digits16):
    sizes = digits16.num_examples
    assert sizes == {"train": 1258, "val": 180, "test": 359}
    assert sum(sizes.values()) == DIGITS_TOTAL
    assert digits16.class_names == [str(i) for i in range(10)]
    from sklearn.datasets import load_digits
    per_class = np.bincount(load_digits().target)
    for split, n in sizes.items():
        counts = np.bincount(digits16.arrays[split][1], minlength=10)
        assert counts.sum() == n
        np.testing.assert_allclose(counts, per_class * n / DIGITS_TOTAL, atol=1.0)


def test_digits_pixels_are_the_rendered_counts(digits16):
    from sklearn.datasets import load_digits
    expected = kdata.render_counts(load_digits().images, 16).numpy()
    got = np.concatenate([digits16.arrays[s][0] for s in kdata.SPLITS])
    assert got.shape == (DIGITS_TOTAL, 16, 16, 3) and got.dtype == np.float32
    assert got.min() == 0.0 and got.max() == 255.0
    np.testing.assert_allclose(np.sort(got.sum(axis=(1, 2, 3))), np.sort(expected.sum(axis=(1, 2, 3))),
                               rtol=1e-5)
    np.testing.assert_array_equal(got[..., 0], got[..., 2])


def test_batches_have_the_promised_types_and_shapes():
    splits = kdata.load("digits", image_size=(12, 20), batch_size=50)
    x, y = first_batch(splits.train)
    assert x.shape == (50, 12, 20, 3) and x.dtype == np.float32 and y.dtype == np.int32
    assert 0.0 <= x.min() and x.max() <= 255.0
    assert splits.image_size == (12, 20) and splits.num_classes == 10
    assert sum(int(b[1].shape[0]) for b in splits.test) == splits.num_examples["test"]
    assert splits.train.element_spec[0].shape.as_list() == [None, 12, 20, 3]
    augmented = kdata.load("digits", image_size=(12, 20), augment="standard")
    assert augmented.train.element_spec[0].shape.as_list() == [None, 12, 20, 3]
    assert augmented.train.element_spec[1].shape.as_list() == [None]


def test_val_pipeline_equals_arrays(digits16):
    x = np.concatenate([b[0].numpy() for b in digits16.val])
    y = np.concatenate([b[1].numpy() for b in digits16.val])
    np.testing.assert_array_equal(x, digits16.arrays["val"][0])
    np.testing.assert_array_equal(y, digits16.arrays["val"][1])


def test_plain_train_dataset_is_in_a_fixed_order(digits16):
    a = first_batch(digits16.dataset("train", batch_size=64))
    b = first_batch(digits16.dataset("train", batch_size=64))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], digits16.arrays["train"][1][:64])


@pytest.mark.parametrize("k", [1, 3])
def test_per_class_subset(digits16, k):
    splits = kdata.load("digits", image_size=16, per_class=k)
    assert splits.num_examples == {"train": 10 * k, "val": 180, "test": 359}
    assert np.bincount(splits.arrays["train"][1]).tolist() == [k] * 10
    np.testing.assert_array_equal(splits.arrays["test"][0], digits16.arrays["test"][0])


def test_per_class_subsets_are_nested():
    one = kdata.load("digits", image_size=8, per_class=1).arrays["train"][0]
    two = kdata.load("digits", image_size=8, per_class=2).arrays["train"][0]
    flat_two = {im.tobytes() for im in two}
    assert sum(im.tobytes() in flat_two for im in one) == 10


def test_limit_is_a_stratified_subset():
    splits = kdata.load("digits", image_size=8, limit=55)
    assert splits.num_examples["train"] == 55
    counts = np.bincount(splits.arrays["train"][1], minlength=10)
    assert counts.min() >= 5 and counts.max() <= 6


# --------------------------------------------------------------------------------------------------------
# determinism and augmentation
# --------------------------------------------------------------------------------------------------------

def test_same_seed_same_batches_other_seed_other_batches():
    def load(seed):
        return kdata.load("digits", image_size=16, seed=seed, augment="standard")

    a, b, c = load(0), load(0), load(1)
    xa, ya = first_batch(a.train)
    xb, yb = first_batch(b.train)
    xc, yc = first_batch(c.train)
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(xa, xc)
    assert not np.array_equal(a.arrays["test"][1], c.arrays["test"][1])
    second_epoch = first_batch(a.train)     # reshuffled and re-augmented, deterministically
    assert not np.array_equal(second_epoch[0], xa)
    np.testing.assert_array_equal(second_epoch[0], first_batch(b.train)[0])


def _crop_offsets(out, image, pad, flips):
    """For each output image, the (dy, dx, flipped) of the crop of the zero-padded ``image`` that it is."""
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    h, w = image.shape[:2]
    found = []
    for o in out:
        match = [(dy, dx, f) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1) for f in flips
                 if np.array_equal(o, (padded[dy:dy + h, dx:dx + w])[:, ::-1 if f else 1])]
        assert len(match) == 1
        found.append(match[0])
    return found


@pytest.mark.parametrize("augment,flips", [("crop", (False,)), ("standard-noflip", (False,)),
                                           ("standard", (False, True))])
def test_augmentation_is_a_padded_crop_and_maybe_a_flip(augment, flips):
    image = (np.arange(64, dtype=np.float32).reshape(8, 8, 1) % 50 + 1) * np.array([1, 2, 3], np.float32)
    x = np.repeat(image[None], 96, axis=0)
    y = np.arange(96) % 2
    splits = kdata.load((x, y), image_size=8, batch_size=96, augment=augment, val_fraction=0, test_fraction=0)
    out, labels = first_batch(splits.train)
    assert splits.augment == ("crop" if augment != "standard" else "standard")
    found = _crop_offsets(out, image, 1, flips)
    assert len({(dy, dx) for dy, dx, _ in found}) == 9
    n_flipped = sum(f for _, _, f in found)
    assert (n_flipped == 0) if augment != "standard" else (20 < n_flipped < 76)
    assert sorted(labels.tolist()) == sorted(y.tolist())


def test_augment_pad_scales_with_image_size():
    x = np.full((4, 64, 64), 200, np.uint8)
    splits = kdata.load((x, np.array([0, 1, 0, 1])), image_size=64, augment="crop", val_fraction=0,
                        test_fraction=0, seed=3)
    zero_rows = 0
    for _ in range(8):
        out = first_batch(splits.train)[0]
        zero_rows = max(zero_rows, int((out[..., 0].max(axis=2) == 0).sum(axis=1).max()))
    assert 4 < zero_rows <= 8   # pad = 64 / 8 = 8 px


def _epoch_batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def _same_batches(a, b):
    return len(a) == len(b) and all(np.array_equal(xa, xb) and np.array_equal(ya, yb)
                                    for (xa, ya), (xb, yb) in zip(a, b))


@pytest.mark.parametrize("augment", [None, "standard"])
def test_epochs_are_the_epoch_datasets_back_to_back(augment):
    def load():
        return kdata.load("digits", image_size=8, batch_size=200, seed=7, augment=augment)

    splits = load()
    steps = splits.steps_per_epoch()
    assert steps == 7 and splits.steps_per_epoch("test") == 2        # 1258 / 200 and 359 / 200, rounded up
    three = _epoch_batches(splits.dataset("train", training=True, epoch=3))
    four = _epoch_batches(splits.dataset("train", training=True, epoch=4))
    both = _epoch_batches(splits.epochs(3, 5))
    assert len(three) == len(four) == steps and len(both) == 2 * steps
    assert _same_batches(both, three + four)
    # a fresh object of the same seed (a resumed run) sees the same epoch 4, pixels and all
    assert _same_batches(_epoch_batches(load().dataset("train", training=True, epoch=4)), four)
    assert _same_batches(_epoch_batches(load().epochs(4, 5)), four)
    # iterating again gives the same epoch again; another epoch is another order
    assert _same_batches(_epoch_batches(splits.dataset("train", training=True, epoch=np.int64(4))), four)
    assert not np.array_equal(three[0][1], four[0][1])
    assert sorted(np.concatenate([y for _, y in three]).tolist()) == sorted(splits.arrays["train"][1].tolist())
    # the plain train pipeline is still reshuffled each time it is iterated
    assert not np.array_equal(first_batch(splits.train)[1], first_batch(splits.train)[1])


def test_keras_fit_resumed_from_epochs_sees_each_epoch_once_in_order():
    import keras

    splits = kdata.load("digits", image_size=8, batch_size=400, seed=1)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=True)
    seen, train_step = [], model.train_step

    def recording_step(data):
        seen.append(data[1].numpy().copy())
        return train_step(data)

    model.train_step = recording_step
    model.fit(splits.epochs(1, 3), steps_per_epoch=splits.steps_per_epoch(), epochs=3, initial_epoch=1,
              shuffle=False, verbose=0)
    expected = [y for e in (1, 2) for _, y in _epoch_batches(splits.dataset("train", training=True, epoch=e))]
    assert len(seen) == len(expected) == 8
    assert all(np.array_equal(a, b) for a, b in zip(seen, expected))


def test_epoch_may_be_a_tensor_and_needs_training(digits16):
    by_int = _epoch_batches(digits16.dataset("train", training=True, epoch=2, batch_size=500))
    by_tensor = _epoch_batches(digits16.dataset("train", training=True, epoch=tf.constant(2, tf.int64),
                                                batch_size=500))
    assert _same_batches(by_int, by_tensor)
    with pytest.raises(ValueError, match="training=True"):
        digits16.dataset("train", epoch=2)
    for bad in (-1, 1.5, True, tf.constant([1, 2])):
        with pytest.raises(ValueError, match="epoch="):
            digits16.dataset("train", training=True, epoch=bad)
    with pytest.raises(ValueError, match="end"):
        digits16.epochs(3, 2)
    assert len(_epoch_batches(digits16.epochs(2, 2))) == 0


def test_epochs_with_a_different_seed_differ():
    a = kdata.load("glyphs:200", image_size=8, batch_size=200, seed=1, augment="crop")
    b = kdata.load("glyphs:200", image_size=8, batch_size=200, seed=2, augment="crop")
    assert not _same_batches(_epoch_batches(a.epochs(0, 1)), _epoch_batches(b.epochs(0, 1)))


# --------------------------------------------------------------------------------------------------------
# glyphs
# --------------------------------------------------------------------------------------------------------

def test_make_glyphs_is_deterministic_balanced_and_in_range():
    a, la = kdata.make_glyphs(200, seed=3)
    b, lb = kdata.make_glyphs(200, seed=3)
    c, _ = kdata.make_glyphs(200, seed=4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, c)
    assert a.shape == (200, 8, 8) and a.dtype == np.uint8
    assert np.bincount(la).tolist() == [20] * 10
    assert a.min() == 0 and a.max() == 16


def test_glyphs_look_like_the_digits():
    counts, _ = kdata.make_glyphs(2000, seed=0)
    columns = counts.mean(axis=(0, 1))
    assert columns[[0, 7]].max() < 1.0 and columns[2:6].min() > 5.0   # centred and narrow, like the digits
    assert 3.5 < counts.mean() < 6.0                                   # digits: 4.9


def test_glyphs_classify_the_digits_zero_shot():
    from sklearn.datasets import load_digits
    from sklearn.neighbors import KNeighborsClassifier

    counts, labels = kdata.make_glyphs(3000, seed=0)
    digits = load_digits()
    knn = KNeighborsClassifier(5).fit(counts.reshape(len(counts), -1), labels)
    # chance 0.1; the font alone 0.56, with the pen-drawn forms and narrow glyphs widened 0.79
    assert knn.score(digits.images.reshape(len(digits.images), -1), digits.target) > 0.7


def test_glyphs_mix_font_and_pen_forms():
    masks, points, font, pen = kdata.glyph_bank("0123456789")
    assert font[:, 1].tolist() == [25] * 10                       # 5 font sizes x 5 stroke widths
    assert pen[:, 1].min() >= 16 and pen[1, 1] == 48              # 1: three pen forms x 4 widths x 4 wobbles
    assert len(masks) == len(points) == font[:, 1].sum() + pen[:, 1].sum()
    assert kdata.glyph_bank("AB").pen[:, 1].tolist() == [0, 0]    # letters: the font only
    assert not masks.flags.writeable                              # the cached bank cannot be changed
    counts, labels = kdata.make_glyphs(2000, seed=0)
    ones = counts[labels == 1]
    assert (ones.sum(axis=1) > 4).sum(axis=1).mean() > 4.0        # a 1 is widened like the digits' (4.9 columns)


def test_glyphs_source():
    splits = kdata.load("glyphs:300", image_size=(24, 20), seed=5)
    assert splits.class_names == list("0123456789")
    assert splits.num_examples == {"train": 210, "val": 30, "test": 60}
    x, y = first_batch(splits.train)
    assert x.shape == (32, 24, 20, 3) and x.min() >= 0.0 and x.max() <= 255.0
    assert np.bincount(splits.arrays["val"][1]).tolist() == [3] * 10
    assert splits.source == "glyphs:300"
    again = kdata.load("glyphs", num_examples=300, image_size=(24, 20), seed=5)
    np.testing.assert_array_equal(again.arrays["test"][0], splits.arrays["test"][0])


def test_shapes_is_an_old_spelling_of_glyphs():
    with pytest.warns(DeprecationWarning, match="glyphs:120:AB"):
        old = kdata.load("shapes:120:AB", image_size=8, seed=2)
    new = kdata.load("glyphs:120:AB", image_size=8, seed=2)
    assert old.source == new.source == "glyphs:120:AB" and old.class_names == ["A", "B"]
    np.testing.assert_array_equal(old.arrays["train"][0], new.arrays["train"][0])
    with pytest.warns(DeprecationWarning):
        assert kdata.load("shapes", num_examples=30, image_size=8).source == "glyphs"


def test_glyphs_with_other_characters():
    splits = kdata.load("glyphs:90:ABC", image_size=8, val_fraction=0, test_fraction=0)
    assert splits.class_names == ["A", "B", "C"]
    assert np.bincount(splits.arrays["train"][1]).tolist() == [30, 30, 30]


def test_glyphs_share_the_digits_resize():
    counts, _ = kdata.make_glyphs(10, seed=0)
    splits = kdata.load("glyphs:10", image_size=16, val_fraction=0, test_fraction=0)
    expected = kdata.render_counts(counts, 16).numpy()
    np.testing.assert_allclose(np.sort(splits.arrays["train"][0].sum(axis=(1, 2, 3))),
                               np.sort(expected.sum(axis=(1, 2, 3))), rtol=1e-6)
    assert kdata.render_counts(np.array([[[0, 16]]]), (1, 2)).numpy()[0, 0].tolist() == [[0, 0, 0], [255] * 3]


# --------------------------------------------------------------------------------------------------------
# arrays
# --------------------------------------------------------------------------------------------------------

def test_array_source_grayscale_resized_with_names():
    x = np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    y = np.arange(40) % 4
    splits = kdata.load((x, y), image_size=14, class_names=["a", "b", "c", "d"])
    assert splits.class_names == ["a", "b", "c", "d"]
    assert splits.num_examples == {"train": 28, "val": 4, "test": 8}
    xt = splits.arrays["train"][0]
    assert xt.shape == (28, 14, 14, 3)
    np.testing.assert_array_equal(xt[..., 0], xt[..., 1])


def test_array_source_rgba_keeps_rgb():
    x = np.zeros((6, 4, 4, 4), np.uint8)
    x[..., 0], x[..., 1], x[..., 3] = 10, 20, 255
    splits = kdata.load((x, [0, 1, 0, 1, 0, 1]), image_size=4, val_fraction=0, test_fraction=0)
    assert splits.arrays["train"][0][0, 0, 0].tolist() == [10.0, 20.0, 0.0]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_array_source_refuses_non_finite_pixels(bad):
    x = np.full((10, 4, 4), 100.0, np.float32)
    x[[2, 7], 1, 1] = bad
    with pytest.raises(kdata.DataError, match=r"\(x, y\) source has 2 of 10 images with NaN or infinite") as info:
        kdata.load((x, np.arange(10) % 2), image_size=4)
    assert "\n" not in str(info.value) and "[2, 7]" in str(info.value)


# --------------------------------------------------------------------------------------------------------
# folders
# --------------------------------------------------------------------------------------------------------

def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8), mode).save(path)


def _make_class_folder(root, counts=None):
    counts = counts or {"cat": 3, "dog": 3}
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            _png(root / name / f"{i}.png", np.full((8, 8, 3), 10 * c + i, np.uint8))


def test_folder_source_skips_bad_files_and_reports_empty_classes(tmp_path):
    root = tmp_path / "pets"
    _png(root / "cat" / "a_rgb.png", np.full((8, 8, 3), (200, 10, 30)))
    _png(root / "cat" / "b_gray.png", np.full((8, 8), 100), "L")
    _png(root / "cat" / "c_rgba.png", np.full((8, 8, 4), (0, 200, 0, 50)), "RGBA")
    _png(root / "dog" / "d.png", np.full((16, 12, 3), 7))            # another size: resized
    Image.fromarray(np.full((8, 8, 3), 60, np.uint8)).save(root / "dog" / "e.bmp")
    palette = Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).convert("P", palette=Image.ADAPTIVE)
    palette.save(root / "dog" / "f.gif")
    Image.fromarray(np.full((8, 8, 3), 120, np.uint8)).save(root / "dog" / "g.JPG")
    good = (root / "cat" / "a_rgb.png").read_bytes()
    (root / "dog" / "broken.png").write_bytes(good[: len(good) // 2])
    (root / "dog" / "note.jpg").write_text("not an image")
    (root / "dog" / "readme.txt").write_text("ignored: not an image extension")
    (root / "empty").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = kdata.load(root, image_size=8, val_fraction=0, test_fraction=0)
    messages = [str(w.message) for w in caught]
    assert any("skipped 2 of 9 image files" in m and "note.jpg" in m and "broken.png" in m for m in messages)
    assert any("1 class folder(s) without images" in m and "empty" in m for m in messages)
    assert splits.class_names == ["cat", "dog"]
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in splits.skipped) == ["broken.png", "note.jpg"]
    assert all(reason for _, reason in splits.skipped)
    assert splits.num_examples == {"train": 7, "val": 0, "test": 0}
    assert splits.arrays["val"][0].shape == (0, 8, 8, 3) and splits.arrays["val"][1].shape == (0,)
    x, y = splits.arrays["train"]
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert x.shape == (7, 8, 8, 3)
    assert x[0, 0, 0].tolist() == [200, 10, 30]
    assert x[1, 0, 0].tolist() == [100, 100, 100]      # grayscale -> 3 channels
    assert x[2, 0, 0].tolist() == [0, 200, 0]           # alpha dropped
    assert x[3, 0, 0].tolist() == [7, 7, 7]
    assert x[5, 0, 0].tolist() == [90, 90, 90]
    assert abs(x[6].mean() - 120) < 3                   # JPEG, upper-case extension


def test_folder_skips_empty_text_and_truncated_files(tmp_path):
    root = tmp_path / "pets"
    _make_class_folder(root, {"cat": 3, "dog": 3})
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (root / "cat" / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "cat" / "empty.png").write_bytes(b"")
    (root / "dog" / "text.jpg").write_text("this is text, not a JPEG")
    with pytest.warns(UserWarning, match="skipped 3 of 9 image files"):
        splits = kdata.load(root, image_size=8, val_fraction=0, test_fraction=0)
    reasons = {p.rsplit("/", 1)[-1]: r for p, r in splits.skipped}
    assert sorted(reasons) == ["empty.png", "text.jpg", "truncated.jpg"]
    assert all(reasons.values()) and "truncated" in reasons["truncated.jpg"]
    assert splits.num_examples["train"] == 6


def test_a_split_that_would_be_empty_is_refused_before_training(tmp_path):
    root = tmp_path / "tiny"
    _make_class_folder(root, {"a": 2, "b": 2})
    with pytest.raises(kdata.DataError) as info:
        kdata.load(root, image_size=8)
    message = str(info.value)
    assert "\n" not in message and "val split" in message and "val_fraction=0.1" in message
    assert "3 images per class (2 classes)" in message and "val_fraction=0 to have no val split" in message
    splits = kdata.load(root, image_size=8, val_fraction=0, test_fraction=0.25)
    assert splits.num_examples == {"train": 3, "val": 0, "test": 1}
    _make_class_folder(tmp_path / "three", {"a": 3, "b": 3})
    assert kdata.load(tmp_path / "three", image_size=8).num_examples == {"train": 4, "val": 1, "test": 1}
    with pytest.raises(kdata.DataError, match="test split.*test_fraction=0.0001"):
        kdata.load("digits", image_size=8, per_class=1, val_fraction=0.2, test_fraction=0.0001)


def test_an_empty_split_folder_or_carved_split_is_refused(tmp_path):
    root = tmp_path / "ds"
    _make_class_folder(root / "train", {"x": 3, "y": 3})
    (root / "val" / "x").mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(kdata.DataError, match="val folder.*no decodable images"):
            kdata.load(root, image_size=8)
    (root / "val" / "x").rmdir()
    (root / "val").rmdir()
    with pytest.raises(kdata.DataError, match="val split of .* would be empty"):
        kdata.load(root, image_size=8, val_fraction=0.05, test_fraction=0.3)


def test_folder_source_splits_stratified(tmp_path):
    _make_class_folder(tmp_path / "d", {"a": 10, "b": 10, "c": 10})
    splits = kdata.load(str(tmp_path / "d"), image_size=8, batch_size=4)
    assert splits.num_examples == {"train": 21, "val": 3, "test": 6}
    assert np.bincount(splits.arrays["test"][1]).tolist() == [2, 2, 2]
    assert first_batch(splits.train)[0].shape == (4, 8, 8, 3)


def test_split_folders_are_used_as_given(tmp_path):
    root = tmp_path / "ds"
    _make_class_folder(root / "train", {"x": 4, "y": 5})
    _make_class_folder(root / "val", {"x": 1, "y": 2})
    _make_class_folder(root / "test", {"x": 3, "y": 1})
    splits = kdata.load(root, image_size=8)
    assert splits.class_names == ["x", "y"]
    assert splits.num_examples == {"train": 9, "val": 3, "test": 4}
    assert splits.arrays["test"][1].tolist() == [0, 0, 0, 1]


def test_missing_val_folder_is_carved_from_train(tmp_path):
    root = tmp_path / "ds"
    _make_class_folder(root / "train", {"x": 10, "y": 10})
    _make_class_folder(root / "test", {"x": 2, "y": 2})
    splits = kdata.load(root, image_size=8, val_fraction=0.2)
    assert splits.num_examples == {"train": 16, "val": 4, "test": 4}
    assert np.bincount(splits.arrays["val"][1]).tolist() == [2, 2]


def test_folder_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        kdata.load(missing, image_size=8)
    (tmp_path / "none" / "a").mkdir(parents=True)
    (tmp_path / "none" / "b").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="No images.*none"):
            kdata.load(tmp_path / "none", image_size=8)
        _make_class_folder(tmp_path / "one", {"only": 3})
        with pytest.raises(ValueError, match="one.*has 1 class folder"):
            kdata.load(tmp_path / "one", image_size=8)


# --------------------------------------------------------------------------------------------------------
# tensorflow-datasets (mocked; never the network)
# --------------------------------------------------------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch):
    import tensorflow_datasets as tfds

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the network or download")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", refuse)
    return tfds


def test_tfds_cifar10_mocked(no_network):
    with no_network.testing.mock_data(num_examples=12):
        splits = kdata.load("tfds:cifar10", image_size=32, batch_size=5)
        x, y = first_batch(splits.train)
        small = kdata.load("tfds:cifar10", image_size=16, batch_size=5)
        xs = first_batch(small.val)[0]
    assert len(splits.class_names) == 10
    assert splits.num_examples == {"train": 12, "val": 12, "test": 12}   # mock_data serves every split
    assert x.shape == (5, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
    assert 0 <= x.min() and x.max() <= 255 and 0 <= y.min() and y.max() < 10
    assert xs.shape == (5, 16, 16, 3)


def test_tfds_grayscale_becomes_rgb(no_network):
    with no_network.testing.mock_data(num_examples=4):
        splits = kdata.load("tfds:mnist", image_size=28)
        x = splits.arrays["test"][0]
    assert x.shape == (4, 28, 28, 3)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


def _numbered_as_dataset(n, splits=("train", "test")):
    """A mock ``_as_dataset`` with only ``splits``; example i has label i % 10 and every pixel i."""
    def as_dataset(self, split, **kwargs):
        name = str(split)
        if not any(name.startswith(s) for s in splits):
            raise ValueError(f"Unknown split {name!r}")
        i = np.arange(n)
        return tf.data.Dataset.from_tensor_slices({
            "image": np.broadcast_to(i[:, None, None, None], (n, 32, 32, 3)).astype(np.uint8),
            "label": (i % 10).astype(np.int64), "id": i.astype(str)})
    return as_dataset


def test_tfds_missing_validation_is_carved_from_train(no_network):
    with no_network.testing.mock_data(as_dataset_fn=_numbered_as_dataset(40)):
        splits = kdata.load("tfds:cifar10", image_size=32, val_fraction=0.25)
        ids = {s: sorted(set(splits.arrays[s][0][:, 0, 0, 0].astype(int).tolist())) for s in ("train", "val")}
    assert splits.num_examples == {"train": 30, "val": 10, "test": 40}
    assert ids["train"] == list(range(30)) and ids["val"] == list(range(30, 40))


def test_tfds_per_class_takes_the_first_of_each_class(no_network):
    with no_network.testing.mock_data(as_dataset_fn=_numbered_as_dataset(40)):
        splits = kdata.load("tfds:cifar10", image_size=32, per_class=2, val_fraction=0)
        x, y = splits.arrays["train"]
        limited = kdata.load("tfds:cifar10", image_size=32, limit=5, val_fraction=0)
        yl = limited.arrays["train"][1]
    assert splits.num_examples["train"] == 20
    assert np.bincount(y).tolist() == [2] * 10
    assert sorted(x[:, 0, 0, 0].astype(int).tolist()) == list(range(20))
    assert limited.num_examples["train"] == 5 and sorted(yl.tolist()) == [0, 1, 2, 3, 4]


def test_tfds_epochs_depend_only_on_seed_and_epoch(no_network):
    with no_network.testing.mock_data(as_dataset_fn=_numbered_as_dataset(40)):
        def load():
            return kdata.load("tfds:cifar10", image_size=32, batch_size=16, val_fraction=0.25, augment="crop")

        splits = load()
        four = _epoch_batches(splits.dataset("train", training=True, epoch=4))
        both = _epoch_batches(splits.epochs(3, 5))
        again = _epoch_batches(load().dataset("train", training=True, epoch=4))
        three = _epoch_batches(splits.dataset("train", training=True, epoch=3))
    assert splits.steps_per_epoch() == 2 and len(both) == 4
    assert _same_batches(both, three + four) and _same_batches(again, four)
    assert not np.array_equal(three[0][1], four[0][1])


@pytest.fixture(scope="module")
def prepared_tfds(tmp_path_factory):
    """A real, prepared 3-class tfds dataset of 10x10 grayscale images (train 30, test 9), built offline."""
    import tensorflow_datasets as tfds

    class KcnnDataTestTiny(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(10, 10, 1)),
                "label": tfds.features.ClassLabel(names=["zero", "one", "two"])})
            return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(30, 0), "test": self._generate_examples(9, 100)}

        def _generate_examples(self, n, base):
            for i in range(n):
                yield i, {"image": np.full((10, 10, 1), base + i, np.uint8), "label": i % 3}

    root = tmp_path_factory.mktemp("tfds")
    KcnnDataTestTiny(data_dir=str(root)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return "kcnn_data_test_tiny", root


def test_tfds_prepared_dataset_from_tfds_data_dir(no_network, prepared_tfds, monkeypatch):
    name, root = prepared_tfds
    monkeypatch.setenv("TFDS_DATA_DIR", str(root))
    splits = kdata.load(f"tfds:{name}", image_size=10, val_fraction=0.2)
    ids = {s: splits.arrays[s][0][:, 0, 0, 0].astype(int) for s in kdata.SPLITS}
    assert splits.class_names == ["zero", "one", "two"]
    assert splits.num_examples == {"train": 24, "val": 6, "test": 9}
    assert sorted(ids["test"].tolist()) == list(range(100, 109))
    assert sorted(np.concatenate([ids["train"], ids["val"]]).tolist()) == list(range(30))
    np.testing.assert_array_equal(splits.arrays["val"][1], ids["val"] % 3)
    x, y = first_batch(splits.train)
    assert x.shape == (24, 10, 10, 3) and np.array_equal(x[..., 0], x[..., 1])


def test_tfds_prepared_dataset_resized_subset_augmented(no_network, prepared_tfds):
    name, root = prepared_tfds
    splits = kdata.load(f"tfds:{name}", image_size=(6, 8), data_dir=root, per_class=2, augment="standard")
    assert splits.num_examples == {"train": 6, "val": 3, "test": 9}
    x, y = first_batch(splits.train)
    assert x.shape == (6, 6, 8, 3) and sorted(y.tolist()) == [0, 0, 1, 1, 2, 2]
    again = kdata.load(f"tfds:{name}", image_size=(6, 8), data_dir=root, per_class=2, augment="standard")
    np.testing.assert_array_equal(first_batch(again.train)[0], x)


def test_tfds_file_cache_one_per_split(no_network, prepared_tfds, tmp_path):
    name, root = prepared_tfds
    prefix = tmp_path / "cache" / "c"
    prefix.parent.mkdir()
    first = kdata.load(f"tfds:{name}", image_size=10, data_dir=root, cache=str(prefix))
    x1 = first.arrays["test"][0]
    index_files = sorted(p.name.rsplit("-", 1)[-1].split(".")[0] for p in prefix.parent.glob("*.index"))
    assert index_files == ["test"]
    again = kdata.load(f"tfds:{name}", image_size=10, data_dir=root, cache=str(prefix))
    np.testing.assert_array_equal(again.arrays["test"][0], x1)
    other = kdata.load(f"tfds:{name}", image_size=8, data_dir=root, cache=str(prefix))
    assert other.arrays["test"][0].shape == (9, 8, 8, 3)
    assert len(list(prefix.parent.glob("*.index"))) == 2


def test_tfds_not_prepared_says_how_to_prepare_fast_and_offline(monkeypatch, tmp_path):
    import tensorflow_datasets as tfds

    tried = []

    def record(*args, **kwargs):
        tried.append(args)
        raise OSError("a test refused a network connection")

    monkeypatch.setattr(socket.socket, "connect", record)
    monkeypatch.setattr(socket, "getaddrinfo", record)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", record)
    gcs = getattr(getattr(tfds.core, "utils", None), "gcs_utils", None)
    if gcs is not None and hasattr(gcs, "exists"):      # tfds' only way to look at its GCS bucket
        monkeypatch.setattr(gcs, "exists", record)
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as info:
        kdata.load("tfds:cifar10", image_size=32, data_dir=tmp_path)
    seconds = time.perf_counter() - start
    message = str(info.value)
    assert isinstance(info.value, kdata.DataNotFoundError)
    assert "not prepared" in message and str(tmp_path) in message and "tfds build cifar10" in message
    assert tried == []
    print(f"unprepared tfds dataset refused in {seconds:.3f} s")
    assert seconds < 20          # measured 0.2 s on a 2-core CPU machine; the promise is 5 s


def test_tfds_data_dir_comes_from_the_environment(no_network, tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "from_env"))
    with pytest.raises(kdata.DataNotFoundError, match="from_env"):
        kdata.load("tfds:cifar10", image_size=32)


def test_tfds_unknown_dataset(no_network):
    with pytest.raises(ValueError, match="no_such_dataset_xyz"):
        kdata.load("tfds:no_such_dataset_xyz", image_size=32)


# --------------------------------------------------------------------------------------------------------
# argument errors, throughput helper
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source,match", [
    ("digitz", "Unknown data source 'digitz'.*'digits'.*'glyphs'.*tfds"),
    ("glyphs:many", "glyphs:many"),
    ("glyphs:10:A", "two or more"),
    ("tfds:", "tfds:NAME"),
    (42, "int"),
])
def test_bad_sources(source, match):
    with pytest.raises(ValueError, match=match):
        kdata.load(source, image_size=8)


@pytest.mark.parametrize("kwargs,match", [
    ({"augment": "mixup"}, "'mixup'.*'standard'.*'crop'.*augment='mixup'"),
    ({"image_size": 0}, "image_size=0"),
    ({"image_size": (8, 8, 3)}, "image_size"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "below 1"),
    ({"limit": 5, "per_class": 1}, "not both"),
    ({"per_class": 500}, "fewer than per_class=500"),
    ({"limit": 5000}, "limit=5000"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"num_examples": 10}, "glyphs"),
    ({"cache": 3}, "cache=3"),
])
def test_bad_arguments(kwargs, match):
    kwargs = {"image_size": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        kdata.load("digits", **kwargs)


def test_array_source_errors():
    with pytest.raises(ValueError, match="differ in length"):
        kdata.load((np.zeros((3, 4, 4)), [0, 1]), image_size=4)
    with pytest.raises(ValueError, match="no name"):
        kdata.load((np.zeros((3, 4, 4)), [0, 1, 2]), image_size=4, class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        kdata.load((np.zeros((3, 4)), [0, 1, 0]), image_size=4)


def test_pipeline_throughput_counts_images(monkeypatch):
    """The rate is the images of the timed batches (the last, short batch of an epoch counts its own size; the
    warm-up batches not at all) over the time they took: with a clock that says one second, the count itself."""
    import types

    splits = kdata.load("glyphs:100", image_size=8, batch_size=16, augment="standard")
    assert splits.num_examples["train"] == 70  # batches of 16, 16, 16, 16, 6, then the split again
    clock = iter([100.0, 101.0, 200.0, 201.0, 300.0, 302.0])
    monkeypatch.setattr(kdata, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    assert kdata.pipeline_throughput(splits, steps=5, warmup=0) == 70.0           # one epoch: every image
    assert kdata.pipeline_throughput(splits, steps=7, warmup=0) == 70.0 + 32      # and two batches more
    assert kdata.pipeline_throughput(splits, steps=2, warmup=4, split="test") == (4 + 16) / 2
    monkeypatch.undo()
    rate = kdata.pipeline_throughput(splits, steps=3, warmup=1)
    assert isinstance(rate, float) and rate > 0
    with pytest.raises(ValueError, match="split='nope'"):
        kdata.pipeline_throughput(splits, split="nope")
