#!/usr/bin/env bash
# The README's test command: builds the binaries the integration tests start, then runs
# every test of the workspace (unit, integration against real daemons, simulator sample).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
cargo test --workspace
