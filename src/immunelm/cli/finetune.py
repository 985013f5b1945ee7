"""``immunelm finetune``: supervised fine-tuning of any model on any chat dataset, via the engine.

The same command runs on one CPU, one GPU or many (``accelerate launch -m immunelm finetune
...``): the engine picks up the distributed setup from ``accelerate``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from pydantic import Field

from immunelm.cli.common import CONFIG_OPTION, OVERRIDES_ARG, RUN_DIR_OPTION, console, resolve_config, start_run
from immunelm.config import Config
from immunelm.data import DataSourceConfig, PaddingCollator, encode_example, load_examples
from immunelm.engine import TrainConfig, train
from immunelm.engine.engine import get_accelerator
from immunelm.io import write_json_atomic
from immunelm.api.immunise import save_immunised
from immunelm.smol.config import SmolOrganismConfig
from immunelm.sources import load_model_source
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


def run(cfg: FinetuneConfig, run_dir: Path, resume: bool = False) -> Path:
    accelerator = get_accelerator(cfg.train.mixed_precision)
    with accelerator.main_process_first():  # one process builds/converts caches, the others reuse them
        model, tokenizer = load_model_source(cfg.model, cfg.cache_dir, cfg.trust_remote_code, cfg.organism, cfg.smol,
                                             cfg.chat_template)
    rows = [encode_example(tokenizer, e, cfg.max_length) for e in load_examples(cfg.data)]
    result = train(cfg.train, model, rows, PaddingCollator.for_tokenizer(tokenizer), output_dir=run_dir, accelerator=accelerator,
                   resume=resume, description="finetune")
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
    resume: bool = typer.Option(False, help="Continue from the latest checkpoint in --run-dir."),
) -> None:
    """Fine-tune a model on a chat dataset (full or LoRA) with the shared engine."""
    cfg = resolve_config(FinetuneConfig, config, overrides)
    accelerator = get_accelerator(cfg.train.mixed_precision)
    path = start_run("finetune", run_dir, cfg, cfg.train.seed) if accelerator.is_main_process else run_dir
    if path is None:
        raise typer.BadParameter("--run-dir is required when running under several processes", param_hint="--run-dir")
    run(cfg, path, resume)
