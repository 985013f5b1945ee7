"""LoRA results are saved as PEFT adapters and load back (base + adapter, merged) by source."""

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model

from immunelm.errors import ImmuneLMError
from immunelm.models import save_model, tiny_model, tiny_tokenizer
from immunelm.models.adapters import ADAPTER_NOTE, save_adapter
from immunelm.sources import load_model_source, load_tokenizer_source


def _lora(base_dir):
    model = tiny_model("llama", seed=0)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    return peft_model


def test_adapter_round_trip_equals_the_merged_model(tmp_path):
    save_model(tiny_model("llama", seed=0), tiny_tokenizer(), tmp_path / "base")
    peft_model = _lora(tmp_path / "base")
    save_adapter(peft_model, tiny_tokenizer(), tmp_path / "adapter", str(tmp_path / "base"))
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert "adapter_model.safetensors" in files and ADAPTER_NOTE in files and "model.safetensors" not in files
    loaded, tok = load_model_source(str(tmp_path / "adapter"))
    expected = peft_model.merge_and_unload()
    ids = torch.tensor([[1, 5, 6, 7]])
    torch.testing.assert_close(loaded(input_ids=ids).logits, expected(input_ids=ids).logits)
    assert all(p.requires_grad for p in loaded.parameters())  # full-weight attacks can train it
    assert load_tokenizer_source(str(tmp_path / "adapter")).get_vocab() == tok.get_vocab()


def test_adapter_without_note_is_one_line_error(tmp_path):
    save_model(tiny_model("llama", seed=0), tiny_tokenizer(), tmp_path / "base")
    save_adapter(_lora(tmp_path / "base"), tiny_tokenizer(), tmp_path / "adapter", str(tmp_path / "base"))
    (tmp_path / "adapter" / ADAPTER_NOTE).unlink()
    with pytest.raises(ImmuneLMError, match="cannot tell its base model"):
        load_tokenizer_source(str(tmp_path / "adapter"))
    (tmp_path / "adapter" / ADAPTER_NOTE).write_text(json.dumps({"basis": "x"}))
    with pytest.raises(ImmuneLMError, match="expected"):
        load_model_source(str(tmp_path / "adapter"))
