import math

import pytest
import torch

from immunelm.data import PaddingCollator
from immunelm.engine import CausalLMStep, LoraSettings, TrainConfig, causal_lm_loss, train
from immunelm.engine.checkpoint import checkpoint_dirs, load_checkpoint
from immunelm.engine.optim import lr_factor
from immunelm.engine.sampling import BatchOrder
from immunelm.errors import ImmuneLMError

COLLATE = PaddingCollator(pad_token_id=0)


def cfg(**kw):
    base = dict(max_steps=6, batch_size=4, lr=1e-2, progress=False, log_every=1)
    base.update(kw)
    return TrainConfig(**base)


def weights(model):
    """On the CPU, so results trained on a GPU compare with CPU references."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_weights_different_seed_differs(tiny_llama, token_rows):
    w1 = weights(train(cfg(seed=3), tiny_llama(), token_rows, COLLATE).model)
    w2 = weights(train(cfg(seed=3), tiny_llama(), token_rows, COLLATE).model)
    w3 = weights(train(cfg(seed=4), tiny_llama(), token_rows, COLLATE).model)
    assert same(w1, w2)
    assert not same(w1, w3)


class Crash(RuntimeError):
    pass


def crash_at(step_to_crash):
    def callback(step, metrics):
        if step == step_to_crash:
            raise Crash(f"killed at {step}")
    return callback


def test_killed_run_resumes_to_identical_weights(tiny_llama, token_rows, tmp_path):
    config = cfg(max_steps=10, checkpoint_every=3, optimizer="adamw", schedule="cosine", warmup_steps=2)
    reference = weights(train(config, tiny_llama(), token_rows, COLLATE, output_dir=tmp_path / "ref").model)

    with pytest.raises(Crash):
        train(config, tiny_llama(), token_rows, COLLATE, output_dir=tmp_path / "run", callbacks=[crash_at(7)])
    assert [p.name for p in checkpoint_dirs(tmp_path / "run" / "checkpoints")] == ["step-3", "step-6"]
    # A fresh process would rebuild the model from scratch; the checkpoint restores the rest.
    resumed = train(config, tiny_llama(seed=99), token_rows, COLLATE, output_dir=tmp_path / "run", resume=True)
    assert resumed.steps == 10
    assert same(weights(resumed.model), reference)


def test_checkpoint_is_pickle_free_and_incomplete_one_is_rejected(tiny_llama, token_rows, tmp_path):
    train(cfg(checkpoint_every=2), tiny_llama(), token_rows, COLLATE, output_dir=tmp_path)
    latest = checkpoint_dirs(tmp_path / "checkpoints")[-1]
    assert sorted(p.suffix for p in latest.iterdir()) == [".json", ".safetensors", ".safetensors", ".safetensors"]
    (latest / "optimizer.safetensors").unlink()
    with pytest.raises(ImmuneLMError, match="missing optimizer.safetensors"):
        load_checkpoint(latest, tiny_llama(), None, None)


def test_gradient_accumulation_matches_large_batch(tiny_llama, token_rows):
    big = train(cfg(batch_size=8, grad_accum=1, optimizer="sgd"), tiny_llama(dropout=0.0), token_rows, COLLATE)
    acc = train(cfg(batch_size=4, grad_accum=2, optimizer="sgd"), tiny_llama(dropout=0.0), token_rows, COLLATE)
    for k, v in weights(big.model).items():
        torch.testing.assert_close(weights(acc.model)[k], v, rtol=1e-5, atol=1e-6)


def test_sgd_update_follows_formula(tiny_llama, token_rows):
    """One plain SGD step must equal w - lr * grad computed by hand on the same batch."""
    model = tiny_llama(dropout=0.0)
    before = weights(model)
    config = cfg(max_steps=1, batch_size=4, optimizer="sgd", lr=0.1, max_grad_norm=None)
    order = BatchOrder(len(token_rows), 4, config.seed)
    batch = COLLATE([token_rows[i] for i in next(order.batches())])
    reference = tiny_llama(dropout=0.0)
    from immunelm.engine.steps import response_token_loss
    out = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    response_token_loss(out.logits, batch["labels"]).backward()
    grads = {n: p.grad.clone() for n, p in reference.named_parameters()}
    after = weights(train(config, model, token_rows, COLLATE).model)
    for name in before:
        torch.testing.assert_close(after[name], before[name] - 0.1 * grads[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "adagrad", "adadelta"])
def test_every_optimizer_lowers_the_loss(name, tiny_llama, token_rows):
    lr = {"adadelta": 1.0, "sgd": 0.5}.get(name, 1e-2)
    extra = {"momentum": 0.9, "nesterov": True} if name == "sgd" else {}
    result = train(cfg(max_steps=15, optimizer=name, lr=lr, **extra), tiny_llama(dropout=0.0), token_rows, COLLATE)
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_lr_schedules_match_their_formulas():
    c = cfg(schedule="linear", warmup_steps=4, max_steps=20)
    assert [lr_factor(s, 20, c) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(12, 20, c) == pytest.approx(1 - 8 / 16)
    cos = cfg(schedule="cosine", warmup_steps=0, max_steps=10, min_lr_ratio=0.1)
    assert lr_factor(5, 10, cos) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(10, 10, cos) == pytest.approx(0.1)
    assert lr_factor(7, 10, cfg(schedule="constant")) == 1.0


def test_lora_trains_only_adapters(tiny_llama, token_rows):
    model = tiny_llama()
    frozen_before = weights(model)
    result = train(cfg(lora=LoraSettings(r=2, alpha=4)), model, token_rows, COLLATE)
    named = weights(result.model)
    lora = [n for n, p in result.model.named_parameters() if "lora_" in n and p.requires_grad]
    assert lora and lora == [n for n in named if "lora_" in n]
    base_changed = [
        n for n, p in named.items()
        if "lora_" not in n and not torch.equal(p, frozen_before[n.replace("base_model.model.", "").replace(".base_layer", "")])
    ]
    assert base_changed == []


def test_evaluations_run_at_requested_steps(tiny_llama, token_rows):
    seen = []

    def evaluate(model, step):
        seen.append((step, model.training))
        return {"marker": float(step)}

    result = train(cfg(max_steps=5, eval_at=[0, 2, 5]), tiny_llama(), token_rows, COLLATE, evaluate=evaluate)
    assert [e["step"] for e in result.evaluations] == [0, 2, 5]
    assert all(training is False for _, training in seen)


def test_custom_step_with_two_backward_passes_accumulates(tiny_llama, token_rows):
    """A method plugs in its own step; two ctx.backward calls add their gradients."""
    plain = CausalLMStep()

    def doubled(ctx, batch):
        plain(ctx, batch)
        return plain(ctx, batch)

    config = cfg(max_steps=1, optimizer="sgd", lr=0.1, max_grad_norm=None)
    once = weights(train(config.model_copy(update={"lr": 0.2}), tiny_llama(dropout=0.0), token_rows, COLLATE).model)
    twice = weights(train(config, tiny_llama(dropout=0.0), token_rows, COLLATE, step_fn=doubled).model)
    for k in once:
        torch.testing.assert_close(twice[k], once[k], rtol=1e-5, atol=1e-7)


def test_batch_order_is_deterministic_and_sharded():
    a = BatchOrder(10, 2, seed=5, num_processes=2, process_index=0)
    b = BatchOrder(10, 2, seed=5, num_processes=2, process_index=1)
    gen_a, gen_b = a.batches(), b.batches()
    first = [next(gen_a) + next(gen_b) for _ in range(2)]
    flat = [i for pair in first for i in pair]
    assert sorted(flat) == sorted(set(flat))  # no example twice within an epoch
    stream = BatchOrder(10, 2, seed=5).batches()
    fourth = [next(stream) for _ in range(4)][-1]
    assert next(BatchOrder(10, 2, seed=5).batches(start_batch=3)) == fourth


def test_gradient_checkpointing_gives_the_same_update(tiny_llama, token_rows):
    """Checkpointing trades compute for memory; it must not change the maths."""
    plain = weights(train(cfg(max_steps=3), tiny_llama(dropout=0.0), token_rows, COLLATE).model)
    ckpt = weights(train(cfg(max_steps=3, gradient_checkpointing=True), tiny_llama(dropout=0.0), token_rows, COLLATE).model)
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_with_lora_trains_adapters(tiny_llama, token_rows):
    result = train(cfg(max_steps=3, gradient_checkpointing=True, lora=LoraSettings(r=2)), tiny_llama(), token_rows, COLLATE)
    lora_b = [p for n, p in result.model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero; it moved


def nan_at(step_to_break: int, plain=CausalLMStep()):
    """A step function whose loss turns nan at optimiser step ``step_to_break`` (1-based)."""
    def step(ctx, batch):
        if ctx.step + 1 < step_to_break:
            return plain(ctx, batch)
        loss = causal_lm_loss(ctx.model, batch) * float("nan")
        ctx.backward(loss)
        return {"loss": loss.detach()}
    return step


def test_non_finite_loss_stops_before_the_update_and_saves_nothing_after(tiny_llama, token_rows, tmp_path):
    config = cfg(max_steps=6, checkpoint_every=1, keep_checkpoints=10)
    model = tiny_llama(dropout=0.0)
    with pytest.raises(ImmuneLMError, match=r"step 3: the loss is not finite"):
        train(config, model, token_rows, COLLATE, output_dir=tmp_path, step_fn=nan_at(3))
    assert [p.name for p in checkpoint_dirs(tmp_path / "checkpoints")] == ["step-1", "step-2"]
    # The model the caller holds has exactly the weights after step 2: the nan step was never applied.
    reference = tiny_llama(dropout=0.0)
    with pytest.raises(Crash):
        train(config, reference, token_rows, COLLATE, output_dir=tmp_path / "ref", callbacks=[crash_at(2)])
    assert same(weights(model), weights(reference)) and all(torch.isfinite(p).all() for p in model.parameters())


def test_non_finite_gradient_stops_even_with_clipping_off(tiny_llama, token_rows):
    model = tiny_llama(dropout=0.0)
    model.model.norm.weight.register_hook(lambda grad: grad * float("inf"))  # the loss itself stays finite
    with pytest.raises(ImmuneLMError, match=r"step 1: the gradient norm \((nan|inf)\) is not finite"):
        train(cfg(max_grad_norm=None), model, token_rows, COLLATE)


def test_resume_refuses_another_config_and_a_missing_checkpoint(tiny_llama, token_rows, tmp_path):
    with pytest.raises(ImmuneLMError, match="nothing to resume"):
        train(cfg(), tiny_llama(), token_rows, COLLATE, output_dir=tmp_path, resume=True)
    train(cfg(checkpoint_every=3), tiny_llama(), token_rows, COLLATE, output_dir=tmp_path, run_config={"data": "a.jsonl"})
    with pytest.raises(ImmuneLMError, match=r"train.lr \(checkpoint 0.01, now 0.02\)"):
        train(cfg(checkpoint_every=3, lr=2e-2), tiny_llama(), token_rows, COLLATE, output_dir=tmp_path, resume=True,
              run_config={"data": "a.jsonl"})
    with pytest.raises(ImmuneLMError, match=r"data \(checkpoint 'a.jsonl', now 'b.jsonl'\)"):
        train(cfg(checkpoint_every=3), tiny_llama(), token_rows, COLLATE, output_dir=tmp_path, resume=True, run_config={"data": "b.jsonl"})
    with pytest.raises(ImmuneLMError, match=r"dataset.rows \(checkpoint 40, now 39\)"):
        train(cfg(checkpoint_every=3), tiny_llama(), token_rows[:-1], COLLATE, output_dir=tmp_path, resume=True,
              run_config={"data": "a.jsonl"})
    # Logging, progress and checkpoint cadence may change, and the budget may grow.
    notes = []
    resumed = train(cfg(checkpoint_every=2, log_every=3, progress=False, max_steps=8), tiny_llama(), token_rows, COLLATE,
                    output_dir=tmp_path, resume=True, run_config={"data": "a.jsonl"}, log=notes.append)
    assert resumed.steps == 8 and notes == [f"resuming from {tmp_path / 'checkpoints' / 'step-6'} (step 6)"]


def test_corrupt_newest_checkpoint_falls_back_to_the_newest_complete_one(tiny_llama, token_rows, tmp_path):
    config = cfg(max_steps=10, checkpoint_every=3, keep_checkpoints=3)
    reference = weights(train(config, tiny_llama(), token_rows, COLLATE, output_dir=tmp_path / "ref").model)
    with pytest.raises(Crash):
        train(config, tiny_llama(), token_rows, COLLATE, output_dir=tmp_path, callbacks=[crash_at(7)])
    state = tmp_path / "checkpoints" / "step-6" / "state.json"
    state.write_text(state.read_text()[:50])  # truncated mid-write by something outside the engine
    notes = []
    resumed = train(config, tiny_llama(seed=5), token_rows, COLLATE, output_dir=tmp_path, resume=True, log=notes.append)
    assert len(notes) == 1 and "resuming from" in notes[0] and "step-3 (step 3)" in notes[0] and "step-6" in notes[0]
    assert same(weights(resumed.model), reference)
    for name in ("step-3", "step-6", "step-9"):
        (tmp_path / "checkpoints" / name / "trainable.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ImmuneLMError, match="no complete checkpoint"):
        train(config, tiny_llama(), token_rows, COLLATE, output_dir=tmp_path, resume=True)


def test_a_metric_reported_on_some_steps_is_averaged_over_those_steps(tiny_llama, token_rows):
    """TokenBuncher reports its KL on GRPO steps only: the logged row averages what was reported."""
    plain = CausalLMStep()

    def step_fn(ctx, batch):
        metrics = plain(ctx, batch)
        if ctx.step % 2 == 0:
            metrics["sometimes"] = torch.tensor(float(ctx.step))
        return metrics

    result = train(cfg(max_steps=4, log_every=4), tiny_llama(), token_rows, PaddingCollator(0), step_fn=step_fn)
    assert result.history[0]["sometimes"] == 1.0  # mean of steps 0 and 2, not of four rows
