#!/usr/bin/env bash
# Set up rollingworld for this checkout, then `./rollingworld ...` runs it.
#   ./setup.sh         the engine (play, record, train)
#   ./setup.sh test    the engine plus what the tests need (pytest, video, gymnasium, and Xvfb for window tests)
# Where it installs:
#   - an active venv or conda env: there;
#   - else a system Python that refuses pip (PEP 668: Debian, Ubuntu) or ROLLINGWORLD_VENV=1: a project venv, .venv,
#     made here (the ./rollingworld launcher finds it); ROLLINGWORLD_VENV_OPTIONS adds words to `python -m venv`;
#   - else the Python found ($PYTHON, default python3).
# torch: a torch that is already installed (a CUDA build, say) is kept; with none, the CPU wheel torch==2.13.0 is
# installed (on the project's CPU machines it lies on disk; a looser pin would fetch a multi-GB CUDA build).
# The package is installed editable (-e): `./rollingworld` runs this checkout, edits included.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
if ! command -v "$PY" >/dev/null 2>&1; then
    echo "setup.sh: no $PY found: install Python 3.10 or newer (Debian/Ubuntu: sudo apt install python3 python3-venv)" >&2
    exit 1
fi
active_env() { [[ -n "${VIRTUAL_ENV:-}" || -n "${CONDA_PREFIX:-}" ]]; }
externally_managed() {
    "$PY" -c 'import os, sys, sysconfig
sys.exit(0 if sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'
}
if ! active_env; then
    if [[ -x .venv/bin/python ]]; then
        PY=.venv/bin/python  # made by an earlier run
    elif [[ "${ROLLINGWORLD_VENV:-}" == "1" ]] || externally_managed; then
        echo "setup.sh: making a project venv in .venv (the system Python is externally managed, PEP 668, or ROLLINGWORLD_VENV=1)" >&2
        # shellcheck disable=SC2086  # ROLLINGWORLD_VENV_OPTIONS: extra words for venv (--system-site-packages)
        if ! "$PY" -m venv ${ROLLINGWORLD_VENV_OPTIONS:-} .venv; then
            rm -rf .venv
            echo "setup.sh: could not make a venv: install the venv module (Debian/Ubuntu: sudo apt install python3-venv)" >&2
            exit 1
        fi
        PY=.venv/bin/python
    fi
fi
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
echo "setup.sh: rollingworld is installed for $("$PY" -c 'import sys; print(sys.executable)'); run it with ./rollingworld" >&2
