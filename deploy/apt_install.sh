#!/usr/bin/env bash
# Install Debian's PACKAGE once where COMMAND is missing, for the tests that need it (make test):
#   bash deploy/apt_install.sh COMMAND PACKAGE "what it is for"
# apt-get by package name, as root or with passwordless sudo. Never fails: without the tool the
# tests that need it skip, saying so.
set -u
command="$1" package="$2" purpose="$3"
if command -v "$command" >/dev/null 2>&1; then exit 0; fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "$command: not installed and no root to apt-get it; $purpose will skip" >&2; exit 0
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "$command: not installed and no apt-get here; $purpose will skip" >&2; exit 0
fi
echo "$command: installing Debian's $package package for $purpose (once)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -q --no-install-recommends "$package" >/dev/null 2>&1; then
  $SUDO apt-get update -q >/dev/null 2>&1
  $SUDO apt-get install -y -q --no-install-recommends "$package" >/dev/null 2>&1 \
    || echo "$command: apt-get install failed; $purpose will skip" >&2
fi
exit 0
