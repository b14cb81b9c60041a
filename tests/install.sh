#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian/Ubuntu machine:
# system packages (Fashion-MNIST for dataset tests, Chromium for browser
# tests, venv where Python lacks it) and the Python test requirements. Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
PACKAGES="dataset-fashion-mnist chromium"
# The packaging and Space tests build virtualenvs; Debian's own Python needs
# its pythonX.Y-venv package for that (ensurepip), a pyenv or python.org one not.
if ! python -c "import ensurepip, venv" 2>/dev/null; then
  PACKAGES="$PACKAGES python$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv"
fi
if command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
fi
python -m pip install -q -r requirements-test.txt
