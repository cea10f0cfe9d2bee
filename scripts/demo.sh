#!/usr/bin/env bash
# The README's demo command: builds the tools and runs `conclave demo`, which starts a
# conclaved on the embedded default config (Unix socket /tmp/conclave-4803.sock, TCP
# 127.0.0.1:4803) and shows three clients joining a group, exchanging messages and seeing
# its membership change.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p conclave-tools --bins
exec ./target/release/conclave demo
