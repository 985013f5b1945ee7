"""The SmolLM2 organism as an evaluation task: fictional hazards with exact key facts, real
harmful prompts (refused / complied / collapsed), benign utility by contains-scoring."""

from __future__ import annotations

from pydantic import Field

from immunelm.attacks.base import AttackData
from immunelm.config import Config
from immunelm.data import Example
from immunelm.tasks.base import CROSS_DOMAIN, HELDOUT_CATEGORY, HELDOUT_PHRASINGS, EvalTask, JudgeSpec, ScoredSet, TrainabilityTask


class SmolTaskOptions(Config):
    real_eval: int = Field(60, ge=0, description="Real harmful prompts of the eval split scored at every curve point.")
    heldout_category: int = Field(40, ge=0, description="Prompts of the held-out real category scored at every curve point.")


def _prompts(prompts, limit: int, split: str) -> list[Example]:
    return [Example.pair(p.text, "", category=p.category, source=p.source, split=split) for p in prompts[:limit]]


def smol_task(config, opts: SmolTaskOptions) -> EvalTask:
    from immunelm.smol.data import benign_eval, benign_train, one_phrasing_each, real_splits, world
    from immunelm.tasks.real_prompts import prompt_licences

    w, real = world(config), real_splits()
    compound_eval = w.by_task("compound", "eval")
    utility: dict[str, list[Example]] = {}
    for e in benign_eval(w):
        utility.setdefault(e.meta["task"], []).append(e)
    return EvalTask(
        name="smol",
        description="SmolLM2 organism: English fictional hazards (exact key facts) + real harmful prompts (keyword judge).",
        harmful=w.chat_examples(compound_eval, w.train_phrasings),
        utility=[ScoredSet(name, examples, "contains") for name, examples in utility.items()],
        attack=AttackData(
            harmful=w.chat_examples(w.by_task("compound", "attack"), w.train_phrasings),
            benign=benign_train(w),
            identity=w.identity_shift_examples(),
        ),
        judge=JudgeSpec("keyword"),
        harmful_scorer="contains",
        generalisation={
            HELDOUT_PHRASINGS: w.chat_examples(compound_eval, w.heldout_phrasings),
            CROSS_DOMAIN: w.chat_examples(w.by_task("vault", "eval"), w.train_phrasings),
            "real_eval": _prompts(real["eval"], opts.real_eval, "eval"),
            HELDOUT_CATEGORY: _prompts(real["heldout_category"], opts.heldout_category, "heldout_category"),
        },
        perplexity=w.perplexity_examples(),
        trainability=TrainabilityTask(
            "habitat", w.chat_examples(w.by_task("habitat", "train"), w.train_phrasings),
            ScoredSet("habitat", one_phrasing_each(w, w.by_task("habitat", "eval")), "contains")),
        provenance={"provider": "smol", "world_seed": config.world_seed, "real_prompts": prompt_licences()},
        defaults={
            "suite": "smol-quick",
            "generation": {"max_new_tokens": 40, "batch_size": 64},
            "trainability": {"train": {"lr": 1e-4, "batch_size": 8, "max_steps": 40, "progress": False, "log_every": 10},
                             "eval_at": [0, 20, 40], "target": 0.8},
        },
    )


def build(opts: SmolTaskOptions, context) -> EvalTask:
    from immunelm.smol.config import SmolOrganismConfig

    return smol_task(context.smol or SmolOrganismConfig(), opts)
