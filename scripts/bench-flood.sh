#!/usr/bin/env bash
# Reproduces the flood figures: builds the release binaries, then runs
# `conclave-bench flood` (unix + tcp x 100 / 1024 / 8192 B x agreed, 3 repeats each).
# Extra arguments go to conclave-bench, e.g. `--rate 20000 -n 40000` for paced latency.
# Writes target/bench/flood.{md,csv,svg} and prints the markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p conclave-tools --bins
exec ./target/release/conclave-bench flood "$@"
