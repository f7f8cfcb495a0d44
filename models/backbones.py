"""Backbones: image (B, S, S, 3) in [-1, 1] → pooled feature (B, D).

In-house (defined here, layer for layer as the reference implementation, so pretrained weights load
and compute exactly what they computed there):

* ``resnet18`` / ``resnet50`` — ResNet (He et al. 2016) in torchvision's layout (torchvision
  ``models/resnet.py``: ``BasicBlock``, ``Bottleneck`` with the stride on the 3×3 convolution, i.e.
  "ResNet v1.5"). Layers are named after torchvision's state-dict keys with ``.`` → ``_`` (``conv1``,
  ``layer2_0_downsample_0``…), which is what :mod:`models.pretrained` maps ``.pth`` tensors by.
  Stride-2 padding is explicit (``ZeroPadding2D`` + ``padding="valid"``) because Keras' ``"same"`` pads
  stride-2 layers asymmetrically (the extra row/column at the bottom/right) where PyTorch pads
  symmetrically; stride-1 convolutions use ``"same"``, which is symmetric there.
  BatchNorm: eps 1e-5, momentum 0.9 (PyTorch's momentum 0.1 is the weight of the *new* statistic).
* ``resnet18_ic`` — the ResNet-18 of the ``image-classifiers`` package (qubvel/classification_models,
  ``classification_models/models/resnet.py``: ``ResNet``, ``residual_conv_block``), whose ImageNet
  ``.h5`` the official LDLVA TF release loads for ``pretrained='imagenet'``. It is *not* torchvision's
  network: a ``bn_data`` BatchNorm (no scale) on the raw input, pre-activation units
  (BN → ReLU → conv; the projection shortcut of a stage's first unit taken after that unit's first
  BN-ReLU), a final ``bn1``/``relu1``, BatchNorm eps 2e-5 and momentum 0.99. Layer names are the
  package's own, so its ``.h5`` loads by name.
* ``dlib_resnet`` — dlib's face-recognition ResNet (davisking/dlib ``examples/dnn_face_recognition_ex.cpp``,
  ``anet_type``; trained on ~3 M real faces), built in :mod:`models.dlib_resnet` and loaded from dlib's own
  ``.dat`` (``--weights dlib``: the copy the ``face-recognition-models`` package installs). 150 px native;
  256-D pooled feature.
* ``small_cnn`` — a light CNN for CPU tests and the synthetic benchmark.
* ``tiny_cnn`` — the smallest network every code path runs on (~35 k parameters), for smoke runs and the
  test suite: at test sizes building the training graph is most of a run's cost, and it builds in about
  half small_cnn's time.

From ``keras.applications``: ``resnet50_keras`` (Keras' ResNet-50 v1: stride on the first 1×1
convolution, caffe preprocessing — the network ``--weights imagenet`` downloads for), ``resnet101``
and ``mobilenetv2``.

Weights (``build_backbone(..., weights=...)``): ``none``; ``imagenet`` (Keras applications only,
downloaded by Keras; an offline failure is reported clearly); or a file — a PyTorch checkpoint
(``.pth``/``.pt``/``.pth.tar``, torchvision layout, e.g. the MS-Celeb-1M ResNet-18 of SCN/RUL/EAC/
LA-Net/NLA or torchvision's ImageNet files), the image-classifiers ``.h5``, or a Keras
``.weights.h5`` (this project's own, or one written by ``python -m preprocess.weights convert``).
Files are read by :mod:`models.pretrained`, which refuses tensors whose shapes do not fit.

Input normalisation follows the weights and is the backbone's first layer (:class:`InputNorm`,
named ``input_norm``), so it travels into checkpoints and the SavedModel. The pipeline always feeds
[-1, 1]; the layer maps that to what the weights were trained on:

============  =========================================================  ==============================
mode          output                                                     used for
============  =========================================================  ==============================
``none``      x (identity)                                               random init; own Keras weights
``imagenet``  ((x + 1) / 2 − mean) / std, RGB, mean (0.485, 0.456,       PyTorch/torchvision weights
              0.406), std (0.229, 0.224, 0.225)
``pixels``    (x + 1) · 127.5, RGB 0..255                                image-classifiers ``.h5``
                                                                         (its ``preprocess_input`` is
                                                                         the identity on 0..255)
``caffe``     BGR 0..255 minus (103.939, 116.779, 123.68)                Keras ImageNet ResNets
``dlib``      (RGB 0..255 − (122.782, 117.001, 104.298)) / 256            dlib's face ResNet (``.dat``;
                                                                         dlib/dnn/input.h,
                                                                         ``input_rgb_image``)
============  =========================================================  ==============================

``input_norm="auto"`` (the default) picks it from ``weights`` (:func:`resolve_input_norm`); any
mode can be forced. The official LDLVA release fed its backbones [-1, 1] whatever their weights
(``src/data_utils.py``: ``_transform_image_pixels(center=True, scale=True)``); ``input_norm="none"``
reproduces that.

API for the engine (config.json, export metadata)::

    build_backbone(name, image_size, weights=None, name_prefix="backbone", input_norm="auto") -> keras.Model
    input_norm_of(backbone) -> str          # the mode the built backbone applies ("none" if it has no layer)
    input_norm_spec(mode) -> dict           # JSON-ready: {"mode", "formula", "mean", "std", "channels"}
    resolve_input_norm(name, weights, input_norm="auto", missing_ok=False) -> str
    stage_models(backbone) -> (stages, tail)

``build_backbone`` also sets ``backbone.fer_input_norm`` (the mode) and ``backbone.fer_weights_report``
(what a weights file mapped, dropped and left missing; ``None`` without a file). To rebuild a trained
backbone without its weights file (evaluation, export), pass the recorded mode explicitly:
``build_backbone(name, size, None, input_norm=recorded_mode)``.
"""

from __future__ import annotations

import re
from pathlib import Path

import keras
from keras import layers

from common.errors import ConfigError
from models.registry import BACKBONES  # the one list of backbone names

FEATURE_DIMS = {"resnet50": 2048, "resnet50_keras": 2048, "resnet101": 2048, "resnet18": 512, "resnet18_ic": 512,
                "mobilenetv2": 1280, "small_cnn": 256, "tiny_cnn": 64,
                "dlib_resnet": 256}
INPUT_NORMS = ("none", "imagenet", "pixels", "caffe", "dlib")
_KERAS_APPS = ("resnet50_keras", "resnet101", "mobilenetv2")

# Stage outputs inside the keras.applications models (keyed by the application's own model name).
_RESNET_STAGE_LAYERS = {
    "resnet50": ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    "resnet101": ("conv2_block3_out", "conv3_block4_out", "conv4_block23_out", "conv5_block3_out"),
}

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_DLIB_MEAN_RGB = (122.782, 117.001, 104.298)  # dlib/dnn/input.h: input_rgb_image's avg_red/green/blue


# ------------------------------------------------------------------------------ normalisation ----


@keras.saving.register_keras_serializable(package="fer")
class InputNorm(layers.Layer):
    """Map [-1, 1] pipeline images to the input the weights expect (see the module docstring's table)."""

    def __init__(self, mode: str = "none", **kwargs):
        super().__init__(**kwargs)
        if mode not in INPUT_NORMS:
            raise ConfigError(f"unknown input normalisation '{mode}'; known: {', '.join(INPUT_NORMS)}")
        self.mode = mode

    def call(self, x):
        if self.mode == "none":
            return x
        ops = keras.ops
        if self.mode == "imagenet":
            mean = ops.convert_to_tensor(_IMAGENET_MEAN, dtype=x.dtype)
            std = ops.convert_to_tensor(_IMAGENET_STD, dtype=x.dtype)
            return ((x + 1.0) * 0.5 - mean) / std
        pixels = (x + 1.0) * 127.5
        if self.mode == "pixels":
            return pixels
        if self.mode == "dlib":  # input_rgb_image::to_tensor: (pixel - avg) / 256
            return (pixels - ops.cast(ops.convert_to_tensor(_DLIB_MEAN_RGB), x.dtype)) / 256.0
        return pixels[..., ::-1] - ops.cast(ops.convert_to_tensor(_CAFFE_MEAN_BGR), x.dtype)  # caffe

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def input_norm_spec(mode: str) -> dict:
    """A JSON-ready description of an input normalisation mode (for config.json and export metadata)."""
    specs = {
        "none": {"formula": "x", "mean": None, "std": None, "channels": "RGB"},
        "imagenet": {"formula": "((x + 1) / 2 - mean) / std", "mean": list(_IMAGENET_MEAN),
                     "std": list(_IMAGENET_STD), "channels": "RGB"},
        "pixels": {"formula": "(x + 1) * 127.5", "mean": None, "std": None, "channels": "RGB"},
        "caffe": {"formula": "bgr((x + 1) * 127.5) - mean", "mean": list(_CAFFE_MEAN_BGR), "std": None,
                  "channels": "BGR"},
        "dlib": {"formula": "((x + 1) * 127.5 - mean) / 256", "mean": list(_DLIB_MEAN_RGB), "std": [256.0] * 3,
                 "channels": "RGB"},
    }
    if mode not in specs:
        raise ConfigError(f"unknown input normalisation '{mode}'; known: {', '.join(INPUT_NORMS)}")
    return {"mode": mode, "input_range": [-1.0, 1.0], **specs[mode]}


def input_norm_of(backbone: keras.Model) -> str:
    """The input normalisation a built backbone applies (its :class:`InputNorm` layer; ``none`` without one)."""
    for layer in backbone.layers:
        if isinstance(layer, InputNorm):
            return layer.mode
    return "none"


def resolve_input_norm(name: str, weights: str | None, input_norm: str = "auto", missing_ok: bool = False) -> str:
    """The normalisation ``build_backbone(name, _, weights, input_norm=input_norm)`` will apply.

    ``auto``: none without weights; the Keras application's own for ``imagenet`` (caffe for the
    ResNets; MobileNetV2 already expects [-1, 1]); for a file, what :mod:`models.pretrained` reads
    off it (PyTorch → imagenet, image-classifiers ``.h5`` → pixels, a converted ``.weights.h5`` → the
    mode recorded in it, other Keras files → none). ``missing_ok`` lets a missing file be judged by
    its suffix (``.pth``/``.pt``/``.tar`` → imagenet, else none) — for rebuilding a model whose
    weights file is gone.
    """
    if input_norm != "auto":
        if input_norm not in INPUT_NORMS:
            raise ConfigError(f"unknown input normalisation '{input_norm}'; known: auto, {', '.join(INPUT_NORMS)}")
        return input_norm
    weights = _normalise_weights_arg(weights)
    if weights is None:
        return "none"
    if weights == "imagenet":
        return "caffe" if name in ("resnet50_keras", "resnet101") else "none"
    if weights == "dlib":
        return "dlib"
    from models.pretrained import weights_input_norm

    return weights_input_norm(weights, missing_ok=missing_ok)


def _imagenet_preprocess(name):
    """The input layer Keras' ImageNet weights of ``name`` expect (None: MobileNetV2 takes [-1, 1])."""
    if name in ("resnet50_keras", "resnet101"):
        return InputNorm("caffe", name="imagenet_preprocess")
    return None


def _normalise_weights_arg(weights):
    return None if weights in (None, "", "none", "None") else weights


def resolve_weights_path(weights):
    """``dlib`` → the ``.dat`` installed by face-recognition-models; anything else unchanged."""
    if weights == "dlib":
        from models.dlib_dat import default_dlib_path

        return str(default_dlib_path())
    return weights


# ------------------------------------------------------------------------- torchvision ResNets ----


def _bn(x, name):
    return layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=name)(x)


def _conv(x, filters, kernel, stride, name):
    """Conv2D as PyTorch's ``Conv2d(padding=kernel // 2, bias=False)``. At stride 1 Keras ``"same"`` pads an
    odd kernel symmetrically, as PyTorch does (and costs no extra op); at stride 2 it would pad the bottom/right
    more, so the padding is explicit (``ZeroPadding2D``, then ``"valid"``)."""
    pad = kernel // 2
    if stride == 1:
        return layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=name)(x)
    if pad:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return layers.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=False, name=name)(x)


def _basic_block(x, filters, stride, name):
    """torchvision ``BasicBlock``: 3×3 (stride) → BN → ReLU → 3×3 → BN, + identity or 1×1/stride projection."""
    y = layers.ReLU(name=f"{name}_relu1")(_bn(_conv(x, filters, 3, stride, f"{name}_conv1"), f"{name}_bn1"))
    y = _bn(_conv(y, filters, 3, 1, f"{name}_conv2"), f"{name}_bn2")
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _bn(_conv(x, filters, 1, stride, f"{name}_downsample_0"), f"{name}_downsample_1")
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


def _bottleneck(x, filters, stride, name):
    """torchvision ``Bottleneck`` (v1.5): 1×1 → 3×3 (stride) → 1×1 (4× filters), BN after each, + shortcut."""
    y = layers.ReLU(name=f"{name}_relu1")(_bn(_conv(x, filters, 1, 1, f"{name}_conv1"), f"{name}_bn1"))
    y = layers.ReLU(name=f"{name}_relu2")(_bn(_conv(y, filters, 3, stride, f"{name}_conv2"), f"{name}_bn2"))
    y = _bn(_conv(y, 4 * filters, 1, 1, f"{name}_conv3"), f"{name}_bn3")
    shortcut = x
    if stride != 1 or x.shape[-1] != 4 * filters:
        shortcut = _bn(_conv(x, 4 * filters, 1, stride, f"{name}_downsample_0"), f"{name}_downsample_1")
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


_TORCHVISION_SPECS = {"resnet18": (_basic_block, (2, 2, 2, 2)), "resnet50": (_bottleneck, (3, 4, 6, 3))}


def _torchvision_resnet(x, name):
    """ResNet-18/50 (He et al. 2016) as torchvision builds them; returns the four stage maps (strides 4–32)."""
    block, depths = _TORCHVISION_SPECS[name]
    x = layers.ReLU(name="relu")(_bn(_conv(x, 64, 7, 2, "conv1"), "bn1"))
    # PyTorch's MaxPool2d(3, 2, padding=1) pads with -inf; zero padding is the same here because the
    # input is a ReLU output (>= 0) and every 3×3 window holds at least one real value.
    x = layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)
    stages = []
    for stage, (filters, depth) in enumerate(zip((64, 128, 256, 512), depths), start=1):
        for index in range(depth):
            stride = 2 if (index == 0 and stage > 1) else 1
            x = block(x, filters, stride, f"layer{stage}_{index}")
        stages.append(x)
    return stages


# ------------------------------------------------------------------ image-classifiers ResNet-18 ----


def _ic_bn(x, name, scale=True):
    return layers.BatchNormalization(epsilon=2e-5, momentum=0.99, scale=scale, name=name)(x)


def _ic_conv(x, filters, kernel, stride, name, pad):
    if pad:
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return layers.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=False, name=name)(x)


def _ic_unit(x, filters, stride, name, project):
    """``residual_conv_block``: BN-ReLU → [1×1 projection of it] → 3×3 (stride) → BN-ReLU → 3×3 → add."""
    y = layers.Activation("relu", name=f"{name}_relu1")(_ic_bn(x, f"{name}_bn1"))
    shortcut = _ic_conv(y, filters, 1, stride, f"{name}_sc", 0) if project else x
    y = _ic_conv(y, filters, 3, stride, f"{name}_conv1", 1)
    y = layers.Activation("relu", name=f"{name}_relu2")(_ic_bn(y, f"{name}_bn2"))
    y = _ic_conv(y, filters, 3, 1, f"{name}_conv2", 1)
    return layers.Add(name=f"{name}_add")([y, shortcut])


def _ic_resnet18(x):
    """image-classifiers ResNet-18 (pre-activation units); stage maps: the last unit sums, the last after bn1/relu1."""
    x = _ic_bn(x, "bn_data", scale=False)
    x = _ic_conv(x, 64, 7, 2, "conv0", 3)
    x = layers.Activation("relu", name="relu0")(_ic_bn(x, "bn0"))
    x = layers.ZeroPadding2D(1, name="pooling0_pad")(x)  # after a ReLU: zero padding = -inf padding
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="pooling0")(x)
    stages = []
    for stage, filters in enumerate((64, 128, 256, 512), start=1):
        for unit in (1, 2):
            stride = 2 if (unit == 1 and stage > 1) else 1
            x = _ic_unit(x, filters, stride, f"stage{stage}_unit{unit}", project=(unit == 1))
        stages.append(x)
    stages[-1] = layers.Activation("relu", name="relu1")(_ic_bn(stages[-1], "bn1"))
    return stages


# ----------------------------------------------------------------------------------- small CNN ----


def _small_cnn(inputs):
    """A light VGG-style CNN (~0.9 M parameters, ~40 M MACs at 64 px) for CPU tests and the synthetic benchmark.

    Stem (16 ch, full resolution) then four stages whose pooled outputs ``s0_pool``..``s3_pool`` sit at
    strides 4, 8, 16, 32 like a ResNet's, so LA-Net's landmark branch works on it unchanged.
    """
    def conv(x, filters, name):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)  # PyTorch default; short runs
        return layers.ReLU(name=f"{name}_relu")(x)

    x = conv(inputs, 16, "stem")
    x = layers.MaxPooling2D(2, padding="same", name="stem_pool")(x)
    stages = []
    for i, (filters, depth) in enumerate(((32, 1), (64, 2), (128, 2), (256, 1))):
        for j in range(depth):
            x = conv(x, filters, f"s{i}_{j}")
        x = layers.MaxPooling2D(2, padding="same", name=f"s{i}_pool")(x)
        stages.append(x)
    return stages


def _tiny_cnn(inputs):
    """The smallest network the toolkit's code paths run on (~35 k parameters): smoke runs and the test suite.

    small_cnn's layout cut to one convolution per stage: a stem (convolution + BatchNormalization, so batch
    statistics, their freezing and their export stay exercised) and four stages whose pooled outputs
    ``s0_pool``..``s3_pool`` have small_cnn's names and strides, so ``--freeze``, the stage maps and LA-Net's
    landmark branch work on it unchanged. At the test suite's 24 px a 2-epoch run's cost is mostly graph
    building, which scales with the layers (a tiny CE run with its export: 3.1 s against small_cnn's 5.6 s,
    measured on a 2-vCPU AMD EPYC).
    """
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.MaxPooling2D(2, padding="same", name="stem_pool")(x)
    stages = []
    for i, filters in enumerate((16, 32, 32, 64)):
        x = layers.Conv2D(filters, 3, padding="same", name=f"s{i}_0_conv")(x)
        x = layers.ReLU(name=f"s{i}_0_relu")(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"s{i}_pool")(x)
        stages.append(x)
    return stages


# ------------------------------------------------------------------------------------- builder ----


def _keras_application(name, image_size, weights):
    factory = {"resnet50_keras": keras.applications.ResNet50, "resnet101": keras.applications.ResNet101,
               "mobilenetv2": keras.applications.MobileNetV2}[name]
    keras_weights = "imagenet" if weights == "imagenet" else None
    try:
        return factory(include_top=False, weights=keras_weights, input_shape=(image_size, image_size, 3))
    except Exception as exc:  # offline: URLError / OSError / "Exception: URL fetch failure"
        if keras_weights:
            raise ConfigError(
                f"could not download the ImageNet weights for {name} ({type(exc).__name__}: {str(exc)[:120]}). "
                "This machine is probably offline: use --weights none, or download the weights elsewhere and "
                "pass --weights /path/to/file.weights.h5") from None
        raise


def _check_imagenet(name):
    if name == "resnet50":
        raise ConfigError("Keras' ImageNet weights fit Keras' own ResNet-50 layout, not the torchvision-layout "
                          "'resnet50': use --backbone resnet50_keras --weights imagenet (downloaded by Keras), or "
                          "pass torchvision's ImageNet checkpoint (resnet50-*.pth) as --weights FILE, which loads "
                          "offline")
    if name == "resnet18_ic":
        raise ConfigError("image-classifiers' ImageNet ResNet-18 is not downloaded here: fetch "
                          "resnet18_imagenet_1000_no_top.h5 from the qubvel/classification_models releases and pass "
                          "it as --weights FILE (it then loads offline)")
    if name not in _KERAS_APPS:
        raise ConfigError(f"no ImageNet weights exist for '{name}' in Keras; pass a weights file path "
                          "(e.g. a torchvision or MS-Celeb-1M .pth) or 'none'")


def build_backbone(name: str, image_size: int, weights: str | None = None, name_prefix: str = "backbone",
                   input_norm: str = "auto", keep_head: bool = False) -> keras.Model:
    """Build a backbone: (B, S, S, 3) in [-1, 1] → (B, D) pooled features (see the module docstring).

    ``weights``: ``none`` | ``imagenet`` | ``dlib`` | a weights file; ``input_norm``: ``auto`` (from the
    weights) or one of :data:`INPUT_NORMS`. ``keep_head`` (``dlib_resnet`` only): end in dlib's bias-free
    128-D ``fc`` (the face descriptor) instead of the pooled feature. The result carries
    ``fer_input_norm`` and ``fer_weights_report``.
    """
    if name not in BACKBONES:
        raise ConfigError(f"unknown --backbone '{name}'; known: {', '.join(BACKBONES)}")
    weights = _normalise_weights_arg(weights)
    if weights == "imagenet":
        _check_imagenet(name)
    if weights == "dlib" and name != "dlib_resnet":
        raise ConfigError(f"--weights dlib is dlib's face ResNet: use it with --backbone dlib_resnet, not {name}")
    if keep_head and name != "dlib_resnet":
        raise ConfigError("keep_head is for --backbone dlib_resnet (its 128-D face descriptor)")
    mode = resolve_input_norm(name, weights, input_norm)
    weights = resolve_weights_path(weights)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    if name in _KERAS_APPS:
        base = _keras_application(name, image_size, weights)
        norm = _imagenet_preprocess(name) if weights == "imagenet" and input_norm == "auto" else None
        if norm is None and mode != "none":
            norm = InputNorm(mode, name="input_norm")
        stages = [base(norm(inputs) if norm is not None else inputs)]
    elif name == "dlib_resnet":
        from models.dlib_resnet import check_image_size, dlib_resnet_stages

        check_image_size(image_size)
        stages = dlib_resnet_stages(InputNorm(mode, name="input_norm")(inputs))
    elif name in ("small_cnn", "tiny_cnn"):
        # Unchanged unless a normalisation is asked for: its outputs must stay bit-identical.
        x = InputNorm(mode, name="input_norm")(inputs) if mode != "none" else inputs
        stages = (_small_cnn if name == "small_cnn" else _tiny_cnn)(x)
    else:
        x = InputNorm(mode, name="input_norm")(inputs)
        stages = _ic_resnet18(x) if name == "resnet18_ic" else _torchvision_resnet(x, name)
    pooled = layers.GlobalAveragePooling2D(name="gap")(stages[-1])
    if keep_head:  # dlib's fc_no_bias<128>: the face descriptor
        pooled = layers.Dense(128, use_bias=False, name="fc")(pooled)
    model = keras.Model(inputs, pooled, name=f"{name_prefix}_{name}")
    report = None
    if weights and weights != "imagenet":
        report = load_backbone_weights(model, weights, backbone=name)
    # Plain attributes, outside Keras/TF tracking: a tracked dict would end up in checkpoints and SavedModels.
    object.__setattr__(model, "fer_input_norm", mode)
    object.__setattr__(model, "fer_weights_report", report)
    return model


# ------------------------------------------------------------------------------------- freezing ----

FREEZE_POINTS = ("none", "stem", "stage1", "stage2", "stage3")
# Per backbone, the layer-name prefixes of its stem and of each stage, input side first.
_FREEZE_GROUPS = {
    "resnet18": (("conv1", "bn1", "relu", "maxpool"), ("layer1_",), ("layer2_",), ("layer3_",)),
    "resnet50": (("conv1", "bn1", "relu", "maxpool"), ("layer1_",), ("layer2_",), ("layer3_",)),
    "resnet18_ic": (("bn_data", "conv0", "bn0", "relu0", "pooling0"), ("stage1_",), ("stage2_",), ("stage3_",)),
    "small_cnn": (("stem_",), ("s0_",), ("s1_",), ("s2_",)),
    "tiny_cnn": (("stem_",), ("s0_",), ("s1_",), ("s2_",)),
    "dlib_resnet": (("conv0", "affine0", "relu0", "max_pool"), ("alevel4_",), ("alevel3_",), ("alevel2_",)),
}


def freeze_backbone(backbone: keras.Model, name: str, upto: str) -> int:
    """Make the stem and the stages up to ``upto`` untrainable (``none`` | ``stem`` | ``stage1..3``).

    A common fine-tuning recipe: the early layers' generic features stay as pretrained and the step costs
    less (no weight gradients there). Frozen BatchNormalization layers also keep their statistics
    (Keras runs a non-trainable BatchNormalization in inference mode). Returns the number of layers frozen.
    """
    if upto not in FREEZE_POINTS:
        raise ConfigError(f"--freeze {upto}: choose one of {', '.join(FREEZE_POINTS)}")
    if upto == "none":
        return 0
    if name not in _FREEZE_GROUPS:
        raise ConfigError(f"--freeze {upto}: stems and stages are known for {', '.join(_FREEZE_GROUPS)}, not {name}")
    prefixes = tuple(p for group in _FREEZE_GROUPS[name][:FREEZE_POINTS.index(upto)] for p in group)
    frozen = 0
    for layer in backbone.layers:
        if layer.name.startswith(prefixes) and layer.weights:
            layer.trainable = False
            frozen += 1
    return frozen


# ------------------------------------------------------------------------------------- stages ----

# Layers whose outputs are the stage maps of the in-house backbones (strides 4, 8, 16, 32).
_INHOUSE_STAGE_LAYERS = {
    "resnet18": ("layer1_1_out", "layer2_1_out", "layer3_1_out", "layer4_1_out"),
    "resnet50": ("layer1_2_out", "layer2_3_out", "layer3_5_out", "layer4_2_out"),
    "resnet18_ic": ("stage1_unit2_add", "stage2_unit2_add", "stage3_unit2_add", "relu1"),
    "small_cnn": ("s0_pool", "s1_pool", "s2_pool", "s3_pool"),
    "tiny_cnn": ("s0_pool", "s1_pool", "s2_pool", "s3_pool"),
    "dlib_resnet": ("alevel4_2_out", "alevel3_3_out", "alevel2_2_out", "alevel0_0_out"),
}
_BLOCK_NAME = re.compile(r"^(layer\d+_|stage\d+_unit)(\d+)(_out|_add)$")


def _is_last_block(name: str, names: set) -> bool:
    """A stage map must end its stage: ``layer1_1_out`` is ResNet-18's stage 1, but mid-stage in ResNet-50."""
    match = _BLOCK_NAME.match(name)
    if match is None:
        return True
    head, index, tail = match.groups()
    return f"{head}{int(index) + 1}{tail}" not in names


def _inhouse_stage_layers(backbone):
    names = {layer.name for layer in backbone.layers}
    for stage_names in _INHOUSE_STAGE_LAYERS.values():
        if all(n in names and _is_last_block(n, names) for n in stage_names):
            return stage_names
    return None


def stage_models(backbone: keras.Model) -> tuple[keras.Model, keras.Model]:
    """Views of a built backbone that share its layers and weights.

    Returns ``(stages, tail)``: ``stages`` maps the image to ``[pooled, s1, s2, s3, s4]`` (pooled equals
    ``backbone(image)``), and ``tail`` maps a stage-1 map to ``[s2, s3, s4]``, i.e. stages 2–4 alone
    (LA-Net clones it for its landmark branch). In-house ResNets, small_cnn, tiny_cnn and the Keras ResNets.
    """
    inhouse = _inhouse_stage_layers(backbone)
    if inhouse is not None:
        maps = [backbone.get_layer(n).output for n in inhouse]
        return keras.Model(backbone.input, [backbone.output, *maps]), keras.Model(maps[0], maps[1:])
    base = next((layer for layer in backbone.layers if layer.name in _RESNET_STAGE_LAYERS), None)
    if base is None:
        raise ConfigError("stage outputs are only available for ResNet, small_cnn and tiny_cnn backbones, "
                          f"not {backbone.name}")
    maps = [base.get_layer(n).output for n in _RESNET_STAGE_LAYERS[base.name]]
    base_stages = keras.Model(base.input, maps)
    # The keras.applications backbone is a chain image → [normalisation] → base → gap: replay it with
    # the base replaced by its stage view.
    x = backbone.input
    for layer in backbone.layers[1:]:
        if layer is base:
            stage_maps = base_stages(x)
            x = stage_maps[-1]
        else:
            x = layer(x)
    return keras.Model(backbone.input, [x, *stage_maps]), keras.Model(maps[0], maps[1:])


# -------------------------------------------------------------------------------------- weights ----


def load_backbone_weights(model: keras.Model, path: str, backbone: str | None = None):
    """Load a weights file into a built backbone; returns the load report (see :mod:`models.pretrained`).

    PyTorch checkpoints and Keras-2-style ``.h5`` files (image-classifiers) are mapped by name with
    every shape checked; Keras ``.weights.h5`` / ``.keras`` files load as Keras saved them.
    """
    from models.pretrained import load_weights_file

    return load_weights_file(model, path, backbone=backbone)


def convert_weights(src, out, backbone: str, force: bool = False, allow_missing: bool = False) -> dict:
    """Write ``src``'s weights, mapped onto ``backbone``, as a Keras ``.weights.h5`` at ``out`` (atomically).

    ``src`` is any file :func:`models.pretrained.load_weights_file` reads (``python -m preprocess.weights
    convert``); the mapping is checked as there, and ``allow_missing`` means the same.

    The file records ``fer_backbone``, ``fer_input_norm`` and ``fer_source`` as HDF5 attributes, so
    ``build_backbone(backbone, size, out)`` picks the right input normalisation on its own.
    """
    import tempfile

    import h5py

    from common.io import atomic_write_bytes
    from models.pretrained import CONVERTED_FORMAT, CONVERTIBLE, load_weights_file

    out = Path(out)
    if backbone not in CONVERTIBLE:
        raise ConfigError(f"--backbone {backbone}: converting is for {', '.join(CONVERTIBLE)}")
    if not out.name.endswith(".weights.h5"):
        raise ConfigError(f"{out}: the output name must end in .weights.h5 (Keras' weights format)")
    if out.exists() and not force:
        raise ConfigError(f"{out}: already exists; pass --force to overwrite it")
    if not Path(src).is_file():
        raise ConfigError(f"{src}: file not found")
    # The weights do not depend on the image size; dlib's unpadded network needs its own minimum.
    model = build_backbone(backbone, 150 if backbone == "dlib_resnet" else 64, None, input_norm="none")
    report = load_weights_file(model, src, backbone=backbone, allow_missing=allow_missing)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "staged.weights.h5"
        model.save_weights(staged)
        with h5py.File(staged, "a") as handle:
            handle.attrs["fer_format"] = CONVERTED_FORMAT
            handle.attrs["fer_backbone"] = backbone
            handle.attrs["fer_input_norm"] = report["input_norm"]
            handle.attrs["fer_source"] = Path(src).name
        atomic_write_bytes(out, staged.read_bytes())
    return report


def build_dlib_embedder(weights: str | None = "dlib", image_size: int = 150) -> keras.Model:
    """dlib's whole face-recognition network: (B, S, S, 3) in [-1, 1] → dlib's 128-D face descriptor."""
    return build_backbone("dlib_resnet", image_size, weights, name_prefix="dlib", keep_head=True)
