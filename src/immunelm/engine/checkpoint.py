"""Resumable checkpoints with no pickle: tensors in safetensors, everything else in JSON.

A checkpoint directory holds the trainable weights, the optimiser state (tensors flattened to
``state.<param>.<key>`` + a JSON skeleton), the scheduler state, the RNG states and the
engine's counters. Loading never unpickles anything, so a checkpoint from an untrusted
source can at worst hold wrong numbers, never code.

``state.json`` also records which run wrote it: the flattened run config (minus fields that
may change on resume) and its hash. Resuming checks it, so a checkpoint is never continued
under another config. A checkpoint that cannot be read completely (truncated file, broken
JSON) is skipped in favour of the newest one that can, and the caller is told.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from immunelm.errors import ImmuneLMError
from immunelm.io import atomic_dir

CHECKPOINT_PREFIX = "step-"
CHECKPOINT_FILES = ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json")
# Fields that do not change what is learned, so a resumed run may set them differently.
VOLATILE_FIELDS = frozenset({"progress", "log_every", "checkpoint_every", "keep_checkpoints", "eval_at"})
# The budget may grow on resume (train longer); shrinking it below the checkpoint's is refused.
GROWABLE_FIELDS = ("train.max_steps", "train.epochs")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _split_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    skeleton: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, entries in state["state"].items():
        skeleton["state"][str(pid)] = {}
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value.detach().contiguous().cpu()
                skeleton["state"][str(pid)][key] = {"tensor": f"state.{pid}.{key}"}
            else:
                skeleton["state"][str(pid)][key] = {"value": value}
    return tensors, skeleton


def _join_optimizer_state(tensors: dict[str, torch.Tensor], skeleton: dict) -> dict:
    state = {}
    for pid, entries in skeleton["state"].items():
        state[int(pid)] = {
            key: tensors[spec["tensor"]] if "tensor" in spec else spec["value"]
            for key, spec in entries.items()
        }
    return {"param_groups": skeleton["param_groups"], "state": state}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    py_version, py_state, py_gauss = meta["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    name, keys, *rest = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def run_fingerprint(train_cfg: BaseModel, run_config: BaseModel | dict | None = None,
                    dataset_rows: int | None = None) -> dict[str, Any]:
    """The flattened fields that define a run (``train.*`` is the engine's own config)."""
    full = run_config.model_dump(mode="json") if isinstance(run_config, BaseModel) else dict(run_config or {})
    full["train"] = train_cfg.model_dump(mode="json")
    if dataset_rows is not None:
        full["dataset"] = {"rows": dataset_rows}  # a changed data file usually changes the count
    flat = _flatten(json.loads(json.dumps(full, default=str)))  # JSON-normalised, as stored
    return {k: v for k, v in flat.items() if k.rsplit(".", 1)[-1] not in VOLATILE_FIELDS}


def fingerprint_hash(fields: dict[str, Any]) -> str:
    fixed = {k: v for k, v in fields.items() if k not in GROWABLE_FIELDS}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()


def run_record(fields: dict[str, Any]) -> dict[str, Any]:
    return {"config_hash": fingerprint_hash(fields), "config": fields}


def _grew(key: str, saved: Any, now: Any) -> bool:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (saved, now))
    return key in GROWABLE_FIELDS and numbers and now >= saved


def config_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``field (checkpoint X, now Y)`` for every field that may not differ on resume."""
    unset = "unset"
    diffs = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key, unset), now.get(key, unset)
        if a != b and not _grew(key, a, b):
            diffs.append(f"{key} (checkpoint {a!r}, now {b!r})")
    return diffs


def check_same_run(directory: Path, meta: dict, fields: dict[str, Any]) -> None:
    """Refuse to resume ``directory`` under a config other than the one that wrote it."""
    record = meta.get("run")
    if not isinstance(record, dict):
        return  # written before runs were recorded: nothing to compare against
    saved = record.get("config") or {}
    diffs = config_differences(saved, fields)
    if not diffs and record.get("config_hash") not in (None, fingerprint_hash(saved)):
        diffs = ["config hash"]
    if diffs:
        shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise ImmuneLMError(
            f"{directory}: checkpoint belongs to a different run config: {shown}; resume with the same config "
            "(only train.max_steps/epochs may grow) or use a new --run-dir")


@dataclass
class CheckpointData:
    directory: Path
    meta: dict
    tensors: dict[str, dict[str, torch.Tensor]]  # file name -> tensors (empty when headers only)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _read_tensors(path: Path, load: bool) -> dict[str, torch.Tensor]:
    if load:
        return load_file(str(path))
    with safe_open(str(path), "pt"):  # parses the header, which also checks the file length
        return {}


def read_checkpoint(directory: Path, tensors: bool = True) -> CheckpointData:
    """Read (``tensors=False``: only check) every file of a checkpoint; one-line error if any is bad."""
    missing = [n for n in CHECKPOINT_FILES if not (directory / n).is_file()]
    if missing:
        raise ImmuneLMError(f"{directory}: incomplete checkpoint, missing {', '.join(missing)}")
    name = "state.json"
    try:
        meta = json.loads((directory / name).read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not all(k in meta for k in ("counters", "optimizer", "scheduler", "rng")):
            raise ValueError("counters, optimizer, scheduler or rng missing")
        loaded = {}
        for name in CHECKPOINT_FILES[:3]:
            loaded[name] = _read_tensors(directory / name, tensors)
    except (OSError, ValueError, SafetensorError) as exc:
        raise ImmuneLMError(f"{directory}: corrupt checkpoint ({name}: {_first_line(exc)})") from exc
    return CheckpointData(directory, meta, loaded)


def apply_checkpoint(data: CheckpointData, model: torch.nn.Module, optimizer, scheduler) -> dict:
    """Restore model, optimiser, scheduler and RNG from :func:`read_checkpoint`; returns the counters."""
    weights, meta = data.tensors["trainable.safetensors"], data.meta
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise ImmuneLMError(f"{data.directory}: checkpoint has weights the model lacks: {unknown[:3]}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device))
    optimizer.load_state_dict(_join_optimizer_state(data.tensors["optimizer.safetensors"], meta["optimizer"]))
    scheduler.load_state_dict(meta["scheduler"])
    _set_rng_state(data.tensors["rng.safetensors"], meta["rng"])
    return meta["counters"]


def save_checkpoint(
    directory: Path, model: torch.nn.Module, optimizer, scheduler, counters: dict, run: dict | None = None
) -> Path:
    """Write a complete checkpoint atomically (a crash mid-write leaves the previous one).

    ``run`` (see :func:`run_record`) names the config that wrote it, checked on resume."""
    opt_tensors, opt_skeleton = _split_optimizer_state(optimizer.state_dict())
    rng_tensors, rng_meta = _rng_state()
    with atomic_dir(directory) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        save_file(opt_tensors or {"_empty": torch.zeros(0)}, str(tmp / "optimizer.safetensors"))
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        meta = {
            "counters": counters,
            "optimizer": opt_skeleton,
            "scheduler": scheduler.state_dict(),
            "rng": rng_meta,
            "run": run,
        }
        (tmp / "state.json").write_text(json.dumps(meta), encoding="utf-8")
    return directory


def load_checkpoint(directory: Path, model: torch.nn.Module, optimizer, scheduler) -> dict:
    """Restore everything :func:`save_checkpoint` wrote; returns the engine counters."""
    return apply_checkpoint(read_checkpoint(directory), model, optimizer, scheduler)


_STEP_DIR = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def checkpoint_dirs(root: Path) -> list[Path]:
    """Checkpoint directories under ``root`` (complete or not), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def find_resumable(root: Path, fields: dict[str, Any] | None = None,
                   tensors: bool = True) -> tuple[CheckpointData, list[str]]:
    """The newest checkpoint under ``root`` that reads completely and belongs to this run.

    Returns it with one note per newer checkpoint skipped as corrupt. Raises a one-line error
    when there is none, when all are corrupt, or when the newest readable one is another run's.
    """
    skipped: list[str] = []
    for directory in reversed(checkpoint_dirs(root)):
        try:
            data = read_checkpoint(directory, tensors)
        except ImmuneLMError as exc:
            skipped.append(str(exc))
            continue
        if fields is not None:
            check_same_run(directory, data.meta, fields)
        return data, skipped
    if skipped:
        raise ImmuneLMError(f"{root}: no complete checkpoint to resume from: {'; '.join(skipped)}")
    raise ImmuneLMError(f"{root.parent}: nothing to resume (no checkpoint in {root}); run without --resume to start fresh")


def resume_message(data: CheckpointData, skipped: list[str]) -> str:
    """One line: what a resumed run continues from, and which corrupt checkpoints it skipped."""
    line = f"resuming from {data.directory} (step {data.meta['counters'].get('step')})"
    if skipped:
        line += f"; skipped newer corrupt checkpoint(s): {'; '.join(skipped)}"
    return line


def prune_checkpoints(root: Path, keep: int) -> None:
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
