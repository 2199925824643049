"""Lazy module attributes (PEP 562), so that importing a package does not import its heavy or optional parts."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` resolving ``names[attr]`` (a module path), or a subpackage, on first access."""

    def __getattr__(attr: str) -> Any:
        module = names.get(attr)
        if module is not None:
            value = getattr(importlib.import_module(module), attr)
        elif importlib.util.find_spec(f"{package}.{attr}") is not None:  # a subpackage, e.g. mimicfast.models
            value = importlib.import_module(f"{package}.{attr}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {attr!r}")
        setattr(importlib.import_module(package), attr, value)
        return value

    return __getattr__
