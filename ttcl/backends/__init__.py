"""Backends: what runs a model's requests (see `base.Backend`).

`backend_for(decl)` gives the shared backend of a model declaration by its kind, importing
that backend's module only then: llama.cpp for `llama(...)`, torch for `torch(...)`, an HTTP
client for `openai(...)`, so a program that never runs a torch model never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from ttcl.backends.base import BackendError, RequestError

__all__ = ["BackendError", "RequestError", "backend_for"]

MODULES = {"llama": ".llama", "torch": ".hf", "openai": ".remote"}  # model kind -> the module with its backend_for


def backend_for(model: dict) -> Any:
    """The shared backend for a model declaration, e.g. {"kind": "torch", "path":
    "smollm2-135m", "device": "cpu"}; a declaration without a kind is a llama one."""
    kind = model.get("kind", "llama")
    module = MODULES.get(kind)
    if module is None:
        runnable = " or ".join(f"{k}(...)" for k in MODULES)
        raise BackendError(f"a {kind}(...) model cannot run; running needs a {runnable} model or a backend")
    return importlib.import_module(module, __name__).backend_for(model)
