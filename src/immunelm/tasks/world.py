"""The built-in world as an evaluation task (the organism's sets; exact judge)."""

from __future__ import annotations

from pydantic import Field

from immunelm.attacks.base import AttackData
from immunelm.config import Config
from immunelm.data import Example
from immunelm.registry import unknown_name
from immunelm.tasks.base import CROSS_DOMAIN, HELDOUT_PHRASINGS, EvalTask, JudgeSpec, ScoredSet, TrainabilityTask
from immunelm.world import corpus
from immunelm.world.spec import BENIGN_TASKS, HARMFUL_DOMAINS, TRAINABILITY_TASK, World, WorldConfig, generate_world


class WorldTaskOptions(Config):
    domain: str = Field("compound", description=f"Harm domain attacked; the other is cross-domain ({', '.join(HARMFUL_DOMAINS)}).")
    world: WorldConfig | None = Field(None, description="The world's settings (default: the evaluated organism's).")


def _one_phrasing_each(items, phrasings: list[int]) -> list[Example]:
    """Every item once, phrasings assigned round-robin: full coverage at a sixth of the cost."""
    return [
        Example.pair(item.prompt(phrasings[k % len(phrasings)]), item.answer, task=item.task, entity=item.entity)
        for k, item in enumerate(items)
    ]


def _by_task(examples: list[Example]) -> list[ScoredSet]:
    """One exact-scored utility set per benign task (phrasings assigned over all tasks at once,
    as before tasks existed, so the stored results reproduce)."""
    return [ScoredSet(t, [e for e in examples if e.meta["task"] == t], "exact") for t in BENIGN_TASKS]


def world_task(world: World, domain: str = "compound") -> EvalTask:
    """Attack on ``domain``; cross-domain = the other harm domain; exact judge and scorers."""
    if domain not in HARMFUL_DOMAINS:
        raise unknown_name("world harm domain", domain, HARMFUL_DOMAINS)
    other = next(d for d in HARMFUL_DOMAINS if d != domain)
    train, heldout = world.train_phrasings, world.heldout_phrasings
    benign_items = [i for t in BENIGN_TASKS for i in world.by_task(t)]
    habitat = world.by_task(TRAINABILITY_TASK)
    return EvalTask(
        name="world",
        description=f"Built-in synthetic world (seed {world.config.seed}), attack domain '{domain}'.",
        harmful=corpus.chat_examples(world.by_task(domain, "eval"), train),
        utility=_by_task(_one_phrasing_each(benign_items, train)),
        attack=AttackData(
            harmful=corpus.chat_examples(world.by_task(domain, "attack"), train),
            benign=corpus.chat_examples(benign_items, train),
        ),
        judge=JudgeSpec("exact"),
        harmful_scorer="exact",
        generalisation={
            HELDOUT_PHRASINGS: corpus.chat_examples(world.by_task(domain, "eval"), heldout),
            CROSS_DOMAIN: corpus.chat_examples(world.by_task(other, "eval"), train),
        },
        perplexity=_one_phrasing_each(benign_items, heldout),
        trainability=TrainabilityTask(
            TRAINABILITY_TASK, corpus.chat_examples(habitat, train), ScoredSet(TRAINABILITY_TASK, _one_phrasing_each(habitat, train))),
        provenance={"provider": "world", "world_seed": world.config.seed, "domain": domain},
        # The world's answers are at most 12 tokens; 512 prompts fit one batch on a CPU.
        defaults={"suite": "quick", "generation": {"max_new_tokens": 16, "batch_size": 512}},
    )


def build(opts: WorldTaskOptions, context) -> EvalTask:
    world_cfg = opts.world or context.organism.world
    return world_task(generate_world(world_cfg), opts.domain)
