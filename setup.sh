#!/usr/bin/env bash
# Set up rollingworld in the current Python environment (a venv if one is active).
#   ./setup.sh         the engine (play, record, train)
#   ./setup.sh test    the engine plus what the tests need (pytest, video, gymnasium, and Xvfb for window tests)
# torch: a torch that is already installed (a CUDA build, say) is kept; with none, the CPU wheel torch==2.13.0 is
# installed (on the project's CPU machines it lies on disk; a looser pin would fetch a multi-GB CUDA build).
# The package is installed editable (-e): the `rollingworld` command runs this checkout, edits included.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install --quiet "torch==2.13.0"
fi
if [[ "${1:-}" == "test" ]]; then
    "$PY" -m pip install --quiet -e ".[test]"
    if ! command -v Xvfb >/dev/null 2>&1; then
        if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
            apt-get update -qq && apt-get install -y -qq xvfb >/dev/null
        else
            echo "setup.sh: Xvfb is missing; window tests will be skipped (install the xvfb package)" >&2
        fi
    fi
else
    "$PY" -m pip install --quiet -e ".[video,gym]"
fi
