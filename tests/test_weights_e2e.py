"""Pretrained weights end to end, without PyTorch: real-shaped files through ``train.py --weights`` and the CLIs.

Issue 27: ``train.py --weights msceleb_r18.pth`` ended in a traceback on every real checkpoint (the log line
joined the ``[name, reason]`` pairs of the dropped tensors as strings), and the suite did not see it because
the tests with real files skip without PyTorch. The fixture files here hold what the files users have hold —
the MS-Celeb-1M ResNet-18 of SCN/RUL/EAC (``{"state_dict": {"module.<key>": tensor}, "optimizer": ...,
"epoch": 40}``, an ``fc`` for 12 631 identities, BatchNorm ``num_batches_tracked`` int64 counters, the
``_metadata`` of ``state_dict()``), torchvision-layout ResNet-50s, in both of ``torch.save``'s formats (zip and
legacy, written by ``tests/torch_format.py``), and image-classifiers' Keras-2 ``.h5`` with its layer names —
and load them through the entry points a user runs: ``train.py --weights``, ``python -m preprocess.weights
convert`` and ``inspect``. Each path here used to be covered only by a test that skips when ``torch`` or
``classification_models`` is not installed (CI installs neither).
"""

from __future__ import annotations

import collections
import json
import pickle
import pickletools
import re

import numpy as np
import pytest

import torch_format as tf_
from helpers import build_run_model
from helpers_cli import run_cli

MSCELEB_IDENTITIES = 12631  # the fc of the MS-Celeb-1M ResNet-18 every seed paper starts from (12631 × 512)
BN_COUNTERS = {18: 20, 50: 53}  # BatchNorm layers, one num_batches_tracked each
MAPPED = {18: 100, 50: 265}  # conv kernels + 4 tensors per BatchNorm
SUMMARY = "{mapped} tensors loaded, {dropped} dropped: fc.weight, fc.bias (classifier head), {bn} × " \
          "num_batches_tracked (BatchNorm step counter)"


# ---------------------------------------------------------------------------------- fixtures ----


def _optimizer_state(sd, seed, buffers=6) -> dict:
    """``torch.optim.SGD(momentum=0.9).state_dict()`` beside the weights: int-keyed state, param_groups.

    Only the first ``buffers`` parameters carry a momentum buffer, to keep the files small; the reader
    must walk past the rest of the structure either way.
    """
    rng = np.random.default_rng(seed)
    params = [k for k in sd if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    state = {i: {"momentum_buffer": (rng.standard_normal(sd[k].shape) * 1e-3).astype(np.float32)}
             for i, k in enumerate(params[:buffers])}
    return {"state": state, "param_groups": [{
        "lr": 0.01, "momentum": 0.9, "dampening": 0, "weight_decay": 0.0005, "nesterov": False, "maximize": False,
        "foreach": None, "differentiable": False, "fused": None, "params": list(range(len(params)))}]}


def msceleb_checkpoint(depth: int, fc_rows: int, seed: int):
    """``(bare state dict, the object torch.save wrote)`` as a DataParallel training script saves it."""
    sd = tf_.resnet_state_dict(depth, num_classes=fc_rows, seed=seed)
    prefixed = collections.OrderedDict((f"module.{k}", v) for k, v in sd.items())
    # state_dict()'s per-module versions (pickled by BUILD, as torch does), under DataParallel's 'module'.
    modules = sorted({k.rsplit(".", 1)[0] for k in sd})
    prefixed._metadata = collections.OrderedDict(
        [("", {"version": 1}), ("module", {"version": 1})]
        + [(f"module.{m}", {"version": 2 if ".bn" in f".{m}" or m.endswith("downsample.1") else 1}) for m in modules])
    return sd, {"epoch": 40, "arch": f"resnet{depth}", "state_dict": prefixed, "best_prec1": 81.25,
                "optimizer": _optimizer_state(sd, seed)}


class _Protocol4Pickler(tf_._Pickler):
    """``torch.save(obj, f, pickle_protocol=4)``: framing, memoize and STACK_GLOBAL instead of GLOBAL."""

    dispatch = tf_._Pickler.dispatch.copy()

    def __init__(self, file, legacy):
        super().__init__(file, legacy)
        self.proto = 4

    def save_marker(self, obj):  # what pickle.Pickler.save_global writes at protocol ≥ 4
        self.save(obj.module)
        self.save(obj.name)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)

    dispatch[tf_.Global] = save_marker


def write_protocol4_zip(path, obj) -> None:
    import io

    buffer = io.BytesIO()
    _Protocol4Pickler(buffer, legacy=False).dump(tf_._wrap(obj))
    opcodes = {op.name for op, _, _ in pickletools.genops(buffer.getvalue())}
    assert {"PROTO", "FRAME", "STACK_GLOBAL", "MEMOIZE"} <= opcodes and "GLOBAL" not in opcodes
    tf_.write_zip(path, obj, pickled=buffer.getvalue())  # storages are keyed in the same traversal order


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``{(depth, format): (path, bare state dict)}``: MS-Celeb-style files, resnet18/50, zip/legacy.

    The resnet18 zip file carries the real 12631 × 512 ``fc``; the others an ``fc`` of 9 rows (another
    class count than the 7 trained here, and 80 MB less to write).
    """
    root = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for depth, fmt, rows in ((18, "zip", MSCELEB_IDENTITIES), (18, "legacy", 9), (50, "zip", 9), (50, "legacy", 9)):
        sd, saved = msceleb_checkpoint(depth, rows, seed=depth + len(fmt))
        path = root / f"msceleb_r{depth}_{fmt}.pth"
        (tf_.write_zip if fmt == "zip" else tf_.write_legacy)(path, saved)
        out[depth, fmt] = path, sd
    return out


def _summary(depth):
    return SUMMARY.format(mapped=MAPPED[depth], dropped=BN_COUNTERS[depth] + 2, bn=BN_COUNTERS[depth])


def _train_argv(out, backbone, weights, *extra):
    """The issue's command, tiny (64 + 32 synthetic images of 64 px, one epoch), without export/TensorBoard."""
    return ["--dataset", "synthetic", "--synthetic", "train_size=64", "--synthetic", "test_size=32",
            "--backbone", backbone, "--image-size", "64", "--epochs", "1", "--batch-size", "32",
            "--weights", weights, "--out", out, "--no-export", "--no-tensorboard", "--verbose", "0", *extra]


def _backbone_weights(model) -> dict:
    return {v.path: np.asarray(v) for v in model.weights}


def _keras_value(sd, key, variable_path):
    value = sd[key]
    if variable_path.endswith("/kernel") and value.ndim == 4:
        return np.transpose(value, (2, 3, 1, 0))  # OIHW → HWIO
    return value


# ------------------------------------------------------------------------ the log line's text ----


def test_load_summary_names_dropped_tensors_by_reason():
    from models.pretrained import format_load_summary

    dropped = [["fc.weight", "classifier head (the FER head is trained anew)"]]
    dropped += [[f"layer{i}.bn1.num_batches_tracked", "BatchNorm step counter (no Keras counterpart)"]
                for i in range(20)]
    dropped += [["fc.bias", "classifier head (the FER head is trained anew)"]]
    dropped += [[f"extra.head{i}.{w}", "no such layer in resnet18"] for i in range(3) for w in ("weight", "bias")]
    report = {"mapped": [["a", "a", [1]]] * 100, "dropped": dropped, "missing": []}
    assert format_load_summary(report) == (
        "100 tensors loaded, 28 dropped: fc.weight, fc.bias (classifier head), extra.head0.weight, "
        "extra.head0.bias, extra.head1.weight, extra.head1.bias, … 2 more (no such layer in resnet18), "
        "20 × num_batches_tracked (BatchNorm step counter)")
    assert format_load_summary({"mapped": [["k", "k", [1]]] * 3, "dropped": [], "missing": []}) == \
        "3 tensors loaded, 0 dropped"
    assert format_load_summary({"mapped": [], "dropped": [], "missing": ["layer4.1.conv2.weight"]}) == \
        "0 tensors loaded, 0 dropped; 1 missing: layer4.1.conv2.weight"


# ---------------------------------------------------------------- PyTorch checkpoints, the CLIs ----


def test_issue_command_trains_from_the_msceleb_resnet18(checkpoints, tmp_path, capsys):
    """The command of issue 27 with the real MS-Celeb layout and fc shape: it names what it dropped and trains."""
    import train
    from models.torch_checkpoint import read_checkpoint

    path, sd = checkpoints[18, "zip"]
    assert read_checkpoint(path)["state_dict"]["module.fc.weight"].shape == (MSCELEB_IDENTITIES, 512)
    code, out, err = run_cli(train, _train_argv(tmp_path / "run", "resnet18", path), capsys)
    assert code == 0, (out + err)[-3000:]
    assert f"--weights {path}: {_summary(18)}" in out, out[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_resnet50_legacy_checkpoint_builds_the_run_model(checkpoints, tmp_path):
    """The same log line for ResNet-50 (legacy format), through the engine's model factory; the model holds the file.

    (Training it through train.py as above works too but costs ~18 s of CPU, all of it tracing ResNet-50's
    train step, whatever the number of images: nothing the weights file changes.)
    """
    from engine.run import Run, RunConfig

    path, sd = checkpoints[50, "legacy"]
    lines = []
    run = Run(RunConfig(dataset="synthetic", backbone="resnet50", image_size=32, batch_size=8, epochs=1,
                        weights=str(path), run=str(tmp_path / "run"), export=False, tensorboard=False, verbose=0),
              log=lines.append)
    model = build_run_model(run, 16)
    assert f"--weights {path}: {_summary(50)}" in lines, lines
    backbone = _backbone_weights(model.backbone)
    for key, variable_path, _ in model.backbone.fer_weights_report["mapped"]:
        np.testing.assert_array_equal(backbone[variable_path], _keras_value(sd, key, variable_path), err_msg=key)


@pytest.mark.parametrize("depth,fmt", [(18, "zip"), (18, "legacy"), (50, "zip"), (50, "legacy")])
def test_inspect_and_convert_give_the_backbone_the_pth_gives(checkpoints, tmp_path, capsys, depth, fmt):
    import preprocess.weights as cli
    from models.backbones import build_backbone
    from models.torch_checkpoint import read_checkpoint

    path, sd = checkpoints[depth, fmt]
    code, out, err = run_cli(cli, ["inspect", path], capsys)
    assert code == 0, err
    assert f"{len(sd)} tensors" in out and f"looks_like resnet{depth}" in out, out[-2000:]
    assert f"format {fmt}," in out and "layout state_dict" in out and "stripped_prefix module." in out, out[-500:]
    assert re.search(r"^fc\.weight +\((\d+), %d\) +float32$" % (512 if depth == 18 else 2048), out, re.M)
    assert re.search(r"^layer1\.0\.bn1\.num_batches_tracked +\(\) +int64$", out, re.M)
    # The optimizer state beside the weights is read as it is (int keys, momentum buffers, None/bool settings).
    saved = read_checkpoint(path)
    assert saved["epoch"] == 40 and saved["optimizer"]["param_groups"][0]["foreach"] is None
    np.testing.assert_array_equal(saved["optimizer"]["state"][0]["momentum_buffer"],
                                  _optimizer_state(sd, seed=depth + len(fmt))["state"][0]["momentum_buffer"])

    converted = tmp_path / f"r{depth}.weights.h5"
    code, out, err = run_cli(cli, ["convert", path, converted, "--backbone", f"resnet{depth}"], capsys)
    assert code == 0, err
    assert f"mapped {MAPPED[depth]}, dropped {BN_COUNTERS[depth] + 2}, missing 0; input normalisation: imagenet" \
        in out and "dropped  module.fc" not in out and "dropped  fc.weight: classifier head" in out, out[-2000:]
    from_h5 = build_backbone(f"resnet{depth}", 32, str(converted))
    assert from_h5.fer_input_norm == "imagenet"  # recorded in the converted file
    h5_weights = _backbone_weights(from_h5)
    mapping = re.findall(r"^  mapped   (\S+) -> (\S+) \(", out, re.M)  # torch key -> Keras variable, as printed
    assert len(mapping) == MAPPED[depth] and {dst for _, dst in mapping} == set(h5_weights)
    for key, variable_path in mapping:  # the file's own tensors, converted
        np.testing.assert_array_equal(h5_weights[variable_path], _keras_value(sd, key, variable_path), err_msg=key)
    if depth == 18:  # and what --weights FILE.pth loads directly (for ResNet-50 see the factory test above)
        from_pth = build_backbone("resnet18", 32, str(path))
        assert from_pth.fer_input_norm == "imagenet"
        for name, value in _backbone_weights(from_pth).items():
            np.testing.assert_array_equal(h5_weights[name], value, err_msg=name)


def test_pickle_protocol_4_checkpoint_loads(tmp_path):
    """``torch.save(..., pickle_protocol=4)`` (some .pth.tar files): framed pickle with STACK_GLOBAL."""
    from models.backbones import build_backbone

    sd, saved = msceleb_checkpoint(18, 9, seed=4)
    path = tmp_path / "model_best.pth.tar"
    write_protocol4_zip(path, saved)
    backbone = build_backbone("resnet18", 32, str(path))
    report = backbone.fer_weights_report
    assert (len(report["mapped"]), report["missing"], report["stripped_prefix"]) == (100, [], "module.")
    kernel = next(v for v in backbone.weights if v.path == "layer3_1_conv2/kernel")
    np.testing.assert_array_equal(np.asarray(kernel), np.transpose(sd["layer3.1.conv2.weight"], (2, 3, 1, 0)))


def test_legacy_checkpoint_with_views_half_bfloat16_and_parameters(tmp_path):
    """The legacy format with what real state dicts hold beside plain tensors (the zip case is in test_weights)."""
    from models.torch_checkpoint import load_state_dict

    shared = tf_.Storage(np.arange(40, dtype=np.float32))
    bf16 = np.array([1.5, -2.25, 2.0 ** -9, 65280.0], np.float32)  # exactly representable in bfloat16
    weight = np.random.default_rng(3).standard_normal((4, 5)).astype(np.float32)
    cases = collections.OrderedDict([
        ("offset", (tf_.Strided(shared, 7, (3, 4), (4, 1)), np.arange(7, 19, dtype=np.float32).reshape(3, 4))),
        ("transposed", (tf_.Strided(shared, 2, (4, 3), (1, 4)), (np.arange(12, dtype=np.float32) + 2).reshape(3, 4).T)),
        ("expanded", (tf_.Strided(shared, 5, (3, 2), (1, 0)), np.array([[5, 5], [6, 6], [7, 7]], np.float32))),
        ("half", (tf_.contiguous(weight.astype(np.float16)), weight.astype(np.float16))),
        ("bfloat16", (tf_.Strided(tf_.Storage((bf16.view(np.uint32) >> 16).astype(np.uint16), "BFloat16Storage"),
                                  0, (4,), (1,)), bf16)),
        ("parameter", (tf_.Parameter(weight), weight)),
        ("num_batches_tracked", (tf_.contiguous(np.array(1234, np.int64)), np.array(1234, np.int64))),
    ])
    path = tmp_path / "legacy_views.pth"
    tf_.write_legacy(path, {"state_dict": collections.OrderedDict((f"module.{k}", t) for k, (t, _) in cases.items()),
                            "epoch": 3})
    tensors, info = load_state_dict(path)
    assert (info["format"], info["layout"], info["stripped_prefix"]) == ("legacy", "state_dict", "module.")
    for key, (_, expected) in cases.items():
        assert tensors[key].dtype == expected.dtype and tensors[key].shape == expected.shape, key
        np.testing.assert_array_equal(tensors[key], expected, err_msg=key)


# ---------------------------------------------------------------- image-classifiers Keras-2 .h5 ----


def _ic_weights(seed) -> dict:
    """``{layer: [(weight, array)]}`` for image-classifiers' ResNet-18 (no top), in the package's names and order.

    ``resnet18_ic`` is built with the package's layer and weight names (checked against the real package by
    ``test_weights.test_real_image_classifiers_model_matches_resnet18_ic``), so its layers give the list.
    """
    from models.backbones import build_backbone

    rng = np.random.default_rng(seed)
    model = build_backbone("resnet18_ic", 32, None, input_norm="none")
    return {layer.name: [(v.name, (rng.uniform(0.5, 2.0, v.shape) if "variance" in v.name else
                                   rng.standard_normal(v.shape) * 0.05).astype(np.float32)) for v in layer.weights]
            for layer in model.layers if layer.weights}


def _write_keras2_h5(path, weights) -> None:
    """What Keras 2's ``model.save_weights('x.h5')`` writes: root ``layer_names`` (weightless layers too),
    per layer ``weight_names`` such as ``bn0/gamma:0`` and one dataset per weight under that name."""
    import h5py

    layers = ["data", "bn_data", "zero_padding2d_1", *[n for n in weights if n != "bn_data"], "pool1", "softmax"]
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = np.array([n.encode() for n in layers])
        handle.attrs["backend"], handle.attrs["keras_version"] = b"tensorflow", b"2.2.4"
        for layer in layers:
            group = handle.create_group(layer)
            names = [f"{layer}/{weight}:0" for weight, _ in weights.get(layer, [])]
            group.attrs["weight_names"] = np.array([n.encode() for n in names])
            for name, (_, value) in zip(names, weights.get(layer, [])):
                group.create_dataset(name, data=value)



def test_image_classifiers_h5_with_top_builds_the_run_model(tmp_path):
    """image-classifiers' ``resnet18_imagenet_1000.h5`` (Keras 2 names, an fc1 top) as --backbone resnet18_ic."""
    from engine.run import Run, RunConfig

    path = tmp_path / "resnet18_imagenet_1000.h5"
    weights = _ic_weights(seed=5)
    _write_keras2_h5(path, {**weights, "fc1": [("kernel", np.zeros((512, 1000), np.float32)),
                                               ("bias", np.zeros(1000, np.float32))]})
    lines = []
    run = Run(RunConfig(dataset="synthetic", backbone="resnet18_ic", image_size=32, batch_size=8, epochs=1,
                        weights=str(path), run=str(tmp_path / "run"), export=False, tensorboard=False, verbose=0),
              log=lines.append)
    model = build_run_model(run, 16)
    mapped = sum(len(w) for w in weights.values())
    assert mapped == 96  # 19 BatchNorms × 4 tensors (bn_data has no gamma: 3) and 21 convolution kernels
    assert f"--weights {path}: {mapped} tensors loaded, 2 dropped: fc1/kernel, fc1/bias (classifier head)" in lines, \
        lines
    assert model.backbone.fer_input_norm == "pixels"  # the package's preprocess_input: 0..255 pixels
    stored = {f"{layer}/{weight}": value for layer, ws in weights.items() for weight, value in ws}
    for v in model.backbone.weights:
        if v.path in stored:
            np.testing.assert_array_equal(np.asarray(v), stored.pop(v.path), err_msg=v.path)
    assert not stored  # every weight of the file is in the model


def test_keras3_written_image_classifiers_h5_converts(tmp_path, capsys):
    """The package's model saved by Keras 3's legacy writer (weight names as paths, weightless layers listed).

    ``test_weights.test_real_image_classifiers_model_matches_resnet18_ic`` does this with the real package;
    ``resnet18_ic`` has the package's layer and weight names, so it stands in for the model here.
    """
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    import preprocess.weights as cli
    from models.backbones import build_backbone

    original = build_backbone("resnet18_ic", 48, None, input_norm="none")
    rng = np.random.default_rng(7)
    for v in original.weights:
        v.assign(rng.uniform(0.5, 2.0, v.shape) if "variance" in v.path else rng.standard_normal(v.shape) * 0.1)
    path = tmp_path / "ic_keras3.h5"
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, original)
    with h5py.File(path, "r") as handle:  # the layout the real-package test produces
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in handle["bn_data"].attrs["weight_names"]]
        assert names == ["bn_data/beta", "bn_data/moving_mean", "bn_data/moving_variance"]
    out_file = tmp_path / "ic.weights.h5"
    code, out, err = run_cli(cli, ["convert", path, out_file, "--backbone", "resnet18_ic"], capsys)
    assert code == 0, err
    assert "dropped 0, missing 0; input normalisation: pixels" in out, out[-1000:]
    loaded = build_backbone("resnet18_ic", 48, str(out_file))
    assert loaded.fer_input_norm == "pixels"
    original_weights = _backbone_weights(original)
    for name, value in _backbone_weights(loaded).items():
        np.testing.assert_array_equal(value, original_weights[name], err_msg=name)
