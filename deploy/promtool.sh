#!/usr/bin/env bash
# promtool (Prometheus's own checker) for the tests of deploy/observability: the config, the alert
# rules (unit-tested on synthetic series) and every dashboard query, parsed by Prometheus itself
# (tests/deploy/test_observability.py). Taken once from Debian's `prometheus` package with
# `apt-get download` + `dpkg -x` (nothing is installed system-wide, no daemon), cached as
# $KITRADING_CACHE/promtool/promtool (default ~/.cache/kitrading). Never fails: without it those
# tests skip and the structural checks still run. Prints the binary's path when there is one.
set -u
if command -v promtool >/dev/null 2>&1; then command -v promtool; exit 0; fi
CACHE_ROOT="${KITRADING_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kitrading}"
TARGET="$CACHE_ROOT/promtool/promtool"
if [ -x "$TARGET" ]; then echo "$TARGET"; exit 0; fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
  echo "promtool: not here and no apt-get/dpkg to fetch it; its tests will skip" >&2; exit 0
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
echo "promtool: fetching Debian's prometheus package for promtool (once, ~19 MB)" >&2
cd "$WORK" || exit 0
if ! apt-get download -q prometheus >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
  if [ "$(id -u)" = "0" ] || [ -n "$SUDO" ]; then $SUDO apt-get update -q >/dev/null 2>&1; fi
  apt-get download -q prometheus >/dev/null 2>&1 \
    || { echo "promtool: apt-get download prometheus failed; its tests will skip" >&2; exit 0; }
fi
dpkg -x prometheus_*.deb extracted 2>/dev/null && [ -x extracted/usr/bin/promtool ] \
  || { echo "promtool: the package has no usr/bin/promtool; its tests will skip" >&2; exit 0; }
mkdir -p "$(dirname "$TARGET")" && cp extracted/usr/bin/promtool "$TARGET.tmp" && mv "$TARGET.tmp" "$TARGET"
echo "$TARGET"
exit 0
