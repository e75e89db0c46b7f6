#!/usr/bin/env bash
# Rows per second of the PostgreSQL mirror, against the rate Attio allows (100 reads/s):
#   1. the postgres sink under a stream of record.updated lines, delivered concurrently as the
#      worker does (each such row costs Attio one re-fetch, so Attio allows 100 rows/s);
#   2. `sync` of one object's records, 500 per page through the client's read limiter (Attio
#      allows 100 pages/s, 50,000 rows/s).
# Needs PostgreSQL on 127.0.0.1:5432 (database test, trust auth); builds in release.
#
#   bench/postgres.sh
#   BENCH_UPDATES=50000 BENCH_RECORDS=5000 BENCH_IN_FLIGHT=256 BENCH_SYNC_RECORDS=50000 bench/postgres.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_UPDATES=${BENCH_UPDATES:-20000}
export BENCH_RECORDS=${BENCH_RECORDS:-2000}
export BENCH_IN_FLIGHT=${BENCH_IN_FLIGHT:-256}
export BENCH_SYNC_RECORDS=${BENCH_SYNC_RECORDS:-20000}
cargo test --release --locked --test it -- --ignored --exact postgres::bench_postgres_rows_per_second --nocapture 2>&1 \
  | grep '^|' | tee bench/results/postgres.md
