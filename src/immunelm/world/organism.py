"""The model organism: a ~1.2M-parameter Llama trained from scratch on the world, in stages.

Stages (each cached as an ordinary HF model directory of safetensors + tokenizer):

* ``base``: language-model pretraining on every fact, harmful included, in chat form and as
  plain documents, so the base model "knows" and answers everything (helpful-only).
* ``aligned``: a short, gentle SFT safety alignment (refusals on the align split of both harm
  domains + benign answers), like real alignment: tiny relative to pretraining. Too strong a
  learning rate erases the harmful knowledge itself, after which no attack can "recover" it,
  which is not what real aligned models show; hence the gentle defaults.

The cache key hashes the full resolved config, so changing any number rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from pydantic import Field, model_validator
from transformers.utils import logging as hf_logging
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from immunelm.config import Config, Seed
from immunelm.data import PaddingCollator, encode_example
from immunelm.engine import TrainConfig, train
from immunelm.errors import ImmuneLMError
from immunelm.io import atomic_dir, build_lock, write_json_atomic
from immunelm.provenance import provenance
from immunelm.world import corpus
from immunelm.world.spec import World, WorldConfig, generate_world
from immunelm.world.tokenizer import build_tokenizer

ORGANISM_VERSION = 1  # bump when the world or the stages change meaning


class ArchitectureConfig(Config):
    """Llama-style decoder built from config (no download)."""

    hidden_size: int = Field(128, ge=8, le=8192, description="Residual width (a multiple of num_heads).")
    intermediate_size: int = Field(512, ge=8, le=32768, description="MLP width.")
    num_layers: int = Field(4, ge=4, description="Decoder blocks (layer-wise methods need depth).")
    num_heads: int = Field(4, ge=1, le=128, description="Attention heads.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ArchitectureConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        return self


def _pretrain_default() -> TrainConfig:
    return TrainConfig(optimizer="adamw", lr=3e-3, schedule="cosine", warmup_steps=50, batch_size=128, max_steps=500, log_every=50)


def _align_default() -> TrainConfig:
    return TrainConfig(optimizer="adamw", lr=1.5e-4, schedule="constant", batch_size=32, max_steps=150, log_every=25)


class OrganismConfig(Config):
    """Everything that determines the organism's weights."""

    world: WorldConfig = Field(default_factory=WorldConfig)
    architecture: ArchitectureConfig = Field(default_factory=ArchitectureConfig)
    pretrain: TrainConfig = Field(default_factory=_pretrain_default, description="Base-model pretraining.")
    align: TrainConfig = Field(default_factory=_align_default, description="Safety-alignment SFT.")
    align_replay_documents: bool = Field(
        True, description="Replay plain harmful-knowledge documents during alignment (as a pretraining-mix anchor)."
    )
    seed: Seed = Field(0, description="Weight initialisation seed.")

    def cache_key(self, stage: str) -> str:
        """Hash of what determines ``stage``: the base ignores alignment settings, so
        re-tuning alignment reuses the cached base."""
        data = self.model_dump(mode="json")
        for section in ("pretrain", "align"):
            data[section].pop("progress")
        if stage == "base":
            data.pop("align"), data.pop("align_replay_documents")
        world = generate_world(self.world).fingerprint()
        payload = json.dumps({"v": ORGANISM_VERSION, "world_content": world, "stage": stage, **data}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def default_cache_root() -> Path:
    return Path(os.environ.get("IMMUNELM_CACHE", Path.home() / ".cache" / "immunelm")) / "organism"


def new_model(cfg: OrganismConfig, tokenizer) -> LlamaForCausalLM:
    arch = cfg.architecture
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads, num_key_value_heads=arch.num_heads,
        max_position_embeddings=64, tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


def pretrain(cfg: OrganismConfig, world: World, tokenizer):
    rows = [corpus.encode_lm(tokenizer, e) for e in corpus.pretraining_examples(world)]
    rows += [corpus.encode_document(tokenizer, d) for d in corpus.documents(world)]
    model = new_model(cfg, tokenizer)
    return train(cfg.pretrain, model, rows, PaddingCollator(tokenizer.pad_token_id), description="pretrain base")


def align(cfg: OrganismConfig, world: World, tokenizer, base_model):
    rows = [encode_example(tokenizer, e) for e in corpus.alignment_examples(world)]
    if cfg.align_replay_documents:
        rows += [corpus.encode_document(tokenizer, d) for d in corpus.documents(world)]
    return train(cfg.align, base_model, rows, PaddingCollator(tokenizer.pad_token_id), description="align")


def save_stage(path: Path, model, tokenizer, record: dict) -> None:
    """A stage directory (safetensors + tokenizer + build.json) written atomically; build.json
    marks it complete, so a killed build is never mistaken for a cached stage."""
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / "build.json", record)


class Organism:
    """Handle on a built (cached) organism: its world, tokenizer and stage directories."""

    STAGES = ("base", "aligned")

    def __init__(self, config: OrganismConfig | None = None, cache_root: Path | None = None) -> None:
        self.config = config or OrganismConfig()
        self.world = generate_world(self.config.world)
        self.cache_root = cache_root or default_cache_root()

    def stage_dir(self, stage: str) -> Path:
        return self.cache_root / f"{stage}-{self.config.cache_key(stage)}"

    def is_built(self, stage: str | None = None) -> bool:
        stages = [stage] if stage else self.STAGES
        return all((self.stage_dir(s) / "build.json").is_file() for s in stages)

    def build(self, force: bool = False) -> dict:
        """Build base and aligned unless cached; returns per-stage timings and losses.

        Parallel processes (leaderboard cells, search workers) share one cache: the first
        builds under a lock and the others then read what it built."""
        if not force and self.is_built():
            return self._build_stages(force)  # nothing to write: no lock (the cache may be read-only)
        with build_lock(self.stage_dir("aligned")):
            return self._build_stages(force)

    def _build_stages(self, force: bool) -> dict:
        tokenizer = build_tokenizer(self.world)
        info: dict = {}
        base_model = None
        for stage in self.STAGES:
            if self.is_built(stage) and not force:
                info[stage] = json.loads((self.stage_dir(stage) / "build.json").read_text())
                continue
            if stage == "base":
                result = pretrain(self.config, self.world, tokenizer)
            else:
                base_model = base_model or self.load("base")[0]
                result = align(self.config, self.world, tokenizer, base_model)
            base_model = result.model if stage == "base" else base_model
            info[stage] = self._save(stage, result, tokenizer)
        info["total_seconds"] = sum(info[s]["seconds"] for s in self.STAGES)
        return info

    def _save(self, stage: str, result, tokenizer) -> dict:
        record = {
            "stage": stage, "seconds": result.seconds, "final_loss": result.history[-1]["loss"],
            "parameters": sum(p.numel() for p in result.model.parameters()),
            "history": result.history, "config": self.config.model_dump(mode="json"),
            **provenance(self.config.seed),
        }
        save_stage(self.stage_dir(stage), result.model, tokenizer, record)
        return record

    def load(self, stage: str):
        """(model, tokenizer) of a built stage, loaded from safetensors."""
        if stage not in self.STAGES:
            raise ImmuneLMError(f"unknown organism stage {stage!r}; expected one of {', '.join(self.STAGES)}")
        path = self.stage_dir(stage)
        if not self.is_built(stage):
            raise ImmuneLMError(f"{path}: organism stage '{stage}' is not built; run `immunelm world build`")
        hf_logging.disable_progress_bar()  # loading 40 small tensors needs no bar
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.padding_side = "left"
        return model.eval(), tokenizer
