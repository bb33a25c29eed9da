"""Modules loaded on first use, so that a command (and every TAB completion) starts without importing what it
does not run: the Stripe SDK, simple-salesforce, pydantic, requests."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_module(name: str) -> ModuleType:
    """`name` as a module object whose code runs on the first attribute access: the standard library's
    recipe (docs.python.org/3/library/importlib.html, "Implementing lazy imports")."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
