"""Load pretrained weights into the in-house backbones: PyTorch checkpoints, image-classifiers ``.h5``, Keras files.

PyTorch (torchvision layout; read by :mod:`models.torch_checkpoint`, no PyTorch needed). The in-house
``resnet18``/``resnet50`` name every layer after its torchvision module with ``.`` → ``_``
(``layer2.0.downsample.0`` → ``layer2_0_downsample_0``), so the mapping is mechanical:

==================================  =================================  ===============================
PyTorch tensor                      Keras variable                     conversion
==================================  =================================  ===============================
``<conv>.weight`` (O, I, kH, kW)    ``<conv>/kernel`` (kH, kW, I, O)   transpose (2, 3, 1, 0)
``<bn>.weight`` / ``.bias``         ``<bn>/gamma`` / ``beta``          —
``<bn>.running_mean`` / ``_var``    ``<bn>/moving_mean`` / ``_variance``  —
``<bn>.num_batches_tracked``        dropped                            (a step counter)
``fc.weight`` / ``fc.bias``         dropped                            (the FER head is trained anew)
==================================  =================================  ===============================

Keras 2 ``.h5`` files (``save_weights``/``save`` of Keras 2, e.g. image-classifiers'
``resnet18_imagenet_1000_no_top.h5``) are read with h5py and matched by layer name and weight name,
which fits ``resnet18_ic`` (the package's own layer names). Keras 3 ``.weights.h5`` (this project's,
or written by ``python -m preprocess.weights convert``) and ``.keras`` files load as Keras saved them.

Every mapped tensor's shape is checked first: a file that does not fit is refused naming the first
mismatching tensor and both shapes, before any variable is written. Tensors the backbone has no
place for are *dropped* and backbone weights the file lacks are *missing*; both are reported, and a
load with anything missing is refused unless ``allow_missing`` (a partly random backbone is rarely
what was meant).

API::

    load_weights_file(model, path, backbone=None, allow_missing=False) -> report (dict)
    weights_kind(path) -> "pytorch" | "keras2-h5" | "keras-weights" | "keras-model"
    weights_input_norm(path, missing_ok=False) -> str        # the InputNorm mode the weights expect
    inspect_weights(path) -> (rows, info)                    # [(name, shape, dtype)], layout facts
    format_report(report, verbose=True) -> str
    format_load_summary(report) -> str                       # one line: loaded, dropped by reason, missing
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np

from common.errors import ConfigError

CONVERTED_FORMAT = "fer-ldl backbone weights"
CONVERTIBLE = ("resnet18", "resnet50", "resnet18_ic", "dlib_resnet")
TORCH_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".bin")  # ".pth.tar" ends in ".tar"
_HEAD_LAYERS = {"fc", "fc1", "classifier", "predictions", "head"}
_BN_ROLES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


# ---------------------------------------------------------------------------------- file kinds ----


def weights_kind(path) -> str:
    """What wrote ``path``, judged by its content (suffixes lie: ``.pth.tar``, ``.ckpt``, renamed files)."""
    import h5py

    from models.torch_checkpoint import is_torch_checkpoint

    from models.dlib_dat import is_dlib_dat

    p = Path(path)
    if is_torch_checkpoint(p):
        return "pytorch"
    if is_dlib_dat(p):
        return "dlib-dat"
    if h5py.is_hdf5(p):
        with _open_h5(p) as handle:
            return "keras2-h5" if _keras2_group(handle) is not None else "keras-weights"
    if p.suffix == ".keras":
        return "keras-model"
    raise ConfigError(f"{path}: not a weights file this toolkit reads (a PyTorch checkpoint, a Keras .h5, "
                      ".weights.h5 or .keras file, or dlib's face-recognition ResNet .dat)")


@contextlib.contextmanager
def _open_h5(path):
    """h5py.File for reading, as a context manager; a corrupt or truncated file is a ConfigError naming it.

    Damage inside a file that opens shows up while it is read: h5py raises KeyError (a broken link or object
    header), ValueError (a float type NumPy cannot hold), TypeError, RuntimeError or OSError, all turned into
    the same ConfigError here.
    """
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise ConfigError(f"{path}: unreadable HDF5 file ({str(exc)[:160]})") from None
    try:
        with handle:
            yield handle
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"{path}: corrupt HDF5 file ({type(exc).__name__}: {str(exc)[:160]})") from None


def _dataset_array(path, dataset) -> np.ndarray:
    """A dataset's values, refused when it declares far more bytes than it stores (common/io.py MAX_EXPANSION):
    a chunked dataset whose chunks were never written reads as gigabytes of fill value from a tiny file."""
    import h5py

    from common.io import EXPANSION_SLACK, MAX_EXPANSION

    if not isinstance(dataset, h5py.Dataset):
        raise ConfigError(f"{path}: '{dataset.name}' is listed as a weight but is not a dataset")
    declared, stored = int(dataset.size) * dataset.dtype.itemsize, int(dataset.id.get_storage_size())
    if declared > MAX_EXPANSION * stored + EXPANSION_SLACK:
        raise ConfigError(f"{path}: dataset '{dataset.name}' declares {declared} bytes but stores {stored}; "
                          "not a weights file")
    return np.asarray(dataset)


def _keras2_group(handle):
    """The group holding Keras-2-style ``layer_names`` (root of save_weights, ``model_weights`` of save)."""
    if "layer_names" in handle.attrs:
        return handle
    if "model_weights" in handle and "layer_names" in handle["model_weights"].attrs:
        return handle["model_weights"]
    return None


def _keras2_layer_names(path) -> tuple[set, bool]:
    """The weighted layer names of a Keras-2-style ``.h5`` (no arrays read), and whether it is a full model."""
    with _open_h5(path) as handle:
        group = _keras2_group(handle)
        names = {_text(n) for n in group.attrs["layer_names"] if len(group[_text(n)].attrs.get("weight_names", []))}
        return names, "model_config" in handle.attrs


def _is_ic_layout(layer_names) -> bool:
    return "bn_data" in layer_names and "stage1_unit1_conv1" in layer_names


def weights_input_norm(path, missing_ok: bool = False) -> str:
    """The :class:`models.backbones.InputNorm` mode the weights in ``path`` were trained with."""
    p = Path(path)
    if not p.is_file():
        if not missing_ok:
            raise ConfigError(f"--weights {path}: file not found (use 'imagenet', 'none' or a weights file)")
        return "imagenet" if p.name.lower().endswith(TORCH_SUFFIXES) else "none"
    kind = weights_kind(p)
    if kind == "dlib-dat":
        return "dlib"  # dlib/dnn/input.h: (RGB - channel means) / 256
    if kind == "pytorch":
        return "imagenet"  # torchvision's transforms.Normalize(mean, std) on x / 255, as every FER recipe here
    if kind == "keras2-h5":
        return "pixels" if _is_ic_layout(_keras2_layer_names(p)[0]) else "none"
    if kind == "keras-weights":
        with _open_h5(p) as handle:
            recorded = handle.attrs.get("fer_input_norm")
        return _text(recorded) if recorded is not None else "none"
    return "none"


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ----------------------------------------------------------------------------------- targets ----


def _torch_prefix(layer_name: str) -> str:
    """Keras layer name → torchvision module path (``layer2_0_downsample_0`` → ``layer2.0.downsample.0``)."""
    match = re.match(r"^(layer\d+)_(\d+)_(.+)$", layer_name)
    if match is None:
        return layer_name
    head, block, rest = match.groups()
    return f"{head}.{block}.{rest.replace('downsample_', 'downsample.')}"


def _torchvision_targets(model) -> dict:
    """torchvision key → (Keras variable, conversion) for every weight of ``model``'s own layers."""
    from keras import layers

    names = {layer.name for layer in model.layers}
    if not {"conv1", "bn1", "layer1_0_conv1"} <= names:  # e.g. resnet18_ic, whose 'bn1' is its last BatchNorm
        return {}
    targets = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = _torch_prefix(layer.name)
        if isinstance(layer, layers.Conv2D):
            targets[f"{prefix}.weight"] = (layer.kernel, "conv")
            if layer.use_bias:
                targets[f"{prefix}.bias"] = (layer.bias, "copy")
        elif isinstance(layer, layers.BatchNormalization):
            for role, attr in _BN_ROLES.items():
                variable = getattr(layer, attr, None)
                if variable is not None:
                    targets[f"{prefix}.{role}"] = (variable, "copy")
        elif isinstance(layer, layers.Dense):
            targets[f"{prefix}.weight"] = (layer.kernel, "dense")
            if layer.use_bias:
                targets[f"{prefix}.bias"] = (layer.bias, "copy")
        else:
            return {}  # e.g. a nested keras.applications model: not a torchvision layout
    return targets


def _convert(value: np.ndarray, how: str) -> np.ndarray:
    if how == "conv":
        return np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value  # OIHW → HWIO
    if how == "dense":
        return value.T if value.ndim == 2 else value  # (out, in) → (in, out)
    return value


def _torch_shape(keras_shape, how: str) -> tuple:
    """The PyTorch-order shape that converts to ``keras_shape`` (for error messages in the file's terms)."""
    shape = tuple(int(d) for d in keras_shape)
    if how == "conv" and len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if how == "dense" and len(shape) == 2:
        return shape[::-1]
    return shape


def _empty_report(path, kind, backbone) -> dict:
    return {"source": Path(path).name, "format": kind, "backbone": backbone, "mapped": [], "dropped": [],
            "missing": [], "layout": None, "stripped_prefix": None, "ignored": []}


def _map_torch(model, path, backbone) -> tuple[list, dict]:
    from models.torch_checkpoint import load_state_dict

    tensors, info = load_state_dict(path)
    report = _empty_report(path, f"pytorch-{info['format']}", backbone)
    report.update(layout=info["layout"], stripped_prefix=info["stripped_prefix"], ignored=info["ignored"])
    targets = _torchvision_targets(model)
    if not targets:
        raise ConfigError(f"{path}: backbone {backbone} is not in torchvision's layout; PyTorch checkpoints load "
                          "into resnet18 and resnet50")
    assignments = []
    for key, value in tensors.items():
        if key in targets:
            variable, how = targets[key]
            assignments.append((variable, _checked(path, key, value, variable, how, backbone)))
            report["mapped"].append([key, variable.path, list(value.shape)])
        elif key.endswith(".num_batches_tracked"):
            report["dropped"].append([key, "BatchNorm step counter (no Keras counterpart)"])
        elif key.split(".", 1)[0] in _HEAD_LAYERS:
            report["dropped"].append([key, "classifier head (the FER head is trained anew)"])
        else:
            report["dropped"].append([key, f"no such layer in {backbone}"])
    report["missing"] = [key for key in targets if key not in tensors]
    if not assignments:
        hint = (" (image-classifiers/Keras layer names: use --backbone resnet18_ic)"
                if any(k.startswith(("stage1_unit1", "bn_data")) for k in tensors) else "")
        raise ConfigError(f"{path}: none of its {len(tensors)} tensors fits backbone {backbone} (first: "
                          f"{', '.join(list(tensors)[:3])}){hint}")
    return assignments, report


def _checked(path, name, value, variable, how, backbone) -> np.ndarray:
    """``value`` converted to the variable's layout, or a ConfigError naming the tensor and both shapes."""
    if value.dtype.kind not in "fiu":
        raise ConfigError(f"{path}: tensor '{name}' has dtype {value.dtype}, not a number")
    converted = _convert(value, how)
    if tuple(converted.shape) != tuple(variable.shape):
        raise ConfigError(f"{path}: tensor '{name}' has shape {tuple(value.shape)} but backbone {backbone} expects "
                          f"{_torch_shape(variable.shape, how) if how != 'copy' else tuple(variable.shape)} for "
                          f"'{variable.path}'; the file is for another network")
    if not np.all(np.isfinite(converted)):
        raise ConfigError(f"{path}: tensor '{name}' holds NaN or infinite values")
    return converted


# ----------------------------------------------------------------------------- Keras 2 .h5 ----


def _read_keras2_h5(path) -> dict:
    """``{layer name: {weight name: array}}`` of a Keras-2-style ``.h5``, weight names without ``:0``.

    Weight names are as stored: ``bn_data/beta`` (Keras 2 writes ``bn_data/beta:0``) for a plain layer,
    ``Conv1/kernel`` inside a nested model stored as one layer.
    """
    out = {}
    with _open_h5(path) as handle:
        group = _keras2_group(handle)
        if group is None:
            raise ConfigError(f"{path}: an HDF5 file without Keras 2 'layer_names'")
        try:
            for raw in group.attrs["layer_names"]:
                layer = _text(raw)
                out[layer] = {_text(w).split(":", 1)[0]: _dataset_array(path, group[layer][_text(w)])
                              for w in group[layer].attrs.get("weight_names", [])}
        except (KeyError, OSError) as exc:  # a listed layer or weight without its dataset
            raise ConfigError(f"{path}: corrupt Keras .h5 ({type(exc).__name__}: {str(exc)[:160]})") from None
    return out


def _is_nested(layer) -> bool:
    return bool(getattr(layer, "layers", None))


def _keras_key(layer_name: str, weight_name: str, nested: bool) -> str:
    """A plain layer's weights are matched by their own name (``kernel``); a nested model's by path."""
    return f"{layer_name}/{weight_name if nested else weight_name.rsplit('/', 1)[-1]}"


def _map_keras2(model, path, backbone) -> tuple[list, dict]:
    stored = _read_keras2_h5(path)
    report = _empty_report(path, "keras2-h5", backbone)
    by_name = {layer.name: layer for layer in model.layers}
    if _is_ic_layout(stored) and not _is_ic_layout(by_name):
        raise ConfigError(f"{path}: an image-classifiers ResNet (layers bn_data, stage1_unit1_*); it loads into "
                          f"--backbone resnet18_ic, not {backbone}")
    targets = {_keras_key(layer.name, v.path if _is_nested(layer) else v.name, _is_nested(layer)): v
               for layer in model.layers for v in layer.weights}
    assignments = []
    for layer, weights in stored.items():
        nested = layer in by_name and _is_nested(by_name[layer])
        for weight, value in weights.items():
            key = _keras_key(layer, weight, nested)
            if key in targets:
                assignments.append((targets[key], _checked(path, key, value, targets[key], "copy", backbone)))
                report["mapped"].append([key, targets[key].path, list(value.shape)])
            elif layer in _HEAD_LAYERS:
                report["dropped"].append([key, "classifier head (the FER head is trained anew)"])
            else:
                report["dropped"].append([key, f"no such weight in {backbone}"])
    mapped = {m[0] for m in report["mapped"]}
    if len(mapped) != len(report["mapped"]):
        raise ConfigError(f"{path}: several weights map to the same backbone variable; the file's layer names "
                          "are ambiguous for this backbone")
    report["missing"] = [key for key in targets if key not in mapped]
    if not assignments:
        raise ConfigError(f"{path}: none of its weights matches a layer of backbone {backbone} by name "
                          f"(first layers: {', '.join(list(stored)[:4])})")
    return assignments, report


# ------------------------------------------------------------------------------------ loading ----


def load_weights_file(model, path, backbone: str | None = None, allow_missing: bool = False) -> dict:
    """Load ``path`` into the built backbone ``model``; returns the report (mapped / dropped / missing)."""
    p = Path(path)
    backbone = backbone or model.name
    if not p.is_file():
        raise ConfigError(f"--weights {path}: file not found (use 'imagenet', 'none' or a weights file)")
    kind = weights_kind(p)
    if kind == "dlib-dat":
        from models.dlib_resnet import load_dlib_weights

        if backbone != "dlib_resnet" and not backbone.endswith("_dlib_resnet"):
            raise ConfigError(f"{path}: dlib's face-recognition ResNet fits --backbone dlib_resnet, not {backbone}")
        return load_dlib_weights(model, p)
    if kind == "keras2-h5":
        stored, full_model = _keras2_layer_names(p)
        if full_model and not stored & {layer.name for layer in model.layers if layer.weights}:
            kind = "keras-model"  # a whole saved backbone whose layers nest differently: load it as Keras does
    if kind in ("keras-weights", "keras-model"):
        return _load_keras(model, p, kind, backbone)
    assignments, report = (_map_torch if kind == "pytorch" else _map_keras2)(model, p, backbone)
    if report["missing"] and not allow_missing:
        first = ", ".join(report["missing"][:5])
        raise ConfigError(f"{path}: {len(report['missing'])} weights of backbone {backbone} are not in the file "
                          f"(first: {first}); the backbone would be partly random. Convert with "
                          "`python -m preprocess.weights convert ... --allow-missing` if that is intended")
    for variable, value in assignments:  # only after every shape was checked: no half-loaded backbone
        variable.assign(value.astype(variable.dtype))
    report["input_norm"] = weights_input_norm(p)
    return report


def _load_keras(model, path, kind, backbone) -> dict:
    import keras

    report = _empty_report(path, kind, backbone)
    if kind == "keras-weights":
        with _open_h5(path) as handle:
            recorded = handle.attrs.get("fer_backbone")
        if recorded is not None and _text(recorded) != backbone and backbone in CONVERTIBLE:
            raise ConfigError(f"{path}: converted for backbone {_text(recorded)}, not {backbone}")
    try:
        if kind == "keras-model":
            model.set_weights(keras.models.load_model(path, compile=False).get_weights())
        else:
            model.load_weights(path)
    except Exception as exc:
        raise ConfigError(f"--weights {path}: cannot load into backbone {model.name} "
                          f"({type(exc).__name__}: {str(exc)[:200]})") from None
    report["mapped"] = [[v.path, v.path, list(v.shape)] for v in model.weights]
    report["input_norm"] = weights_input_norm(path)
    return report


# --------------------------------------------------------------------------------- inspect ----


def inspect_weights(path) -> tuple[list, dict]:
    """Every tensor of a weights file as ``(name, shape, dtype)``, and what the file looks like."""
    import h5py

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: file not found")
    kind = weights_kind(p)
    info = {"format": kind, "input_norm": weights_input_norm(p)}
    if kind == "dlib-dat":
        from models.dlib_dat import anet_layers, read_dlib_resnet

        weights = read_dlib_resnet(p)
        info.update({"input_size": list(weights.input_size), "channel_means": [round(m, 3) for m in weights.channel_means],
                     "loss": weights.loss})
        rows = []
        for layer in anet_layers():
            if layer.kind == "con":
                kernel, bias = weights.conv[layer.name]
                rows += [(f"{layer.name}/kernel", kernel.shape, "float32"), (f"{layer.name}/bias", bias.shape, "float32")]
            elif layer.kind == "affine":
                gamma, beta = weights.affine[layer.name]
                rows += [(f"{layer.name}/scale", gamma.shape, "float32"), (f"{layer.name}/shift", beta.shape, "float32")]
        rows.append(("fc/kernel", weights.fc.shape, "float32"))
    elif kind == "pytorch":
        from models.torch_checkpoint import load_state_dict

        tensors, layout = load_state_dict(p)
        info.update(layout)
        rows = [(k, tuple(v.shape), str(v.dtype)) for k, v in tensors.items()]
    elif kind == "keras2-h5":
        rows = [(w if w.startswith(f"{layer}/") else f"{layer}/{w}", tuple(v.shape), str(v.dtype))
                for layer, weights in _read_keras2_h5(p).items() for w, v in weights.items()]
    elif kind == "keras-weights":
        rows = []
        with _open_h5(p) as handle:
            info.update({k: _text(v) for k, v in handle.attrs.items() if k.startswith("fer_")})
            handle.visititems(lambda n, o: rows.append((n, o.shape, str(o.dtype))) if isinstance(o, h5py.Dataset)
                              else None)
    else:
        raise ConfigError(f"{path}: inspecting .keras model files is not supported; inspect its weights instead")
    info["looks_like"] = guess_backbone({name: shape for name, shape, _ in rows})
    return rows, info


def guess_backbone(shapes: dict) -> str | None:
    """Which in-house backbone a tensor listing fits, from its names and depth (None if none does)."""
    if "alevel0_0_conv1/kernel" in shapes and "conv0/kernel" in shapes:
        return "dlib_resnet"
    if "conv1.weight" in shapes and "layer1.0.conv1.weight" in shapes:
        depths = tuple(len({k.split(".")[1] for k in shapes if k.startswith(f"layer{s}.")}) for s in (1, 2, 3, 4))
        bottleneck = "layer1.0.conv3.weight" in shapes
        known = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34 (not supported)",
                 ((3, 4, 6, 3), True): "resnet50", ((3, 4, 23, 3), True): "resnet101 (torchvision; not supported)"}
        return known.get((depths, bottleneck))
    names = {n.split("/")[0] for n in shapes}
    if _is_ic_layout(names):
        return "resnet18_ic" if "stage1_unit3_bn1" not in names and "stage1_unit1_conv3" not in names else None
    return None


def format_report(report: dict, verbose: bool = True) -> str:
    """Human-readable text of a load/convert report."""
    lines = [f"{report['source']}: {report['format']}"
             + (f", weights under '{report['layout']}'" if report.get("layout") not in (None, "bare") else "")
             + (f", prefix '{report['stripped_prefix']}' stripped" if report.get("stripped_prefix") else "")]
    if verbose:
        lines += [f"  mapped   {src} -> {dst} {tuple(shape)}" for src, dst, shape in report["mapped"]]
        lines += [f"  dropped  {name}: {why}" for name, why in report["dropped"]]
        lines += [f"  missing  {name}" for name in report["missing"]]
    lines.append(f"mapped {len(report['mapped'])}, dropped {len(report['dropped'])}, missing "
                 f"{len(report['missing'])}; input normalisation: {report.get('input_norm', 'none')}")
    if report.get("ignored"):
        lines.append(f"non-tensor entries ignored: {', '.join(report['ignored'][:10])}")
    return "\n".join(lines)


def format_load_summary(report: dict, max_names: int = 4) -> str:
    """One line for a training log: how many tensors loaded, and the dropped ones named, grouped by reason.

    e.g. ``100 tensors loaded, 22 dropped: fc.weight, fc.bias (classifier head), 20 × num_batches_tracked
    (BatchNorm step counter)``. A group of more than ``max_names`` tensors that all end in the same
    name is counted (``20 × num_batches_tracked``); any other long group lists its first names.
    """
    dropped = report.get("dropped") or []
    line = f"{len(report.get('mapped') or [])} tensors loaded, {len(dropped)} dropped"
    groups: dict[str, list] = {}  # short reason → tensor names, in file order
    for name, reason in dropped:
        groups.setdefault(str(reason).split(" (", 1)[0], []).append(str(name))
    if groups:
        listed = [(reason, _name_list(names, max_names)) for reason, names in groups.items()]
        listed.sort(key=lambda item: " × " in item[1])  # groups named in full first, counted ones after
        line += ": " + ", ".join(f"{names} ({reason})" for reason, names in listed)
    if report.get("missing"):
        line += f"; {len(report['missing'])} missing: {_name_list(list(report['missing']), max_names)}"
    return line


def _name_list(names: list, max_names: int) -> str:
    if len(names) <= max_names:
        return ", ".join(names)
    leaves = {re.split(r"[./]", name)[-1] for name in names}
    if len(leaves) == 1:
        return f"{len(names)} × {leaves.pop()}"
    return ", ".join(names[:max_names]) + f", … {len(names) - max_names} more"
