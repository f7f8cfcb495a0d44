"""Convert pretrained backbone weights (PyTorch ``.pth``, image-classifiers ``.h5``, dlib ``.dat``) to Keras, once.

Usage::

    python -m preprocess.weights convert IN OUT.weights.h5 --backbone resnet18|resnet50|resnet18_ic|dlib_resnet
        [--force] [--allow-missing] [--quiet]
    python -m preprocess.weights inspect IN
    python -m preprocess.weights embed --backbone dlib_resnet --weights dlib --out emb.npy IMAGE... [--force]

``convert`` reads IN without PyTorch (a checkpoint is untrusted input: only tensor state dicts are
unpickled, see :mod:`models.torch_checkpoint`), maps it onto the in-house backbone
(:mod:`models.pretrained`), prints every tensor it mapped, dropped (``fc.*``,
``num_batches_tracked``, unknown layers) or found missing, and writes OUT atomically; OUT records the
backbone and the input normalisation the weights expect, so ``--weights OUT`` needs nothing else.
An existing OUT is kept unless ``--force``. Typical inputs: the MS-Celeb-1M ResNet-18 of
SCN/RUL/EAC/LA-Net/NLA (``resnet18_msceleb.pth``, weights under ``state_dict`` with a ``module.``
prefix), torchvision's ``resnet18-f37072fd.pth`` / ``resnet50-*.pth`` and image-classifiers'
``resnet18_imagenet_1000_no_top.h5``. Training can also take IN directly (``--weights IN``); the
conversion just does the reading once.

``inspect`` lists every tensor with its shape and dtype, how the weights are nested, and which
backbone they fit.

``embed`` computes dlib's 128-D face descriptor (``dlib_resnet`` with its ``fc`` head, from ``--weights
dlib`` or a ``.dat``/converted file) for 150×150 face chips — e.g. those dlib's ``get_face_chip`` cuts —
and writes one row per image, in argument order, to a ``.npy`` file: the same numbers as
``dlib.face_recognition_model_v1(...).compute_face_descriptor(chip)``, so anyone can check the port.
"""

from __future__ import annotations

import argparse
import sys

from common.cli import ArgumentParser, quiet_tensorflow, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m preprocess.weights", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="map a .pth / .h5 onto a backbone and write a Keras .weights.h5")
    conv.add_argument("src", metavar="IN", help="PyTorch checkpoint, image-classifiers .h5 or dlib .dat ('dlib': the installed one)")
    conv.add_argument("out", metavar="OUT", help="output Keras weights file (*.weights.h5)")
    conv.add_argument("--backbone", required=True, help="resnet18 | resnet50 | resnet18_ic | dlib_resnet")
    conv.add_argument("--force", action="store_true", help="overwrite an existing OUT")
    conv.add_argument("--allow-missing", action="store_true",
                      help="write OUT even if some backbone weights are not in IN (they stay random)")
    conv.add_argument("--quiet", action="store_true", help="print only the counts, not every tensor")
    ins = sub.add_parser("inspect", help="list the tensors of a weights file")
    ins.add_argument("src", metavar="IN")
    emb = sub.add_parser("embed", help="dlib's 128-D face descriptor of 150x150 face chips, one .npy row each")
    emb.add_argument("images", metavar="IMAGE", nargs="+", help="150x150 RGB face chips (JPEG/PNG/...)")
    emb.add_argument("--backbone", default="dlib_resnet", help="dlib_resnet (the only one with a descriptor)")
    emb.add_argument("--weights", default="dlib", help="dlib (the installed .dat), a .dat, or a converted file")
    emb.add_argument("--out", required=True, help="output .npy file: (number of images, 128) float32")
    emb.add_argument("--force", action="store_true", help="overwrite an existing OUT")
    return parser


def _convert(args) -> None:
    from models.backbones import convert_weights, resolve_weights_path
    from models.pretrained import format_report

    args.src = resolve_weights_path(args.src)
    report = convert_weights(args.src, args.out, args.backbone, force=args.force, allow_missing=args.allow_missing)
    print(format_report(report, verbose=not args.quiet))
    print(f"wrote {args.out} (backbone {args.backbone}, input normalisation {report['input_norm']})")


def _inspect(args) -> None:
    from models.pretrained import inspect_weights

    args.src = _weights_path(args.src)
    rows, info = inspect_weights(args.src)
    width = max((len(name) for name, _, _ in rows), default=4)
    for name, shape, dtype in rows:
        print(f"{name:<{width}}  {str(tuple(shape)):<20}  {dtype}")
    total = sum(int(_count(shape)) for _, shape, _ in rows)
    facts = ", ".join(f"{k} {v}" for k, v in info.items() if v not in (None, [], ""))
    print(f"{len(rows)} tensors, {total:,} values; {facts}")


def _embed(args) -> None:
    import numpy as np

    from common.errors import ConfigError
    from common.io import atomic_write_bytes, check_output_file
    from data.images import ImageDecodeError, load_image
    from models.dlib_dat import NATIVE_SIZE

    if args.backbone != "dlib_resnet":
        raise ConfigError(f"--backbone {args.backbone}: only dlib_resnet computes a face descriptor")
    if not args.out.endswith(".npy"):
        raise ConfigError(f"--out {args.out}: the output name must end in .npy")
    check_output_file(args.out, args.force)
    chips = []
    for path in args.images:
        try:
            image, (height, width) = load_image(path)
        except ImageDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if (height, width) != (NATIVE_SIZE, NATIVE_SIZE):
            raise ConfigError(f"{path}: a {width}x{height} image; dlib's descriptor takes {NATIVE_SIZE}x{NATIVE_SIZE} "
                              "face chips (cut them with dlib.get_face_chip or `python -m preprocess.align`)")
        chips.append(image)
    from models.backbones import build_dlib_embedder

    model = build_dlib_embedder(args.weights)
    pixels = np.stack(chips).astype(np.float32) / 127.5 - 1.0  # the pipeline's [-1, 1]; the model maps it for dlib
    descriptors = np.concatenate([np.asarray(model(pixels[i:i + 32], training=False))
                                  for i in range(0, len(pixels), 32)]).astype(np.float32)
    import io

    buffer = io.BytesIO()
    np.save(buffer, descriptors)
    atomic_write_bytes(args.out, buffer.getvalue())
    print(f"wrote {args.out}: {descriptors.shape[0]} descriptors of {descriptors.shape[1]} values "
          f"({args.backbone}, weights {args.weights})")


def _weights_path(name: str) -> str:
    """``dlib`` → the installed .dat; no TensorFlow import (an error about a file comes before TF's start-up)."""
    if name == "dlib":
        from models.dlib_dat import default_dlib_path

        return str(default_dlib_path())
    return name


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def main(argv=None) -> int:
    def run(argv):
        args = build_parser().parse_args(argv)
        quiet_tensorflow()
        {"convert": _convert, "inspect": _inspect, "embed": _embed}[args.command](args)
        return 0

    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
