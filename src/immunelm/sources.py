"""Model source strings -> (model, tokenizer): local dir, .gguf, hub name, ``organism:<stage>``
or ``smol:<stage>`` (the real-model organism on SmolLM2-135M-Instruct).

Shared by the API (evaluate, immunise, finetune) and by defences that need a second
checkpoint (LoX reads the base). :func:`load_tokenizer_source` loads only the tokenizer, so
an evaluation can check every model's tokenizer against the task before any model work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from transformers import AutoTokenizer

from immunelm.data.chat import set_chat_template
from immunelm.models import load_model_and_tokenizer
from immunelm.models.adapters import adapter_base, attach_adapter, is_adapter_dir
from immunelm.models.loading import ensure_pad_token, resolve_source
from immunelm.world.organism import Organism, OrganismConfig

ORGANISM, SMOL = "organism:", "smol:"


def _organism(cache_dir: Optional[str], organism_config: OrganismConfig | None) -> Organism:
    return Organism(organism_config, cache_root=Path(cache_dir) if cache_dir else None)


def _smol(cache_dir: Optional[str], smol_config: Any):
    from immunelm.smol.organism import SmolOrganism

    return SmolOrganism(smol_config, cache_root=Path(cache_dir) if cache_dir else None)


def load_model_source(source: str, cache_dir: Optional[str] = None, trust_remote_code: bool = False,
                      organism_config: OrganismConfig | None = None, smol_config: Any = None,
                      chat_template: Optional[str] = None):
    """(model, tokenizer) for a model source string; organism stages are built once and cached."""
    if source.startswith(ORGANISM):
        organism = _organism(cache_dir, organism_config)
        organism.build()
        model, tokenizer = organism.load(source[len(ORGANISM):])
        model.train()
    elif source.startswith(SMOL):
        smol = _smol(cache_dir, smol_config)
        model, tokenizer = smol.load(source[len(SMOL):], build=True)
    elif is_adapter_dir(source):
        base, _ = load_model_source(adapter_base(source), cache_dir, trust_remote_code, organism_config, smol_config)
        model, tokenizer = attach_adapter(base, source), AutoTokenizer.from_pretrained(str(Path(source).expanduser()))
        ensure_pad_token(tokenizer, model)
    else:
        model, tokenizer = load_model_and_tokenizer(source, trust_remote_code=trust_remote_code, cache_dir=cache_dir)
    set_chat_template(tokenizer, chat_template)
    return model, tokenizer


def load_tokenizer_source(source: str, cache_dir: Optional[str] = None, trust_remote_code: bool = False,
                          organism_config: OrganismConfig | None = None, smol_config: Any = None,
                          chat_template: Optional[str] = None):
    """Only the tokenizer of a source (no weights; the organism's is rebuilt from its world)."""
    if source.startswith(ORGANISM):
        from immunelm.world.tokenizer import build_tokenizer

        tokenizer = build_tokenizer(_organism(cache_dir, organism_config).world)
    elif source.startswith(SMOL):
        tokenizer = _smol(cache_dir, smol_config).tokenizer(source[len(SMOL):])
    elif is_adapter_dir(source):
        adapter_base(source)  # a missing note is an error now, not after minutes of work
        tokenizer = AutoTokenizer.from_pretrained(str(Path(source).expanduser()))
        ensure_pad_token(tokenizer)
    else:
        name_or_dir, _ = resolve_source(source, cache_dir, "auto")
        tokenizer = AutoTokenizer.from_pretrained(name_or_dir, trust_remote_code=trust_remote_code)
        ensure_pad_token(tokenizer)
    set_chat_template(tokenizer, chat_template)
    return tokenizer
