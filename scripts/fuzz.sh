#!/usr/bin/env bash
# Runs each fuzz target in fuzz/ (cargo-fuzz, libFuzzer) for N seconds and prints how many inputs
# each one executed and whether it found a crash. The property tests in the crate check the same
# properties on every `cargo test`; this is the long version.
#
#   scripts/fuzz.sh                        # every target, 300 s each
#   scripts/fuzz.sh 60                     # 60 s each
#   scripts/fuzz.sh 600 parse_delivery     # one target
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). It builds with a nightly toolchain when rustup
# has one, else with the default toolchain and RUSTC_BOOTSTRAP=1 (sanitizer flags are unstable).
# The seed corpus is written from tests/fixtures on every run; what libFuzzer adds stays in
# fuzz/corpus (ignored by git). A crash leaves its input in fuzz/artifacts/<target>/ and the
# script exits non-zero; replay it with `cargo fuzz run <target> <file>`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-300}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(verify_signature parse_delivery)
fi

toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi

cd "$repo/fuzz"

# Seeds: every fixture delivery and bare event. parse_delivery reads a length byte, that many
# header bytes, then the body: each fixture goes in without a key and with one.
mkdir -p corpus/parse_delivery corpus/verify_signature
for fixture in "$repo"/tests/fixtures/*_delivery.json "$repo"/tests/fixtures/*_event.json; do
  name=$(basename "$fixture" .json)
  { printf '\000'; cat "$fixture"; } > "corpus/parse_delivery/seed-$name"
  { printf '\005try-1'; cat "$fixture"; } > "corpus/parse_delivery/seed-key-$name"
  cp "$fixture" "corpus/verify_signature/seed-$name"
done

status=0
summary=()
for target in "${targets[@]}"; do
  log=$(mktemp)
  echo "fuzz: $target for ${seconds}s" >&2
  set +e
  cargo "${toolchain[@]}" fuzz run "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=16384 -dict=json.dict -print_final_stats=1 \
    >"$log" 2>&1
  code=$?
  set -e
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ "$code" -eq 0 ]; then
    summary+=("$target: ${execs:-?} executions in ${seconds}s, no crash  [${done_line}]")
  else
    status=1
    tail -40 "$log" >&2
    summary+=("$target: FAILED (exit $code) after ${execs:-?} executions; input in fuzz/artifacts/$target/")
  fi
  rm -f "$log"
done
printf '%s\n' "${summary[@]}"
exit "$status"
