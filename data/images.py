"""Image loading: the one decode path of the project, with errors that name the file and row.

**One decode function.** Every consumer of stored images — the integrity scan, both ``--image-cache``
modes of the tf.data pipeline (``data/pipeline.py: ImageSource``), evaluation, the figures and
``predict.py`` — goes through :func:`decode_image` (bytes → uint8 RGB ``(H, W, 3)``) and, at a fixed
network size, :func:`load_image` / :func:`resize_image`, so the same file gives the same pixels
everywhere. Decoding is OpenCV's (any JPEG/PNG/BMP/TIFF/WebP it reads); grayscale, RGBA and 16-bit
images are converted to 8-bit RGB (gray replicated, alpha dropped, 16-bit ÷ 257 rounded), not rejected.

**EXIF orientation is applied.** Photos from cameras and phones often store the sensor's pixels plus
an EXIF *Orientation* tag (0x0112) saying how to show them; all eight values are applied (as Pillow's
``ImageOps.exif_transpose``), so a decoded image is *upright, as a viewer shows it*. With orientations
5–8 width and height swap. The tag is read from the JPEG ``APP1`` Exif segment, the PNG ``eXIf``
chunk, or by Pillow for other formats (TIFF readers apply a TIFF's own tag while decoding). The
result matches OpenCV's ``cv2.imread(..., IMREAD_COLOR)`` (which the importers use) and Pillow's
``exif_transpose``. Everything measured on an image is in these upright pixels: its size
(:func:`image_size`, :attr:`ImageHeader.size`) and the ``landmarks`` of the annotation table, which
are x;y in pixels of the stored image *after* orientation (the image as a user sees it).

**Pixel limit.** Before any pixel is decoded the header is read (cheap: the JPEG markers, the PNG
``IHDR``, or Pillow's lazy ``Image.open`` for other formats) and an image with more than
:func:`max_image_pixels` pixels — by default ``DEFAULT_MAX_IMAGE_PIXELS`` = 40 000 000 (40 megapixels,
far above any face image; a 20000×20000 PNG can be 50 kB on disk but decodes to 1.2 GB) — is
refused with a reason naming its size. The environment variable ``FER_MAX_IMAGE_PIXELS`` (a positive
integer) overrides the limit; read at each check, so set it before the command. The integrity scan
applies it, so training refuses such a file at start-up (``--skip-bad`` drops and counts it), and so
does the decoder. (Formats other than JPEG/PNG are measured by Pillow, which itself refuses images
above 2 × ``PIL.Image.MAX_IMAGE_PIXELS`` ≈ 179 megapixels whatever the limit.)

**Integrity check.** :func:`check_image_bytes` catches zero-byte, truncated (no JPEG end-of-image
marker, no PNG ``IEND``), non-image files, unreadable headers and over-limit images before TensorFlow
ever sees them, so a bad file is reported as ``<csv>, row N: image <file>: <reason>`` instead of an
``InvalidArgumentError`` deep inside a ``tf.data`` iterator. :func:`decode_image` runs the same check
first; it raises :class:`ImageDecodeError` (a ``ValueError``: inside ``tf.numpy_function`` it surfaces
as ``tf.errors.InvalidArgumentError``, its message kept) with the reason.
"""

from __future__ import annotations

import io
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import ConfigError, DataError

_JPEG_SOI = b"\xff\xd8"
_PNG_SIG = b"\x89PNG\r\n\x1a\n"

MAX_PIXELS_ENV = "FER_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
ORIENTATION_TAG = 0x0112


class ImageDecodeError(ValueError):
    """An image's bytes cannot be used; the message is the reason (callers add file and row)."""


@dataclass(frozen=True)
class BadImage:
    row: int  # 0-based row in the table
    path: str
    reason: str


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, read without decoding pixels."""

    format: str  # "jpeg", "png", or Pillow's format name
    width: int  # of the stored pixels (before orientation)
    height: int
    orientation: int = 1  # EXIF orientation 1..8 (1 when absent or invalid)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the upright image, after EXIF orientation (5–8 swap the two)."""
        return (self.width, self.height) if self.orientation >= 5 else (self.height, self.width)


def max_image_pixels() -> int:
    """The pixel limit: ``$FER_MAX_IMAGE_PIXELS`` if set, else ``DEFAULT_MAX_IMAGE_PIXELS`` (40 MP)."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{MAX_PIXELS_ENV}={text!r}: must be a positive integer number of pixels "
                          f"(default {DEFAULT_MAX_IMAGE_PIXELS})")
    return value


# ------------------------------------------------------------------------------ header parsing ----

def _tiff_orientation(tiff: bytes) -> int:
    """The Orientation tag of IFD0 in a TIFF/Exif block (1 when absent or invalid)."""
    if tiff.startswith(b"Exif\x00\x00"):
        tiff = tiff[6:]
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
    for k in range(count):
        at = ifd + 2 + 12 * k
        if at + 12 > len(tiff):
            break
        tag, kind = struct.unpack(order + "HH", tiff[at:at + 4])
        if tag != ORIENTATION_TAG:
            continue
        if kind == 3:  # SHORT
            (value,) = struct.unpack(order + "H", tiff[at + 8:at + 10])
        elif kind == 4:  # LONG
            (value,) = struct.unpack(order + "I", tiff[at + 8:at + 12])
        else:
            return 1
        return value if 1 <= value <= 8 else 1
    return 1


def _read_exact(f, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ImageDecodeError(f"cannot be decoded as an image ({what}: header ends early)")
    return data


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_header(f) -> ImageHeader:
    """Walk the JPEG markers from SOI to SOS: the first frame header (SOF) and APP1 Exif orientation."""
    f.seek(2)
    size, orientation, exif_seen = None, 1, False
    while True:
        byte = f.read(1)
        if not byte:
            break
        if byte != b"\xff":
            raise ImageDecodeError("cannot be decoded as an image (corrupt JPEG header: expected a marker)")
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes
            marker = f.read(1)
        if not marker:
            break
        code = marker[0]
        if code == 0x01 or 0xD0 <= code <= 0xD8:  # standalone markers
            continue
        if code in (0xD9, 0xDA):  # end of image / start of scan: the header is over
            break
        (length,) = struct.unpack(">H", _read_exact(f, 2, "JPEG"))
        if length < 2:
            raise ImageDecodeError("cannot be decoded as an image (corrupt JPEG header: bad segment length)")
        if code in _JPEG_SOF and size is None:
            if length < 7:
                raise ImageDecodeError("cannot be decoded as an image (corrupt JPEG frame header)")
            payload = _read_exact(f, 5, "JPEG")
            height, width = struct.unpack(">HH", payload[1:5])
            size = (width, height)
            f.seek(length - 2 - 5, 1)
        elif code == 0xE1 and not exif_seen:
            payload = f.read(length - 2)
            if payload.startswith(b"Exif\x00\x00"):
                exif_seen = True
                orientation = _tiff_orientation(payload[6:])
        else:
            f.seek(length - 2, 1)
    if size is None:
        raise ImageDecodeError("cannot be decoded as an image (JPEG without a frame header)")
    return ImageHeader("jpeg", size[0], size[1], orientation)


def _png_header(f) -> ImageHeader:
    """IHDR's size and the orientation of an eXIf chunk (walked over chunk headers, no pixel data read)."""
    f.seek(8)
    length, kind = struct.unpack(">I4s", _read_exact(f, 8, "PNG"))
    if kind != b"IHDR" or length < 8:
        raise ImageDecodeError("cannot be decoded as an image (PNG without an IHDR header)")
    width, height = struct.unpack(">II", _read_exact(f, 8, "PNG"))
    f.seek(length - 8 + 4, 1)  # rest of IHDR + CRC
    orientation = 1
    while True:
        head = f.read(8)
        if len(head) < 8:
            break
        length, kind = struct.unpack(">I4s", head)
        if kind == b"eXIf":
            orientation = _tiff_orientation(f.read(length))
            break
        if kind == b"IEND":
            break
        f.seek(length + 4, 1)
    return ImageHeader("png", width, height, orientation)


def _pillow_header(f) -> ImageHeader:
    from PIL import Image, UnidentifiedImageError

    f.seek(0)
    try:
        with Image.open(f) as image:
            width, height = image.size
            orientation = int(image.getexif().get(ORIENTATION_TAG, 1) or 1)
            fmt = (image.format or "image").lower()
            if fmt == "tiff":  # libtiff (OpenCV's and Pillow's reader) applies a TIFF's orientation itself
                orientation = 1
    except Image.DecompressionBombError as exc:  # Pillow refuses > 2 x Image.MAX_IMAGE_PIXELS (179 MP)
        raise ImageDecodeError(f"image is larger than Pillow accepts ({str(exc).split(',')[0]}), above the limit "
                               f"of {max_image_pixels()} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error, EOFError) as exc:
        raise ImageDecodeError(f"cannot be decoded as an image ({str(exc)[:80] or type(exc).__name__})") from None
    return ImageHeader(fmt, width, height, orientation if 1 <= orientation <= 8 else 1)


def read_header(source) -> ImageHeader:
    """The header of an image given as bytes, a path or a binary file; reads no pixel data.

    Raises :class:`ImageDecodeError` when the header cannot be read (the pixel limit is not applied
    here; see :func:`check_header`).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _header_of(io.BytesIO(bytes(source)))
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return _header_of(f)
    return _header_of(source)


def _header_of(f) -> ImageHeader:
    f.seek(0)
    magic = f.read(8)
    try:
        if magic.startswith(_JPEG_SOI):
            return _jpeg_header(f)
        if magic.startswith(_PNG_SIG):
            return _png_header(f)
    except struct.error:
        raise ImageDecodeError("cannot be decoded as an image (corrupt header)") from None
    return _pillow_header(f)


def check_header(header: ImageHeader, max_pixels: int | None = None) -> str | None:
    """A reason when the header's size is empty or above the pixel limit, else None."""
    if header.width <= 0 or header.height <= 0:
        return f"cannot be decoded as an image (the header gives an empty size {header.width}x{header.height})"
    limit = max_image_pixels() if max_pixels is None else int(max_pixels)
    if header.pixels > limit:
        return (f"image is {header.width}x{header.height} = {header.pixels} pixels "
                f"({header.pixels / 1e6:.1f} megapixels), above the limit of {limit} pixels "
                f"(set {MAX_PIXELS_ENV} to raise it)")
    return None


def image_size(path) -> tuple[int, int]:
    """(height, width) of an image file as shown upright (EXIF orientation applied), from its header only."""
    return read_header(path).size


# ------------------------------------------------------------------------------------ decoding ----

def _checked_header(data: bytes, max_pixels: int | None = None) -> ImageHeader:
    """The header of complete, acceptable image bytes; :class:`ImageDecodeError` with the reason otherwise."""
    if len(data) == 0:
        raise ImageDecodeError("zero-byte file")
    if data.startswith(_JPEG_SOI):
        tail = data.rstrip(b"\x00")[-2:]
        if tail != b"\xff\xd9":
            raise ImageDecodeError("truncated JPEG (no end-of-image marker)")
    elif data.startswith(_PNG_SIG):
        if b"IEND" not in data[-32:]:
            raise ImageDecodeError("truncated PNG (no IEND chunk)")
    elif not (data[:2] == b"BM" or data[:4] in (b"RIFF",) or data[:3] == b"GIF"
              or data[:4] in (b"II*\x00", b"MM\x00*")):
        raise ImageDecodeError("not an image file (unknown format)")
    header = read_header(data)
    reason = check_header(header, max_pixels)
    if reason is not None:
        raise ImageDecodeError(reason)
    return header


def check_image_bytes(data: bytes, max_pixels: int | None = None) -> str | None:
    """Return a reason string if ``data`` is not a complete, acceptable image, else None.

    Cheap: the header and trailer only (zero bytes, truncation, unknown format, unreadable header,
    empty size, more pixels than the limit); no pixel is decoded.
    """
    try:
        _checked_header(data, max_pixels)
    except ImageDecodeError as exc:
        return str(exc)
    return None


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixels → upright pixels for EXIF orientation 1..8 (as Pillow's ``ImageOps.exif_transpose``)."""
    if orientation == 2:
        out = image[:, ::-1]  # mirror left-right
    elif orientation == 3:
        out = image[::-1, ::-1]  # rotate 180
    elif orientation == 4:
        out = image[::-1]  # mirror top-bottom
    elif orientation == 5:
        out = image.swapaxes(0, 1)  # transpose (mirror + rotate 90 CCW)
    elif orientation == 6:
        out = image.swapaxes(0, 1)[:, ::-1]  # rotate 90 clockwise
    elif orientation == 7:
        out = image[::-1, ::-1].swapaxes(0, 1)  # transverse (mirror + rotate 90 CW)
    elif orientation == 8:
        out = image.swapaxes(0, 1)[::-1]  # rotate 90 counter-clockwise
    else:
        return image
    return np.ascontiguousarray(out)


def _to_rgb8(image: np.ndarray) -> np.ndarray:
    import cv2

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


def decode_image(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Bytes → upright uint8 RGB (H, W, 3): the project's one decoder.

    Runs :func:`check_image_bytes` first (nothing is decoded above the pixel limit), decodes with
    OpenCV (``IMREAD_UNCHANGED``, which ignores EXIF), converts to 8-bit RGB and applies the EXIF
    orientation. Raises :class:`ImageDecodeError` with the reason.
    """
    import cv2

    header = _checked_header(data, max_pixels)
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        raise ImageDecodeError("cannot be decoded as an image")
    if image.shape[:2] != (header.height, header.width):
        raise ImageDecodeError(f"cannot be decoded as an image (decoded {image.shape[1]}x{image.shape[0]} pixels, "
                               f"the header says {header.width}x{header.height})")
    return apply_orientation(_to_rgb8(image), header.orientation)


def decode_rgb(data: bytes) -> np.ndarray | None:
    """:func:`decode_image`, or None when the bytes cannot be decoded (kept for callers that test None)."""
    try:
        return decode_image(data)
    except ImageDecodeError:
        return None


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """The one resize to the network's (size, size), used by both cache modes and the figures.

    Bilinear (as the LDLVA release's ``tf.image.resize``) for upsampling, area when either side shrinks
    (less aliasing on the small synthetic images); an image already at the size is returned as is.
    """
    import cv2

    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    interp = cv2.INTER_AREA if (h > size or w > size) else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def _read(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def read_image_file(path) -> bytes:
    """A file's bytes; :class:`ImageDecodeError` ("file does not exist", "cannot be read (...)") on failure."""
    try:
        return _read(Path(path))
    except FileNotFoundError:
        raise ImageDecodeError("file does not exist") from None
    except OSError as exc:
        raise ImageDecodeError(f"cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:  # a table path holding a NUL byte: open() refuses it (found by benchmarks/fuzz.py)
        raise ImageDecodeError(f"cannot be read ({exc})") from None


def load_image(path, size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """(upright uint8 RGB, resized to (size, size) when ``size`` is given; upright (height, width) before
    resizing). Raises :class:`ImageDecodeError`. Both ``--image-cache`` modes call this."""
    image = decode_image(read_image_file(path))
    hw = image.shape[:2]
    return (image if size is None else resize_image(image, size)), hw


# ------------------------------------------------------------------------------------- tables ----

def _check_one(args) -> BadImage | None:
    row, root, rel, full = args
    path = Path(root) / rel
    try:
        data = read_image_file(path)
        if full:
            decode_image(data)
            return None
    except ImageDecodeError as exc:
        return BadImage(row, str(path), str(exc))
    reason = check_image_bytes(data)
    return None if reason is None else BadImage(row, str(path), reason)


def scan_images(image_root, paths: list[str], full_decode: bool = False, workers: int = 8) -> list[BadImage]:
    """Check every listed image exists, looks complete and is within the pixel limit; return the bad ones
    (row order). ``full_decode`` also decodes each one with :func:`decode_image`."""
    max_image_pixels()  # a bad FER_MAX_IMAGE_PIXELS is reported once, here
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


def _row_number(row_numbers, i: int) -> int:
    return i + 1 if row_numbers is None else int(row_numbers[i])


def image_sizes(image_root, paths: list[str], csv_path="<table>", workers: int = 8, row_numbers=None) -> np.ndarray:
    """(N, 2) float32 upright (height, width) of every listed image, from the headers only (no decoding).

    ``row_numbers`` (1-based CSV rows of ``paths``; default ``i + 1``) name the row in errors."""

    def one(i):
        path = Path(image_root) / paths[i]
        try:
            return read_header(path).size
        except FileNotFoundError:
            reason = "file does not exist"
        except OSError as exc:
            reason = f"cannot be read ({exc.strerror or exc})"
        except ImageDecodeError as exc:
            reason = str(exc)
        raise DataError(f"{csv_path}, row {_row_number(row_numbers, i)}: image {path}: {reason}")

    sizes = np.empty((len(paths), 2), np.float32)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, hw in enumerate(pool.map(one, range(len(paths)), chunksize=64)):
            sizes[i] = hw
    return sizes


def load_image_array(image_root, paths: list[str], size: int, csv_path="<table>", workers: int = 4,
                     row_numbers=None) -> np.ndarray:
    """Decode (:func:`load_image`: upright, pixel limit) and resize every image to (size, size) RGB uint8;
    returns (N, size, size, 3). ``row_numbers`` as in :func:`image_sizes`."""
    max_image_pixels()
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)

    def work(i):
        path = Path(image_root) / paths[i]
        try:
            out[i] = load_image(path, size)[0]
        except ImageDecodeError as exc:
            raise DataError(f"{csv_path}, row {_row_number(row_numbers, i)}: image {path}: {exc}") from None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(work, range(len(paths)), chunksize=32):
            pass
    return out
