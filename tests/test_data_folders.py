"""Tests of the streaming image-folder source: in-memory vs streamed equality, caches, file checks, formats,
sharding."""
import io
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from kcnn import data as kdata
from kcnn.data import folders as kfolders
from kcnn.data import probe


def _save(path, image, fmt=None, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **kwargs)


def _unique_folder(root, counts=None, size=(12, 10)):
    """PNG images, one uniform colour per file (file k has red value k+1), in class folders."""
    counts = counts or {"a": 9, "b": 8, "c": 7}
    k = 0
    for name, n in counts.items():
        for i in range(n):
            k += 1
            _save(root / name / f"{i:03d}.png", Image.new("RGB", size, (k, 255 - k, (7 * k) % 256)))
    return k


def _photo_folder(root, per_class=6):
    """Textured JPEGs and PNGs of mixed sizes, so that resizing and decoding are really exercised."""
    rng = np.random.default_rng(0)
    for c in ("cat", "dog", "eel"):
        for i in range(per_class):
            h, w = rng.integers(20, 48, 2)
            array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            _save(root / c / f"{i}.{'jpg' if i % 2 else 'png'}", Image.fromarray(array))


def _epoch_batches(splits, first=0, end=2, shard=None):
    return [(x.numpy(), y.numpy()) for x, y in splits.epochs(first, end, shard=shard)]


def _equal_batches(a, b):
    return len(a) == len(b) and all(np.array_equal(xa, xb) and np.array_equal(ya, yb)
                                    for (xa, ya), (xb, yb) in zip(a, b))


def _delete_images(root):
    for dirpath, _, files in os.walk(root):
        for f in files:
            os.remove(os.path.join(dirpath, f))


# --------------------------------------------------------------------------------------------------------
# in memory vs streamed; caches
# --------------------------------------------------------------------------------------------------------

def test_streamed_and_in_memory_folders_give_the_same_batches(tmp_path):
    root = tmp_path / "photos"
    _photo_folder(root)
    kwargs = dict(image_size=16, batch_size=4, augment="standard", seed=3)
    memory = kdata.load(root, cache=True, **kwargs)          # small: decoded into memory
    stream = kdata.load(root, cache=False, **kwargs)         # decoded in the pipeline every epoch
    assert memory.num_examples == stream.num_examples == {"train": 12, "val": 2, "test": 4}
    assert memory.steps_per_epoch() == stream.steps_per_epoch() == 3
    reference = _epoch_batches(memory)
    assert len(reference) == 6
    assert _equal_batches(reference, _epoch_batches(stream))
    for split in ("train", "val", "test"):
        assert np.array_equal(memory.arrays[split][0], stream.arrays[split][0])
        assert np.array_equal(memory.arrays[split][1], stream.arrays[split][1])
    assert not np.array_equal(reference[0][0], reference[3][0])      # epochs differ
    _delete_images(root)          # the memory copy needs no files; the stream reads them each epoch
    assert _equal_batches(reference, _epoch_batches(memory))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blind = _epoch_batches(stream, 0, 1)
    assert len(blind) == 3 and all(not x.any() for x, _ in blind)
    assert len(stream.skipped) == 12 and all("black image" in r for _, r in stream.skipped)


def test_the_same_files_land_in_the_same_splits_either_way(tmp_path, monkeypatch):
    root = tmp_path / "u"
    _unique_folder(root)
    memory = kdata.load(root, image_size=(12, 10), seed=5, val_fraction=0.2, test_fraction=0.2)
    monkeypatch.setattr(kfolders, "FOLDER_MEMORY_BYTES", 0)
    stream = kdata.load(root, image_size=(12, 10), seed=5, val_fraction=0.2, test_fraction=0.2)
    for split in ("train", "val", "test"):
        ids = memory.arrays[split][0][:, 0, 0, 0]
        assert np.array_equal(ids, stream.arrays[split][0][:, 0, 0, 0])
        assert len(set(ids.tolist())) == len(ids)


def test_memory_cache_fills_during_the_first_epoch(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    _photo_folder(root)
    kwargs = dict(image_size=16, batch_size=5, augment="crop", seed=1)
    reference = _epoch_batches(kdata.load(root, **kwargs), 0, 3)
    monkeypatch.setattr(kfolders, "FOLDER_MEMORY_BYTES", 0)      # too big for memory: stream, cache
    cached = kdata.load(root, cache="memory", **kwargs)
    assert _equal_batches(reference[:3], _epoch_batches(cached, 0, 1))
    _delete_images(root)
    assert _equal_batches(reference[3:], _epoch_batches(cached, 1, 3))
    assert cached.skipped == []


def test_file_cache_is_keyed_by_the_files_and_survives_them(tmp_path):
    root = tmp_path / "photos"
    _photo_folder(root)
    prefix = tmp_path / "cache" / "imgs"
    kwargs = dict(image_size=16, batch_size=4, augment="standard", seed=2)
    reference = _epoch_batches(kdata.load(root, cache=False, **kwargs), 0, 2)
    first = kdata.load(root, cache=str(prefix), **kwargs)
    assert _equal_batches(reference[:3], _epoch_batches(first, 0, 1))
    files = sorted(os.listdir(prefix.parent))
    assert len(files) == 3 and all(f.startswith("imgs-photos-") for f in files)
    assert sorted(f.rsplit("-", 1)[1] for f in files) == ["test.cache", "train.cache", "val.cache"]
    again = kdata.load(root, cache=prefix, **kwargs)                  # same key: same files, read back
    assert _equal_batches(reference[:3], _epoch_batches(again, 0, 1))
    assert sorted(os.listdir(prefix.parent)) == files
    other_size = kdata.load(root, cache=str(prefix), **{**kwargs, "image_size": 8})
    assert len(os.listdir(prefix.parent)) == 6 and other_size.arrays["val"][0].shape[1:] == (8, 8, 3)
    assert first.skipped == []
    victim = next((root / "cat").iterdir())
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    kdata.load(root, cache=str(prefix), **kwargs)                     # a changed file: a new key
    assert len(os.listdir(prefix.parent)) > 6
    _delete_images(root)
    assert _equal_batches(reference[3:], _epoch_batches(first, 1, 2))
    assert first.skipped == []


def test_an_unwritable_cache_path_is_refused_at_load(tmp_path, monkeypatch):
    root = tmp_path / "u"
    _unique_folder(root)
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(kdata.DataError, match="Cannot write the image cache file.*cache='memory' or False"):
        kdata.load(root, image_size=8, cache=str(tmp_path / "file" / "sub" / "c"))


# --------------------------------------------------------------------------------------------------------
# file checks and formats
# --------------------------------------------------------------------------------------------------------

def _truncated(fmt, size=(32, 32)):
    buffer = io.BytesIO()
    array = np.random.default_rng(1).integers(0, 256, size + (3,), dtype=np.uint8)
    image = Image.fromarray(array)
    image = image.convert("P") if fmt == "GIF" else image
    image.save(buffer, fmt)
    return buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3]


def _corrupt_png():
    """A PNG whose header and tail are intact but whose pixel data is broken: fails only at full decode."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"IDAT") + 24
    data[start:start + 40] = bytes(b ^ 0x55 for b in data[start:start + 40])
    return bytes(data)


@pytest.mark.parametrize("cache", [True, False])
def test_bad_files_are_skipped_and_named_and_epochs_keep_their_length(tmp_path, cache):
    root = tmp_path / "pets"
    _unique_folder(root, {"cat": 5, "dog": 5})
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "cat" / "text.png").write_text("not a PNG")
    (root / "cat" / "cut.jpg").write_bytes(_truncated("JPEG"))
    (root / "dog" / "cut.png").write_bytes(_truncated("PNG"))
    (root / "dog" / "cut.gif").write_bytes(_truncated("GIF"))
    (root / "dog" / "cut.bmp").write_bytes(_truncated("BMP"))
    (root / "dog" / "zz_corrupt.png").write_bytes(_corrupt_png())
    with pytest.warns(UserWarning, match="skipped 6 of 17 image files"):
        splits = kdata.load(root, image_size=8, batch_size=3, val_fraction=0, test_fraction=0, cache=cache)
    reasons = {p.rsplit("/", 1)[-1]: r for p, r in splits.skipped}
    # The in-memory split (cache=True, small) is decoded at load, so the corrupt PNG is named already.
    assert sorted(reasons) == ["cut.bmp", "cut.gif", "cut.jpg", "cut.png", "empty.jpg", "text.png"] + (
        ["zz_corrupt.png"] if cache else [])
    assert "empty" in reasons["empty.jpg"] and "truncated" in reasons["cut.jpg"] + reasons["cut.png"]
    assert splits.num_examples["train"] == 11 and splits.steps_per_epoch() == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = _epoch_batches(splits, 0, 2)
    assert len(batches) == 8 and sum(len(y) for _, y in batches) == 22
    black = [x for xs, _ in batches for x in xs if not x.any()]
    assert len(black) == 2                                   # the corrupt PNG, once per epoch
    corrupt = [r for p, r in splits.skipped if p.endswith("zz_corrupt.png")]
    assert len(corrupt) == 1 and "black image" in corrupt[0]


def _png_declaring(width, height):
    """The first chunks of a PNG whose IHDR declares ``width x height`` (8-bit RGB) and no pixel data: a
    decompression bomb's header, 57 bytes on disk."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("cache", [True, False])
def test_a_png_declaring_more_pixels_than_pillows_limit_is_skipped_and_named(tmp_path, cache):
    """tf.io.decode_png has no decompression-bomb limit: the header is read while listing and the file skipped
    there, before any decoder (TensorFlow's or Pillow's) sees it."""
    root = tmp_path / "pets"
    _unique_folder(root, {"cat": 5, "dog": 5})
    (root / "cat" / "bomb.png").write_bytes(_png_declaring(100_000, 100_000))
    assert probe.png_header_size(root / "cat" / "bomb.png") == (100_000, 100_000)
    with pytest.warns(UserWarning, match=r"skipped 1 of 11 image files .*bomb\.png \(too large"):
        splits = kdata.load(root, image_size=8, batch_size=5, val_fraction=0, test_fraction=0, cache=cache)
    [(path, reason)] = splits.skipped
    assert path.endswith("bomb.png")
    assert "100000 x 100000 = 10,000,000,000 pixels" in reason and "PIL.Image.MAX_IMAGE_PIXELS" in reason
    assert splits.num_examples["train"] == 10
    batches = _epoch_batches(splits, 0, 1)
    assert sum(len(y) for _, y in batches) == 10 and all(x.any() for xs, _ in batches for x in xs)
    assert len(splits.skipped) == 1  # nothing failed to decode afterwards


def test_the_pixel_limit_is_pillows_whichever_decoder_reads_the_file(tmp_path, monkeypatch):
    """With ``PIL.Image.MAX_IMAGE_PIXELS`` lowered, real 20x20 files are too large for the graph's PNG and JPEG
    decoders and for Pillow's path alike; the 12x10 images still load. Pillow alone would only warn below
    twice its limit (and TensorFlow not at all)."""
    root = tmp_path / "pets"
    _unique_folder(root, {"cat": 5, "dog": 5})                       # 12 x 10 = 120 pixels each
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8))
    _save(root / "cat" / "big.png", big)                             # tf.io.decode_png
    _save(root / "dog" / "big.jpg", big, quality=90)                 # tf.io.decode_jpeg
    _save(root / "dog" / "big_palette.png", big.convert("P", palette=Image.ADAPTIVE))  # Pillow
    decoders = {p.name: probe.check_file(p, (8, 8))[3] for p in sorted(root.rglob("big*"))}
    assert decoders == {"big.png": probe.PNG, "big.jpg": probe.JPEG + probe.JPEG_RATIOS.index(2),
                        "big_palette.png": probe.PILLOW}
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)              # 400 > 300 > 120
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # Pillow's own, at open of the JPEG
        with pytest.warns(UserWarning, match="skipped 3 of 13 image files"):
            splits = kdata.load(root, image_size=8, batch_size=5, val_fraction=0, test_fraction=0)
    reasons = {p.rsplit("/", 1)[-1]: r for p, r in splits.skipped}
    assert sorted(reasons) == ["big.jpg", "big.png", "big_palette.png"]
    assert all(r.startswith("too large: its header declares 20 x 20 = 400 pixels") and "(300;" in r
               for r in reasons.values())
    assert splits.num_examples["train"] == 10 and len(splits.arrays["train"][0]) == 10
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)             # Pillow's "no limit"
    assert kdata.load(root, image_size=8, batch_size=5, val_fraction=0, test_fraction=0).skipped == []


def _exif_rotated_jpeg(path):
    """A 16 wide x 8 high JPEG, left half red, right half blue, tagged 'rotate 90 degrees clockwise to view'.

    A viewer shows it 8 wide x 16 high, red on top."""
    array = np.zeros((8, 16, 3), np.uint8)
    array[:, :8] = (255, 0, 0)
    array[:, 8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(path, Image.fromarray(array), "JPEG", exif=exif.tobytes(), quality=95)


@pytest.mark.parametrize("cache", [True, False])
def test_every_pillow_mode_comes_out_rgb_and_upright(tmp_path, cache):
    root = tmp_path / "modes"
    a = root / "a"
    _save(a / "00_gray.png", Image.new("L", (16, 8), 100))
    _save(a / "01_gray.jpg", Image.new("L", (16, 8), 100), quality=95)
    _save(a / "02_palette.png", Image.new("RGB", (16, 8), (200, 10, 30)).convert("P", palette=Image.ADAPTIVE))
    palette = Image.new("RGB", (16, 8), (0, 100, 0)).convert("P", palette=Image.ADAPTIVE)
    _save(a / "03_palette_alpha.png", palette, transparency=0)
    _save(a / "04_rgba.png", Image.new("RGBA", (16, 8), (0, 200, 0, 50)))
    _save(a / "05_la.png", Image.new("LA", (16, 8), (70, 10)))
    _save(a / "06_cmyk.jpg", Image.new("CMYK", (16, 8), (0, 255, 255, 0)), quality=95)
    _save(a / "07_16bit.png", Image.fromarray(np.full((8, 16), 0x8080, np.uint16)))
    _save(a / "08_16bit_dark.png", Image.fromarray(np.full((8, 16), 257 * 10, np.uint16)))
    frames = [Image.new("RGB", (16, 8), c).convert("P", palette=Image.ADAPTIVE) for c in ((255, 0, 0), (0, 0, 255))]
    _save(a / "09_anim.gif", frames[0], save_all=True, append_images=frames[1:], duration=100, loop=0)
    _save(a / "10_bilevel.png", Image.new("1", (16, 8), 1))
    _save(a / "11_rgb.bmp", Image.new("RGB", (16, 8), (1, 2, 3)))
    _exif_rotated_jpeg(a / "12_rotated.jpg")
    _unique_folder(root, {"b": 2}, size=(16, 8))
    splits = kdata.load(root, image_size=(16, 8), val_fraction=0, test_fraction=0, cache=cache)
    assert splits.skipped == [] and splits.num_examples["train"] == 15
    x, _ = splits.arrays["train"]
    pixel = [x[i, 1, 1].tolist() for i in range(13)]
    assert pixel[0] == [100, 100, 100] and max(abs(v - 100) for v in pixel[1]) <= 2
    assert pixel[2] == [200, 10, 30] and pixel[3] == [0, 100, 0] and pixel[4] == [0, 200, 0]
    assert pixel[5] == [70, 70, 70]
    assert pixel[6][0] >= 250 and max(pixel[6][1:]) <= 5                  # CMYK red
    assert pixel[7] == [128, 128, 128] and pixel[8] == [10, 10, 10]        # 16-bit scaled to 8
    assert pixel[9] == [255, 0, 0]                                         # first frame
    assert pixel[10] == [255, 255, 255] and pixel[11] == [1, 2, 3]
    rotated = x[12]                                                        # 16 high x 8 wide: upright
    assert rotated[:6, :, 0].min() > 200 and rotated[:6, :, 2].max() < 60
    assert rotated[10:, :, 2].min() > 200 and rotated[10:, :, 0].max() < 60


# --------------------------------------------------------------------------------------------------------
# sharding
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cache", [True, False])
def test_shards_are_disjoint_cover_the_split_and_take_equal_steps(tmp_path, cache):
    root = tmp_path / "u"
    _unique_folder(root)                         # 24 files: train 17 (odd), val 2, test 5
    splits = kdata.load(root, image_size=(12, 10), batch_size=4, seed=7, cache=cache, augment=None)
    n = splits.num_examples["train"]
    assert n % 2 == 1
    every = set(splits.arrays["train"][0][:, 0, 0, 0].tolist())
    owned = []
    for index in (0, 1):
        shard = (index, 2)
        fixed = np.concatenate([x.numpy()[:, 0, 0, 0] for x, _ in splits.dataset("train", shard=shard)])
        owned.append(set(fixed.tolist()))
        assert len(fixed) == (n + 1) // 2                       # a short shard repeats one example
        assert splits.steps_per_epoch(shard=shard) == 3
        batches = _epoch_batches(splits, 0, 2, shard=shard)
        assert len(batches) == 2 * splits.steps_per_epoch(shard=shard)
        for e in (0, 1):
            ids = np.concatenate([x[:, 0, 0, 0] for x, _ in batches[3 * e:3 * e + 3]])
            assert set(ids.tolist()) == owned[index]
        assert _equal_batches(batches, _epoch_batches(splits, 0, 2, shard=shard))
    assert not owned[0] & owned[1] and owned[0] | owned[1] == every
    with pytest.raises(ValueError, match=r"shard=\(2, 2\)"):
        splits.dataset("train", shard=(2, 2))


# --------------------------------------------------------------------------------------------------------
# which decoder: TensorFlow's graph (plain JPEG at a DCT scale, 8-bit PNG) or Pillow
# --------------------------------------------------------------------------------------------------------

def test_each_file_gets_the_graph_decoder_where_it_can(tmp_path):
    a = tmp_path / "a"
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 260, 3), dtype=np.uint8))
    _save(a / "big.jpg", rgb, quality=90)                                    # 260x100 for a 24x24 target
    _save(a / "small.jpg", rgb.resize((20, 10)), quality=90)
    _save(a / "rgb.png", rgb)
    _save(a / "gray.png", rgb.convert("L"))
    _save(a / "palette.png", rgb.convert("P", palette=Image.ADAPTIVE))
    _save(a / "cmyk.jpg", rgb.convert("CMYK"))
    _exif_rotated_jpeg(a / "rotated.jpg")
    _save(a / "16bit.png", Image.fromarray(np.full((8, 16), 300, np.uint16)))
    decoders = {p.name: probe.check_file(p, (24, 24))[3] for p in sorted(a.iterdir())}
    jpeg = {r: probe.JPEG + probe.JPEG_RATIOS.index(r) for r in (1, 2, 4, 8)}
    assert decoders == {"big.jpg": jpeg[4], "small.jpg": jpeg[1], "rgb.png": probe.PNG,
                        "gray.png": probe.PNG, "palette.png": probe.PILLOW,
                        "cmyk.jpg": probe.PILLOW, "rotated.jpg": probe.PILLOW,
                        "16bit.png": probe.PILLOW}
    assert probe.check_file(a / "big.jpg", (48, 48))[3] == jpeg[2]      # min(260 // 48, 100 // 48) = 2


def test_a_large_jpeg_decoded_at_a_dct_scale_is_close_to_pillows_full_decode(tmp_path):
    root = tmp_path / "big"
    y, x = np.mgrid[:400, :400]
    smooth = np.stack([x * 255 // 399, y * 255 // 399, (x + y) * 255 // 798], -1).astype(np.uint8)
    for c in ("a", "b"):
        _save(root / c / "0.jpg", Image.fromarray(smooth), quality=95)
    splits = kdata.load(root, image_size=48, val_fraction=0, test_fraction=0)
    assert probe.check_file(root / "a" / "0.jpg", (48, 48))[3] == probe.JPEG  # ratio 8: 50x50
    reference = np.asarray(Image.fromarray(smooth).resize((48, 48), Image.BILINEAR), np.float32)
    x, _ = splits.arrays["train"]
    assert np.abs(x[0] - reference).mean() < 2.0 and np.abs(x[0] - reference).max() < 12


def test_a_jpeg_corrupt_inside_keeps_its_place_as_a_black_image(tmp_path, monkeypatch):
    root = tmp_path / "j"
    _unique_folder(root, {"a": 3, "b": 3})
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    huffman = data.index(b"\xff\xc4")
    data[huffman + 5:huffman + 21] = b"\xff" * 16          # a bogus Huffman table: the header still reads
    (root / "a" / "zz_bad.jpg").write_bytes(bytes(data))
    assert probe.check_file(root / "a" / "zz_bad.jpg", (12, 10))[::3] == \
        (None, probe.JPEG + probe.JPEG_RATIOS.index(2))
    monkeypatch.setattr(kfolders, "FOLDER_MEMORY_BYTES", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        splits = kdata.load(root, image_size=(12, 10), batch_size=4, val_fraction=0, test_fraction=0, cache=False)
        x, _ = splits.arrays["train"]
    names = [p.rsplit("/", 1)[-1] for p, _ in splits.skipped]
    assert splits.num_examples["train"] == 7 and names == ["zz_bad.jpg"]
    assert not x[3].any() and x[:3].any() and x[4:].all(axis=(1, 2, 3)).all()
