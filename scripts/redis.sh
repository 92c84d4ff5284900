#!/usr/bin/env bash
# Make sure a Redis server answers on 127.0.0.1:6379, starting one (no persistence) if not.
set -euo pipefail
if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  exit 0
fi
dir=${TMPDIR:-/tmp}/lepton-redis
mkdir -p "$dir"
redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
  --dir "$dir" --logfile "$dir/redis.log"
for _ in $(seq 50); do
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && exit 0
  sleep 0.1
done
echo "redis-server did not start; see $dir/redis.log" >&2
exit 1
