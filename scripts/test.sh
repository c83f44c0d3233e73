#!/usr/bin/env bash
# The test command: set up (scripts/setup.sh), lint, type-check, run every test.
# Needs root: end-to-end tests build their own network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check netstack tests csrc bench
.venv/bin/mypy netstack
exec .venv/bin/pytest -q "$@"
