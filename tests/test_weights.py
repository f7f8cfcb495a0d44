"""Pretrained weights: the safe .pth reader, torchvision/image-classifiers mapping, converter CLI, input norm.

Fixture checkpoints are written in PyTorch's exact file formats by ``tests/torch_format.py`` (no PyTorch
needed); the Keras backbones are compared with an independent NumPy forward of torchvision's ResNet
(eval-mode BatchNorm, symmetric padding, -inf max-pool padding) and of image-classifiers' ResNet-18.
Tests marked by ``importorskip`` also check against real PyTorch / the real image-classifiers package
when they are importable (CI installs neither).
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

import torch_format as tf_

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
TOL = 1e-4


# ----------------------------------------------------------------------- NumPy reference ----


def _conv(x, w, stride, pad):
    """PyTorch ``conv2d`` (NCHW, OIHW, symmetric zero padding), float64."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[2]
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.tensordot(windows, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)


def _bn(x, sd, name, eps, calibrate=False):
    if calibrate:  # running statistics of a "trained" network: those of its input on a calibration batch
        sd[f"{name}.running_mean"] = x.mean(axis=(0, 2, 3)).astype(np.float32)
        var = x.var(axis=(0, 2, 3))  # floored: a channel dead on the calibration batch must not amplify 300×
        sd[f"{name}.running_var"] = np.maximum(var, 0.25 * var.mean()).astype(np.float32)
    g = lambda key: sd[f"{name}.{key}"].astype(np.float64)[None, :, None, None]  # noqa: E731
    return (x - g("running_mean")) / np.sqrt(g("running_var") + eps) * g("weight") + g("bias")


def _maxpool(x, pad_value):
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=pad_value)
    return np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(axis=(4, 5))


def torchvision_forward(sd, images, calibrate=False):
    """torchvision ``ResNet.forward`` up to the pooled feature, from a state dict; images NHWC in [-1, 1].

    Returns ``(pooled, [s1, s2, s3, s4])`` with the maps in NHWC for comparison with Keras.
    ``calibrate`` first sets every BatchNorm's running statistics to those of its input (in place),
    so that activations stay O(1) as in a trained network and 1e-4 is a tight absolute tolerance.
    """
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    _bn = lambda v, sd_, name, eps: globals()["_bn"](v, sd_, name, eps, calibrate)  # noqa: E731
    w = lambda key: sd[key].astype(np.float64)  # noqa: E731
    x = ((images.astype(np.float64) + 1.0) / 2.0 - IMAGENET_MEAN) / IMAGENET_STD  # transforms.Normalize
    x = x.transpose(0, 3, 1, 2)
    x = _maxpool(relu(_bn(_conv(x, w("conv1.weight"), 2, 3), sd, "bn1", 1e-5)), -np.inf)
    bottleneck = "layer1.0.conv3.weight" in sd
    stages = []
    for stage in (1, 2, 3, 4):
        block = 0
        while f"layer{stage}.{block}.conv1.weight" in sd:
            p = f"layer{stage}.{block}"
            stride = 2 if (block == 0 and stage > 1) else 1
            if bottleneck:
                y = relu(_bn(_conv(x, w(f"{p}.conv1.weight"), 1, 0), sd, f"{p}.bn1", 1e-5))
                y = relu(_bn(_conv(y, w(f"{p}.conv2.weight"), stride, 1), sd, f"{p}.bn2", 1e-5))
                y = _bn(_conv(y, w(f"{p}.conv3.weight"), 1, 0), sd, f"{p}.bn3", 1e-5)
            else:
                y = relu(_bn(_conv(x, w(f"{p}.conv1.weight"), stride, 1), sd, f"{p}.bn1", 1e-5))
                y = _bn(_conv(y, w(f"{p}.conv2.weight"), 1, 1), sd, f"{p}.bn2", 1e-5)
            if f"{p}.downsample.0.weight" in sd:
                x = _bn(_conv(x, w(f"{p}.downsample.0.weight"), stride, 0), sd, f"{p}.downsample.1", 1e-5)
            x = relu(y + x)
            block += 1
        stages.append(x.transpose(0, 2, 3, 1))
    return x.mean(axis=(2, 3)), stages


def calibrated_state_dict(depth, num_classes=1000, seed=0, size=32, residual_gamma=(0.1, 0.3)):
    """Random torchvision weights that behave like trained ones: BN statistics of real inputs, small residuals."""
    sd = tf_.resnet_state_dict(depth, num_classes=num_classes, seed=seed, residual_gamma=residual_gamma)
    torchvision_forward(sd, _images(size, n=4, seed=seed + 100), calibrate=True)
    return sd


def ic_weights(seed=0) -> dict:
    """Random weights for image-classifiers' ResNet-18, ``{layer: {weight: array}}`` in Keras layout."""
    rng = np.random.default_rng(seed)
    out = {}

    def bn(name, ch, scale=True, mean=0.0, var=(0.5, 2.0)):
        out[name] = {"beta": rng.uniform(-0.2, 0.2, ch), "moving_mean": mean + rng.uniform(-0.3, 0.3, ch),
                     "moving_variance": rng.uniform(*var, ch)}
        if scale:
            out[name]["gamma"] = rng.uniform(0.5, 1.5, ch)

    def conv(name, k, cin, cout):
        out[name] = {"kernel": rng.standard_normal((k, k, cin, cout)) * np.sqrt(2.0 / (k * k * cin))}

    bn("bn_data", 3, scale=False, mean=120.0, var=(3000.0, 5000.0))  # inputs are 0..255 pixels
    conv("conv0", 7, 3, 64)
    bn("bn0", 64)
    cin = 64
    for stage, filters in enumerate((64, 128, 256, 512), start=1):
        for unit in (1, 2):
            name = f"stage{stage}_unit{unit}"
            bn(f"{name}_bn1", cin)
            conv(f"{name}_conv1", 3, cin, filters)
            bn(f"{name}_bn2", filters)
            conv(f"{name}_conv2", 3, filters, filters)
            if unit == 1:
                conv(f"{name}_sc", 1, cin, filters)
            cin = filters
    bn("bn1", 512)
    return {layer: {k: v.astype(np.float32) for k, v in ws.items()} for layer, ws in out.items()}


def ic_forward(weights, images):
    """image-classifiers ``ResNet`` (resnet18, include_top=False) + global average pooling, NumPy."""
    eps = 2e-5

    def bn(x, name):
        p = {k: v.astype(np.float64)[None, :, None, None] for k, v in weights[name].items()}
        return (x - p["moving_mean"]) / np.sqrt(p["moving_variance"] + eps) * p.get("gamma", 1.0) + p["beta"]

    def conv(x, name, stride, pad):
        return _conv(x, weights[name]["kernel"].astype(np.float64).transpose(3, 2, 0, 1), stride, pad)

    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    x = ((images.astype(np.float64) + 1.0) * 127.5).transpose(0, 3, 1, 2)  # preprocess_input: identity on 0..255
    x = _maxpool(relu(bn(conv(bn(x, "bn_data"), "conv0", 2, 3), "bn0")), 0.0)  # ZeroPadding2D + MaxPooling2D
    for stage in (1, 2, 3, 4):
        for unit in (1, 2):
            name = f"stage{stage}_unit{unit}"
            stride = 2 if (unit == 1 and stage > 1) else 1
            y = relu(bn(x, f"{name}_bn1"))
            shortcut = conv(y, f"{name}_sc", stride, 0) if unit == 1 else x
            y = conv(relu(bn(conv(y, f"{name}_conv1", stride, 1), f"{name}_bn2")), f"{name}_conv2", 1, 1)
            x = y + shortcut
    return relu(bn(x, "bn1")).mean(axis=(2, 3))


def write_keras2_h5(path, weights, extra_layers=()):
    """A Keras-2 ``save_weights`` file: root ``layer_names``, per layer ``weight_names`` like 'bn0/gamma:0'."""
    import h5py

    order = {"kernel": 0, "gamma": 1, "beta": 2, "moving_mean": 3, "moving_variance": 4, "bias": 5}
    layers = ["data", "zero_padding2d_1", *weights, *extra_layers]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in layers])
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.2.4"
        for name in layers:
            group = f.create_group(name)
            ws = weights.get(name, {})
            names = [f"{name}/{k}:0" for k in sorted(ws, key=order.get)]
            group.attrs["weight_names"] = np.array([n.encode() for n in names])
            for full, key in zip(names, sorted(ws, key=order.get)):
                group.create_dataset(full, data=ws[key])


def _images(size, n=2, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def _keras_stages(backbone, images):
    from models.backbones import stage_models

    stages, _ = stage_models(backbone)
    outs = stages(images, training=False)
    return np.asarray(outs[0]), [np.asarray(o) for o in outs[1:]]


def _max_diff(keras_out, ref_out):
    (kp, ks), (rp, rs) = keras_out, ref_out
    return max(np.abs(kp - rp).max(), *(np.abs(a - b).max() for a, b in zip(ks, rs)))


def _prefixed(sd, prefix="module."):
    return collections.OrderedDict((prefix + k, v) for k, v in sd.items())


# ------------------------------------------------------------------------------- the reader ----


LAYOUTS = {
    "bare": lambda sd: sd,
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 7, "best_acc": 0.81, "arch": "resnet18"},
    "model": lambda sd: {"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}},
    "model_state_dict": lambda sd: {"model_state_dict": sd},
    "net": lambda sd: {"net": sd},
    "module_prefix": lambda sd: _prefixed(sd),
    "state_dict_module_prefix": lambda sd: {"state_dict": _prefixed(sd), "epoch": 40},  # SCN/RUL's MS-Celeb file
}


@pytest.fixture(scope="module")
def r18_sd():
    sd = tf_.resnet_state_dict(18, num_classes=1000, seed=0)
    sd._metadata = collections.OrderedDict({"": {"version": 1}, "bn1": {"version": 2}})
    return sd


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_reader_finds_the_weights_in_every_layout(tmp_path, r18_sd, layout):
    from models.torch_checkpoint import load_state_dict

    path = tmp_path / "ckpt.pth"
    tf_.write_zip(path, LAYOUTS[layout](r18_sd), top="resnet18_msceleb")  # arbitrary top folder
    tensors, info = load_state_dict(path)
    assert list(tensors) == list(r18_sd)
    assert all(np.array_equal(tensors[k], v) and tensors[k].dtype == v.dtype for k, v in r18_sd.items())
    assert info["format"] == "zip"
    assert info["stripped_prefix"] == ("module." if "module" in layout else None)
    assert info["layout"] == {"bare": "bare", "module_prefix": "bare", "state_dict_module_prefix": "state_dict"
                              }.get(layout, layout)


def test_reader_legacy_format_and_big_endian(tmp_path, r18_sd):
    from models.torch_checkpoint import is_torch_checkpoint, load_state_dict

    tf_.write_legacy(tmp_path / "legacy.pth", {"state_dict": r18_sd})
    tf_.write_zip(tmp_path / "big.pth", r18_sd, byteorder="big")
    for name, fmt in (("legacy.pth", "legacy"), ("big.pth", "zip")):
        assert is_torch_checkpoint(tmp_path / name)
        tensors, info = load_state_dict(tmp_path / name)
        assert info["format"] == fmt
        assert all(np.array_equal(tensors[k], v) for k, v in r18_sd.items())


def test_reader_honours_offset_stride_dtype_and_shared_storage(tmp_path):
    from models.torch_checkpoint import read_checkpoint

    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 3, 2, 5)).astype(np.float32)
    shared = tf_.Storage(np.arange(50, dtype=np.float64))
    fortran = tf_.Storage(a.ravel(order="F"))
    bf16_values = np.array([1.5, -2.25, 2.0 ** -9, 65280.0], np.float32)  # exactly representable
    cases = collections.OrderedDict([
        # column-major storage: strides (1, 4, 12, 24) — a non-contiguous tensor
        ("fortran", (tf_.Strided(fortran, 0, a.shape, (1, 4, 12, 24)), a)),
        ("offset", (tf_.Strided(shared, 7, (3, 4), (4, 1)), np.arange(7, 19, dtype=np.float64).reshape(3, 4))),
        ("transposed_view", (tf_.Strided(shared, 2, (4, 3), (1, 4)), (np.arange(12) + 2.0).reshape(3, 4).T)),
        ("broadcast", (tf_.Strided(shared, 5, (3, 2), (1, 0)), np.array([[5.0, 5], [6, 6], [7, 7]]))),
        ("half", (tf_.contiguous(a[0, 0].astype(np.float16)), a[0, 0].astype(np.float16))),
        ("bfloat16", (tf_.Strided(tf_.Storage((bf16_values.view(np.uint32) >> 16).astype(np.uint16),
                                              "BFloat16Storage"), 0, (4,), (1,)), bf16_values)),
        ("scalar", (tf_.contiguous(np.array(3, np.int64)), np.array(3, np.int64))),
        ("empty", (tf_.Strided(shared, 0, (0, 3), (3, 1)), np.zeros((0, 3)))),
        ("parameter", (tf_.Parameter(a[1]), a[1])),
    ])
    tf_.write_zip(tmp_path / "views.pth", collections.OrderedDict((k, t) for k, (t, _) in cases.items()))
    obj = read_checkpoint(tmp_path / "views.pth")
    for key, (_, expected) in cases.items():
        assert obj[key].shape == expected.shape, key
        assert obj[key].dtype == (np.float32 if key == "bfloat16" else expected.dtype), key
        np.testing.assert_array_equal(obj[key], expected, err_msg=key)
        assert obj[key].flags["C_CONTIGUOUS"]


def test_reader_rejects_views_outside_their_storage(tmp_path):
    from common.errors import DataError
    from models.torch_checkpoint import read_checkpoint

    storage = tf_.Storage(np.zeros(10, np.float32))
    tf_.write_zip(tmp_path / "oob.pth", {"w": tf_.Strided(storage, 4, (3, 3), (3, 1))})  # reads element 12
    with pytest.raises(DataError, match="oob.pth.*element 12 of a storage of 10"):
        read_checkpoint(tmp_path / "oob.pth")


HOSTILE = {
    "os.system": tf_.Reduce("os", "system", ("touch {marker}",)),
    "posix.system": tf_.Reduce("posix", "system", ("touch {marker}",)),
    "builtins.eval": tf_.Reduce("builtins", "eval", ("open(r'{marker}', 'w').close()",)),
    "builtins.exec": tf_.Reduce("builtins", "exec", ("open(r'{marker}', 'w').close()",)),
    "subprocess.call": tf_.Reduce("subprocess", "call", (["touch", "{marker}"],)),
    "torch.storage._load_from_bytes": tf_.Reduce("torch.storage", "_load_from_bytes", (b"junk",)),
    "numpy.core.multiarray.scalar": tf_.Reduce("numpy.core.multiarray", "scalar", ()),
}


def _hostile(entry, marker):
    args = tuple(a.format(marker=marker) if isinstance(a, str) else
                 [x.format(marker=marker) for x in a] if isinstance(a, list) else a for a in entry.args)
    return tf_.Reduce(entry.module, entry.name, args)


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_hostile_checkpoints_are_refused_without_running_anything(tmp_path, r18_sd, name, fmt):
    from common.errors import DataError
    from models.torch_checkpoint import read_checkpoint

    marker = tmp_path / "pwned"
    # Hidden beside real weights, where a training script keeps its extras.
    obj = {"state_dict": collections.OrderedDict(list(r18_sd.items())[:3]),
           "extra": [1, {"hook": _hostile(HOSTILE[name], marker)}]}
    path = tmp_path / f"evil_{fmt}.pth"
    (tf_.write_zip if fmt == "zip" else tf_.write_legacy)(path, obj)
    with pytest.raises(DataError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and f"'{name}'" in message and "untrusted" in message
    assert not marker.exists()


def test_hostile_persistent_ids_and_opcodes_are_refused(tmp_path):
    import pickle

    from common.errors import DataError
    from models.torch_checkpoint import read_checkpoint

    marker = tmp_path / "pwned"
    payloads = {
        # torch.save(model): a pickled module by persistent id
        "module": b"\x80\x02(X\x06\x00\x00\x00moduleq\x00X\x03\x00\x00\x00Netq\x01tQ.",
        # INST opcode: builds os.system(...) without REDUCE
        "inst": b"(S'touch " + str(marker).encode() + b"'\nios\nsystem\n.",
        # BUILD on a reader object (attempted attribute injection)
        "build": b"\x80\x02ccollections\nOrderedDict\n}X\x01\x00\x00\x00aK\x01sb.",
    }
    for name, data in payloads.items():
        path = tmp_path / f"{name}.pth"
        tf_.write_zip(path, {}, pickled=data)
        with pytest.raises(DataError, match=str(path)):
            read_checkpoint(path)
    assert not marker.exists()
    # The allowed OrderedDict stand-in cannot be called with a stream-chosen iterable either.
    evil = b"\x80\x02ccollections\nOrderedDict\n]](K\x01K\x02ea\x85R."
    tf_.write_zip(tmp_path / "od.pth", {}, pickled=evil)
    with pytest.raises(DataError, match="od.pth"):
        read_checkpoint(tmp_path / "od.pth")
    assert pickle.loads(evil) == collections.OrderedDict({1: 2})  # (sanity: the payload is a real call)


def test_reader_refuses_torchscript_and_non_checkpoints(tmp_path):
    import zipfile

    from common.errors import DataError
    from models.torch_checkpoint import read_checkpoint

    with zipfile.ZipFile(tmp_path / "scripted.pt", "w") as z:
        z.writestr("scripted/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("scripted/constants.pkl", b"\x80\x02).")
        z.writestr("scripted/code/__torch__/m.py", "def forward(self): ...")
    with pytest.raises(DataError, match="TorchScript"):
        read_checkpoint(tmp_path / "scripted.pt")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(DataError, match="text.pth: not a PyTorch checkpoint"):
        read_checkpoint(tmp_path / "text.pth")
    good = tmp_path / "good.pth"
    tf_.write_zip(good, {"w": np.ones(3, np.float32)})
    (tmp_path / "truncated.pth").write_bytes(good.read_bytes()[:-60])
    with pytest.raises(DataError, match="truncated.pth"):
        read_checkpoint(tmp_path / "truncated.pth")


# -------------------------------------------------------------------- Keras vs NumPy reference ----


@pytest.mark.parametrize("classes", [1000, 7])
def test_resnet18_matches_torchvision_reference(tmp_path, classes):
    from models.backbones import build_backbone, input_norm_of

    sd = calibrated_state_dict(18, num_classes=classes, seed=classes, size=45)
    path = tmp_path / "r18.pth"
    tf_.write_zip(path, {"state_dict": _prefixed(sd), "epoch": 3})
    size = 45  # odd: stride-2 layers would differ with Keras' asymmetric "same" padding
    backbone = build_backbone("resnet18", size, str(path))
    assert input_norm_of(backbone) == backbone.fer_input_norm == "imagenet"
    report = backbone.fer_weights_report
    assert (len(report["mapped"]), report["missing"]) == (100, [])
    assert {name for name, _ in report["dropped"]} == {"fc.weight", "fc.bias"} | {
        k for k in sd if k.endswith("num_batches_tracked")}
    images = _images(size)
    diff = _max_diff(_keras_stages(backbone, images), torchvision_forward(sd, images))
    print(f"resnet18 max |keras - numpy reference| = {diff:.2e}")
    assert diff < TOL


def test_resnet50_matches_torchvision_reference_after_cli_conversion(tmp_path, capsys):
    import preprocess.weights as cli
    from helpers_cli import run_cli
    from models.backbones import build_backbone, input_norm_of

    sd = calibrated_state_dict(50, num_classes=1000, seed=5, size=40)
    src, out = tmp_path / "resnet50-0676ba61.pth", tmp_path / "r50.weights.h5"
    tf_.write_zip(src, {"model": sd})
    code, stdout, err = run_cli(cli, ["convert", src, out, "--backbone", "resnet50"], capsys)
    assert code == 0, err
    assert "mapped   layer2.0.conv2.weight -> layer2_0_conv2/kernel (128, 128, 3, 3)" in stdout
    assert "dropped  fc.weight: classifier head" in stdout
    assert "mapped 265, dropped 55, missing 0; input normalisation: imagenet" in stdout
    size = 40
    backbone = build_backbone("resnet50", size, str(out))  # the converted file carries its normalisation
    assert input_norm_of(backbone) == "imagenet"
    images = _images(size, seed=2)
    diff = _max_diff(_keras_stages(backbone, images), torchvision_forward(sd, images))
    print(f"resnet50 max |keras - numpy reference| = {diff:.2e}")
    assert diff < TOL
    # Converting again refuses to overwrite; --force does.
    code, _, err = run_cli(cli, ["convert", src, out, "--backbone", "resnet50"], capsys)
    assert code == 2 and err.startswith("error: ") and "already exists" in err and "Traceback" not in err
    code, _, err = run_cli(cli, ["convert", src, out, "--backbone", "resnet50", "--force", "--quiet"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("depth", [18, 50])
def test_resnets_equal_the_reference_in_float64(tmp_path, depth):
    """In float64 the Keras graph and the NumPy reference agree to rounding: the same computation, exactly."""
    import keras

    from models.backbones import build_backbone

    sd = calibrated_state_dict(depth, seed=depth, size=33, residual_gamma=(0.5, 1.5))  # full-gain branches
    tf_.write_zip(tmp_path / "w.pth", sd)
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")  # (floatx alone is ignored once a policy was cached)
    try:
        backbone = build_backbone(f"resnet{depth}", 33, str(tmp_path / "w.pth"))
        images = _images(33, seed=8).astype(np.float64)
        keras_out = _keras_stages(backbone, images)
    finally:
        keras.config.set_dtype_policy(policy)
    assert keras_out[0].dtype == np.float64
    assert _max_diff(keras_out, torchvision_forward(sd, images)) < 1e-9


def test_image_classifiers_h5_matches_reference(tmp_path):
    from models.backbones import build_backbone, input_norm_of, stage_models

    weights = ic_weights(seed=3)
    path = tmp_path / "resnet18_imagenet_1000.h5"
    write_keras2_h5(path, {**weights, "fc1": {"kernel": np.zeros((512, 1000), np.float32),
                                              "bias": np.zeros(1000, np.float32)}}, extra_layers=("add_7",))
    size = 37
    backbone = build_backbone("resnet18_ic", size, str(path))
    assert input_norm_of(backbone) == "pixels"
    report = backbone.fer_weights_report
    assert report["missing"] == [] and sorted(n for n, _ in report["dropped"]) == ["fc1/bias", "fc1/kernel"]
    images = _images(size, seed=4)
    diff = np.abs(np.asarray(backbone(images, training=False)) - ic_forward(weights, images)).max()
    print(f"resnet18_ic max |keras - numpy reference| = {diff:.2e}")
    assert diff < TOL
    stages, tail = stage_models(backbone)
    assert [tuple(o.shape[1:3]) for o in stages.outputs[1:]] == [(10, 10), (5, 5), (3, 3), (2, 2)]
    np.testing.assert_allclose(np.asarray(stages(images)[0]), np.asarray(backbone(images)), atol=1e-6)


# ---------------------------------------------------------------- mismatch, missing, refusals ----


def test_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path):
    from common.errors import ConfigError
    from models.backbones import build_backbone

    tf_.write_zip(tmp_path / "r50.pth", tf_.resnet_state_dict(50, seed=1))
    with pytest.raises(ConfigError) as err:
        build_backbone("resnet18", 32, str(tmp_path / "r50.pth"))
    assert ("r50.pth: tensor 'layer1.0.conv1.weight' has shape (64, 64, 1, 1) but backbone resnet18 expects "
            "(64, 64, 3, 3)") in str(err.value)
    sd = tf_.resnet_state_dict(18, seed=1)
    sd["layer3.1.bn2.running_var"] = sd["layer3.1.bn2.running_var"][:100]
    tf_.write_zip(tmp_path / "bad_bn.pth", sd)
    with pytest.raises(ConfigError, match=r"'layer3\.1\.bn2\.running_var' has shape \(100,\).*\(256,\)"):
        build_backbone("resnet18", 32, str(tmp_path / "bad_bn.pth"))


def test_missing_tensors_are_reported_and_refused_unless_allowed(tmp_path, capsys):
    import preprocess.weights as cli
    from common.errors import ConfigError
    from helpers_cli import run_cli
    from models.backbones import build_backbone

    sd = tf_.resnet_state_dict(18, seed=2)
    for key in ("layer4.1.bn2.running_var", "layer4.1.conv2.weight"):
        del sd[key]
    path = tmp_path / "partial.pth"
    tf_.write_zip(path, sd)
    with pytest.raises(ConfigError, match=r"partial\.pth: 2 weights of backbone resnet18 are not in the file "
                                          r"\(first: layer4\.1\.conv2\.weight, layer4\.1\.bn2\.running_var\)"):
        build_backbone("resnet18", 32, str(path))
    out = tmp_path / "partial.weights.h5"
    code, stdout, err = run_cli(cli, ["convert", path, out, "--backbone", "resnet18"], capsys)
    assert code == 2 and "not in the file" in err and not out.exists()
    code, stdout, err = run_cli(cli, ["convert", path, out, "--backbone", "resnet18", "--allow-missing"], capsys)
    assert code == 0, err
    assert "  missing  layer4.1.conv2.weight" in stdout and "  missing  layer4.1.bn2.running_var" in stdout
    assert "mapped 98, dropped 22, missing 2" in stdout and out.exists()


def test_wrong_backbone_and_wrong_files_are_clear_errors(tmp_path, capsys):
    import preprocess.weights as cli
    from common.errors import ConfigError
    from helpers_cli import run_cli
    from models.backbones import build_backbone

    ic = tmp_path / "ic.h5"
    write_keras2_h5(ic, ic_weights())
    with pytest.raises(ConfigError, match="image-classifiers.*resnet18_ic, not resnet18"):
        build_backbone("resnet18", 32, str(ic))
    tv = tmp_path / "tv.pth"
    tf_.write_zip(tv, tf_.resnet_state_dict(18))
    with pytest.raises(ConfigError, match="not in torchvision's layout"):
        build_backbone("resnet50_keras", 32, str(tv))
    with pytest.raises(ConfigError, match="resnet18_ic is not in torchvision's layout"):
        build_backbone("resnet18_ic", 32, str(tv))
    converted = tmp_path / "tv.weights.h5"
    assert run_cli(cli, ["convert", tv, converted, "--backbone", "resnet18"], capsys)[0] == 0
    with pytest.raises(ConfigError, match="converted for backbone resnet18, not resnet50"):
        build_backbone("resnet50", 32, str(converted))
    for argv, expected in (
            (["convert", tmp_path / "nope.pth", tmp_path / "o.weights.h5", "--backbone", "resnet18"], "file not found"),
            (["convert", tv, tmp_path / "o.h5", "--backbone", "resnet18"], "must end in .weights.h5"),
            (["convert", tv, tmp_path / "o.weights.h5", "--backbone", "small_cnn"], "converting is for"),
            (["inspect", tmp_path / "nope.pth"], "file not found")):
        code, _, err = run_cli(cli, argv, capsys)
        assert code == 2 and err.startswith("error: ") and expected in err and "Traceback" not in err, err


def test_inspect_lists_tensors_and_guesses_the_backbone(tmp_path, capsys):
    import preprocess.weights as cli
    from helpers_cli import run_cli

    tf_.write_zip(tmp_path / "r50.pth", {"state_dict": _prefixed(tf_.resnet_state_dict(50))})
    code, out, err = run_cli(cli, ["inspect", tmp_path / "r50.pth"], capsys)
    assert code == 0, err
    assert "layer4.2.conv3.weight" in out and "(2048, 512, 1, 1)" in out and "float32" in out
    assert "320 tensors" in out and "looks_like resnet50" in out and "stripped_prefix module." in out
    write_keras2_h5(tmp_path / "ic.h5", ic_weights())
    code, out, err = run_cli(cli, ["inspect", tmp_path / "ic.h5"], capsys)
    assert code == 0 and "stage4_unit2_conv2/kernel" in out and "looks_like resnet18_ic" in out
    assert "input_norm pixels" in out


def test_keras_files_still_load_exactly(tmp_path):
    """The project's own Keras files: .weights.h5 as Keras saved it, a full-model .h5 by (nested) name."""
    from models.backbones import build_backbone

    images = _images(32, n=1)
    for name in ("mobilenetv2", "resnet18"):
        source = build_backbone(name, 32)
        source.save(tmp_path / f"{name}.h5")
        source.save_weights(tmp_path / f"{name}.weights.h5")
        for file, kind in ((f"{name}.h5", "keras2-h5"), (f"{name}.weights.h5", "keras-weights")):
            loaded = build_backbone(name, 32, str(tmp_path / file))
            assert loaded.fer_weights_report["format"] == kind and loaded.fer_weights_report["missing"] == []
            np.testing.assert_array_equal(np.asarray(loaded(images)), np.asarray(source(images)))


def test_module_entry_point_reports_errors_without_traceback(tmp_path):
    import subprocess
    import sys

    from helpers_cli import ROOT, subprocess_env

    (tmp_path / "x.pth").write_bytes(b"\x80\x02cos\nsystem\n.")
    proc = subprocess.run([sys.executable, "-m", "preprocess.weights", "inspect", str(tmp_path / "x.pth")],
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------ normalisation & API ----


def test_input_norm_layer_modes_and_serialisation():
    import keras

    from models.backbones import InputNorm, build_backbone, input_norm_of, input_norm_spec, resolve_input_norm

    x = np.array([[[[-1.0, 0.0, 1.0]]]], np.float32)
    expected = {"none": x, "pixels": (x + 1) * 127.5,
                "imagenet": ((x + 1) / 2 - IMAGENET_MEAN) / IMAGENET_STD,
                "caffe": ((x + 1) * 127.5)[..., ::-1] - np.array([103.939, 116.779, 123.68])}
    for mode, want in expected.items():
        np.testing.assert_allclose(np.asarray(InputNorm(mode)(x)), want, rtol=1e-6, atol=1e-5)
        assert input_norm_spec(mode)["mode"] == mode
    model = build_backbone("resnet18", 32, None, input_norm="imagenet")
    assert input_norm_of(keras.models.clone_model(model)) == "imagenet"  # survives LA-Net's clone
    assert input_norm_of(build_backbone("resnet18", 32)) == "none"
    assert resolve_input_norm("resnet50_keras", "imagenet") == "caffe"
    assert resolve_input_norm("resnet18", "gone/msceleb.pth", missing_ok=True) == "imagenet"
    small = build_backbone("small_cnn", 24)
    assert not any(isinstance(layer, InputNorm) for layer in small.layers)  # small_cnn untouched


def test_stage_models_pick_each_resnets_own_stage_ends():
    from models.backbones import _inhouse_stage_layers, build_backbone, stage_models

    for name, ends in (("resnet18", "layer1_1_out"), ("resnet50", "layer1_2_out")):
        backbone = build_backbone(name, 64)
        stages, tail = stage_models(backbone)
        assert _inhouse_stage_layers(backbone)[0] == ends
        assert [tuple(o.shape[1:3]) for o in stages.outputs[1:]] == [(16, 16), (8, 8), (4, 4), (2, 2)]
        images = _images(64, n=1)
        full = stages(images)
        np.testing.assert_allclose(np.asarray(full[0]), np.asarray(backbone(images)), atol=1e-6)
        for a, b in zip(tail(full[1]), full[2:]):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_imagenet_weights_name_the_right_backbone(monkeypatch):
    import keras

    from common.errors import ConfigError
    from models.backbones import build_backbone

    with pytest.raises(ConfigError, match="resnet50_keras"):
        build_backbone("resnet50", 32, weights="imagenet")
    with pytest.raises(ConfigError, match="resnet18_imagenet_1000_no_top.h5"):
        build_backbone("resnet18_ic", 32, weights="imagenet")

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3]")

    monkeypatch.setattr(keras.applications, "ResNet50", offline)
    with pytest.raises(ConfigError, match="offline"):
        build_backbone("resnet50_keras", 32, weights="imagenet")


# ----------------------------------------------------------------- real PyTorch / real package ----


def test_real_torch_save_files_are_read_exactly(tmp_path):
    torch = pytest.importorskip("torch")
    from models.torch_checkpoint import load_state_dict, read_checkpoint

    sd = collections.OrderedDict((k, torch.from_numpy(v.copy())) for k, v in tf_.resnet_state_dict(18, 7).items())
    sd["extra.transposed"] = torch.randn(5, 6).t()
    base = torch.randn(40)
    sd["extra.offset"], sd["extra.shared"] = base[7:19].view(3, 4), base[3:9]
    sd["extra.permuted"] = torch.randn(2, 3, 4, 5).permute(3, 1, 0, 2)
    sd["extra.half"], sd["extra.bf16"] = torch.randn(3, 3).half(), torch.randn(4).bfloat16()
    sd["extra.expand"] = torch.randn(3, 1).expand(3, 4)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    torch.save({"epoch": 3, "state_dict": _prefixed(sd), "optimizer": opt.state_dict()}, tmp_path / "real.pth")
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    torch.save({"model": sd}, tmp_path / "real.pth.tar", pickle_protocol=4)
    for name in ("real.pth", "legacy.pth", "real.pth.tar"):
        tensors, _ = load_state_dict(tmp_path / name)
        for key, value in sd.items():
            ref = value.float().numpy() if value.dtype == torch.bfloat16 else value.numpy()
            assert tensors[key].dtype == ref.dtype and np.array_equal(tensors[key], ref), (name, key)
    momentum = read_checkpoint(tmp_path / "real.pth")["optimizer"]["state"][0]["momentum_buffer"]
    np.testing.assert_array_equal(momentum, opt.state_dict()["state"][0]["momentum_buffer"].numpy())


def test_numpy_reference_agrees_with_torch_functional():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    sd = tf_.resnet_state_dict(18, seed=9)
    t = {k: torch.from_numpy(v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in sd.items()}
    images = _images(33, seed=9)
    x = (torch.from_numpy(images.astype(np.float64)).permute(0, 3, 1, 2) + 1) / 2
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def bn(v, p):
        return F.batch_norm(v, t[f"{p}.running_mean"], t[f"{p}.running_var"], t[f"{p}.weight"], t[f"{p}.bias"],
                            False, 0.1, 1e-5)

    x = F.max_pool2d(F.relu(bn(F.conv2d(x, t["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    for stage in (1, 2, 3, 4):
        for block in (0, 1):
            p, s = f"layer{stage}.{block}", 2 if (block == 0 and stage > 1) else 1
            y = F.relu(bn(F.conv2d(x, t[f"{p}.conv1.weight"], stride=s, padding=1), f"{p}.bn1"))
            y = bn(F.conv2d(y, t[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            if f"{p}.downsample.0.weight" in t:
                x = bn(F.conv2d(x, t[f"{p}.downsample.0.weight"], stride=s), f"{p}.downsample.1")
            x = F.relu(y + x)
    np.testing.assert_allclose(torchvision_forward(sd, images)[0], x.mean((2, 3)).numpy(), atol=1e-9)


def test_real_image_classifiers_model_matches_resnet18_ic(tmp_path):
    pytest.importorskip("classification_models")
    from classification_models.tfkeras import Classifiers
    from keras.src.legacy.saving import legacy_h5_format

    import h5py

    from models.backbones import build_backbone

    ResNet18, _ = Classifiers.get("resnet18")
    original = ResNet18((48, 48, 3), weights=None, include_top=False)
    rng = np.random.default_rng(0)
    for v in original.weights:
        if "moving_variance" in v.path:
            v.assign(rng.uniform(0.5, 2.0, v.shape) * (4000 if v.path.startswith("bn_data") else 1))
        elif "moving_mean" in v.path and v.path.startswith("bn_data"):
            v.assign(rng.uniform(100, 140, v.shape))
        else:
            v.assign(rng.standard_normal(v.shape) * (0.05 if "kernel" in v.path else 0.2) + ("gamma" in v.path))
    with h5py.File(tmp_path / "ic.h5", "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, original)
    ours = build_backbone("resnet18_ic", 48, str(tmp_path / "ic.h5"))
    weighted = lambda m: {(l.name, v.name): tuple(v.shape) for l in m.layers for v in l.weights}  # noqa: E731,E741
    assert weighted(ours) == weighted(original)
    images = _images(48, seed=6)
    want = np.asarray(original((images + 1) * 127.5, training=False)).mean(axis=(1, 2))
    np.testing.assert_allclose(np.asarray(ours(images, training=False)), want, atol=1e-4, rtol=1e-5)
