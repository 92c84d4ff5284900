#!/usr/bin/env bash
# Install everything, make sure Redis runs, then check and test: ruff, mypy, the default pytest
# suite (unit, integration, e2e, fuzz; in LEPTON_TEST_WORKERS processes, default 3, each with its
# own broker: the suite mostly waits on the broker), the long scenario tests (marked slow), then
# the fault-injection suite (tests/faults). Those two run one test at a time: they time kills,
# freeze the broker and restart the one Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/redis.sh
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/python -m pytest -n "${LEPTON_TEST_WORKERS:-3}" "$@"
.venv/bin/python -m pytest -m slow "$@"
.venv/bin/python -m pytest -m faults tests/faults "$@"
