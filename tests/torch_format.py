"""Test-only writer of ``torch.save`` files, without PyTorch.

Writes what PyTorch's ``torch/serialization.py`` writes: pickle protocol 2 with the globals torch
uses (``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage``, ``collections.OrderedDict``…),
storages as persistent ids ``('storage', <type>, key, 'cpu', numel)``, and either the zip layout
(``<top>/data.pkl``, ``<top>/data/<key>``, ``<top>/byteorder``, ``<top>/version``) or the legacy
one (magic, protocol 1001, sys info, object, storage keys, then each storage as int64 count + bytes).

Leaves of the saved object: ``np.ndarray`` (its own contiguous storage), :class:`Strided` (an explicit
storage/offset/size/stride view, for non-contiguous and shared-storage tensors), :class:`Parameter`
(an ``nn.Parameter``), :class:`Reduce` (an arbitrary ``GLOBAL`` + args + ``REDUCE``: how a malicious
file calls ``os.system``). Everything else pickles as usual.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_NAMES = {"float32": "FloatStorage", "float64": "DoubleStorage", "float16": "HalfStorage",
                  "int64": "LongStorage", "int32": "IntStorage", "int16": "ShortStorage", "int8": "CharStorage",
                  "uint8": "ByteStorage", "bool": "BoolStorage"}


class Global:
    """Pickled as ``GLOBAL 'module name'`` (callable so that pickle accepts it as a reduce function)."""

    _cache: dict = {}

    def __new__(cls, module, name):
        key = (module, name)
        if key not in cls._cache:  # one object per global, so the memo reuses it as torch's pickler does
            obj = super().__new__(cls)
            obj.module, obj.name = module, name
            cls._cache[key] = obj
        return cls._cache[key]

    def __call__(self, *args):  # never called: only its identity matters to pickle
        raise AssertionError("marker")


class Storage:
    """A flat storage: ``data`` is 1-D; ``type_name`` overrides the storage class (e.g. BFloat16Storage)."""

    def __init__(self, data: np.ndarray, type_name: str | None = None):
        self.data = np.array(data, order="C").reshape(-1)
        self.type_name = type_name or _STORAGE_NAMES[str(self.data.dtype)]


class Strided:
    """A tensor view ``(storage, offset, size, stride)`` in elements, as torch stores every tensor."""

    def __init__(self, storage: Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def __reduce_ex__(self, protocol):
        return (Global("torch._utils", "_rebuild_tensor_v2"),
                (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict()))


class Parameter:
    def __init__(self, data):
        self.data = data

    def __reduce_ex__(self, protocol):
        return (Global("torch._utils", "_rebuild_parameter"), (_tensor(self.data), True, collections.OrderedDict()))


class Reduce:
    """``module.name(*args)`` at load time — what a hostile checkpoint does."""

    def __init__(self, module, name, args=()):
        self.module, self.name, self.args = module, name, tuple(args)

    def __reduce_ex__(self, protocol):
        return (Global(self.module, self.name), self.args)


def contiguous(array: np.ndarray) -> Strided:
    array = np.array(array, order="C")  # (ascontiguousarray would turn a 0-d array into 1-d)
    strides = tuple(s // array.itemsize for s in array.strides) if array.ndim else ()
    return Strided(Storage(array), 0, array.shape, strides)


def _tensor(value):
    return contiguous(value) if isinstance(value, np.ndarray) else value


def _wrap(obj):
    """Arrays → contiguous tensors, recursively through dicts, lists and tuples (dict types kept)."""
    if isinstance(obj, np.ndarray):
        return contiguous(obj)
    if isinstance(obj, dict):
        out = type(obj)()
        if hasattr(obj, "__dict__"):  # a state dict's _metadata, pickled by BUILD as torch does
            out.__dict__.update(obj.__dict__)
        for k, v in obj.items():
            out[k] = _wrap(v)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_wrap(v) for v in obj)
    return obj


class _Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table can take the marker
    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy
        self.keys: dict[int, str] = {}
        self.storages: list[tuple[str, Storage]] = []

    def save_marker(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[Global] = save_marker

    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        if id(obj) not in self.keys:
            self.keys[id(obj)] = str(len(self.keys)) if not self.legacy else f"{140000000 + len(self.keys)}"
            self.storages.append((self.keys[id(obj)], obj))
        pid = ("storage", Global("torch", obj.type_name), self.keys[id(obj)], "cpu", int(obj.data.size))
        return pid + (None,) if self.legacy else pid


def pickle_bytes(obj, legacy: bool = False):
    buffer = io.BytesIO()
    pickler = _Pickler(buffer, legacy)
    pickler.dump(_wrap(obj))
    return buffer.getvalue(), pickler.storages


def write_zip(path, obj, top: str = "archive", byteorder: str = "little", pickled: bytes | None = None) -> None:
    """``torch.save(obj, path)`` (zip format). ``pickled`` replaces data.pkl (for hostile files)."""
    data, storages = pickle_bytes(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{top}/data.pkl", pickled if pickled is not None else data)
        archive.writestr(f"{top}/byteorder", byteorder)
        for key, storage in storages:
            raw = storage.data.astype(storage.data.dtype.newbyteorder("<" if byteorder == "little" else ">"))
            archive.writestr(f"{top}/data/{key}", raw.tobytes())
        archive.writestr(f"{top}/version", "3\n")
        archive.writestr(f"{top}/.data/serialization_id", "0123456789")


def write_legacy(path, obj) -> None:
    """``torch.save(obj, path, _use_new_zipfile_serialization=False)``."""
    data, storages = pickle_bytes(obj, legacy=True)
    head = b"".join(pickle.dumps(x, protocol=2) for x in (
        LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                             "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    with open(path, "wb") as handle:
        handle.write(head + data + pickle.dumps([k for k, _ in storages], protocol=2))
        for _key, storage in storages:
            handle.write(struct.pack("<q", storage.data.size))
            handle.write(storage.data.astype(storage.data.dtype.newbyteorder("<")).tobytes())


# --------------------------------------------------------------------- torchvision state dicts ----


def resnet_state_dict(depth: int, num_classes: int = 1000, seed: int = 0,
                      residual_gamma=(0.5, 1.5)) -> collections.OrderedDict:
    """Random weights with torchvision's ``resnet18``/``resnet50`` keys and shapes (eval-ready BN stats).

    ``residual_gamma`` is the range of the last BatchNorm scale of each residual branch. Trained ResNets
    keep those branches small (≈0.1–0.3); at full gain a random ResNet-50 is chaotic enough that float32
    rounding alone grows to ~1e-3 at its output.
    """
    rng = np.random.default_rng(seed)
    sd = collections.OrderedDict()

    def conv(name, out_ch, in_ch, k):
        sd[f"{name}.weight"] = (rng.standard_normal((out_ch, in_ch, k, k)) * np.sqrt(2.0 / (in_ch * k * k))
                                ).astype(np.float32)

    def bn(name, ch):
        last = name.endswith(".bn3" if depth == 50 else ".bn2")
        sd[f"{name}.weight"] = rng.uniform(*(residual_gamma if last else (0.5, 1.5)), ch).astype(np.float32)
        sd[f"{name}.bias"] = rng.uniform(-0.2, 0.2, ch).astype(np.float32)
        sd[f"{name}.running_mean"] = rng.uniform(-0.3, 0.3, ch).astype(np.float32)
        sd[f"{name}.running_var"] = rng.uniform(0.5, 2.0, ch).astype(np.float32)
        sd[f"{name}.num_batches_tracked"] = np.array(1234, dtype=np.int64)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    bottleneck = depth == 50
    blocks = (3, 4, 6, 3) if bottleneck else (2, 2, 2, 2)
    in_ch = 64
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for b in range(count):
            name = f"layer{stage}.{b}"
            stride = 2 if (b == 0 and stage > 1) else 1
            out_ch = planes * 4 if bottleneck else planes
            if bottleneck:
                conv(f"{name}.conv1", planes, in_ch, 1), bn(f"{name}.bn1", planes)
                conv(f"{name}.conv2", planes, planes, 3), bn(f"{name}.bn2", planes)
                conv(f"{name}.conv3", out_ch, planes, 1), bn(f"{name}.bn3", out_ch)
            else:
                conv(f"{name}.conv1", planes, in_ch, 3), bn(f"{name}.bn1", planes)
                conv(f"{name}.conv2", planes, planes, 3), bn(f"{name}.bn2", planes)
            if stride != 1 or in_ch != out_ch:
                conv(f"{name}.downsample.0", out_ch, in_ch, 1), bn(f"{name}.downsample.1", out_ch)
            in_ch = out_ch
    sd["fc.weight"] = (rng.standard_normal((num_classes, in_ch)) * 0.01).astype(np.float32)
    sd["fc.bias"] = np.zeros(num_classes, np.float32)
    return sd
