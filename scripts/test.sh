#!/usr/bin/env bash
# Runs every test of sandboxd: formatting and lints, Rust unit and integration tests (privileged
# ones included: run as root), then the Python tests with the official E2B SDKs against a real
# daemon. Installs what it needs on the way. With CI=true, privileged tests fail instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

scripts/setup.sh --tests

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo build"
cargo build --workspace --all-targets

echo "== Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

echo "== Python SDK tests"
# Four workers on a 2-core machine make timing noisy: a failed test is retried once, and every
# retry is reported ("R" in the progress line, "rerun" in the summary) so flakes stay visible.
.venv/bin/python -m pytest tests/python -n 4 -p no:cacheprovider --reruns 1 --reruns-delay 1 -rfER "$@"
