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
# directory, "+dfsg"), fetched with apt itself (`apt-get source --download-only`) and its .orig tarball
# checked against the pinned sha256. Hypertables, chunks and time_bucket are in that part; compression
# and continuous aggregates are not. Built with the embedded server's pg_config, so the extension
# matches its PostgreSQL (16.2) exactly.
#
# No archive is named here: the deb-src entry is derived from this machine's own apt sources (the URIs,
# Components and Signed-By of its entry for its Debian release), with the suite that carries the pinned
# version (DEBIAN_SUITE: bookworm has no timescaledb; trixie has 2.19.3). It goes into a private apt
# directory inside the build folder (its own lists and cache, no lock), so `apt-get update` needs no
# root and the system's apt state is left alone; apt checks the signed Release -> Sources -> .dsc ->
# tarball chain, and the sha256 below pins the tarball itself. Without apt (or Debian's archive in the
# apt sources), point TIMESCALEDB_SOURCE_TARBALL at a copy of timescaledb_2.19.3+dfsg.orig.tar.xz.
# Needs apt-get and a C compiler (as the llama-cpp-python build does); cmake from PATH, else from PyPI.
#
# Environment:
#   PYTHON           interpreter of the venv holding `pgserver` (default .venv/bin/python; or 1st arg)
#   KITRADING_CACHE  cache root (default ~/.cache/kitrading); the install lands in
#                    $KITRADING_CACHE/timescaledb/<version>-pg<pg version>/pgserver/pginstall
#   TIMESCALEDB_SOURCE_TARBALL  a local .orig tarball to build from instead of fetching (same sha256)
set -euo pipefail

TIMESCALEDB_VERSION="2.19.3"
DEBIAN_SUITE="trixie"  # Debian 13: timescaledb 2.19.3+dfsg-1+deb13u1
SOURCE_TARBALL="timescaledb_${TIMESCALEDB_VERSION}+dfsg.orig.tar.xz"
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

# The deb-src entry for DEBIAN_SUITE, from this machine's apt sources: the first enabled `deb` entry
# (deb822 .sources or one-line .list) whose suites include this Debian system's release (its codename,
# or stable/testing/unstable/sid). Nothing on a system that is not Debian.
debian_src_entry() {
  local rels sources_list sources_parts f
  # shellcheck source=/dev/null
  rels="$(. /etc/os-release && [[ "${ID:-}" == debian ]] && echo "${VERSION_CODENAME:-} stable testing unstable sid")"
  [[ -n "$rels" ]] || return 1
  eval "$(apt-config shell sources_list Dir::Etc::sourcelist/f sources_parts Dir::Etc::sourceparts/d)"
  for f in "$sources_list" "$sources_parts"*.list "$sources_parts"*.sources; do
    [[ -f "$f" ]] || continue
    if [[ "$f" == *.sources ]]; then
      awk -v rels="$rels" -v suite="$DEBIAN_SUITE" '
        function ours(suites,  n, i, w) {
          n = split(suites, w, /[ \t]+/)
          for (i = 1; i <= n; i++) if (w[i] != "" && index(" " rels " ", " " w[i] " ")) return 1
          return 0
        }
        function flush() {
          if (types ~ /(^| )deb( |$)/ && enabled != "no" && ours(suites) && uris != "") {
            printf "Types: deb-src\nURIs: %s\nSuites: %s\nComponents: %s\n", uris, suite, comps
            if (key ~ /^\//) printf "Signed-By: %s\n", key
            found = 1; exit
          }
          types = uris = suites = comps = key = enabled = ""
        }
        /^[ \t]*#/ { next }
        /^[ \t]*$/ { flush(); next }
        /^[A-Za-z-]+:/ {
          field = tolower($1); $1 = ""; sub(/^[ \t]+/, ""); sub(/[ \t]+$/, "")
          if (field == "types:") types = $0; else if (field == "uris:") uris = $0
          else if (field == "suites:") suites = $0; else if (field == "components:") comps = $0
          else if (field == "signed-by:") key = $0; else if (field == "enabled:") enabled = tolower($0)
        }
        END { if (!found) flush(); exit !found }' "$f" && return 0
    else
      # deb [options] URI suite component...
      awk -v rels="$rels" -v suite="$DEBIAN_SUITE" '
        $1 != "deb" { next }
        {
          line = $0; opts = ""
          sub(/#.*/, "", line); sub(/^[ \t]+/, "", line); sub(/[ \t]+$/, "", line)
          if (match(line, /\[[^]]*\]/)) {
            opts = substr(line, RSTART, RLENGTH) " "
            line = substr(line, 1, RSTART - 1) substr(line, RSTART + RLENGTH)
          }
          n = split(line, word, /[ \t]+/)  # deb, URI, suite, components
          if (word[3] == "" || !index(" " rels " ", " " word[3] " ")) next
          comps = word[4]; for (i = 5; i <= n; i++) comps = comps " " word[i]
          printf "deb-src %s%s %s %s\n", opts, word[2], suite, comps
          found = 1; exit
        }
        END { exit !found }' "$f" && return 0
    fi
  done
  return 1
}

# Fetches the pinned .orig tarball into directory $1 with apt, from a private apt directory $1/apt.
fetch_source() {
  local work="$1" apt="$1/apt" list version
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/parts"
  if ! command -v apt-get >/dev/null; then
    log "no apt-get here: set TIMESCALEDB_SOURCE_TARBALL to a copy of $SOURCE_TARBALL"; return 1
  fi
  list="$apt/parts/timescaledb.sources"
  if ! debian_src_entry >"$list"; then
    log "not Debian, or no Debian archive in this machine's apt sources (a deb entry for its release);"
    log "set TIMESCALEDB_SOURCE_TARBALL to a copy of $SOURCE_TARBALL"; return 1
  fi
  if [[ "$(head -1 "$list")" == deb-src* ]]; then mv "$list" "$apt/parts/timescaledb.list"; fi  # one-line form
  local -a opts=(-q -o "Dir::Etc::SourceList=$apt/none.list" -o "Dir::Etc::SourceParts=$apt/parts"
    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o Debug::NoLocking=1
    -o Acquire::Languages=none)
  # As root apt would download as _apt, who cannot enter a private cache under /root.
  [[ "$(id -u)" != 0 ]] || opts+=(-o APT::Sandbox::User=root)
  apt-get "${opts[@]}" update >"$work/apt.log" 2>&1 || { tail -20 "$work/apt.log" >&2; return 1; }
  # The newest Debian revision of the pinned upstream version (the tarball is the same for all).
  version="$(apt-cache "${opts[@]}" showsrc timescaledb 2>/dev/null \
    | awk -v up="$TIMESCALEDB_VERSION+dfsg-" '$1 == "Version:" && index($2, up) == 1 { print $2 }' | sort -V | tail -1)"
  if [[ -z "$version" ]]; then
    log "Debian's $DEBIAN_SUITE carries no timescaledb $TIMESCALEDB_VERSION (apt-cache showsrc timescaledb)"; return 1
  fi
  log "fetching Debian's timescaledb $version source with apt-get ($DEBIAN_SUITE)"
  (cd "$work" && apt-get "${opts[@]}" source --download-only "timescaledb=$version") >>"$work/apt.log" 2>&1 \
    || { tail -20 "$work/apt.log" >&2; return 1; }
}

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
  if [[ -n "${TIMESCALEDB_SOURCE_TARBALL:-}" ]]; then
    cp "$TIMESCALEDB_SOURCE_TARBALL" "$TMP/$SOURCE_TARBALL"
  else
    fetch_source "$TMP"
  fi
  echo "$SOURCE_SHA256  $TMP/$SOURCE_TARBALL" | sha256sum -c --quiet -
  tar -xf "$TMP/$SOURCE_TARBALL" -C "$TMP"
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
