#!/usr/bin/env bash
# Debian's chromium for the dashboard's browser tests (tests/dashboard), installed once where missing.
# Playwright's own browser download is not used. Never fails: without a browser those tests skip.
set -u
if command -v chromium >/dev/null 2>&1 || [ -x "${KITRADING_CHROMIUM:-/usr/bin/chromium}" ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "chromium: not installed and no root to apt-get it; the dashboard browser tests will skip" >&2; exit 0
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium: not installed and no apt-get here; the dashboard browser tests will skip" >&2; exit 0
fi
echo "chromium: installing Debian's chromium package for the dashboard browser tests (once)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; then
  $SUDO apt-get update -q >/dev/null 2>&1
  $SUDO apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
    || echo "chromium: apt-get install failed; the dashboard browser tests will skip" >&2
fi
exit 0
