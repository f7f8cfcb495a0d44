"""Writers of tiny raw downloads in each dataset's official layout (images drawn with numpy + cv2).

Each ``make_*`` function writes into a folder (a pytest ``tmp_path``) and returns what the tests need
to know about the rows it wrote, including the odd ones (non-emotion classes, VA -2, missing files,
FERPlus ties/NF/unknown majorities).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

AFFECTNET_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
                     "expression", "valence", "arousal")


def tiny_image(seed: int, height: int = 24, width: int = 24, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def write_image(path, image) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image), path
    return path


def landmarks_in_box(x, y, w, h) -> np.ndarray:
    """68 distinct points inside the box (x, y, w, h), as (68, 2)."""
    t = np.arange(68)
    return np.stack([x + 1 + (t % 17) * (w - 2) / 16.0, y + 1 + (t // 17) * (h - 2) / 3.0], axis=1)


# ------------------------------------------------------------------ AffectNet ----

def make_affectnet(root, headerless_validation: bool = False) -> dict:
    """ROOT/Manually_Annotated_Images/<n>/<hash>.jpg + training.csv + validation.csv.

    Returns ``{"train": rows, "test": rows}`` where each row is a dict with the CSV fields plus
    ``keep7`` / ``keep8`` (expected to survive a 7-/8-class import) and ``reason``.
    """
    root = Path(root)
    images = root / "Manually_Annotated_Images"
    width, height = 40, 32
    # (expression, valence, arousal, image exists, reason it is dropped or None)
    train_spec = [
        (1, 0.8, 0.3, True, None), (0, 0.0, 0.1, True, None), (2, -0.6, -0.2, True, None),
        (3, 0.2, 0.9, True, None), (4, -0.5, 0.8, True, None), (5, -0.7, 0.4, True, None),
        (6, -0.4, 0.7, True, None), (7, -0.3, 0.2, True, "contempt"),
        (8, -2.0, -2.0, True, "expression 8 (None)"), (9, -2.0, -2.0, True, "expression 9 (Uncertain)"),
        (10, -2.0, -2.0, False, "expression 10 (No-face)"), (1, -2.0, -2.0, True, "va"),
        (0, 0.1, 0.0, False, "missing image file"), (0, -0.1, -0.05, True, None),
    ]
    test_spec = [
        (0, 0.05, 0.0, True, None), (1, 0.7, 0.2, True, None), (2, -0.5, -0.3, True, None),
        (3, 0.1, 0.8, True, None), (4, -0.3, 0.6, True, None), (5, -0.6, 0.3, True, None),
        (6, -0.5, 0.6, True, None), (7, -0.2, 0.1, True, "contempt"), (8, -2.0, -2.0, True, "expression 8 (None)"),
    ]
    out = {}
    for split, spec, name in (("train", train_spec, "training.csv"), ("test", test_spec, "validation.csv")):
        rows = []
        for i, (expression, valence, arousal, exists, reason) in enumerate(spec):
            rel = f"{100 + i % 3}/{split}{i:03d}abcdef.jpg"
            box = (6 + i % 3, 4 + i % 2, 22, 20)
            points = landmarks_in_box(*box)
            if exists:
                write_image(images / rel, tiny_image(i + (0 if split == "train" else 100), height, width))
            rows.append(dict(subDirectory_filePath=rel, face_x=box[0], face_y=box[1], face_width=box[2],
                             face_height=box[3], facial_landmarks=";".join(f"{v:.2f}" for v in points.ravel()),
                             expression=expression, valence=valence, arousal=arousal, reason=reason,
                             keep7=reason is None, keep8=reason in (None, "contempt"), landmarks=points))
        lines = [] if (headerless_validation and split == "test") else [",".join(AFFECTNET_COLUMNS)]
        for r in rows:
            lines.append(",".join(str(r[c]) for c in AFFECTNET_COLUMNS))
        (root / name).write_text("\n".join(lines) + "\n")
        out[split] = rows
    return out


# ------------------------------------------------------------------- RAF-DB ----

RAF_LABELS = {  # name -> RAF label (1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral)
    "train_00001.jpg": 1, "train_00002.jpg": 2, "train_00003.jpg": 3, "train_00004.jpg": 4,
    "train_00005.jpg": 5, "train_00006.jpg": 6, "train_00007.jpg": 7, "train_00008.jpg": 4,
    "test_0001.jpg": 7, "test_0002.jpg": 4, "test_0003.jpg": 5, "test_0004.jpg": 1,
}
RAF_MISSING = "train_00008.jpg"


def make_rafdb(root, extra_lines: tuple[str, ...] = ()) -> dict:
    """ROOT/EmoLabel/list_patition_label.txt + ROOT/Image/aligned/<stem>_aligned.jpg (one image missing)."""
    root = Path(root)
    for i, name in enumerate(RAF_LABELS):
        if name != RAF_MISSING:
            write_image(root / "Image" / "aligned" / f"{Path(name).stem}_aligned.jpg", tiny_image(200 + i, 20, 20))
            write_image(root / "Image" / "original" / name, tiny_image(300 + i, 30, 26))
    lines = [f"{name} {label}" for name, label in RAF_LABELS.items()] + list(extra_lines)
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return dict(RAF_LABELS)


# --------------------------------------------------------------------- SFEW ----

SFEW_TRAIN = {"Angry": 2, "disgust": 1, "Fear": 1, "HAPPY": 2, "Neutral": 1, "Sad": 1, "Surprise": 1}
SFEW_VAL = {"Angry": 1, "Happy": 1, "Sadness": 1}


def make_sfew(root, unknown_folder: str | None = None) -> dict:
    """ROOT/Train/<Emotion>/*.png and ROOT/Val/<Emotion>/*.jpg, mixed-case folder names, one stray file."""
    root = Path(root)
    seed = 400
    for split, spec, ext in (("Train", SFEW_TRAIN, ".png"), ("Val", SFEW_VAL, ".jpg")):
        for emotion, count in spec.items():
            for j in range(count):
                seed += 1
                write_image(root / split / emotion / f"{emotion.lower()}_{j:03d}{ext}", tiny_image(seed, 18, 16))
    (root / "Train" / "Angry" / "Thumbs.db").write_bytes(b"not an image")
    if unknown_folder:
        write_image(root / "Train" / unknown_folder / "x.png", tiny_image(1, 8, 8))
    return {"train": sum(SFEW_TRAIN.values()), "test": sum(SFEW_VAL.values())}


# ------------------------------------------------------------------ FERPlus ----

FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
# (Usage, image name, [neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF],
#  expected label (canonical) with the default rules, or the drop reason key)
FERPLUS_ROWS = [
    ("Training", "fer0000000.png", [2, 8, 0, 0, 0, 0, 0, 0, 0, 0], 1),
    ("Training", "fer0000001.png", [6, 0, 0, 4, 0, 0, 0, 0, 0, 0], 0),
    ("Training", "fer0000002.png", [0, 5, 5, 0, 0, 0, 0, 0, 0, 0], "tie"),
    ("Training", "fer0000003.png", [3, 0, 0, 0, 0, 0, 0, 0, 7, 0], "unknown"),
    ("Training", "fer0000004.png", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10], "nf"),
    ("Training", "fer0000005.png", [0, 0, 0, 0, 9, 0, 0, 0, 0, 1], "nf"),
    ("Training", "", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10], "empty"),
    ("PublicTest", "fer0000007.png", [0, 0, 7, 0, 0, 0, 3, 0, 0, 0], 3),
    ("PublicTest", "fer0000008.png", [0, 0, 3, 3, 0, 0, 4, 0, 0, 0], "no_majority"),
    ("PrivateTest", "fer0000009.png", [0, 0, 0, 0, 4, 0, 0, 6, 0, 0], 7),
    ("PrivateTest", "fer0000010.png", [0, 0, 0, 0, 1, 9, 0, 0, 0, 0], 5),
    ("PrivateTest", "fer0000011.png", [0, 0, 0, 10, 0, 0, 0, 0, 0, 0], 2),
    ("Training", "fer0000012.png", [1, 0, 0, 0, 5, 4, 0, 0, 0, 0], 6),
]


def make_ferplus(folder, wrong_pixels_row: int | None = None, misaligned_usage_row: int | None = None) -> tuple[Path, Path]:
    """fer2013.csv (emotion,pixels,Usage) and fer2013new.csv (FERPlus votes), aligned row by row."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fer_lines = ["emotion,pixels,Usage"]
    new_lines = [FERPLUS_HEADER]
    for i, (usage, name, votes, _expected) in enumerate(FERPLUS_ROWS):
        pixels = tiny_image(500 + i, 48, 48, channels=1).ravel()
        if wrong_pixels_row is not None and i == wrong_pixels_row:
            pixels = pixels[:-5]
        fer_usage = "PublicTest" if (misaligned_usage_row is not None and i == misaligned_usage_row) else usage
        fer_lines.append(f"{i % 7},{' '.join(map(str, pixels))},{fer_usage}")
        new_lines.append(",".join([usage, name] + [str(v) for v in votes]))
    fer, new = folder / "fer2013.csv", folder / "fer2013new.csv"
    fer.write_text("\n".join(fer_lines) + "\n")
    new.write_text("\n".join(new_lines) + "\n")
    return fer, new


# ------------------------------------------------------- LDLVA release CSV ----

def make_release(folder, n: int = 12, k: int = 4, seed: int = 0) -> dict:
    """A release-style train CSV (with knn), a test CSV with only path + expression, and the images."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    va = np.round(rng.uniform(-1, 1, size=(n, 2)), 4)
    labels = rng.integers(0, 7, size=n)
    dist = np.linalg.norm(va[:, None] - va[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    knn = np.argsort(dist, axis=1, kind="stable")[:, :k]
    images = folder / "images"
    lines = ["subDirectory_filePath,expression,valence,arousal,knn"]
    for i in range(n):
        rel = f"train/{i:04d}.jpg"
        write_image(images / rel, tiny_image(600 + i, 16, 16))
        lines.append(f"{rel},{labels[i]},{va[i, 0]},{va[i, 1]},{';'.join(map(str, knn[i]))}")
    (folder / "train.csv").write_text("\n".join(lines) + "\n")
    test_lines = ["subDirectory_filePath,expression"]
    for i in range(5):
        rel = f"test/{i:04d}.jpg"
        write_image(images / rel, tiny_image(700 + i, 16, 16))
        test_lines.append(f"{rel},{i % 7}")
    (folder / "test.csv").write_text("\n".join(test_lines) + "\n")
    return {"va": va, "labels": labels, "knn": knn, "image_root": images,
            "train": folder / "train.csv", "test": folder / "test.csv"}


# ------------------------------------------------------ AffectNet (npy layout) ----

def _save_npy(path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        np.save(handle, value, allow_pickle=False)


# (id, expression, valence, arousal, what is odd, reason it is dropped or None). Ids are numeric strings
# written out of order so that the importer's numeric sort (2 before 10) is visible.
AFFECTNET_NPY_TRAIN = [
    ("0", 1, 0.8, 0.3, "strings", None), ("1", 0, 0.0, 0.1, "numbers", None),
    ("2", 2, -0.6, -0.2, "strings", None), ("10", 3, 0.2, 0.9, "landmarks as strings", None),
    ("3", 7, -0.3, 0.2, "strings", "contempt"), ("4", 8, -2.0, -2.0, "strings", "expression 8 (None)"),
    ("5", 9, -2.0, -2.0, "numbers", "expression 9 (Uncertain)"), ("6", 4, -2.0, -2.0, "strings", "va"),
    ("7", 5, -0.7, 0.4, "no _aro", "missing annotation file (_aro.npy)"),
    ("8", 6, -0.4, 0.7, "garbage _val", "unreadable annotation .npy (truncated or not an .npy file)"),
    ("9", 6, -0.5, 0.6, "pickled _exp", "annotation .npy holds pickled objects (refused: allow_pickle=False)"),
    ("11", 0, 0.1, 0.0, "no image", "missing image file"),
    ("12", 4, -0.5, 0.8, "no _lnd", "missing annotation file (_lnd.npy)"),
    ("13", 5, -0.6, 0.35, "(68, 2) landmarks", None), ("14", 6, -0.45, 0.65, "numbers", None),
]
AFFECTNET_NPY_VAL = [
    ("0", 0, 0.05, 0.0, "strings", None), ("1", 6, -0.5, 0.6, "numbers", None),
    ("2", 7, -0.2, 0.1, "strings", "contempt"), ("3", 1, 0.7, 0.2, "strings", None),
]


def make_affectnet_npy(root) -> dict:
    """ROOT/{train_set,val_set}/images/<id>.jpg + annotations/<id>_{exp,val,aro,lnd}.npy as the release writes them.

    ``_exp``/``_val``/``_aro`` are 0-d string arrays (dtype ``<U...``, e.g. ``'1'``, ``'0.8'``) for the rows
    marked "strings" and 0-d int64/float64 arrays for "numbers"; ``_lnd`` is a (136,) float64 array (strings
    or (68, 2) for the rows saying so). Returns ``{"train": rows, "test": rows}`` of dicts with ``id``, ``path``,
    ``expression``, ``valence``, ``arousal``, ``landmarks`` (68, 2), ``reason``, ``keep7``, ``keep8``.
    """
    root = Path(root)
    out = {}
    for split, folder, spec in (("train", "train_set", AFFECTNET_NPY_TRAIN), ("test", "val_set", AFFECTNET_NPY_VAL)):
        annotations = root / folder / "annotations"
        annotations.mkdir(parents=True, exist_ok=True)
        rows = []
        for i, (stem, expression, valence, arousal, odd, reason) in enumerate(spec):
            points = landmarks_in_box(10 + i % 4, 12, 180, 190)
            if odd != "no image":
                write_image(root / folder / "images" / f"{stem}.jpg", tiny_image(800 + i + (50 if split == "test" else 0), 16, 16))
            as_text = odd != "numbers"
            _save_npy(annotations / f"{stem}_exp.npy", np.array(str(expression)) if as_text else np.array(expression, np.int64))
            for field, value in (("val", valence), ("aro", arousal)):
                _save_npy(annotations / f"{stem}_{field}.npy", np.array(repr(value)) if as_text else np.array(value, np.float64))
            if odd == "landmarks as strings":
                _save_npy(annotations / f"{stem}_lnd.npy", np.array([f"{v:.3f}" for v in points.ravel()]))
            elif odd == "(68, 2) landmarks":
                _save_npy(annotations / f"{stem}_lnd.npy", points.astype(np.float64))
            elif odd != "no _lnd":
                _save_npy(annotations / f"{stem}_lnd.npy", points.ravel().astype(np.float64))
            if odd == "no _aro":
                (annotations / f"{stem}_aro.npy").unlink()
            elif odd == "garbage _val":
                (annotations / f"{stem}_val.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
            elif odd == "pickled _exp":
                with open(annotations / f"{stem}_exp.npy", "wb") as handle:
                    np.save(handle, np.array([{"expression": expression}], dtype=object), allow_pickle=True)
            rows.append(dict(id=stem, path=f"{folder}/images/{stem}.jpg", expression=expression, valence=valence,
                             arousal=arousal, landmarks=points, reason=reason, keep7=reason is None,
                             keep8=reason in (None, "contempt")))
        out[split] = rows
    return out


# ---------------------------------------------------------------- Aff-Wild2 ----

AFFWILD2_EXPR_HEADER = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"
# VA points at the (single-sample) class VA of make_affectnet's training rows, so that the AffectNet
# GMM labels them with that class: canonical class -> (valence, arousal).
AFFWILD2_CENTRES = {0: (0.0, 0.1), 1: (0.8, 0.3), 2: (-0.6, -0.2), 3: (0.2, 0.9), 4: (-0.5, 0.8), 5: (-0.7, 0.4),
                    6: (-0.4, 0.7)}
# video -> (VA split folder, EXPR split folder or None, frames). A frame is (VA: canonical class of its centre
# or "-5" / "-5v" (only valence -5), EXPR index in Aff-Wild2 order (-1 none, 7 Other, None past the EXPR
# file's end), image exists).
AFFWILD2_VIDEOS = {
    "vidA": ("Train_Set", "Train_Set", [(1, 4, True), (0, 0, True), ("-5", 0, True), (2, 5, False), (3, -1, True),
                                        (4, 7, True), ("-5v", 1, True), (5, 2, True), (6, 1, True), (3, 6, True)]),
    "vidB_left": ("Train_Set", "Validation_Set", [(4, 3, True), (1, 4, True), (2, 5, True), (6, 1, True), (5, None, True)]),
    "vidC": ("Train_Set", None, [(0, 0, True), (1, 4, True), (2, 5, True)]),
    "vidD": ("Validation_Set", "Validation_Set", [(0, 0, True), (6, 1, True), ("-5", 0, True), (1, 4, True)]),
}
AFFWILD2_EXPR_TO_CANONICAL = {0: 0, 1: 6, 2: 5, 3: 4, 4: 1, 5: 2, 6: 3}


def make_affwild2(root, va_line: tuple | None = None, expr_line: tuple | None = None) -> dict:
    """ROOT/VA_Estimation_Challenge/{Train_Set,Validation_Set}/<video>.txt, EXPR_Classification_Challenge/...,
    cropped_aligned/<video>/<frame:05d>.jpg (one frame image missing, one extra image without annotation).

    ``va_line`` / ``expr_line`` = ``(video, frame, text)`` replace that frame's line with ``text`` (garbage).
    Returns ``{"train": frames, "test": frames}``: dicts with ``path``, ``video``, ``frame``, ``va``,
    ``gmm_class`` (None for -5), ``expr`` (canonical, or None when dropped), ``image``.
    """
    root = Path(root)
    out = {"train": [], "test": []}
    for video, (va_split, expr_split, frames) in AFFWILD2_VIDEOS.items():
        va_lines, expr_lines = ["valence,arousal"], [AFFWILD2_EXPR_HEADER]
        for frame, (va_key, expr, image) in enumerate(frames, start=1):
            if va_key == "-5":
                va = (-5.0, -5.0)
            elif va_key == "-5v":
                va = (-5.0, 0.2)
            else:
                va = AFFWILD2_CENTRES[va_key]
            va_lines.append(f"{va[0]},{va[1]}")
            if expr is not None:
                expr_lines.append(str(expr))
            if image:
                write_image(root / "cropped_aligned" / video / f"{frame:05d}.jpg", tiny_image(900 + frame + 20 * len(video), 12, 12))
            out["train" if va_split == "Train_Set" else "test"].append(dict(
                path=f"{video}/{frame:05d}.jpg", video=video, frame=frame, va=va, image=image,
                gmm_class=None if isinstance(va_key, str) else va_key,
                expr=AFFWILD2_EXPR_TO_CANONICAL.get(expr) if expr_split is not None else None))
        for replace, lines in ((va_line, va_lines), (expr_line, expr_lines)):
            if replace is not None and replace[0] == video:
                lines[replace[1]] = replace[2]
        va_path = root / "VA_Estimation_Challenge" / va_split / f"{video}.txt"
        va_path.parent.mkdir(parents=True, exist_ok=True)
        va_path.write_text("\n".join(va_lines) + "\n\n")  # a trailing blank line, as some files have
        if expr_split is not None:
            expr_path = root / "EXPR_Classification_Challenge" / expr_split / f"{video}.txt"
            expr_path.parent.mkdir(parents=True, exist_ok=True)
            expr_path.write_text("\n".join(expr_lines) + "\n")
    write_image(root / "cropped_aligned" / "vidD" / "00005.jpg", tiny_image(999, 12, 12))  # no annotation line
    return out
