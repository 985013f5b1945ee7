"""Where the decoder blocks, final norm, attention and MLP live inside a causal LM.

Every defence and diagnostic in ImmuneLM needs the same few modules (the blocks, the
attention/MLP of a block, the final norm), but Hugging Face families keep them under different
attribute names. Rather than hard-coding ``model.model.layers`` at each call site, a small table
records the families we test, and :func:`discover_layout` finds the same modules by structure
for anything else, so a new llama-like family works without a code change.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from immunelm.errors import ImmuneLMError

ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn")


@dataclass(frozen=True)
class Layout:
    """Dotted paths from the (un-wrapped) Hugging Face model to the modules ImmuneLM uses.

    ``attention`` and ``mlp`` are child names *inside* one block.
    """

    blocks: str
    final_norm: str
    attention: str = "self_attn"
    mlp: str = "mlp"


_LLAMA_LIKE = Layout(blocks="model.layers", final_norm="model.norm")

#: Families covered by the test table (tests/test_models_adapter.py).
KNOWN_LAYOUTS: dict[str, Layout] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "gpt2": Layout(blocks="transformer.h", final_norm="transformer.ln_f", attention="attn"),
    "gpt_neox": Layout(blocks="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm", attention="attention"),
}


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The Hugging Face model under any peft wrappers (``PeftModel`` -> ``LoraModel`` -> model).

    Duck-typed so that this module does not import peft. peft replaces projections in place, so
    the blocks found on the unwrapped model are the very modules the wrapper runs.
    """
    while hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        inner = model.get_base_model()
        if inner is model:
            break
        model = inner
    return model


def get_submodule(root: nn.Module, path: str) -> nn.Module | None:
    """``root.a.b.c`` for ``path="a.b.c"``, or None when any step is missing."""
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def _child_name(block: nn.Module, names: tuple[str, ...], class_hint: str) -> str | None:
    children = dict(block.named_children())
    for name in names:
        if name in children:
            return name
    for name, child in children.items():
        if class_hint in type(child).__name__.lower():
            return name
    return None


def _block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Every ModuleList whose items all share one class (a stack of identical blocks)."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(child) for child in module}) == 1:
                found.append((name, module))
    return found


def _final_norm_after(model: nn.Module, blocks_path: str) -> str | None:
    """The first norm registered after the block list in the same parent (the final norm)."""
    parent_path, _, list_name = blocks_path.rpartition(".")
    parent = get_submodule(model, parent_path) if parent_path else model
    if parent is None:
        return None
    seen_blocks = False
    for name, child in parent.named_children():
        if name == list_name:
            seen_blocks = True
        elif seen_blocks and "norm" in type(child).__name__.lower():
            return f"{parent_path}.{name}" if parent_path else name
    return None


def discover_layout(model: nn.Module) -> Layout | None:
    """Find the layout by structure: the longest stack of identical blocks that each hold an
    attention and an MLP child, plus the norm that follows the stack. None if nothing fits."""
    candidates = sorted(_block_lists(model), key=lambda item: len(item[1]), reverse=True)
    for path, blocks in candidates:
        block = blocks[0]
        attention = _child_name(block, ATTENTION_NAMES, "attention")
        mlp = _child_name(block, MLP_NAMES, "mlp")
        final_norm = _final_norm_after(model, path)
        if attention and mlp and final_norm:
            return Layout(blocks=path, final_norm=final_norm, attention=attention, mlp=mlp)
    return None


def _layout_fits(model: nn.Module, layout: Layout) -> bool:
    blocks = get_submodule(model, layout.blocks)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        return False
    if get_submodule(model, layout.final_norm) is None:
        return False
    block_children = dict(blocks[0].named_children())
    return layout.attention in block_children and layout.mlp in block_children


def resolve_layout(model: nn.Module, family: str) -> Layout:
    """The table entry for ``family`` if it fits this model, else a discovered layout.

    Raises ImmuneLMError naming the family and class when neither works, because every later
    step (hooks, defences) would otherwise fail with an opaque AttributeError.
    """
    known = KNOWN_LAYOUTS.get(family)
    if known is not None and _layout_fits(model, known):
        return known
    found = discover_layout(model)
    if found is None:
        supported = ", ".join(sorted(KNOWN_LAYOUTS))
        raise ImmuneLMError(
            f"model family '{family}' ({type(model).__name__}) has no recognisable stack of decoder "
            f"blocks with attention, MLP and a final norm; supported families: {supported}"
        )
    return found
