#!/usr/bin/env bash
# Local base images without a registry (cached: each is built once per Docker engine):
#   local/bookworm:base  Debian bookworm minbase from debootstrap, `docker import`ed
#   local/python:3.11    + Debian's python3/python3-venv, a venv on PATH, CA certificates
#                        (+ the host's extra CAs from docker/ca-certificates/, when present)
#   local/redis:7        + Debian's redis-server
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${LEPTON_SMOKE_DIR:-/var/tmp/lepton-smoke}
mkdir -p "$work"
if ! docker image inspect local/bookworm:base >/dev/null 2>&1; then
  command -v debootstrap >/dev/null 2>&1 \
    || { echo "smoke: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
  echo "smoke: debootstrap bookworm (about 40 s)" >&2
  rm -rf "$work/rootfs"
  debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  tar -C "$work/rootfs" --numeric-owner -c . | docker import -c 'CMD ["/bin/bash"]' - local/bookworm:base >/dev/null
  rm -rf "$work/rootfs"
fi
if ! docker image inspect local/python:3.11 >/dev/null 2>&1; then
  echo "smoke: building local/python:3.11" >&2
  docker build -q -t local/python:3.11 -f scripts/smoke/python.Dockerfile docker/ca-certificates \
    >"$work/python-base.log" 2>&1 || { tail -20 "$work/python-base.log" >&2; exit 1; }
fi
if ! docker image inspect local/redis:7 >/dev/null 2>&1; then
  echo "smoke: building local/redis:7" >&2
  docker build -q -t local/redis:7 -f scripts/smoke/redis.Dockerfile scripts/smoke \
    >"$work/redis-base.log" 2>&1 || { tail -20 "$work/redis-base.log" >&2; exit 1; }
fi
