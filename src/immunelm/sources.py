"""Model source strings -> (model, tokenizer): local dir, .gguf, hub name, or ``organism:<stage>``.

Shared by the CLI verbs and by defences that need a second checkpoint (LoX reads the base).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from immunelm.models import load_model_and_tokenizer
from immunelm.world.organism import Organism, OrganismConfig


def load_model_source(source: str, cache_dir: Optional[str] = None, trust_remote_code: bool = False,
                      organism_config: OrganismConfig | None = None):
    """(model, tokenizer) for a model source string; ``organism:<stage>`` builds/reuses the organism."""
    if source.startswith("organism:"):
        organism = Organism(organism_config, cache_root=Path(cache_dir) if cache_dir else None)
        organism.build()
        model, tokenizer = organism.load(source.split(":", 1)[1])
        return model.train(), tokenizer
    return load_model_and_tokenizer(source, trust_remote_code=trust_remote_code, cache_dir=cache_dir)
