#!/usr/bin/env bash
# Installs what the code-interpreter kernels need (template `code-interpreter-v1`), idempotently.
#
# - Debian packages (into /usr, which every sandbox sees through its idmapped /usr overlay):
#   python3-ipykernel, python3-matplotlib, python3-pandas, python3-pip (to fill the layer below).
# - The interpreter layer, SANDBOXD_INTERPRETER_DIR (default /opt/sandboxd/interpreter), which the
#   template mounts read-only at the same path inside the sandbox (/usr/local is not visible there):
#     python/   pip --target: e2b-charts (matplotlib -> chart dicts), pydantic 2 (its dependency;
#               Debian 12 only has pydantic 1), bash_kernel and filetype. Added to the kernels'
#               PYTHONPATH by `sandboxd interpreter`.
#     deno/     the npm package `deno` (its Jupyter kernel serves javascript and typescript)
#     bin/deno  symlink to the deno binary
#     .stamp    versions installed; a second run with the same versions does nothing
# Options: --force reinstalls the layer; --with-r also installs Debian's IRkernel (r-cran-irkernel,
# ~35 MB download) so that `language="r"` works.
set -euo pipefail

DIR="${SANDBOXD_INTERPRETER_DIR:-/opt/sandboxd/interpreter}"
DENO_VERSION="${SANDBOXD_DENO_VERSION:-2.9.6}"
# e2b-charts 1.0.0 declares matplotlib>=3.10/numpy>=2, but works with Debian 12's matplotlib 3.6
# and numpy 1.24 (checked by tests/python/interpreter); installing its declared deps would shadow
# Debian's numpy and break Debian's pandas, so deps are listed here explicitly.
PY_PKGS=(e2b-charts==1.0.0 "pydantic>=2.9,<3" bash_kernel==0.10.0 filetype)
STAMP_WANT="deno=${DENO_VERSION} py=${PY_PKGS[*]} layout=1"

force=0
with_r=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    --with-r) with_r=1 ;;
    *) echo "setup-interpreter: unknown option $arg" >&2; exit 2 ;;
  esac
done

apt_pkgs=(python3 python3-ipykernel python3-matplotlib python3-pandas python3-pip)
[ "$with_r" = 1 ] && apt_pkgs+=(r-cran-irkernel)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup-interpreter: missing Debian packages: ${missing[*]} (run as root)" >&2
    exit 1
  fi
  echo "setup-interpreter: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "$force" = 0 ] && [ -f "$DIR/.stamp" ] && [ "$(cat "$DIR/.stamp")" = "$STAMP_WANT" ] \
  && [ -x "$DIR/bin/deno" ] && [ -d "$DIR/python/e2b_charts" ]; then
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup-interpreter: npm not found (needed once to fetch deno; run as root)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
fi

echo "setup-interpreter: filling $DIR" >&2
mkdir -p "$DIR"
tmp="$(mktemp -d "$DIR/.new.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# Python packages for the kernels (Debian's python3 runs them; pip's --target skips PEP 668).
/usr/bin/python3 -m pip install -q --root-user-action=ignore --disable-pip-version-check --no-warn-script-location \
  --no-compile --target "$tmp/python" --no-deps "${PY_PKGS[@]}"
# pydantic's own dependencies (binary pydantic-core wheel for this Python).
/usr/bin/python3 -m pip install -q --root-user-action=ignore --disable-pip-version-check --no-warn-script-location \
  --no-compile --target "$tmp/python-deps" "pydantic>=2.9,<3"
cp -a "$tmp/python-deps/." "$tmp/python/"
rm -rf "$tmp/python-deps" "$tmp/python/bin"
# Keep only what Debian lacks: typing_extensions from pip is newer and needed by pydantic 2.

# deno from npm (the platform binary comes as an optional dependency).
npm install --silent --no-audit --no-fund --prefix "$tmp/deno" "deno@${DENO_VERSION}" >/dev/null 2>&1
deno_bin="$(find "$tmp/deno/node_modules/@deno" -maxdepth 2 -type f -name deno | head -n1)"
if [ -z "$deno_bin" ]; then
  echo "setup-interpreter: the npm package deno@${DENO_VERSION} has no binary for this platform" >&2
  exit 1
fi
chmod 0755 "$deno_bin"
mkdir -p "$tmp/bin"
ln -s "../deno/${deno_bin#"$tmp/deno/"}" "$tmp/bin/deno"
"$tmp/bin/deno" --version >/dev/null

echo "$STAMP_WANT" >"$tmp/.stamp"
chmod -R a+rX "$tmp"
# Swap in the new layer.
for d in python deno bin .stamp; do
  rm -rf "${DIR:?}/$d"
  mv "$tmp/$d" "$DIR/$d"
done
echo "setup-interpreter: done ($("$DIR/bin/deno" --version | head -n1))" >&2
