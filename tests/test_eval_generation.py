"""Batched generation: equal to one-by-one decoding, stop strings, seeded sampling, order."""

import pytest
import torch

from immunelm.errors import ImmuneLMError
from immunelm.eval.generation import GenerationConfig, generate, generate_one_by_one, truncate_at_stop
from immunelm.models.tiny import tiny_model, tiny_tokenizer

# Different lengths, so batches really are left-padded.
PROMPTS = [
    "hello", "what is the answer to this question please", "help", "can you make it safe and do this with the world",
    "sorry", "yes no", "how can i do that", "please help with some steps here", "the world", "is it safe",
]
GREEDY = GenerationConfig(max_new_tokens=10, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2"])
def test_batched_greedy_equals_one_by_one(family, tok):
    model = tiny_model(family)
    lengths = {len(tok(p)["input_ids"]) for p in PROMPTS}
    assert len(lengths) > 3  # padding is exercised
    batched = generate(model, tok, PROMPTS, GREEDY)
    single = generate_one_by_one(model, tok, PROMPTS, GREEDY)
    assert batched == single
    assert len(batched) == len(PROMPTS) and any(a.strip() for a in batched)


def test_order_preserved_under_permutation(llama, tok):
    forward = generate(llama, tok, PROMPTS, GREEDY)
    perm = [3, 0, 9, 5, 1, 8, 2, 7, 6, 4]
    permuted = generate(llama, tok, [PROMPTS[i] for i in perm], GREEDY)
    assert permuted == [forward[i] for i in perm]
    assert len(set(forward)) > 1  # otherwise order would be untestable


def test_chat_messages_accepted(llama, tok):
    as_text = generate(llama, tok, ["hello", "help"], GREEDY)
    as_messages = generate(llama, tok, [[{"role": "user", "content": "hello"}], [{"role": "user", "content": "help"}]], GREEDY)
    assert as_messages == as_text
    multi = [{"role": "system", "content": "be safe"}, {"role": "user", "content": "hello"}]
    mixed = ["help", multi]
    assert generate(llama, tok, mixed, GREEDY) == generate_one_by_one(llama, tok, mixed, GREEDY)


def test_truncate_at_stop():
    assert truncate_at_stop("a b c d", ["c", "b"]) == "a "
    assert truncate_at_stop("a b c d", ["z"]) == "a b c d"
    assert truncate_at_stop("a b c d", ["", "d"]) == "a b c "


def test_stop_strings_cut_answers_per_row(llama, tok):
    plain = generate(llama, tok, PROMPTS, GREEDY)
    words = [w for a in plain for w in a.split()[1:]]
    stop = max(set(words), key=words.count)  # a word several answers contain after their first word
    stopped = generate(llama, tok, PROMPTS, GREEDY.model_copy(update={"stop_strings": [stop]}))
    assert stopped == [a[: a.find(stop)] if stop in a else a for a in plain]
    assert sum(stop in a for a in plain) >= 2 and not any(stop in a for a in stopped)


def test_generation_ends_at_eos(llama, tok):
    plain = generate(llama, tok, ["hello"], GREEDY)[0].split()
    eos_word = plain[3]
    eos_tok = tiny_tokenizer()
    eos_tok.eos_token = eos_word
    ended = generate(llama, eos_tok, ["hello"], GREEDY)[0]
    assert ended == " ".join(plain[: plain.index(eos_word)])


def test_sampling_is_seeded(llama, tok):
    sample = GREEDY.model_copy(update={"do_sample": True, "seed": 7})
    state = torch.get_rng_state()
    first = generate(llama, tok, PROMPTS, sample)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert generate(llama, tok, PROMPTS, sample) == first
    other = generate(llama, tok, PROMPTS, sample.model_copy(update={"seed": 8}))
    assert other != first
    assert first != generate(llama, tok, PROMPTS, GREEDY)


def test_training_mode_restored(tok):
    model = tiny_model("llama").train()
    generate(model, tok, ["hello"], GREEDY)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    generate(model, tok, ["hello"], GREEDY)
    assert not model.training


def test_peft_wrapped_model(tok):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert generate(model, tok, PROMPTS[:5], GREEDY) == generate_one_by_one(model, tok, PROMPTS[:5], GREEDY)


def test_bad_prompts(llama, tok):
    assert generate(llama, tok, [], GREEDY) == []
    with pytest.raises(ImmuneLMError, match="role"):
        generate(llama, tok, [[{"text": "hello"}]], GREEDY)
    with pytest.raises(ImmuneLMError):
        generate(llama, tok, [[]], GREEDY)


def test_prefill_continues_exactly_where_greedy_would(llama, tok):
    """Forcing the first tokens of the model's own greedy answer must give the rest of that answer."""
    config = GREEDY.model_copy(update={"max_new_tokens": 8})
    free = generate(llama, tok, PROMPTS, config)
    prefills, tails = [], []
    for answer in free:
        words = answer.split()
        prefills.append(" ".join(words[:2]))
        tails.append(" ".join(words[2:]))
    shorter = GREEDY.model_copy(update={"max_new_tokens": 6})
    forced = generate(llama, tok, PROMPTS, shorter, prefills=prefills)
    assert [f.split() for f in forced] == [t.split() for t in tails]
