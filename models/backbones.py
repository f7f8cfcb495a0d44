"""Backbones: image (B, S, S, 3) in [-1, 1] → pooled feature (B, D).

``resnet50`` / ``resnet101`` / ``mobilenetv2`` come from ``keras.applications``; ``resnet18`` (not in
Keras) and ``small_cnn`` (for CPU tests and the synthetic benchmark) are defined here. Weights:
``imagenet`` (downloaded by Keras; an offline failure is reported clearly), a path to a Keras weights
or model file (e.g. an MS-Celeb-pretrained backbone converted to Keras), or ``none``.

``build_backbone(..., return_stages=True)`` also returns the feature maps after each ResNet stage
(strides 4, 8, 16, 32), which LA-Net's landmark branch needs.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from common.errors import ConfigError

BACKBONES = ("resnet50", "resnet18", "resnet101", "mobilenetv2", "small_cnn")
FEATURE_DIMS = {"resnet50": 2048, "resnet101": 2048, "resnet18": 512, "mobilenetv2": 1280, "small_cnn": 256}

_RESNET_STAGE_LAYERS = {
    "resnet50": ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    "resnet101": ("conv2_block3_out", "conv3_block4_out", "conv4_block23_out", "conv5_block3_out"),
}


def _basic_block(x, filters, stride, name):
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(epsilon=1e-5, name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(epsilon=1e-5, name=f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_down")(x)
        shortcut = layers.BatchNormalization(epsilon=1e-5, name=f"{name}_down_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def _resnet18(inputs):
    """ResNet-18 (He et al. 2016), torchvision layout: 7×7/2 stem, max-pool, 4 stages of 2 basic blocks."""
    x = layers.Conv2D(64, 7, strides=2, padding="same", use_bias=False, name="conv1")(inputs)
    x = layers.BatchNormalization(epsilon=1e-5, name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    stages = []
    for stage, filters in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            stride = 2 if (block == 0 and stage > 1) else 1
            x = _basic_block(x, filters, stride, f"layer{stage}_{block}")
        stages.append(x)
    return stages


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


def _imagenet_preprocess(name):
    """Map [-1, 1] inputs to what the ImageNet weights of ``name`` expect."""
    if name in ("resnet50", "resnet101"):
        # Caffe-style: BGR, mean-subtracted, 0..255.
        mean = keras.ops.convert_to_tensor([103.939, 116.779, 123.68])

        def caffe(x):
            pixels = (x + 1.0) * 127.5
            return pixels[..., ::-1] - keras.ops.cast(mean, x.dtype)

        return layers.Lambda(caffe, name="imagenet_preprocess")
    return None  # mobilenetv2 already expects [-1, 1]


def build_backbone(name: str, image_size: int, weights: str | None = None, return_stages: bool = False,
                   name_prefix: str = "backbone") -> keras.Model:
    """Build a backbone model; output (B, D) pooled features (plus stage maps if ``return_stages``)."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown --backbone '{name}'; known: {', '.join(BACKBONES)}")
    weights = None if weights in (None, "", "none", "None") else weights
    inputs = keras.Input((image_size, image_size, 3), name="image")
    keras_weights = "imagenet" if weights == "imagenet" else None
    if weights == "imagenet" and name in ("resnet18", "small_cnn"):
        raise ConfigError(f"no ImageNet weights exist for '{name}' in Keras; pass a weights file path or 'none'")
    if name in ("resnet50", "resnet101", "mobilenetv2"):
        factory = {"resnet50": keras.applications.ResNet50, "resnet101": keras.applications.ResNet101,
                   "mobilenetv2": keras.applications.MobileNetV2}[name]
        kwargs = {"include_top": False, "weights": keras_weights, "input_shape": (image_size, image_size, 3)}
        try:
            base = factory(**kwargs)
        except Exception as exc:  # offline: URLError / OSError / "Exception: URL fetch failure"
            if keras_weights:
                raise ConfigError(
                    f"could not download the ImageNet weights for {name} ({type(exc).__name__}: {str(exc)[:120]}). "
                    "This machine is probably offline: use --weights none, or download the weights elsewhere and "
                    "pass --weights /path/to/file.weights.h5") from None
            raise
        x = inputs
        pre = _imagenet_preprocess(name) if keras_weights else None
        if pre is not None:
            x = pre(x)
        if return_stages:
            if name not in _RESNET_STAGE_LAYERS:
                raise ConfigError(f"stage outputs are only available for ResNet backbones, not {name}")
            stage_model = keras.Model(base.input, [base.get_layer(n).output for n in _RESNET_STAGE_LAYERS[name]])
            stages = stage_model(x)
        else:
            stages = [base(x)]
    elif name == "resnet18":
        stages = _resnet18(inputs)
    else:
        stages = _small_cnn(inputs)
    pooled = layers.GlobalAveragePooling2D(name="gap")(stages[-1])
    outputs = [pooled, *stages] if return_stages else pooled
    model = keras.Model(inputs, outputs, name=f"{name_prefix}_{name}")
    if weights and weights != "imagenet":
        load_backbone_weights(model, weights)
    return model


# Layers whose outputs are the stage maps of the in-house backbones (see _resnet18 / _small_cnn).
_INHOUSE_STAGE_LAYERS = {
    "resnet18": ("layer1_1_out", "layer2_1_out", "layer3_1_out", "layer4_1_out"),  # strides 4, 8, 16, 32
    "small_cnn": ("s0_pool", "s1_pool", "s2_pool", "s3_pool"),  # strides 4, 8, 16, 32
}


def stage_models(backbone: keras.Model) -> tuple[keras.Model, keras.Model]:
    """Views of a built backbone (``return_stages=False``) that share its layers and weights.

    Returns ``(stages, tail)``: ``stages`` maps the image to ``[pooled, s1, s2, s3, s4]`` (pooled equals
    ``backbone(image)``), and ``tail`` maps a stage-1 map to ``[s2, s3, s4]``, i.e. stages 2–4 alone
    (LA-Net clones it for its landmark branch). ResNet-18/50/101 and small_cnn only.
    """
    names = {layer.name for layer in backbone.layers}
    inhouse = next((stage_names for stage_names in _INHOUSE_STAGE_LAYERS.values()
                    if all(n in names for n in stage_names)), None)
    if inhouse is not None:
        maps = [backbone.get_layer(n).output for n in inhouse]
        return keras.Model(backbone.input, [backbone.output, *maps]), keras.Model(maps[0], maps[1:])
    base = next((layer for layer in backbone.layers if layer.name in _RESNET_STAGE_LAYERS), None)
    if base is None:
        raise ConfigError(f"stage outputs are only available for ResNet and small_cnn backbones, not {backbone.name}")
    maps = [base.get_layer(n).output for n in _RESNET_STAGE_LAYERS[base.name]]
    base_stages = keras.Model(base.input, maps)
    # The keras.applications backbone is a chain image → [preprocess] → base → gap: replay it with
    # the base replaced by its stage view.
    x = backbone.input
    for layer in backbone.layers[1:]:
        if layer is base:
            stage_maps = base_stages(x)
            x = stage_maps[-1]
        else:
            x = layer(x)
    return keras.Model(backbone.input, [x, *stage_maps]), keras.Model(maps[0], maps[1:])


def load_backbone_weights(model: keras.Model, path: str) -> None:
    """Load weights from a ``.weights.h5`` file or a full ``.keras`` / ``.h5`` model file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--weights {path}: file not found (use 'imagenet', 'none' or a Keras weights file)")
    try:
        if p.suffix == ".keras" or (p.suffix == ".h5" and not p.name.endswith(".weights.h5")):
            source = keras.models.load_model(p, compile=False)
            model.set_weights(source.get_weights())
        else:
            model.load_weights(p)
    except Exception as exc:
        raise ConfigError(f"--weights {path}: cannot load into backbone {model.name} "
                          f"({type(exc).__name__}: {str(exc)[:200]})") from None
