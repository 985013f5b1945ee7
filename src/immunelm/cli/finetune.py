"""``immunelm finetune``: supervised fine-tuning of any model on any chat dataset, via the engine.

The same command runs on one CPU, one GPU or many (``accelerate launch -m immunelm finetune
...``): the engine picks up the distributed setup from ``accelerate``.

Inputs are checked before anything is written (:func:`prepare`): the data file is read and
encoded with the model source's tokenizer, and ``--resume`` finds its checkpoint, all before
the run directory is created or a model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from pydantic import Field

from immunelm.cli.common import (
    CONFIG_OPTION, OVERRIDES_ARG, OVERWRITE_OPTION, RUN_DIR_OPTION, check_run_dir, console, resolve_config, start_run,
)
from immunelm.config import Config
from immunelm.data import DataSourceConfig, PaddingCollator, encode_examples, load_examples
from immunelm.engine import TrainConfig, train
from immunelm.engine.checkpoint import find_resumable, run_fingerprint
from immunelm.engine.engine import get_accelerator
from immunelm.io import write_json_atomic
from immunelm.api.immunise import save_immunised
from immunelm.smol.config import SmolOrganismConfig
from immunelm.sources import load_model_source, load_tokenizer_source
from immunelm.world.organism import OrganismConfig


class FinetuneConfig(Config):
    model: str = Field("organism:aligned", description="Local dir, .gguf file, hub name, smollm2-135m-instruct, or organism:base|aligned.")
    data: DataSourceConfig = Field(description="Training conversations (loss on the final assistant message).")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(max_steps=100), description="Engine settings.")
    max_length: int = Field(512, ge=8, description="Truncate encoded examples to this many tokens.")
    trust_remote_code: bool = Field(False, description="Allow model repos to run their own code (off by default).")
    cache_dir: Optional[str] = Field(None, description="Organism/GGUF cache directory.")
    organism: OrganismConfig = Field(default_factory=OrganismConfig, description="Used when model is organism:<stage>.")
    smol: SmolOrganismConfig = Field(default_factory=SmolOrganismConfig, description="Used when model is smol:<stage>.")
    chat_template: Optional[str] = Field(None, description="For tokenizers without one: chatml, a .jinja file or template text.")
    save_merged: bool = Field(False, description="LoRA runs: also save merged full weights (default: the adapter only).")


def prepare(cfg: FinetuneConfig) -> list[dict]:
    """Check the inputs before a run directory or a model exists: read and validate the data,
    load only the model source's tokenizer (a missing model fails here), encode every example."""
    examples = load_examples(cfg.data)
    tokenizer = load_tokenizer_source(cfg.model, cfg.cache_dir, cfg.trust_remote_code, cfg.organism, cfg.smol,
                                      cfg.chat_template)
    return encode_examples(tokenizer, examples, cfg.max_length, cfg.data.label)  # an all-cut answer is an error here


def resume_point(cfg: FinetuneConfig, run_dir: Path, rows: list[dict]) -> str:
    """The checkpoint ``--resume`` will continue (relative to the run dir); one line if there is
    none, if every one is corrupt, or if it was written under a different config."""
    data, _ = find_resumable(run_dir / "checkpoints", run_fingerprint(cfg.train, cfg, len(rows)), tensors=False)
    return str(data.directory.relative_to(run_dir))


def _note(message: str) -> None:
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def run(cfg: FinetuneConfig, run_dir: Path, resume: bool = False, rows: list[dict] | None = None) -> Path:
    """Train and save ``run_dir/model``; ``rows``: the examples already encoded by :func:`prepare`."""
    accelerator = get_accelerator(cfg.train.mixed_precision)
    with accelerator.main_process_first():  # one process builds/converts caches, the others reuse them
        model, tokenizer = load_model_source(cfg.model, cfg.cache_dir, cfg.trust_remote_code, cfg.organism, cfg.smol,
                                             cfg.chat_template)
    if rows is None:
        rows = encode_examples(tokenizer, load_examples(cfg.data), cfg.max_length, cfg.data.label)
    result = train(cfg.train, model, rows, PaddingCollator.for_tokenizer(tokenizer), output_dir=run_dir, accelerator=accelerator,
                   resume=resume, description="finetune", run_config=cfg, log=_note)
    if accelerator.is_main_process:
        saved = save_immunised(result.model, tokenizer, run_dir / "model", cfg.model, cfg.save_merged)
        write_json_atomic(run_dir / "train_log.json", {
            "history": result.history, "steps": result.steps, "seconds": result.seconds,
            "processes": accelerator.num_processes, "saved": saved,
        })
        console.print(f"saved fine-tuned model to {run_dir / 'model'} ({result.steps} steps, {result.seconds:.1f}s)")
    return run_dir / "model"


def finetune(
    config: Optional[Path] = CONFIG_OPTION,
    overrides: Optional[list[str]] = OVERRIDES_ARG,
    run_dir: Optional[Path] = RUN_DIR_OPTION,
    resume: bool = typer.Option(False, help="Continue from the latest checkpoint in --run-dir (same config)."),
    overwrite: bool = OVERWRITE_OPTION,
) -> None:
    """Fine-tune a model on a chat dataset (full or LoRA) with the shared engine."""
    cfg = resolve_config(FinetuneConfig, config, overrides)
    accelerator = get_accelerator(cfg.train.mixed_precision)
    if accelerator.is_main_process:  # the others would race with the main process creating it
        check_run_dir(run_dir, resume, overwrite)  # cheap: before reading a large data file
    rows = prepare(cfg)
    resumed_from = resume_point(cfg, run_dir, rows) if resume and run_dir is not None else None
    path = start_run("finetune", run_dir, cfg, cfg.train.seed, resume=resume, overwrite=overwrite, resumable=True,
                     resumed_from=resumed_from) if accelerator.is_main_process else run_dir
    if path is None:
        raise typer.BadParameter("--run-dir is required when running under several processes", param_hint="--run-dir")
    run(cfg, path, resume, rows)
