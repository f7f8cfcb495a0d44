"""Fuzz every file reader of the toolkit: seeded mutations of valid files, each read under a time limit and a memory cap.

For each file kind the toolkit reads, a *reader* writes valid seed files the way the toolkit (or, for
PyTorch checkpoints, the suite's ``tests/torch_format.py``) writes them, then reads mutated copies with
the real reading code:

============  ==============================================================================================
reader        what is read (the real functions)
============  ==============================================================================================
pth-zip       ``torch.save`` zip archive: ``models.torch_checkpoint.load_state_dict``
pth-legacy    legacy ``torch.save`` stream: the same
keras2-h5     Keras 2 ``save_weights`` ``.h5``: ``models.pretrained.inspect_weights`` (kind, input norm, arrays)
npz           ``train.neighbors.npz``: ``data.neighbors.load_neighbor_table`` against its table (fingerprint)
csv           ``train.csv``: ``engine.splits.load_split`` (schema, paths, image scan)
dataset-json  ``dataset.json``: ``engine.splits.load_split`` + ``data.prepared.read_dataset_json`` / ``resolve_image_root``
config-json   a run's ``config.json``: ``engine.config.read_config_file`` (``--config``),
              ``engine.rundir.prepare_run_dir(resume=True)`` and ``engine.results.load_run_model`` up to building the
              model (the model itself is not built per input: that is TensorFlow, not parsing)
export-json   an export's ``fer_export.json`` and ``.fer-output.json``: ``engine.export.read_export_metadata``,
              ``common.io.output_kind`` / ``check_output_dir``
checkpoint    ``ckpt/latest``, ``state.json``, ``model.weights.h5`` of two checkpoints: ``engine.checkpoint.resume_latest``
              (newest intact checkpoint, fallback, ``CheckpointManager.load_into`` with the optimizer; for a weights
              file byte-identical to a seed, Keras' load runs once and later inputs get the variables it left)
dlib-dat      dlib's ``.dat`` ResNet: ``models.dlib_dat.read_dlib_resnet``, seeded with the real file that
              ``face-recognition-models`` installs (skipped where that package is missing)
============  ==============================================================================================

Mutations (seeded by ``(seed, reader, index)``, so every input can be written again with ``--replay``):
bit flips, bytes and 2/4/8-byte integers set to edge values (0, -1, 2^31, 2^63…), truncation, chunk
deletion/insertion/duplication; JSON documents edited in place (wrong types, missing keys, NaN/inf, 5000-digit
integers, 50 000-deep nesting, megabyte strings); CSV cells, columns and headers; pickle opcodes (arguments set
to edge values, globals swapped for ``os.system``/``pickle.loads``/``_load_from_bytes``, opcodes dropped or
repeated) and a catalogue of hostile pickles (deep nesting, a tuple DAG that doubles at every level, nested
pickles, 2^62-byte length fields); zip members (a storage record that inflates to 512 MiB, npy headers with huge,
negative or object shapes/dtypes); HDF5 structure (a 1 GiB dataset stored in a few kilobytes, wrong dtypes,
attributes of the wrong type, soft-link cycles, external links).

Each input is read in a worker process. The parent kills a worker whose input takes longer than ``--timeout``
seconds (a *hang*) and restarts it at the next input; a worker that dies (a signal in native code) marks a
*crash*. An input ends as

* ``clean``: a :class:`~common.errors.FERError` whose message names the file (``error: <file>: …`` on the CLI);
* ``load``: the reader returned, and the result passed the reader's own checks (shapes, ranges, types);
* ``crash``: any other exception, a wrong result, an error that does not name the file, or a dead worker;
* ``hang``: past the time limit;
* ``over_cap``: the input allocated more than :data:`MEMORY_CAP_BYTES` plus :data:`SIZE_FACTOR` times the size of
  its files (Python and NumPy allocations, measured with ``tracemalloc``, and the process's resident-set growth,
  ``VmHWM`` reset before each input), or hit the worker's address-space limit (``RLIMIT_AS`` = its size after
  set-up + :data:`ADDRESS_SPACE_HEADROOM`). A few kilobytes claiming gigabytes is over; a 300 MB table that takes
  600 MB to read is not.

Usage::

    python -m benchmarks.fuzz --inputs 10000 [--readers pth-zip,csv] [--inputs-for checkpoint=2000] [--seed 0]
                              [--timeout 10] [--out DIR]
    python -m benchmarks.fuzz --replay csv:1234 [--seed 0] [--out DIR]   # write that input, read it, show the traceback

Writes ``DIR/fuzz.json`` (per reader: inputs, clean errors, correct loads, crashes, hangs, over-cap, peak memory;
every finding with its message) and keeps each finding's input files under ``DIR/findings/``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import importlib.util
import io
import json
import os
import pickle
import pickletools
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MEMORY_CAP_BYTES = 256 << 20  # the documented cap: no input may make a reader allocate more than this
SIZE_FACTOR = 4  # ... plus this many times the input's own size (reading a 300 MB table needs a few times that)
ADDRESS_SPACE_HEADROOM = 2 << 30  # RLIMIT_AS above the worker's size after set-up: a runaway allocation fails
DEFAULT_TIMEOUT_S = 10.0
BOMB_BYTES = 512 << 20  # what the zip/HDF5 bombs expand to: twice the cap, a few megabytes on disk
OUTCOMES = ("clean", "load", "crash", "hang", "over_cap")


# ============================================================================================= mutators ====

EDGE_INTS = (0, 1, 2, 7, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
             1 << 32, 1 << 40, (1 << 63) - 1, 1 << 63, (1 << 64) - 1)


def _flip_bits(data: bytearray, rng) -> bytearray:
    for _ in range(int(rng.integers(1, 9))):
        pos = int(rng.integers(len(data)))
        data[pos] ^= 1 << int(rng.integers(8))
    return data


def _set_byte(data: bytearray, rng) -> bytearray:
    data[int(rng.integers(len(data)))] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF, int(rng.integers(256))]))
    return data


def _set_int(data: bytearray, rng) -> bytearray:
    width = int(rng.choice([2, 4, 8]))
    if len(data) < width:
        return data
    value = int(rng.choice(EDGE_INTS)) % (1 << (8 * width))
    if rng.random() < 0.3:
        value = (1 << (8 * width)) - 1 - value  # the negative counterpart in two's complement
    pos = int(rng.integers(len(data) - width + 1))
    data[pos:pos + width] = value.to_bytes(width, "little" if rng.random() < 0.7 else "big")
    return data


def _truncate(data: bytearray, rng) -> bytearray:
    return data[:int(rng.integers(len(data)))]


def _delete_chunk(data: bytearray, rng) -> bytearray:
    start = int(rng.integers(len(data)))
    del data[start:start + int(rng.integers(1, 65))]
    return data


def _insert_chunk(data: bytearray, rng) -> bytearray:
    pos = int(rng.integers(len(data) + 1))
    size = int(rng.integers(1, 65))
    chunk = bytes(rng.integers(0, 256, size, dtype=np.uint8)) if rng.random() < 0.5 else bytes([int(rng.integers(256))]) * size
    data[pos:pos] = chunk
    return data


def _duplicate_chunk(data: bytearray, rng) -> bytearray:
    start = int(rng.integers(len(data)))
    chunk = data[start:start + int(rng.integers(1, 257))]
    pos = int(rng.integers(len(data) + 1))
    data[pos:pos] = chunk
    return data


BYTE_MUTATORS = (_flip_bits, _set_byte, _set_int, _truncate, _delete_chunk, _insert_chunk, _duplicate_chunk)
_BYTE_WEIGHTS = np.array([3, 2, 3, 1, 1, 1, 1], float) / 12


def mutate_bytes(data: bytes, rng, max_rounds: int = 3) -> bytes:
    """1..max_rounds byte-level mutations of ``data``."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, max_rounds + 1))):
        if not out:
            break
        out = BYTE_MUTATORS[int(rng.choice(len(BYTE_MUTATORS), p=_BYTE_WEIGHTS))](out, rng)
    return bytes(out)


# --- JSON ---------------------------------------------------------------------------------------------------
WEIRD_JSON = (None, True, False, 0, -1, 1, 2, 7, 8, 4097, 2 ** 31, 2 ** 63, -(2 ** 63) - 1, 1.5, -0.0, 3.0, 1e308,
              float("nan"), float("inf"), float("-inf"), "", " ", "x", "\x00", "../../etc", "/", "none", "ce", "csv",
              "é\u202e", "1", "true", "null", [], {}, [1, 2], ["a"], [""], {"a": 1}, {"run": 1})
RAW_JSON = ("1" * 5000, "-" + "9" * 400, "1e999", "-1e999", "NaN", "Infinity", "[" * 50000 + "]" * 50000,
            '{"a":' * 30000 + "1" + "}" * 30000, '"' + "a" * 2_000_000 + '"', "[" + ",".join(["0"] * 200000) + "]",
            '"\\ud800"', '"\\u0000"')


def _json_spots(obj, out):
    """Every (container, key) of a parsed JSON document."""
    if isinstance(obj, dict):
        for key in list(obj):
            out.append((obj, key))
            _json_spots(obj[key], out)
    elif isinstance(obj, list):
        for index in range(len(obj)):
            out.append((obj, index))
            _json_spots(obj[index], out)
    return out


def mutate_json(data: bytes, rng) -> bytes:
    """Edit the document (wrong types, deletions, raw tokens the encoder cannot produce) or mutate its bytes."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return mutate_bytes(data, rng)
    if rng.random() < 0.2:
        return mutate_bytes(data, rng)
    raws: dict[str, str] = {}

    def weird():
        if rng.random() < 0.15:
            key = f"@@raw{len(raws)}@@"
            raws[key] = str(rng.choice(RAW_JSON))
            return key
        return copy.deepcopy(WEIRD_JSON[int(rng.integers(len(WEIRD_JSON)))])  # never share (or edit) the constant

    for _ in range(int(rng.integers(1, 4))):
        spots = _json_spots(doc, [])
        action = rng.random()
        if not spots or action < 0.05:
            doc = weird()
            continue
        container, key = spots[int(rng.integers(len(spots)))]
        if action < 0.65:
            container[key] = weird()
        elif action < 0.8:
            del container[key]
        elif action < 0.9 and isinstance(container, dict):
            container[str(rng.choice(["extra", "run", "global_step", "class_names", "image_root", ""]))] = weird()
        else:
            value = container[key]
            container[key] = ([value] if rng.random() < 0.5 else {"v": value}) if not isinstance(value, str) else value * 3
    text = json.dumps(doc, indent=int(rng.choice([0, 2])), allow_nan=True, ensure_ascii=bool(rng.random() < 0.5))
    for key, token in raws.items():
        text = text.replace(json.dumps(key), token)
    return text.encode("utf-8", "surrogatepass")


# --- CSV ----------------------------------------------------------------------------------------------------
WEIRD_CELLS = ("", " ", "nan", "NaN", "inf", "-inf", "1e999", "-1", "7", "8", "99999999999999999999", "0x3", "happy",
               "1;2", ";;;", "1;2;3;nan", "1e38;1e39", "../../x.png", "/etc/passwd", "a\x00b", '"', "\r", "é", "\ufeff",
               "1" * 5000, "x" * 100000, "-0", "2.5", "[1, 2]", "train/000000.jpg", "C:\\x.png", "train\\000001.jpg",
               "0;0;0;0;0;0;0", "1;0;0;0;0;0;9;1")


def mutate_csv(data: bytes, rng) -> bytes:
    if rng.random() < 0.3:
        return mutate_bytes(data, rng)
    rows = list(csv.reader(io.StringIO(data.decode("utf-8", "replace"))))
    if not rows:
        return mutate_bytes(data, rng)
    for _ in range(int(rng.integers(1, 4))):
        if not rows or not rows[0]:
            break
        width = max(len(r) for r in rows)
        action = rng.random()
        row = int(rng.integers(len(rows)))
        col = int(rng.integers(width))
        cell = str(rng.choice(WEIRD_CELLS))
        if action < 0.45 and len(rows) > 1:  # one cell
            target = rows[1 + int(rng.integers(len(rows) - 1))]
            if col < len(target):
                target[col] = cell
        elif action < 0.55:  # a whole column
            for r in rows[1:]:
                if col < len(r):
                    r[col] = cell
        elif action < 0.62:  # drop a column
            rows = [r[:col] + r[col + 1:] for r in rows]
        elif action < 0.7:  # the header: rename, duplicate or blank a name
            header = rows[0]
            if header:
                choice = rng.random()
                if choice < 0.4:
                    header[col % len(header)] = header[int(rng.integers(len(header)))]
                elif choice < 0.7:
                    header[col % len(header)] = cell
                else:
                    header.append(header[col % len(header)])
        elif action < 0.78:  # rows too long or too short
            rows[row] = rows[row] + [cell] * int(rng.integers(1, 4)) if rng.random() < 0.5 else rows[row][:col]
        elif action < 0.85 and len(rows) > 1:  # duplicate or drop rows
            if rng.random() < 0.5:
                rows.insert(row, list(rows[max(row, 1)]))
            else:
                del rows[max(row, 1)]
        elif action < 0.9:  # many rows
            rows += [list(rows[-1]) for _ in range(int(rng.integers(100, 3000)))]
        else:  # only a header, or nothing at all
            rows = rows[:1] if rng.random() < 0.7 else []
    buffer = io.StringIO()
    quoting = csv.QUOTE_ALL if rng.random() < 0.2 else csv.QUOTE_MINIMAL
    csv.writer(buffer, quoting=quoting, lineterminator=str(rng.choice(["\n", "\r\n", "\r"]))).writerows(rows)
    text = buffer.getvalue()
    encoding = str(rng.choice(["utf-8", "utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    return text.encode(encoding, "replace")


# --- pickles ------------------------------------------------------------------------------------------------
HOSTILE_GLOBALS = (("os", "system"), ("builtins", "eval"), ("pickle", "loads"), ("torch.storage", "_load_from_bytes"),
                   ("numpy.core.multiarray", "_reconstruct"), ("collections", "OrderedDict"), ("torch", "HalfStorage"),
                   ("torch", "BFloat16Storage"), ("torch", "LongStorage"), ("torch._utils", "_rebuild_tensor_v2"),
                   ("torch._utils", "_rebuild_parameter"), ("torch", "NoSuchStorage"), ("", ""))


def _pickle_ops(data: bytes) -> list[tuple[str, object, int, int]]:
    """(opcode name, argument, start, end) of each opcode of the first pickle in ``data`` (as far as it parses)."""
    ops = []
    try:
        for opcode, arg, pos in pickletools.genops(data):
            ops.append([opcode.name, arg, pos, None])
    except Exception:  # noqa: BLE001 - a damaged pickle: keep the opcodes before the damage
        pass
    for i, op in enumerate(ops):
        op[3] = ops[i + 1][2] if i + 1 < len(ops) else len(data)
    return [tuple(op) for op in ops]


def mutate_pickle(data: bytes, rng) -> bytes:
    """Opcode-aware edits of one pickle: arguments set to edge values, globals swapped, opcodes dropped/repeated."""
    ops = _pickle_ops(data)
    if not ops or rng.random() < 0.3:
        return mutate_bytes(data, rng)
    name, arg, start, end = ops[int(rng.integers(len(ops)))]
    action = rng.random()
    if name == "GLOBAL" and action < 0.6:
        module, attr = HOSTILE_GLOBALS[int(rng.integers(len(HOSTILE_GLOBALS)))]
        return data[:start] + pickle.GLOBAL + f"{module}\n{attr}\n".encode() + data[end:]
    if name in ("BININT", "BININT1", "BININT2", "LONG1", "BINUNICODE", "SHORT_BINUNICODE", "BINPUT", "LONG_BINPUT",
                "BINGET", "LONG_BINGET", "SHORT_BINSTRING", "BINSTRING", "BINBYTES", "SHORT_BINBYTES") and action < 0.7:
        body = bytearray(data[start + 1:end])
        if body:
            width = {"BININT1": 1, "BINPUT": 1, "BINGET": 1, "SHORT_BINUNICODE": 1, "SHORT_BINSTRING": 1,
                     "SHORT_BINBYTES": 1, "BININT2": 2, "LONG1": 1}.get(name, 4)
            value = int(rng.choice(EDGE_INTS)) % (1 << (8 * width))
            body[:width] = value.to_bytes(width, "little")
            return data[:start + 1] + bytes(body) + data[end:]
    if action < 0.85:
        return data[:start] + data[end:]  # drop the opcode
    return data[:end] + data[start:end] + data[end:]  # repeat it


def _deep_list_pickle(depth: int) -> bytes:
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


def _tuple_dag_pickle(levels: int) -> bytes:
    """t0 = (); t(i+1) = (t(i), t(i)): 2^levels leaves in a few hundred bytes (memo references)."""
    out = bytearray(b"\x80\x02)" + pickle.LONG_BINPUT + struct.pack("<I", 0))
    for i in range(levels):
        out += pickle.LONG_BINGET + struct.pack("<I", i) + pickle.LONG_BINGET + struct.pack("<I", i) + pickle.TUPLE2
        out += pickle.LONG_BINPUT + struct.pack("<I", i + 1)
    return bytes(out) + b"."


def _call_pickle(module: str, name: str, inner: bytes) -> bytes:
    return (b"\x80\x02" + pickle.GLOBAL + f"{module}\n{name}\n".encode() + pickle.BINBYTES + struct.pack("<I", len(inner))
            + inner + pickle.TUPLE1 + pickle.REDUCE + b".")


_HOSTILE_CACHE: dict = {}


def hostile_pickles(valid: bytes) -> list[bytes]:
    """Hand-made pickles no fuzzer finds by chance (built once per ``valid`` pickle)."""
    if valid not in _HOSTILE_CACHE:
        _HOSTILE_CACHE.clear()
        _HOSTILE_CACHE[valid] = _hostile_pickles(valid)
    return _HOSTILE_CACHE[valid]


def _hostile_pickles(valid: bytes) -> list[bytes]:
    huge = struct.pack("<Q", 1 << 62)
    return [
        _deep_list_pickle(100_000),
        _tuple_dag_pickle(64),
        _call_pickle("pickle", "loads", valid),
        _call_pickle("torch.storage", "_load_from_bytes", valid),
        _call_pickle("os", "system", b"echo owned"),
        b"\x80\x04\x8d" + huge + b"abc.",  # BINUNICODE8 claiming 2^62 bytes
        b"\x80\x04\x8e" + huge + b"abc.",  # BINBYTES8
        b"\x80\x04\x95" + huge + b"N.",  # FRAME of 2^62 bytes
        b"\x80\x02\x8b" + struct.pack("<i", 0x7FFFFFFF) + b"\x01.",  # LONG4 of 2 GiB
        b"\x80\x02" + pickle.LONG_BINGET + struct.pack("<I", 0xFFFFFFFF) + b".",
        b"\x80\x02(" * 1 + b"(" * 200_000 + b"t.",  # 200 000 nested MARKs
        b"\x80\x02" + pickle.EMPTY_DICT + b"(" + b"".join(b"X\x01\x00\x00\x00" + bytes([65 + i % 26]) + b"N" for i in range(2000)) + b"u.",
        valid[:len(valid) // 2],
        b"",
    ]


# --- zip archives -------------------------------------------------------------------------------------------

def zip_members(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def build_zip(members, compressed=()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, payload in members:
            archive.writestr(name, payload, compress_type=zipfile.ZIP_DEFLATED if name in compressed else zipfile.ZIP_STORED)
    return buffer.getvalue()


def deflated_zeros_member(name: str, prefix: bytes, size: int) -> bytes:
    """A one-member zip whose member is ``prefix`` + zero bytes up to ``size``, deflated (a zip bomb)."""
    buffer = io.BytesIO()
    info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    _set_compress_level(info, 1)  # zeros deflate ~250:1 at any level; level 1 writes them 3-4x faster than 6
    with zipfile.ZipFile(buffer, "w") as archive:
        with archive.open(info, "w", force_zip64=True) as handle:
            handle.write(prefix)
            block = bytes(1 << 20)
            left = size - len(prefix)
            while left > 0:
                handle.write(block[:min(left, len(block))])
                left -= len(block)
    return buffer.getvalue()


def _set_compress_level(info: zipfile.ZipInfo, level: int | None) -> None:
    """The deflate level a member is written at (ZipInfo.compress_level from Python 3.13, _compresslevel before)."""
    setattr(info, "compress_level" if hasattr(zipfile.ZipInfo, "compress_level") else "_compresslevel", level)


def merge_zip(base: bytes, replace: dict[str, bytes], extra_zip: bytes | None = None) -> bytes:
    """``base`` with members replaced, plus the members of ``extra_zip`` (deflated again at level 1, as
    :func:`deflated_zeros_member` writes them)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(base)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        skip = set()
        if extra_zip is not None:
            with zipfile.ZipFile(io.BytesIO(extra_zip)) as extra:
                skip = set(extra.namelist())
        for info in source.infolist():
            if info.filename in skip:
                continue
            target.writestr(info.filename, replace.get(info.filename, source.read(info)))
        for name, payload in replace.items():
            if name not in source.namelist():
                target.writestr(name, payload)
    if extra_zip is None:
        return out.getvalue()
    # Append the extra members through zipfile (it rebuilds the central directory): read and deflated again.
    merged = io.BytesIO(out.getvalue())
    with zipfile.ZipFile(io.BytesIO(extra_zip)) as extra, zipfile.ZipFile(merged, "a") as target:
        for info in extra.infolist():
            with extra.open(info) as src, target.open(_clone_info(info), "w", force_zip64=True) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    return merged.getvalue()


def _clone_info(info: zipfile.ZipInfo) -> zipfile.ZipInfo:
    clone = zipfile.ZipInfo(info.filename, info.date_time)
    clone.compress_type = info.compress_type
    _set_compress_level(clone, 1)
    return clone


# --- npy headers --------------------------------------------------------------------------------------------

def npy_split(data: bytes):
    """(header dict text, body) of an ``.npy`` member; None when the magic is gone."""
    if not data.startswith(b"\x93NUMPY") or len(data) < 10:
        return None
    size_format, start = ("<H", 10) if data[6] == 1 else ("<I", 12)
    (length,) = struct.unpack(size_format, data[8:start])
    return data[start:start + length].decode("latin-1"), data[start + length:]


def npy_join(header: str, body: bytes) -> bytes:
    header = header.rstrip() + " "
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    if len(header) < 65536:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin-1") + body
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(header)) + header.encode("latin-1") + body


NPY_HEADERS = ("{'descr': '<i8', 'fortran_order': False, 'shape': (56, 4000000000), }",
               "{'descr': '<i8', 'fortran_order': False, 'shape': (-1, 4), }",
               "{'descr': '|O', 'fortran_order': False, 'shape': (56, 4), }",
               "{'descr': '<U3', 'fortran_order': False, 'shape': (56, 4), }",
               "{'descr': '>i8', 'fortran_order': True, 'shape': (56, 4), }",
               "{'descr': '<f2', 'fortran_order': False, 'shape': (56, 4), }",
               "{'descr': 'V8', 'fortran_order': False, 'shape': (56, 4), }",
               "{'descr': [('a', '<i8')], 'fortran_order': False, 'shape': (56, 4), }",
               "{'descr': '<i8', 'fortran_order': False, 'shape': (56, 4, 1, 1, 1), }",
               "{'descr': '<i8', 'fortran_order': False, 'shape': (), }",
               "{'descr': '<i8', 'fortran_order': False, 'shape': (9223372036854775807, 9223372036854775807), }",
               "{'descr': '<i8', 'fortran_order': False, 'shape': (56,", "[" * 10000,
               "{'descr': '<f8', 'fortran_order': False, 'shape': (56, 4), }")


# ============================================================================================== readers ====

class Outcome(Exception):
    """Raised by a reader's ``check`` when a returned result is wrong."""


class Reader:
    """A file kind: ``setup`` writes valid seed files under ``root/pristine``; ``mutate`` picks files to change;
    ``read`` runs the real reading code on ``root/live``; ``check`` judges what it returned."""

    name = ""
    needs_tensorflow = False
    targets: tuple[str, ...] = ()  # relative paths of the files this reader mutates

    def __init__(self, root: Path):
        self.root = Path(root)
        self.pristine = self.root / "pristine"
        self.live = self.root / "live"
        self.seeds: dict[str, bytes] = {}
        self.cache: dict = {}

    def setup(self) -> None:
        raise NotImplementedError

    def mutate(self, rng) -> dict[str, bytes | None]:
        """{relative path: new content (None: delete the file)} for one input."""
        target = self.targets[int(rng.integers(len(self.targets)))]
        return {target: self.mutate_file(target, self.seeds[target], rng)}

    def mutate_file(self, target: str, data: bytes, rng) -> bytes:
        return mutate_bytes(data, rng)

    def read(self):
        raise NotImplementedError

    def check(self, result) -> None:
        pass

    # --- plumbing -----------------------------------------------------------------------------------------
    def prepare(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.pristine.mkdir(parents=True)
        self.setup()
        self.seeds = {t: (self.pristine / t).read_bytes() for t in self.targets}
        shutil.copytree(self.pristine, self.live)

    def restore(self, changed) -> None:
        for rel in changed:
            path = self.live / rel
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            source = self.pristine / rel
            if source.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, path)

    def apply(self, changes: dict[str, bytes | None]) -> None:
        for rel, data in changes.items():
            path = self.live / rel
            if path.exists():
                path.unlink()
            if data is not None:
                path.write_bytes(data)


# --- PyTorch checkpoints ------------------------------------------------------------------------------------

def suite_torch_writer():
    """``tests/torch_format.py``: the suite's writer of ``torch.save`` files (no PyTorch needed)."""
    spec = importlib.util.spec_from_file_location("fer_fuzz_torch_format", ROOT / "tests" / "torch_format.py")
    if spec is None or not Path(spec.origin).is_file():
        raise FileNotFoundError("tests/torch_format.py (the suite's torch.save writer) is needed for the .pth seeds")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torch_seed_object(tf):
    """A small but varied checkpoint: nested under 'state_dict', shared storage, a strided view, a
    parameter, a 0-d counter, float16, int64, an epoch number beside the weights."""
    import collections

    rng = np.random.default_rng(0)
    shared = tf.Storage(rng.standard_normal(24).astype(np.float32))
    weights = collections.OrderedDict()
    weights["module.conv1.weight"] = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    weights["module.bn1.weight"] = tf.Strided(shared, 0, (6,), (1,))
    weights["module.bn1.bias"] = tf.Strided(shared, 6, (3, 2), (1, 3))  # non-contiguous view of the same storage
    weights["module.bn1.running_var"] = rng.uniform(0.5, 2, 6).astype(np.float16)
    weights["module.bn1.num_batches_tracked"] = np.array(17, np.int64)
    weights["module.fc.weight"] = tf.Parameter(rng.standard_normal((7, 6)).astype(np.float32))
    weights["module.fc.bias"] = np.zeros(7, np.float32)
    return {"state_dict": weights, "epoch": 3, "best_acc": 0.875, "arch": "resnet18"}


def _check_state_dict(result) -> None:
    tensors, info = result
    if not isinstance(tensors, dict) or not isinstance(info, dict):
        raise Outcome(f"load_state_dict returned {type(tensors).__name__}, {type(info).__name__}")
    for key, value in tensors.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
            raise Outcome(f"tensor {key!r}: {type(value).__name__} {getattr(value, 'dtype', '')}")


class PthZip(Reader):
    name = "pth-zip"
    targets = ("model.pth",)

    def setup(self):
        tf = suite_torch_writer()
        tf.write_zip(self.pristine / "model.pth", _torch_seed_object(tf))
        self.cache["valid_pickle"] = dict(zip_members((self.pristine / "model.pth").read_bytes()))["archive/data.pkl"]

    def _bomb(self) -> bytes:
        """A storage record that inflates to :data:`BOMB_BYTES` (the pickle agrees on its size)."""
        if "bomb" not in self.cache:
            tf = suite_torch_writer()
            storage = tf.Storage(np.zeros(1, np.float32))
            storage.data = np.broadcast_to(np.float32(0), (BOMB_BYTES // 4,))  # numel only; nothing allocated
            pickled, _ = tf.pickle_bytes({"w": tf.Strided(storage, 0, (BOMB_BYTES // 4,), (1,))})
            record = deflated_zeros_member("archive/data/0", b"", BOMB_BYTES)
            self.cache["bomb"] = merge_zip(build_zip([("archive/data.pkl", pickled), ("archive/byteorder", b"little")]),
                                           {}, extra_zip=record)
        return self.cache["bomb"]

    def mutate_file(self, target, data, rng):
        action = rng.random()
        if action < 0.25:
            return mutate_bytes(data, rng)
        if action < 0.28:
            return self._bomb()
        members = zip_members(data)
        if action < 0.4:  # a hostile data.pkl
            catalogue = hostile_pickles(self.cache["valid_pickle"])
            return build_zip([(n, catalogue[int(rng.integers(len(catalogue)))] if n.endswith("data.pkl") else p)
                              for n, p in members])
        index = int(rng.integers(len(members)))
        name, payload = members[index]
        if action < 0.75:
            payload = mutate_pickle(payload, rng) if name.endswith(".pkl") else mutate_bytes(payload, rng)
            members[index] = (name, payload)
        elif action < 0.82:
            del members[index]
        elif action < 0.9:
            extra = str(rng.choice(["archive/constants.pkl", "archive/code/x.py", "other/data.pkl", "archive/data/99",
                                    "archive/byteorder", "../evil", "/abs"]))
            members.append((extra, mutate_bytes(payload, rng) if payload else b"x"))
        else:
            top = str(rng.choice(["", "a/b", "x" * 300, "archive/", "."]))
            members = [(top + n[n.index("/"):] if "/" in n else n, p) for n, p in members]
        compressed = {n for n, _ in members if rng.random() < 0.2}
        try:
            return build_zip(members, compressed)
        except (ValueError, OSError):
            return mutate_bytes(data, rng)

    def read(self):
        from models.torch_checkpoint import load_state_dict

        return load_state_dict(self.live / "model.pth")

    check = staticmethod(_check_state_dict)


class PthLegacy(Reader):
    name = "pth-legacy"
    targets = ("model.pth",)

    def setup(self):
        tf = suite_torch_writer()
        tf.write_legacy(self.pristine / "model.pth", _torch_seed_object(tf))

    def mutate_file(self, target, data, rng):
        action = rng.random()
        if action < 0.4:
            return mutate_bytes(data, rng)
        # The stream is five pickles then the storages: mutate one of the pickles, or a storage's count.
        offsets, pos = [], 0
        for _ in range(5):
            ops = _pickle_ops(data[pos:])
            if not ops or ops[-1][0] != "STOP":
                break
            offsets.append((pos, pos + ops[-1][3]))
            pos += ops[-1][3]
        if action < 0.5 and len(offsets) == 5:  # a storage element count set to an edge value
            tail = bytearray(data[pos:])
            if len(tail) >= 8:
                tail[:8] = (int(rng.choice(EDGE_INTS)) % (1 << 64)).to_bytes(8, "little")
            return data[:pos] + bytes(tail)
        if action < 0.6 and offsets:
            start, end = offsets[int(rng.integers(len(offsets)))]
            catalogue = hostile_pickles(data[start:end])
            return data[:start] + catalogue[int(rng.integers(len(catalogue)))] + data[end:]
        if not offsets:
            return mutate_bytes(data, rng)
        start, end = offsets[int(rng.integers(len(offsets)))]
        return data[:start] + mutate_pickle(data[start:end], rng) + data[end:]

    def read(self):
        from models.torch_checkpoint import load_state_dict

        return load_state_dict(self.live / "model.pth")

    check = staticmethod(_check_state_dict)


# --- HDF5 -----------------------------------------------------------------------------------------------------

def mutate_h5(path: Path, rng) -> None:
    """Edit an HDF5 file's structure in place: a dataset replaced (a sparse 1 GiB one, strings, NaN, other
    shapes), an attribute replaced (wrong types, missing names), links that loop or leave the file."""
    import h5py

    with h5py.File(path, "r+") as handle:
        datasets, groups = [], [handle]
        handle.visititems(lambda name, obj: (datasets if isinstance(obj, h5py.Dataset) else groups).append(obj))
        action = rng.random()
        if action < 0.5 and datasets:
            dataset = datasets[int(rng.integers(len(datasets)))]
            parent, name, shape = dataset.parent, dataset.name.rsplit("/", 1)[-1], dataset.shape
            del parent[name]
            kind = int(rng.integers(8))
            if kind == 0:
                parent.create_dataset(name, shape=(BOMB_BYTES // 4,), dtype="f4", chunks=(1 << 16,), fillvalue=0.5)
            elif kind == 1:
                parent.create_dataset(name, data=np.array([b"abc", b"de"]))
            elif kind == 2:
                parent.create_dataset(name, data=np.full(shape or (1,), np.nan, np.float32))
            elif kind == 3:
                parent.create_dataset(name, data=np.zeros((0,), np.float32))
            elif kind == 4:
                parent.create_dataset(name, data=np.zeros((2, 3, 4, 5, 6), np.float32))
            elif kind == 5:
                parent.create_dataset(name, data=np.zeros(shape or (1,), [("a", "<i4"), ("b", "<f4")]))
            elif kind == 6:
                parent.create_dataset(name, data=np.float64(1.5))
            else:
                parent.create_dataset(name, data=np.zeros(shape or (1,), np.int64))
        elif action < 0.8:
            objects = groups + datasets
            target = objects[int(rng.integers(len(objects)))]
            names = list(target.attrs)
            attr = names[int(rng.integers(len(names)))] if names and rng.random() < 0.8 else "layer_names"
            kind = int(rng.integers(7))
            value = [np.array([1, 2, 3]), np.array([b"nope", b"\xff\xfe"]), np.array([], dtype="S1"), b"bn_data",
                     np.float64(np.nan), np.array([b"x" * 70000]), np.array([b"/", b"..", b""])][kind]
            try:
                target.attrs[attr] = value
            except (TypeError, ValueError, OSError):
                pass
        else:
            group = groups[int(rng.integers(len(groups)))]
            name = str(rng.choice(["loop", "ext", "hard", "kernel:0", "layer_names"]))
            with contextlib.suppress(Exception):  # the name may exist
                if name == "loop":
                    group["loop"] = h5py.SoftLink("/")
                elif name == "ext":
                    group["ext"] = h5py.ExternalLink("/etc/hostname", "/x")
                elif name == "hard":
                    group["hard"] = handle
                else:
                    group[name] = h5py.SoftLink("/nowhere")


def _h5_mutation(data: bytes, rng) -> bytes:
    if rng.random() < 0.55:
        return mutate_bytes(data, rng)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.h5"
        path.write_bytes(data)
        try:
            mutate_h5(path, rng)
        except Exception:  # noqa: BLE001 - h5py refused the edit itself: fall back to bytes
            return mutate_bytes(data, rng)
        return path.read_bytes()


def write_keras2_h5(path, rng_seed: int = 0) -> None:
    """What Keras 2's ``model.save_weights('x.h5')`` writes for an image-classifiers ResNet's first layers."""
    import h5py

    rng = np.random.default_rng(rng_seed)
    layers = {"data": {}, "bn_data": {"gamma": (3,), "beta": (3,), "moving_mean": (3,), "moving_variance": (3,)},
              "zero_padding2d_1": {}, "conv0": {"kernel": (7, 7, 3, 8)},
              "bn0": {"gamma": (8,), "beta": (8,), "moving_mean": (8,), "moving_variance": (8,)},
              "stage1_unit1_conv1": {"kernel": (3, 3, 8, 8)}, "fc1": {"kernel": (8, 10), "bias": (10,)}}
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = np.array([n.encode() for n in layers])
        handle.attrs["backend"], handle.attrs["keras_version"] = b"tensorflow", b"2.2.4"
        for name, weights in layers.items():
            group = handle.create_group(name)
            names = [f"{name}/{k}:0" for k in weights]
            group.attrs["weight_names"] = np.array([n.encode() for n in names])
            for full, shape in zip(names, weights.values()):
                group.create_dataset(full, data=rng.standard_normal(shape).astype(np.float32))


class Keras2H5(Reader):
    name = "keras2-h5"
    targets = ("weights.h5",)

    def setup(self):
        write_keras2_h5(self.pristine / "weights.h5")

    def mutate_file(self, target, data, rng):
        return _h5_mutation(data, rng)

    def read(self):
        from models.pretrained import inspect_weights

        return inspect_weights(self.live / "weights.h5")

    def check(self, result):
        rows, info = result
        if not isinstance(info, dict) or any(len(r) != 3 for r in rows):
            raise Outcome(f"inspect_weights returned {result!r:.200}")


# --- tiny dataset (shared by the table readers) -----------------------------------------------------------------

_TINY_DATASETS: dict = {}


def write_tiny_dataset(folder: Path, train: int = 48, test: int = 24, size: int = 32) -> Path:
    """A tiny prepared directory of the built-in synthetic benchmark (JPEGs, VA, votes, landmarks); rendered
    once per process and copied after that."""
    from data.synthetic import SyntheticConfig, generate

    key = (train, test, size)
    if key not in _TINY_DATASETS or not _TINY_DATASETS[key].is_dir():
        _TINY_DATASETS[key] = Path(tempfile.mkdtemp(prefix="fer-fuzz-ds-")) / "ds"
        generate(_TINY_DATASETS[key], SyntheticConfig(train_size=train, test_size=test, image_size=size, workers=1),
                 progress=False)
    shutil.copytree(_TINY_DATASETS[key], folder)
    return Path(folder)


class Npz(Reader):
    name = "npz"
    targets = ("ds/train.neighbors.npz",)
    K = 4

    def setup(self):
        from data.neighbors import build_neighbor_table, neighbor_table_path, save_neighbor_table, table_neighbor_fingerprint
        from data.schema import load_table

        ds = write_tiny_dataset(self.pristine / "ds")
        table = load_table(ds / "train.csv", 7, ds / "images", require_va=True)
        indices, distances = build_neighbor_table(table.va, self.K)
        save_neighbor_table(neighbor_table_path(ds / "train.csv"), indices, distances,
                            fingerprint=table_neighbor_fingerprint(table))

    def _table(self):
        if "table" not in self.cache:
            from data.schema import load_table

            self.cache["table"] = load_table(self.live / "ds" / "train.csv", 7, self.live / "ds" / "images",
                                             require_va=True)
        return self.cache["table"]

    def _bomb(self, members):
        if "bomb" not in self.cache:
            header = "{'descr': '<i8', 'fortran_order': False, 'shape': (48, %d), }" % (BOMB_BYTES // 8 // 48)
            prefix = npy_join(header, b"")
            self.cache["bomb"] = merge_zip(build_zip(members), {}, extra_zip=deflated_zeros_member(
                "indices.npy", prefix, len(prefix) + BOMB_BYTES))
        return self.cache["bomb"]

    def mutate_file(self, target, data, rng):
        action = rng.random()
        if action < 0.3:
            return mutate_bytes(data, rng)
        members = zip_members(data)
        if action < 0.33:
            return self._bomb(members)
        index = int(rng.integers(len(members)))
        name, payload = members[index]
        split = npy_split(payload)
        if action < 0.6 and split is not None:
            header, body = split
            if rng.random() < 0.6:
                header = str(rng.choice(NPY_HEADERS))
            else:
                header = mutate_bytes(header.encode("latin-1"), rng).decode("latin-1")
            if rng.random() < 0.3:
                body = mutate_bytes(body, rng) if body else body
            members[index] = (name, npy_join(header, body))
        elif action < 0.75:
            members[index] = (name, mutate_bytes(payload, rng))
        elif action < 0.85:
            del members[index]
        elif action < 0.95:  # NaN, negative or out-of-range values in an array of the right shape
            array = np.load(io.BytesIO(payload), allow_pickle=False)
            if array.dtype.kind in "iuf" and array.size:
                flat = array.reshape(-1).copy()
                pos = int(rng.integers(flat.size))
                flat[pos] = rng.choice([-1, 48, 10 ** 9, 0]) if array.dtype.kind in "iu" else rng.choice([np.nan, np.inf, -1.0])
                buffer = io.BytesIO()
                np.save(buffer, flat.reshape(array.shape))
                members[index] = (name, buffer.getvalue())
        else:
            members.append(("indices.npy" if rng.random() < 0.5 else "extra.npy", payload))
        return build_zip(members, {n for n, _ in members if rng.random() < 0.2})

    def read(self):
        from data.neighbors import load_neighbor_table, read_neighbor_meta

        path = self.live / "ds" / "train.neighbors.npz"
        read_neighbor_meta(path)
        return load_neighbor_table(path, self._table(), self.K)

    def check(self, result):
        indices, distances = result
        n = len(self._table())
        if indices.dtype != np.int32 or indices.shape != (n, self.K) or indices.min() < 0 or indices.max() >= n:
            raise Outcome(f"indices {indices.dtype} {indices.shape}")
        if (indices == np.arange(n)[:, None]).any():
            raise Outcome("a sample lists itself")
        if distances is not None and (distances.shape != (n, self.K) or not np.isfinite(distances).all()
                                      or (distances < 0).any()):
            raise Outcome(f"distances {distances.shape}")


def _check_annotation_table(table, max_rows: int) -> None:
    if len(table) == 0 or len(table) > max_rows:
        raise Outcome(f"{len(table)} rows")
    labels = np.asarray(table.labels)
    if labels.dtype != np.int32 or labels.min() < 0 or labels.max() >= 7:
        raise Outcome(f"labels {labels.dtype} {labels.min()}..{labels.max()}")
    for name in ("va", "landmarks", "votes"):
        array = getattr(table, name)
        if array is not None and (len(array) != len(table) or not np.isfinite(array).all()):
            raise Outcome(f"{name} not finite or of the wrong length")
    if table.va is not None and (np.abs(table.va) > 1 + 1e-6).any():
        raise Outcome("VA outside [-1, 1]")
    root = Path(table.image_root).resolve()
    for path in table.absolute_paths():
        if root not in Path(path).resolve().parents:
            raise Outcome(f"path {path} outside the image root {root}")


class Csv(Reader):
    name = "csv"
    targets = ("ds/train.csv",)

    def setup(self):
        write_tiny_dataset(self.pristine / "ds")

    def mutate_file(self, target, data, rng):
        return mutate_csv(data, rng)

    def read(self):
        from engine.splits import load_split

        return load_split(self.live / "ds", "train.csv", 7, require_va=bool(self.cache.setdefault("va", False)),
                          log=lambda *a: None)

    def check(self, result):
        _check_annotation_table(result, 48)


class DatasetJson(Reader):
    name = "dataset-json"
    targets = ("ds/dataset.json",)

    def setup(self):
        ds = write_tiny_dataset(self.pristine / "ds")
        meta = {"dataset": "csv", "num_classes": 7, "class_names": ["Neutral", "Happy", "Sad", "Surprise", "Fear",
                                                                     "Disgust", "Anger"],
                "image_root": "images", "splits": {"train": 48, "test": 24}, "dropped": {},
                "allow_outside_root": False, "written_by": "fer-ldl preprocess"}
        (ds / "dataset.json").write_text(json.dumps(meta, indent=2))

    def mutate_file(self, target, data, rng):
        return mutate_json(data, rng)

    def read(self):
        from data.prepared import read_dataset_json, resolve_image_root
        from engine.splits import load_split

        meta = read_dataset_json(self.live / "ds")
        resolve_image_root(self.live / "ds")
        return meta, load_split(self.live / "ds", "train.csv", 7, log=lambda *a: None)

    def check(self, result):
        meta, table = result
        if not isinstance(meta, dict):
            raise Outcome(f"read_dataset_json returned {type(meta).__name__}")
        _check_annotation_table(table, 48)


# --- TensorFlow readers: config.json, fer_export.json, checkpoints -------------------------------------------

def _small_model(num_train: int = 12):
    import keras

    from models.backbones import build_backbone
    from models.ce import CEConfig, CEModel

    keras.utils.set_random_seed(0)
    model = CEModel(build_backbone("small_cnn", 24), 7, num_train, CEConfig())
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.build_all(24)
    return model


class _ReachedBuild(Exception):
    """load_run_model got past every check of config.json and asked for the model."""


class ConfigJson(Reader):
    name = "config-json"
    needs_tensorflow = True
    targets = ("run/config.json",)

    def setup(self):
        from engine.config import RunConfig
        from engine.run import Run

        ds = write_tiny_dataset(self.pristine / "ds")
        cfg = RunConfig(dataset="csv", num_classes=7, data_dir=str(ds), method="ldlva", backbone="small_cnn",
                        image_size=32, epochs=2, batch_size=8, run=str(self.live / "run"), export=False,
                        tensorboard=False, verbose=0, test_every=0)
        run = Run(cfg, log=lambda *a, **k: None)
        run.load_splits()
        self.cache["record"] = record = run.record()
        (self.pristine / "run").mkdir()
        (self.pristine / "run" / "config.json").write_text(json.dumps(record, indent=2, sort_keys=True))

    def mutate_file(self, target, data, rng):
        return mutate_json(data, rng)

    def read(self):
        import engine.results
        from engine.rundir import prepare_run_dir

        from engine.config import read_config_file

        run = self.live / "run"
        read_config_file(run / "config.json")  # --config RUN/config.json
        prepare_run_dir(run, self.cache["record"], resume=True, force=False)
        real_build = engine.results.build_model

        def reached(built, num_train_samples, method_inputs=None, strategy=None, load_weights=True):
            raise _ReachedBuild((built.cfg, built.method_cfg, num_train_samples))

        engine.results.build_model = reached
        try:
            engine.results.load_run_model(run, log=lambda *a, **k: None)
        except _ReachedBuild as reached_build:
            return reached_build.args[0]
        finally:
            engine.results.build_model = real_build
        raise Outcome("load_run_model returned without building a model")

    def check(self, result):
        cfg, method_cfg, n = result
        if not isinstance(n, int) or n < 1 or not isinstance(cfg.image_size, int) or cfg.image_size < 1:
            raise Outcome(f"num_train_samples {n!r}, image_size {cfg.image_size!r}")


class ExportJson(Reader):
    name = "export-json"
    needs_tensorflow = True
    targets = ("export/fer_export.json", "export/.fer-output.json")

    def setup(self):
        from engine.export import export_saved_model

        export_saved_model(_small_model(), self.pristine / "export", 24, [f"c{i}" for i in range(7)], "ce",
                           provenance={"dataset": "synthetic", "synthetic": True, "method": "ce", "run": {},
                                       "metrics": {"accuracy": 0.5}}, log=lambda *a, **k: None)

    def mutate_file(self, target, data, rng):
        return mutate_json(data, rng)

    def read(self):
        from common.io import check_output_dir, output_kind
        from engine.export import SAVED_MODEL_LEGACY, read_export_metadata

        folder = self.live / "export"
        output_kind(folder, SAVED_MODEL_LEGACY)
        check_output_dir(folder, "saved_model", force=True, legacy=SAVED_MODEL_LEGACY)
        return read_export_metadata(folder)

    def check(self, meta):
        names, size = meta.get("class_names"), meta.get("image_size")
        if not names or not all(isinstance(n, str) and n for n in names) or not 8 <= size <= 4096:
            raise Outcome(f"class_names {names!r:.80}, image_size {size!r}")


class Checkpoint(Reader):
    name = "checkpoint"
    needs_tensorflow = True
    targets = ("run/ckpt/latest", "run/ckpt/step-000000002/state.json", "run/ckpt/step-000000002/model.weights.h5",
               "run/ckpt/step-000000001/state.json", "run/ckpt/step-000000001/model.weights.h5")

    def setup(self):
        from engine.checkpoint import CheckpointManager

        self.cache["model"] = model = _small_model()
        manager = CheckpointManager(self.pristine / "run")
        for step in (1, 2):
            model.optimizer.iterations.assign(step)
            manager.save(model, {"global_step": step, "epoch": 0, "step_in_epoch": step, "time": 0.0})

    def mutate(self, rng):
        changes = super().mutate(rng)
        if rng.random() < 0.15:  # the newest checkpoint and its fallback both damaged
            changes.update(super().mutate(rng))
        return changes

    def mutate_file(self, target, data, rng):
        if target.endswith(".json"):
            return mutate_json(data, rng)
        if target.endswith(".h5"):
            return _h5_mutation(data, rng)
        if rng.random() < 0.5:
            return str(rng.choice(["step-000000001", "step-000000003", "../ckpt/step-000000002", "", "step-",
                                   "step-000000002/..", "/etc", "step-000000002\x00", "latest"])).encode()
        return mutate_bytes(data, rng)

    def read(self):
        from engine.checkpoint import CheckpointManager, resume_latest

        model = self.cache["model"]
        if "pristine_weights" not in self.cache:
            import hashlib

            self.cache["sha"] = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()
            self.cache["pristine_weights"] = {self.cache["sha"](p): None for p in self.pristine.rglob("model.weights.h5")}
            real = model.load_weights

            def state():
                return [*model.variables, *model.optimizer.variables]

            def load_weights(path, *args, **kwargs):
                # Keras' load of a file byte-identical to a seed checkpoint (only another file of the input was
                # mutated) is most of an input's time: done once, then the variables it left are assigned.
                sha = self.cache["sha"](path)
                if sha not in self.cache["pristine_weights"]:
                    return real(path, *args, **kwargs)
                if self.cache["pristine_weights"][sha] is None:
                    real(path, *args, **kwargs)
                    self.cache["pristine_weights"][sha] = [v.numpy() for v in state()]
                for variable, value in zip(state(), self.cache["pristine_weights"][sha]):
                    variable.assign(value)
                return None

            model.load_weights = load_weights
        manager = CheckpointManager(self.live / "run")
        return resume_latest(manager, model, log=lambda *a, **k: None)

    def check(self, step):
        if step not in (0, 1, 2):
            raise Outcome(f"resumed at step {step!r}")


class DlibDat(Reader):
    name = "dlib-dat"
    targets = ("model.dat",)

    @staticmethod
    def available() -> bool:
        """The reader exists and the real file is installed (``face-recognition-models``, in requirements.txt)."""
        if not (ROOT / "models" / "dlib_dat.py").is_file():
            return False
        try:
            from models.dlib_dat import default_dlib_path

            return default_dlib_path().is_file()
        except Exception:  # noqa: BLE001 - ConfigError: the package is not installed
            return False

    def setup(self):
        from models.dlib_dat import default_dlib_path

        shutil.copy(default_dlib_path(), self.pristine / "model.dat")  # the real 22 MB network as the seed

    def mutate_file(self, target, data, rng):
        if rng.random() < 0.1:  # a few bytes of garbage after the real file, or the file twice
            return data + (data if rng.random() < 0.3 else bytes(rng.integers(0, 256, 64, dtype=np.uint8)))
        return mutate_bytes(data, rng)

    def check(self, result):
        from models.dlib_dat import anet_layers

        if result is None or not anet_layers():
            raise Outcome("read_dlib_resnet returned nothing")

    def read(self):
        from models.dlib_dat import read_dlib_resnet

        return read_dlib_resnet(self.live / "model.dat")


READERS = {cls.name: cls for cls in (PthZip, PthLegacy, Keras2H5, Npz, Csv, DatasetJson, ConfigJson, ExportJson,
                                     Checkpoint, DlibDat)}


def available_readers() -> list[str]:
    return [name for name, cls in READERS.items() if cls is not DlibDat or DlibDat.available()]


def input_rng(seed: int, reader: str, index: int):
    return np.random.default_rng([seed, zlib.crc32(reader.encode()), index])


# =============================================================================================== worker ====

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def input_bytes(reader: Reader, changed) -> int:
    """The size of an input's mutated files (a reader may allocate in proportion to what it is given)."""
    return sum((reader.live / rel).stat().st_size for rel in changed if (reader.live / rel).is_file())


def classify(reader: Reader, run, size: int = 0) -> dict:
    """Run one read and judge it: {'kind', 'detail', 'peak_bytes', 'rss_bytes', 'seconds'}. Over the cap: more than
    :data:`MEMORY_CAP_BYTES` plus :data:`SIZE_FACTOR` times the input's ``size``."""
    import tracemalloc

    from common.errors import FERError

    rss_before = _status_kib("VmRSS")
    exact_rss = _reset_peak_rss()
    tracemalloc.reset_peak()
    traced_before = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    kind, detail = "load", ""
    try:
        result = run()
        reader.check(result)
    except FERError as exc:
        message = str(exc)
        kind, detail = ("clean", message[:300]) if str(reader.live) in message else ("crash", "error without the file: " + message[:300])
    except Outcome as exc:
        kind, detail = "crash", f"wrong result: {exc}"[:300]
    except MemoryError:
        kind, detail = "over_cap", "MemoryError (address-space limit)"
    except RecursionError as exc:
        kind, detail = "crash", f"RecursionError: {str(exc)[:200]}"
    except Exception as exc:  # noqa: BLE001 - anything else is the finding
        tail = traceback.format_exc().strip().splitlines()
        kind, detail = "crash", f"{type(exc).__name__}: {str(exc)[:200]} | " + " | ".join(tail[-5:-1])[:600]
    seconds = time.perf_counter() - start
    peak = max(tracemalloc.get_traced_memory()[1] - traced_before, 0)
    rss = max((_status_kib("VmHWM") - rss_before) * 1024, 0) if exact_rss else 0
    if kind in ("clean", "load") and max(peak, rss) > MEMORY_CAP_BYTES + SIZE_FACTOR * size:
        kind, detail = "over_cap", f"allocated {max(peak, rss) / 2**20:.0f} MiB ({kind}: {detail[:200]})"
    return {"kind": kind, "detail": detail, "peak_bytes": int(peak), "rss_bytes": int(rss), "seconds": round(seconds, 4)}


def safe_mutate(reader: Reader, seed: int, name: str, index: int) -> dict:
    """The reader's mutation of input ``index``; should a mutator itself fail (a bug of this harness, not of the
    toolkit), a byte mutation of the first target instead, so one harness bug cannot end a long run."""
    try:
        return reader.mutate(input_rng(seed, name, index))
    except Exception:  # noqa: BLE001 - logged on stderr (worker.log)
        traceback.print_exc()
        target = reader.targets[0]
        return {target: mutate_bytes(reader.seeds[target], input_rng(seed, name, index))}


def keep_input(reader: Reader, changed, index: int, findings_dir: Path) -> None:
    """Copy the files of input ``index`` under ``findings_dir/<reader>-<index>/`` (missing ones: deleted by it)."""
    keep = findings_dir / f"{reader.name}-{index}"
    for rel in changed:
        source = reader.live / rel
        if source.is_file():
            (keep / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, keep / rel)


def worker(jobs: list, seed: int, workdir: Path) -> int:
    """Read inputs ``start..stop`` of each ``(reader, start, stop)``; one JSON line per event on the protocol fd."""
    import resource
    import tracemalloc

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library prints go to stderr, never into the protocol
    sys.stdout = sys.stderr
    if any(READERS[name].needs_tensorflow for name, _, _ in jobs):
        from common.cli import quiet_tensorflow

        quiet_tensorflow()
    readers = {}
    for name, _start, _stop in jobs:
        readers[name] = READERS[name](workdir / name)
        readers[name].prepare()
        readers[name].read()  # warm: imports and caches outside the measured reads
    # Address-space limit: a runaway allocation fails here instead of swapping the machine.
    size = _status_kib("VmSize") * 1024
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (size + ADDRESS_SPACE_HEADROOM, resource.RLIM_INFINITY))
    tracemalloc.start()
    print(json.dumps({"ready": True}), file=proto)
    for name, start, stop in jobs:
        reader = readers[name]
        changed: list[str] = []
        for index in range(start, stop):
            reader.restore(changed)
            changes = safe_mutate(reader, seed, name, index)
            changed = list(changes)
            reader.apply(changes)
            print(json.dumps({"reader": name, "index": index, "begin": changed}), file=proto)
            outcome = classify(reader, reader.read, input_bytes(reader, changed))
            if outcome["kind"] not in ("clean", "load"):
                keep_input(reader, changed, index, workdir.parent / "findings")
            print(json.dumps({"reader": name, "index": index, **outcome}), file=proto)
            if outcome["detail"].startswith("MemoryError"):
                return 3  # the heap may be in any state: the parent restarts a fresh worker
        reader.restore(changed)
    return 0


# =============================================================================================== parent ====

class _Lines:
    """Lines of a pipe, with a timeout per line."""

    def __init__(self, stream):
        self.fd = stream.fileno()
        self.buffer = b""

    def next(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    return None
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


def _worker_env() -> dict:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT),
                PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")


def run_campaign(readers, inputs: int, seed: int = 0, timeout: float = DEFAULT_TIMEOUT_S, out: Path | None = None,
                 log=print, setup_timeout: float = 300.0, inputs_for: dict | None = None) -> dict:
    """Fuzz ``readers`` with ``inputs`` inputs each (``inputs_for``: other counts for some readers); returns
    {'readers': {name: figures}, 'findings': [...]}."""
    out = Path(out) if out else Path(tempfile.mkdtemp(prefix="fer-fuzz-"))
    workdir = out / "work"
    figures = {name: {"inputs": 0, **{k: 0 for k in OUTCOMES}, "peak_traced_bytes": 0, "peak_rss_bytes": 0,
                      "seconds": 0.0, "slowest_s": 0.0} for name in readers}
    findings = []
    todo = [[name, 0, (inputs_for or {}).get(name, inputs)] for name in readers]
    # TensorFlow readers share one worker (its start-up is seconds), the others another.
    groups = [[j for j in todo if not READERS[j[0]].needs_tensorflow], [j for j in todo if READERS[j[0]].needs_tensorflow]]
    stderr_log = open(out / "worker.log", "ab") if out.is_dir() or out.mkdir(parents=True) is None else None
    started = time.perf_counter()
    restarts = 0

    def write_report() -> dict:
        report = {"seed": seed, "inputs_per_reader": inputs, "inputs_for": inputs_for or {}, "timeout_s": timeout,
                  "memory_cap_bytes": MEMORY_CAP_BYTES, "size_factor": SIZE_FACTOR, "address_space_headroom_bytes": ADDRESS_SPACE_HEADROOM,
                  "wall_s": round(time.perf_counter() - started, 1), "readers": figures, "findings": findings}
        (out / "fuzz.json").write_text(json.dumps(report, indent=2))
        return report

    for group in groups:
        while group:
            proc = subprocess.Popen([sys.executable, "-m", "benchmarks.fuzz", "--worker", json.dumps(group),
                                     "--seed", str(seed), "--workdir", str(workdir)], cwd=ROOT, env=_worker_env(),
                                    stdout=subprocess.PIPE, stderr=stderr_log)
            lines = _Lines(proc.stdout)
            current = None
            try:
                first = lines.next(setup_timeout)
                if first is None or not json.loads(first).get("ready"):
                    raise RuntimeError(f"fuzz worker failed to start (see {out / 'worker.log'})")
                while True:
                    line = lines.next(timeout if current else setup_timeout)
                    if line is None:
                        break
                    event = json.loads(line)
                    if "begin" in event:
                        current = event
                        continue
                    _record(figures[event["reader"]], event)
                    if event["kind"] not in ("clean", "load"):  # (the worker kept its input files)
                        findings.append(_finding(event, workdir, out, None))
                    _advance(group, event["reader"], event["index"] + 1)
                    row = figures[event["reader"]]
                    if row["inputs"] % 1000 == 0:
                        log(f"  {event['reader']}: {row['inputs']} inputs, " + ", ".join(
                            f"{k} {row[k]}" for k in OUTCOMES if row[k]) + f" ({time.perf_counter() - started:.0f} s)")
                    current = None
            except TimeoutError:
                event = {**current, "kind": "hang", "detail": f"no result within {timeout:g} s", "peak_bytes": 0,
                         "rss_bytes": 0, "seconds": timeout}
                findings.append(_finding(event, workdir, out, current))
                _record(figures[current["reader"]], event)
                _advance(group, current["reader"], current["index"] + 1)
                current = None
            finally:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0 if current is not None else 60)  # at EOF: let it exit
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
            if current is not None:  # the worker died inside a read
                event = {**current, "kind": "crash", "detail": f"worker died (exit {proc.returncode})",
                         "peak_bytes": 0, "rss_bytes": 0, "seconds": 0.0}
                findings.append(_finding(event, workdir, out, current))
                _record(figures[current["reader"]], event)
                _advance(group, current["reader"], current["index"] + 1)
            elif proc.returncode not in (0, 3) and group:
                restarts += 1
                if restarts > 20:
                    raise RuntimeError(f"fuzz worker exited {proc.returncode} between inputs (see {out / 'worker.log'})")
                log(f"fuzz worker exited {proc.returncode} between inputs (see {out / 'worker.log'}); restarting")
            group[:] = [j for j in group if j[1] < j[2]]
            write_report()
    if stderr_log:
        stderr_log.close()
    report = write_report()
    log(format_table(report))
    return report


def _advance(group, reader, next_index):
    for job in group:
        if job[0] == reader:
            job[1] = max(job[1], next_index)


def _record(row: dict, event: dict) -> None:
    row["inputs"] += 1
    row[event["kind"]] += 1
    row["peak_traced_bytes"] = max(row["peak_traced_bytes"], event["peak_bytes"])
    row["peak_rss_bytes"] = max(row["peak_rss_bytes"], event["rss_bytes"])
    row["seconds"] = round(row["seconds"] + event["seconds"], 3)
    row["slowest_s"] = max(row["slowest_s"], event["seconds"])


def _finding(event: dict, workdir: Path, out: Path, begin: dict | None) -> dict:
    """A finding's record; ``begin`` (a hang or a dead worker: its files are still in place) copies the input."""
    keep = out / "findings" / f"{event['reader']}-{event['index']}"
    for rel in (begin or {}).get("begin", []):
        source = workdir / event["reader"] / "live" / rel
        if source.is_file():
            (keep / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, keep / rel)
    return {"reader": event["reader"], "index": event["index"], "kind": event["kind"], "detail": event["detail"]}


def format_table(report: dict) -> str:
    lines = ["| reader | inputs | clean errors | correct loads | crashes | hangs | over cap | peak traced MiB "
             "| peak RSS growth MiB | slowest input s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, row in report["readers"].items():
        lines.append(f"| {name} | {row['inputs']} | {row['clean']} | {row['load']} | {row['crash']} | {row['hang']} | "
                     f"{row['over_cap']} | {row['peak_traced_bytes'] / 2**20:.1f} | {row['peak_rss_bytes'] / 2**20:.1f} | "
                     f"{row['slowest_s']:.2f} |")
    return "\n".join(lines)


class _Hang(BaseException):
    """SIGALRM in :func:`run_in_process` (a BaseException: no reader's ``except Exception`` may swallow it)."""


def run_in_process(names, inputs: int, seed: int = 0, workdir: Path | None = None,
                   timeout: float = DEFAULT_TIMEOUT_S) -> dict:
    """The inputs of :func:`run_campaign`, read in this process: the suite's bounded budget for the TensorFlow
    readers, whose worker would spend most of its time importing TensorFlow. Same outcomes and memory
    figures; the time limit is SIGALRM (it interrupts Python code, not a native call) and there is no
    address-space limit. Returns the report dict of :func:`run_campaign` (no files kept)."""
    import signal
    import tracemalloc

    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="fer-fuzz-"))
    figures, findings = {}, []

    def alarm(_signum, _frame):
        raise _Hang()

    previous = signal.signal(signal.SIGALRM, alarm)
    started_tracing = False
    try:
        for name in names:
            reader = READERS[name](workdir / name)
            reader.prepare()
            reader.read()  # imports and caches outside the measured reads, as the worker does: untraced (tracing
            if not tracemalloc.is_tracing():  # makes a first TensorFlow import several times slower)
                tracemalloc.start()
                started_tracing = True
            row = figures[name] = {"inputs": 0, **{k: 0 for k in OUTCOMES}, "peak_traced_bytes": 0, "peak_rss_bytes": 0,
                                   "seconds": 0.0, "slowest_s": 0.0}
            changed: list[str] = []
            for index in range(inputs):
                reader.restore(changed)
                changes = safe_mutate(reader, seed, name, index)
                changed = list(changes)
                reader.apply(changes)
                signal.setitimer(signal.ITIMER_REAL, timeout)
                try:
                    event = classify(reader, reader.read, input_bytes(reader, changed))
                except _Hang:
                    event = {"kind": "hang", "detail": f"no result within {timeout:g} s", "peak_bytes": 0, "rss_bytes": 0,
                             "seconds": timeout}
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                event.update(reader=name, index=index)
                _record(row, event)
                if event["kind"] not in ("clean", "load"):
                    findings.append({k: event[k] for k in ("reader", "index", "kind", "detail")})
            reader.restore(changed)
    finally:
        signal.signal(signal.SIGALRM, previous)
        if started_tracing:
            tracemalloc.stop()
    return {"seed": seed, "inputs_per_reader": inputs, "timeout_s": timeout, "memory_cap_bytes": MEMORY_CAP_BYTES,
            "readers": figures, "findings": findings}


def replay(name: str, index: int, seed: int, out: Path) -> int:
    """Write input ``index`` of ``name`` under ``out`` and read it in this process, showing any traceback."""
    reader = READERS[name](out / name)
    reader.prepare()
    changes = reader.mutate(input_rng(seed, name, index))
    reader.apply(changes)
    print(f"input {name}:{index} -> {', '.join(str(reader.live / rel) for rel in changes)}")
    try:
        result = reader.read()
        reader.check(result)
        print(f"load: {str(result)[:500]}")
    except Exception:  # noqa: BLE001 - show everything
        traceback.print_exc()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1000, help="inputs per reader (default 1000)")
    parser.add_argument("--inputs-for", action="append", default=[], metavar="READER=N",
                        help="another count for one reader (repeatable), e.g. checkpoint=2000")
    parser.add_argument("--readers", default="", help=f"comma-separated subset of: {', '.join(READERS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per input before it is a hang")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: a new temporary folder)")
    parser.add_argument("--replay", default="", help="READER:INDEX: write that input and read it here")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker), args.seed, args.workdir)
    if args.inputs < 1 or args.timeout <= 0:
        parser.error("--inputs and --timeout must be positive")
    names = [n.strip() for n in args.readers.split(",") if n.strip()] or available_readers()
    unknown = [n for n in names if n not in READERS]
    if unknown:
        parser.error(f"unknown reader(s) {', '.join(unknown)}; known: {', '.join(READERS)}")
    if args.replay:
        name, _, index = args.replay.partition(":")
        return replay(name, int(index), args.seed, args.out or Path(tempfile.mkdtemp(prefix="fer-fuzz-replay-")))
    try:
        inputs_for = {k: int(v) for k, v in (item.split("=", 1) for item in args.inputs_for)}
    except ValueError:
        parser.error("--inputs-for takes READER=N")
    out = args.out or Path(tempfile.mkdtemp(prefix="fer-fuzz-"))
    print(f"fuzzing {', '.join(names)}: {args.inputs} inputs each, seed {args.seed}, {args.timeout:g} s per input, "
          f"memory cap {MEMORY_CAP_BYTES >> 20} MiB + {SIZE_FACTOR}x the input -> {out}")
    report = run_campaign(names, args.inputs, args.seed, args.timeout, out, inputs_for=inputs_for)
    bad = sum(row["crash"] + row["hang"] + row["over_cap"] for row in report["readers"].values())
    for finding in report["findings"][:20]:
        print(f"  {finding['kind']}: {finding['reader']}:{finding['index']}: {finding['detail'][:300]}")
    print(f"{bad} finding(s); report {out / 'fuzz.json'}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
