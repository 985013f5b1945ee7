"""Model source strings -> (model, tokenizer): local dir, .gguf, hub name, ``organism:<stage>``
or ``smol:<stage>`` (the real-model organism on SmolLM2-135M-Instruct).

Shared by the API (evaluate, immunise, finetune) and by defences that need a second
checkpoint (LoX reads the base). :func:`load_tokenizer_source` loads only the tokenizer, so
an evaluation can check every model's tokenizer against the task before any model work, and
:func:`check_model_source` checks a source without loading anything heavy (stage names, paths,
safetensors headers, GGUF magic, Hub availability), so every model of an evaluation is checked
before the first one is evaluated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from transformers import AutoTokenizer

from immunelm.data.chat import set_chat_template
from immunelm.errors import ImmuneLMError
from immunelm.models import load_model_and_tokenizer
from immunelm.models.adapters import adapter_base, attach_adapter, is_adapter_dir
from immunelm.models.loading import (
    SMOLLM2_NAME, _looks_like_path, check_hub_source, check_model_dir, ensure_pad_token, resolve_source, smollm2_gguf_path,
)
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


GGUF_MAGIC = b"GGUF"
_MAX_ADAPTER_DEPTH = 4  # an adapter on an adapter is fine; a note naming itself is a loop


def check_model_source(source: str, depth: int = 0) -> None:
    """Refuse a source that cannot load, cheaply (no weights are read); one line naming it."""
    if source.startswith(ORGANISM):
        _check_stage(source, Organism.STAGES, "organism", "immunelm world build")
    elif source.startswith(SMOL):
        from immunelm.smol.organism import SmolOrganism

        _check_stage(source, SmolOrganism.STAGES, "smol", "immunelm smol build")
    elif source.strip().lower() == SMOLLM2_NAME:
        smollm2_gguf_path()
    elif is_adapter_dir(source):
        if depth >= _MAX_ADAPTER_DEPTH:
            raise ImmuneLMError(f"{source}: adapter bases nest more than {_MAX_ADAPTER_DEPTH} deep (does the note name itself?)")
        check_model_source(adapter_base(source), depth + 1)
    else:
        _check_path_or_hub(source)


def _check_stage(source: str, stages: tuple[str, ...], what: str, build: str) -> None:
    stage = source.split(":", 1)[1]
    if stage not in stages:
        raise ImmuneLMError(f"'{source}': unknown {what} stage '{stage}'; expected {what}:{('|' + what + ':').join(stages)} "
                            f"(built by `{build}`)")


def _check_path_or_hub(source: str) -> None:
    path = Path(source).expanduser()
    if path.is_file():
        _check_gguf(path)
    elif path.is_dir():
        check_model_dir(path)
        _check_safetensors(path)
    elif _looks_like_path(source):
        raise ImmuneLMError(f"{source}: no such model directory or .gguf file")
    else:
        check_hub_source(source)


def _check_gguf(path: Path) -> None:
    if path.suffix.lower() != ".gguf":
        raise ImmuneLMError(f"{path}: expected a model directory or a .gguf file")
    with path.open("rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise ImmuneLMError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")


def _check_safetensors(path: Path) -> None:
    """Each weights file's header parses and fits the file (safe_open reads only the header),
    so a truncated or corrupt copy fails now rather than after the other models' attacks."""
    from safetensors import safe_open

    for weights in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt") as fh:
                fh.keys()
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ImmuneLMError(f"{weights}: not a readable safetensors file ({reason[:200]})") from exc


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
        tokenizer = _auto_tokenizer(source, str(Path(source).expanduser()), False)
    else:
        name_or_dir, _ = resolve_source(source, cache_dir, "auto")
        tokenizer = _auto_tokenizer(source, name_or_dir, trust_remote_code)
    set_chat_template(tokenizer, chat_template)
    return tokenizer


def _auto_tokenizer(source: str, name_or_dir: str, trust_remote_code: bool):
    """AutoTokenizer with any failure (missing files, a bad tokenizer.json) as one line."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_dir, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a bad tokenizer
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImmuneLMError(f"{source}: cannot load its tokenizer ({reason[:200]})") from exc
    ensure_pad_token(tokenizer)
    return tokenizer
