"""Resumable checkpoints with no pickle: tensors in safetensors, everything else in JSON.

A checkpoint directory holds the trainable weights, the optimiser state (tensors flattened to
``state.<param>.<key>`` + a JSON skeleton), the scheduler state, the RNG states and the
engine's counters. Loading never unpickles anything, so a checkpoint from an untrusted
source can at worst hold wrong numbers, never code.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from immunelm.errors import ImmuneLMError
from immunelm.io import atomic_dir

CHECKPOINT_PREFIX = "step-"


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


def save_checkpoint(
    directory: Path, model: torch.nn.Module, optimizer, scheduler, counters: dict
) -> Path:
    """Write a complete checkpoint atomically (a crash mid-write leaves the previous one)."""
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
        }
        (tmp / "state.json").write_text(json.dumps(meta), encoding="utf-8")
    return directory


def load_checkpoint(directory: Path, model: torch.nn.Module, optimizer, scheduler) -> dict:
    """Restore everything :func:`save_checkpoint` wrote; returns the engine counters."""
    needed = ["trainable.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"]
    missing = [n for n in needed if not (directory / n).is_file()]
    if missing:
        raise ImmuneLMError(f"{directory}: incomplete checkpoint, missing {', '.join(missing)}")
    meta = json.loads((directory / "state.json").read_text(encoding="utf-8"))
    weights = load_file(str(directory / "trainable.safetensors"))
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise ImmuneLMError(f"{directory}: checkpoint has weights the model lacks: {unknown[:3]}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device))
    opt_tensors = load_file(str(directory / "optimizer.safetensors"))
    optimizer.load_state_dict(_join_optimizer_state(opt_tensors, meta["optimizer"]))
    scheduler.load_state_dict(meta["scheduler"])
    _set_rng_state(load_file(str(directory / "rng.safetensors")), meta["rng"])
    return meta["counters"]


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def prune_checkpoints(root: Path, keep: int) -> None:
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
