#!/usr/bin/env bash
# Prepare a development environment from scratch: find Python 3.12+, install uv into a
# private tool venv, and sync the locked dependencies into .venv. Idempotent.
#   source scripts/bootstrap.sh   -> exports PY (the venv's python)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

python_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; }

find_python() {
    local want candidates=()
    want="$(tr -d '[:space:]' < .python-version 2>/dev/null || echo 3.12)"
    local pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
    if command -v pyenv >/dev/null 2>&1; then pyenv_root="$(pyenv root)"; fi
    # 1. the version .python-version names, from pyenv; 2. any newer pyenv version;
    # 3. python3.12/3.13 on PATH; 4. the Python bundled with the Google Cloud CLI.
    for d in "$pyenv_root"/versions/"$want"* "$pyenv_root"/versions/3.1[2-9]*; do
        [ -x "$d/bin/python3" ] && candidates+=("$d/bin/python3")
    done
    for c in python3.12 python3.13 python3; do
        command -v "$c" >/dev/null 2>&1 && candidates+=("$(command -v "$c")")
    done
    if command -v gcloud >/dev/null 2>&1; then
        candidates+=("$(gcloud info --format='value(basic.python_location)' 2>/dev/null || true)")
    fi
    for c in "${candidates[@]}"; do
        if [ -n "$c" ] && python_ok "$c"; then echo "$c"; return 0; fi
    done
    return 1
}

BASE_PY="$(find_python)" || {
    echo "error: no Python 3.12+ found. Install it with 'pyenv install 3.12' and run this again." >&2
    exit 1
}
TOOLS="$ROOT/.cache/tools"
if [ ! -x "$TOOLS/bin/uv" ]; then
    echo "bootstrap: installing uv with $BASE_PY" >&2
    "$BASE_PY" -m venv "$TOOLS"
    "$TOOLS/bin/pip" install --quiet 'uv>=0.9,<1'
fi
export UV_PYTHON_DOWNLOADS=never
"$TOOLS/bin/uv" sync --quiet --locked --python "$BASE_PY"
export PY="$ROOT/.venv/bin/python"
