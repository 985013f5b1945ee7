"""Model layer: loading any supported causal LM and a family-independent view of its internals."""

from immunelm.models.adapter import LINEAR_TYPES, ModelAdapter, find_linears, linear_io
from immunelm.models.hooks import HookPoint
from immunelm.models.layout import KNOWN_LAYOUTS, Layout, discover_layout, unwrap_peft
from immunelm.models.loading import (
    SMOLLM2_NAME,
    gguf_cache_dir,
    load_model_and_tokenizer,
    save_model,
)
from immunelm.models.tiny import TINY_FAMILIES, tiny_config, tiny_model, tiny_tokenizer

__all__ = [
    "HookPoint",
    "KNOWN_LAYOUTS",
    "LINEAR_TYPES",
    "Layout",
    "ModelAdapter",
    "SMOLLM2_NAME",
    "TINY_FAMILIES",
    "discover_layout",
    "find_linears",
    "gguf_cache_dir",
    "linear_io",
    "load_model_and_tokenizer",
    "save_model",
    "tiny_config",
    "tiny_model",
    "tiny_tokenizer",
    "unwrap_peft",
]
