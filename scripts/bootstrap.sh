#!/usr/bin/env bash
# Find the two tools every make target needs, without touching the system Python:
#   - a Python the project supports (requires-python: 3.11 to 3.13), checked for the venv module;
#   - uv: the one on PATH if there is one, else one installed by pip into a virtual environment
#     of its own, .tools/uv/ (gitignored), made with that Python. Never `pip install` into the
#     system Python: Debian 12/13, Ubuntu 24.04 and Homebrew refuse it (PEP 668).
#
# Usage: scripts/bootstrap.sh [--print python|uv]
#   With no argument it checks both and prints nothing on success. --print uv prints the
#   uv command to use (installing it on first use), --print python the interpreter's path.
# Environment: PYTHON picks the interpreter [python3]; UV picks uv [uv on PATH, else .tools/uv].
# Exit status 2 with a message saying what to install when the Python is unusable.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$REPO_ROOT/.tools"
UV_MIN="0.5"
PRINT=""

die() { echo "bootstrap: error: $*" >&2; exit 2; }
say() { echo "bootstrap: $*" >&2; }

case "${1:-}" in
  "") ;;
  --print) PRINT="${2:?--print needs python or uv}" ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (see --help)" ;;
esac

# ------------------------------------------------------------------ the interpreter
python_bin="${PYTHON:-python3}"
if ! python_path="$(command -v "$python_bin")"; then
  die "no '$python_bin' on PATH. Install Python 3.11, 3.12 or 3.13 (Debian/Ubuntu: \
apt-get install python3 python3-venv), or name one: make PYTHON=/path/to/python3.12 ..."
fi
# One run of the interpreter: its version, whether venv can bootstrap pip (Debian and Ubuntu
# ship ensurepip in a separate package, python3-venv) and the interpreter itself (not a shim
# or wrapper that found it, as pyenv and asdf put on PATH).
facts="$("$python_path" -c '
import sys
try:
    import ensurepip, venv
    venv_ok = "venv"
except ImportError:
    venv_ok = "no-venv"
print("%d.%d" % sys.version_info[:2], venv_ok, sys.executable)' 2>/dev/null)" \
  || die "'$python_path' does not run"
read -r version venv_ok executable <<<"$facts"
case "$version" in
  3.11|3.12|3.13) ;;
  *) die "'$python_path' is Python $version; this project needs 3.11, 3.12 or 3.13 \
(pyproject.toml requires-python). Install one (Debian 12: python3 is 3.11; Ubuntu 24.04: \
3.12; Debian 13: 3.13) and run: make PYTHON=/path/to/python3.1x ..." ;;
esac
if [ "$venv_ok" != venv ]; then
  die "'$python_path' (Python $version) has no venv/ensurepip module. Install it: \
apt-get install python3-venv (or python$version-venv), then run make again."
fi
[ -z "$executable" ] || python_path="$executable"

# ------------------------------------------------------------------ uv
uv_cmd=""
if [ -n "${UV:-}" ]; then
  uv_cmd="$UV"
elif command -v uv >/dev/null 2>&1; then
  uv_cmd="$(command -v uv)"
elif [ -x "$TOOLS/uv/bin/uv" ]; then
  uv_cmd="$TOOLS/uv/bin/uv"
elif [ -n "$PRINT" ] && [ "$PRINT" = uv ]; then
  say "installing uv into $TOOLS/uv (a virtual environment of its own; the system Python is untouched)"
  rm -rf "$TOOLS/uv"
  mkdir -p "$TOOLS"
  "$python_path" -m venv "$TOOLS/uv" \
    || die "'$python_path -m venv $TOOLS/uv' failed; install python3-venv and run make again"
  "$TOOLS/uv/bin/python" -m pip install --quiet --disable-pip-version-check "uv>=$UV_MIN" \
    || { rm -rf "$TOOLS/uv"; die "pip could not install uv>=$UV_MIN from the package index (network, proxy or pip.conf?)"; }
  uv_cmd="$TOOLS/uv/bin/uv"
fi

case "$PRINT" in
  "") ;;
  python) echo "$python_path" ;;
  uv) echo "$uv_cmd" ;;
  *) die "--print takes python or uv, not '$PRINT'" ;;
esac
