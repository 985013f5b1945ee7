"""Adaptive attacks: a benign warm-up before harmful SFT, on one step axis."""

from __future__ import annotations

import pytest
import immunelm.attacks.adaptive as adaptive
from immunelm.attacks.base import make_adversary
from immunelm.errors import ImmuneLMError
from attack_e2e import run_evaluate


@pytest.mark.parametrize("steps, fraction, switch", [(100, 0.4, 40), (10, 0.01, 1), (10, 0.99, 9), (2, 0.5, 1)])
def test_switch_step_leaves_both_phases_at_least_one_step(steps, fraction, switch):
    cfg = adaptive.BenignThenHarmfulConfig(benign_fraction=fraction, train={"max_steps": steps})
    assert cfg.split() == switch


def test_one_step_budget_and_bad_fraction_are_refused_where_written():
    with pytest.raises(ImmuneLMError, match="max_steps"):
        make_adversary("a", "benign_then_harmful", train={"max_steps": 1})
    with pytest.raises(ImmuneLMError, match="benign_fraction"):
        make_adversary("a", "benign_then_harmful", benign_fraction=1.0, train={"max_steps": 10})


def test_benign_then_harmful_through_evaluate(tmp_path):
    from immunelm.report import load_report

    result, run_dir = run_evaluate(tmp_path, "name: s\nbudget: 6\neval_at: [0, 3, 6]\nadversaries:\n"
                                   "  - {name: warm, kind: benign_then_harmful, examples: 8, benign_fraction: 0.34,"
                                   " train: {batch_size: 4, lr: 1.0e-3}}\n", "evaluation.prefill_tokens=[]")
    assert result.exit_code == 0, result.output
    adv = load_report(run_dir).models[0].resistance[0]
    assert adv.info["switch_step"] == 2 and [p.step for p in adv.curve] == [0, 2, 3, 6]  # the switch is scored too
    assert adv.family == "fine-tuning" and adv.info["examples"] == 16


def test_lora_phases_never_nest_adapters(tiny_llama, monkeypatch):
    """With LoRA the harmful phase starts from the benign phase's adapter merged into the weights,
    so the engine adds one adapter, never an adapter around an adapter model."""
    from peft import LoraConfig, get_peft_model

    from immunelm.attacks.base import AttackData, AttackResult, AttackRun
    from immunelm.data import Example
    from immunelm.models.adapters import is_peft_model

    received = []

    def fake_fine_tune(run, cfg, examples):
        received.append(is_peft_model(run.model))
        model = get_peft_model(run.model, LoraConfig(r=2, lora_alpha=4, target_modules="all-linear"))
        return AttackResult([{"step": p} for p in run.eval_at], 1.0, {"examples": len(examples)}, model=model)

    monkeypatch.setattr(adaptive, "fine_tune", fake_fine_tune)
    data = AttackData([Example.pair("h", "x", kind="harm")], [Example.pair("b", "y", kind="benign")])
    run = AttackRun(tiny_llama(), None, data, [0, 4], score=None)
    cfg = adaptive.BenignThenHarmfulConfig(examples=2, train={"max_steps": 4, "lora": {"r": 2, "alpha": 4}})
    result = adaptive.benign_then_harmful(run, cfg)
    assert received == [False, False] and is_peft_model(result.model)


def test_benign_phase_comes_first_and_harmful_points_are_offset(monkeypatch):
    from immunelm.attacks.base import AttackData, AttackResult, AttackRun
    from immunelm.data import Example

    calls = []

    def fake_fine_tune(run, cfg, examples):
        calls.append(({e.meta["kind"] for e in examples}, cfg.train.max_steps, list(run.eval_at)))
        return AttackResult([{"step": p} for p in run.eval_at], 1.0, {"examples": len(examples)}, model=f"m{len(calls)}")

    monkeypatch.setattr(adaptive, "fine_tune", fake_fine_tune)
    data = AttackData([Example.pair("h", "x", kind="harm")], [Example.pair("b", "y", kind="benign")])
    run = AttackRun("m0", None, data, [0, 5, 10], score=None)
    cfg = adaptive.BenignThenHarmfulConfig(examples=4, benign_fraction=0.3, train={"max_steps": 10})
    result = adaptive.benign_then_harmful(run, cfg)
    assert calls == [({"benign"}, 3, [0, 3]), ({"harm"}, 7, [0, 2, 7])]
    assert [e["step"] for e in result.evaluations] == [0, 3, 5, 10] and result.model == "m2"
