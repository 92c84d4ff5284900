#!/usr/bin/env bash
# Install everything, make sure Redis runs, then run the whole test suite (plus ruff and mypy).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/redis.sh
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
