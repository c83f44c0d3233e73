#!/usr/bin/env bash
# The test command: set up (scripts/setup.sh), lint, type-check, run every test.
# Needs root: end-to-end tests build their own network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check netstack tests csrc bench
.venv/bin/mypy netstack
# the C fast path's tests under ASan+UBSan, in a build of their own (~20 s; skip with
# NETSTACK_SANITIZE=0)
[ "${NETSTACK_SANITIZE:-1}" = 0 ] || bash scripts/sanitize.sh
# CI's settings: a skip for want of root or of the C fast path fails (tests/conftest.py),
# and hypothesis is derandomized (its "ci" profile)
export NETSTACK_TESTS_STRICT=1
export NETSTACK_HYPOTHESIS_PROFILE=ci
exec .venv/bin/pytest -q "$@"
