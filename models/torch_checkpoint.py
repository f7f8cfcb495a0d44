"""Read PyTorch checkpoints (``torch.save`` files) as NumPy arrays, without PyTorch and without trusting them.

A ``.pth`` file is a pickle, and unpickling runs whatever callables the file names: a checkpoint is
untrusted input. This reader unpickles with a restricted :class:`pickle.Unpickler` whose ``find_class``
resolves only the globals a tensor state dict needs (:data:`ALLOWED_GLOBALS`), each to a local stand-in
that builds NumPy data; any other global (``os.system``, ``builtins.eval``, a model class, a NumPy
scalar…) stops the read with a :class:`~common.errors.DataError` naming the file and the refused
``module.name`` before anything is called. Plain containers, numbers and strings need no global (they
are pickle opcodes), so epoch counters and optimizer dicts beside the weights are read as they are.

Formats (both as written by ``torch.save`` in PyTorch's ``torch/serialization.py``):

* zip (PyTorch ≥ 1.6, the default): ``<top>/data.pkl`` (pickle protocol 2) plus one record
  ``<top>/data/<key>`` of raw bytes per storage and ``<top>/byteorder``; ``<top>`` is arbitrary
  (PyTorch names it after the file or ``archive``).
* legacy (``_use_new_zipfile_serialization=False``, PyTorch < 1.6): consecutive pickles — magic
  number, protocol version 1001, system info, the object, the list of storage keys — then each
  storage as an int64 element count and its raw bytes.

Storages are referenced from the pickle by persistent id ``('storage', <torch.XStorage>, key,
location, numel)``; a tensor is ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
…)``, materialised here as a C-contiguous copy that honours offset, size and (non-contiguous) stride,
with every index checked against the storage first. ``bfloat16`` becomes ``float32`` (exact); other
dtypes are kept. The location (``cpu``, ``cuda:0``) does not matter: bytes are bytes.

Refused on purpose: TorchScript archives (``torch.jit.save``: code, not a state dict),
``torch.storage._load_from_bytes`` (a storage pickled outside ``torch.save``; it nests a second
``torch.load``), pickled modules (``torch.save(model)``: they need the model's class) and the
pre-1.0 tar format. Re-saving ``model.state_dict()`` from PyTorch fixes each.

API::

    read_checkpoint(path) -> object                 # the unpickled object, tensors as np.ndarray
    load_state_dict(path) -> (dict[str, ndarray], info)   # nested layouts found, ``module.`` stripped
    is_torch_checkpoint(path) -> bool               # sniffs the content, not the suffix
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import re
import struct
import zipfile
from pathlib import Path

import numpy as np

from common.errors import DataError
# torch.save stores every record uncompressed: a record may inflate, and a tensor view (stride 0) repeat its
# storage, at most MAX_EXPANSION times (common/io.py: the allocation rule of every reader).
from common.io import EXPANSION_SLACK as _EXPANSION_SLACK, MAX_EXPANSION as _MAX_EXPANSION

# Legacy-format header values (torch/serialization.py: MAGIC_NUMBER, PROTOCOL_VERSION).
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch.<X>Storage → NumPy dtype ("bfloat16" is widened to float32 after reading).
_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
}

# Keys under which training scripts nest the weights (SCN/RUL/EAC save {'state_dict': …}, others 'model', 'net').
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")

# Opcodes that build instances without going through find_class's stand-ins or use the global
# extension registry; none occurs in a torch.save file.
_FORBIDDEN_OPCODES = {"INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4"}
_STORAGE_KEY = re.compile(r"^[A-Za-z0-9_]+$")
_MAX_PICKLE_BYTES = 256 << 20  # data.pkl holds names and ids only; the weights are separate records


# ----------------------------------------------------------------------------------- stand-ins ----


class _Frozen:
    """Base of every object handed to the pickle stream: BUILD (``__setstate__``) on it is refused."""

    __slots__ = ()

    def __setstate__(self, state):
        raise pickle.UnpicklingError("BUILD applied to a checkpoint reader object")


class _StorageType(_Frozen):
    """Stand-in for ``torch.FloatStorage`` & co.: only a dtype marker inside persistent ids."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: str):
        self.name, self.dtype = name, dtype


class _Storage(_Frozen):
    """A storage (or, legacy format, a view of one): ``numel`` elements of ``dtype`` from ``root``."""

    __slots__ = ("root", "dtype", "offset", "numel")

    def __init__(self, root: str, dtype: str, offset: int, numel: int):
        self.root, self.dtype, self.offset, self.numel = root, dtype, offset, numel


class _TensorRef(_Frozen):
    """A tensor waiting for its storage bytes (legacy files store them after the pickle)."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class _Callable(_Frozen):
    """A stand-in for an allowed global: a fresh object per lookup, so the stream can't mutate a shared one."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)


def _int(value, what: str) -> int:
    if type(value) is not int or value < 0:
        raise pickle.UnpicklingError(f"{what} must be a non-negative int, got {type(value).__name__}")
    return value


def _int_tuple(value, what: str) -> tuple:
    if type(value) not in (tuple, list):
        raise pickle.UnpicklingError(f"{what} must be a tuple, got {type(value).__name__}")
    return tuple(_int(v, what) for v in value)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """``torch._utils._rebuild_tensor(_v2)``: (storage, offset, size, stride, requires_grad, hooks, [metadata])."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"tensor storage is a {type(storage).__name__}, not a storage reference")
    size, stride = _int_tuple(size, "tensor size"), _int_tuple(stride, "tensor stride")
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor size {size} and stride {stride} differ in length")
    offset = _int(storage_offset, "tensor storage offset")
    elements = int(np.prod(size, dtype=object)) if size else 1
    if elements * _itemsize(storage.dtype) > _MAX_EXPANSION * storage.numel * _itemsize(storage.dtype) + _EXPANSION_SLACK:
        raise pickle.UnpicklingError(f"tensor of size {size} (stride {stride}) repeats its storage of {storage.numel} "
                                     "elements more than a checkpoint can mean")
    if all(size):  # a tensor with no elements touches no memory
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.numel:
            raise pickle.UnpicklingError(f"tensor (offset {offset}, size {size}, stride {stride}) reads element "
                                         f"{last} of a storage of {storage.numel}")
    return _TensorRef(storage, offset, size, stride)


def _rebuild_parameter(data, *unused):
    """``torch._utils._rebuild_parameter(_with_state)``: an ``nn.Parameter`` is its data here."""
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError(f"parameter data is a {type(data).__name__}, not a tensor")
    return data


def _ordered_dict(*args):
    # Only the empty call torch emits (items arrive by SETITEMS): no iterable of the stream's choosing.
    if args:
        raise pickle.UnpicklingError("collections.OrderedDict called with arguments")
    return collections.OrderedDict()


def _allowed_globals() -> dict:
    table = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("collections", "OrderedDict"): _ordered_dict,
    }
    for name, dtype in _STORAGE_DTYPES.items():
        table[("torch", name)] = (name, dtype)
    return table


ALLOWED_GLOBALS = tuple(f"{m}.{n}" for m, n in _allowed_globals())


# ----------------------------------------------------------------------------------- unpickler ----


class _RestrictedUnpickler(pickle.Unpickler):
    """``find_class`` resolves only :data:`ALLOWED_GLOBALS`; ``persistent_load`` only storage ids."""

    def __init__(self, stream, storage_numels: dict, legacy: bool):
        super().__init__(stream)
        self._globals = _allowed_globals()
        self._numels = storage_numels  # root key → numel, filled as ids are seen
        self._legacy = legacy
        self.refused = None

    def find_class(self, module, name):
        entry = self._globals.get((module, name))
        if entry is None:
            self.refused = f"{module}.{name}"
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        if isinstance(entry, tuple):
            return _StorageType(*entry)
        return _Callable(entry)

    def persistent_load(self, pid):
        if type(pid) is not tuple or not pid:
            raise pickle.UnpicklingError(f"persistent id of type {type(pid).__name__}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind != "storage":
            raise pickle.UnpicklingError(f"persistent id '{kind}' (a pickled module or unknown object); "
                                         "only tensor storages are read")
        if len(pid) != (6 if self._legacy else 5):
            raise pickle.UnpicklingError(f"storage id of length {len(pid)}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError("storage id without a torch storage type")
        key = key.decode("ascii") if isinstance(key, bytes) else key
        if type(key) is not str or not _STORAGE_KEY.match(key):
            raise pickle.UnpicklingError(f"storage key {key!r}")
        numel = _int(numel, "storage size")
        known = self._numels.setdefault(key, (storage_type.dtype, numel))
        if known != (storage_type.dtype, numel):
            raise pickle.UnpicklingError(f"storage '{key}' referenced as {known} and {(storage_type.dtype, numel)}")
        if self._legacy and pid[5] is not None:  # view_metadata = (view_key, offset, view_size)
            _view_key, offset, view_size = pid[5]
            offset, view_size = _int(offset, "view offset"), _int(view_size, "view size")
            if offset + view_size > numel:
                raise pickle.UnpicklingError(f"storage view [{offset}, {offset + view_size}) of a storage of {numel}")
            return _Storage(key, storage_type.dtype, offset, view_size)
        return _Storage(key, storage_type.dtype, 0, numel)


def _check_opcodes(stream) -> None:
    """Scan one pickle (up to its STOP) for opcodes a torch.save file never contains."""
    for opcode, _arg, _pos in pickletools.genops(stream):
        if opcode.name in _FORBIDDEN_OPCODES:
            raise pickle.UnpicklingError(f"pickle opcode {opcode.name}")


def _unpickle(path, stream, numels: dict, legacy: bool):
    """Run the restricted unpickler on the next pickle of the seekable ``stream``."""
    unpickler = _RestrictedUnpickler(stream, numels, legacy)
    try:
        start = stream.tell()
        _check_opcodes(stream)
        stream.seek(start)
        return unpickler.load()
    except DataError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, struct/value errors from a malformed stream
        if unpickler.refused:
            raise DataError(f"{path}: refused to unpickle global '{unpickler.refused}': a checkpoint is untrusted "
                            f"input and only tensor state dicts are read (allowed: {', '.join(ALLOWED_GLOBALS)}). "
                            f"{_refusal_hint(unpickler.refused)}") from None
        raise DataError(f"{path}: not a readable PyTorch state dict ({type(exc).__name__}: {str(exc)[:200]})") from None


def _refusal_hint(name: str) -> str:
    if name == "torch.storage._load_from_bytes":
        return "This storage was pickled outside torch.save; re-save it with torch.save(model.state_dict(), FILE)."
    if name.startswith(("numpy.", "_codecs.")):
        return ("The checkpoint holds NumPy or bytes values beside the weights; re-save only the weights with "
                "torch.save(model.state_dict(), FILE).")
    return "Re-save the weights alone with torch.save(model.state_dict(), FILE)."


# ------------------------------------------------------------------------------------- formats ----


def _zip_top(path, names) -> str:
    tops = sorted({n[: -len("/data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1})
    if len(tops) != 1:
        raise DataError(f"{path}: a zip file but not a torch.save archive "
                        f"(found {len(tops)} '<folder>/data.pkl' records)")
    top = tops[0]
    if f"{top}/constants.pkl" in names or any(n.startswith(f"{top}/code/") for n in names):
        raise DataError(f"{path}: a TorchScript archive (torch.jit.save), not a state dict; in PyTorch, load it and "
                        "torch.save(model.state_dict(), FILE)")
    return top


def _read_zip(path):
    with zipfile.ZipFile(path) as archive:
        size = os.path.getsize(path)
        for info in archive.infolist():
            if info.compress_size > size:  # zipfile would ask the file for that many bytes (allocated up front)
                raise DataError(f"{path}: record '{info.filename}' claims {info.compress_size} stored bytes in a file of "
                                f"{size}")
            if info.file_size > _MAX_EXPANSION * info.compress_size + _EXPANSION_SLACK:
                raise DataError(f"{path}: record '{info.filename}' inflates from {info.compress_size} to {info.file_size} "
                                "bytes (torch.save does not compress; a zip bomb?)")
        names = set(archive.namelist())
        top = _zip_top(path, names)
        order = "little"
        if f"{top}/byteorder" in names:
            order = archive.read(f"{top}/byteorder").decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise DataError(f"{path}: byteorder record says '{order[:20]}'")
        if archive.getinfo(f"{top}/data.pkl").file_size > _MAX_PICKLE_BYTES:
            raise DataError(f"{path}: data.pkl is {archive.getinfo(f'{top}/data.pkl').file_size} bytes; "
                            "a state dict's pickle is far smaller")
        numels: dict = {}
        obj = _unpickle(path, io.BytesIO(archive.read(f"{top}/data.pkl")), numels, legacy=False)
        buffers = {}
        for key, (dtype, numel) in numels.items():
            record = f"{top}/data/{key}"
            if record not in names:
                raise DataError(f"{path}: storage record '{record}' is missing")
            expected = numel * _itemsize(dtype)
            if archive.getinfo(record).file_size != expected:
                raise DataError(f"{path}: storage '{key}' holds {archive.getinfo(record).file_size} bytes, "
                                f"the pickle says {numel} × {dtype} = {expected}")
            buffers[key] = _flat(archive.read(record), dtype, numel, order)
    return obj, buffers


class _Bounded:
    """A binary file whose ``read(n)`` never asks for more than the bytes left in it.

    ``BufferedReader.read(n)`` allocates ``n`` bytes before reading, so a damaged length field (a pickled
    string or a storage claiming 2^62 bytes) would allocate what it claims before failing as truncated."""

    def __init__(self, handle):
        self.handle = handle
        self.size = os.fstat(handle.fileno()).st_size

    def read(self, n=-1):
        left = max(self.size - self.handle.tell(), 0)
        return self.handle.read(left if n is None or n < 0 else min(n, left))

    def readline(self, limit=-1):
        return self.handle.readline(limit)

    def tell(self):
        return self.handle.tell()

    def seek(self, *args):
        return self.handle.seek(*args)


def _read_legacy(path):
    numels: dict = {}
    with open(path, "rb") as handle:
        stream = _Bounded(handle)
        if _unpickle(path, stream, numels, True) != LEGACY_MAGIC:
            raise DataError(f"{path}: not a PyTorch checkpoint (bad magic number)")
        version = _unpickle(path, stream, numels, True)
        if version != LEGACY_PROTOCOL:
            raise DataError(f"{path}: legacy torch.save protocol {version!r}, expected {LEGACY_PROTOCOL}")
        info = _unpickle(path, stream, numels, True)
        order = "little" if not isinstance(info, dict) or info.get("little_endian", True) else "big"
        obj = _unpickle(path, stream, numels, True)
        keys = _unpickle(path, stream, numels, True)
        if type(keys) is not list or any(not isinstance(k, (str, bytes)) for k in keys):
            raise DataError(f"{path}: legacy storage key list is malformed")
        buffers = {}
        for key in keys:
            key = key.decode("ascii") if isinstance(key, bytes) else key
            if key not in numels:
                raise DataError(f"{path}: storage '{key}' is stored but never referenced")
            dtype, numel = numels[key]
            header = stream.read(8)
            if len(header) != 8:
                raise DataError(f"{path}: truncated before storage '{key}'")
            stored = struct.unpack("<q" if order == "little" else ">q", header)[0]
            if stored != numel:
                raise DataError(f"{path}: storage '{key}' holds {stored} elements, the pickle says {numel}")
            data = stream.read(numel * _itemsize(dtype))
            if len(data) != numel * _itemsize(dtype):
                raise DataError(f"{path}: truncated inside storage '{key}'")
            buffers[key] = _flat(data, dtype, numel, order)
    missing = sorted(set(numels) - set(buffers))
    if missing:
        raise DataError(f"{path}: storage '{missing[0]}' is referenced but not stored")
    return obj, buffers


def _itemsize(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def _flat(data: bytes, dtype: str, numel: int, order: str) -> np.ndarray:
    """The storage as a 1-D native-endian array (bfloat16 widened exactly to float32)."""
    raw = np.dtype("uint16" if dtype == "bfloat16" else dtype).newbyteorder("<" if order == "little" else ">")
    flat = np.frombuffer(data, dtype=raw, count=numel).astype(raw.newbyteorder("="))
    if dtype == "bfloat16":
        flat = (flat.astype(np.uint32) << 16).view(np.float32)
    return flat


def _materialise(obj, buffers, memo):
    """Replace every tensor reference in ``obj`` by its array (containers rebuilt, shared ones once)."""
    if isinstance(obj, _TensorRef):
        flat = buffers[obj.storage.root]
        index = np.asarray(obj.storage.offset + obj.offset, dtype=np.int64)
        for axis, (n, s) in enumerate(zip(obj.size, obj.stride)):
            shape = [1] * len(obj.size)
            shape[axis] = n
            index = index + (np.arange(n, dtype=np.int64) * s).reshape(shape)
        if not obj.size:  # a 0-d tensor (e.g. BatchNorm's num_batches_tracked)
            return np.array(flat[int(index)])
        return np.ascontiguousarray(flat[index])
    if isinstance(obj, (dict, list, tuple)):
        if id(obj) in memo:
            return memo[id(obj)]
        if isinstance(obj, dict):
            out = memo[id(obj)] = type(obj)() if type(obj) in (dict, collections.OrderedDict) else {}
            for key, value in obj.items():
                out[key] = _materialise(value, buffers, memo)
            return out
        if isinstance(obj, list):
            out = memo[id(obj)] = []
            out.extend(_materialise(v, buffers, memo) for v in obj)
            return out
        # Tuples too are built once per object: shared references (memo gets) nest a tuple DAG that doubles
        # at every level, which a tree walk would expand 2^depth times.
        out = memo[id(obj)] = tuple(_materialise(v, buffers, memo) for v in obj)
        return out
    if isinstance(obj, _Frozen):  # a storage or storage type left outside a tensor: meaningless here
        return None
    return obj


# --------------------------------------------------------------------------------------- public ----


def is_torch_checkpoint(path) -> bool:
    """True when ``path`` looks like a ``torch.save`` file (zip with ``<top>/data.pkl``, or legacy pickle)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return False
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                return any(n.endswith("/data.pkl") and n.count("/") == 1 for n in archive.namelist())
        except (zipfile.BadZipFile, NotImplementedError, ValueError, EOFError, OSError, struct.error):
            return False  # damaged: NotImplementedError for a record claiming a newer zip version (found by benchmarks/fuzz.py)
    # Legacy: protocol-2 pickle of the magic number (PROTO 2, LONG1 10 bytes, little-endian).
    return head.startswith(b"\x80\x02\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little"))


def read_checkpoint(path):
    """Unpickle the ``torch.save`` file ``path`` safely; tensors come back as NumPy arrays."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path}: file not found")
    if not is_torch_checkpoint(p):
        raise DataError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor the legacy format)")
    try:
        obj, buffers = _read_zip(p) if zipfile.is_zipfile(p) else _read_legacy(p)
        return _materialise(obj, buffers, {})
    except RecursionError:
        raise DataError(f"{path}: the pickled object is nested too deeply") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, struct.error, RuntimeError,
            NotImplementedError) as exc:  # zipfile: encrypted or unsupported compression → RuntimeError/NotImplemented
        raise DataError(f"{path}: corrupt PyTorch checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from None


def find_state_dict(obj, path="checkpoint"):
    """The tensor dict inside a checkpoint object: bare, or under one of :data:`STATE_DICT_KEYS` (nested).

    Returns ``(tensors, info)``: ``tensors`` maps names (``module.`` prefix stripped) to arrays;
    ``info`` records ``layout`` (e.g. ``"state_dict"``, ``"bare"``), ``stripped_prefix`` and
    ``ignored`` (non-tensor entries beside the tensors, e.g. an epoch counter).
    """
    layout = []
    while isinstance(obj, dict) and not _has_tensors(obj):
        key = next((k for k in STATE_DICT_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        layout.append(key)
        obj = obj[key]
    if not isinstance(obj, dict) or not _has_tensors(obj):
        raise DataError(f"{path}: no tensor state dict found (looked at the top level and under "
                        f"{', '.join(repr(k) for k in STATE_DICT_KEYS)})")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
    ignored = sorted(str(k) for k, v in obj.items() if not isinstance(v, np.ndarray))
    prefix = None
    if tensors and all(k.startswith("module.") for k in tensors):  # nn.DataParallel / DistributedDataParallel
        prefix = "module."
        tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    info = {"layout": "/".join(layout) or "bare", "stripped_prefix": prefix, "ignored": ignored}
    return tensors, info


def _has_tensors(d: dict) -> bool:
    return any(isinstance(v, np.ndarray) for v in d.values())


def load_state_dict(path):
    """``find_state_dict(read_checkpoint(path))``: the weights of a PyTorch checkpoint and how they were nested."""
    tensors, info = find_state_dict(read_checkpoint(path), path)
    info["format"] = "zip" if zipfile.is_zipfile(path) else "legacy"
    return tensors, info
