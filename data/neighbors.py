"""Neighbour tables: the K nearest training samples of every training sample in VA space.

Stored beside the table as ``<stem>.neighbors.npz`` with ``indices`` (N, K) int64 row indices into the
same table (self excluded) and ``distances`` (N, K) float32 Euclidean VA distances, ordered nearest
first with ties broken by the lower row index.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from common.errors import DataError


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


def save_neighbor_table(path, indices: np.ndarray, distances: np.ndarray, force: bool = False) -> Path:
    import io

    from common.io import atomic_write_bytes

    path = Path(path)
    if path.exists() and not force:
        raise DataError(f"{path} already exists; pass --force to overwrite it")
    buffer = io.BytesIO()
    np.savez(buffer, indices=np.asarray(indices, np.int64), distances=np.asarray(distances, np.float32))
    atomic_write_bytes(path, buffer.getvalue())
    return path


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


def load_neighbor_table(path, num_rows: int, k: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Load and validate a ``.neighbors.npz`` table; returns (indices (N,k) int32, distances or None)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: neighbour table not found; build it with `python -m preprocess.knn --table <train.csv>`")
    try:
        with np.load(path) as data:
            indices = data["indices"]
            distances = data["distances"] if "distances" in data.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable neighbour table ({type(exc).__name__}: {exc}); "
                        "rebuild it with `python -m preprocess.knn`") from None
    indices = validate_neighbor_indices(indices, num_rows, k, path)
    if distances is not None:
        distances = np.asarray(distances, np.float32)[:, :k]
    return indices, distances


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
