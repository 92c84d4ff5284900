#!/usr/bin/env bash
# Install everything Lepton Stream needs on a fresh Debian/Ubuntu machine with Python 3.11:
# redis-server, kcat and python3-venv from Debian when missing, a virtual environment in
# .venv, torch as `pip install torch==2.13.0` (a CPU wheel on this project's machines; any
# other spec would download the CUDA build), then the project.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
# Debian/Ubuntu split venv support out of the interpreter: no ensurepip means no `-m venv`
if [ ! -x .venv/bin/python ] && ! "$python" -c "import ensurepip" >/dev/null 2>&1; then
  missing+=("python3-venv")
fi
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing ${missing[*]} from Debian packages" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e '.[dev]'
echo "installed: $(.venv/bin/lepton --help >/dev/null && echo 'lepton command ready in .venv/bin')" >&2
