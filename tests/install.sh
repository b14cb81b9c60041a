#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian/Ubuntu machine:
# system packages (Fashion-MNIST for dataset tests, Chromium for browser
# tests) and the Python test requirements. Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    dataset-fashion-mnist chromium >/dev/null
fi
python -m pip install -q -r requirements-test.txt
