#!/usr/bin/env bash
# Installs what sandboxd and its tests need on a fresh Debian/Ubuntu machine (idempotent).
# - Debian packages: sudo and python-is-python3 (sandboxes use the host's /usr, so these are
#   what `sudo` and `python` are inside the base template), and tools the base template and tests
#   use (git, curl, tput, xattr tools, bubblewrap for the benchmark baseline).
# - With --tests: a Python venv in .venv with the official E2B SDKs pinned to the tested versions.
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=0
[ "${1:-}" = "--tests" ] && want_tests=1

apt_pkgs=(sudo python3 python-is-python3 python3-venv git curl ncurses-bin vim attr iproute2 bubblewrap procps)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]} (run as root or install them)" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi

if [ "$want_tests" = 1 ]; then
  py=python3
  [ -x /usr/bin/python3 ] && py=/usr/bin/python3
  if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    "$py" -m venv .venv
  fi
  if ! .venv/bin/python -c 'import e2b, e2b_code_interpreter, pytest, pytest_asyncio, pytest_timeout, xdist, pytest_rerunfailures' 2>/dev/null; then
    echo "setup: installing Python test dependencies into .venv" >&2
    .venv/bin/pip install -q -r tests/python/requirements.txt
  fi
fi

# Extra set-up of the code-interpreter template (kernels and their packages), if present.
if [ -x scripts/setup-interpreter.sh ]; then
  scripts/setup-interpreter.sh
fi
