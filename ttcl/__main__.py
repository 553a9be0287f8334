"""`python -m ttcl` is the `ttcl` command."""

import sys

from .cli import main

sys.exit(main())
