"""Read dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) in pure numpy.

The file is dlib's own serialisation of ``anet_type`` (davisking/dlib, ``examples/dnn_face_recognition_ex.cpp``)
— Davis King's ResNet trained on about 3 million faces of 7 485 identities, public domain, shipped by
the ``face-recognition-models`` package. No dlib import is needed to read it (dlib's Python package is the
test oracle only). The grammar follows dlib's sources:

* ``dlib/serialize.h``: integers are *packed* — one byte ``size | 0x80·negative`` then ``size``
  little-endian bytes; ``float``/``double`` are a packed int64 mantissa and a packed int16 exponent
  (``float_details``: value = mantissa · 2^exponent); ``bool`` is the character ``'0'``/``'1'``;
  a string is a packed length then its bytes.
* ``dlib/dnn/tensor.h``: a ``resizable_tensor`` is version 2, four packed dims (num_samples, k, nr, nc),
  then the values as little-endian float32; an ``alias_tensor`` is version 1 and four dims.
* ``dlib/dnn/core.h``: ``add_loss_layer`` writes version 1, the loss details, then its subnetwork;
  ``add_layer`` writes its version (2) and *first its subnetwork*, then its details, three bools and the
  cached tensors ``x_grad``, ``cached_output``, ``params_grad``; the ``add_layer`` directly on the input
  layer writes version 3 (or 2), the input layer, its details, three bools, ``x_grad``,
  ``cached_output``, ``grad_final`` and (version 3) the sample expansion factor; tag and skip layers
  write version 1 and their subnetwork. So the stream holds every layer's version from the loss down to
  the input, then each layer's details from the input back up.
* ``dlib/dnn/layers.h``: ``con_4`` (params, num_filters, nr, nc, stride_y, stride_x, padding_y,
  padding_x, the ``filters`` and ``biases`` aliases, four multipliers), ``affine_`` (params, gamma and beta
  aliases, mode), ``fc_2`` (num_outputs, num_inputs, params, weights and biases aliases, bias mode, four
  multipliers), ``max_pool_2``/``avg_pool_2`` (nr, nc, strides, paddings), ``relu_``, ``add_prev_``.
* ``dlib/dnn/input.h``: ``input_rgb_image_sized`` (the three channel means as floats, then nr, nc).

The reader walks the *expected* architecture (:func:`anet_layers`), so every name, version, length and
shape in the file is checked against it before anything is allocated, and no allocation is larger than
the bytes left in the file: a truncated, damaged or hostile file is a :class:`~common.errors.ConfigError`
naming the file and the byte offset, never a crash or a large allocation.

API::

    anet_layers() -> list[Layer]                 # the network, input side first
    read_dlib_resnet(path) -> DlibResNetWeights  # params per computational layer, input means, header
    default_dlib_path() -> Path                  # the copy installed by face-recognition-models
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import ConfigError

FILE_NAME = "dlib_face_recognition_resnet_model_v1.dat"
# The real file is 22 466 066 bytes (5.6 M float32 parameters plus headers). Anything much larger is not it.
MAX_FILE_BYTES = 64 * 1024 * 1024
EMBEDDING_DIM = 128
FEATURE_DIM = 256
NATIVE_SIZE = 150


@dataclass(frozen=True)
class Layer:
    """One layer of ``anet_type``. ``kind``: con | affine | relu | max_pool | avg_pool | add_prev | tag | skip | fc."""

    kind: str
    name: str = ""  # the Keras layer name (computational layers only)
    filters: int = 0  # con: num_filters; fc: num_outputs
    size: int = 0  # con/pool window
    stride: int = 1
    tag: int = 0  # tag/skip/add_prev: which tag


def _ares(prefix: str, n: int, down: bool) -> list[Layer]:
    """dlib's ``ares`` / ``ares_down`` (input side first): conv-affine-relu-conv-affine, then the shortcut add."""
    stride = 2 if down else 1
    units = [Layer("tag", tag=1),
             Layer("con", f"{prefix}_conv1", n, 3, stride), Layer("affine", f"{prefix}_affine1"), Layer("relu"),
             Layer("con", f"{prefix}_conv2", n, 3, 1), Layer("affine", f"{prefix}_affine2")]
    if down:  # residual_down: add_prev2<avg_pool<2,2,2,2,skip1<tag2<block>>>>
        units += [Layer("tag", tag=2), Layer("skip", tag=1), Layer("avg_pool", size=2, stride=2),
                  Layer("add_prev", tag=2)]
    else:  # residual: add_prev1<block<tag1<...>>>
        units += [Layer("add_prev", tag=1)]
    return units + [Layer("relu")]


# dlib's level names (alevel4 is next to the input); each level: (filters, units, first unit downsamples)
LEVELS = (("alevel4", 32, 3, False), ("alevel3", 64, 4, True), ("alevel2", 128, 3, True),
          ("alevel1", 256, 3, True), ("alevel0", 256, 1, True))


def anet_layers() -> list[Layer]:
    """``anet_type`` of dnn_face_recognition_ex.cpp, input side first (the order the details are stored in)."""
    net = [Layer("con", "conv0", 32, 7, 2), Layer("affine", "affine0"), Layer("relu"),
           Layer("max_pool", size=3, stride=2)]
    for level, n, units, down in LEVELS:
        for unit in range(units):
            net += _ares(f"{level}_{unit}", n, down and unit == 0)
    return net + [Layer("avg_pool", size=0, stride=1), Layer("fc", "fc", EMBEDDING_DIM)]


@dataclass
class DlibResNetWeights:
    """What :func:`read_dlib_resnet` returns: per computational layer (Keras name) its arrays."""

    path: str
    channel_means: tuple  # (red, green, blue) subtracted by input_rgb_image_sized, in 0..255 units
    input_size: tuple  # (nr, nc) the input layer is locked to
    loss: dict  # loss_metric's margin and distance threshold
    conv: dict = field(default_factory=dict)  # name -> (kernel (kh, kw, in, out), bias (out,))
    affine: dict = field(default_factory=dict)  # name -> (gamma (C,), beta (C,))
    fc: np.ndarray | None = None  # (256, 128), no bias


class _Stream:
    """Bounds-checked reader of dlib's serialisation primitives over bytes held in memory."""

    def __init__(self, data: bytes, path):
        self.data, self.path, self.pos = data, path, 0

    def fail(self, what: str) -> ConfigError:
        return ConfigError(f"{self.path}: not dlib's face-recognition ResNet file, or damaged: {what} "
                           f"(at byte {self.pos} of {len(self.data)})")

    def take(self, count: int, what: str) -> bytes:
        if count < 0 or count > len(self.data) - self.pos:
            raise self.fail(f"{what} needs {count} bytes, {len(self.data) - self.pos} left (truncated?)")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def integer(self, what: str, max_bytes: int = 8) -> int:
        head = self.take(1, what)[0]
        size, negative = head & 0x0F, head & 0x80
        if size == 0 or size > max_bytes or head & 0x70:
            raise self.fail(f"{what}: bad integer header 0x{head:02x}")
        value = int.from_bytes(self.take(size, what), "little")
        return -value if negative else value

    def expect_int(self, what: str, expected) -> int:
        value = self.integer(what)
        allowed = expected if isinstance(expected, tuple) else (expected,)
        if value not in allowed:
            raise self.fail(f"{what} is {value}, expected {' or '.join(map(str, allowed))}")
        return value

    def real(self, what: str) -> float:
        mantissa = self.integer(f"{what} (mantissa)")
        exponent = self.integer(f"{what} (exponent)", max_bytes=2)
        if abs(exponent) > 1100 or abs(mantissa) >= 2 ** 63:  # 32000-32002 encode inf/nan: never valid here
            raise self.fail(f"{what}: not a finite number (exponent {exponent})")
        return float(mantissa) * 2.0 ** exponent

    def flag(self, what: str) -> bool:
        char = self.take(1, what)
        if char not in (b"0", b"1"):
            raise self.fail(f"{what}: a bool must be '0' or '1', found {char!r}")
        return char == b"1"

    def text(self, what: str, expected: str | tuple) -> str:
        allowed = expected if isinstance(expected, tuple) else (expected,)
        length = self.integer(f"{what} (length)")
        if length < 0 or length > max(len(a) for a in allowed):
            raise self.fail(f"{what}: expected {' or '.join(repr(a) for a in allowed)}, found a string of {length} bytes")
        raw = self.take(length, what)
        value = raw.decode("latin-1")
        if value not in allowed:
            raise self.fail(f"{what}: expected {' or '.join(repr(a) for a in allowed)}, found {value!r}")
        return value

    def _dims(self, what: str) -> tuple:
        dims = tuple(self.integer(f"{what} dimension") for _ in range(4))
        if any(d < 0 for d in dims):
            raise self.fail(f"{what}: negative dimension {dims}")
        return dims

    def tensor(self, what: str, expected: tuple | None = None) -> np.ndarray | None:
        """A resizable_tensor; with ``expected`` its dims must equal it (checked before any read).

        ``expected=None`` is a cached tensor (x_grad, cached_output, …) that is skipped: its size is still
        checked against the bytes left, and nothing is allocated for it.
        """
        self.expect_int(f"{what} version", 2)
        dims = self._dims(what)
        if expected is not None and dims != expected:
            raise self.fail(f"{what} has shape {dims}, expected {expected}")
        count = 1
        for d in dims:
            count *= d
        raw = self.take(4 * count, f"{what} values")
        if expected is None:
            return None
        values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(values)):
            raise self.fail(f"{what} holds non-finite values")
        return values

    def alias(self, what: str, expected: tuple) -> None:
        self.expect_int(f"{what} version", 1)
        dims = self._dims(what)
        if dims != expected:
            raise self.fail(f"{what} has shape {dims}, expected {expected}")


def _read_con(stream: _Stream, layer: Layer, channels: int, out: DlibResNetWeights) -> None:
    n, k = layer.filters, layer.size
    what = f"layer {layer.name} (con)"
    stream.text(f"{what} type", "con_4")
    params = stream.tensor(f"{what} params", (n * channels * k * k + n, 1, 1, 1))
    for label, value in (("num_filters", n), ("nr", k), ("nc", k), ("stride_y", layer.stride),
                         ("stride_x", layer.stride)):
        stream.expect_int(f"{what} {label}", value)
    padding = 0 if layer.stride != 1 else k // 2  # dlib's default: unpadded unless stride 1
    stream.expect_int(f"{what} padding_y", padding)
    stream.expect_int(f"{what} padding_x", padding)
    stream.alias(f"{what} filters", (n, channels, k, k))
    stream.alias(f"{what} biases", (1, n, 1, 1))
    for label in ("learning_rate_multiplier", "weight_decay_multiplier", "bias_learning_rate_multiplier",
                  "bias_weight_decay_multiplier"):
        stream.real(f"{what} {label}")
    filters = params[: n * channels * k * k].reshape(n, channels, k, k)
    out.conv[layer.name] = (np.ascontiguousarray(filters.transpose(2, 3, 1, 0)), params[n * channels * k * k:].copy())


def _read_affine(stream: _Stream, layer: Layer, channels: int, out: DlibResNetWeights) -> None:
    what = f"layer {layer.name} (affine)"
    stream.text(f"{what} type", "affine_")
    params = stream.tensor(f"{what} params", (2 * channels, 1, 1, 1))
    stream.alias(f"{what} gamma", (1, channels, 1, 1))
    stream.alias(f"{what} beta", (1, channels, 1, 1))
    stream.expect_int(f"{what} mode", 0)  # CONV_MODE: one scale and shift per channel
    out.affine[layer.name] = (params[:channels].copy(), params[channels:].copy())


def _read_pool(stream: _Stream, layer: Layer, index: int) -> None:
    kind = "max_pool_2" if layer.kind == "max_pool" else "avg_pool_2"
    what = f"layer {index} ({layer.kind})"
    stream.text(f"{what} type", kind)
    padding = 0 if layer.stride != 1 else layer.size // 2
    for label, value in (("nr", layer.size), ("nc", layer.size), ("stride_y", layer.stride),
                         ("stride_x", layer.stride), ("padding_y", padding), ("padding_x", padding)):
        stream.expect_int(f"{what} {label}", value)


def _read_fc(stream: _Stream, layer: Layer, channels: int, out: DlibResNetWeights) -> None:
    what = "layer fc (fc_no_bias)"
    stream.text(f"{what} type", "fc_2")
    stream.expect_int(f"{what} num_outputs", layer.filters)
    stream.expect_int(f"{what} num_inputs", channels)
    params = stream.tensor(f"{what} params", (channels, layer.filters, 1, 1))
    stream.alias(f"{what} weights", (channels, layer.filters, 1, 1))
    stream.alias(f"{what} biases", (0, 0, 0, 0))
    stream.expect_int(f"{what} bias mode", 1)  # FC_NO_BIAS
    for label in ("learning_rate_multiplier", "weight_decay_multiplier", "bias_learning_rate_multiplier",
                  "bias_weight_decay_multiplier"):
        stream.real(f"{what} {label}")
    out.fc = params.reshape(channels, layer.filters).copy()


def _layer_tail(stream: _Stream, index: int, on_input: bool, version: int) -> None:
    what = f"layer {index}"
    for label in ("this_layer_setup_called", "gradient_input_is_stale", "get_output_and_gradient_input_disabled"):
        stream.flag(f"{what} {label}")
    stream.tensor(f"{what} x_grad")
    stream.tensor(f"{what} cached_output")
    stream.tensor(f"{what} {'grad_final' if on_input else 'params_grad'}")
    if on_input and version >= 3:
        stream.expect_int(f"{what} sample_expansion_factor", 1)


def default_dlib_path() -> Path:
    """The ``.dat`` installed by the ``face-recognition-models`` package (``--weights dlib``)."""
    try:
        import face_recognition_models
    except ImportError:
        raise ConfigError("--weights dlib: the face-recognition-models package is not installed "
                          "(pip install face-recognition-models; it is in requirements.txt)") from None
    path = Path(face_recognition_models.face_recognition_model_location())
    if not path.is_file():
        raise ConfigError(f"--weights dlib: {path} is missing from the installed face-recognition-models package")
    return path


def is_dlib_dat(path) -> bool:
    """Whether ``path`` starts as dlib's serialised ``loss_metric`` network does."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(32)
    except OSError:
        return False
    return head[:4] == b"\x01\x01\x01\x0d" and head[4:15] == b"loss_metric"


def read_dlib_resnet(path) -> DlibResNetWeights:
    """Every parameter of dlib's face ResNet in ``path``, checked against :func:`anet_layers` (see module doc)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: {size} bytes is far larger than dlib's face ResNet (about 22.5 MB); "
                              "not that file")
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    stream = _Stream(data, path)
    stream.expect_int("loss layer version", 1)
    stream.text("loss type", "loss_metric_2")
    loss = {"margin": stream.real("loss margin"), "distance_threshold": stream.real("loss distance threshold")}
    net = anet_layers()
    # Versions from the top (fc) down to the layer on the input: tags and skips write 1, add_layers 2,
    # the add_layer on the input 2 or 3.
    versions = []
    for index in range(len(net) - 1, -1, -1):
        layer = net[index]
        if layer.kind in ("tag", "skip"):
            stream.expect_int(f"layer {index} ({layer.kind}{layer.tag}) version", 1)
            versions.append(1)
        elif index == 0:
            versions.append(stream.expect_int("layer 0 (on the input) version", (2, 3)))
        else:
            versions.append(stream.expect_int(f"layer {index} ({layer.kind}) version", 2))
    stream.text("input layer type", "input_rgb_image_sized")
    means = tuple(stream.real(f"input layer {c} mean") for c in ("red", "green", "blue"))
    if not all(0.0 <= m <= 255.0 for m in means):
        raise stream.fail(f"input channel means {means} are outside 0..255")
    input_size = (stream.integer("input layer nr"), stream.integer("input layer nc"))
    out = DlibResNetWeights(str(path), means, input_size, loss)
    channels = 3
    tags = {}  # tag id -> channel count at the tag (for add_prev's widened output)
    for index, layer in enumerate(net):
        if layer.kind == "tag":
            tags[layer.tag] = channels
            continue
        if layer.kind == "skip":
            channels = tags[layer.tag]
            continue
        if layer.kind == "con":
            _read_con(stream, layer, channels, out)
            channels = layer.filters
        elif layer.kind == "affine":
            _read_affine(stream, layer, channels, out)
        elif layer.kind in ("max_pool", "avg_pool"):
            _read_pool(stream, layer, index)
        elif layer.kind == "relu":
            stream.text(f"layer {index} type", "relu_")
        elif layer.kind == "add_prev":
            stream.text(f"layer {index} type", "add_prev_")
            channels = max(channels, tags[layer.tag])
        elif layer.kind == "fc":
            _read_fc(stream, layer, channels, out)
        _layer_tail(stream, index, index == 0, versions[-1] if index == 0 else 2)
    if stream.pos != len(data):
        raise stream.fail(f"{len(data) - stream.pos} unexpected bytes after the last layer")
    return out
