"""Convert pretrained backbone weights (PyTorch ``.pth``, image-classifiers ``.h5``) to Keras, once.

Usage::

    python -m preprocess.weights convert IN OUT.weights.h5 --backbone resnet18|resnet50|resnet18_ic
        [--force] [--allow-missing] [--quiet]
    python -m preprocess.weights inspect IN

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
"""

from __future__ import annotations

import argparse
import sys

from common.cli import ArgumentParser, quiet_tensorflow, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m preprocess.weights", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="map a .pth / .h5 onto a backbone and write a Keras .weights.h5")
    conv.add_argument("src", metavar="IN", help="PyTorch checkpoint or image-classifiers .h5")
    conv.add_argument("out", metavar="OUT", help="output Keras weights file (*.weights.h5)")
    conv.add_argument("--backbone", required=True, help="resnet18 | resnet50 | resnet18_ic")
    conv.add_argument("--force", action="store_true", help="overwrite an existing OUT")
    conv.add_argument("--allow-missing", action="store_true",
                      help="write OUT even if some backbone weights are not in IN (they stay random)")
    conv.add_argument("--quiet", action="store_true", help="print only the counts, not every tensor")
    ins = sub.add_parser("inspect", help="list the tensors of a weights file")
    ins.add_argument("src", metavar="IN")
    return parser


def _convert(args) -> None:
    from models.pretrained import convert, format_report

    report = convert(args.src, args.out, args.backbone, force=args.force, allow_missing=args.allow_missing)
    print(format_report(report, verbose=not args.quiet))
    print(f"wrote {args.out} (backbone {args.backbone}, input normalisation {report['input_norm']})")


def _inspect(args) -> None:
    from models.pretrained import inspect_weights

    rows, info = inspect_weights(args.src)
    width = max((len(name) for name, _, _ in rows), default=4)
    for name, shape, dtype in rows:
        print(f"{name:<{width}}  {str(tuple(shape)):<20}  {dtype}")
    total = sum(int(_count(shape)) for _, shape, _ in rows)
    facts = ", ".join(f"{k} {v}" for k, v in info.items() if v not in (None, [], ""))
    print(f"{len(rows)} tensors, {total:,} values; {facts}")


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def main(argv=None) -> int:
    def run(argv):
        args = build_parser().parse_args(argv)
        quiet_tensorflow()
        (_convert if args.command == "convert" else _inspect)(args)
        return 0

    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
