#!/usr/bin/env bash
# Memory soak (issue 12, item 10): the suite's memory test (tests/it/memory.rs) with a few
# hundred thousand deliveries, built in release. Nothing scrapes /metrics. Prints the daemon's
# anonymous resident memory at each checkpoint as a table, and PASS/FAIL.
#
#   scripts/soak.sh                         # 300,000 deliveries, worker off
#   SOAK_WORKER=true scripts/soak.sh        # the worker on, writing a jsonl sink
#   SOAK_DELIVERIES=1000000 scripts/soak.sh
set -uo pipefail
cd "$(dirname "$0")/.."

export SOAK_DELIVERIES="${SOAK_DELIVERIES:-300000}"
export SOAK_CHECKPOINTS="${SOAK_CHECKPOINTS:-12}"
export SOAK_GROWTH_KIB="${SOAK_GROWTH_KIB:-1024}"
export SOAK_WORKER="${SOAK_WORKER:-false}"

echo "building the tests in release..."
if ! cargo test --release --test it --no-run --quiet; then
    echo "FAIL build"
    exit 1
fi
log="$(mktemp)"
started=$(date +%s)
if cargo test --release --quiet --test it -- memory:: --test-threads=1 --nocapture >"$log" 2>&1; then
    result=PASS
else
    result=FAIL
fi
echo "| deliveries | RssAnon (KiB) |"
echo "|---|---|"
grep -o 'SOAK .*' "$log" | sed -E 's/^SOAK deliveries=([0-9]+) rss_anon_kib=([0-9]+)$/| \1 | \2 |/'
echo "$result memory soak: $SOAK_DELIVERIES deliveries, worker $SOAK_WORKER, $(($(date +%s) - started))s"
if [ "$result" = FAIL ]; then
    grep -E "panicked|grew" "$log" | head -5 | sed 's/^/    /'
    echo "    full log: $log"
    exit 1
fi
