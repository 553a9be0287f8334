"""The command line (`ttcl run|check|fmt|graph|cost|eval|optimize|train-prm|repl`): the argparse
entry in `app`, one module per command family, and the REPL."""

from ttcl.cli.app import main

__all__ = ["main"]
