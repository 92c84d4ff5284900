#!/usr/bin/env bash
# Container smoke test (CONTAINERS.md): build the images without a registry, run the compose
# stack with only Kafka, Redis and the OTLP receiver swapped for local stand-ins, and check:
# every service healthy, produced events reach events.governed, a model is promoted, a gRPC
# Predict from the host answers, traces and metrics arrive. Then tear everything down.
#
# Verdict, the same in CI and on a workstation:
#   exit 0 "SKIPPED"  only where no Docker engine can be had: none answers `docker info` and
#                     none can be installed (not root, no apt-get, or the packages cannot be
#                     installed even after `apt-get update`); or LEPTON_SMOKE_SKIP=1 is set
#   exit 1 "FAILED"   everything else that goes wrong once an engine can be had (dockerd does
#                     not start, an image does not build, a service is unhealthy, a check fails)
#   exit 0 "PASSED"
# Base images are cached in the engine (scripts/smoke/base.sh); the project image reuses its
# dependency layers while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=${LEPTON_SMOKE_DIR:-/var/tmp/lepton-smoke}
project=lepton-smoke
py=${LEPTON_SMOKE_PYTHON:-$repo/.venv/bin/python}  # the host's Python with the project
started=$(date +%s)
# Debian's engine has no buildx: the legacy builder (a static docker CLI >= 23 would otherwise
# try BuildKit where DOCKER_BUILDKIT=1 is set)
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
say() { echo "compose-smoke [$(( $(date +%s) - started ))s]: $*" >&2; }
skip() { say "SKIPPED: $*"; exit 0; }
fail() { say "FAILED: $*"; exit 1; }
trap 'say "FAILED: line $LINENO: $BASH_COMMAND"' ERR
[ "${LEPTON_SMOKE_SKIP:-0}" = 1 ] && skip "LEPTON_SMOKE_SKIP=1"
mkdir -p "$work"

# -- engine ------------------------------------------------------------------------------
is_root() { [ "$(id -u)" = 0 ]; }
apt_install() {  # Debian packages; when the install fails, refresh the lists and try again
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >"$work/apt.log" 2>&1 && return 0
  say "apt-get install $* failed; running apt-get update and trying again"
  apt-get update -qq >>"$work/apt.log" 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$work/apt.log" 2>&1
}
has_compose() { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; }
missing=()
if is_root && command -v apt-get >/dev/null 2>&1; then
  docker info >/dev/null 2>&1 || command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  has_compose || missing+=(docker-compose)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    if ! apt_install "${missing[@]}"; then
      tail -5 "$work/apt.log" >&2
      docker info >/dev/null 2>&1 || skip "no Docker engine here and none can be installed" \
        "(apt-get install ${missing[*]} failed; see $work/apt.log)"
      fail "apt-get install ${missing[*]} failed (see $work/apt.log)"
    fi
  fi
fi
if ! docker info >/dev/null 2>&1; then
  why=$(docker info 2>&1 | tail -1 || true)
  command -v dockerd >/dev/null 2>&1 || skip "no Docker engine here and none can be installed" \
    "($(is_root && echo "no apt-get" || echo "not root"); docker info: ${why:-no docker CLI})"
  is_root || skip "no Docker engine answers this user, and starting one needs root" \
    "(docker info: $why)"
  # An engine killed with its machine leaves its pid files behind. Where such a pid now belongs
  # to another process, a new dockerd takes that process for its containerd and gives up after
  # 15 s ("timeout waiting for containerd to start", moby#40292), or refuses to start at all.
  drop_stale_pid() {  # $1 pid file, $2 the command its process must be to count as running
    local pid
    [ -f "$1" ] || return 0
    pid=$(tr -dc 0-9 <"$1")
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && return 0
    say "removing the stale $1 (pid ${pid:-none} is not a running $2)"
    rm -f "$1"
  }
  for attempt in 1 2; do
    if pgrep -x dockerd >/dev/null; then
      say "waiting for the dockerd already running"
    else
      drop_stale_pid /var/run/docker.pid dockerd
      drop_stale_pid /var/run/docker/containerd/containerd.pid containerd
      say "starting dockerd (attempt $attempt)"
      (dockerd >"$work/dockerd.log" 2>&1 &)
    fi
    for _ in $(seq 60); do
      docker info >/dev/null 2>&1 && break 2
      pgrep -x dockerd >/dev/null || break  # it gave up: its log says why
      sleep 1
    done
    tail -20 "$work/dockerd.log" >&2 2>/dev/null || true
  done
  docker info >/dev/null 2>&1 || fail "dockerd did not start (see $work/dockerd.log)"
fi
if docker compose version >/dev/null 2>&1; then compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then compose=(docker-compose)
else fail "a Docker engine runs but neither 'docker compose' nor docker-compose is installed"; fi
# a newer static docker CLI talks to an older daemon by negotiating the daemon's API version
say "engine: client $(docker version -f '{{.Client.Version}}' 2>/dev/null)," \
  "server $(docker version -f '{{.Server.Version}} (API {{.Server.APIVersion}})'), ${compose[*]}"
[ -x "$py" ] || fail "no host Python with the project at $py (run scripts/install.sh)"

# -- images ------------------------------------------------------------------------------
cleanup() {
  local status=$?
  set +e
  trap - ERR
  if [ -n "${index_pid:-}" ]; then kill "$index_pid" 2>/dev/null; wait "$index_pid" 2>/dev/null; fi
  if [ -f "$work/compose.yml" ]; then
    "${compose[@]}" -p "$project" -f "$work/compose.yml" down -v --remove-orphans \
      >"$work/down.log" 2>&1 || say "teardown failed (see $work/down.log)"
  fi
  find "$repo/docker/ca-certificates" -name '*.crt' -delete 2>/dev/null
  exit "$status"
}
trap cleanup EXIT
# host CAs (a TLS-intercepting proxy) into the build context only, never into git
find docker/ca-certificates -name '*.crt' -delete
cp /usr/local/share/ca-certificates/*.crt docker/ca-certificates/ 2>/dev/null || true
bash scripts/smoke/base.sh || fail "the local base images did not build"
say "base images ready"
# torch from pip's local wheel directory, served as a simple index (--index-url in the build)
torch_index=""
wheels=$(python3 -m pip config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p" | head -1)
wheel=$(ls "${wheels:-/nonexistent}"/torch-2.13.0*-cp311-*.whl 2>/dev/null | head -1 || true)
if [ -n "$wheel" ]; then
  mkdir -p "$work/index/torch"
  ln -sf "$wheel" "$work/index/torch/$(basename "$wheel")"
  # a fixed port: the index URL is a build arg, and a new value each run would make every RUN
  # step after it (the dependency layers) miss the build cache
  port=${LEPTON_SMOKE_INDEX_PORT:-38471}
  if ! python3 -c "import socket,sys; socket.socket().bind(('127.0.0.1', $port))" 2>/dev/null; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    say "port ${LEPTON_SMOKE_INDEX_PORT:-38471} is taken: torch index on $port (no build cache)"
  fi
  (cd "$work/index" && exec python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1) &
  index_pid=$!
  torch_index="http://127.0.0.1:$port/"
fi
say "building lepton-stream:0.1.0"
build_args=(--build-arg BASE_IMAGE=local/python:3.11)
[ -z "$torch_index" ] || build_args+=(--build-arg "TORCH_INDEX=$torch_index")
docker build --network host "${build_args[@]}" -t lepton-stream:0.1.0 . >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log" >&2; fail "the project image did not build (see $work/build.log)"; }
say "image built"

# -- secrets (each service's signing key, the serving token), owned by the service user ----
secrets="$work/secrets"
rm -rf "$secrets" && mkdir -p "$secrets"
docker run --rm --user 0 --entrypoint sh -v "$secrets:/out" lepton-stream:0.1.0 -c \
  "lepton keys principals /out/principals >/dev/null && for t in predict admin; do python -c 'import secrets; print(secrets.token_hex(16))' > /out/serving-\$t.token; done && chown -R 10001:10001 /out"
token=$(cat "$secrets/serving-predict.token")

# -- the stack ---------------------------------------------------------------------------
"$py" scripts/smoke/derive.py "$repo" "$work/compose.yml" "$secrets"
dc() { "${compose[@]}" -p "$project" -f "$work/compose.yml" "$@"; }
dc down -v --remove-orphans >/dev/null 2>&1 || true
say "starting the stack"
dc up -d ingest governance trainer serving monitor >"$work/up.log" 2>&1 \
  || { tail -20 "$work/up.log" >&2; fail "docker compose up (see $work/up.log)"; }
healthy() {  # wait until every named service reports healthy
  local service id status deadline
  for service in "$@"; do
    deadline=$(( $(date +%s) + 240 ))
    while :; do
      id=$(dc ps -q "$service")
      status=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo missing)
      [ "$status" = healthy ] && break
      if [ "$(date +%s)" -gt "$deadline" ]; then
        dc logs --tail 40 "$service" >&2; fail "$service is $status"
      fi
      sleep 3
    done
    say "$service healthy"
  done
}
healthy kafka redis ingest governance trainer monitor
topics_exit=$(docker inspect -f '{{.State.ExitCode}}' "$(dc ps -q topics)")
[ "$topics_exit" = 0 ] || { dc logs topics >&2; fail "topics step exited $topics_exit"; }

# -- the pipeline ------------------------------------------------------------------------
run() {
  dc run --rm --no-deps -T -v "$repo/scripts/smoke:/smoke:ro" --entrypoint "$1" ingest "${@:2}" \
    2> >(grep -v '^Creating ' >&2)
}
say "producing 2000 events"
run lepton produce --count 2000 --quiet
run python /smoke/check.py governed 1 >&2 || { dc logs --tail 60 governance >&2; fail "nothing reached events.governed"; }
say "an event reached events.governed"
run python /smoke/check.py promoted 300 >&2 || { dc logs --tail 80 trainer >&2; fail "no model promoted"; }
say "a model was promoted"
healthy serving  # grpc.health.v1 says SERVING once a model is loaded
record=$("$py" -c "
import json
from lepton.generators import generate
payload = dict(next(iter(generate('transactions', 1, 99))).payload)
payload.pop('is_fraud', None)
print(json.dumps(payload))")
for _ in $(seq 20); do
  if answer=$(LEPTON_SERVING_ADDR=127.0.0.1:50051 LEPTON_SERVING_AUTH_TOKEN="$token" \
      "$py" -m lepton predict "$record" 2>&1); then break; fi
  sleep 3
done
echo "$answer" | grep -q '"version"' || { echo "$answer" >&2; fail "Predict from the host"; }
say "Predict from the host: $answer"
# every service's spans (batch processor: 5 s) and metrics (every 2 s here) reach the receiver
# spans from every hop of an event; metrics from every service (the monitor only observes)
everyone="import json,sys; c=json.load(sys.stdin); sys.exit(0 if all(c['spans'].get(s, 0) > 0 for s in ('ingest', 'governance', 'trainer', 'serving')) and all(c['metrics'].get(s, 0) > 0 for s in ('ingest', 'governance', 'trainer', 'serving', 'monitor')) else 1)"
for _ in $(seq 15); do
  counts=$(docker exec "$(dc ps -q otel-collector)" cat /tmp/otlp-counts.json)
  echo "$counts" | python3 -c "$everyone" && break
  sleep 2
done
say "OTLP received: $counts"
echo "$counts" | python3 -c "$everyone" || fail "spans or metrics missing from a service"
say "PASSED in $(( $(date +%s) - started )) s (the teardown follows)"
