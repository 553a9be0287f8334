"""TTCL: a declarative, type-checked language for test-time compute programs for LLMs.

import ttcl
prog = ttcl.compile('program main = sample(8) |> vote')
prog.graph          # the compiled DAG (networkx)

The public names are imported when first used (PEP 562), so `import ttcl` and the `ttcl`
command start fast: the compiler, networkx and pydantic load only when a program is compiled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ttcl.version import __version__

if TYPE_CHECKING:
    from ttcl.errors import TTCLError
    from ttcl.program import Program, compile, load
    from ttcl.results import Candidate, Cost, Result, load_results
    from ttcl.runtime.answers import register_answer
    from ttcl.runtime.verifiers import register_verifier

_EXPORTS = {  # public name -> the module that defines it
    "Candidate": "ttcl.results",
    "Cost": "ttcl.results",
    "Program": "ttcl.program",
    "Result": "ttcl.results",
    "TTCLError": "ttcl.errors",
    "compile": "ttcl.program",
    "load": "ttcl.program",
    "load_results": "ttcl.results",
    "register_answer": "ttcl.runtime.answers",
    "register_verifier": "ttcl.runtime.verifiers",
}

__all__ = [
    "Candidate",
    "Cost",
    "Program",
    "Result",
    "TTCLError",
    "compile",
    "load",
    "load_results",
    "register_answer",
    "register_verifier",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use, and keep the name here after."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ttcl' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
