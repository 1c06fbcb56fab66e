#!/usr/bin/env bash
# Runs sandboxd on this machine: installs what it needs, builds it, starts the daemon.
# Extra arguments go to `sandboxd serve` (for example --listen 127.0.0.1:3000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p sandboxd
exec target/x86_64-unknown-linux-gnu/release/sandboxd serve "$@"
