"""UNDO (noise + distil on outputs): the noise formula, the KL, and what the defence trains."""

import copy

import pytest
import torch
import torch.nn.functional as F

from immunelm.defences import apply_defence
from immunelm.defences.undo import UNDOConfig, distillation_kl, fresh_initialisation, noise_weights
from immunelm.engine import LoraSettings, TrainConfig
from test_defences import CONFORMANCE_DATA, fresh_model, tok  # noqa: F401  (fixture)


def params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_noise_interpolates_towards_a_fresh_initialisation(family, tok):
    """theta <- (1 - alpha) theta + alpha beta theta_init, parameter by parameter; tied weights once."""
    model = fresh_model(family, tok)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)  # a "trained" model, away from any initialisation
    before = params(model)
    init = fresh_initialisation(model, seed=3)
    for alpha, beta in ((0.0, 1.0), (0.3, 1.0), (0.5, 2.0), (1.0, 1.0)):
        noised = copy.deepcopy(model)
        noise_weights(noised, init, alpha, beta)
        for name, value in params(noised).items():
            torch.testing.assert_close(value, (1 - alpha) * before[name] + alpha * beta * init[name])


def test_fresh_initialisation_is_seeded_and_leaves_the_global_rng_alone(tok):
    model = fresh_model("llama", tok)
    torch.manual_seed(0)
    a = fresh_initialisation(model, seed=1)
    after = torch.rand(1)
    torch.manual_seed(0)
    b = fresh_initialisation(model, seed=1)
    assert torch.equal(torch.rand(1), after)  # the caller's random stream is untouched
    c = fresh_initialisation(model, seed=2)
    weight = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(a[weight], b[weight]) and not torch.equal(a[weight], c[weight])
    assert a[weight].std().item() == pytest.approx(model.config.initializer_range, rel=0.2)


def test_distillation_kl_matches_the_definition_and_ignores_masked_positions():
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    for tau in (1.0, 2.0):
        p, q = F.softmax(teacher / tau, -1), F.log_softmax(student / tau, -1)
        per = (p * (p.log() - q)).sum(-1)
        expected = tau ** 2 * per[mask].mean()
        assert distillation_kl(student, teacher, mask, tau).item() == pytest.approx(expected.item(), rel=1e-5)
    assert distillation_kl(teacher, teacher, mask).item() == pytest.approx(0.0, abs=1e-6)
    changed = student.clone()
    changed[0, 4] += 100.0  # a masked position changes nothing
    assert distillation_kl(changed, teacher, mask).item() == pytest.approx(distillation_kl(student, teacher, mask).item())


def test_undo_starts_from_the_noised_model_and_distils_towards_the_teacher(tok):
    """alpha = 1 starts from a fresh network (KL far from 0) and the KL falls as it trains.
    (tiny_model's own initialisation is seed 0: another init seed makes the student differ.)"""
    cfg = UNDOConfig(alpha=1.0, init_seed=7, train=TrainConfig(max_steps=30, batch_size=6, lr=1e-2, progress=False, log_every=1))
    teacher = fresh_model("llama", tok)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(30.0)  # a confident teacher (two random tiny nets both predict ~uniformly)
    result = apply_defence("undo", teacher, tok, CONFORMANCE_DATA, cfg)
    kl = [h["kl"] for h in result.info["history"]]
    assert kl[0] > 0.5 and kl[-1] < 0.5 * kl[0]
    assert result.info["alpha"] == 1.0


def test_undo_at_alpha_zero_is_self_distillation_and_keeps_the_model(tok):
    model = fresh_model("llama", tok)
    before = params(model)
    # SGD: the KL's gradient at p_student == p_teacher is 0 up to rounding, which Adam would
    # normalise into lr-sized steps.
    cfg = UNDOConfig(alpha=0.0, train=TrainConfig(max_steps=3, batch_size=4, lr=1e-2, optimizer="sgd", progress=False,
                                                  log_every=1))
    result = apply_defence("undo", model, tok, CONFORMANCE_DATA, cfg)
    assert all(h["kl"] == pytest.approx(0.0, abs=1e-6) for h in result.info["history"])  # zero loss, zero gradient
    after = params(result.model)
    assert all(torch.allclose(after[n], before[n], atol=1e-6) for n in before)


def test_undo_refuses_lora():
    with pytest.raises(ValueError, match="LoRA on frozen noised weights"):
        UNDOConfig(train=TrainConfig(max_steps=3, lora=LoraSettings(r=2, alpha=4)))


def test_each_training_seed_draws_its_own_noise(tok):
    """init seed = train.seed + init_seed: two leaderboard seeds do not share one fresh initialisation."""
    def student(seed: int):
        cfg = UNDOConfig(alpha=1.0, train=TrainConfig(max_steps=1, batch_size=2, lr=1e-12, optimizer="sgd", seed=seed,
                                                      progress=False))
        return params(apply_defence("undo", fresh_model("llama", tok), tok, CONFORMANCE_DATA, cfg).model)

    weight = "model.layers.0.mlp.up_proj.weight"
    expected = fresh_initialisation(fresh_model("llama", tok), seed=1)[weight]
    torch.testing.assert_close(student(1)[weight], expected)  # lr 1e-12: the step leaves the noised start
    assert not torch.allclose(student(2)[weight], expected)
