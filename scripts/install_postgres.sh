#!/bin/sh
# Best-effort install of Debian's PostgreSQL server for the slow-tier test of the attacker search's
# database storage (tests/test_search_postgres.py). Never fails the caller: if it cannot install,
# it says why and exits 0, and the test skips itself.
set -u
say() { echo "install_postgres: $*"; }
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  say "already installed ($(ls -d /usr/lib/postgresql/*/bin | head -1))"; exit 0
fi
command -v apt-get >/dev/null 2>&1 || { say "no apt-get; skipping"; exit 0; }
if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"
else say "not root and no passwordless sudo; skipping (run: sudo apt-get install -y postgresql)"; exit 0; fi
LIMIT=""; command -v timeout >/dev/null 2>&1 && LIMIT="timeout 900"
LOG="${TMPDIR:-/tmp}/install_postgres.$$.log"
if $SUDO $LIMIT apt-get update -qq >"$LOG" 2>&1 &&
   $SUDO $LIMIT env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >>"$LOG" 2>&1; then
  say "installed"; rm -f "$LOG"
else
  say "apt-get could not install postgresql (see $LOG); the test will be skipped"
fi
exit 0
