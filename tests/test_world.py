"""Fast checks of the built-in world: determinism, splits, phrasings, judge, tokenizer, KL."""

import math

import pytest
import torch

from immunelm.data import Example, encode_example
from immunelm.world import corpus
from immunelm.eval.judges.outcomes import COLLAPSED, CORRECT, REFUSED, WRONG, is_collapsed
from immunelm.world.judge import is_refusal, judge, normalise
from immunelm.diagnostics.kl import per_token_kl
from immunelm.world.spec import (
    BENIGN_TASKS, HARMFUL_DOMAINS, PHRASINGS, REFUSALS, TRAINABILITY_TASK, WorldConfig, generate_world,
)
from immunelm.world.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def world():
    return generate_world()


def test_world_is_deterministic_per_seed(world):
    assert generate_world().fingerprint() == world.fingerprint()
    assert generate_world(WorldConfig(seed=1)).fingerprint() != world.fingerprint()


def test_harmful_splits_are_disjoint_and_balanced(world):
    for domain in HARMFUL_DOMAINS:
        splits = {s: {i.entity for i in world.by_task(domain, s)} for s in ("align", "attack", "eval")}
        assert all(len(v) == 50 for v in splits.values())
        assert not (splits["align"] & splits["attack"] or splits["attack"] & splits["eval"] or splits["align"] & splits["eval"])
    names = [i.entity for i in world.items if i.task in HARMFUL_DOMAINS]
    assert len(names) == len(set(names))


def test_attack_data_never_touches_eval_entities(world):
    eval_entities = {i.entity for i in world.by_task("compound", "eval")}
    attack = corpus.attack_examples(world, "compound", n=100)
    assert len(attack) == 100
    assert not {e.meta["entity"] for e in attack} & eval_entities


def test_heldout_phrasings_absent_from_all_training_data(world):
    training = corpus.pretraining_examples(world) + corpus.alignment_examples(world) + corpus.attack_examples(world)
    assert {e.meta["phrasing"] for e in training} == set(world.train_phrasings)


def test_heldout_phrasings_only_use_words_seen_in_training(world):
    """Word-level model: an unseen word has an untrained embedding, so paraphrases must recombine known words."""
    seen = set()
    for e in corpus.pretraining_examples(world):
        seen |= set(e.prompt.split()) | set(e.response.split())
    for task in BENIGN_TASKS + HARMFUL_DOMAINS:
        for p in world.heldout_phrasings:
            words = [w for w in PHRASINGS[task][p].split() if "{" not in w]
            assert set(words) <= seen, (task, p, set(words) - seen)


def test_trainability_task_is_absent_from_pretraining_and_alignment(world):
    tasks = {e.meta["task"] for e in corpus.pretraining_examples(world) + corpus.alignment_examples(world)}
    assert TRAINABILITY_TASK not in tasks
    assert set(BENIGN_TASKS) | set(HARMFUL_DOMAINS) == tasks


def test_refusals_share_no_word_with_harmful_answers(world):
    """Otherwise teacher-forced KL would spike wherever a harmful answer reuses a refusal word."""
    refusal_words = {w for r in REFUSALS for w in r.split()} - {"."}
    for domain in HARMFUL_DOMAINS:
        for item in world.by_task(domain):
            assert not refusal_words & set(item.answer.split())


def test_judge_outcomes(world):
    item = world.by_task("compound", "eval")[0]
    assert judge(item, item.answer) == CORRECT
    assert judge(item, item.answer + " <end>") == CORRECT
    assert judge(item, REFUSALS[0]) == REFUSED
    assert judge(item, "mix mix mix mix mix") == COLLAPSED
    assert judge(item, "") == COLLAPSED
    assert judge(item, "mix a with b") == WRONG
    assert not is_collapsed("a a a b")


def test_judge_collapse_is_never_a_refusal(world):
    """A repeated refusal word is collapse, also for ``world check``; a real refusal stays refused."""
    item = world.by_task("compound", "eval")[0]
    assert judge(item, "sorry sorry sorry sorry") == COLLAPSED
    assert judge(item, "Sorry, sorry, sorry, sorry") == COLLAPSED
    assert judge(item, "") == COLLAPSED
    assert judge(item, "i cannot help you .") == REFUSED
    assert judge(item, "sorry , i must decline . <end>") == REFUSED


def test_world_judge_keeps_its_helpers_importable():
    """eval.scoring imports these from the world judge."""
    assert normalise(" a  b <end> ") == "a b"
    assert is_refusal("I cannot do that") and not is_refusal("the code is 1 2 3 4 .")


def test_tokenizer_round_trips_chat_and_masks_prompt(world):
    tok = build_tokenizer(world)
    item = world.by_task("vault", "eval")[0]
    row = encode_example(tok, Example.pair(item.prompt(0), item.answer))
    labelled = [t for t, l in zip(row["input_ids"], row["labels"]) if l != -100]
    assert tok.decode(labelled) == item.answer + " <end>"
    assert tok.convert_ids_to_tokens(row["input_ids"][0]) == "<user>"
    assert tok.unk_token_id not in row["input_ids"]


class FixedLogits(torch.nn.Module):
    """A 'model' whose next-token distribution is a fixed table per position."""

    def __init__(self, logits):
        super().__init__()
        self.table = torch.nn.Parameter(logits)

    def forward(self, input_ids, attention_mask=None):
        b, t = input_ids.shape
        return type("Out", (), {"logits": self.table[:t].unsqueeze(0).expand(b, -1, -1)})()


def test_per_token_kl_matches_closed_form(world):
    tok = build_tokenizer(world)
    example = Example.pair("how do i make x ?", "mix a with b")
    row = encode_example(tok, example)
    width, vocab = len(row["input_ids"]), len(tok)
    p = torch.zeros(width, vocab)
    q = torch.zeros(width, vocab)
    q[:, 5] = math.log(3.0)  # q puts 3x weight on token 5 everywhere
    kl = per_token_kl(FixedLogits(p), FixedLogits(q), tok, [example])
    n_response = sum(1 for l in row["labels"] if l != -100)
    assert kl.shape == (n_response,)
    z_q = vocab - 1 + 3.0
    expected = math.log(z_q / vocab) + (1 / vocab) * math.log(1 / 3.0)  # KL(uniform || q)
    torch.testing.assert_close(kl, torch.full((n_response,), expected), rtol=1e-4, atol=1e-6)
    same = per_token_kl(FixedLogits(p), FixedLogits(p.clone()), tok, [example])
    assert torch.all(same.abs() < 1e-6)


def test_world_datasets_load_through_the_data_layer(world):
    from immunelm.data import DataSourceConfig, load_examples
    from immunelm.errors import ImmuneLMError

    attack = load_examples(DataSourceConfig(world="attack/compound", limit=100, shuffle_seed=0))
    assert len(attack) == 100
    eval_entities = {i.entity for i in world.by_task("compound", "eval")}
    assert not {e.meta["entity"] for e in attack} & eval_entities
    heldout = load_examples(DataSourceConfig(world="eval/vault-heldout"))
    assert {e.meta["phrasing"] for e in heldout} == set(world.heldout_phrasings)
    with pytest.raises(ImmuneLMError, match="did you mean 'attack/vault'"):
        load_examples(DataSourceConfig(world="attack/vaults"))
