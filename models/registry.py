"""Methods by name: ``--method NAME`` → (model class, config dataclass)."""

from __future__ import annotations

import importlib

from common.errors import ConfigError

# name → ("module:ModelClass", "module:ConfigClass"); imported lazily so nothing heavy runs at import.
METHODS = {
    "ce": ("models.ce:CEModel", "models.base:CEConfig"),
    "ldlva": ("models.ldlva:LDLVAModel", "models.ldlva:LDLVAConfig"),
    "lanet": ("models.lanet:LANetModel", "models.lanet:LANetConfig"),
    "ddaf": ("models.ddaf:DDAFModel", "models.ddaf:DDAFConfig"),
    "nla": ("models.nla:NLAModel", "models.nla:NLAConfig"),
}


def _load(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def get_method(name: str):
    """Return ``(model_class, config_class)`` for ``--method name``."""
    if name not in METHODS:
        raise ConfigError(f"unknown --method '{name}'; known: {', '.join(METHODS)}")
    model_ref, config_ref = METHODS[name]
    try:
        return _load(model_ref), _load(config_ref)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"method '{name}' is not available in this build ({exc})") from None
