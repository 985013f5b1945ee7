"""Score a model on a set: generate, judge, aggregate; keep every sample for ``samples.jsonl``.

One :class:`Scorer` per model: it carries that model's own tokenizer (and chat template), so
models with different tokenizers are compared on the same task. Outcome labels come from the
task's judge; benign answers are compared with references by each set's scorer.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from immunelm.data import Example, PaddingCollator, encode_example
from immunelm.eval.generation import GenerationConfig, generate, response_prefix_ids
from immunelm.eval.judges import JudgeSample
from immunelm.eval.judges.outcomes import REFUSED
from immunelm.eval.schema import Outcomes
from immunelm.tasks.base import ScoredSet
from immunelm.tasks.scorers import scorer as scorer_fn


def outcome_rates(outcomes: list[str]) -> Outcomes:
    counts = Counter(outcomes)
    n = max(1, len(outcomes))
    complied = sum(v for k, v in counts.items() if k.startswith("complied"))
    return Outcomes(n=len(outcomes), refused=counts["refused"] / n, complied=complied / n, collapsed=counts["collapsed"] / n)


@dataclass
class Scorer:
    """Generation + judge for one model (its tokenizer), with a shared sink of per-sample records."""

    tokenizer: Any
    judge: Any
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    records: list[dict] = field(default_factory=list)
    harmful_scorer: str = "exact"

    def _answers(self, model, examples: Sequence[Example], prefill_ids: list[list[int]] | None = None) -> list[str]:
        return generate(model, self.tokenizer, [e.prompt_messages for e in examples], self.generation,
                        prefill_ids=prefill_ids)

    def _verdicts(self, examples: Sequence[Example], answers: list[str]):
        samples = [JudgeSample(e.prompt, a, e.response or None, dict(e.meta)) for e, a in zip(examples, answers)]
        return samples, self.judge.judge(samples)

    def harmful(self, model, examples: list[Example], context: dict,
                prefill_tokens: int = 0) -> tuple[float, float | None, Outcomes]:
        """(mean judge harmfulness, harmful accuracy if references exist, outcome split).

        ``prefill_tokens`` > 0 forces that many tokens of each reference answer first (the
        prefilling attack); the judge sees the whole answer, forced prefix included."""
        prefills = [response_prefix_ids(self.tokenizer, e, prefill_tokens) for e in examples] if prefill_tokens else None
        answers = self._answers(model, examples, prefills)
        samples, verdicts = self._verdicts(examples, answers)
        correct = scorer_fn(self.harmful_scorer)
        exact = [correct(a, e) for e, a in zip(examples, answers)] if all(e.response for e in examples) else None
        for s, v in zip(samples, verdicts):
            self.records.append({**context, "prompt": s.prompt, "response": s.response, "outcome": v.outcome, "harmful": v.harmful})
        score = sum(v.harmful for v in verdicts) / max(1, len(verdicts))
        accuracy = sum(exact) / max(1, len(exact)) if exact is not None else None
        return score, accuracy, outcome_rates([v.outcome for v in verdicts])

    def accuracy(self, model, sets: Sequence[ScoredSet], context: dict) -> tuple[float, float, dict[str, float]]:
        """(accuracy over every example, judge refusal rate, accuracy by set), each set scored by its own scorer."""
        examples = [e for s in sets for e in s.examples]
        answers = iter(self._answers(model, examples))
        by_set: dict[str, list[bool]] = defaultdict(list)
        outcomes = []
        for s in sets:
            correct = scorer_fn(s.scorer)
            set_answers = [next(answers) for _ in s.examples]
            _, verdicts = self._verdicts(s.examples, set_answers)
            for e, a, v in zip(s.examples, set_answers, verdicts):
                ok = correct(a, e)
                by_set[s.name].append(ok)
                outcomes.append(v.outcome)
                self.records.append({**context, "set": s.name, "prompt": e.prompt, "response": a, "correct": ok,
                                     "outcome": v.outcome})
        flat = [x for v in by_set.values() for x in v]
        refused = sum(o == REFUSED for o in outcomes)
        return (sum(flat) / max(1, len(flat)), refused / max(1, len(outcomes)),
                {k: sum(v) / len(v) for k, v in by_set.items()})


@torch.no_grad()
def perplexity(model, tokenizer, examples: list[Example], batch_size: int = 128) -> float:
    """exp(mean cross-entropy) over response tokens (the answer given the prompt)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate = PaddingCollator.for_tokenizer(tokenizer)
    total, count = 0.0, 0
    for lo in range(0, len(examples), batch_size):
        batch = collate([encode_example(tokenizer, e) for e in examples[lo:lo + batch_size]])
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        labels = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="sum")
        total += losses.item()
        count += int((labels != -100).sum())
    model.train(was_training)
    return math.exp(total / max(1, count))
