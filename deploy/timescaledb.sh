#!/usr/bin/env bash
# A local PostgreSQL with the TimescaleDB extension: the embedded server's own PostgreSQL (the
# `pgserver` wheel) plus TimescaleDB built from source against it. Built once, cached, and used by the
# tests of the TimescaleDB path (tests/data/test_data_timescale.py); users can run it too, to try the
# hypertable path without Docker (docs/data.md, "TimescaleDB, tested for real").
#
#   deploy/timescaledb.sh [PYTHON]          # build (first time, ~30 s on 2 cores) or reuse; prints the bin dir
#   deploy/timescaledb.sh --check [PYTHON]  # exit 0 when the cached build exists for this PostgreSQL
#
# Source: Debian's `timescaledb` source package (the Apache-2.0 part; Debian drops the TSL-licensed
# directory, "+dfsg"), fetched from deb.debian.org and checked against its pinned sha256. Hypertables,
# chunks and time_bucket are in that part; compression and continuous aggregates are not.
# Built with the embedded server's pg_config, so the extension matches its PostgreSQL (16.2) exactly.
# Needs curl and a C compiler (as the llama-cpp-python build does); cmake from PATH, else from PyPI.
#
# Environment:
#   PYTHON           interpreter of the venv holding `pgserver` (default .venv/bin/python; or 1st arg)
#   KITRADING_CACHE  cache root (default ~/.cache/kitrading); the install lands in
#                    $KITRADING_CACHE/timescaledb/<version>-pg<pg version>/pgserver/pginstall
set -euo pipefail

TIMESCALEDB_VERSION="2.19.3"
SOURCE_URL="https://deb.debian.org/debian/pool/main/t/timescaledb/timescaledb_${TIMESCALEDB_VERSION}+dfsg.orig.tar.xz"
SOURCE_SHA256="09fd11191768c220b071f61a108df9bd1df5522fbe4e7c2229f30f69b195454a"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=build
for arg in "$@"; do
  case "$arg" in
    --check) MODE=check ;;
    -*) echo "usage: $0 [--check] [PYTHON]" >&2; exit 2 ;;
    *) PYTHON="$arg" ;;
  esac
done
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
log() { echo "[timescaledb.sh] $*" >&2; }

PGINSTALL="$("$PYTHON" -W ignore -c 'import pathlib, pgserver; print(pathlib.Path(pgserver.__file__).parent / "pginstall")')"
PG_VERSION="$("$PGINSTALL/bin/pg_config" --version | awk '{print $2}')"
CACHE_ROOT="${KITRADING_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kitrading}"
DIR="$CACHE_ROOT/timescaledb/$TIMESCALEDB_VERSION-pg$PG_VERSION"
# The wheel's layout is kept: its binaries find their libraries at $ORIGIN/../../../pgserver.libs.
INSTALL="$DIR/pgserver/pginstall"
DONE="$INSTALL/share/postgresql/extension/timescaledb--$TIMESCALEDB_VERSION.sql"

if [[ -f "$DONE" ]]; then
  [[ "$MODE" == check ]] || echo "$INSTALL/bin"
  exit 0
fi
if [[ "$MODE" == check ]]; then log "no TimescaleDB $TIMESCALEDB_VERSION build for PostgreSQL $PG_VERSION in $DIR"; exit 1; fi

mkdir -p "$DIR"
exec 9>"$DIR/.lock"  # one builder at a time (parallel test sessions may race)
flock 9
if [[ ! -f "$DONE" ]]; then
  start=$(date +%s)
  log "building TimescaleDB $TIMESCALEDB_VERSION for PostgreSQL $PG_VERSION"
  TMP="$(mktemp -d "$DIR/.build.XXXXXX")"
  trap 'rm -rf "$TMP"' EXIT
  curl -sSfL --retry 3 -o "$TMP/src.tar.xz" "$SOURCE_URL"
  echo "$SOURCE_SHA256  $TMP/src.tar.xz" | sha256sum -c --quiet -
  tar -xf "$TMP/src.tar.xz" -C "$TMP"
  SRC="$TMP/timescaledb-$TIMESCALEDB_VERSION"
  CMAKE="$(command -v cmake || true)"
  if [[ -z "$CMAKE" ]]; then
    "$PYTHON" -m pip install -q --target "$TMP/cmake" cmake
    CMAKE="$TMP/cmake/bin/cmake"
    export PYTHONPATH="$TMP/cmake${PYTHONPATH:+:$PYTHONPATH}"
  fi
  # APACHE_ONLY: the TSL directory is not in the source. No OpenSSL: pgserver's PostgreSQL has none.
  "$CMAKE" -S "$SRC" -B "$SRC/build" -DPG_CONFIG="$PGINSTALL/bin/pg_config" -DCMAKE_BUILD_TYPE=Release \
    -DAPACHE_ONLY=ON -DUSE_OPENSSL=0 -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
    -DSEND_TELEMETRY_DEFAULT=OFF >"$TMP/cmake.log" 2>&1 || { tail -30 "$TMP/cmake.log" >&2; exit 1; }
  make -C "$SRC/build" -j"${CMAKE_BUILD_PARALLEL_LEVEL:-2}" >"$TMP/make.log" 2>&1 || { tail -30 "$TMP/make.log" >&2; exit 1; }
  make -C "$SRC/build" install DESTDIR="$TMP/stage" >"$TMP/install.log" 2>&1 || { tail -30 "$TMP/install.log" >&2; exit 1; }
  # A relocatable copy of the embedded PostgreSQL with the extension's files merged in.
  mkdir -p "$TMP/copy/pgserver"
  cp -a "$PGINSTALL" "$TMP/copy/pgserver/pginstall"
  cp -a "$(dirname "$(dirname "$PGINSTALL")")/pgserver.libs" "$TMP/copy/pgserver.libs"
  cp -a "$TMP/stage$PGINSTALL/." "$TMP/copy/pgserver/pginstall/"
  rm -rf "$DIR/pgserver" "$DIR/pgserver.libs"
  mv "$TMP/copy/pgserver.libs" "$DIR/pgserver.libs"
  mv "$TMP/copy/pgserver" "$DIR/pgserver"
  log "built in $(( $(date +%s) - start )) s: $INSTALL"
fi
flock -u 9
echo "$INSTALL/bin"
