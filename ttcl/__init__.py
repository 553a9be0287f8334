"""TTCL: a declarative, type-checked language for test-time compute programs for LLMs.

import ttcl
prog = ttcl.compile('program main = sample(8) |> vote')
prog.graph          # the compiled DAG (networkx)
"""

from ttcl.errors import TTCLError
from ttcl.program import Program, compile, load
from ttcl.results import Candidate, Cost, Result
from ttcl.runtime.verifiers import register_verifier
from ttcl.version import __version__

__all__ = ["Candidate", "Cost", "Program", "Result", "TTCLError", "compile", "load", "register_verifier", "__version__"]
