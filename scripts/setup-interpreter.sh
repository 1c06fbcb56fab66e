#!/usr/bin/env bash
# Installs what the code-interpreter kernels need (template `code-interpreter-v1`), idempotently.
#
# - Debian packages (into /usr, which every sandbox sees through its idmapped /usr overlay):
#   python3-ipykernel (the Python kernel), python3-pip (to fill the layer below) and
#   r-cran-irkernel (the R kernel, `language="r"`; skip it with --no-r).
# - The interpreter layer, SANDBOXD_INTERPRETER_DIR (default /opt/sandboxd/interpreter), which the
#   template mounts read-only at the same path inside the sandbox (/usr/local is not visible there):
#     python/   pip --target --no-deps: the pinned packages of scripts/interpreter-requirements.txt
#               (E2B's template set: numpy, pandas, matplotlib, scipy, scikit-learn, seaborn,
#               plotly, ...), plus e2b-charts (matplotlib -> chart dicts), bash_kernel and
#               filetype. First on the kernels' PYTHONPATH (`sandboxd interpreter`), so these
#               shadow any Debian copies: one consistent set.
#     deno/     the npm package `deno` (its Jupyter kernel serves javascript and typescript)
#     bin/deno  symlink to the deno binary
#     .stamp    versions installed; a second run with the same versions does nothing
# Options: --force reinstalls the layer; --no-r skips the R kernel.
set -euo pipefail

DIR="${SANDBOXD_INTERPRETER_DIR:-/opt/sandboxd/interpreter}"
DENO_VERSION="${SANDBOXD_DENO_VERSION:-2.9.6}"
REQUIREMENTS="$(dirname "$0")/interpreter-requirements.txt"
# e2b-charts 1.0.0 declares matplotlib>=3.10/numpy>=2, but works with the template's matplotlib
# 3.9 and numpy 1.26 (checked by tests/python/interpreter): installed without its declared deps.
PY_PKGS=(e2b-charts==1.0.0 bash_kernel==0.10.0 filetype==1.2.0)
REQ_SUM="$(grep -v '^#' "$REQUIREMENTS" | sha256sum | cut -c1-16)"
STAMP_WANT="deno=${DENO_VERSION} py=${PY_PKGS[*]} requirements=${REQ_SUM} layout=2"

force=0
with_r=1
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    --no-r) with_r=0 ;;
    --with-r) with_r=1 ;; # the default now; kept for older callers
    *) echo "setup-interpreter: unknown option $arg" >&2; exit 2 ;;
  esac
done

apt_pkgs=(python3 python3-ipykernel python3-pip)
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
# Binary wheels only, exact pins, no resolver: the set is the one in the requirements file.
/usr/bin/python3 -m pip install -q --root-user-action=ignore --disable-pip-version-check --no-warn-script-location \
  --no-compile --only-binary=:all: --no-deps --target "$tmp/python" -r "$REQUIREMENTS" "${PY_PKGS[@]}"
rm -rf "$tmp/python/bin"
# (A host python3-matplotlib's nspkg .pth claims mpl_toolkits at start-up: the kernels' extension
# puts the layer's first, see sandboxd_ipython.py; this check ignores the warning it causes.)
PYTHONPATH="$tmp/python" /usr/bin/python3 -W ignore::UserWarning -c \
  'import numpy, pandas, matplotlib, scipy, sklearn, seaborn, plotly, PIL, e2b_charts, pydantic'

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
