#!/usr/bin/env bash
# The test command of the README: install with test extras, lint, type-check, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e '.[test]'
python3 -m ruff check p2pchunks netsim tests
python3 -m mypy
python3 -m pytest -q -p no:cacheprovider "$@"
