"""`python -m ttcl` is the `ttcl` command."""

import sys

from ttcl.cli.app import main

sys.exit(main())
