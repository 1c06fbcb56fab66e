#!/usr/bin/env bash
# Runs every test of sandboxd: formatting and lints, Rust unit and integration tests (privileged
# ones included: run as root), then the Python and JS tests with the official E2B SDKs (each
# supported SDK row) against a real daemon. Installs what it needs on the way. With CI=true,
# privileged tests fail instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

scripts/setup.sh --tests

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo deny (deny.toml)"
cargo deny --color never check licenses bans sources
# Advisories need the RustSec database, a git clone from GitHub, which this project's machines
# and CI cannot reach (only the package registries): checked against a database already on
# disk, and otherwise reported as not checked.
if compgen -G "$HOME/.cargo/advisory-dbs/*/crates" >/dev/null; then
  cargo deny --color never check --disable-fetch advisories
else
  echo "note: advisories NOT checked: no RustSec database on disk and GitHub is unreachable"
fi
echo "== cargo build"
cargo build --workspace --all-targets

echo "== Rust tests"
# Privileged tests (namespace sandboxes: root) are #[ignore = "privileged: ..."], so a run that
# cannot run them reports them as skipped, never as passed. As root every one runs (and one
# that still cannot run fails); with CI=true a run without root stops here.
ignored_nextest=() ignored_libtest=()
if [ "$(id -u)" = 0 ]; then
  ignored_nextest=(--run-ignored all) ignored_libtest=(--include-ignored)
elif [ "${CI:-}" = true ]; then
  echo "CI=true but not root: the privileged tests would be skipped" >&2
  exit 1
else
  echo "note: not root: the privileged tests are reported as skipped" >&2
fi
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "${ignored_nextest[@]}"
else
  cargo test --workspace --no-fail-fast -- "${ignored_libtest[@]}"
fi

# From here on a failing step does not stop the next one; the exit status covers all of them.
status=0

echo "== Fuzz smoke run (docs/fuzzing.md)"
scripts/fuzz.sh smoke 15 || status=1

# The SDK suites run once per row of README "Supported SDKs" (pins: tests/python/requirements-*.txt,
# tests/js/package.json); a failing row does not stop the next one, the exit status covers all.
# Four workers on a 2-core machine make timing noisy: a failed test is retried once, and every
# retry is reported ("R" in the progress line, "rerun" in the summary) so flakes stay visible.
# Extra arguments go to the first Python row.
pytest_args=(-n 4 -p no:cacheprovider --reruns 1 --reruns-delay 1 -rfER)

# (tests/python/sessions: the session API through its client sandbox_runtime, installed by setup.sh)
echo "== Python SDK tests: oldest supported SDKs (.venv), whole suite"
.venv/bin/python -m pytest tests/python "${pytest_args[@]}" --ignore=tests/python/attack "$@" || status=1

echo "== Python SDK tests: newest SDKs (.venv-newest), representative subset"
# create, commands, files, PTY, watch, pause/resume, snapshots, volumes, network, templates, HTTPS ingress,
# code interpreter,
# the README
newest_subset=(
  tests/python/test_quickstart.py tests/python/test_control_plane.py
  tests/python/envd/test_process_commands.py tests/python/envd/test_process_pty.py
  tests/python/envd/test_files_sync.py tests/python/envd/test_files_async.py
  tests/python/envd/test_watch_sync.py tests/python/envd/test_watch_async.py
  tests/python/test_pause.py tests/python/test_snapshot_api.py tests/python/test_volumes.py
  tests/python/test_network_egress.py tests/python/test_network_settings.py tests/python/test_secrets.py
  tests/python/test_templates.py tests/python/test_tls_ingress.py
  tests/python/interpreter/test_execution.py tests/python/interpreter/test_contexts.py
  tests/python/interpreter/test_parity.py
  tests/python/test_readme.py
)
.venv-newest/bin/python -m pytest "${newest_subset[@]}" "${pytest_args[@]}" || status=1

echo "== JS SDK tests (tests/js, node --test): ${SANDBOXD_JS_SDK_ROWS:-all} rows"
(cd tests/js && node --test --test-reporter=spec --test-concurrency=2 ./*.test.mjs) || status=1

echo "== Attack suite"
# Escape attempts from inside sandboxes and through the API, checked by host-side canaries
# (docs/security.md). Abuse attempts measure a neighbour's latency, so they run alone, after.
# A failed attempt is retried once and reported as a rerun ("R", and in the summary): a rerun
# that escaped is still visible there, while a flaky attempt does not hide the others' result.
.venv/bin/python -m pytest tests/python/attack -n 2 -p no:cacheprovider --reruns 1 --reruns-delay 1 -rfER -m "not abuse" || status=1
.venv/bin/python -m pytest tests/python/attack -p no:cacheprovider --reruns 1 --reruns-delay 1 -rfER -m "abuse and not open_hole" || status=1
exit "$status"
