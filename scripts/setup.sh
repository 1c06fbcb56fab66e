#!/usr/bin/env bash
# Installs what sandboxd and its tests need on a fresh Debian/Ubuntu machine (idempotent).
# - Debian packages: sudo and python-is-python3 (sandboxes use the host's /usr, so these are
#   what `sudo` and `python` are inside the base template), and tools the base template and tests
#   use (git, curl, tput, xattr tools, bubblewrap for the benchmark baseline), nftables (the
#   sandboxes' packet filter and, with iproute2's tc, their bandwidth limits), dnsmasq-base,
#   openssl and iperf3 (the network tests' fake internet: DNS, a TLS server, rate tests); with
#   --tests also docker-registry, skopeo, umoci, busybox-static and musl-tools (template tests).
# - With --tests: the official E2B SDKs of every tested row (README "Supported SDKs"): Python venvs
#   .venv (oldest supported) and .venv-newest, and tests/js/node_modules (npm ci).
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=0
[ "${1:-}" = "--tests" ] && want_tests=1

apt_pkgs=(sudo python3 python-is-python3 python3-venv git curl ncurses-bin vim attr libcap2-bin iproute2 bubblewrap procps nftables dnsmasq-base openssl iperf3)
# The template tests' own registry and images (docs/templates.md): a real registry on loopback,
# images made with umoci from busybox and programs built with gcc/musl-gcc, pushed with skopeo.
# mmdebstrap and dpkg-dev: the Debian image and the apt repository of the apt_install test.
# libnss-myhostname: *.localhost names for the HTTPS ingress test (test_tls_ingress.py); its
# package adds `myhostname` to the host's /etc/nsswitch.conf (sandboxes keep their own).
[ "$want_tests" = 1 ] && apt_pkgs+=(docker-registry skopeo umoci busybox-static musl-tools gcc libc6-dev mmdebstrap dpkg-dev libnss-myhostname)
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
  # One Python venv per SDK row, each with exactly the pins of its requirements file; a venv is
  # re-installed when its file (or the shared tooling file) changes.
  py=python3
  [ -x /usr/bin/python3 ] && py=/usr/bin/python3
  python_row() { # venv-dir requirements-file
    local dir=$1 req=$2 want
    want=$(cat tests/python/requirements-tools.txt "$req" | sha256sum | cut -d' ' -f1)
    if [ ! -x "$dir/bin/python" ]; then
      echo "setup: creating $dir" >&2
      "$py" -m venv "$dir"
    fi
    if [ "$(cat "$dir/.sandboxd-requirements" 2>/dev/null)" != "$want" ]; then
      echo "setup: installing $req into $dir" >&2
      "$dir/bin/pip" install -q -r "$req"
      echo "$want" >"$dir/.sandboxd-requirements"
    fi
  }
  python_row .venv tests/python/requirements-oldest.txt
  python_row .venv-newest tests/python/requirements-newest.txt

  # The session API's Python client (clients/python, docs/sessions.md) in .venv, where its suite
  # (tests/python/sessions) runs; re-installed when its files change. Its one dependency, httpx,
  # is already there (the e2b SDK's).
  want=$(find clients/python -type f \( -name '*.py' -o -name pyproject.toml \) | sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
  if [ "$(cat .venv/.sandbox-runtime 2>/dev/null)" != "$want" ]; then
    echo "setup: installing clients/python into .venv" >&2
    .venv/bin/pip install -q --no-deps ./clients/python
    rm -rf clients/python/build clients/python/*.egg-info
    echo "$want" >.venv/.sandbox-runtime
  fi

  # JS SDK tests: node >= 20.18.1 (what the e2b package requires; Debian 12's nodejs is 18) and
  # tests/js/node_modules from its package-lock.json, re-installed when the lock file changes.
  if ! node -e 'const [a, b, c] = process.versions.node.split(".").map(Number);
      process.exit(a > 20 || (a === 20 && (b > 18 || (b === 18 && c >= 1))) ? 0 : 1)' 2>/dev/null; then
    echo "setup: the JS SDK tests need node >= 20.18.1 and npm (found: $(node --version 2>/dev/null || echo none))" >&2
    exit 1
  fi
  want=$(sha256sum tests/js/package-lock.json | cut -d' ' -f1)
  if [ "$(cat tests/js/node_modules/.sandboxd-lock 2>/dev/null)" != "$want" ]; then
    echo "setup: installing tests/js/node_modules (npm ci)" >&2
    (cd tests/js && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    echo "$want" >tests/js/node_modules/.sandboxd-lock
  fi
fi

# The Debian root file system of the apt_install test (tests/python/oci_images.py), made once
# from the Debian mirror with mmdebstrap (about 40 s, 160 MiB) and kept; the tests themselves
# never reach the internet. SANDBOXD_TEST_CACHE moves the cache.
if [ "$want_tests" = 1 ]; then
  cache="${SANDBOXD_TEST_CACHE:-/var/cache/sandboxd-tests}"
  rootfs="$cache/debian-bookworm-apt.tar"
  if [ ! -s "$rootfs" ]; then
    echo "setup: making $rootfs (mmdebstrap)" >&2
    mkdir -p "$cache"
    mmdebstrap --quiet --variant=apt --skip=output/dev --format=tar bookworm "$rootfs.tmp" >/dev/null
    mv "$rootfs.tmp" "$rootfs"
  fi
fi

# cargo-fuzz for the fuzz smoke run (docs/fuzzing.md); the targets need a nightly toolchain.
if [ "$want_tests" = 1 ] && ! cargo fuzz --version >/dev/null 2>&1; then
  echo "setup: installing cargo-fuzz" >&2
  cargo install --locked -q cargo-fuzz
fi
if [ "$want_tests" = 1 ] && ! cargo +nightly --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null 2>&1; then
    echo "setup: installing the nightly toolchain (fuzzing)" >&2
    rustup toolchain install nightly --profile minimal
  else
    echo "setup: no nightly toolchain and no rustup: fuzzing will not run" >&2
  fi
fi

# cargo-deny for the dependency checks (deny.toml): licenses, bans, sources, advisories.
if [ "$want_tests" = 1 ] && ! cargo deny --version 2>/dev/null | grep -q '^cargo-deny 0\.20\.'; then
  echo "setup: installing cargo-deny" >&2
  cargo install --locked -q cargo-deny@0.20.2
fi

# Extra set-up of the code-interpreter template (kernels and their packages), if present.
if [ -x scripts/setup-interpreter.sh ]; then
  scripts/setup-interpreter.sh
fi
