"""TTCL: a declarative, type-checked language for test-time compute programs for LLMs.

import ttcl
prog = ttcl.compile('program main = sample(8) |> vote')
prog.graph          # the compiled DAG (networkx)
"""

__version__ = "0.1.0"

from ttcl.errors import TTCLError  # noqa: E402
from ttcl.program import Program, compile, load  # noqa: E402
from ttcl.results import Candidate, Cost, Result  # noqa: E402
from ttcl.runtime.verifiers import register_verifier  # noqa: E402

__all__ = ["Candidate", "Cost", "Program", "Result", "TTCLError", "compile", "load", "register_verifier", "__version__"]
