"""Facial expressions from Python: the inference API that ``predict.py`` itself runs on.

In a notebook::

    from fer_api import Predictor
    predictor = Predictor.from_run("runs/synthetic_ce_seed0")
    predictor.predict_frame(["photo.jpg", "more_photos/"])   # pandas DataFrame, one row per face

:meth:`Predictor.predict` takes photo paths, folders (searched recursively for the image suffixes the
decoder reads, :data:`IMAGE_SUFFIXES`), uint8 RGB arrays (one ``(H, W, 3)`` image or a ``(N, H, W, 3)``
stack), PIL images, or a list mixing them, and returns one :class:`FaceRecord` per face (a
:class:`FaceRecords` list, ``.to_pandas()`` gives the table). :meth:`Predictor.predict_frame` is the same
as a DataFrame. :meth:`Predictor.iter_results` streams the same work batch by batch
(:class:`PhotoResult` per photo), which is how ``predict.py`` writes its CSV as it goes.

What happens to each photo (the pipeline of ``python -m preprocess.align`` before training):

1. it is decoded as in training (``data.images.decode_image``: EXIF orientation applied, the
   ``FER_MAX_IMAGE_PIXELS`` limit), by a small thread pool that reads ahead of the detector;
2. faces are detected by MTCNN (the ``mtcnn`` package ≥ 1.0, which detects a list of images in one
   call). Photos of one batch are grouped by their exact size and each group is detected together:
   MTCNN pads a list of unequal images to the largest one, and padding shifts its boxes by a few pixels,
   so only equal sizes share a call and every photo gets exactly the boxes a call on it alone gives
   (``min_face``: the smallest face width looked for, 20 px by default, see :func:`detect_batch`);
3. each face is aligned to the ArcFace 5-point template at 112 px (``preprocess.align.align_face``);
4. all faces of the batch go through the exported SavedModel (``serving_default``: resizing and
   normalisation are inside it) in one call: the class distribution and, for models with a
   valence–arousal head (DDAF's ``va``), valence and arousal.

With ``detect=False`` (pre-cropped faces), when ``mtcnn`` is not installed, or when no face is found,
the centre square of the photo is the one face (``detected`` is False and the result's ``note`` says
why): a tightly cropped face still gives a meaningful answer, a wide shot will not.

An unreadable photo gives an error record (``error`` holds the reason) and the others go on; with
``errors="raise"`` (the default of :meth:`~Predictor.predict`) the first one raises
:class:`common.errors.DataError` instead. ``Predictor.timings`` accumulates the seconds spent in the
detector and in the model, so a caller can tell how much of its wall time went elsewhere.
"""

from __future__ import annotations

import sys
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import CheckpointError, ConfigError, DataError

ALIGN_SIZE = 112  # side of the ArcFace template crop (preprocess.align default)
# What data.images.decode_image decodes (OpenCV); the same list as preprocess.common.IMAGE_EXTENSIONS.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_BATCH = 16  # photos per batch (MTCNN measured fastest per photo at 8-16 equal-sized photos per call)
MODEL_CHUNK = 128  # faces per SavedModel call (a batch of group photos can hold many)
DEFAULT_MIN_FACE = 20  # px: MTCNN's own default smallest face

SYNTHETIC_WARNING = ("this model was trained on the toolkit's synthetic benchmark (rendered cartoon faces): it does "
                     "not transfer to photographs of real faces, and its predictions on them are meaningless. Train "
                     "on a real dataset (README, Real datasets) for real use.")

_DETECTOR = None


# ------------------------------------------------------------------------------------------- records

@dataclass
class FaceRecord:
    """One face of one photo (or, with ``error`` set, a photo that could not be read)."""

    source: str  # the photo's path as given (folders joined), or "array[i]" for an in-memory image
    face: int | None  # 1-based index of the face in its photo, most confident first (None: error)
    faces: int  # faces in this photo (0 for an error)
    box: tuple | None = None  # (x, y, w, h) in upright photo pixels
    confidence: float | None = None  # MTCNN's confidence (None: the centre square, no detection)
    detected: bool = False  # found by the detector (False: the centre square was used)
    probabilities: dict = field(default_factory=dict)  # class name -> probability
    label: str | None = None  # the most likely class
    valence: float | None = None  # models with a valence-arousal head (DDAF's ``va``) only
    arousal: float | None = None
    error: str | None = None  # why the photo could not be read
    crop: np.ndarray | None = field(default=None, repr=False)  # the aligned 112 px crop (kept on request)

    def row(self, class_names, has_va: bool) -> dict:
        """The record as one flat table row (the CSV of ``predict.py`` and :meth:`FaceRecords.to_pandas`)."""
        x, y, w, h = self.box if self.box is not None else (None,) * 4
        out = {"source": self.source, "face": self.face, "faces": self.faces, "x": x, "y": y, "w": w, "h": h,
               "confidence": self.confidence, "detected": None if self.error else self.detected}
        out.update({f"p_{name}": self.probabilities.get(name) for name in class_names})
        out["label"] = self.label
        if has_va:
            out.update(valence=self.valence, arousal=self.arousal)
        out["error"] = self.error
        return out


def table_columns(class_names, has_va: bool) -> list[str]:
    """Column names of :meth:`FaceRecord.row`, in order."""
    return list(FaceRecord(source="", face=None, faces=0).row(class_names, has_va))


class FaceRecords(list):
    """A list of :class:`FaceRecord` that knows its classes; ``to_pandas()`` gives one row per face."""

    def __init__(self, records=(), class_names=(), has_va: bool = False):
        super().__init__(records)
        self.class_names, self.has_va = list(class_names), has_va

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame([r.row(self.class_names, self.has_va) for r in self],
                            columns=table_columns(self.class_names, self.has_va))


@dataclass
class PhotoResult:
    """Everything about one input photo: its faces' records, how they were found, optionally the pixels."""

    source: str
    records: list  # FaceRecord per face; one error record when the photo could not be read
    note: str = ""  # how the faces were found (or the error)
    error: str | None = None  # the full message, ``<photo>: <why>``
    image: np.ndarray | None = field(default=None, repr=False)  # kept on request (figures)


# --------------------------------------------------------------------------------------------- inputs

@dataclass
class InputItem:
    """One photo to predict: a file, or pixels already in memory; ``error`` when it cannot even be listed."""

    source: str
    path: Path | None = None
    array: np.ndarray | None = None
    error: str | None = None


def list_image_files(folder) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted, hidden files and folders skipped)."""
    from preprocess.common import list_images

    return list_images(folder)


def expand_inputs(inputs) -> list[InputItem]:
    """:class:`InputItem` per photo of ``inputs``: a path, a folder (its image files, recursively), a uint8
    array (one image or a stack), a PIL image, or a list/tuple of these."""
    if isinstance(inputs, (str, Path, np.ndarray)) or _is_pil(inputs):
        inputs = [inputs]
    items: list[InputItem] = []
    arrays = 0
    for entry in inputs:
        if isinstance(entry, InputItem):
            items.append(entry)
        elif isinstance(entry, (str, Path)):
            path = Path(entry)
            if path.is_dir():
                files = list_image_files(path)
                if not files:
                    items.append(InputItem(str(path), path, error=(
                        f"{path}: Is a directory holding no image file ({' '.join(IMAGE_SUFFIXES)}, searched "
                        "recursively); nothing to predict there")))
                items.extend(InputItem(str(f), f) for f in files)
            else:
                items.append(InputItem(str(entry), path))
        elif isinstance(entry, np.ndarray) or _is_pil(entry):
            stack = np.asarray(entry.convert("RGB")) if _is_pil(entry) else entry
            for image in (stack if stack.ndim == 4 else [stack]):
                items.append(InputItem(f"array[{arrays}]", array=image))
                arrays += 1
        else:
            raise ConfigError(f"cannot predict a {type(entry).__name__}: give photo paths, folders, uint8 RGB arrays "
                              "or PIL images")
    return items


def _is_pil(obj) -> bool:
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "convert")


def as_rgb_uint8(image: np.ndarray, source: str = "image") -> np.ndarray:
    """An in-memory image as contiguous uint8 RGB ``(H, W, 3)`` (gray replicated, alpha dropped)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise DataError(f"{source}: expected uint8 RGB pixels, got dtype {image.dtype} (convert with "
                        "`(image * 255).astype(np.uint8)` for floats in [0, 1])")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise DataError(f"{source}: expected an (H, W, 3) RGB image, got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def read_photo(path) -> np.ndarray:
    """The photo as upright uint8 RGB: the training pipeline's decoder (``data.images.decode_image``:
    EXIF orientation applied, pixel limit ``FER_MAX_IMAGE_PIXELS``). DataError ``<photo>: <why>``."""
    from data.images import ImageDecodeError, decode_image

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file does not exist") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return decode_image(data)
    except ImageDecodeError as exc:
        raise DataError(f"{path}: not a decodable image: {exc}") from None


def _load(item: InputItem):
    """(pixels, None) or (None, error message) of one item; runs in the read-ahead threads."""
    if item.error:
        return None, item.error
    try:
        if item.array is not None:
            return as_rgb_uint8(item.array, item.source), None
        return read_photo(item.path), None
    except DataError as exc:
        return None, str(exc)
    except MemoryError:
        return None, f"{item.source}: too large to decode in memory"


def _read_ahead(items, threads: int, ahead: int):
    """``(item, pixels, error)`` per item, in order, decoded by ``threads`` threads up to ``ahead`` items
    before the consumer (OpenCV's decoder releases the GIL, so this overlaps with the detector)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="fer-read") as pool:
        pending: deque = deque()
        for item in items:
            pending.append((item, pool.submit(_load, item)))
            if len(pending) >= ahead:
                first, future = pending.popleft()
                yield (first, *future.result())
        while pending:
            first, future = pending.popleft()
            yield (first, *future.result())


# ---------------------------------------------------------------------------------------------- faces

@dataclass
class Face:
    crop: np.ndarray  # aligned uint8 RGB (ALIGN_SIZE, ALIGN_SIZE, 3)
    box: tuple  # (x, y, w, h) in photo pixels
    confidence: float | None  # detector confidence (None for the centre-crop fallback)
    probabilities: np.ndarray = field(default=None)  # (C,)


def centre_face(image: np.ndarray) -> Face:
    """The centre square of the photo, resized to ALIGN_SIZE: the fallback 'face'."""
    import cv2

    h, w = image.shape[:2]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    crop = cv2.resize(image[y:y + side, x:x + side], (ALIGN_SIZE, ALIGN_SIZE), interpolation=cv2.INTER_AREA)
    return Face(crop=crop, box=(x, y, side, side), confidence=None)


def load_detector():
    """The MTCNN detector (loaded once per process); OptionalDependencyError when ``mtcnn`` is missing."""
    global _DETECTOR
    if _DETECTOR is None:
        from preprocess.common import require_optional

        _DETECTOR = require_optional("mtcnn", "mtcnn", "face detection").MTCNN()
    return _DETECTOR


def detect_batch(images: list, min_confidence: float = 0.0, detector=None,
                 min_face: int = DEFAULT_MIN_FACE) -> list[list[dict]]:
    """MTCNN's faces in each of ``images`` (uint8 RGB), most confident first, as
    ``dict(box=(x, y, w, h), keypoints={name: (x, y)}, confidence)`` — the format of
    ``preprocess.align.detect_faces``. Images of one size are detected in one call (see the module
    docstring for why only equal sizes share a call).

    ``min_face``: the smallest face width looked for, in pixels. Up to MTCNN's default of 20 it is passed
    as its ``min_face_size``. Above, the images are first shrunk by ``20 / min_face`` (OpenCV's area
    interpolation) and detected with the default, and boxes and landmarks are scaled back: mtcnn 1.0's
    image pyramid has as many levels whatever ``min_face_size`` says, so a larger one pushes its last
    levels below the 12-px window of its first network, which fails, and the whole call then returns no
    face at all (mtcnn/utils/images.py, ``build_scale_pyramid``). Shrinking costs the detector about the
    square of the factor less; positions come back to within ``min_face / 20`` px.
    """
    import cv2

    from preprocess.align import KEYPOINT_NAMES

    detector = detector if detector is not None else load_detector()
    shrink = min(1.0, DEFAULT_MIN_FACE / float(min_face))
    out: list[list[dict]] = [[] for _ in images]
    by_shape: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(i)
    for indices in by_shape.values():
        group = [images[i] for i in indices]
        if shrink < 1.0:
            group = [cv2.resize(image, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA) for image in group]
        found = detector.detect_faces(group, min_face_size=int(min(min_face, DEFAULT_MIN_FACE)))
        for i, faces in zip(indices, found):
            for face in faces:
                confidence = float(face.get("confidence", 0.0))
                if confidence < min_confidence:
                    continue
                out[i].append({"box": tuple(int(round(float(v) / shrink)) for v in face["box"]),
                               "confidence": confidence,
                               "keypoints": {k: (float(face["keypoints"][k][0]) / shrink,
                                                 float(face["keypoints"][k][1]) / shrink) for k in KEYPOINT_NAMES}})
            out[i].sort(key=lambda f: -f["confidence"])
    return out


# ------------------------------------------------------------------------------------------ the model

def resolve_saved_model(path, flag: str = "--run") -> Path:
    """The SavedModel directory of a run directory (``RUN/saved_model``) or of a SavedModel directory."""
    path = Path(path)
    if (path / "saved_model" / "saved_model.pb").is_file():
        path = path / "saved_model"
    if not (path / "saved_model.pb").is_file():
        raise CheckpointError(f"{flag} {path}: no SavedModel there (export one with `python export.py` or train "
                              "without --no-export)")
    return path


class Predictor:
    """An exported model plus the face pipeline; see the module docstring.

    ``Predictor.from_run(RUN)`` or ``Predictor.from_export(SAVED_MODEL_DIR)``; then :meth:`predict`,
    :meth:`predict_frame` or :meth:`iter_results`.
    """

    def __init__(self, serve, meta: dict, path: str = ""):
        self.serve, self.meta, self.path = serve, dict(meta), str(path)
        self.class_names = [str(n) for n in meta["class_names"]]
        self.has_va = "va" in (getattr(serve, "structured_outputs", None) or {})
        self.synthetic = bool(meta.get("synthetic"))
        self.timings = {"detect_s": 0.0, "model_s": 0.0}
        self.detector_missing: str | None = None  # why MTCNN could not be loaded, once it was tried

    # -- loading
    @classmethod
    def load(cls, path, flag: str = "--run", warn: bool = True) -> "Predictor":
        from engine.export import load_export

        saved_model = resolve_saved_model(path, flag)
        serve, meta = load_export(saved_model)
        predictor = cls(serve, meta, saved_model)
        if warn and predictor.synthetic:
            warnings.warn(SYNTHETIC_WARNING, UserWarning, stacklevel=3)
        return predictor

    @classmethod
    def from_run(cls, run_dir) -> "Predictor":
        """The model a training run exported (``RUN/saved_model``)."""
        return cls.load(run_dir, "run")

    @classmethod
    def from_export(cls, export_dir) -> "Predictor":
        """A SavedModel written by ``export.py`` (or ``train.py``): a folder holding ``saved_model.pb``."""
        return cls.load(export_dir, "export")

    # -- the two networks
    def classify(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities (n, C), valence–arousal (n, 2) or None) of uint8 face crops ``(n, H, W, 3)``."""
        import time

        import tensorflow as tf

        start = time.perf_counter()
        probabilities, va = [], []
        for at in range(0, len(crops), MODEL_CHUNK):
            out = self.serve(images=tf.constant(crops[at:at + MODEL_CHUNK], tf.uint8))
            probabilities.append(out["probabilities"].numpy())
            if self.has_va:
                va.append(out["va"].numpy())
        self.timings["model_s"] += time.perf_counter() - start
        return np.concatenate(probabilities), (np.concatenate(va) if self.has_va else None)

    def detect(self, images: list, min_confidence: float = 0.9, min_face: int = DEFAULT_MIN_FACE
               ) -> list[list[dict]] | None:
        """:func:`detect_batch` on ``images``, timed; None when the detector cannot be loaded (the reason is
        kept in ``detector_missing``)."""
        import time

        if self.detector_missing is not None:
            return None
        try:
            detector = load_detector()
        except (ImportError, ConfigError) as exc:  # OptionalDependencyError is a ConfigError
            self.detector_missing = str(exc).split(";")[0]
            return None
        start = time.perf_counter()
        try:
            return detect_batch(images, min_confidence, detector, min_face)
        finally:
            self.timings["detect_s"] += time.perf_counter() - start

    # -- the pipeline
    def iter_results(self, inputs, detect: bool = True, min_confidence: float = 0.9, batch_size: int = DEFAULT_BATCH,
                     keep_images: bool = False, read_ahead: int = 2, min_face: int = DEFAULT_MIN_FACE):
        """Yield a list of :class:`PhotoResult` per batch of ``batch_size`` photos, in input order.

        ``inputs``: as :meth:`predict` (or :class:`InputItem` s). ``keep_images`` keeps each photo's pixels
        and face crops (for figures). ``read_ahead`` threads decode the next batches meanwhile.
        """
        options = (detect, min_confidence, min_face, keep_images)
        batch: list = []
        for decoded in _read_ahead(expand_inputs(inputs), read_ahead, 2 * batch_size):
            batch.append(decoded)
            if len(batch) == batch_size:
                yield self._process(batch, *options)
                batch = []
        if batch:
            yield self._process(batch, *options)

    def _process(self, batch, detect: bool, min_confidence: float, min_face: int, keep_images: bool
                 ) -> list[PhotoResult]:
        from preprocess.align import align_face

        readable = [(i, image) for i, (_, image, error) in enumerate(batch) if error is None]
        detections = (self.detect([image for _, image in readable], min_confidence, min_face)
                      if detect and readable else None)
        faces_of: dict[int, tuple[list[Face], str]] = {}
        for k, (i, image) in enumerate(readable):
            if not detect:
                faces_of[i] = [centre_face(image)], ("face detection off: whole image (centre square crop) used as "
                                                     "one face")
            elif detections is None:
                faces_of[i] = [centre_face(image)], (f"face detection unavailable ({self.detector_missing}): whole "
                                                     "image (centre square crop) used as one face; install `mtcnn` "
                                                     "for detection")
            elif not detections[k]:
                faces_of[i] = [centre_face(image)], (f"no face found (MTCNN, confidence >= {min_confidence:g}): "
                                                     "whole image (centre square crop) used as one face")
            else:
                found = [Face(crop=align_face(image, d["keypoints"], ALIGN_SIZE), box=d["box"],
                              confidence=d["confidence"]) for d in detections[k]]
                faces_of[i] = found, f"{len(found)} face(s) detected by MTCNN and aligned to the 5-point template"
        crops = [face.crop for i, _ in readable for face in faces_of[i][0]]
        probabilities, va = self.classify(np.stack(crops)) if crops else (None, None)
        results, at = [], 0
        images = dict(readable)
        for i, (item, _, error) in enumerate(batch):
            if error is not None:
                reason = error[len(item.source) + 2:] if error.startswith(item.source + ": ") else error
                results.append(PhotoResult(item.source, [FaceRecord(item.source, None, 0, error=reason)],
                                           note=reason, error=error))
                continue
            faces, note = faces_of[i]
            records = []
            for n, face in enumerate(faces, 1):
                p = probabilities[at]
                face.probabilities = p
                records.append(FaceRecord(
                    source=item.source, face=n, faces=len(faces), box=tuple(int(v) for v in face.box),
                    confidence=face.confidence, detected=face.confidence is not None,
                    probabilities={name: float(v) for name, v in zip(self.class_names, p)},
                    label=self.class_names[int(np.argmax(p))],
                    valence=None if va is None else float(va[at][0]), arousal=None if va is None else float(va[at][1]),
                    crop=face.crop if keep_images else None))
                at += 1
            results.append(PhotoResult(item.source, records, note=note, image=images[i] if keep_images else None))
        return results

    def predict(self, inputs, detect: bool = True, min_confidence: float = 0.9, batch_size: int = DEFAULT_BATCH,
                errors: str = "raise", keep_crops: bool = False, min_face: int = DEFAULT_MIN_FACE) -> FaceRecords:
        """One :class:`FaceRecord` per face of ``inputs`` (paths, folders, uint8 RGB arrays, PIL images, or
        a list of them), in input order.

        ``detect=False``: the centre square of each image is its one face (pre-cropped faces).
        ``min_confidence``, ``min_face``: MTCNN's confidence threshold and smallest face width (px).
        ``errors="raise"``: an unreadable photo raises DataError; ``"record"``: it becomes an error record.
        """
        if errors not in ("raise", "record"):
            raise ConfigError(f"errors must be 'raise' or 'record', got {errors!r}")
        records = FaceRecords(class_names=self.class_names, has_va=self.has_va)
        for results in self.iter_results(inputs, detect, min_confidence, batch_size, keep_images=keep_crops,
                                         min_face=min_face):
            for result in results:
                if result.error and errors == "raise":
                    raise DataError(result.error)
                records.extend(result.records)
        if detect and self.detector_missing:
            warnings.warn(f"face detection unavailable ({self.detector_missing}): the centre square of each image "
                          "was used as its face; install `mtcnn` for detection", UserWarning, stacklevel=2)
        return records

    def predict_frame(self, inputs, detect: bool = True, **options):
        """:meth:`predict` as a pandas DataFrame: ``source, face, faces, x, y, w, h, confidence, detected,
        p_<class>..., label[, valence, arousal], error``."""
        return self.predict(inputs, detect, **options).to_pandas()


def to_pandas(records: FaceRecords):
    """``records.to_pandas()`` as a function."""
    return records.to_pandas()


if __name__ == "__main__":  # a library, not a command
    sys.exit("fer_api is imported from Python (`from fer_api import Predictor`); the command is predict.py")
