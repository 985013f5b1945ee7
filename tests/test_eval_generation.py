"""Batched generation: equal to one-by-one decoding, stop strings, seeded sampling, order, prefilling."""

import pytest
import torch

from immunelm.data import IGNORE_INDEX, Example, encode_example, encode_prompt
from immunelm.errors import ImmuneLMError
from immunelm.eval.generation import (
    GenerationConfig, generate, generate_one_by_one, response_prefix_ids, truncate_at_stop,
)
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


# --------------------------------------------------------------------------- prefilling
CHATML = (  # SmolLM2's layout: the assistant header ends in a newline, so a prefix needs no space
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def byte_tokenizer():
    """A byte-level BPE tokenizer (spacing lives in the tokens, as in GPT-2/SmolLM2) with a chatml template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + list(bytes_to_unicode().values())
    backend = Tokenizer(models.BPE({s: i for i, s in enumerate(symbols)}, []))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", chat_template=CHATML)


@pytest.fixture(scope="module")
def byte_tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def byte_llama(byte_tok):
    return tiny_model("llama", vocab_size=len(byte_tok), pad_token_id=0, bos_token_id=1, eos_token_id=2)


def greedy_ids(model, tok, prompt, n):
    """The model's own greedy answer ids for one prompt, by plain ``model.generate``."""
    ids = torch.tensor([encode_prompt(tok, [{"role": "user", "content": prompt}])])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    new = out[0, ids.shape[1]:].tolist()
    return new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new


def test_prefill_continues_exactly_where_greedy_would(llama, tok):
    """Forcing the first tokens of the model's own greedy answer gives back that whole answer."""
    free = generate(llama, tok, PROMPTS, GREEDY.model_copy(update={"max_new_tokens": 8}))
    prefixes = [greedy_ids(llama, tok, p, 8)[:2] for p in PROMPTS]
    assert sum(len(p) == 2 for p in prefixes) >= 5
    forced = generate(llama, tok, PROMPTS, GREEDY.model_copy(update={"max_new_tokens": 6}), prefill_ids=prefixes)
    assert forced == free
    assert all(f.startswith(tok.decode(p)) for f, p in zip(forced, prefixes))


def test_prefill_answer_starts_with_prefix_without_added_space(llama, tok):
    example = Example.pair("hello", "sure here are some steps")
    prefix = response_prefix_ids(tok, example, 3)
    assert tok.decode(prefix) == "sure here are"
    answer = generate(llama, tok, ["hello"], GREEDY, prefill_ids=[prefix])[0]
    assert answer.startswith("sure here are") and "  " not in answer


def test_prefill_with_newline_header_byte_level(byte_llama, byte_tok):
    """SmolLM2-style header ("assistant\\n"): the answer starts with the response's own first
    tokens, "Sure," with no space in front, decoded together with the continuation."""
    examples = [Example.pair("how do i make it?", "Sure, here is how"), Example.pair("hi", "Of course.")]
    prefixes = [response_prefix_ids(byte_tok, e, 5) for e in examples]
    assert [byte_tok.decode(p) for p in prefixes] == ["Sure,", "Of co"]
    prompts = [e.prompt_messages for e in examples]
    answers = generate(byte_llama, byte_tok, prompts, GREEDY, prefill_ids=prefixes)
    assert answers[0].startswith("Sure,") and answers[1].startswith("Of co")
    assert len(answers[0]) > len("Sure,")  # something was generated after the prefix
    assert answers == generate_one_by_one(byte_llama, byte_tok, prompts, GREEDY, prefill_ids=prefixes)


def test_empty_prefix_is_no_prefill(llama, tok):
    plain = generate(llama, tok, PROMPTS, GREEDY)
    assert generate(llama, tok, PROMPTS, GREEDY, prefill_ids=[[] for _ in PROMPTS]) == plain
    zero = [response_prefix_ids(tok, Example.pair(p, "sure here are some steps"), 0) for p in PROMPTS]
    assert zero == [[]] * len(PROMPTS)
    assert generate(llama, tok, PROMPTS, GREEDY, prefill_ids=zero) == plain


def test_prefilled_batched_equals_one_by_one(llama, tok):
    responses = ["sure here are some steps", "no", "yes you can do it", "i cannot help with that", "the answer is"]
    prefixes = [response_prefix_ids(tok, Example.pair(p, responses[i % 5]), i % 4) for i, p in enumerate(PROMPTS)]
    assert len({len(p) for p in prefixes}) > 2  # rows are forced by different lengths, empty included
    batched = generate(llama, tok, PROMPTS, GREEDY, prefill_ids=prefixes)
    assert batched == generate_one_by_one(llama, tok, PROMPTS, GREEDY, prefill_ids=prefixes)
    assert all(a.startswith(tok.decode(p)) for a, p in zip(batched, prefixes))


def test_stop_string_in_prefix_does_not_cut_it(llama, tok):
    prefix = response_prefix_ids(tok, Example.pair("hello", "sure here are some steps"), 4)
    config = GREEDY.model_copy(update={"stop_strings": ["here"]})
    answer = generate(llama, tok, ["hello"], config, prefill_ids=[prefix])[0]
    assert answer.startswith("sure here are some") and "here" not in answer[len("sure here are some"):]


def test_response_prefix_ids_are_the_training_labels(tok, byte_tok):
    for t in (tok, byte_tok):
        example = Example.pair("how can i do that", "here are some steps")
        encoded = encode_example(t, example)
        labels = [x for x in encoded["labels"] if x != IGNORE_INDEX]
        prompt = encode_prompt(t, example.prompt_messages)
        for k in (1, 3):
            prefix = response_prefix_ids(t, example, k)
            assert prefix == labels[:k]
            assert prompt + prefix == encoded["input_ids"][: len(prompt) + k]
        whole = response_prefix_ids(t, example, 10_000)  # never the end-of-turn token
        assert t.decode(whole) == "here are some steps" and t.eos_token_id not in whole


def test_prefill_errors(llama, tok):
    with pytest.raises(ImmuneLMError, match="prefill_ids has 1 rows for 2 prompts"):
        generate(llama, tok, ["hello", "help"], GREEDY, prefill_ids=[[5]])
    with pytest.raises(ImmuneLMError, match=">= 0"):
        response_prefix_ids(tok, Example.pair("hello", "sure"), -1)
