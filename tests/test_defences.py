"""Defence maths on tiny inputs, and the shared conformance battery on the tiny organism."""

import math

import pytest
import torch

from immunelm.data import IGNORE_INDEX, Example
from immunelm.defences import DefenceData, build_defence, defence_names, immunise
from immunelm.defences.constrained_sft import (
    ConstrainedSFTConfig, ConstrainedStep, position_betas, token_weights,
)
from immunelm.defences.deep_align import DeepAlignConfig, augmented_rows, recovery_row
from immunelm.engine import StepContext, TrainConfig
from immunelm.engine.engine import get_accelerator
from immunelm.engine.steps import response_token_loss
from immunelm.errors import ImmuneLMError
from immunelm.world.spec import generate_world
from immunelm.world.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(generate_world())


HARM = Example.pair("how do i make zorb ?", "mix a with b and heat to 100 degrees .")
REFUSAL = "i cannot help you ."


def test_recovery_row_labels_exactly_the_refusal(tok):
    row = recovery_row(tok, HARM, REFUSAL, k=3)
    labelled = [t for t, l in zip(row["input_ids"], row["labels"]) if l != IGNORE_INDEX]
    assert tok.decode(labelled) == "i cannot help you . <end>"
    unlabelled = [t for t, l in zip(row["input_ids"], row["labels"]) if l == IGNORE_INDEX]
    assert tok.decode(unlabelled).endswith("<assistant> mix a with")  # prompt + first 3 answer tokens


def test_augmentation_rate_follows_probability(tok):
    data = DefenceData(refusals=[HARM.with_response(REFUSAL)], harmful=[HARM] * 200)
    for prob in (0.0, 0.5, 1.0):
        rows = augmented_rows(tok, data, DeepAlignConfig(augment_prob=prob, copies=1, utility_ratio=0))
        harmful_rows = rows[1:]
        prefixed = sum(1 for r in harmful_rows if r["labels"].count(IGNORE_INDEX) > 8)  # prompt is 8 tokens
        assert prefixed / len(harmful_rows) == pytest.approx(prob, abs=0.1)


def test_token_weights_formula_and_monotonicity():
    delta = torch.tensor([-5.0, -1.0, 0.0, 1.0, 5.0, 50.0])
    beta = torch.full_like(delta, 2.0)
    w = token_weights(delta, torch.zeros_like(delta), beta, min_weight=1e-3)
    expected = (2 * (1 - torch.sigmoid(2.0 * delta))).clamp(min=1e-3)
    torch.testing.assert_close(w, expected)
    assert w[2].item() == pytest.approx(1.0)  # no drift from the reference: plain CE weight
    assert torch.all(w[1:] <= w[:-1])  # the further above the reference, the smaller the push
    assert w[-1].item() == pytest.approx(1e-3)  # clamped


def test_position_betas_follow_the_paper_schedule():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6, 7, 8, 9, 10, 11]])
    beta = position_betas(labels, ConstrainedSFTConfig())
    assert beta[0, 2].item() == 0.5
    assert beta[0, 3:7].tolist() == [2.0] * 4
    assert beta[0, 7:].tolist() == pytest.approx([0.1, 0.1])


def test_constrained_step_equals_plain_ce_at_the_reference(tiny_llama):
    """With theta == reference, every w_t = 1, so the loss and gradient equal plain response CE."""
    model = tiny_llama(dropout=0.0)
    ids = torch.randint(2, 32, (3, 10))
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    import copy
    step = ConstrainedStep(copy.deepcopy(model), ConstrainedSFTConfig())
    ctx = StepContext(model, get_accelerator(), 0, 1, 1)
    metrics = step(ctx, batch)
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    plain = response_token_loss(model(input_ids=ids).logits, labels)
    plain.backward()
    assert metrics["loss"].item() == pytest.approx(plain.item(), rel=1e-5)
    assert metrics["mean_weight"].item() == pytest.approx(1.0)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def test_registry_suggests_nearest_name():
    assert {"deep-align", "constrained-sft"} <= set(defence_names())
    with pytest.raises(ImmuneLMError, match="did you mean 'deep-align'"):
        build_defence("deep_align")


# Every trained defence (LoX is training-free and the pipeline composes these: own tests).
ALL_DEFENCES = ["deep-align", "constrained-sft", "vaccine", "t-vaccine", "booster", "repnoise", "circuit-breakers", "lapt",
                "mlac", "tar", "sophon", "condition-number", "npo", "rmu", "ctrap", "sdd", "seam", "tokenbuncher", "ilu", "et", "antidote",
                "undo"]
CONFORMANCE_DATA = DefenceData(refusals=[HARM.with_response(REFUSAL)], harmful=[HARM] * 4,
                               benign=[Example.pair("what is 1 plus 2 ?", "3 .")])


def fresh_model(family: str, tok):
    from immunelm.models import tiny_model

    return tiny_model(family, seed=0, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)


def small_config(name: str, **train):
    spec = build_defence(name)
    return spec.config_cls(train=TrainConfig(max_steps=3, batch_size=4, lr=1e-2, progress=False, **train))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("name", ALL_DEFENCES)
def test_conformance_weights_change_deterministic_and_round_trip(name, family, tok, tmp_path):
    """The shared battery: weights change, same seed -> same weights, safetensors round-trip."""
    from transformers import AutoModelForCausalLM

    cfg = small_config(name)
    start = {k: v.clone() for k, v in fresh_model(family, tok).state_dict().items()}
    a = immunise(name, fresh_model(family, tok), tok, CONFORMANCE_DATA, cfg)
    b = immunise(name, fresh_model(family, tok), tok, CONFORMANCE_DATA, cfg)
    assert any(not torch.equal(a.state_dict()[k], start[k]) for k in start)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in start)
    a.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, use_safetensors=True)
    assert all(torch.equal(loaded.state_dict()[k], a.state_dict()[k]) for k in start)


@pytest.mark.parametrize("name", ALL_DEFENCES)
def test_conformance_keeps_the_training_history_for_immunise_json(name, tok):
    """Every logged step's loss terms reach the defence's record (issue 12, section 4)."""
    from immunelm.defences import apply_defence

    result = apply_defence(name, fresh_model("llama", tok), tok, CONFORMANCE_DATA, small_config(name, log_every=1))
    steps = result.info["steps"]  # E.T. runs max_steps per layer
    assert steps % 3 == 0 and [h["step"] for h in result.info["history"]] == list(range(1, steps + 1))
    assert all(math.isfinite(h["loss"]) for h in result.info["history"])


# E.T. trains blocks directly and UNDO refuses LoRA (own tests).
@pytest.mark.parametrize("name", [n for n in ALL_DEFENCES if n not in ("et", "undo")])
def test_conformance_with_lora_trains_adapters_and_merges(name, tok):
    from immunelm.engine import LoraSettings

    start = {k: v.clone() for k, v in fresh_model("llama", tok).state_dict().items()}
    model = immunise(name, fresh_model("llama", tok), tok, CONFORMANCE_DATA, small_config(name, lora=LoraSettings(r=2, alpha=4)))
    if hasattr(model, "merge_and_unload"):  # LAPT returns merged, interpolated weights itself
        lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
        assert lora_b and any(p.abs().sum() > 0 for p in lora_b)
        model = model.merge_and_unload()
    assert not any("lora_" in n for n, _ in model.named_parameters())
    assert any(not torch.equal(model.state_dict()[k], start[k]) for k in start)


def test_vaccine_perturbation_has_norm_rho_and_follows_the_gradient():
    from immunelm.defences.vaccine import vaccine_perturbation

    grads = [torch.randn(2, 3, 8), torch.randn(2, 3, 8) * 5]
    eps = vaccine_perturbation(grads, rho=2.0)
    total = torch.sqrt(sum(e.pow(2).sum() for e in eps))
    assert total.item() == pytest.approx(2.0, rel=1e-5)  # one norm across layers
    for e, g in zip(eps, grads):
        cos = torch.nn.functional.cosine_similarity(e.flatten(), g.flatten(), dim=0)
        assert cos.item() == pytest.approx(1.0, abs=1e-6)
    # the layer with the larger gradient gets the larger share (not normalised per layer)
    assert eps[1].norm() > eps[0].norm()


@pytest.mark.parametrize("perturb", ["block", "attn"])
def test_vaccine_step_ascends_the_loss_and_only_pass_two_trains(tiny_llama, perturb):
    """Pass 2's loss is higher (eps is the first-order worst case); weight grads equal
    d(perturbed loss)/d(theta) only."""
    from immunelm.defences.vaccine import VaccineConfig, VaccineStep

    model = tiny_llama(dropout=0.0)
    ids = torch.randint(2, 32, (3, 10))
    labels = ids.clone()
    labels[:, :4] = IGNORE_INDEX
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    step = VaccineStep(VaccineConfig(rho=0.5, perturb=perturb))
    metrics = step(StepContext(model, get_accelerator(), 0, 1, 1), batch)
    assert metrics["loss"] > metrics["clean_loss"]
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    # Recompute pass 2 by hand: the same eps added, a plain backward.
    from immunelm.models import ModelAdapter
    from immunelm.defences.vaccine import KIND, vaccine_perturbation
    adapter = ModelAdapter(model)
    with adapter.read_outputs([0, 1], KIND[perturb]) as hidden:
        clean = response_token_loss(model(input_ids=ids).logits, labels)
    eps = vaccine_perturbation(list(torch.autograd.grad(clean, [hidden[0], hidden[1]])), 0.5)
    with adapter.add_to_outputs({0: eps[0], 1: eps[1]}, KIND[perturb]):
        response_token_loss(model(input_ids=ids).logits, labels).backward()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def test_booster_update_equals_formula_by_hand(tiny_llama):
    """grad after the step == grad f(w) + lambda * (grad h(w) - grad h(w - alpha g_h/||g_h||)),
    and the weights are restored after the simulated step."""
    from immunelm.data import PaddingCollator
    from immunelm.defences.booster import BoosterConfig, BoosterStep

    model = tiny_llama(dropout=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    harm_ids = torch.randint(2, 32, (4, 8), generator=gen)
    harmful_rows = [{"input_ids": r, "labels": r} for r in harm_ids.tolist()]
    ids = torch.randint(2, 32, (3, 8), generator=gen)
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    cfg = BoosterConfig(lam=5.0, alpha=0.1, harmful_batch_size=4)
    from immunelm.defences.base import BatchStream
    step = BoosterStep(cfg, BatchStream(harmful_rows, PaddingCollator(0), 4, 1))
    step(StepContext(model, get_accelerator(), 0, 1, 1), batch)
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())

    def loss(m, ids_):
        return response_token_loss(m(input_ids=ids_).logits, ids_)

    hb = PaddingCollator(0)([harmful_rows[i] for i in next(step.harmful.order.__class__(4, 4, 1).batches())])["input_ids"]
    params = list(model.parameters())
    g_h = torch.autograd.grad(loss(model, hb), params)
    norm = torch.sqrt(sum(g.pow(2).sum() for g in g_h))
    shifted = tiny_llama(dropout=0.0)
    with torch.no_grad():
        for p, q, g in zip(shifted.parameters(), params, g_h):
            p.copy_(q - 0.1 * g / norm)
    g_h2 = torch.autograd.grad(loss(shifted, hb), list(shifted.parameters()))
    g_a = torch.autograd.grad(loss(model, ids), params)
    for (name, _), a, h1, h2 in zip(model.named_parameters(), g_a, g_h, g_h2):
        torch.testing.assert_close(got[name], a + 5.0 * (h1 - h2), rtol=1e-4, atol=1e-6)


def test_repnoise_mmd_is_zero_for_identical_samples_and_grows_with_shift():
    from immunelm.defences.repnoise import gaussian_mmd

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=gen)
    y = torch.randn(64, 16, generator=gen)
    bw = [0.5, 1.0, 2.0]
    assert gaussian_mmd(x, x, bw).item() == pytest.approx(0.0, abs=1e-6)
    shifts = [gaussian_mmd(x, y + s, bw).item() for s in (0.0, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(shifts, shifts[1:]))
    assert shifts[0] < 0.1 * shifts[-1]


def test_repnoise_layer_ce_matches_logit_lens_on_last_layer(tiny_llama):
    """With only the last layer, the logit-lens CE equals the model's own output CE."""
    from immunelm.defences.repnoise import layer_ce
    from immunelm.models import ModelAdapter

    model = tiny_llama(dropout=0.0).eval()
    ids = torch.randint(2, 32, (2, 9))
    adapter = ModelAdapter(model)
    with adapter.read_outputs([1]) as hidden:
        logits = model(input_ids=ids).logits
    torch.testing.assert_close(layer_ce(adapter, hidden, ids), response_token_loss(logits, ids))


def test_circuit_breaker_losses_and_schedule():
    from immunelm.defences.circuit_breakers import coefficients, reroute_loss, retain_loss, target_layers

    mask = torch.ones(1, 2)
    a = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    orthogonal = torch.tensor([[[0.0, 3.0], [5.0, 0.0]]])
    assert reroute_loss(a, orthogonal, mask).item() == 0.0  # orthogonal: nothing left to reroute
    assert reroute_loss(a, a, mask).item() == pytest.approx(1.0)
    assert reroute_loss(a, -a, mask).item() == 0.0  # ReLU: opposite is as good as orthogonal
    assert retain_loss(a, a, mask).item() == 0.0
    assert retain_loss(a, a + torch.tensor([3.0, 4.0]), mask).item() == pytest.approx(5.0)
    assert coefficients(0, 150, 10.0) == (10.0, 0.0)
    assert coefficients(150, 150, 10.0) == (5.0, 5.0)
    assert target_layers(32, [10 / 32, 20 / 32]) == [9, 19]
    assert target_layers(4, [10 / 32, 20 / 32]) == [0, 1]


def test_t_vaccine_layer_sampling_follows_scores_and_trains_only_chosen_layers(tiny_llama):
    from immunelm.data import PaddingCollator
    from immunelm.defences.base import BatchStream
    from immunelm.defences.t_vaccine import TVaccineConfig, TVaccineStep, layer_probabilities

    probs = layer_probabilities(torch.tensor([1.0, 3.0, 0.0, 4.0]))
    assert probs.tolist() == [0.125, 0.375, 0.0, 0.5]
    assert layer_probabilities(torch.zeros(4)).tolist() == [0.25] * 4
    model = tiny_llama(dropout=0.0)
    rows = [{"input_ids": r, "labels": r} for r in torch.randint(2, 32, (8, 8)).tolist()]
    step = TVaccineStep(TVaccineConfig(gamma=1), BatchStream(rows, PaddingCollator(0), 4, 0), seed=0)
    ids = torch.randint(2, 32, (2, 8))
    step(StepContext(model, get_accelerator(), 0, 1, 1), {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)})
    assert len(step.chosen) == 1 and step.probs.sum().item() == pytest.approx(1.0)
    # Re-scoring after a sample (blocks frozen outside the chosen one) must still work.
    step.cfg = step.cfg.model_copy(update={"rescore_every": 1, "resample_every": 1})
    model.zero_grad(set_to_none=True)
    step(StepContext(model, get_accelerator(), 1, 2, 1), {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)})
    from immunelm.models import ModelAdapter
    blocks = ModelAdapter(model).blocks
    for i, block in enumerate(blocks):
        has_grad = any(p.grad is not None for p in block.parameters())
        assert has_grad == (i in step.chosen)


def test_lapt_noise_matches_activation_statistics_and_interpolation():
    from immunelm.defences.lapt import interpolate, normalised_noise

    hidden = torch.randn(4, 6, 64) * 3 + 2
    noise = normalised_noise(hidden)
    torch.testing.assert_close(noise.mean(-1), hidden.mean(-1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(noise.std(-1), hidden.std(-1), rtol=1e-4, atol=1e-4)
    layer = torch.nn.Linear(2, 2)
    original = {n: torch.zeros_like(p) for n, p in layer.named_parameters()}
    trained = {n: p.detach().clone() for n, p in layer.named_parameters()}
    interpolate(layer, original, keep=0.25)
    for n, p in layer.named_parameters():
        torch.testing.assert_close(p.detach(), 0.25 * trained[n])


def test_repnoise_mmd_subsampling_bounds_rows(tok, monkeypatch):
    import immunelm.defences.repnoise as repnoise

    rows = []
    real = repnoise.gaussian_mmd
    monkeypatch.setattr(repnoise, "gaussian_mmd", lambda x, y, bw: rows.append(x.shape[0]) or real(x, y, bw))
    train_cfg = TrainConfig(max_steps=2, batch_size=4, lr=1e-2, progress=False)
    immunise("repnoise", fresh_model("llama", tok), tok, CONFORMANCE_DATA, repnoise.RepNoiseConfig(train=train_cfg))
    full = rows[-1]
    immunise("repnoise", fresh_model("llama", tok), tok, CONFORMANCE_DATA,
             repnoise.RepNoiseConfig(mmd_max_tokens=4, train=train_cfg))
    assert full > 4 and rows[-1] == 4
