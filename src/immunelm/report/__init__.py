"""Reports of an evaluation: load ``results.json``, render a self-contained HTML page with plots.

``load_report`` turns every way a results file can be wrong into one :class:`ImmuneLMError`
line naming the file and the first bad field, so ``immunelm report RUN_DIR`` never shows a
traceback for a stale or hand-edited file.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from immunelm.errors import ImmuneLMError
from immunelm.eval.schema import READABLE_SCHEMA_VERSIONS, EvaluationReport
from immunelm.report.html import render_report

RESULTS_FILE = "results.json"
SUPPORTED_SCHEMA_VERSIONS = READABLE_SCHEMA_VERSIONS  # each later version only added optional fields
#: A results file holds summaries (samples live in samples.jsonl): a few MB even for the full
#: suite. Anything far larger is not one, and reading it whole could exhaust memory.
MAX_RESULTS_BYTES = 256 * 1024 * 1024
#: results.json nests about ten levels (config sections); far deeper is not a results file, and
#: would overflow Python's recursion in the JSON parser or the renderer.
MAX_DEPTH = 64

__all__ = ["RESULTS_FILE", "SUPPORTED_SCHEMA_VERSIONS", "load_report", "regenerate", "render_report"]


def _results_path(run_dir: str | Path) -> Path:
    """Accept a run directory (the usual case) or the results file itself."""
    path = Path(run_dir)
    return path if path.suffix == ".json" and not path.is_dir() else path / RESULTS_FILE


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".") or "<root>"
    got = repr(first.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    more = len(error.errors()) - 1
    extra = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    if first["type"] == "extra_forbidden":
        return f"unknown field '{where}'{extra}"
    if first["type"] == "missing":
        return f"missing field '{where}'{extra}"
    return f"field '{where}': {first['msg']} (got {got}){extra}"


def load_report(run_dir: str | Path) -> EvaluationReport:
    """Read and validate ``run_dir/results.json``."""
    path = _results_path(run_dir)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ImmuneLMError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    version = data.get("schema_version")
    if version is None:
        raise ImmuneLMError(f"{path}: missing field 'schema_version' (is this an ImmuneLM results file?)")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise ImmuneLMError(f"{path}: schema_version {version!r} is not supported "
                            f"(this ImmuneLM reads {', '.join(SUPPORTED_SCHEMA_VERSIONS)})")
    try:
        return EvaluationReport.model_validate(data)
    except ValidationError as exc:
        raise ImmuneLMError(f"{path}: {_first_error(exc)}") from exc


def _read_json(path: Path):
    if not path.is_file():
        raise ImmuneLMError(f"{path}: not found (expected the results.json an evaluation writes)")
    size = path.stat().st_size
    if size > MAX_RESULTS_BYTES:
        raise ImmuneLMError(f"{path}: {size:,} bytes is too large for a results file "
                            f"(the limit is {MAX_RESULTS_BYTES // 2**20} MiB; an evaluation writes a few MB)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ImmuneLMError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise ImmuneLMError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc
    except RecursionError as exc:
        raise ImmuneLMError(f"{path}: JSON nested too deeply (a results file nests at most {MAX_DEPTH} levels)") from exc
    except OSError as exc:
        raise ImmuneLMError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if _depth(data) > MAX_DEPTH:
        raise ImmuneLMError(f"{path}: JSON nested too deeply (a results file nests at most {MAX_DEPTH} levels)")
    return data


def _depth(data) -> int:
    """Nesting depth, iteratively (the data may be too deep for recursion)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def regenerate(run_dir: str | Path) -> Path:
    """Re-render the report of a finished run from its results file, beside that file."""
    path = _results_path(run_dir)
    return render_report(load_report(path), path.parent)
