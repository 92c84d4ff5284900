#!/usr/bin/env bash
# Install everything, make sure Redis runs, then check and test: ruff, mypy, the default pytest
# suite (unit, integration, e2e, fuzz), the long scenario tests (marked slow), then the
# fault-injection suite (tests/faults).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/redis.sh
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
.venv/bin/python -m pytest -m slow "$@"
.venv/bin/python -m pytest -m faults tests/faults "$@"
