"""Neighbour tables: the K nearest training samples of every training sample in VA space.

Stored beside the table as ``<stem>.neighbors.npz`` with ``indices`` (N, K) int64 row indices into the
same table (self excluded) and ``distances`` (N, K) float32 Euclidean VA distances, ordered nearest
first with ties broken by the lower row index.

Fingerprint
-----------
Row indices only mean something for the exact table they were built from, so every table written here
also stores what it was built from (:class:`NeighborFingerprint`): ``fingerprint``, a sha256 over the
row count, the slash-normalised paths in row order and the VA values as float32 bytes, plus the
component digests (``num_rows``, ``paths_sha256``, ``path_set_sha256`` (order-free), ``va_sha256``,
``path_va_set_sha256`` (order-free path/VA pairs)) that
let an error say *what* differs, and ``k``, ``metric`` and ``algorithm``. :func:`load_neighbor_table`
given the training table refuses a table whose fingerprint differs (shuffled or edited rows, new VA) and
one without a fingerprint (written by an older version), naming both files and the command that
rebuilds it. Labels are not covered: label noise does not change the neighbours.

Tables built at training time (no ``.npz`` beside the table) are cached outside the dataset directory,
under :func:`neighbor_cache_dir` as ``<fingerprint>-k<K>.npz``, and reused by later runs on the same
content (see :func:`cached_neighbor_table`).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import DataError, FERError

FINGERPRINT_VERSION = "fer-neighbors-v1"
METRIC = "euclidean"  # the VA metric build_neighbor_table uses


@dataclass(frozen=True)
class NeighborFingerprint:
    """What a neighbour table was built from: ``sha256`` is the fingerprint; the rest explain a mismatch."""

    sha256: str
    num_rows: int
    paths_sha256: str
    path_set_sha256: str
    va_sha256: str
    path_va_set_sha256: str  # order-free (path, VA) pairs: tells "shuffled" from "new VA"

    def as_arrays(self) -> dict:
        return {"fingerprint": np.array(self.sha256), "fingerprint_version": np.array(FINGERPRINT_VERSION),
                "num_rows": np.array(self.num_rows, np.int64), "paths_sha256": np.array(self.paths_sha256),
                "path_set_sha256": np.array(self.path_set_sha256), "va_sha256": np.array(self.va_sha256),
                "path_va_set_sha256": np.array(self.path_va_set_sha256)}

    def differences(self, stored: dict) -> list[str]:
        """What differs from a stored table's metadata (``stored`` as read by :func:`read_neighbor_meta`)."""
        out = []
        if stored.get("num_rows") is not None and int(stored["num_rows"]) != self.num_rows:
            out.append(f"row count {int(stored['num_rows'])} -> {self.num_rows}")
        same_images = stored.get("path_set_sha256") == self.path_set_sha256
        if stored.get("paths_sha256") not in (None, self.paths_sha256):
            if same_images:
                out.append("paths: the same images in a different row order (the table was shuffled or sorted)")
            else:
                out.append("paths: rows were added, removed or renamed")
        if same_images and stored.get("path_va_set_sha256") not in (None, self.path_va_set_sha256):
            out.append("VA: valence/arousal values changed")
        if not out and stored.get("fingerprint") != self.sha256:
            out.append("content differs")
        return out


def _encoded_paths(paths) -> list[bytes]:
    out = []
    for p in paths:
        text = str(p).replace("\\", "/")  # as data.schema reads paths
        encoded = text.encode("utf-8", "surrogatepass")
        out.append(len(encoded).to_bytes(8, "little") + encoded)
    return out


def neighbor_fingerprint(paths, va) -> NeighborFingerprint:
    """The fingerprint of a training table's rows: its paths (row order) and VA (cast to float32)."""
    encoded = _encoded_paths(paths)
    va32 = np.ascontiguousarray(np.asarray(va, dtype=np.float64).astype("<f4"))
    n = len(encoded)
    if va32.shape != (n, 2):
        raise DataError(f"VA must have shape ({n}, 2) to fingerprint a table of {n} rows, got {va32.shape}")
    paths_hash = hashlib.sha256(b"".join(encoded)).hexdigest()
    set_hash = hashlib.sha256(b"".join(sorted(encoded))).hexdigest()
    va_hash = hashlib.sha256(va32.tobytes()).hexdigest()
    pairs_hash = hashlib.sha256(b"".join(sorted(e + v.tobytes() for e, v in zip(encoded, va32)))).hexdigest()
    full = hashlib.sha256(f"{FINGERPRINT_VERSION};rows:{n};".encode())
    full.update(b"".join(encoded))
    full.update(b";va:")
    full.update(va32.tobytes())
    return NeighborFingerprint(full.hexdigest(), n, paths_hash, set_hash, va_hash, pairs_hash)


def table_neighbor_fingerprint(table) -> NeighborFingerprint:
    """:func:`neighbor_fingerprint` of a validated ``data.schema.AnnotationTable`` (must have VA)."""
    if table.va is None:
        raise DataError(f"{table.csv_path}: has no valence/arousal; a VA neighbour table cannot be matched to it")
    return neighbor_fingerprint(table.paths, table.va)


def rebuild_command(csv_path, k) -> str:
    return f"python -m preprocess.knn --table {csv_path} --k {k} --force"


def neighbor_table_path(csv_path) -> Path:
    csv_path = Path(csv_path)
    return csv_path.with_name(csv_path.stem + ".neighbors.npz")


def build_neighbor_table(va: np.ndarray, k: int, algorithm: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """K nearest neighbours of each point of ``va`` (N, 2), self excluded, deterministic ties.

    Returns ``(indices (N, k) int64, distances (N, k) float32)``. Uses faiss when installed and
    ``algorithm='faiss'``, otherwise scikit-learn's KD-tree. Ties are broken by row index: we query
    k + extra points and stable-sort by (distance, index).
    """
    va = np.asarray(va, dtype=np.float64)
    n = len(va)
    if va.ndim != 2 or va.shape[1] != 2:
        raise DataError(f"VA must have shape (N, 2), got {va.shape}")
    if not np.isfinite(va).all():
        row = int(np.flatnonzero(~np.isfinite(va).all(axis=1))[0])
        raise DataError(f"VA row {row + 1} is NaN or infinite; cannot build neighbours")
    if n <= k:
        raise DataError(f"cannot take K={k} neighbours from {n} samples (need more than K)")
    if algorithm == "faiss":
        try:
            import faiss  # type: ignore
        except ImportError:
            raise DataError("algorithm 'faiss' requested but faiss is not installed") from None

        def query(points, kq):
            index = faiss.IndexFlatL2(2)
            index.add(va.astype(np.float32))
            d2, ii = index.search(points.astype(np.float32), kq)
            return np.sqrt(np.maximum(d2, 0)).astype(np.float64), ii
    else:
        from scipy.spatial import cKDTree

        tree = cKDTree(va, leafsize=16, balanced_tree=False, compact_nodes=False)

        def query(points, kq):
            d, ii = tree.query(points, k=kq, workers=-1)
            return d, ii

    def select(rows, kq):
        """Nearest k of ``rows`` excluding self, ordered by (distance, index); also flags unresolved ties."""
        dist, idx = query(va[rows], kq)
        # Points outside the window are at least as far as the farthest returned one.
        window_edge = np.round(np.max(dist, axis=1), 9)
        dist = np.where(idx == rows[:, None], np.inf, dist)  # self never counts, even behind a duplicate
        # Distances equal to 1e-9 count as ties (a KD-tree and a brute force differ in the last bits).
        key = np.round(dist, 9)
        order = np.lexsort((idx, key), axis=1)
        key = np.take_along_axis(key, order, axis=1)
        dist = np.take_along_axis(dist, order, axis=1)
        idx = np.take_along_axis(idx, order, axis=1)
        # The k-th kept distance must be strictly below the largest queried one; otherwise points just
        # outside the query could tie with it and the lower-index rule would be unverified.
        unresolved = (key[:, k - 1] >= window_edge) & (kq < n)
        return idx[:, :k], dist[:, :k], unresolved

    rows = np.arange(n)
    kq = min(n, k + 2)  # self + k neighbours + one more, so the k-th neighbour has a strict boundary
    idx, dist, unresolved = select(rows, kq)
    # Rows with ties at the boundary (duplicate VA points are common in annotated data) are re-queried
    # with a wider window until the k-th neighbour is unambiguous.
    while unresolved.any() and kq < n:
        kq = min(n, kq * 2 + 8)
        todo = rows[unresolved]
        i2, d2, u2 = select(todo, kq)
        idx[todo], dist[todo] = i2, d2
        unresolved = np.zeros(n, bool)
        unresolved[todo] = u2
    if not np.isfinite(dist).all():
        raise DataError("neighbour search returned too few distinct neighbours (too many duplicate VA points)")
    return idx.astype(np.int64), dist.astype(np.float32)


def neighbor_table_bytes(indices: np.ndarray, distances: np.ndarray, fingerprint: NeighborFingerprint | None = None,
                         metric: str = METRIC, algorithm: str = "auto") -> bytes:
    """The ``.npz`` bytes of a neighbour table (with its fingerprint, K, metric and algorithm)."""
    indices = np.asarray(indices, np.int64)
    arrays = {"indices": indices, "distances": np.asarray(distances, np.float32)}
    if fingerprint is not None:
        arrays.update(fingerprint.as_arrays())
    arrays.update(k=np.array(indices.shape[1] if indices.ndim == 2 else 0, np.int64), metric=np.array(str(metric)),
                  algorithm=np.array(str(algorithm)))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def save_neighbor_table(path, indices: np.ndarray, distances: np.ndarray, force: bool = False, *,
                        fingerprint: NeighborFingerprint | None = None, metric: str = METRIC,
                        algorithm: str = "auto") -> Path:
    """Write a neighbour table atomically; refuse to overwrite without ``force``.

    ``fingerprint`` (:func:`neighbor_fingerprint` of the training table the indices refer to) should
    always be given: a table without one is refused when training loads it.
    """
    from common.io import atomic_write_bytes

    path = Path(path)
    if path.exists() and not force:
        raise DataError(f"{path} already exists; pass --force to overwrite it")
    atomic_write_bytes(path, neighbor_table_bytes(indices, distances, fingerprint, metric, algorithm))
    return path


_META_KEYS = ("fingerprint", "fingerprint_version", "num_rows", "paths_sha256", "path_set_sha256", "va_sha256",
              "path_va_set_sha256", "k", "metric", "algorithm")


def _scalar(value):
    value = np.asarray(value)
    if value.shape != ():
        return None
    value = value.item()
    return value if isinstance(value, (str, int)) else None


def check_npz_members(path) -> None:
    """Refuse an ``.npz`` whose members claim more than they store, before NumPy allocates anything.

    A member may inflate at most :data:`common.io.MAX_EXPANSION` times (a zip bomb of zeros is refused), and
    an array header's shape may not need more bytes than follow it in the member (a header claiming
    (56, 4·10^9) int64 would otherwise be allocated first and found short after). A header NumPy cannot
    parse is a DataError too (NumPy raises ValueError, SyntaxError or tokenize's TokenError for those).
    """
    from common.io import EXPANSION_SLACK, MAX_EXPANSION

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            size = path.stat().st_size
            for info in archive.infolist():
                if info.compress_size > size:  # zipfile would ask the file for that many bytes (allocated up front)
                    raise DataError(f"{path}: member '{info.filename}' claims {info.compress_size} stored bytes in a file "
                                    f"of {size}; rebuild it with `python -m preprocess.knn`")
                if info.file_size > MAX_EXPANSION * info.compress_size + EXPANSION_SLACK:
                    raise DataError(f"{path}: member '{info.filename}' inflates from {info.compress_size} to "
                                    f"{info.file_size} bytes (a zip bomb?); rebuild it with `python -m preprocess.knn`")
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _fortran, dtype = read_header(member)
                    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
                    if needed > info.file_size - member.tell():
                        raise DataError(f"{path}: array '{info.filename}' claims shape {shape} of {dtype} ({needed} "
                                        f"bytes) but stores {info.file_size - member.tell()}; rebuild it with "
                                        "`python -m preprocess.knn`")
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - BadZipFile, header parse errors of every kind: the file is damaged
        raise DataError(f"{path}: not a readable neighbour table ({type(exc).__name__}: {str(exc)[:160]}); "
                        "rebuild it with `python -m preprocess.knn`") from None


def read_neighbor_meta(path) -> dict:
    """The stored metadata of a neighbour table (``{}`` when unreadable; missing keys absent).

    Holds ``fingerprint`` etc. when written by this version, and always ``columns`` (the stored K)."""
    try:
        check_npz_members(path)
    except DataError:
        return {}
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            meta = {key: _scalar(data[key]) for key in _META_KEYS if key in data.files}
            if "indices" in data.files:
                shape = data["indices"].shape
                meta["columns"] = int(shape[1]) if len(shape) == 2 else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return {}
    return {k: v for k, v in meta.items() if v is not None}


def validate_neighbor_indices(indices: np.ndarray, num_rows: int, k: int, source) -> np.ndarray:
    """Check shape, range and self-neighbours; return the first ``k`` columns as int32."""
    indices = np.asarray(indices)
    if indices.ndim != 2:
        raise DataError(f"{source}: neighbour table must be 2-D (N, K), got shape {indices.shape}")
    if indices.dtype.kind not in "iuf" or (indices.dtype.kind == "f" and indices.size and not (
            np.isfinite(indices).all() and (indices == np.round(indices)).all())):
        raise DataError(f"{source}: neighbour indices must be integers, got {indices.dtype} values")
    if indices.shape[0] != num_rows:
        raise DataError(f"{source}: neighbour table has {indices.shape[0]} rows but the training table has "
                        f"{num_rows}; rebuild it with `python -m preprocess.knn`")
    if indices.shape[1] < k:
        raise DataError(f"{source}: neighbour table has {indices.shape[1]} columns but K={k} neighbours are requested")
    if k < 1:
        raise DataError(f"{source}: K must be at least 1, got {k}")
    indices = indices[:, :k]
    bad = (indices < 0) | (indices >= num_rows)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        raise DataError(f"{source}, row {row + 1}: neighbour index {int(indices[row][bad[row]][0])} is out of range "
                        f"0..{num_rows - 1}")
    selfn = indices == np.arange(num_rows)[:, None]
    if selfn.any():
        row = int(np.flatnonzero(selfn.any(axis=1))[0])
        raise DataError(f"{source}, row {row + 1}: the sample lists itself as a neighbour")
    return indices.astype(np.int32)


def _checked_distances(distances, num_rows: int, k: int, source) -> np.ndarray:
    """The stored ``distances`` as (N, k) float32: shape, type and finite non-negative values checked."""
    distances = np.asarray(distances)
    if distances.ndim != 2 or distances.shape[0] != num_rows or distances.shape[1] < k:
        raise DataError(f"{source}: neighbour distances must have shape ({num_rows}, >= {k}) like the indices, got "
                        f"{distances.shape}; rebuild it with `python -m preprocess.knn`")
    if distances.dtype.kind not in "iuf":
        raise DataError(f"{source}: neighbour distances must be numbers, got {distances.dtype} values")
    distances = distances[:, :k].astype(np.float32)
    bad = ~np.isfinite(distances) | (distances < 0)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        raise DataError(f"{source}, row {row + 1}: neighbour distance {distances[row][bad[row]][0]} is not a finite "
                        "non-negative number; rebuild it with `python -m preprocess.knn`")
    return distances


def load_neighbor_table(path, table, k: int, *, rebuild_k: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Load and validate a ``.neighbors.npz`` table; returns (indices (N,k) int32, distances or None).

    ``table`` is the training ``data.schema.AnnotationTable`` the indices must refer to: after the
    structural checks (shape, range, self-links) its :func:`table_neighbor_fingerprint` must equal the
    stored one; a mismatch, or a table without a fingerprint (an older version's), is a DataError naming
    the npz, the csv, what differs and ``python -m preprocess.knn --table <csv> --k <K> --force``
    (K: ``rebuild_k``, else the stored K). An ``int`` (a row count) instead of a table checks the
    structure only (inspection and tests; training always passes the table).
    """
    path = Path(path)
    csv_path = getattr(table, "csv_path", None)
    if not path.is_file():
        raise DataError(f"{path}: neighbour table not found; build it with "
                        f"`python -m preprocess.knn --table {csv_path or '<train.csv>'}`")
    check_npz_members(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            indices = data["indices"]
            distances = data["distances"] if "distances" in data.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable neighbour table ({type(exc).__name__}: {exc}); "
                        "rebuild it with `python -m preprocess.knn`") from None
    num_rows = len(table) if csv_path is not None else int(table)
    indices = validate_neighbor_indices(indices, num_rows, k, path)
    if distances is not None:
        distances = _checked_distances(distances, num_rows, k, path)
    if csv_path is not None:
        check_neighbor_fingerprint(path, table, rebuild_k or k)
    return indices, distances


def check_neighbor_fingerprint(path, table, k: int) -> None:
    """Refuse ``path`` unless its stored fingerprint is that of ``table`` (see :func:`load_neighbor_table`)."""
    meta = read_neighbor_meta(path)
    stored_k = meta.get("k") or meta.get("columns") or k
    command = rebuild_command(table.csv_path, max(int(stored_k), int(k)))
    if "fingerprint" not in meta:
        raise DataError(f"{path}: neighbour table has no fingerprint of the table it was built from (written by an "
                        f"older version), so it cannot be checked against {table.csv_path}; rebuild it with "
                        f"`{command}`")
    current = table_neighbor_fingerprint(table)
    if meta["fingerprint"] != current.sha256:
        what = "; ".join(current.differences(meta))
        raise DataError(f"{path} was built from a different version of {table.csv_path} ({what}); its neighbour "
                        f"rows would point at the wrong images. Rebuild it with `{command}`")


def neighbor_cache_dir() -> Path:
    """Where tables built at training time are cached: ``<data home>/cache/neighbors`` (not a dataset folder)."""
    from data.registry import data_home

    return data_home() / "cache" / "neighbors"


def cached_neighbor_table(table, k: int, log=print) -> tuple[np.ndarray, Path, bool]:
    """(indices (N, k) int32, cache file, reused) for ``table``: the cached table of the same content, or
    one built now with :func:`build_neighbor_table` and cached.

    The cache file is ``neighbor_cache_dir() / f"{fingerprint}-k{k}.npz"``, written atomically. A cached
    file that is unreadable or does not match is rebuilt; a failure to write the cache (read-only home,
    disk full) only logs a note.
    """
    from common.io import atomic_write_bytes

    fingerprint = table_neighbor_fingerprint(table)
    cache = neighbor_cache_dir() / f"{fingerprint.sha256}-k{int(k)}.npz"
    if cache.is_file():
        try:
            indices, _ = load_neighbor_table(cache, table, k)
            return indices, cache, True
        except DataError as exc:
            log(f"note: ignoring the cached neighbour table {cache} ({exc}); rebuilding it")
    indices, distances = build_neighbor_table(table.va, k)
    try:
        atomic_write_bytes(cache, neighbor_table_bytes(indices, distances, fingerprint, METRIC, "auto"))
    except (OSError, FERError) as exc:  # FERError: common.io reports failed writes as a WriteError
        reason = getattr(exc, "strerror", None) or str(exc)
        log(f"note: could not cache the neighbour table at {cache} ({reason}); training goes on, and the table "
            "will be rebuilt next time")
    return np.asarray(indices).astype(np.int32), cache, False


def parse_knn_column(values, num_rows: int, k: int, source) -> np.ndarray:
    """Parse the official release's ``knn`` column (``;``-separated 0-based row indices)."""
    rows = []
    for r, text in enumerate(values):
        try:
            parts = [int(v) for v in str(text).strip().split(";") if v.strip() != ""]
        except ValueError:
            raise DataError(f"{source}, row {r + 1}: 'knn' must be ';'-separated integers, got {str(text)[:40]!r}") from None
        if len(parts) < k:
            raise DataError(f"{source}, row {r + 1}: 'knn' lists {len(parts)} neighbours but K={k} are requested")
        out_of_range = [v for v in parts[:k] if not 0 <= v < num_rows]  # checked here: huge values overflow int64
        if out_of_range:
            raise DataError(f"{source}, row {r + 1}: neighbour index {out_of_range[0]} is out of range "
                            f"0..{num_rows - 1}")
        rows.append(parts[:k])
    if not rows:
        raise DataError(f"{source}: the 'knn' column is empty")
    return validate_neighbor_indices(np.asarray(rows, dtype=np.int64), num_rows, k, source)


def format_knn_column(indices: np.ndarray) -> list[str]:
    return [";".join(str(int(v)) for v in row) for row in np.asarray(indices)]
