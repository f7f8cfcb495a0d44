"""data/images.py: one decode path (EXIF orientation, both cache modes, predict), the pixel limit, the
SFEW importer's integrity check, and errors from images that break mid-run in files mode."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers_cli import ROOT, copy_dataset, run_cli, subprocess_env, train_args

# Stored pixels that orientation k turns upright: the inverse of Pillow's exif_transpose step for k.
_INVERSE = {1: None, 2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_90",
            7: "TRANSVERSE", 8: "ROTATE_270"}
H, W = 40, 64  # upright size: not square, so a 90-degree orientation that is ignored changes the shape


def upright_image() -> np.ndarray:
    """A smooth, asymmetric RGB picture (survives JPEG; every flip or rotation of it looks different)."""
    yy, xx = np.mgrid[0:H, 0:W]
    blob = 255 * np.exp(-((xx - 14.0) ** 2 + (yy - 9.0) ** 2) / 60.0)  # a soft spot near the top-left corner
    return np.stack([xx * 255 / (W - 1), yy * 255 / (H - 1), blob], -1).round().astype(np.uint8)


def encode_oriented(upright: np.ndarray, orientation: int, fmt: str = "JPEG") -> bytes:
    """``upright`` stored so that EXIF ``orientation`` (tag 0x0112) shows it upright, written by Pillow."""
    from PIL import Image

    image = Image.fromarray(upright)
    if _INVERSE[orientation]:
        image = image.transpose(getattr(Image.Transpose, _INVERSE[orientation]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def assert_close_jpeg(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.mean() < 3 and np.percentile(diff, 99) < 25, (diff.mean(), diff.max())


# ------------------------------------------------------------------------------------ decoding ----

@pytest.mark.parametrize("orientation", range(1, 9))
def test_decode_applies_every_exif_orientation(orientation):
    from PIL import Image, ImageOps

    from data.images import decode_rgb, read_header

    up = upright_image()
    data = encode_oriented(up, orientation)
    assert read_header(data).orientation == orientation and read_header(data).size == (H, W)
    got = decode_rgb(data)
    assert_close_jpeg(got, up)
    reference = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert_close_jpeg(got, reference)  # Pillow's reading of the tag (its JPEG decoder may differ slightly)
    if orientation != 1:  # the tag matters: the stored pixels, shown as stored, are another picture
        stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
        assert stored.shape != up.shape or np.abs(stored - up).mean() > 20


@pytest.mark.parametrize("orientation", range(1, 9))
def test_png_orientation_is_exact(orientation):
    from data.images import decode_rgb

    up = upright_image()
    np.testing.assert_array_equal(decode_rgb(encode_oriented(up, orientation, "PNG")), up)


def test_apply_orientation_matches_pillow():
    from PIL import Image, ImageOps

    from data.images import apply_orientation

    stored = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        image = Image.fromarray(stored)
        exif = image.getexif()
        exif[0x0112] = orientation
        image.info["exif"] = exif.tobytes()
        want = np.asarray(ImageOps.exif_transpose(image))
        np.testing.assert_array_equal(apply_orientation(stored, orientation), want, err_msg=str(orientation))


# ------------------------------------------------------------------------- the pipeline's sources ----

def _write_table(folder: Path, files: dict[str, bytes], landmarks: bool = False) -> Path:
    """A schema table listing ``files`` (name -> bytes) under folder/images; returns the CSV path."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, data) in enumerate(files.items()):
        (folder / "images" / name).write_bytes(data)
        row = {"path": name, "expression": i % 7}
        if landmarks:
            row["landmarks"] = "8;4;56;36"  # (x, y) pixels of the upright image
        rows.append(row)
    pd.DataFrame(rows).to_csv(folder / "train.csv", index=False)
    return folder / "train.csv"


def _files_mode_pixels(source):
    """Every row of a files-mode source through tf.data (parallel map), as (images, scales)."""
    import tensorflow as tf

    n = len(source.table)
    ds = tf.data.Dataset.range(n).map(lambda i: source.load(tf.cast(i, tf.int32)),
                                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(n)
    images, scales = next(iter(ds))
    assert images.shape == (n, source.size, source.size, 3)
    return images.numpy(), scales.numpy()


def test_memory_and_files_modes_give_the_same_upright_pixels(tmp_path):
    import tensorflow as tf

    from data.images import resize_image
    from data.pipeline import ImageSource
    from data.schema import load_table

    up = upright_image()
    csv = _write_table(tmp_path, {f"o{k}.jpg": encode_oriented(up, k) for k in range(1, 9)}, landmarks=True)
    table = load_table(csv, 7, image_root=tmp_path / "images")
    for size in (32, 96):  # downsampled (area) and upsampled (bilinear)
        memory = ImageSource(table, size, "memory")
        files = ImageSource(table, size, "files")
        images, scales = _files_mode_pixels(files)
        np.testing.assert_array_equal(images, memory.array)  # the same Python decode in both modes
        want = resize_image(up, size)
        for k in range(8):
            assert_close_jpeg(memory.array[k], want)
        # The landmark scale maps upright pixels (W x H = 64 x 40 for every orientation) to S.
        np.testing.assert_allclose(memory.original_sizes, [[H, W]] * 8)
        np.testing.assert_allclose(scales, [[size / W, size / H]] * 8, rtol=1e-6)
        mem_scale = tf.stack([memory.load(tf.constant(k))[1] for k in range(8)]).numpy()
        np.testing.assert_allclose(mem_scale, scales, rtol=1e-6)


def test_png_files_mode_equals_memory_mode_exactly(tmp_path):
    """Grayscale, RGBA, 16-bit, EXIF-rotated and odd-sized PNGs: identical arrays in both cache modes."""
    import cv2

    from data.pipeline import ImageSource
    from data.schema import load_table

    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (37, 23, 3), dtype=np.uint8)
    enc = lambda im: cv2.imencode(".png", im)[1].tobytes()  # noqa: E731
    files = {
        "rgb.png": enc(bgr),
        "gray.png": enc(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)),
        "rgba.png": enc(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)),
        "deep.png": enc(bgr.astype(np.uint16) * 257 + 100),
        "big.png": enc(rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)),
        "same.png": enc(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)),
        "rot6.png": encode_oriented(upright_image(), 6, "PNG"),
        "rot5.png": encode_oriented(upright_image(), 5, "PNG"),
    }
    table = load_table(_write_table(tmp_path, files), 7, image_root=tmp_path / "images")
    memory = ImageSource(table, 24, "memory")
    images, _ = _files_mode_pixels(ImageSource(table, 24, "files"))
    np.testing.assert_array_equal(images, memory.array)


def test_training_streams_of_both_modes_are_identical(tmp_path):
    """The augmented training stream (pad/crop/flip/erasing, landmarks) is the same in both modes."""
    from data.pipeline import ImageSource, PipelineConfig, make_train_dataset
    from data.schema import load_table

    up = upright_image()
    files = {f"o{k}_{j}.jpg": encode_oriented(np.roll(up, 5 * j, axis=1), k) for k in range(1, 9) for j in range(2)}
    table = load_table(_write_table(tmp_path, files, landmarks=True), 7, image_root=tmp_path / "images")
    cfg = PipelineConfig(image_size=32, pad=3, random_erasing=0.5, seed=5)
    streams = [list(make_train_dataset(ImageSource(table, 32, mode), cfg, 4, 2, landmarks=True))
               for mode in ("memory", "files")]
    assert len(streams[0]) == len(streams[1]) == 8
    for a, b in zip(*streams):
        for key in a:
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy(), err_msg=key)


def test_original_sizes_read_headers_only(tmp_path, monkeypatch):
    import cv2

    import data.images
    from data.pipeline import _original_sizes
    from data.schema import load_table

    up = upright_image()
    csv = _write_table(tmp_path, {"a.jpg": encode_oriented(up, 8), "b.png": encode_oriented(up, 2, "PNG")},
                       landmarks=True)
    table = load_table(csv, 7, image_root=tmp_path / "images")

    def no_decoding(*_args, **_kwargs):
        raise AssertionError("_original_sizes decoded an image")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    monkeypatch.setattr(cv2, "imread", no_decoding)
    monkeypatch.setattr(data.images, "decode_image", no_decoding)
    np.testing.assert_array_equal(_original_sizes(table), [[H, W], [H, W]])


# ------------------------------------------------------------------------------ the pixel limit ----

@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    """A real 20000 x 20000 PNG, all black: 48 kB on disk, 1.2 GB as RGB pixels."""
    from PIL import Image

    path = tmp_path_factory.mktemp("huge") / "huge.png"
    Image.new("1", (20000, 20000)).save(path)
    assert path.stat().st_size < 2_000_000
    return path


def test_pixel_limit_is_checked_from_the_header(huge_png, monkeypatch):
    from common.errors import ConfigError
    from data.images import (DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeError, check_image_bytes, decode_image, image_size,
                             max_image_pixels)

    monkeypatch.delenv("FER_MAX_IMAGE_PIXELS", raising=False)
    assert max_image_pixels() == DEFAULT_MAX_IMAGE_PIXELS == 40_000_000
    data = huge_png.read_bytes()
    start = time.perf_counter()
    reason = check_image_bytes(data)
    assert "20000x20000" in reason and "pixels" in reason and "FER_MAX_IMAGE_PIXELS" in reason
    with pytest.raises(ImageDecodeError, match="20000x20000"):
        decode_image(data)
    assert image_size(huge_png) == (20000, 20000)
    assert time.perf_counter() - start < 1.0  # header only: nothing was decoded
    small = encode_oriented(upright_image(), 6, "PNG")
    assert check_image_bytes(small, max_pixels=H * W) is None
    assert "40x64" in check_image_bytes(small, max_pixels=H * W - 1)  # stored width x height
    monkeypatch.setenv("FER_MAX_IMAGE_PIXELS", "500_000_000")
    assert max_image_pixels() == 500_000_000 and check_image_bytes(data) is None
    monkeypatch.setenv("FER_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(ConfigError, match="FER_MAX_IMAGE_PIXELS"):
        max_image_pixels()


def _max_rss_run(argv, timeout=240):
    """(returncode, stderr, seconds, peak RSS in MB) of ``python argv`` (a fresh wrapper measures its one child)."""
    wrapper = ("import resource, subprocess, sys, time\n"
               "t = time.perf_counter()\n"
               "r = subprocess.run([sys.executable, *sys.argv[1:]], capture_output=True, text=True)\n"
               "sys.stderr.write(r.stderr)\n"
               "print(r.returncode, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    result = subprocess.run([sys.executable, "-c", wrapper, *map(str, argv)], env=subprocess_env(), cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout)
    code, seconds, rss_kb = result.stdout.split()[-3:]
    return int(code), result.stderr, float(seconds), int(rss_kb) / 1024


def test_train_refuses_a_huge_image_at_start_up(tiny_dataset, huge_png, tmp_path):
    ds = copy_dataset(tiny_dataset, tmp_path / "ds")
    (ds / "images" / "train" / "00004.png").write_bytes(huge_png.read_bytes())
    code, err, seconds, rss_mb = _max_rss_run(["train.py", *train_args(ds, tmp_path / "run")])
    assert code == 2, err[-2000:]
    assert re.search(r"^error: .*train\.csv, row 5: image .*00004\.png: image is 20000x20000 = 400000000 pixels",
                     err, re.M), err[-2000:]
    assert "Traceback" not in err and "--skip-bad" in err
    assert seconds < 90  # Python + TensorFlow start-up; the old code decoded it (1.6 GB) and trained on it
    assert rss_mb < 1500, f"peak RSS {rss_mb:.0f} MB: was the 20000x20000 image decoded?"
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_skip_bad_drops_a_huge_image(tiny_dataset, huge_png, tmp_path, capsys):
    import train

    ds = copy_dataset(tiny_dataset, tmp_path / "ds")
    (ds / "images" / "train" / "00004.png").write_bytes(huge_png.read_bytes())
    code, out, err = run_cli(train, train_args(ds, tmp_path / "run", "--skip-bad", "--val-every", "0"), capsys)
    assert code == 0, err[-3000:]
    assert "row 5" in out + err and "20000x20000" in out + err


# --------------------------------------------------------------- files mode: a file breaks mid-run ----

def _png_with_garbage_pixels() -> bytes:
    """A PNG whose header (IHDR 24 x 24) and trailer are valid but whose pixel data is garbage."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 24, 24, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", bytes(range(256)) * 3) + chunk(b"IEND", b"")


def test_undecodable_file_in_files_mode_names_csv_and_row(tiny_dataset, tmp_path, capsys):
    import tensorflow as tf

    import train
    from data.images import check_image_bytes
    from data.pipeline import ImageSource
    from data.schema import load_table
    from engine.splits import find_undecodable_image

    data = _png_with_garbage_pixels()
    assert check_image_bytes(data) is None  # passes the start-up scan...
    ds = copy_dataset(tiny_dataset, tmp_path / "ds")
    (ds / "images" / "train" / "00007.png").write_bytes(data)
    table = load_table(ds / "train.csv", 7)
    source = ImageSource(table, 24, "files")
    expected = r"train\.csv, row 8: image .*00007\.png: cannot be decoded"
    with pytest.raises(tf.errors.InvalidArgumentError, match=expected) as raised:
        _files_mode_pixels(source)  # ...and fails inside tf.data, naming the row
    for error in (find_undecodable_image([None, table]), find_undecodable_image([], raised.value)):
        assert re.match(r".*train\.csv, row 8: image .*00007\.png: cannot be decoded as an image; replace", str(error))
    code, out, err = run_cli(train, train_args(ds, tmp_path / "run", "--image-cache", "files", "--val-every", "0"),
                             capsys)
    assert code == 2 and re.search(r"^error: .*train\.csv, row 8: image .*00007\.png: cannot be decoded", err, re.M), \
        err[-3000:]
    # Memory mode refuses it at start-up with the same reason.
    code, out, err = run_cli(train, train_args(ds, tmp_path / "run2", "--image-cache", "memory"), capsys)
    assert code == 2 and "row 8" in err and "cannot be decoded" in err, err[-3000:]


# ---------------------------------------------------------------------------------------- SFEW ----

def test_sfew_drops_files_that_are_not_images(tmp_path, capsys):
    from fixtures_raw import make_sfew

    from data.schema import load_table
    from preprocess import sfew

    root = tmp_path / "sfew"
    counts = make_sfew(root)
    happy = next(p for p in (root / "Train").iterdir() if p.name.lower() == "happy")
    (happy / "x.png").write_text("this is a text file named like an image\n")
    val_jpg = sorted((root / "Val").rglob("*.jpg"))[0]
    val_jpg.write_bytes(val_jpg.read_bytes()[:100])  # truncated
    out = tmp_path / "out"
    code, summary, err = run_cli(sfew, ["--root", root, "--out", out], capsys)
    assert code == 0, err
    info = json.loads((out / "dataset.json").read_text())
    assert info["dropped"] == {"not an image file": 1, "unreadable image": 2}
    image_root = info["image_root"]
    train = load_table(out / "train.csv", 7, image_root=image_root, check_images=True)
    test = load_table(out / "test.csv", 7, image_root=image_root, check_images=True)
    assert len(train) == counts["train"] and len(test) == counts["test"] - 1
    assert not any(p.endswith("x.png") for p in train.paths)
    assert "unreadable image" in summary and "x.png" in summary
    dropped = pd.read_csv(out / "dropped.csv")
    assert sorted(dropped.loc[dropped.reason == "unreadable image", "split"]) == ["test", "train"]
