# shellcheck shell=bash disable=SC2034  # sourced: the constants below are used by the scripts
# Shared by deploy/backup.sh and deploy/restore.sh (sourced, not run).
#
# What a backup holds, by component name. The same names are used in both layouts:
#   component        local layout ($KITRADING_HOME/...)   compose volume             written by
#   forecast-models  models/forecast                      kitrading-forecast-models  forecast
#   forecast-state   forecast                             kitrading-forecast-state   forecast
#   pattern-models   models/pattern                       kitrading-pattern-models   pattern
#   regime-models    models/regime                        kitrading-regime-models    regime
#   rag-index        rag                                  kitrading-rag-index        rag
#   embedder-cache   cache  (only with --with-cache)      kitrading-embedder-cache   embedder
#   database         pg_dump of the database (deploy/dbtool.py)                      every service
#
# Environment (both scripts):
#   KITRADING_HOME          local layout root (default ./.kitrading)
#   KITRADING_BACKUP_DIR    where archives go (default $KITRADING_HOME/backups)
#   PYTHON                  interpreter with the project installed (default .venv/bin/python, python3)
#   KITRADING_COMPOSE       compose command (default "docker compose")
#   COMPOSE_FILE            compose files, as docker compose reads it (default deploy/docker-compose.yml)
#   KITRADING_HELPER_IMAGE  image with tar and sh for volume copies (default busybox:1.36)
#   KITRADING_UID           owner of restored volume files (default 10001, as in deploy/Dockerfile)

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$DEPLOY_DIR/.." && pwd)"

VOLUME_COMPONENTS=(forecast-models forecast-state pattern-models regime-models rag-index)
CACHE_COMPONENTS=(embedder-cache)
DOMAIN_SERVICES=(data forecast pattern regime embedder rag llm watchdog)
ARCHIVE_PREFIX="kitrading-backup-"
HELPER_IMAGE="${KITRADING_HELPER_IMAGE:-busybox:1.36}"
SERVICE_UID="${KITRADING_UID:-10001}"

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# EXIT trap of both scripts: start again the compose services in STOPPED, remove the scratch dir WORK.
cleanup() {
  local status=$?
  if [ "${#STOPPED[@]}" -gt 0 ]; then
    log "starting again: ${STOPPED[*]}"
    compose start "${STOPPED[@]}" >&2 || log "warning: could not start ${STOPPED[*]}"
  fi
  rm -rf "$WORK"
  exit "$status"
}

# Path of a component under $KITRADING_HOME.
local_path() {
  case "$1" in
    forecast-models) echo "models/forecast" ;;
    forecast-state) echo "forecast" ;;
    pattern-models) echo "models/pattern" ;;
    regime-models) echo "models/regime" ;;
    rag-index) echo "rag" ;;
    embedder-cache) echo "cache" ;;
    *) die "unknown component: $1" ;;
  esac
}

# The compose service that writes a component (stopped around a consistent copy or a restore).
writer_service() {
  case "$1" in
    forecast-models | forecast-state) echo "forecast" ;;
    pattern-models) echo "pattern" ;;
    regime-models) echo "regime" ;;
    rag-index) echo "rag" ;;
    embedder-cache) echo "embedder" ;;
    *) die "unknown component: $1" ;;
  esac
}

volume_name() { echo "kitrading-$1"; }

# Absolute $KITRADING_HOME (it need not exist yet).
kitrading_home() { realpath -m -- "${KITRADING_HOME:-.kitrading}"; }

python_bin() {
  if [ -n "${PYTHON:-}" ]; then
    echo "$PYTHON"
  elif [ -x "$ROOT/.venv/bin/python" ]; then
    echo "$ROOT/.venv/bin/python"
  else
    command -v python3 || die "no Python: set PYTHON to the project's interpreter"
  fi
}

# docker compose, with deploy/docker-compose.yml unless COMPOSE_FILE says otherwise.
compose() {
  local -a cmd
  read -r -a cmd <<<"${KITRADING_COMPOSE:-docker compose}"
  if [ -n "${COMPOSE_FILE:-}" ]; then
    "${cmd[@]}" "$@"
  else
    "${cmd[@]}" -f "$DEPLOY_DIR/docker-compose.yml" "$@"
  fi
}

# sha256 of every regular file below the current directory except the manifests, sorted, relative
# paths, in `sha256sum` format (what MANIFEST.sha256 holds).
manifest_lines() {
  find . -type f ! -path ./MANIFEST.sha256 ! -path ./manifest.json -printf '%P\0' \
    | LC_ALL=C sort -z \
    | xargs -0 -r sha256sum --
}
