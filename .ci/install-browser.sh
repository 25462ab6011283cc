#!/usr/bin/env bash
# Install what the browser test (pytest -m browser) needs on a fresh Debian machine, as root:
# the distribution's Chromium and the playwright Python package. Never runs
# `playwright install`: browsers come from apt, not from playwright's download servers.
# Safe to run again: it does nothing when both are already present.
set -euo pipefail

PYTHON="${PYTHON:-python3}"

if ! command -v chromium >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
fi

if ! "$PYTHON" -c "import playwright.sync_api" >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "playwright>=1.45"
fi

echo "browser test ready: $(command -v chromium), playwright $("$PYTHON" -c 'from importlib.metadata import version; print(version("playwright"))')"
