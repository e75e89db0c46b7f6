#!/usr/bin/env bash
# A/B of ingress between two builds of the daemon on this machine, in interleaved rounds, so that
# the machine's noise falls on both alike. Not part of CI's pass/fail.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS]
#   REQUESTS=20000 CONCURRENCY=32 bench/ab.sh old/attio-webhooks target/release/attio-webhooks 5
#
# Each round starts each binary on its embedded defaults (from an empty working directory, so
# that an older binary does not read this checkout's config/) with a SQLite journal and a jsonl
# sink at log level warn, warms it up, sends REQUESTS distinct signed deliveries at CONCURRENCY
# connections with examples/loadgen, and waits until the sink holds every event. It prints one
# line per run and the means: requests/s and p50/p99 as the load generator saw them, and the
# daemon's CPU time per request (user + system, from /proc, ingress and worker together).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 2 ] || { sed -n '2,14p' "$0" >&2; exit 2; }
a=$(realpath "$1"); b=$(realpath "$2"); rounds=${3:-3}
REQUESTS=${REQUESTS:-20000}
WARMUP=${WARMUP:-2000}
CONCURRENCY=${CONCURRENCY:-32}
SECRET=ab-secret-$(date +%s)
# shellcheck source=bench/lib.sh
source "$repo/bench/lib.sh"

(cd "$repo" && cargo build --release --quiet --example loadgen)
loadgen=$repo/target/release/examples/loadgen
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

run() { # label binary
  local dir=$work/$1-$RANDOM port total
  mkdir -p "$dir"
  write_config "$dir"
  port=$(free_port)
  (cd "$dir" && exec env ATTIO_WEBHOOK_SECRET="$SECRET" "$2" serve --config "$dir/config.toml" \
    --listen "127.0.0.1:$port" >/dev/null 2>"$dir/daemon.log") &
  pid=$!
  for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  if ! kill -0 "$pid" 2>/dev/null; then echo "ab: $2 did not start:" >&2; tail -n 5 "$dir/daemon.log" >&2; exit 1; fi
  local url=http://127.0.0.1:$port/webhooks/attio
  "$loadgen" --url "$url" --secret "$SECRET" --count "$WARMUP" --concurrency "$CONCURRENCY" --key-prefix "warm-$RANDOM" >/dev/null
  local before after result
  before=$(cpu_ticks "$pid")
  result=$("$loadgen" --url "$url" --secret "$SECRET" --count "$REQUESTS" --concurrency "$CONCURRENCY" --key-prefix "run-$RANDOM")
  total=$((WARMUP + REQUESTS))
  for _ in $(seq 1 1200); do
    [ "$(wc -l < "$dir/events.jsonl" 2>/dev/null || echo 0)" -ge "$total" ] && break
    sleep 0.05
  done
  after=$(cpu_ticks "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  python3 - "$1" "$before" "$after" "$REQUESTS" "$(getconf CLK_TCK)" "$result" <<'PY'
import json, sys
label, before, after, requests, tick, result = sys.argv[1:]
r = json.loads(result)
cpu = (float(after) - float(before)) * 1e6 / float(tick) / int(requests)
print(f"{label} rps={r['rps']:.0f} p50_ms={r['p50_ms']} p99_ms={r['p99_ms']} failed={r['failed']} cpu_us_per_request={cpu:.1f}")
PY
}

lines=()
for round in $(seq 1 "$rounds"); do
  for label in A B; do
    binary=$a; [ "$label" = B ] && binary=$b
    line=$(run "$label" "$binary")
    echo "round $round: $line"
    lines+=("$line")
  done
done
printf '%s\n' "${lines[@]}" > "$work/runs.txt"
python3 - "$work/runs.txt" <<'PY'
import collections, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    label, *pairs = line.split()
    runs[label].append({k: float(v) for k, v in (p.split("=") for p in pairs)})
print()
print("| | A | B | B/A |")
print("|---|---|---|---|")
for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request"):
    mean = {label: sum(r[key] for r in rs) / len(rs) for label, rs in runs.items()}
    print(f"| {key} (mean) | {mean['A']:.1f} | {mean['B']:.1f} | {mean['B'] / mean['A']:.3f} |")
PY
echo "A = $a"
echo "B = $b"
