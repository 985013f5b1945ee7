"""Family 3 (collapse traps, unlearning, the frontier): maths on tiny inputs."""

import math

import pytest
import torch

from immunelm.defences import apply_defence
from immunelm.defences.npo import npo_loss
from immunelm.defences.rmu import RMUConfig, random_direction, token_mse
from immunelm.defences.unlearning import sequence_logprob
from immunelm.engine import TrainConfig
from immunelm.models import ModelAdapter
from test_defences import CONFORMANCE_DATA, fresh_model, tok  # noqa: F401  (fixture)
from test_defences_family2 import lm_batch


# ------------------------------------------------------------------------------------- NPO
def test_npo_loss_starts_at_2_log2_over_beta_and_its_gradient_is_gradient_ascent():
    """At theta = theta_ref: L = (2/beta) log 2 and dL/dlogp = 1/B for every beta (gradient ascent
    on the forget log-likelihood); the weight 2 sigmoid(beta delta) fades as delta -> -inf."""
    for beta in (0.05, 0.1, 1.0):
        logp = torch.tensor([-3.0, -5.0], requires_grad=True)
        loss = npo_loss(logp, logp.detach(), beta)
        assert math.isclose(loss.item(), 2 * math.log(2) / beta, rel_tol=1e-6)
        loss.backward()
        assert torch.allclose(logp.grad, torch.full((2,), 0.5))
    far = torch.tensor([-40.0], requires_grad=True)
    npo_loss(far, torch.tensor([0.0]), 0.1).backward()
    assert far.grad.item() == pytest.approx(2 * torch.sigmoid(torch.tensor(-4.0)).item(), rel=1e-5)


def test_npo_loss_increases_with_the_forget_likelihood():
    ref = torch.zeros(1)
    losses = [npo_loss(torch.tensor([d]), ref, 0.1).item() for d in (-10.0, -1.0, 0.0, 1.0, 10.0)]
    assert losses == sorted(losses) and min(losses) > 0


def test_sequence_logprob_sums_only_labelled_tokens():
    batch = lm_batch(2)
    logits = torch.randn(2, 8, 32)
    logp = torch.log_softmax(logits, dim=-1)
    expected = [sum(logp[b, t - 1, batch["labels"][b, t]] for t in range(3, 8)) for b in range(2)]
    assert torch.allclose(sequence_logprob(logits, batch["labels"]), torch.stack(expected), atol=1e-5)


def test_npo_lowers_the_forget_likelihood_relative_to_the_reference(tok):
    """The defence's own record: log pi/pi_ref on the forget set goes negative during training."""
    cfg = TrainConfig(max_steps=6, batch_size=2, lr=1e-2, progress=False, log_every=1)
    from immunelm.defences.npo import NPOConfig

    result = apply_defence("npo", fresh_model("llama", tok), tok, CONFORMANCE_DATA, NPOConfig(train=cfg, forget_batch_size=4))
    ratios = [h["forget_log_ratio"] for h in result.info["history"]]
    assert ratios[0] == pytest.approx(0.0, abs=1e-6) and ratios[-1] < -0.1


# ------------------------------------------------------------------------------------- RMU
def test_rmu_direction_is_a_seeded_unit_vector_in_the_positive_orthant():
    u = random_direction(64, seed=3)
    assert u.norm().item() == pytest.approx(1.0, abs=1e-6) and (u >= 0).all()
    assert torch.equal(u, random_direction(64, seed=3)) and not torch.equal(u, random_direction(64, seed=4))


def test_token_mse_ignores_padding_and_is_zero_at_the_target():
    target = torch.ones(4)
    hidden = torch.ones(1, 3, 4)
    hidden[0, 2] = 100.0  # a padding position
    mask = torch.tensor([[1, 1, 0]])
    assert token_mse(hidden, target, mask).item() == 0.0
    hidden[0, 1] = 3.0
    assert token_mse(hidden, target, mask).item() == pytest.approx(2.0)  # ((3-1)^2 + 0) / 2 tokens


def test_rmu_trains_only_the_mlps_at_and_below_its_layer(tok):
    model = fresh_model("llama", tok)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = RMUConfig(layer=1, updated_layers=2, train=TrainConfig(max_steps=3, batch_size=2, lr=1e-2, progress=False))
    result = apply_defence("rmu", model, tok, CONFORMANCE_DATA, cfg)
    changed = {k for k, v in result.model.state_dict().items() if not torch.equal(v, start[k])}
    assert changed and all(".mlp." in k and k.split(".layers.")[1].split(".")[0] in {"0", "1"} for k in changed), changed
    assert result.info["updated_layers"] == [0, 1] and all(p.requires_grad for p in result.model.parameters())


def test_rmu_coefficient_is_relative_to_the_residual_norm_unless_absolute(tok):
    cfg = RMUConfig(layer=1, train=TrainConfig(max_steps=1, batch_size=2, progress=False))
    relative = apply_defence("rmu", fresh_model("llama", tok), tok, CONFORMANCE_DATA, cfg).info["coefficient"]
    absolute = apply_defence("rmu", fresh_model("llama", tok), tok, CONFORMANCE_DATA,
                             cfg.model_copy(update={"absolute": True})).info["coefficient"]
    assert absolute == 6.5 and relative != absolute and relative > 0


# ----------------------------------------------------------------------------------- CTRAP
def test_ctrap_collapse_loss_is_zero_at_its_optimum_and_ignores_prompts():
    from immunelm.defences.ctrap import collapse_labels
    from immunelm.engine import response_token_loss

    batch = lm_batch(2)
    labels = collapse_labels(batch["labels"], token=7)
    assert (labels[:, :3] == -100).all() and (labels[:, 3:] == 7).all()
    logits = torch.zeros(2, 8, 32)
    logits[..., 7] = 50.0  # a model that always says e
    assert response_token_loss(logits, labels).item() < 1e-12
    assert response_token_loss(torch.zeros(2, 8, 32), labels).item() == pytest.approx(math.log(32), rel=1e-6)


def test_ctrap_update_equals_formula_by_hand(tiny_llama):
    """grad == grad l_align(w) + lambda * grad l_collapse(w - alpha g_h/||g_h||); weights restored."""
    from immunelm.data import PaddingCollator
    from immunelm.defences.base import BatchStream
    from immunelm.defences.ctrap import CTRAPConfig, CTRAPStep, collapse_labels
    from immunelm.engine import StepContext, causal_lm_loss
    from immunelm.engine.engine import get_accelerator
    from immunelm.engine.sampling import BatchOrder

    model = tiny_llama(dropout=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    harm = lm_batch(4, seed=1)
    rows = [{"input_ids": i, "labels": l} for i, l in zip(harm["input_ids"].tolist(), harm["labels"].tolist())]
    batch = lm_batch(3, seed=2)
    step = CTRAPStep(CTRAPConfig(lam=0.3, alpha=0.1), BatchStream(rows, PaddingCollator(0), 4, 1), token=5)
    step(StepContext(model, get_accelerator(), 0, 1, 1), batch)
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())

    first = next(BatchOrder(4, 4, 1).batches())
    harmful = PaddingCollator(0)([rows[i] for i in first])
    params = list(model.parameters())
    g_h = torch.autograd.grad(causal_lm_loss(model, harmful), params)
    norm = torch.sqrt(sum(g.pow(2).sum() for g in g_h))
    shifted = tiny_llama(dropout=0.0)
    with torch.no_grad():
        for p, q, g in zip(shifted.parameters(), params, g_h):
            p.copy_(q - 0.1 * g / norm)
    trap = {**batch, "labels": collapse_labels(batch["labels"], 5)}
    g_c = torch.autograd.grad(causal_lm_loss(shifted, trap), list(shifted.parameters()))
    g_a = torch.autograd.grad(causal_lm_loss(model, batch), params)
    for (name, _), a, c in zip(model.named_parameters(), g_a, g_c):
        torch.testing.assert_close(got[name], a + 0.3 * c, rtol=1e-4, atol=1e-6)


def test_ctrap_collapse_token_falls_back_on_a_word_level_vocabulary(tok):
    from immunelm.defences.ctrap import collapse_token_id
    from immunelm.errors import ImmuneLMError

    token, word = collapse_token_id(tok, None)
    assert word == "the" and token == tok("the", add_special_tokens=False)["input_ids"][0]
    with pytest.raises(ImmuneLMError, match="defence.collapse_token"):
        collapse_token_id(tok, "error")


# ------------------------------------------------------------------------------------- SDD
def test_sdd_pairs_each_prompt_with_the_least_similar_candidate():
    from immunelm.data import Example
    from immunelm.defences.sdd import SDDConfig, centred_cosine, distant_pairs

    prompts = [Example.pair("make zorb ?", "no ."), Example.pair("open vault ?", "no .")]
    responses = ["paris .", "3 .", "blue ."]
    similarity = torch.tensor([[0.9, -0.5, 0.1], [0.2, 0.8, -0.9]])
    pairs, info = distant_pairs(prompts, responses, similarity, SDDConfig(candidates=64, copies=2))
    assert [p.response for p in pairs] == ["3 .", "blue .", "3 .", "blue ."]  # 64 draws cover all 3
    assert [p.prompt for p in pairs] == ["make zorb ?", "open vault ?"] * 2
    assert info["mean_cosine_chosen"] == pytest.approx(-0.7) and info["mean_cosine_chosen"] <= info["mean_cosine_random"]
    rejecting, _ = distant_pairs(prompts, responses, similarity, SDDConfig(candidates=64, reject_prefix="I refuse. "))
    assert rejecting[0].response == "I refuse. 3 ."
    a = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    assert torch.allclose(centred_cosine(a, a, a.mean(0)), torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))


def test_sdd_trains_on_irrelevant_benign_answers_not_refusals(tok):
    from immunelm.defences.sdd import SDDConfig

    cfg = SDDConfig(train=TrainConfig(max_steps=2, batch_size=2, progress=False))
    result = apply_defence("sdd", fresh_model("llama", tok), tok, CONFORMANCE_DATA, cfg)
    assert result.info["pairs"] == len(CONFORMANCE_DATA.refusals) and result.info["steps"] == 2


# ------------------------------------------------------------------------------------ SEAM
def two_layer_losses(seed: int = 0):
    """A 2-layer tanh network (float64) and two regression losses on different data."""
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.nn.Parameter(torch.randn(5, 4, generator=gen, dtype=torch.float64))
    w2 = torch.nn.Parameter(torch.randn(1, 5, generator=gen, dtype=torch.float64))
    xa, ya = torch.randn(6, 4, generator=gen, dtype=torch.float64), torch.randn(6, 1, generator=gen, dtype=torch.float64)
    xb, yb = torch.randn(6, 4, generator=gen, dtype=torch.float64), torch.randn(6, 1, generator=gen, dtype=torch.float64)

    def loss(x, y):
        return lambda: ((torch.tanh(x @ w1.T) @ w2.T - y) ** 2).mean()

    return [w1, w2], loss(xa, ya), loss(xb, yb)


def test_seam_finite_difference_matches_the_exact_hessian_vector_gradient():
    from immunelm.defences.seam import cosine, self_destructive_gradient

    params, harmful, benign = two_layer_losses()
    g_a = torch.autograd.grad(harmful(), params, create_graph=True)
    g_b = torch.autograd.grad(benign(), params, create_graph=True)
    exact = torch.autograd.grad(cosine(list(g_a), list(g_b)), params)
    estimate, c = self_destructive_gradient(params, harmful, benign, eps=1e-6)
    assert -1 <= c <= 1
    for e, x in zip(estimate, exact):
        torch.testing.assert_close(e, x, rtol=1e-4, atol=1e-7)
    coarse, _ = self_destructive_gradient(params, harmful, benign, eps=1e-1)  # the estimate is first-order in eps
    assert max((a - b).abs().max() for a, b in zip(coarse, exact)) > max((a - b).abs().max() for a, b in zip(estimate, exact))
    assert all(p.grad is None for p in params)  # no gradient left behind


def test_seam_descending_its_term_pushes_the_gradients_apart():
    from immunelm.defences.seam import cosine, self_destructive_gradient

    params, harmful, benign = two_layer_losses(seed=1)

    def cos_now():
        return float(cosine(list(torch.autograd.grad(harmful(), params)), list(torch.autograd.grad(benign(), params))))

    start = cos_now()
    for _ in range(20):
        estimate, _ = self_destructive_gradient(params, harmful, benign, eps=1e-4)
        with torch.no_grad():
            for p, g in zip(params, estimate):
                p.sub_(0.05 * g)
    assert cos_now() < start - 0.1


# ------------------------------------------------------------------------------ TokenBuncher
def test_tokenbuncher_reward_is_minus_the_mean_response_entropy():
    from immunelm.defences.tokenbuncher import EntropyReward

    logits = torch.zeros(2, 5, 16)  # row 0: uniform over 16 tokens everywhere
    logits[1, :, 3] = 100.0  # row 1: certain everywhere
    mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]], dtype=torch.bool)  # completion positions
    rewards, metrics = EntropyReward(temperature=1.0)(None, None, logits, mask)
    assert rewards[0].item() == pytest.approx(-math.log(16), rel=1e-6) and rewards[1].item() == pytest.approx(0.0, abs=1e-6)
    assert metrics["entropy"].item() == pytest.approx(math.log(16) / 2, rel=1e-6)
    hot, _ = EntropyReward(temperature=2.0)(None, None, logits, mask)
    assert hot[1] < rewards[1] and hot[0].item() == pytest.approx(-math.log(16), rel=1e-6)  # temperature flattens


def test_token_noiser_target_keeps_1_minus_eps_on_the_label_and_eps_on_the_tail():
    from immunelm.defences.tokenbuncher import noisy_targets

    labels = torch.tensor([[2, 5, 0]])
    target = noisy_targets(labels, vocab=8, eps=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(target.sum(-1), torch.ones(1, 3))
    assert torch.allclose(target.gather(-1, labels.unsqueeze(-1)).squeeze(-1), torch.full((1, 3), 0.9))
    tail = target.clone().scatter_(-1, labels.unsqueeze(-1), 0.0)
    assert (tail >= 0).all() and torch.allclose(tail.sum(-1), torch.full((1, 3), 0.1))
    assert noisy_targets(labels, 8, 0.0, torch.Generator()).eq(torch.nn.functional.one_hot(labels, 8).float()).all()


def test_token_noiser_loss_counts_only_non_negative_advantage_completions():
    from immunelm.attacks.rl import ScoredRollout
    from immunelm.defences.tokenbuncher import noiser_loss

    labels = torch.tensor([[-100, 4, 4], [-100, 4, 4]])
    logits = torch.zeros(2, 3, 8)
    logits[0, :, 4] = 50.0  # row 0 predicts its completion perfectly
    mask = labels[:, 1:] != -100
    scored = ScoredRollout({"labels": labels}, logits, None, mask, None, torch.tensor([0.5, -0.5]), {}, 0)
    low = noiser_loss(scored, 0.0, torch.Generator())
    assert low.item() < 1e-6  # only row 0 counts; row 1 (uniform logits) would add log 8
    scored.advantages = torch.tensor([-0.5, 0.5])
    assert noiser_loss(scored, 0.0, torch.Generator()).item() == pytest.approx(math.log(8), rel=1e-5)


def test_tokenbuncher_schedule_warms_up_on_grpo_then_alternates(tok):
    from immunelm.defences.tokenbuncher import TokenBuncherConfig

    cfg = TokenBuncherConfig(warmup_steps=2, noiser_every=2, max_new_tokens=3,
                             train=TrainConfig(max_steps=6, batch_size=1, lr=1e-3, progress=False, log_every=1))
    result = apply_defence("tokenbuncher", fresh_model("llama", tok), tok, CONFORMANCE_DATA, cfg)
    assert [h["noiser_step"] for h in result.info["history"]] == [0, 0, 1, 0, 1, 0]
    assert all(h["entropy"] >= 0 and h["reward"] == pytest.approx(-h["entropy"]) for h in result.info["history"])


# ------------------------------------------------------------------------------------- ILU
def test_irm_penalty_matches_its_closed_form_and_vanishes_at_the_optimal_scale():
    from immunelm.defences.ilu import irm_penalty

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 10, generator=gen)
    labels = torch.randint(0, 10, (2, 6), generator=gen)
    labels[:, :2] = -100
    z, y = logits[:, :-1][labels[:, 1:] != -100], labels[:, 1:][labels[:, 1:] != -100]
    closed = (torch.softmax(z, -1) * z).sum(-1) - z.gather(-1, y.unsqueeze(-1)).squeeze(-1)  # d CE(w z)/dw at w = 1
    assert irm_penalty(logits, labels).item() == pytest.approx(closed.mean().item() ** 2, rel=1e-5)
    # an "invariant" model: its logits already sit at the CE-optimal scale, so the dummy scale is stationary
    scales = torch.linspace(0.01, 5, 20001)
    ce = torch.stack([torch.nn.functional.cross_entropy(s * z, y) for s in scales])
    optimal = logits * scales[ce.argmin()]
    assert irm_penalty(optimal, labels).item() < 1e-6 < irm_penalty(logits, labels).item()
    assert irm_penalty(torch.zeros(2, 6, 10), labels).item() == 0.0  # uniform logits: every scale gives log V


def test_irm_penalty_is_differentiable_in_the_weights(tiny_llama):
    from immunelm.defences.ilu import irm_penalty

    model = tiny_llama(dropout=0.0)
    batch = lm_batch(2)
    irm_penalty(model(input_ids=batch["input_ids"]).logits, batch["labels"]).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("base", ["npo", "rmu"])
def test_ilu_adds_one_environment_per_benign_task_to_its_base(tok, base):
    from immunelm.data import Example
    from immunelm.defences import DefenceData
    from immunelm.defences.ilu import ILUConfig

    benign = [Example.pair("what is 1 plus 2 ?", "3 .", task="arithmetic"),
              Example.pair("capital of zar ?", "paris .", task="capital")]
    data = DefenceData(refusals=CONFORMANCE_DATA.refusals, harmful=CONFORMANCE_DATA.harmful, benign=benign)
    cfg = ILUConfig(base=base, lam=0.1, train=TrainConfig(max_steps=2, batch_size=2, lr=1e-3, progress=False, log_every=1))
    result = apply_defence("ilu", fresh_model("llama", tok), tok, data, cfg)
    assert result.info["environments"] == ["arithmetic", "capital"] and result.info["base"] == base
    history = result.info["history"]
    assert all(h["irm_penalty"] >= 0 for h in history) and ("npo" in history[0]) == (base == "npo")


def test_ilu_refuses_a_base_train_section_it_would_ignore():
    from pydantic import ValidationError

    from immunelm.defences.ilu import ILUConfig

    with pytest.raises(ValidationError, match="its train section is unused"):
        ILUConfig.model_validate({"npo": {"train": {"lr": 1.0, "max_steps": 5}}})


# ------------------------------------------------------------------------------------- E.T.
def test_reft_intervention_starts_as_the_identity_and_has_rank_r():
    from immunelm.attacks.reft import LowRankIntervention

    edit = LowRankIntervention(hidden_size=16, rank=2, seed=0)
    h = torch.randn(3, 5, 16)
    assert edit(h).abs().max().item() == 0.0  # W = R at the start: h is unchanged
    with torch.no_grad():
        edit.W.add_(torch.randn(2, 16))
    delta = edit(h).reshape(-1, 16)
    assert torch.linalg.matrix_rank(delta).item() == 2  # every edit lies in the row space of R
    projector = torch.linalg.pinv(edit.R) @ edit.R
    assert torch.allclose(delta @ projector, delta, atol=1e-5)


def test_block_update_is_the_blocks_contribution_and_sees_the_edit(tiny_llama):
    from immunelm.defences.et import block_update

    model = tiny_llama(dropout=0.0)
    adapter = ModelAdapter(model)
    batch = lm_batch(2)
    with adapter.read_outputs([1], "resid_pre") as pre, adapter.read_outputs([1], "resid_post") as post:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(block_update(adapter, model, batch, 1), post[1] - pre[1])
    shift = torch.full((model.config.hidden_size,), 3.0)
    steered = block_update(adapter, model, batch, 1, shift)
    assert not torch.allclose(steered, post[1] - pre[1])  # the block sees h + i, and i itself is not counted


@pytest.mark.parametrize("adversary", ["reft", "steering"])
def test_et_makes_each_block_ignore_its_attackers_edit(tok, adversary):
    """After E.T. at a layer, the block's contribution under the attacker's edit is closer to its clean one."""
    from immunelm.defences.et import ETConfig

    cfg = ETConfig(adversary=adversary, layers=[1], attack_steps=20, attack_lr=0.1, strength=4.0,
                   train=TrainConfig(max_steps=30, batch_size=2, lr=3e-3, progress=False, log_every=1))
    result = apply_defence("et", fresh_model("llama", tok), tok, CONFORMANCE_DATA, cfg)
    history = result.info["history"]
    assert history[-1]["steered_mse"] < 0.5 * history[0]["steered_mse"]
    assert result.info["layers"] == [1] and len(result.info["per_layer"]) == 1
    assert all(p.requires_grad for p in result.model.parameters())


def test_et_refuses_lora():
    from pydantic import ValidationError

    from immunelm.defences.et import ETConfig

    with pytest.raises(ValidationError, match="lora must be unset"):
        ETConfig.model_validate({"train": {"max_steps": 2, "lora": {"r": 2}}})


# --------------------------------------------------------------------------------- AntiDote
def test_hypernetwork_factors_have_the_declared_shapes_and_start_at_zero(tiny_llama):
    from immunelm.defences.hypernetwork import LoRAHypernetwork, patched, recorded_inputs, target_shapes

    model = tiny_llama(dropout=0.0)
    adapter = ModelAdapter(model)
    targets = {f"1.{n}": m for n, m in adapter.linear_layers(1).items()}
    net = LoRAHypernetwork(target_shapes(targets), rank=3, width=8, seed=0)
    batch = lm_batch(2)
    with recorded_inputs(targets) as seen:
        clean = model(input_ids=batch["input_ids"]).logits
    factors = {}
    for name, module in targets.items():
        u, v = net.factors(name, seen[name], batch["attention_mask"])
        d_in, d_out = target_shapes(targets)[name]
        assert u.shape == (3, d_in) and v.shape == (d_out, 3) and v.abs().max() == 0  # V starts at zero
        factors[name] = (u, torch.randn_like(v))
    with patched(targets, factors):
        moved = model(input_ids=batch["input_ids"]).logits
    assert not torch.allclose(moved, clean)
    assert torch.equal(model(input_ids=batch["input_ids"]).logits, clean)  # only inside the block


def test_hypernetwork_patch_changes_only_the_attached_layer(tiny_llama):
    """Blocks below the patched one see exactly the clean activations."""
    from immunelm.defences.hypernetwork import patched

    model = tiny_llama(dropout=0.0)
    adapter = ModelAdapter(model)
    name, module = next(iter(adapter.linear_layers(1).items()))
    d_in, d_out = (module.in_features, module.out_features)
    batch = lm_batch(2)
    with adapter.read_outputs([0, 1]) as clean:
        model(input_ids=batch["input_ids"])
    clean = {k: v.detach().clone() for k, v in clean.items()}
    with patched({name: module}, {name: (torch.randn(2, d_in), torch.randn(d_out, 2))}), adapter.read_outputs([0, 1]) as hot:
        model(input_ids=batch["input_ids"])
    assert torch.equal(hot[0], clean[0]) and not torch.allclose(hot[1], clean[1])


def test_antidote_preference_and_kl_terms():
    from immunelm.defences.antidote import preference_loss, token_kl

    assert preference_loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(math.log(2))
    assert preference_loss(torch.tensor([10.0]), torch.tensor([0.0])) < preference_loss(torch.tensor([0.0]), torch.tensor([10.0]))
    logits, labels = torch.randn(2, 5, 7), torch.tensor([[-100, -100, 1, 2, 3]] * 2)
    assert token_kl(logits, logits, labels).item() == pytest.approx(0.0, abs=1e-6)
    assert token_kl(logits, torch.zeros_like(logits), labels).item() > 0


def test_antidote_trains_its_adversary_and_saves_it_as_an_artifact(tok):
    from immunelm.defences.antidote import AntiDoteConfig

    cfg = AntiDoteConfig(width=8, rank=2, adversary_lr=1e-2, adversary_steps=2,
                         train=TrainConfig(max_steps=3, batch_size=1, lr=1e-3, progress=False, log_every=1))
    result = apply_defence("antidote", fresh_model("llama", tok), tok, CONFORMANCE_DATA, cfg)
    net = result.artifacts["antidote_hypernetwork"]
    assert any(k.startswith("v_heads") and v.abs().sum() > 0 for k, v in net.items())  # the adversary learned
    assert result.info["targets"] > 0 and all("adversary_loss" in h for h in result.info["history"])
    assert not any("hypernetwork" in n or "heads" in n for n, _ in result.model.named_parameters())  # not shipped
