#!/usr/bin/env bash
# Build sandboxd in release mode and run the full benchmark (several minutes; root needed).
# Writes docs/bench-results.json and prints the Markdown table. Extra arguments go to
# `sandboxd bench` (for example --quick, --cycle-seconds 10, --big-file-mib 256).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "bench.sh: sandboxd bench starts namespace sandboxes: run it as root" >&2
    exit 1
fi
cargo build --release -p sandboxd
exec ./target/x86_64-unknown-linux-gnu/release/sandboxd bench --json docs/bench-results.json "$@"
