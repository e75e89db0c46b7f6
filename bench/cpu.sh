#!/usr/bin/env bash
# The daemon's own CPU time per request or event, as a ratio to axum-bare's CPU per request in the
# same run. On a 2-core machine the load generator shares the cores with the server, so
# requests/s alone says little; CPU time from /proc (user + system, every thread of the server
# process) counts only what the server itself spent. Not part of CI's pass/fail.
#
#   bench/cpu.sh                                  # this checkout's release binary
#   bench/cpu.sh OLD_BINARY NEW_BINARY            # both, interleaved, in the same run
#   REQUESTS=30000 E2E_EVENTS=30000 ROUNDS=3 bench/cpu.sh
#
# For each binary and round it measures:
#   ingress: durable ingress with the worker disabled (verify, journal with storage.sync = full,
#            answer), REQUESTS distinct signed deliveries at CONCURRENCY connections;
#   e2e:     E2E_EVENTS events end to end through Redis dedupe to a jsonl sink, enrichment off,
#            from the first request to the last line written;
# and axum-bare (the same HTTP stack doing nothing) once per round. Prints one line per run and a
# table of the medians, and writes the table to bench/results/cpu.md.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
PEERS_DIR=${PEERS_DIR:-$repo/../shared/bench/peers}
REQUESTS=${REQUESTS:-30000}
E2E_EVENTS=${E2E_EVENTS:-30000}
WARMUP=${WARMUP:-2000}
CONCURRENCY=${CONCURRENCY:-32}
ROUNDS=${ROUNDS:-3}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
SECRET=cpu-secret-$(date +%s)
BENCH_PREFIX=bench-cpu-$RANDOM$RANDOM
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"

log() { echo "cpu: $*" >&2; }

# BUILD=0: use the binaries as they are (when comparing builds made elsewhere).
if [ "${BUILD:-1}" = 1 ]; then
  cargo build --release --quiet --bin attio-webhooks --example loadgen
fi
loadgen=$repo/target/release/examples/loadgen
binaries=()
if [ $# -ge 1 ]; then
  for b in "$@"; do binaries+=("$(realpath "$b")"); done
else
  binaries+=("$repo/target/release/attio-webhooks")
fi
mkdir -p target/bench-peers
cp -r "$PEERS_DIR"/axum-bare target/bench-peers/
(cd target/bench-peers/axum-bare && cargo build --release --quiet 2>/dev/null)
bare_bin=$repo/target/bench-peers/axum-bare/target/release/axum-bare

work=$(mktemp -d)
pid=
drop_bench_keys() {
  command -v redis-cli >/dev/null 2>&1 || return 0
  redis-cli -u "$REDIS_URL" --scan --pattern "$BENCH_PREFIX*" 2>/dev/null |
    xargs -r -n 1000 redis-cli -u "$REDIS_URL" UNLINK >/dev/null 2>&1 || true
}
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  drop_bench_keys
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# utime + stime of the whole process (all threads), in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
wait_port() {
  for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  return 1
}
# report LABEL BEFORE AFTER COUNT LOADGEN_JSON
report() {
  python3 - "$@" "$(getconf CLK_TCK)" <<'PY'
import json, sys
label, before, after, count, result, tick = sys.argv[1:]
r = json.loads(result)
cpu = (float(after) - float(before)) * 1e6 / float(tick) / int(count)
print(f"{label} rps={r['rps']:.0f} p50_ms={r['p50_ms']} p99_ms={r['p99_ms']} failed={r['failed']} cpu_us={cpu:.2f}")
PY
}

bare_run() {
  local port; port=$(free_port)
  PORT=$port "$bare_bin" >/dev/null 2>&1 &
  pid=$!
  wait_port "$port"
  local url=http://127.0.0.1:$port/webhooks/attio before after result
  "$loadgen" --url "$url" --secret "$SECRET" --count "$WARMUP" --concurrency "$CONCURRENCY" >/dev/null
  before=$(cpu_ticks "$pid")
  result=$("$loadgen" --url "$url" --secret "$SECRET" --count "$REQUESTS" --concurrency "$CONCURRENCY")
  after=$(cpu_ticks "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  report "bare" "$before" "$after" "$REQUESTS" "$result"
}

# daemon_run LABEL BINARY MODE(ingress|e2e)
daemon_run() {
  local label=$1 binary=$2 mode=$3 dir port
  dir=$work/$label-$mode-$RANDOM
  mkdir -p "$dir"
  write_config "$dir"
  port=$(free_port)
  local extra=()
  local count=$REQUESTS
  if [ "$mode" = ingress ]; then
    extra+=(ATTIO_WEBHOOKS__WORKER__ENABLED=false)
  else
    count=$E2E_EVENTS
    extra+=(REDIS_URL="$REDIS_URL" ATTIO_WEBHOOKS__REDIS__KEY_PREFIX="$BENCH_PREFIX-$label" ATTIO_WEBHOOKS__DEDUPE__DONE_TTL=15m)
  fi
  # From an empty working directory, so that an older binary does not read this checkout's config/.
  (cd "$dir" && exec env ATTIO_WEBHOOK_SECRET="$SECRET" "${extra[@]}" \
    "$binary" serve --config "$dir/config.toml" --listen "127.0.0.1:$port" >/dev/null 2>"$dir/daemon.log") &
  pid=$!
  if ! wait_port "$port"; then log "$binary did not start:"; tail -n 5 "$dir/daemon.log" >&2; exit 1; fi
  local url=http://127.0.0.1:$port/webhooks/attio before after result total
  "$loadgen" --url "$url" --secret "$SECRET" --count "$WARMUP" --concurrency "$CONCURRENCY" --key-prefix "warm-$RANDOM" >/dev/null
  if [ "$mode" = e2e ]; then
    for _ in $(seq 1 600); do
      [ "$(wc -l < "$dir/events.jsonl" 2>/dev/null || echo 0)" -ge "$WARMUP" ] && break
      sleep 0.05
    done
  fi
  before=$(cpu_ticks "$pid")
  result=$("$loadgen" --url "$url" --secret "$SECRET" --count "$count" --concurrency "$CONCURRENCY" --key-prefix "run-$RANDOM")
  if [ "$mode" = e2e ]; then
    total=$((WARMUP + count))
    for _ in $(seq 1 6000); do
      [ "$(wc -l < "$dir/events.jsonl" 2>/dev/null || echo 0)" -ge "$total" ] && break
      sleep 0.02
    done
    local lines; lines=$(wc -l < "$dir/events.jsonl")
    [ "$lines" -ge "$total" ] || log "$label e2e: only $lines of $total lines arrived"
  fi
  after=$(cpu_ticks "$pid")
  local rss_kb; rss_kb=$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  echo "$(report "$label-$mode" "$before" "$after" "$count" "$result") peak_rss_mb=$((rss_kb / 1024))"
}

lines=()
for round in $(seq 1 "$ROUNDS"); do
  line=$(bare_run); echo "round $round: $line"; lines+=("$line")
  i=0
  for binary in "${binaries[@]}"; do
    i=$((i + 1))
    for mode in ingress e2e; do
      line=$(daemon_run "b$i" "$binary" "$mode"); echo "round $round: $line"; lines+=("$line")
    done
  done
done
printf '%s\n' "${lines[@]}" > "$work/runs.txt"
{
  echo "CPU per request, $(date -u '+%Y-%m-%d %H:%M') UTC, $(nproc) cores, $ROUNDS rounds, $REQUESTS requests (ingress) / $E2E_EVENTS events (e2e) at $CONCURRENCY connections"
  echo
  i=0
  for binary in "${binaries[@]}"; do i=$((i + 1)); echo "- b$i = $(realpath --relative-to="$repo" "$binary")"; done
  echo
  python3 - "$work/runs.txt" <<'PY'
import collections, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    label, *pairs = line.split()
    runs[label].append({k: float(v) for k, v in (p.split("=") for p in pairs)})
import statistics
# Medians: a round that the machine disturbed (the load generator and Redis share the cores)
# moves a mean more than it moves a median.
mean = lambda label, key: statistics.median(r[key] for r in runs[label])
bare = mean("bare", "cpu_us")
print("Medians over the rounds.")
print()
print("| run | requests/s | p99 ms | CPU us per request | CPU / axum-bare's |")
print("|---|---|---|---|---|")
for label in runs:
    cpu = mean(label, "cpu_us")
    print(f"| {label} | {mean(label, 'rps'):.0f} | {mean(label, 'p99_ms'):.2f} | {cpu:.1f} | {cpu / bare:.2f} |")
PY
} | tee "$work/table.md"
mkdir -p bench/results
cp "$work/table.md" bench/results/cpu.md
