#!/bin/sh
# Best-effort install of Debian's chromium for the headless-browser report test.
# Never fails the caller: if it cannot install (no apt-get, not root and no passwordless sudo,
# no network), it says why and exits 0, and the test skips itself.
set -u

say() { echo "install_chromium: $*"; }

for name in chromium chromium-browser; do
  if command -v "$name" >/dev/null 2>&1; then
    say "$name already installed ($(command -v "$name"))"
    exit 0
  fi
done

if ! command -v apt-get >/dev/null 2>&1; then
  say "no apt-get on this machine; skipping (install chromium yourself to run the browser test)"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  say "not root and no passwordless sudo; skipping (run: sudo apt-get install -y chromium)"
  exit 0
fi

# Bound the time spent on a slow or unreachable mirror: this is a test convenience.
LIMIT=""
command -v timeout >/dev/null 2>&1 && LIMIT="timeout 900"
LOG="${TMPDIR:-/tmp}/install_chromium.$$.log"
if $SUDO $LIMIT apt-get update -qq >"$LOG" 2>&1 &&
   $SUDO $LIMIT env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation >>"$LOG" 2>&1; then
  say "installed $(command -v chromium || echo chromium)"
  rm -f "$LOG"
else
  say "apt-get could not install chromium (see $LOG); the browser test will be skipped"
fi
exit 0
