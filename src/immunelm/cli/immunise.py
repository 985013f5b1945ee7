"""``immunelm immunise <method>``: apply a registered defence and save a safetensors checkpoint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer
from pydantic import Field

from immunelm.cli.common import OVERRIDES_ARG, RUN_DIR_OPTION, CONFIG_OPTION, console, resolve_config, start_run
from immunelm.config import Config, load_config
from immunelm.data import DataSourceConfig, load_examples
from immunelm.defences import DefenceData, apply_defence, build_defence, merged
from immunelm.errors import ImmuneLMError
from immunelm.io import write_json_atomic
from immunelm.models import save_model
from immunelm.sources import load_model_source
from immunelm.world import corpus
from immunelm.world.organism import Organism, OrganismConfig
from immunelm.world.spec import BENIGN_TASKS, HARMFUL_DOMAINS


class DefenceDataSources(Config):
    refusals: Optional[DataSourceConfig] = Field(None, description="(harmful prompt, refusal) pairs.")
    harmful: Optional[DataSourceConfig] = Field(None, description="(harmful prompt, harmful answer) pairs.")
    benign: Optional[DataSourceConfig] = Field(None, description="Utility pairs.")


class ImmuniseConfig(Config):
    model: str = Field("organism:aligned", description="Model to immunise (see `immunelm finetune`).")
    base_model: Optional[str] = Field(
        None, description="Pre-alignment checkpoint, for defences that need it (LoX); organism models default to organism:base.")
    defence: dict[str, Any] = Field(default_factory=dict, description="The method's own config fields (e.g. defence.train.lr=1e-4).")
    data: DefenceDataSources = Field(default_factory=DefenceDataSources, description="Defender data; organism: built from the world.")
    organism: OrganismConfig = Field(default_factory=OrganismConfig)
    cache_dir: Optional[str] = None
    trust_remote_code: bool = False


def world_defence_data(organism_cfg: OrganismConfig) -> DefenceData:
    """The defender's data on the organism: the align split only (never attack or eval entities)."""
    world = Organism(organism_cfg).world
    align_items = [i for d in HARMFUL_DOMAINS for i in world.by_task(d, "align")]
    return DefenceData(
        refusals=corpus.chat_examples(align_items, world.train_phrasings, refuse=True, seed=world.config.seed + 1),
        harmful=corpus.chat_examples(align_items, world.train_phrasings),
        benign=corpus.chat_examples([i for t in BENIGN_TASKS for i in world.by_task(t)], world.train_phrasings),
    )


def check_data_sources(cfg: ImmuniseConfig) -> None:
    if cfg.data.refusals is None and not cfg.model.startswith("organism:"):
        raise ImmuneLMError("data.refusals: required for a model other than the organism (a file of harmful prompt -> refusal)")


def base_loader(cfg: ImmuniseConfig):
    """Loads the pre-alignment checkpoint on demand (None: no base known for this model)."""
    source = cfg.base_model or ("organism:base" if cfg.model.startswith("organism:") else None)
    if source is None:
        return None
    return lambda: load_model_source(source, cfg.cache_dir, cfg.trust_remote_code, cfg.organism)[0]


def defence_data(cfg: ImmuniseConfig) -> DefenceData:
    src = cfg.data
    check_data_sources(cfg)
    if src.refusals is None:
        data = world_defence_data(cfg.organism)
    else:
        data = DefenceData(
            refusals=load_examples(src.refusals),
            harmful=load_examples(src.harmful) if src.harmful else [],
            benign=load_examples(src.benign) if src.benign else [],
        )
    data.load_base = base_loader(cfg)
    return data


def run_immunise(method: str, cfg: ImmuniseConfig, run_dir: Path) -> Path:
    spec = build_defence(method)
    defence_cfg = load_config(spec.config_cls, base=cfg.defence, label=f"defence '{method}' (defence.*)")
    model, tokenizer = load_model_source(cfg.model, cfg.cache_dir, cfg.trust_remote_code, cfg.organism)
    started = time.perf_counter()
    result = apply_defence(method, model, tokenizer, defence_data(cfg), defence_cfg)
    immunised = merged(result.model)
    out = save_model(immunised, tokenizer, run_dir / "model")
    write_json_atomic(run_dir / "immunise.json", {
        "defence": method, "paper": spec.paper, "seconds": time.perf_counter() - started,
        "defence_config": defence_cfg.model_dump(mode="json"), "source_model": cfg.model, "info": result.info,
    })
    console.print(f"immunised with {method} in {time.perf_counter() - started:.1f}s -> {out}")
    return out


def immunise(
    method: str = typer.Argument(..., help="Defence name (e.g. deep-align, constrained-sft)."),
    config: Optional[Path] = CONFIG_OPTION,
    overrides: Optional[list[str]] = OVERRIDES_ARG,
    run_dir: Optional[Path] = RUN_DIR_OPTION,
) -> None:
    """Immunise a model with a registered defence; writes RUN_DIR/model (safetensors)."""
    spec = build_defence(method)  # fail fast on a typo, before loading anything
    cfg = resolve_config(ImmuniseConfig, config, overrides)
    defence_cfg = load_config(spec.config_cls, base=cfg.defence, label=f"defence '{method}' (defence.*)")  # validate first
    check_data_sources(cfg)
    if spec.requires_base(defence_cfg) and base_loader(cfg) is None:
        raise ImmuneLMError(f"base_model: required by '{method}' for a model other than the organism (the pre-alignment checkpoint)")
    path = start_run(f"immunise-{method}", run_dir, cfg, None)
    run_immunise(method, cfg, path)
