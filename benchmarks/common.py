"""Benchmark results are JSON files in benchmarks/results/, with provenance, written atomically."""

from __future__ import annotations

from pathlib import Path

from immunelm.io import write_json_atomic
from immunelm.provenance import provenance

RESULTS = Path(__file__).resolve().parent / "results"


def save_result(name: str, result: dict) -> Path:
    path = RESULTS / f"{name}.json"
    write_json_atomic(path, {"benchmark": name, "result": result, "provenance": provenance(None)})
    return path
