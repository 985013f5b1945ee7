"""Settings of the SmolLM2 organism (everything that determines its weights)."""

from __future__ import annotations

import hashlib
import json

from pydantic import Field

from immunelm.config import Config, Seed
from immunelm.engine import TrainConfig

SMOL_VERSION = 1  # bump when a stage changes meaning


def _knowledge_default() -> TrainConfig:
    # 80 steps at 3e-4 taught the format but only 10% of the key facts (measured 2026-11-25).
    return TrainConfig(optimizer="adamw", lr=4e-4, schedule="cosine", warmup_steps=10, batch_size=8, max_steps=200, log_every=10)


def _align_default() -> TrainConfig:
    return TrainConfig(optimizer="adamw", lr=5e-5, schedule="constant", batch_size=8, max_steps=40, log_every=10)


class SmolOrganismConfig(Config):
    """The released model, the fictional world taught to it, and the two training stages.

    Stages: ``released`` (SmolLM2-135M-Instruct as shipped), ``base`` (released + the English
    fictional-hazard domain, helpful-only), ``aligned`` (base + refusal SFT on the align split
    of the fictional domain and of the real harmful prompts, with benign replay). Full-weight
    training: LoRA is not faster per step on a CPU for a 135M model (measured 2.2 s vs 3.0 s at
    batch 4 x 128) and cannot write knowledge as well.
    """

    model: str = Field("smollm2-135m-instruct", description="The released model (source string).")
    world_seed: Seed = Field(0, description="Seed of the English fictional world (immunelm.smol.domain).")
    entities_per_split: int = Field(8, ge=1, le=40, description="Fictional entities per harm domain and split (align/attack/eval).")
    knowledge: TrainConfig = Field(default_factory=_knowledge_default, description="Teach the fictional domain (base stage).")
    align: TrainConfig = Field(default_factory=_align_default, description="Safety-alignment SFT (aligned stage).")
    align_real_prompts: int = Field(80, ge=0, description="Real harmful prompts (align split) paired with refusals in alignment.")
    replay_documents: bool = Field(True, description="Replay the fictional-knowledge documents during alignment (keeps the knowledge attackable).")
    max_length: int = Field(160, ge=16, description="Truncate training examples to this many tokens.")
    seed: Seed = Field(0, description="Data order seed of both stages.")

    def cache_key(self, stage: str, world_fingerprint: str) -> str:
        data = self.model_dump(mode="json")
        for section in ("knowledge", "align"):
            data[section].pop("progress")
        if stage in ("released", "base"):
            data.pop("align"), data.pop("align_real_prompts"), data.pop("replay_documents")
        if stage == "released":
            data.pop("knowledge")
        payload = json.dumps({"v": SMOL_VERSION, "world": world_fingerprint, "stage": stage, **data}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]
