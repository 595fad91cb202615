#!/usr/bin/env bash
# Restore an archive made by deploy/backup.sh, after verifying every checksum in it.
#
#   deploy/restore.sh --verify-only ARCHIVE     # check it, change nothing
#   deploy/restore.sh ARCHIVE                   # local layout: replace $KITRADING_HOME/models, rag, ...
#   deploy/restore.sh --compose ARCHIVE         # compose: replace the volumes and the database
#
# Options:
#   --compose        restore into the compose volumes and TimescaleDB (stops the affected services,
#                    starts them again afterwards)
#   --only LIST      comma-separated components to restore (forecast-models,rag-index,database,...)
#   --no-database    leave the database alone
#   --verify-only    stop after the checks
#   --yes            do not ask for confirmation (needed without a terminal)
#
# Nothing is touched before the whole archive has been checked: it must unpack cleanly (gzip and tar
# checksums), hold one folder with plain files and folders only, and every file must match
# MANIFEST.sha256 exactly (no file missing, changed or added). Then each component replaces its
# directory or volume as a whole (files that are not in the backup are gone afterwards) and the
# database is recreated from the dump. Local restores need `kitrading up` stopped; in compose mode the
# script stops what it restores. Component table and environment: deploy/backup_lib.sh.
set -euo pipefail

# shellcheck source=deploy/backup_lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/backup_lib.sh"

MODE=local
ONLY=""
DATABASE=1
VERIFY_ONLY=0
ASSUME_YES=0
ARCHIVE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --compose) MODE=compose ;;
    --local) MODE=local ;;
    --only) [ $# -ge 2 ] || die "--only needs a list"; ONLY="$2"; shift ;;
    --no-database) DATABASE=0 ;;
    --verify-only) VERIFY_ONLY=1 ;;
    --yes | -y) ASSUME_YES=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option: $1 (see --help)" ;;
    *) [ -z "$ARCHIVE" ] || die "one archive at a time"; ARCHIVE="$1" ;;
  esac
  shift
done
[ -n "$ARCHIVE" ] || die "which archive? (see --help)"
[ -f "$ARCHIVE" ] || die "$ARCHIVE: no such file"
ARCHIVE="$(realpath -- "$ARCHIVE")"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/kitrading-restore.XXXXXX")"
STOPPED=()
trap cleanup EXIT
refuse() { log "REFUSED: $*"; log "nothing was changed"; exit 1; }

# ---- 1. verify (read only) -----------------------------------------------------------------------
if [ -f "$ARCHIVE.sha256" ]; then
  expected="$(cut -d' ' -f1 <"$ARCHIVE.sha256")"
  actual="$(sha256sum -- "$ARCHIVE" | cut -d' ' -f1)"
  [ "$expected" = "$actual" ] || refuse "$ARCHIVE does not match $ARCHIVE.sha256 (damaged in transit?)"
fi
listing="$WORK/listing"
tar -tvzf "$ARCHIVE" >"$listing" 2>"$WORK/tar.err" || refuse "$ARCHIVE is not a readable archive: $(head -c 300 "$WORK/tar.err")"
# Plain files and folders only: no links, devices or fifos to escape the target with.
if grep -qv '^[-d]' "$listing"; then refuse "archive holds entries that are not plain files or folders"; fi
tar -tzf "$ARCHIVE" >"$WORK/names"
[ -s "$WORK/names" ] || refuse "$ARCHIVE is not a readable archive: no entries"
NAME="$(head -n 1 "$WORK/names" | cut -d/ -f1)"
[[ "$NAME" =~ ^${ARCHIVE_PREFIX}[0-9]{8}T[0-9]{6}Z$ ]] || refuse "not a kitrading backup (top folder '$NAME')"
if grep -qvE "^$NAME(/|\$)" "$WORK/names" || grep -qE '(^|/)\.\.(/|$)' "$WORK/names"; then
  refuse "archive has paths outside its folder"
fi
tar -xzf "$ARCHIVE" -C "$WORK" --no-same-owner 2>"$WORK/tar.err" || refuse "cannot unpack: $(head -c 300 "$WORK/tar.err")"
STAGE="$WORK/$NAME"
[ -f "$STAGE/MANIFEST.sha256" ] || refuse "no MANIFEST.sha256 in the archive"
[ -f "$STAGE/manifest.json" ] || refuse "no manifest.json in the archive"
(cd "$STAGE" && manifest_lines) >"$WORK/actual.sha256"
if ! cmp -s "$STAGE/MANIFEST.sha256" "$WORK/actual.sha256"; then
  log "files that differ from MANIFEST.sha256 (< in the manifest, > in the archive):"
  diff "$STAGE/MANIFEST.sha256" "$WORK/actual.sha256" | grep '^[<>]' | head -n 20 >&2 || true
  refuse "checksums do not match the manifest"
fi
FILES="$(wc -l <"$STAGE/MANIFEST.sha256" | tr -d ' ')"
log "verified $NAME: $FILES files match MANIFEST.sha256"

# ---- 2. what to restore --------------------------------------------------------------------------
wanted() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }
if [ -n "$ONLY" ]; then
  IFS=',' read -r -a requested <<<"$ONLY"
  for item in "${requested[@]}"; do
    [ "$item" = database ] || local_path "$item" >/dev/null
    if [ "$item" = database ]; then [ -f "$STAGE/database/kitrading.dump" ] || refuse "no database in $NAME"
    elif [ ! -d "$STAGE/volumes/$item" ]; then refuse "no $item in $NAME"; fi
  done
fi
COMPONENTS=()
if [ -d "$STAGE/volumes" ]; then
  for dir in "$STAGE"/volumes/*/; do
    [ -d "$dir" ] || continue
    component="$(basename "$dir")"
    local_path "$component" >/dev/null
    if wanted "$component"; then COMPONENTS+=("$component"); fi
  done
fi
RESTORE_DB=0
if [ "$DATABASE" = 1 ] && [ -f "$STAGE/database/kitrading.dump" ] && wanted database; then RESTORE_DB=1; fi

if [ "$MODE" = local ]; then DEST="$(kitrading_home)"; else DEST="the compose volumes"; fi
SUMMARY="${COMPONENTS[*]:-no volumes}"
if [ "$RESTORE_DB" = 1 ]; then SUMMARY="$SUMMARY + database"; fi
if [ "$VERIFY_ONLY" = 1 ]; then
  log "archive is intact; it would restore: $SUMMARY"
  exit 0
fi
[ "${#COMPONENTS[@]}" -gt 0 ] || [ "$RESTORE_DB" = 1 ] || die "nothing to restore"
if [ "$ASSUME_YES" = 0 ]; then
  [ -t 0 ] || die "no terminal to confirm on: pass --yes"
  read -r -p "Replace $SUMMARY in $DEST with $NAME? [y/N] " answer
  [[ "$answer" =~ ^[Yy] ]] || die "cancelled"
fi

# ---- 3. apply ------------------------------------------------------------------------------------
if [ "$MODE" = local ]; then
  for component in "${COMPONENTS[@]}"; do
    dest="$DEST/$(local_path "$component")"
    mkdir -p "$(dirname "$dest")"
    fresh="$dest.restore-new.$$"
    old="$dest.restore-old.$$"
    rm -rf "$fresh" "$old"
    mkdir -p "$fresh"
    tar -C "$STAGE/volumes/$component" -cf - . | tar -C "$fresh" -xf -
    # Swap by renames in the same folder; the old copy goes only once the new one is in place.
    if [ -e "$dest" ]; then mv "$dest" "$old"; fi
    mv "$fresh" "$dest"
    rm -rf "$old"
    log "restored $component -> $dest"
  done
  if [ "$RESTORE_DB" = 1 ]; then
    "$(python_bin)" "$DEPLOY_DIR/dbtool.py" restore "$STAGE/database/kitrading.dump" || die "database restore failed"
    log "restored the database"
  fi
else
  if [ "$RESTORE_DB" = 1 ]; then
    services=("${DOMAIN_SERVICES[@]}")
  else
    mapfile -t services < <(for c in "${COMPONENTS[@]}"; do writer_service "$c"; done | sort -u)
  fi
  log "stopping: ${services[*]}"
  compose stop "${services[@]}" >&2
  STOPPED=("${services[@]}")
  for component in "${COMPONENTS[@]}"; do
    volume="$(volume_name "$component")"
    docker volume create "$volume" >/dev/null
    tar -C "$STAGE/volumes/$component" -cf - . | docker run --rm -i -v "$volume:/data" "$HELPER_IMAGE" \
      sh -c "find /data -mindepth 1 -delete && tar -C /data -xf - && chown -R $SERVICE_UID:$SERVICE_UID /data"
    log "restored $component -> volume $volume"
  done
  if [ "$RESTORE_DB" = 1 ]; then
    compose up -d --wait timescaledb >&2
    # The image's dbtool.py and pg_restore, with the data service's settings and password secret.
    chmod 0755 "$STAGE/database" && chmod 0644 "$STAGE/database/kitrading.dump"
    compose run --rm --no-deps -T -v "$STAGE/database:/backup:ro" data \
      python /app/deploy/dbtool.py restore /backup/kitrading.dump >&2 || die "database restore failed"
    log "restored the database"
  fi
fi
log "restore of $NAME done ($SUMMARY)"
