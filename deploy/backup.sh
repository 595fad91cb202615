#!/usr/bin/env bash
# Back up the model stores, the RAG index and the database into one timestamped, checksummed archive.
#
#   deploy/backup.sh                      # local layout (`kitrading up`): $KITRADING_HOME/models, rag, ...
#   deploy/backup.sh --compose            # docker compose deployment: the named volumes + TimescaleDB
#   deploy/backup.sh --compose --stop     # stop the model writers during the copy (consistent files)
#
# Options:
#   --compose        back up the compose volumes (docker run --rm with each volume) instead of local dirs
#   --output DIR     where the archive goes (default $KITRADING_BACKUP_DIR, else $KITRADING_HOME/backups)
#   --with-cache     include the embedder's model cache (re-downloadable, so left out by default)
#   --no-database    leave the database out
#   --require-database  fail instead of warning when the database cannot be dumped
#   --stop           compose: stop the services that write the copied volumes, start them again after
#
# Result: DIR/kitrading-backup-<UTC timestamp>.tar.gz (+ .sha256 of the archive), holding one folder:
#   MANIFEST.sha256   sha256 of every file below, `sha256sum -c` format; restore.sh refuses any mismatch
#   manifest.json     when, from where, which components (files, bytes), database included or why not
#   volumes/<component>/...   the files of each model store / index
#   database/kitrading.dump   pg_dump --format=custom (deploy/dbtool.py), when a database was reachable
# The archive appears under its final name only when complete. The database dump is one transaction
# (pg_dump); model files are copied as they are, so use --stop (compose) or stop `kitrading up`
# (local) when training may be writing. Component table and environment: deploy/backup_lib.sh.
set -euo pipefail

# shellcheck source=deploy/backup_lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/backup_lib.sh"

MODE=local
OUTPUT=""
WITH_CACHE=0
DATABASE=1
REQUIRE_DATABASE=0
STOP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --compose) MODE=compose ;;
    --local) MODE=local ;;
    --output) [ $# -ge 2 ] || die "--output needs a directory"; OUTPUT="$2"; shift ;;
    --with-cache) WITH_CACHE=1 ;;
    --no-database) DATABASE=0 ;;
    --require-database) REQUIRE_DATABASE=1 ;;
    --stop) STOP=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

HOME_DIR="$(kitrading_home)"
OUTPUT="${OUTPUT:-${KITRADING_BACKUP_DIR:-$HOME_DIR/backups}}"
mkdir -p "$OUTPUT"
OUTPUT="$(cd "$OUTPUT" && pwd)"
COMPONENTS=("${VOLUME_COMPONENTS[@]}")
if [ "$WITH_CACHE" = 1 ]; then COMPONENTS+=("${CACHE_COMPONENTS[@]}"); fi

NOW="$(date -u +%s)"
STAMP="$(date -u -d "@$NOW" +%Y%m%dT%H%M%SZ)"
NAME="$ARCHIVE_PREFIX$STAMP"
[ ! -e "$OUTPUT/$NAME.tar.gz" ] || die "$OUTPUT/$NAME.tar.gz exists already"
# Work next to the output, so the finished archive is renamed into place (never seen half-written).
WORK="$(mktemp -d "$OUTPUT/.$NAME.XXXXXX")"
STAGE="$WORK/$NAME"
STOPPED=()
trap cleanup EXIT
mkdir -p "$STAGE/volumes"

# ---- model stores and indexes --------------------------------------------------------------------
if [ "$MODE" = compose ] && [ "$STOP" = 1 ]; then
  mapfile -t STOPPED < <(for c in "${COMPONENTS[@]}"; do writer_service "$c"; done | sort -u)
  log "stopping for a consistent copy: ${STOPPED[*]}"
  compose stop "${STOPPED[@]}" >&2
fi

INCLUDED=()
ABSENT=()
for component in "${COMPONENTS[@]}"; do
  target="$STAGE/volumes/$component"
  if [ "$MODE" = local ]; then
    source_dir="$HOME_DIR/$(local_path "$component")"
    if [ ! -d "$source_dir" ]; then ABSENT+=("$component"); continue; fi
    mkdir -p "$target"
    # -h: store what links point at, so every file is a plain file with a checksum.
    tar -C "$source_dir" -chf - . | tar -C "$target" -xf -
  else
    volume="$(volume_name "$component")"
    if ! docker volume inspect "$volume" >/dev/null 2>&1; then ABSENT+=("$component"); continue; fi
    mkdir -p "$target"
    docker run --rm -v "$volume:/data:ro" "$HELPER_IMAGE" tar -C /data -chf - . | tar -C "$target" -xf -
  fi
  INCLUDED+=("$component")
  log "copied $component ($(find "$target" -type f | wc -l) files)"
done

if [ "${#STOPPED[@]}" -gt 0 ]; then
  log "starting again: ${STOPPED[*]}"
  compose start "${STOPPED[@]}" >&2
  STOPPED=()
fi

# ---- database ------------------------------------------------------------------------------------
DB_STATUS="not requested"
if [ "$DATABASE" = 1 ]; then
  mkdir -p "$STAGE/database"
  dump="$STAGE/database/kitrading.dump"
  set +e
  if [ "$MODE" = local ]; then
    "$(python_bin)" "$DEPLOY_DIR/dbtool.py" dump "$dump"
  else
    # The image's own dbtool.py and pg_dump, with the data service's settings and password secret.
    compose run --rm --no-deps -T data python /app/deploy/dbtool.py dump - >"$dump"
  fi
  rc=$?
  set -e
  case "$rc" in
    0) DB_STATUS="included"; log "dumped the database ($(du -h "$dump" | cut -f1))" ;;
    3)
      rm -rf "$STAGE/database"
      DB_STATUS="skipped: no database configured or not reachable"
      [ "$REQUIRE_DATABASE" = 0 ] || die "database: ${DB_STATUS#skipped: }"
      log "warning: database left out (${DB_STATUS#skipped: })"
      ;;
    *) die "database dump failed (exit $rc)" ;;
  esac
fi

# ---- manifest and archive ------------------------------------------------------------------------
(cd "$STAGE" && manifest_lines >MANIFEST.sha256)
FILES="$(wc -l <"$STAGE/MANIFEST.sha256" | tr -d ' ')"
json_list() { local first=1 item; printf '['; for item in "$@"; do
  if [ "$first" = 1 ]; then first=0; else printf ', '; fi; printf '"%s"' "$item"; done; printf ']'; }
{
  printf '{\n'
  printf '  "format": 1,\n'
  printf '  "name": "%s",\n' "$NAME"
  printf '  "created": "%s",\n' "$(date -u -d "@$NOW" +%Y-%m-%dT%H:%M:%SZ)"
  printf '  "mode": "%s",\n' "$MODE"
  printf '  "components": %s,\n' "$(json_list "${INCLUDED[@]+"${INCLUDED[@]}"}")"
  printf '  "absent": %s,\n' "$(json_list "${ABSENT[@]+"${ABSENT[@]}"}")"
  printf '  "database": "%s",\n' "$DB_STATUS"
  printf '  "files": %s,\n' "$FILES"
  printf '  "bytes": %s\n' "$(du -sb "$STAGE" | cut -f1)"
  printf '}\n'
} >"$STAGE/manifest.json"

tar -C "$WORK" -czf "$WORK/$NAME.tar.gz" "$NAME"
(cd "$WORK" && sha256sum -- "$NAME.tar.gz" >"$NAME.tar.gz.sha256")
mv "$WORK/$NAME.tar.gz" "$OUTPUT/"
mv "$WORK/$NAME.tar.gz.sha256" "$OUTPUT/"
log "backup: $OUTPUT/$NAME.tar.gz ($FILES files; components: ${INCLUDED[*]:-none}; database: $DB_STATUS)"
echo "$OUTPUT/$NAME.tar.gz"
