"""The one registry of methods (``--method NAME``) and backbones (``--backbone NAME``).

Every command line, benchmark and test reads its method list from here. Adding a method is
``models/<name>.py`` + ``losses/<name>.py`` + one :data:`METHODS` line; the contract test
(``tests/test_method_contract.py``) then covers it. Entries hold ``"module:attribute"`` references,
imported on first use, so nothing heavy runs at import time. A registered method whose module fails to
import is an error (a broken build must fail loudly, not lose a method quietly).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from common.errors import ConfigError


@dataclass(frozen=True)
class MethodEntry:
    name: str
    model: object  # "module:ModelClass" or the class itself
    config: object  # "module:ConfigClass" or the class itself
    title: str  # display name in tables (e.g. "LA-Net")
    summary: str  # one line for --help and the README


METHODS: dict[str, MethodEntry] = {}
# Every --backbone name (defined in models/backbones.py; listed here so --help needs no TensorFlow import).
BACKBONES = ("resnet50", "resnet18", "resnet18_ic", "resnet50_keras", "resnet101", "mobilenetv2", "small_cnn",
             "tiny_cnn", "dlib_resnet")


def register_method(name: str, model, config, title: str | None = None, summary: str = "") -> MethodEntry:
    """Add (or replace) a method; ``model``/``config`` are classes or ``"module:Class"`` references."""
    entry = MethodEntry(name, model, config, title or name, summary)
    METHODS[name] = entry
    return entry


register_method("ce", "models.ce:CEModel", "models.ce:CEConfig", "CE", "cross-entropy baseline")
register_method("ldlva", "models.ldlva:LDLVAModel", "models.ldlva:LDLVAConfig", "LDLVA",
                "LDLVA (WACV 2023): VA-neighbour label distributions + per-sample uncertainty")
register_method("lanet", "models.lanet:LANetModel", "models.lanet:LANetConfig", "LA-Net",
                "LA-Net (ICCV 2023): landmark-aware label distributions + expression-landmark contrast")
register_method("ddaf", "models.ddaf:DDAFModel", "models.ddaf:DDAFConfig", "DDAF",
                "dual-domain affect fusion (CVPRW 2023): VA-derived mixed labels, VA head, SWA")
register_method("nla", "models.nla:NLAModel", "models.nla:NLAConfig", "NLA",
                "NLA (AAAI 2025): noise-aware adaptive weighting with flip consistency")
register_method("scn", "models.scn:SCNModel", "models.scn:SCNConfig", "SCN",
                "SCN (CVPR 2020): importance-weighted logits, rank regularisation, self-cure relabelling")
register_method("rul", "models.rul:RULModel", "models.rul:RULConfig", "RUL",
                "RUL (NeurIPS 2021): relative-uncertainty feature mixup with an add-up loss")
register_method("eac", "models.eac:EACModel", "models.eac:EACConfig", "EAC",
                "EAC (ECCV 2022): flip attention (CAM) consistency under random erasing")


def _load(ref):
    if not isinstance(ref, str):
        return ref
    module, attribute = ref.split(":")
    return getattr(importlib.import_module(module), attribute)


def check_method_name(name: str) -> None:
    """An unknown ``--method`` is a ConfigError; nothing is imported (a command checks it before TensorFlow)."""
    if name not in METHODS:
        raise ConfigError(f"unknown --method '{name}'; known: {', '.join(METHODS)}")


def get_method(name: str):
    """``(model_class, config_class)`` of ``--method name`` (an unknown name is a ConfigError)."""
    check_method_name(name)
    entry = METHODS[name]
    return _load(entry.model), _load(entry.config)


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def method_title(name: str) -> str:
    return METHODS[name].title if name in METHODS else name


def backbone_names() -> tuple[str, ...]:
    return tuple(BACKBONES)
