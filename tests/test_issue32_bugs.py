"""Issue 32's two small bugs: ``--weight-decay 0`` under AdamW, and train.py re-decoding every image after one failed."""

from __future__ import annotations

import re
import struct
import zlib

import pytest

from helpers_cli import copy_dataset, run_cli, train_args


def _optimizer(argv):
    import train
    from engine.config import resolve
    from engine.setup import make_optimizer

    cfg = resolve(train.config_from_args(train.build_parser().parse_args(argv)))[0]
    return make_optimizer(cfg, steps_per_epoch=10)


def test_weight_decay_help_default_and_an_explicit_zero_hold_for_adamw():
    import train

    help_text = " ".join(train.build_parser().format_help().split())
    assert re.search(r"--weight-decay \S+ decoupled weight decay \(AdamW/SGD; default 0\)", help_text), help_text
    assert _optimizer(["--optimizer", "adamw", "--weight-decay", "0"]).weight_decay == 0.0  # was 1e-4
    assert _optimizer(["--optimizer", "adamw"]).weight_decay == 0.0  # unset: the help's default
    assert _optimizer(["--optimizer", "adamw", "--weight-decay", "5e-4"]).weight_decay == pytest.approx(5e-4)
    assert _optimizer(["--optimizer", "sgd", "--weight-decay", "0"]).weight_decay in (None, 0.0)


def _png_with_garbage_pixels() -> bytes:
    """A PNG whose header (IHDR 24 x 24) and trailer are valid but whose pixel data is garbage."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 24, 24, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", bytes(range(256)) * 3) + chunk(b"IEND", b"")


def test_decode_failure_mid_run_is_named_from_the_pipeline_message(tiny_dataset, tmp_path, capsys, monkeypatch):
    """``--image-cache files`` decodes inside tf.data; the error it raises already names CSV, row and file, so
    train.py reports that instead of decoding every listed image again to find the culprit."""
    import engine.splits
    import train

    ds = copy_dataset(tiny_dataset, tmp_path / "ds")
    (ds / "images" / "train" / "00007.png").write_bytes(_png_with_garbage_pixels())  # passes the start-up scan
    full_scans = []
    scan = engine.splits.scan_images

    def counting_scan(image_root, paths, full_decode=False, **kwargs):
        if full_decode:
            full_scans.append(len(paths))
        return scan(image_root, paths, full_decode=full_decode, **kwargs)

    monkeypatch.setattr(engine.splits, "scan_images", counting_scan)
    code, out, err = run_cli(train, train_args(ds, tmp_path / "run", "--image-cache", "files", "--val-every", "0"),
                             capsys)
    assert code == 2 and re.search(r"^error: .*train\.csv, row 8: image .*00007\.png: cannot be decoded", err, re.M), \
        err[-3000:]
    assert "Traceback" not in err
    assert full_scans == [], f"re-decoded {sum(full_scans)} images after the pipeline had named the file"
