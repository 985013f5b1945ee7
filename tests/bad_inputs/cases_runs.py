"""Run directories and ``--resume``: occupied or impossible run dirs, nothing or the wrong thing
to resume, corrupt checkpoints; plus finetune/immunise inputs that must fail before the run dir.

Setups build what a previous run would have left (``provenance.json``, a model dir, checkpoints
in the format ``immunelm.engine.checkpoint`` writes), so the runner's snapshot check proves the
refused run changed none of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bad_inputs.framework import CACHE, PAIRS, BadInput

FT_ARGS = [CACHE, "data.path=pairs.jsonl", "train.progress=false", "train.max_steps=4", "train.checkpoint_every=2"]
FT = ["finetune", "--run-dir", "run", *FT_ARGS]
DATA = {"pairs.jsonl": PAIRS}


def prior_run(root: Path, name: str = "run") -> Path:
    """What a finished run leaves: its provenance, config and a model directory."""
    run = root / name
    (run / "model").mkdir(parents=True)
    (run / "provenance.json").write_text('{"seed": 0}\n')
    (run / "config.yaml").write_text("model: organism:aligned\n")
    (run / "model" / "model.safetensors").write_bytes(b"weights")
    return run


def fake_checkpoint(root: Path, overrides: list[str], step: int = 2, run: str = "run") -> Path:
    """A checkpoint as the engine writes it, recording the config given by ``overrides``."""
    import torch
    from safetensors.torch import save_file

    from immunelm.cli.finetune import FinetuneConfig
    from immunelm.config import load_config
    from immunelm.engine.checkpoint import run_fingerprint, run_record

    prior_run(root, run) if not (root / run).exists() else None
    directory = root / run / "checkpoints" / f"step-{step}"
    directory.mkdir(parents=True)
    for name in ("trainable", "optimizer", "rng"):
        save_file({"x": torch.zeros(4)}, str(directory / f"{name}.safetensors"))
    cfg = load_config(FinetuneConfig, None, overrides)
    meta = {"counters": {"step": step, "batches": step, "history": [], "evaluations": []}, "optimizer": {},
            "scheduler": {}, "rng": {}, "run": run_record(run_fingerprint(cfg.train, cfg, dataset_rows=PAIRS.count("\n")))}
    (directory / "state.json").write_text(json.dumps(meta))
    return directory


def truncate(path: Path, keep: int = 20) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def corrupt_only_checkpoint(root: Path, file: str) -> None:
    truncate(fake_checkpoint(root, FT_ARGS) / file)


def resume(case_id: str, expect: list[str], setup=None, extra: tuple[str, ...] = ()) -> BadInput:
    return BadInput(f"runs-resume-{case_id}", [*FT, "--resume", *extra], expect, dict(DATA), setup=setup)


def missing_checkpoint_file(root: Path) -> None:
    (fake_checkpoint(root, FT_ARGS) / "optimizer.safetensors").unlink()


def read_only_dir(root: Path) -> None:
    (root / "ro").mkdir()
    os.chmod(root / "ro", 0o555)


NOT_EMPTY = ["run", "not empty", "--resume", "--overwrite"]
TINY = ["organism.world.entities_per_harm_domain=6", "organism.world.n_countries=4"]

CASES = [
    BadInput("runs-finetune-non-empty-run-dir", FT, NOT_EMPTY, dict(DATA), setup=prior_run),
    BadInput("runs-immunise-non-empty-run-dir", ["immunise", "deep-align", "--run-dir", "run", CACHE], NOT_EMPTY, setup=prior_run),
    BadInput("runs-world-check-non-empty-run-dir", ["world", "check", "--run-dir", "run", CACHE], NOT_EMPTY, setup=prior_run),
    BadInput("runs-demo-non-empty-run-dir", ["demo", "--run-dir", "run", CACHE], NOT_EMPTY, setup=prior_run),
    BadInput("runs-run-dir-under-a-file", ["finetune", "--run-dir", "afile/run", *FT_ARGS], ["afile/run", "afile is a file"],
             {**DATA, "afile": "x"}),
    BadInput("runs-run-dir-is-a-file", ["finetune", "--run-dir", "afile", *FT_ARGS], ["afile", "not a directory"], {**DATA, "afile": "x"}),
    BadInput("runs-default-runs-is-a-file", ["finetune", *FT_ARGS], ["runs", "is a file"], {**DATA, "runs": "x"},
             reason="the default runs/<command>-<time> cannot be created under a file named runs"),
    BadInput("runs-overwrite-not-a-run-dir", [*FT, "--overwrite"], ["run", "--overwrite refused", "provenance.json"], dict(DATA),
             setup=lambda r: (r / "run").mkdir() or (r / "run" / "notes.txt").write_text("mine")),
    BadInput("runs-resume-and-overwrite", [*FT, "--resume", "--overwrite"], ["--resume", "--overwrite"], dict(DATA), setup=prior_run),
    BadInput("runs-resume-without-run-dir", ["finetune", *FT_ARGS, "--resume"], ["--resume needs --run-dir"], dict(DATA)),
    resume("no-run-dir", ["run", "nothing to resume"]),
    resume("no-checkpoint", ["run", "nothing to resume", "no checkpoint"], setup=prior_run),
    resume("different-config", ["step-2", "different run config", "train.lr", "1e-05"],
           setup=lambda r: fake_checkpoint(r, [*FT_ARGS, "train.lr=1e-5"])),
    resume("different-model", ["step-2", "model", "organism:base"], setup=lambda r: fake_checkpoint(r, [*FT_ARGS, "model=organism:base"])),
    resume("smaller-budget", ["step-2", "train.max_steps", "checkpoint 8, now 4"],
           setup=lambda r: fake_checkpoint(r, [a.replace("max_steps=4", "max_steps=8") for a in FT_ARGS])),
    resume("truncated-weights", ["no complete checkpoint", "step-2", "corrupt", "trainable.safetensors"],
           setup=lambda r: corrupt_only_checkpoint(r, "trainable.safetensors")),
    resume("truncated-state-json", ["no complete checkpoint", "corrupt", "state.json"],
           setup=lambda r: corrupt_only_checkpoint(r, "state.json")),
    resume("missing-optimizer-file", ["no complete checkpoint", "missing optimizer.safetensors"], setup=missing_checkpoint_file),
    BadInput("runs-finetune-missing-data-file", ["finetune", "--run-dir", "run", CACHE, "data.path=nope.jsonl"], ["nope.jsonl"]),
    BadInput("runs-finetune-missing-column", FT, ["pairs.jsonl", "response"], {"pairs.jsonl": '{"prompt": "hi", "answer": "x"}\n'}),
    BadInput("runs-finetune-empty-data", FT, ["pairs.jsonl", "empty"], {"pairs.jsonl": ""}),
    BadInput("runs-finetune-invalid-json-line", FT, ["pairs.jsonl", "line 7"], {"pairs.jsonl": PAIRS + "{oops\n"}),
    BadInput("runs-finetune-answer-cut-by-truncation", [*FT, "max_length=8"], ["pairs.jsonl", "max_length"],
             {"pairs.jsonl": '{"prompt": "' + "say " * 30 + '", "response": "ok"}\n'}),
    BadInput("runs-finetune-missing-model", [*FT, "model=./nomodel"], ["nomodel"], dict(DATA)),
    BadInput("runs-immunise-missing-data-file", ["immunise", "booster", "--run-dir", "run", "model=./m", "data.refusals.path=nope.jsonl"],
             ["nope.jsonl"], setup=lambda r: (r / "m").mkdir()),
    BadInput("runs-immunise-bad-data-line", ["immunise", "deep-align", "--run-dir", "run", CACHE, "data.refusals.path=pairs.jsonl"],
             ["pairs.jsonl", "line 7"], {"pairs.jsonl": PAIRS + "{oops\n"}),
    BadInput("runs-immunise-missing-model", ["immunise", "deep-align", "--run-dir", "run", "model=./nomodel",
                                             "data.refusals.path=pairs.jsonl"], ["nomodel"], dict(DATA)),
    BadInput("runs-demo-defence-config-unknown-field", ["demo", "--run-dir", "run", CACHE, "defence_config={trian: {lr: 1}}"],
             ["trian"]),
]

if os.geteuid() != 0:  # root may write anywhere, so the permission check cannot fail for it
    CASES.append(BadInput("runs-run-dir-not-writable", ["finetune", "--run-dir", "ro/run", *FT_ARGS], ["ro/run", "not writable"],
                          dict(DATA), setup=read_only_dir))
