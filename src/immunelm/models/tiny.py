"""Tiny randomly initialised models, tokenizers and GGUF files for tests (no downloads).

Tests of defences and diagnostics must run in seconds on a CPU, and must cover every family the
adapter supports; a 2-layer, 32-wide model of each family does that. The models are random, so
they are only good for checking plumbing (shapes, hooks, save/load), never behaviour.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from immunelm.errors import ImmuneLMError

#: Families with a tiny config (the adapter's test table).
TINY_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt2", "gpt_neox")

#: Special token ids shared by every tiny config and :func:`tiny_tokenizer`.
SPECIAL_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}

_TINY_WORDS = (
    "the a is of to and in it you i this that what how can not no yes help with please "
    "here are some steps sure sorry cannot do make safe answer question hello world"
).split()
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def _size_kwargs(family: str, hidden: int, layers: int, heads: int, kv_heads: int,
                 intermediate: int, max_positions: int) -> dict:
    if family == "gpt2":
        return {"n_embd": hidden, "n_layer": layers, "n_head": heads, "n_inner": intermediate,
                "n_positions": max_positions}
    common = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
              "intermediate_size": intermediate, "max_position_embeddings": max_positions}
    if family == "gpt_neox":
        return common
    return {**common, "num_key_value_heads": kv_heads, "head_dim": hidden // heads}


def tiny_config(
    family: str,
    vocab_size: int = 64,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 64,
    max_positions: int = 128,
    **overrides,
) -> PretrainedConfig:
    """A tiny config of ``family`` (grouped-query attention where the family has it)."""
    if family not in TINY_FAMILIES:
        raise ImmuneLMError(f"no tiny config for family '{family}'; known: {', '.join(TINY_FAMILIES)}")
    size = _size_kwargs(family, hidden, layers, heads, kv_heads, intermediate, max_positions)
    return AutoConfig.for_model(family, vocab_size=vocab_size, **{**SPECIAL_IDS, **size, **overrides})


def tiny_model(family: str, seed: int = 0, **config_kwargs) -> PreTrainedModel:
    """A randomly initialised float32 model in eval mode; ``seed`` makes it reproducible
    without disturbing the global RNG."""
    config = tiny_config(family, **config_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def tiny_tokenizer(with_pad: bool = True, chat_template: str | None = TINY_CHAT_TEMPLATE):
    """A whitespace word-level tokenizer whose ids fit :func:`tiny_config`'s vocabulary.

    Ids 0-3 are ``<pad> <s> </s> <unk>`` (matching :data:`SPECIAL_IDS`); the chat template
    renders ``role: content </s>`` so chat encoding can be tested without a real model.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    words = specials + ["system:", "user:", "assistant:"] + list(_TINY_WORDS)
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>" if with_pad else None,
        chat_template=chat_template,
    )
    return tokenizer


# --------------------------------------------------------------------------- GGUF
def _gguf_vocab() -> tuple[list[str], list[str], list[int]]:
    """Byte-level BPE vocabulary (256 byte symbols, one merge, ``<|endoftext|>``) as GGUF
    stores it: tokens, merges, token types (1 normal, 3 control)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = list(bytes_to_unicode().values()) + ["\u0120t", "<|endoftext|>"]
    return tokens, ["\u0120 t"], [1] * (len(tokens) - 1) + [3]


def _permute_qk(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's rotary permutation of q/k rows (transformers undoes it when loading)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, -1).transpose(1, 2).reshape(weight.shape)


def _gguf_tensors(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    cfg = model.config
    state = model.state_dict()
    out = {
        "token_embd.weight": state["model.embed_tokens.weight"],
        "output_norm.weight": state["model.norm.weight"],
        "output.weight": state["lm_head.weight"],
    }
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(cfg.num_hidden_layers):
        prefix = f"model.layers.{i}."
        for hf, gg in names.items():
            out[f"blk.{i}.{gg}.weight"] = state[f"{prefix}{hf}.weight"]
        out[f"blk.{i}.attn_q.weight"] = _permute_qk(state[f"{prefix}self_attn.q_proj.weight"], cfg.num_attention_heads)
        out[f"blk.{i}.attn_k.weight"] = _permute_qk(state[f"{prefix}self_attn.k_proj.weight"], cfg.num_key_value_heads)
    return out


def write_tiny_gguf(path: str | Path, seed: int = 0) -> PreTrainedModel:
    """Write a tiny llama (float32 tensors, byte-level BPE tokenizer, chat template) as a GGUF
    file and return the same model, so a GGUF import can be checked logit for logit."""
    from gguf import GGUFWriter

    tokens, merges, token_types = _gguf_vocab()
    model = tiny_model("llama", seed=seed, vocab_size=len(tokens), tie_word_embeddings=False,
                       bos_token_id=len(tokens) - 1, eos_token_id=len(tokens) - 1, pad_token_id=None)
    cfg = model.config
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types(token_types)
    writer.add_bos_token_id(len(tokens) - 1)
    writer.add_eos_token_id(len(tokens) - 1)
    writer.add_chat_template(TINY_CHAT_TEMPLATE.replace("</s>", "<|endoftext|>"))
    for name, tensor in _gguf_tensors(model).items():
        writer.add_tensor(name, tensor.detach().float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model
