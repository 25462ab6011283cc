#!/usr/bin/env bash
# Install the system packages the tests use on a fresh Debian machine, as root:
# - Debian's Chromium and the playwright Python package, for the report's browser test.
#   Never runs `playwright install`: browsers come from apt, not playwright's servers.
# - Debian's PostgreSQL server binaries, for the ledger tests' throwaway server (they start
#   their own cluster in a temporary folder; nothing is configured system-wide or started here).
# Safe to run again: it installs only what is missing.
set -euo pipefail

PYTHON="${PYTHON:-python3}"

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! "$PYTHON" -c "import playwright.sync_api" >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "playwright>=1.45"
fi

echo "browser test ready: $(command -v chromium), playwright $("$PYTHON" -c 'from importlib.metadata import version; print(version("playwright"))')"
echo "ledger tests ready: $(ls -d /usr/lib/postgresql/*/bin | tail -1)"
