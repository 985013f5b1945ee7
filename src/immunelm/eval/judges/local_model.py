"""Judge models (a moderation classifier, a rubric grader) load like every other model:
from a local directory, safetensors weights only, ``trust_remote_code`` off unless asked for.

Unpickling a ``pytorch_model.bin`` can run arbitrary code, and a judge directory is as much
user input as a model directory, so a pickle-only judge is refused with the model loader's own
message (:func:`immunelm.models.loading.check_model_dir`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from immunelm.errors import ImmuneLMError
from immunelm.models.loading import check_model_dir


def check_judge_dir(path: str, what: str) -> Path:
    """The judge's directory exists and holds a safetensors Hugging Face model (no weights read)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ImmuneLMError(f"{folder}: {what} directory not found (expected a local Hugging Face model directory "
                            "with safetensors weights; judges never download)")
    check_model_dir(folder)
    return folder


def load_judge_model(auto_class: Any, path: str, what: str, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) from a checked local directory, safetensors only."""
    from transformers import AutoTokenizer

    folder = str(check_judge_dir(path, what))
    try:
        model = auto_class.from_pretrained(folder, use_safetensors=True, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImmuneLMError(f"{folder}: cannot load the {what} ({reason[:200]})") from exc
    return model, tokenizer
