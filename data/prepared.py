"""A prepared dataset directory: ``dataset.json`` and the image root the tables' paths are relative to.

``dataset.json`` (written by the importers in ``preprocess/``) may hold ``image_root``: ``"images"``
(relative to the directory) when the importer wrote the images, or the absolute path of the original
download when it did not. Without it the image root is ``DIR/images``. The file is validated when read:
a hand-edited or damaged one is an error naming the file and the field, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

from common.errors import DataError
from common.io import read_json_object

DATASET_JSON = "dataset.json"
# Fields whose type is checked when present (others are informational and passed through).
_FIELD_TYPES = {"image_root": str, "dataset": str, "num_classes": int, "class_names": list, "splits": dict,
                "dropped": dict, "allow_outside_root": bool}


def read_dataset_json(dataset_dir) -> dict:
    """``DIR/dataset.json`` as a dict ({} when absent), every known field type-checked."""
    path = Path(dataset_dir) / DATASET_JSON
    if not path.is_file():
        return {}
    meta = read_json_object(path, DataError)
    for key, kind in _FIELD_TYPES.items():
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise DataError(f"{path}: field '{key}' must be a {kind.__name__}, got {type(value).__name__} {value!r}")
    if meta.get("image_root") == "":
        raise DataError(f"{path}: field 'image_root' is empty")
    return meta


def resolve_image_root(dataset_dir, override=None) -> Path:
    """The image root of a prepared directory: ``override``, else dataset.json's, else ``DIR/images``."""
    dataset_dir = Path(dataset_dir)
    if override:
        return Path(override)
    root = read_dataset_json(dataset_dir).get("image_root")
    if root:
        root = Path(root)
        return root if root.is_absolute() else dataset_dir / root
    return dataset_dir / "images"
