"""`python -m ttcl` is the `ttcl` command."""

import sys

try:
    from ttcl.cli import main
except KeyboardInterrupt:  # Ctrl-C in the moment the (light) entry module loads
    sys.stderr.write("interrupted\n")
    sys.exit(130)

sys.exit(main())
