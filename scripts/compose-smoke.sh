#!/usr/bin/env bash
# Container smoke test (CONTAINERS.md): build the images without a registry, run the compose
# stack with only Kafka, Redis and the OTLP receiver swapped for local stand-ins, and check:
# every service healthy, produced events reach events.governed, a model is promoted, a gRPC
# Predict from the host answers, traces arrive. Then tear everything down.
# Skips (exit 0, with a message) where no Docker engine can be had. Base images are cached.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=${LEPTON_SMOKE_DIR:-/var/tmp/lepton-smoke}
project=lepton-smoke
started=$(date +%s)
say() { echo "compose-smoke [$(( $(date +%s) - started ))s]: $*" >&2; }
skip() { say "SKIPPED: $*"; exit 0; }

# -- engine ------------------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && ! command -v dockerd >/dev/null; then
    say "installing docker.io, docker-compose, debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap \
      >/dev/null 2>&1 || skip "cannot install docker.io"
  fi
  if [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null 2>&1; then
    say "starting dockerd"
    (dockerd >"${TMPDIR:-/tmp}/lepton-smoke-dockerd.log" 2>&1 &)
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  fi
  docker info >/dev/null 2>&1 || skip "no Docker engine available (docker info fails)"
fi
if docker compose version >/dev/null 2>&1; then compose=(docker compose); \
elif command -v docker-compose >/dev/null 2>&1; then compose=(docker-compose); \
else skip "neither 'docker compose' nor docker-compose is installed"; fi
command -v debootstrap >/dev/null 2>&1 || docker image inspect local/bookworm:base >/dev/null 2>&1 \
  || skip "debootstrap is not installed"
mkdir -p "$work"

# -- images ------------------------------------------------------------------------------
# host CAs (a TLS-intercepting proxy) into the build context only, never into git
find docker/ca-certificates -name '*.crt' -delete
cp /usr/local/share/ca-certificates/*.crt docker/ca-certificates/ 2>/dev/null || true
bash scripts/smoke/base.sh
# torch from pip's local wheel directory, served as a simple index (--index-url in the build)
torch_index=""
wheels=$(python3 -m pip config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p" | head -1)
wheel=$(ls "${wheels:-/nonexistent}"/torch-2.13.0*-cp311-*.whl 2>/dev/null | head -1 || true)
if [ -n "$wheel" ]; then
  mkdir -p "$work/index/torch"
  ln -sf "$wheel" "$work/index/torch/$(basename "$wheel")"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  (cd "$work/index" && exec python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1) &
  index_pid=$!
  torch_index="http://127.0.0.1:$port/"
fi
cleanup() {
  if [ -n "${index_pid:-}" ]; then kill "$index_pid" 2>/dev/null; wait "$index_pid" 2>/dev/null; fi
  if [ -f "$work/compose.yml" ]; then
    "${compose[@]}" -p "$project" -f "$work/compose.yml" down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  find "$repo/docker/ca-certificates" -name '*.crt' -delete 2>/dev/null || true
}
trap cleanup EXIT
say "building lepton-stream:0.1.0"
build_args=(--build-arg BASE_IMAGE=local/python:3.11)
[ -z "$torch_index" ] || build_args+=(--build-arg "TORCH_INDEX=$torch_index")
docker build --network host -q "${build_args[@]}" -t lepton-stream:0.1.0 . >/dev/null

# -- secrets (each service's signing key, the serving token), owned by the service user ----
secrets="$work/secrets"
rm -rf "$secrets" && mkdir -p "$secrets"
docker run --rm --user 0 --entrypoint sh -v "$secrets:/out" lepton-stream:0.1.0 -c \
  "lepton keys principals /out/principals >/dev/null && for t in predict admin; do python -c 'import secrets; print(secrets.token_hex(16))' > /out/serving-\$t.token; done && chown -R 10001:10001 /out"
token=$(cat "$secrets/serving-predict.token")

# -- the stack ---------------------------------------------------------------------------
.venv/bin/python scripts/smoke/derive.py "$repo" "$work/compose.yml" "$secrets" 2>/dev/null \
  || python3 scripts/smoke/derive.py "$repo" "$work/compose.yml" "$secrets"
dc() { "${compose[@]}" -p "$project" -f "$work/compose.yml" "$@"; }
dc down -v --remove-orphans >/dev/null 2>&1 || true
say "starting the stack"
dc up -d ingest governance trainer serving >/dev/null
healthy() {  # wait until every named service reports healthy
  local service id status deadline
  for service in "$@"; do
    deadline=$(( $(date +%s) + 240 ))
    while :; do
      id=$(dc ps -q "$service")
      status=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo missing)
      [ "$status" = healthy ] && break
      if [ "$(date +%s)" -gt "$deadline" ]; then
        dc logs --tail 40 "$service" >&2; say "FAILED: $service is $status"; exit 1
      fi
      sleep 3
    done
    say "$service healthy"
  done
}
healthy kafka redis ingest governance trainer
topics_exit=$(docker inspect -f '{{.State.ExitCode}}' "$(dc ps -q topics)")
[ "$topics_exit" = 0 ] || { dc logs topics >&2; say "FAILED: topics step exited $topics_exit"; exit 1; }

# -- the pipeline ------------------------------------------------------------------------
run() { dc run --rm --no-deps -T -v "$repo/scripts/smoke:/smoke:ro" --entrypoint "$1" ingest "${@:2}"; }
say "producing 2000 events"
run lepton produce --count 2000 --quiet
run python /smoke/check.py governed 1 >&2 || { dc logs --tail 60 governance >&2; say "FAILED: nothing reached events.governed"; exit 1; }
say "an event reached events.governed"
run python /smoke/check.py promoted 300 >&2 || { dc logs --tail 80 trainer >&2; say "FAILED: no model promoted"; exit 1; }
say "a model was promoted"
healthy serving  # grpc.health.v1 says SERVING once a model is loaded
record=$(.venv/bin/python -c "
import json
from shared.datasets.generators import generate
payload = dict(next(iter(generate('transactions', 1, 99))).payload)
payload.pop('is_fraud', None)
print(json.dumps(payload))")
for _ in $(seq 20); do
  if answer=$(LEPTON_SERVING_ADDR=127.0.0.1:50051 LEPTON_SERVING_AUTH_TOKEN="$token" \
      .venv/bin/lepton predict "$record" 2>&1); then break; fi
  sleep 3
done
echo "$answer" | grep -q '"version"' || { echo "$answer" >&2; say "FAILED: Predict from the host"; exit 1; }
say "Predict from the host: $answer"
sleep 6  # one export interval
counts=$(docker exec "$(dc ps -q otel-collector)" cat /tmp/otlp-counts.json)
say "OTLP received: $counts"
for service in ingest governance trainer serving; do
  echo "$counts" | python3 -c "import json,sys; c=json.load(sys.stdin); sys.exit(0 if c['spans'].get('$service',0) > 0 and c['metrics'].get('$service',0) > 0 else 1)" \
    || { say "FAILED: no spans/metrics from $service"; exit 1; }
done
say "PASSED in $(( $(date +%s) - started )) s"
