"""dlib's face-recognition ResNet in Keras: ``--backbone dlib_resnet``, ``--weights dlib``.

The network is exactly ``anet_type`` of davisking/dlib ``examples/dnn_face_recognition_ex.cpp`` (Davis
King's ResNet-34 with layers removed and half the filters: 29 convolutions, trained on about 3 million
faces of 7 485 identities, 99.38 % on LFW; public domain), layer for layer as dlib computes it
(``dlib/dnn/layers.h``):

* ``con<N,k,k,s,s>`` is a convolution *with* a bias; dlib's default padding is ``k // 2`` at stride 1 and
  **none at stride 2** (the 7×7 stem, the 3×3 down-sampling convolutions), so those are ``"valid"``.
* ``max_pool<3,3,2,2>`` and the shortcut's ``avg_pool<2,2,2,2>`` are unpadded too.
* ``affine`` is the trained batch normalisation folded into one scale and shift per channel
  (:class:`DlibAffine`). Fine-tuning keeps it an affine map with trainable scale and shift and no batch
  statistics, for two reasons: the folded pair cannot be split back into running statistics, so a
  BatchNormalization in training mode would normalise every feature afresh at step 0 and throw the
  pretrained features off; and frozen-statistics normalisation is the standard way to fine-tune a
  pretrained backbone at small batch sizes (Detectron2's ``FrozenBatchNorm2d``, here with its scale and
  shift left trainable). Training and inference therefore compute the same function, as dlib does.
* ``add_prev`` (``residual``/``residual_down``) adds two tensors of *different* shapes as dlib's
  ``tt::add`` does: the output takes the larger size in every dimension and each input is read as zero
  outside its own extent (:class:`DlibAdd`). In ``residual_down`` the shortcut is a 2×2 average pool of the
  unit's input, narrower in channels (zero channels are appended) and, at some sizes, one row and column
  larger than the unpadded stride-2 convolution's output (at 150 px: 4×4 vs 3×3 in ``alevel1``, 2×2 vs
  1×1 in ``alevel0``), where only the shortcut contributes.
* ``input_rgb_image_sized<150>`` subtracts dlib's channel means (122.782, 117.001, 104.298) from 0..255
  RGB and divides by 256: the ``dlib`` mode of :class:`models.backbones.InputNorm`, the backbone's first
  layer, so it travels into ``config.json`` and the SavedModel.
* ``avg_pool_everything`` then ``fc_no_bias<128>``: the backbone's feature is the 256-D average pool
  (what the FER head is trained on; the 128-D identity embedding is a metric space for telling people
  apart), and :func:`models.backbones.build_dlib_embedder` adds the bias-free 128-D ``fc`` for the descriptor dlib computes.

Layers are named after dlib's levels (``alevel4`` next to the input … ``alevel0`` last) and units counted
from the input side: ``conv0``/``affine0``, ``alevel3_0_conv1``, ``alevel3_0_affine2``, ``alevel3_0_out``.
Stage maps (LA-Net): the outputs of ``alevel4`` (stride 4), ``alevel3`` (8), ``alevel2`` (16) and
``alevel0`` (64; its average pool is the feature).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from common.errors import ConfigError
from models.dlib_dat import FEATURE_DIM, LEVELS, NATIVE_SIZE, anet_layers, read_dlib_resnet

# dlib/dnn/input.h: input_rgb_image's default channel means (the values the released file stores).
DLIB_RGB_MEANS = (122.782, 117.001, 104.298)
STAGE_LAYERS = tuple(f"{level}_{units - 1}_out" for level, _, units, _ in LEVELS if level != "alevel1")


@keras.saving.register_keras_serializable(package="fer")
class DlibAffine(layers.Layer):
    """dlib's ``affine_`` (CONV_MODE): ``x · scale + shift`` per channel, no statistics (see module doc)."""

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.scale = self.add_weight(name="scale", shape=(channels,), initializer="ones")
        self.shift = self.add_weight(name="shift", shape=(channels,), initializer="zeros")

    def call(self, x):
        return x * keras.ops.cast(self.scale, x.dtype) + keras.ops.cast(self.shift, x.dtype)


@keras.saving.register_keras_serializable(package="fer")
class DlibAdd(layers.Layer):
    """dlib's ``add_prev``: the sum over the larger extent of both inputs, each zero outside its own."""

    def compute_output_shape(self, input_shapes):
        a, b = input_shapes
        return (a[0],) + tuple(max(int(x), int(y)) for x, y in zip(a[1:], b[1:]))

    def call(self, inputs):
        a, b = inputs
        target = [max(int(x), int(y)) for x, y in zip(a.shape[1:], b.shape[1:])]

        def grow(t):
            pads = [[0, 0]] + [[0, goal - int(have)] for goal, have in zip(target, t.shape[1:])]
            return keras.ops.pad(t, pads) if any(p[1] for p in pads) else t

        return grow(a) + grow(b)


def _unit(x, prefix: str, filters: int, down: bool):
    """``ares`` / ``ares_down``: conv-affine-relu-conv-affine, added to the input (or its 2×2 average pool)."""
    stride = 2 if down else 1
    y = layers.Conv2D(filters, 3, strides=stride, padding="valid" if down else "same", name=f"{prefix}_conv1")(x)
    y = layers.ReLU(name=f"{prefix}_relu1")(DlibAffine(name=f"{prefix}_affine1")(y))
    y = DlibAffine(name=f"{prefix}_affine2")(layers.Conv2D(filters, 3, padding="same", name=f"{prefix}_conv2")(y))
    shortcut = layers.AveragePooling2D(2, strides=2, padding="valid", name=f"{prefix}_pool")(x) if down else x
    return layers.ReLU(name=f"{prefix}_out")(DlibAdd(name=f"{prefix}_add")([shortcut, y]))


def dlib_resnet_stages(x) -> list:
    """The network from normalised input to the last level; returns the four stage maps (see module doc)."""
    x = layers.Conv2D(32, 7, strides=2, padding="valid", name="conv0")(x)
    x = layers.ReLU(name="relu0")(DlibAffine(name="affine0")(x))
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="max_pool")(x)
    outputs = {}
    for level, filters, units, down in LEVELS:
        for unit in range(units):
            x = _unit(x, f"{level}_{unit}", filters, down and unit == 0)
        outputs[level] = x
    return [outputs[level] for level in ("alevel4", "alevel3", "alevel2", "alevel0")]


def _output_size(size: int, window: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - window) // stride + 1


def spatial_sizes(image_size: int) -> list:
    """Per level, (input size, convolution output, shortcut output) at ``image_size``; dlib's shape arithmetic."""
    size = _output_size(_output_size(image_size, 7, 2, 0), 3, 2, 0)
    rows = []
    for level, _, units, down in LEVELS:
        if down:
            block, pooled = _output_size(size, 3, 2, 0), _output_size(size, 2, 2, 0)
            rows.append((level, size, block, pooled))
            size = max(block, pooled)
        else:
            rows.append((level, size, size, size))
    return rows


def min_image_size() -> int:
    """The smallest input on which every window of the network fits at least once (every output non-empty)."""
    for size in range(7, NATIVE_SIZE + 1):
        stem = _output_size(size, 7, 2, 0)
        if stem < 3:
            continue
        if all(row[1] >= 3 and row[2] >= 1 and row[3] >= 1 for row in spatial_sizes(size)):
            return size
    return NATIVE_SIZE


def check_image_size(image_size: int) -> None:
    minimum = min_image_size()
    if image_size < minimum:
        raise ConfigError(f"--image-size {image_size} is too small for --backbone dlib_resnet: its unpadded stride-2 "
                          f"layers need at least {minimum} px (dlib trained it at {NATIVE_SIZE} px)")


def load_dlib_weights(model: keras.Model, path, backbone: str = "dlib_resnet") -> dict:
    """Copy every parameter of dlib's ``.dat`` into a built ``dlib_resnet``; returns the load report.

    Every shape is checked (by the reader, against the architecture) before any variable is written. The
    128-D ``fc`` goes into the model's ``fc`` layer when it has one (the embedder) and is reported as dropped
    otherwise (the FER head is trained anew on the 256-D pooled feature).
    """
    from pathlib import Path

    weights = read_dlib_resnet(path)
    if any(abs(a - b) > 1e-3 for a, b in zip(weights.channel_means, DLIB_RGB_MEANS)):
        raise ConfigError(f"{path}: its input channel means {tuple(round(m, 3) for m in weights.channel_means)} "
                          f"differ from dlib's {DLIB_RGB_MEANS}, which the dlib input normalisation applies")
    names = {layer.name for layer in model.layers}
    report = {"source": Path(path).name, "format": "dlib-dat", "backbone": backbone, "mapped": [], "dropped": [],
              "missing": [], "layout": None, "stripped_prefix": None, "ignored": []}
    assignments = []
    for layer in anet_layers():
        if layer.kind == "con":
            kernel, bias = weights.conv[layer.name]
            assignments.append((layer.name, [kernel, bias], f"{layer.name} (con)"))
        elif layer.kind == "affine":
            assignments.append((layer.name, list(weights.affine[layer.name]), f"{layer.name} (affine)"))
    for name, values, source in assignments:
        if name not in names:
            report["missing"].append(name)
    if report["missing"]:
        raise ConfigError(f"{path}: the model has no layer {report['missing'][0]}; it is not a dlib_resnet backbone")
    if "fc" in names:
        assignments.append(("fc", [weights.fc], "fc (fc_no_bias)"))
    else:
        report["dropped"].append(["fc", "128-D identity embedding head (the FER head is trained on the 256-D pool)"])
    for name, values, source in assignments:
        target = model.get_layer(name)
        shapes = [tuple(v.shape) for v in target.get_weights()]
        if shapes != [v.shape for v in values]:
            raise ConfigError(f"{path}: {source} has shapes {[v.shape for v in values]}, layer {name} expects {shapes}")
    for name, values, source in assignments:
        model.get_layer(name).set_weights([np.asarray(v, dtype=np.float32) for v in values])
        report["mapped"].append([source, name, list(values[0].shape)])
    report["input_norm"] = "dlib"
    report["loss"] = weights.loss
    return report


__all__ = ["DlibAffine", "DlibAdd", "dlib_resnet_stages", "load_dlib_weights",
           "min_image_size", "check_image_size", "spatial_sizes", "STAGE_LAYERS", "DLIB_RGB_MEANS", "FEATURE_DIM"]
