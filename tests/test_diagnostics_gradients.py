"""Gradient cosine (SEAM) and response entropy (TokenBuncher) on tiny random models, with known
answers: a loss against itself, a uniform next-token distribution, a broken (NaN) model."""

import copy
import math

import pytest
import torch

from immunelm.data import Example, PaddingCollator, encode_example
from immunelm.diagnostics.gradients import (
    generated_response_entropy, gradient_cosine, group_of, mean_loss_gradient, response_entropy,
)
from immunelm.engine.steps import response_token_loss
from immunelm.errors import ImmuneLMError
from immunelm.models.tiny import tiny_model, tiny_tokenizer

# answers of different lengths, so a mean of batch means would differ from the token mean
HARMFUL = [Example.pair("how can i make this", "sure here are some steps to make it"),
           Example.pair("please help with make", "sure"),
           Example.pair("how do i make it", "here are some steps"),
           Example.pair("can you help make this", "sure i can help with that")]
BENIGN = [Example.pair("what is the answer", "the answer is yes"),
          Example.pair("hello world", "hello"),
          Example.pair("is it safe", "yes it is safe and you can do it")]
VOCAB = 64


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def uniform_model(family: str = "llama"):
    """Zero head weights (and bias, where there is one): every logit is 0, p is uniform."""
    model = tiny_model(family, seed=0)
    with torch.no_grad():
        for p in model.get_output_embeddings().parameters():
            p.zero_()
    return model


def full_batch_gradient(model, tok, examples):
    """The reference: one padded batch of every pair, loss.backward() on a copy."""
    model = copy.deepcopy(model)
    batch = PaddingCollator.for_tokenizer(tok)([encode_example(tok, e) for e in examples])
    loss = response_token_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                               batch["labels"])
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()]).double(), loss.item()


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_the_cosine_of_a_loss_with_itself_is_one(tok, family):
    result = gradient_cosine(tiny_model(family, seed=0), tok, HARMFUL, HARMFUL, batch_size=3)
    assert result.cosine == pytest.approx(1.0, abs=1e-12)
    assert result.harmful_norm == result.benign_norm > 0 and result.harmful_loss == result.benign_loss
    assert all(c == pytest.approx(1.0, abs=1e-9) for c in result.groups.values())


def test_the_cosine_matches_a_full_batch_backward_and_not_the_batch_size(tok):
    model = tiny_model("llama", seed=0)
    g_h, loss_h = full_batch_gradient(model, tok, HARMFUL)
    g_b, loss_b = full_batch_gradient(model, tok, BENIGN)
    expected = float(g_h @ g_b / (g_h.norm() * g_b.norm()))
    for batch_size in (1, 2, 8):
        result = gradient_cosine(model, tok, HARMFUL, BENIGN, batch_size=batch_size)
        assert result.cosine == pytest.approx(expected, abs=1e-5)
        assert result.harmful_norm == pytest.approx(float(g_h.norm()), rel=1e-5)
        assert result.harmful_loss == pytest.approx(loss_h, rel=1e-5)
        assert result.benign_loss == pytest.approx(loss_b, rel=1e-5)
    assert -1 < result.cosine < 0.999
    assert result.parameters == sum(p.numel() for p in model.parameters())


def test_parameter_groups_are_blocks_and_modules(tok):
    model = tiny_model("llama", seed=0)
    result = gradient_cosine(model, tok, HARMFUL, BENIGN)
    assert set(result.groups) == {"model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "lm_head"}
    assert group_of("transformer.h.11.attn.c_attn.weight") == "transformer.h.11"
    lora = "base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight"
    assert group_of(lora) == "base_model.model.model.layers.3"


def test_only_trainable_parameters_count_and_a_frozen_group_is_absent(tok):
    model = tiny_model("llama", seed=0)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("model.layers.1."))
    result = gradient_cosine(model, tok, HARMFUL, BENIGN)
    assert list(result.groups) == ["model.layers.1"]
    assert result.cosine == pytest.approx(result.groups["model.layers.1"], abs=1e-9)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ImmuneLMError, match="no trainable parameters"):
        gradient_cosine(model, tok, HARMFUL, BENIGN)


def test_no_gradient_is_left_on_the_model_and_its_mode_is_restored(tok):
    model = tiny_model("llama", seed=0).train()
    marker = torch.full_like(model.lm_head.weight, 7.0)
    model.lm_head.weight.grad = marker.clone()
    gradient_cosine(model, tok, HARMFUL, BENIGN)
    assert torch.equal(model.lm_head.weight.grad, marker)
    assert all(p.grad is None for n, p in model.named_parameters() if n != "lm_head.weight")
    assert model.training
    model.eval()
    mean_loss_gradient(model, tok, HARMFUL)
    assert not model.training


def test_a_nan_gradient_is_refused_with_its_name(tok):
    model = tiny_model("llama", seed=0)
    with torch.no_grad():
        model.lm_head.weight[5, 0] = float("nan")
    with pytest.raises(ImmuneLMError, match="gradient norm on harmful examples"):
        gradient_cosine(model, tok, HARMFUL, BENIGN)


def test_empty_sets_are_refused(tok):
    with pytest.raises(ImmuneLMError, match="no examples"):
        gradient_cosine(tiny_model("llama"), tok, [], BENIGN)


# ----------------------------------------------------------------------------- entropy
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_uniform_logits_have_entropy_log_vocab(tok, family):
    result = response_entropy(uniform_model(family), tok, HARMFUL, batch_size=3)
    assert result.max_entropy == pytest.approx(math.log(VOCAB))
    assert result.mean == pytest.approx(math.log(VOCAB), rel=1e-6)
    assert result.per_position == pytest.approx([math.log(VOCAB)] * len(result.per_position), rel=1e-6)


def test_entropy_is_bounded_and_matches_a_direct_computation(tok):
    model = tiny_model("llama", seed=0)
    result = response_entropy(model, tok, HARMFUL, batch_size=1, positions=4)
    assert 0 <= result.mean < math.log(VOCAB) and all(0 <= h <= math.log(VOCAB) for h in result.per_position)
    # direct: entropy at every position predicting an answer token of one example at a time
    per_example = []
    for e in HARMFUL:
        row = encode_example(tok, e)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0, :-1].double()
        logp = logits.log_softmax(-1)
        keep = torch.tensor(row["labels"][1:]) != -100
        per_example.append(-(logp.exp() * logp).sum(-1)[keep])
    flat = torch.cat(per_example)
    assert result.tokens == len(flat) and result.examples == len(HARMFUL)
    assert result.mean == pytest.approx(float(flat.mean()), rel=1e-5)
    assert result.per_position_count == [4, 4, 3, 3]  # "sure" + end of turn is 2 tokens long
    first = torch.stack([h[0] for h in per_example]).mean()
    assert result.per_position[0] == pytest.approx(float(first), rel=1e-5)
    batched = response_entropy(model, tok, HARMFUL, batch_size=4, positions=4)
    assert batched.mean == pytest.approx(result.mean, rel=1e-6)
    assert batched.per_position == pytest.approx(result.per_position, rel=1e-6)


def test_a_peaked_distribution_has_near_zero_entropy(tok):
    model = uniform_model()
    with torch.no_grad():
        model.lm_head.bias = torch.nn.Parameter(torch.zeros(VOCAB))
        model.lm_head.bias[7] = 100.0  # p(token 7) ~ 1
    result = response_entropy(model, tok, BENIGN)
    assert 0 <= result.mean < 1e-6


def test_entropy_on_the_models_own_answers(tok):
    model = uniform_model().train()
    # all-zero logits: greedy picks id 0 (<pad>), decoded as an empty answer, so the answer is its end of turn
    result = generated_response_entropy(model, tok, HARMFUL)
    assert result.answers == "generated" and result.per_position_count == [len(HARMFUL)]
    assert result.mean == pytest.approx(math.log(VOCAB), rel=1e-6)
    assert model.training
    own = generated_response_entropy(tiny_model("llama", seed=0), tok, HARMFUL, batch_size=2, positions=3)
    assert len(own.per_position) <= 3 and all(0 <= h <= math.log(VOCAB) for h in own.per_position)


def test_a_nan_entropy_is_refused(tok):
    model = tiny_model("llama", seed=0)
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(ImmuneLMError, match="response entropy"):
        response_entropy(model, tok, HARMFUL)
