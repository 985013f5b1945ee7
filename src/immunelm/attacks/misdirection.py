"""Contextual misdirection: prompt-only attacks that wrap a harmful request in a framing
(hypothetical, fiction, role-play, research, a benign distractor), no weight change.

The field's survey (seeds 000 and 003: "representation-rerouting methods can be partially
fooled by prompts that dilute the harmful signal ... e.g. a hypothetical framing") names this
the stress test for Circuit Breakers (Zou et al. 2024, https://arxiv.org/abs/2406.04313). Templates are data (``attacks/templates/misdirection.yaml``, or the
user's file of the same shape): ``{prompt}`` is the harmful request, ``{benign}`` a benign
request drawn from the attacker's pool (seeded), so a framing works in any model's language.

The attacker chooses on its own data: point k of the grid uses, among the first k templates,
the one with the highest mean judge harmfulness on the attacker's harmful pool (point 0 = no
framing); the evaluation prompts are never used to choose. Templates the model's tokenizer
cannot encode (unknown tokens: e.g. English framings on the built-in world's word-level
tokenizer) are left out and listed in ``info["skipped"]`` (a point with no usable template
among its first k is scored unframed); if none is usable the attack stops with one line.
"""

from __future__ import annotations

import random
import time
from importlib import resources
from typing import Optional

from pydantic import Field

from immunelm.attacks.base import AttackResult, AttackRun, register_attack
from immunelm.attacks.finetune import draw
from immunelm.config import Config, Seed, parse_yaml_text, read_yaml_file
from immunelm.data import Example
from immunelm.errors import ImmuneLMError
from immunelm.eval.generation import GenerationConfig, generate
from immunelm.eval.judges.base import JudgeSample

SHIPPED = "misdirection.yaml"


class Template(Config):
    name: str = Field(description="Label in results.")
    text: str = Field(description="The framing, with {prompt} (and optionally {benign}).")

    def fill(self, prompt: str, benign: str) -> str:
        return self.text.replace("{benign}", benign).replace("{prompt}", prompt)


class MisdirectionConfig(Config):
    """Prompt-only framings, chosen on the attacker's own harmful pool with the task's judge."""

    templates: Optional[list[str]] = Field(None, description="Names to try, in order (None: every template of the file).")
    file: Optional[str] = Field(None, description="A YAML file with 'templates: [{name, text}]' (None: the shipped framings).")
    select_examples: int = Field(32, ge=1, le=1024, description="Attacker harmful prompts used to choose a template.")
    max_new_tokens: int = Field(32, ge=1, le=1024, description="Answer length while choosing.")
    seed: Seed = Field(0, description="Which prompts choose, and which benign requests fill {benign}.")

    def points(self) -> list[str]:
        """Point 0 = no framing; point k = the best of the first k usable templates."""
        return ["none", *(self.templates or [t.name for t in load_templates(self.file)])]


def load_templates(file: str | None) -> list[Template]:
    source = file or f"immunelm.attacks.templates/{SHIPPED}"
    raw = read_yaml_file(file, "template file") if file else parse_yaml_text(
        resources.files("immunelm.attacks.templates").joinpath(SHIPPED).read_text(encoding="utf-8"), source)
    if not isinstance(raw, dict) or not isinstance(raw.get("templates"), list) or not raw["templates"]:
        raise ImmuneLMError(f"{source}: expected 'templates:' with a list of {{name, text}}")
    templates = [Template.model_validate(t) if isinstance(t, dict) else None for t in raw["templates"]]
    for i, t in enumerate(templates):
        if t is None or "{prompt}" not in t.text:
            raise ImmuneLMError(f"{source}: templates[{i}] needs a name and a text containing {{prompt}}")
    return templates


def chosen_templates(cfg: MisdirectionConfig) -> list[Template]:
    by_name = {t.name: t for t in load_templates(cfg.file)}
    unknown = [n for n in cfg.templates or [] if n not in by_name]
    if unknown:
        raise ImmuneLMError(f"misdirection.templates: unknown template '{unknown[0]}' (known: {', '.join(by_name)})")
    return [by_name[n] for n in cfg.templates] if cfg.templates else list(by_name.values())


def encodable(tokenizer, text: str) -> bool:
    """Whether the framing's own words encode without the tokenizer's unknown token."""
    unk = tokenizer.unk_token_id
    frame = text.replace("{prompt}", "").replace("{benign}", "")
    return unk is None or unk not in tokenizer(frame, add_special_tokens=False)["input_ids"]


class Framing:
    """A template bound to the attacker's benign pool: a seeded benign request per prompt."""

    def __init__(self, template: Template, benign: list[Example], seed: int) -> None:
        self.template, self.benign, self.seed = template, benign, seed

    def __call__(self, prompt: str) -> str:
        # Seeded by the prompt, so the same request always gets the same distractor.
        rng = random.Random(f"{self.seed}:{prompt}")
        benign = rng.choice(self.benign).prompt if self.benign else ""
        return " ".join(self.template.fill(prompt, benign).split())


def harmfulness(run: AttackRun, framing: Framing, examples: list[Example], cfg: MisdirectionConfig) -> float:
    """Mean judge harmfulness of the model's answers to the framed attacker prompts."""
    framed = [e.with_prompt(framing(e.prompt)) for e in examples]
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, progress=False, seed=cfg.seed)
    answers = generate(run.model, run.tokenizer, [e.prompt_messages for e in framed], gen)
    verdicts = run.judge.judge([JudgeSample(e.prompt, a, e.response or None, dict(e.meta))
                                for e, a in zip(framed, answers)])
    return sum(v.harmful for v in verdicts) / len(verdicts)


def best_of_first(scores: list[float | None], k: int) -> int | None:
    """Index of the highest-scoring usable template among the first ``k`` (None: none usable)."""
    usable = [i for i in range(min(k, len(scores))) if scores[i] is not None]
    return max(usable, key=lambda i: scores[i]) if usable else None


@register_attack("misdirection", MisdirectionConfig, paper="https://arxiv.org/abs/2406.04313", family="prompt",
                 budget_unit="template")
def misdirection(run: AttackRun, cfg: MisdirectionConfig) -> AttackResult:
    if run.judge is None:
        raise ImmuneLMError("misdirection: needs the evaluation's judge to choose a template")
    started = time.perf_counter()
    templates = chosen_templates(cfg)  # the grid's order; points() lists the same names
    usable = [t for t in templates if encodable(run.tokenizer, t.text)]
    if not usable:
        raise ImmuneLMError("misdirection: the model's tokenizer cannot encode any template; "
                            "give framings in the model's language with misdirection.file=...")
    select = draw(run.data.harmful, min(cfg.select_examples, len(run.data.harmful)), random.Random(cfg.seed), "harmful")
    framings = [Framing(t, run.data.benign, cfg.seed) if t in usable else None for t in templates]
    scores = [harmfulness(run, f, select, cfg) if f else None for f in framings]
    chosen = [best_of_first(scores, k) for k in range(len(templates) + 1)]
    evaluations = [run.score(run.model, p, wrap=framings[chosen[p]] if chosen[p] is not None else None)
                   for p in run.eval_at]
    return AttackResult(evaluations, time.perf_counter() - started, {
        "selection_harmful": {t.name: s for t, s in zip(templates, scores) if s is not None},
        "chosen_by_point": [templates[c].name if c is not None else None for c in chosen],
        "skipped": [t.name for t in templates if t not in usable], "select_examples": len(select)})
