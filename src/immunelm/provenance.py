"""Run directories: every run writes its resolved config, seed, versions and git revision."""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from pydantic import BaseModel

from immunelm.config import dump_config
from immunelm.io import write_json_atomic, write_text_atomic

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


def provenance(seed: int | None) -> dict:
    return {
        "seed": seed,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "versions": package_versions(),
        "platform": platform.platform(),
        "argv": sys.argv,
    }


def record_run(run_dir: str | Path, config: BaseModel, seed: int | None) -> Path:
    """Write ``config.yaml`` and ``provenance.json`` into ``run_dir`` (created if needed)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", dump_config(config))
    write_json_atomic(run_dir / "provenance.json", provenance(seed))
    return run_dir
