#!/usr/bin/env bash
# Reproduces the 3-daemon ring figures of docs/ring.md: builds the release binaries, then
# runs `conclave-bench ring` (AGREED and SAFE x 1 and 3 senders x 100 / 1024 / 8192 B,
# 3 repeats each) with the throughput profile and 65000-byte datagrams (loopback), then the
# latency table at a fixed 10,000 msgs/s. Extra arguments go to both conclave-bench runs.
# Writes target/bench/ring.{md,csv,svg} and target/bench/latency/ring.{md,csv,svg}.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p conclave-tools --bins
./target/release/conclave-bench ring --profile throughput --max-datagram 65000 "$@"
exec ./target/release/conclave-bench ring --profile throughput --max-datagram 65000 \
    --rate 10000 -n 20000 --out target/bench/latency "$@"
