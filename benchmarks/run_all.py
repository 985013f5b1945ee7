"""Run every benchmark in this folder (each writes benchmarks/results/<name>.json)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["engine_vs_bare.py", "organism_build.py", "generation_throughput.py", "defence_overhead.py"]

if __name__ == "__main__":
    failed = [b for b in BENCHMARKS if subprocess.run([sys.executable, str(HERE / b), *sys.argv[1:]], cwd=HERE).returncode]
    sys.exit(1 if failed else 0)
