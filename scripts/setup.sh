#!/usr/bin/env bash
# One-step set-up on a fresh Debian/Ubuntu machine with Python >= 3.10:
#   system library for headless MuJoCo rendering, a virtual environment in .venv, pvrw with its test extra.
# pvrw picks the GL backend itself at import time (EGL with an NVIDIA GPU, OSMesa otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
if ! ldconfig -p 2>/dev/null | grep -q libOSMesa; then
  $SUDO apt-get update -qq || true
  $SUDO apt-get install -y -qq libosmesa6 >/dev/null
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test,ray]"
