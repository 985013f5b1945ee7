import os

import pytest
import torch

# One thread keeps the fast tier predictable on 2-core CI machines.
torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tiny_llama():
    """A 2-layer Llama built from config (no download), with dropout so RNG state matters."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def make(seed: int = 0, dropout: float = 0.1):
        torch.manual_seed(seed)
        cfg = LlamaConfig(
            vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
            attention_dropout=dropout, pad_token_id=0, eos_token_id=1, bos_token_id=None,
        )
        return LlamaForCausalLM(cfg)

    return make


@pytest.fixture
def token_rows():
    """Fixed-length rows (every token labelled) so per-batch token counts are equal."""
    gen = torch.Generator().manual_seed(1)
    return [
        {"input_ids": ids, "labels": ids}
        for ids in torch.randint(2, 32, (40, 12), generator=gen).tolist()
    ]
