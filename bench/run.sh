#!/usr/bin/env bash
# Benchmarks attio-webhooks against its peers on this machine, in one run, and prints a table
# (also written to bench/results/latest.md). Not part of CI's pass/fail.
#
#   bench/run.sh                      # peers from ../shared/bench/peers
#   PEERS_DIR=/path/to/peers bench/run.sh
#   REQUESTS=20000 E2E_EVENTS=100000 CONCURRENCY=32 bench/run.sh
#
# Measures:
#   1. ingress: distinct signed deliveries at CONCURRENCY connections against
#      (a) attio-webhooks (durable SQLite journal), (b) axum-bare, (c) express-seed;
#   2. end to end: E2E_EVENTS events through Redis dedupe to a jsonl sink, first request to
#      last line written;
#   3. memory: idle RSS and peak RSS (VmHWM) of the daemon during (2);
#   4. scale-out mode (queue.backend = "redis", Redis AOF appendfsync always): 1 and 2 replicas
#      (examples/scale_out_bench.rs, SCALE_OUT_DELIVERIES deliveries; SCALE_OUT=0 skips it);
#   5. the daemon's own CPU time per request, as a ratio to axum-bare's in the same run, for
#      durable ingress (worker disabled) and end to end (bench/cpu.sh; CPU=0 skips it).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
PEERS_DIR=${PEERS_DIR:-$repo/../shared/bench/peers}
REQUESTS=${REQUESTS:-20000}
WARMUP=${WARMUP:-2000}
E2E_EVENTS=${E2E_EVENTS:-100000}
CONCURRENCY=${CONCURRENCY:-32}
SCALE_OUT=${SCALE_OUT:-1}
SCALE_OUT_DELIVERIES=${SCALE_OUT_DELIVERIES:-20000}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
SECRET=bench-secret-$(date +%s)
work=$(mktemp -d)
pids=()
# The end-to-end run's dedupe keys in the shared Redis: kept 15 minutes, not the default 4 days,
# and deleted when the run ends, so that a run does not leave 100,000 keys behind for the tests.
BENCH_PREFIX=bench-$RANDOM$RANDOM
drop_bench_keys() {
  command -v redis-cli >/dev/null 2>&1 || return 0
  redis-cli -u "$REDIS_URL" --scan --pattern "$BENCH_PREFIX:*" 2>/dev/null |
    xargs -r -n 1000 redis-cli -u "$REDIS_URL" UNLINK >/dev/null 2>&1 || true
}
cleanup() {
  for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done
  drop_bench_keys
  rm -rf "$work"
}
trap cleanup EXIT

log() { echo "bench: $*" >&2; }

wait_port() { # port
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "bench: nothing listens on $1" >&2; return 1
}

log "building release binaries"
cargo build --release --quiet --bin attio-webhooks --example loadgen --example scale_out_bench
bin=$repo/target/release/attio-webhooks
loadgen=$repo/target/release/examples/loadgen

log "building peers from $PEERS_DIR"
mkdir -p target/bench-peers
cp -r "$PEERS_DIR"/. target/bench-peers/
(cd target/bench-peers/axum-bare && cargo build --release --quiet)
(cd target/bench-peers/express-seed && npm ci --silent --no-audit --no-fund >/dev/null)

# run_load NAME URL -> prints the loadgen JSON line
run_load() {
  "$loadgen" --url "$2" --secret "$SECRET" --count "$WARMUP" --concurrency "$CONCURRENCY" --key-prefix "warm-$1-$RANDOM" >/dev/null
  "$loadgen" --url "$2" --secret "$SECRET" --count "$REQUESTS" --concurrency "$CONCURRENCY" --key-prefix "run-$1-$RANDOM"
}

# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"

start_daemon() { # dir port extra-env... ; sets DAEMON_PID
  local dir=$1 port=$2; shift 2
  env APP_ENV=production ATTIO_WEBHOOK_SECRET="$SECRET" ATTIO_WEBHOOKS_ADMIN_TOKEN="bench-admin-$RANDOM$RANDOM" "$@" \
    "$bin" serve --config "$dir/config.toml" --listen "127.0.0.1:$port" >/dev/null 2>"$dir/daemon.log" &
  DAEMON_PID=$!
  pids+=("$DAEMON_PID")
}

rss_kb() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }

# 1a. attio-webhooks ingress (embedded journal and dedupe)
mkdir -p "$work/a"; write_config "$work/a" ""
start_daemon "$work/a" 3910; pid=$DAEMON_PID; wait_port 3910
log "ingress: attio-webhooks"
ours=$(run_load ours "http://127.0.0.1:3910/webhooks/attio")
kill "$pid"; wait "$pid" 2>/dev/null || true

# 1a'. the same with storage.sync = "normal" (survives kill -9, not a power cut)
mkdir -p "$work/n"; write_config "$work/n" ""
start_daemon "$work/n" 3912 ATTIO_WEBHOOKS__STORAGE__SYNC=normal; pid=$DAEMON_PID; wait_port 3912
log "ingress: attio-webhooks, storage.sync = normal"
ours_normal=$(run_load normal "http://127.0.0.1:3912/webhooks/attio")
kill "$pid"; wait "$pid" 2>/dev/null || true

# 1b. axum-bare
PORT=3901 target/bench-peers/axum-bare/target/release/axum-bare >/dev/null 2>&1 & bare_pid=$!; pids+=("$bare_pid")
wait_port 3901
log "ingress: axum-bare"
bare=$(run_load bare "http://127.0.0.1:3901/webhooks/attio")
kill "$bare_pid"; wait "$bare_pid" 2>/dev/null || true

# 1c. express-seed
(cd target/bench-peers/express-seed && PORT=3900 ATTIO_WEBHOOK_SECRET="$SECRET" exec node server.js >/dev/null 2>&1) & express_pid=$!; pids+=("$express_pid")
wait_port 3900
log "ingress: express-seed"
express=$(run_load express "http://127.0.0.1:3900/webhooks/attio")
kill "$express_pid"; wait "$express_pid" 2>/dev/null || true

# 2 + 3. end to end through Redis dedupe into a jsonl sink, with memory
mkdir -p "$work/e"; write_config "$work/e" ""
start_daemon "$work/e" 3911 REDIS_URL="$REDIS_URL" \
  ATTIO_WEBHOOKS__REDIS__KEY_PREFIX="$BENCH_PREFIX" ATTIO_WEBHOOKS__DEDUPE__DONE_TTL=15m; pid=$DAEMON_PID
wait_port 3911
sleep 1
idle_kb=$(rss_kb "$pid" VmRSS)
log "end to end: $E2E_EVENTS events"
start_ns=$(date +%s%N)
e2e_load=$("$loadgen" --url "http://127.0.0.1:3911/webhooks/attio" --secret "$SECRET" --count "$E2E_EVENTS" --concurrency "$CONCURRENCY" --key-prefix "e2e-$RANDOM")
while :; do
  lines=$(wc -l < "$work/e/events.jsonl" 2>/dev/null || echo 0)
  [ "$lines" -ge "$E2E_EVENTS" ] && break
  if [ $(( ($(date +%s%N) - start_ns) / 1000000000 )) -gt 600 ]; then log "timed out at $lines lines"; break; fi
  sleep 0.05
done
end_ns=$(date +%s%N)
peak_kb=$(rss_kb "$pid" VmHWM)
kill "$pid"; wait "$pid" 2>/dev/null || true

# 4. scale-out: N replicas on one Redis stream (the bench starts its own redis-server with AOF)
scale_rows=""
if [ "$SCALE_OUT" = 1 ] && command -v redis-server >/dev/null 2>&1; then
  for n in 1 2; do
    log "scale-out: $n replica(s)"
    out=$(target/release/examples/scale_out_bench --replicas "$n" --deliveries "$SCALE_OUT_DELIVERIES" \
      --concurrency "$CONCURRENCY" --appendfsync always --binary "$bin" 2>>"$work/scale.log") || { log "scale-out bench failed: $(tail -3 "$work/scale.log")"; continue; }
    ing=$(awk '/^ingress:/ { print $2 }' <<<"$out")
    e2e=$(awk '/^end-to-end:/ { print $2 }' <<<"$out")
    scale_rows+="$n:$ing:$e2e;"
  done
fi

fsync_ms=$(dd if=/dev/zero of="$work/fsync.test" bs=4k count=200 oflag=dsync 2>&1 | awk '/copied/ { printf "%.2f", $(NF-3) * 1000 / 200 }')
python3 - "$ours" "$ours_normal" "$fsync_ms" "$bare" "$express" "$e2e_load" "$lines" "$start_ns" "$end_ns" "$idle_kb" "$peak_kb" "$REQUESTS" "$CONCURRENCY" "$E2E_EVENTS" "$scale_rows" "$SCALE_OUT_DELIVERIES" <<'PY'
import json, sys, datetime, os, platform
ours, ours_normal = json.loads(sys.argv[1]), json.loads(sys.argv[2])
fsync_ms = sys.argv[3]
bare, express, e2e = (json.loads(a) for a in sys.argv[4:7])
lines, start_ns, end_ns, idle_kb, peak_kb, requests, conc, events = (int(a) for a in sys.argv[7:15])
seconds = (end_ns - start_ns) / 1e9
e2e_rate = lines / seconds if seconds else 0
row = lambda name, r: f"| {name} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['failed']} |"
out = []
out.append(f"Benchmark {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, {requests} distinct signed deliveries at {conc} connections (after a warm-up)\n")
out.append("| ingress | requests/s | p50 ms | p99 ms | failed |")
out.append("|---|---|---|---|---|")
out.append(row("attio-webhooks, storage.sync = full (default)", ours))
out.append(row("attio-webhooks, storage.sync = normal", ours_normal))
out.append(row("axum-bare (no work: upper bound)", bare))
out.append(row("express-seed (Node/Express guide design)", express))
out.append("")
out.append(f"- attio-webhooks / axum-bare: {ours['rps']/bare['rps']:.2f} with sync = full, {ours_normal['rps']/bare['rps']:.2f} with sync = normal (target >= 0.6)")
out.append(f"- attio-webhooks / express-seed: {ours['rps']/express['rps']:.2f} with sync = full, {ours_normal['rps']/express['rps']:.2f} with sync = normal (target >= 10)")
out.append(f"- one 4 KiB write + fsync on this disk: {fsync_ms} ms (bounds sync = full: {conc} connections / fsync time)")
out.append(f"- end to end, {lines}/{events} events through Redis dedupe to jsonl: {e2e_rate:.0f} events/s over {seconds:.1f} s (ingress alone {e2e['rps']:.0f} req/s; target >= 20000 events/s)")
out.append(f"- memory: idle RSS {idle_kb/1024:.1f} MB (target <= 30), peak RSS during end to end {peak_kb/1024:.1f} MB (target <= 150)")
scale = [r.split(":") for r in sys.argv[15].split(";") if r]
if scale:
    out.append("")
    out.append(f"Scale-out mode (queue.backend = \"redis\", Redis AOF appendfsync always, {sys.argv[16]} deliveries at {conc} connections):\n")
    out.append("| replicas | acknowledged/s | events/s in the sinks |")
    out.append("|---|---|---|")
    for n, ing, e2e in scale:
        out.append(f"| {n} | {ing} | {e2e} |")
text = "\n".join(out)
print(text)
os.makedirs("bench/results", exist_ok=True)
open("bench/results/latest.md", "w").write(text + "\n")
PY

# 5. CPU per request against axum-bare's (appended to bench/results/latest.md)
if [ "${CPU:-1}" = 1 ]; then
  log "CPU per request (bench/cpu.sh)"
  BUILD=0 PEERS_DIR="$PEERS_DIR" bash "$repo/bench/cpu.sh" >/dev/null
  { echo; sed -n '1,$p' bench/results/cpu.md; } | tee -a bench/results/latest.md
fi
