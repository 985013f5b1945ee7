"""LoRA results as PEFT adapters: megabytes on disk instead of a merged float32 copy.

A LoRA run of SmolLM2-135M used to write 538 MB of merged weights; the adapter is a few MB.
Beside ``adapter_model.safetensors`` ImmuneLM writes :data:`ADAPTER_NOTE` naming the base
model's *source string* (``smol:aligned``, a directory, a hub name), so any command that
takes a model source can load the adapter: base first, adapter attached, merged in memory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from immunelm.errors import ImmuneLMError
from immunelm.io import atomic_dir

ADAPTER_NOTE = "immunelm_adapter.json"


def is_peft_model(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def is_adapter_dir(path: str | Path) -> bool:
    p = Path(path).expanduser()
    return p.is_dir() and (p / "adapter_config.json").is_file()


def save_adapter(model: Any, tokenizer: Any, out_dir: str | Path, base_source: str) -> Path:
    """The adapter (safetensors), the tokenizer and the base note, written atomically."""
    target = Path(out_dir)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / ADAPTER_NOTE).write_text(json.dumps({"base": base_source}, indent=2), encoding="utf-8")
    return target


def adapter_base(path: str | Path) -> str:
    """The base model source recorded with an adapter; a one-line error when it is unknown."""
    note = Path(path).expanduser() / ADAPTER_NOTE
    if not note.is_file():
        raise ImmuneLMError(
            f"{path}: a PEFT adapter without {ADAPTER_NOTE}; ImmuneLM cannot tell its base model "
            "(merge it into its base with peft, or add the note: {\"base\": \"<model source>\"})")
    try:
        return str(json.loads(note.read_text(encoding="utf-8"))["base"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ImmuneLMError(f"{note}: expected {{\"base\": \"<model source>\"}}") from exc


def attach_adapter(base_model: Any, path: str | Path) -> Any:
    """``base_model`` with the adapter at ``path`` merged in (plain weights, ready to attack)."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(base_model, str(Path(path).expanduser()), is_trainable=False)
    model = peft_model.merge_and_unload()
    # peft froze the base weights; a merged model is an ordinary model that attacks fine-tune
    # in full (left frozen, a full-weight attack would find nothing to train).
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def merged_full(model: Any) -> Any:
    """A LoRA model as full weights (adapters merged into the base); any other model as it is.
    Diagnostics compare checkpoints parameter by parameter, so an adapter must be merged first."""
    return model.merge_and_unload() if is_peft_model(model) else model
