"""Run directories: every run writes its resolved config, seed, versions and git revision."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from pydantic import BaseModel

from immunelm.config import dump_config
from immunelm.io import ensure_dir, write_json_atomic, write_text_atomic

TRACKED_PACKAGES = (
    "immunelm", "torch", "transformers", "peft", "accelerate", "datasets",
    "safetensors", "tokenizers", "numpy", "pydantic",
)


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_revision(start: Path | None = None) -> str:
    """The git commit of the ImmuneLM checkout (``+dirty`` if modified), or ``unknown``."""
    where = start or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        if rev.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where, capture_output=True, text=True, timeout=10,
        )
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^:/@\s]+:)[^@\s]+@")


def redact_secrets(text: str) -> str:
    """A URL's password (``scheme://user:password@host``) replaced by ``***``: run records and
    messages may be shared, a database password must not be."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def provenance(seed: int | None) -> dict:
    return {
        "seed": seed,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "versions": package_versions(),
        "platform": platform.platform(),
        "argv": [redact_secrets(a) for a in sys.argv],
    }


def _earlier_records(path: Path) -> list[dict]:
    """The provenance of the runs a resumed run continues (oldest first); [] if unreadable."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(old, dict):
        return []
    return list(old.pop("previous", [])) + [old]


def record_run(run_dir: str | Path, config: BaseModel, seed: int | None, resumed_from: str | None = None) -> Path:
    """Write ``config.yaml`` and ``provenance.json`` into ``run_dir`` (created if needed).

    A resumed run (``resumed_from``: the checkpoint) keeps the earlier records under ``previous``."""
    run_dir = ensure_dir(Path(run_dir))
    record = provenance(seed)
    if resumed_from is not None:
        record["resumed_from"] = resumed_from
        record["previous"] = _earlier_records(run_dir / "provenance.json")
    write_text_atomic(run_dir / "config.yaml", dump_config(config))
    write_json_atomic(run_dir / "provenance.json", record)
    return run_dir
