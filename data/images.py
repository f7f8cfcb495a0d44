"""Image loading with errors that name the file and row.

Images are decoded with OpenCV (any JPEG/PNG/BMP; grayscale, RGBA and 16-bit images are converted to
8-bit RGB, not rejected). A cheap integrity check catches zero-byte, truncated and non-image files
before TensorFlow ever sees them, so a bad file is reported as ``<csv>, row N: <file>: <reason>``
instead of an ``InvalidArgumentError`` deep inside a ``tf.data`` iterator.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import DataError

_JPEG_SOI = b"\xff\xd8"
_PNG_SIG = b"\x89PNG\r\n\x1a\n"


@dataclass
class BadImage:
    row: int  # 0-based row in the table
    path: str
    reason: str


def check_image_bytes(data: bytes) -> str | None:
    """Return a reason string if ``data`` is not a complete image, else None (cheap, header/trailer only)."""
    if len(data) == 0:
        return "zero-byte file"
    if data.startswith(_JPEG_SOI):
        tail = data.rstrip(b"\x00")[-2:]
        if tail != b"\xff\xd9":
            return "truncated JPEG (no end-of-image marker)"
        return None
    if data.startswith(_PNG_SIG):
        if b"IEND" not in data[-32:]:
            return "truncated PNG (no IEND chunk)"
        return None
    if data[:2] == b"BM" or data[:4] in (b"RIFF",) or data[:3] == b"GIF" or data[:4] in (b"II*\x00", b"MM\x00*"):
        return None
    return "not an image file (unknown format)"


def decode_rgb(data: bytes) -> np.ndarray | None:
    """Decode bytes to uint8 RGB (H, W, 3); None when OpenCV cannot decode them."""
    import cv2

    array = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(array, cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.shape[2] == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _read(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _check_one(args) -> BadImage | None:
    row, root, rel, full = args
    path = Path(root) / rel
    try:
        data = _read(path)
    except FileNotFoundError:
        return BadImage(row, str(path), "file does not exist")
    except OSError as exc:
        return BadImage(row, str(path), f"cannot be read ({exc.strerror or exc})")
    reason = check_image_bytes(data)
    if reason is None and full and decode_rgb(data) is None:
        reason = "cannot be decoded as an image"
    return None if reason is None else BadImage(row, str(path), reason)


def scan_images(image_root, paths: list[str], full_decode: bool = False, workers: int = 8) -> list[BadImage]:
    """Check every listed image exists and looks complete; return the bad ones (row order)."""
    jobs = [(i, str(image_root), p, full_decode) for i, p in enumerate(paths)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(_check_one, jobs, chunksize=64))
    return [r for r in results if r is not None]


def raise_for_bad_images(bad: list[BadImage], csv_path, total: int) -> None:
    if bad:
        first = bad[0]
        more = f" ({len(bad)} of {total} listed images are bad; pass --skip-bad to drop and count them)" if len(bad) > 1 else \
            " (pass --skip-bad to drop and count bad rows)"
        raise DataError(f"{csv_path}, row {first.row + 1}: image {first.path}: {first.reason}{more}")


def load_image_array(image_root, paths: list[str], size: int, csv_path="<table>", workers: int = 4) -> np.ndarray:
    """Decode and resize every image to (size, size) RGB uint8; returns (N, size, size, 3).

    Bilinear resizing (as the LDLVA release's ``tf.image.resize``) for upsampling, area for
    downsampling (less aliasing on the small synthetic images).
    """
    import cv2

    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)

    def work(i):
        path = Path(image_root) / paths[i]
        try:
            data = _read(path)
        except OSError:
            raise DataError(f"{csv_path}, row {i + 1}: image {path} does not exist or cannot be read") from None
        reason = check_image_bytes(data)
        image = None if reason else decode_rgb(data)
        if image is None:
            raise DataError(f"{csv_path}, row {i + 1}: image {path}: {reason or 'cannot be decoded as an image'}")
        h, w = image.shape[:2]
        interp = cv2.INTER_AREA if (h > size or w > size) else cv2.INTER_LINEAR
        out[i] = cv2.resize(image, (size, size), interpolation=interp) if (h, w) != (size, size) else image

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(work, range(len(paths)), chunksize=32):
            pass
    return out
