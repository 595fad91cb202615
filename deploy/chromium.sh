#!/usr/bin/env bash
# Debian's chromium for the dashboard's browser tests (tests/dashboard), installed once where missing.
# Playwright's own browser download is not used. Never fails: without a browser those tests skip.
set -u
if [ -x "${KITRADING_CHROMIUM:-/usr/bin/chromium}" ]; then exit 0; fi
exec bash "$(dirname "$0")/apt_install.sh" chromium chromium "the dashboard browser tests"
