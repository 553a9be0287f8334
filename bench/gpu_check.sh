#!/usr/bin/env bash
# The GPU check in one command, from anywhere: runs bench/gpu_check.py from the repository
# root with the Python on PATH (or $PYTHON) and passes every option on, e.g.
#   bench/gpu_check.sh --out gpu_check.json [--wheels DIR]
#   bench/gpu_check.sh --device cpu --quick
# The script keeps itself within its --budget (540 s by default); `timeout` is the backstop
# that ends it at ten minutes should it ever hang (the report it has written by then stays).
set -u
cd "$(dirname "$0")/.." || exit 1
exec timeout --kill-after=10 600 "${PYTHON:-python}" bench/gpu_check.py "$@"
