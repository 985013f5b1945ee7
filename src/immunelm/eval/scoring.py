"""Score a model on a set: generate, judge, aggregate; keep every sample for ``samples.jsonl``."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from immunelm.data import Example, PaddingCollator, encode_example
from immunelm.eval.generation import GenerationConfig, generate
from immunelm.eval.judges import JudgeSample
from immunelm.eval.schema import Outcomes
from immunelm.world.judge import is_refusal, normalise


def outcome_rates(outcomes: list[str]) -> Outcomes:
    counts = Counter(outcomes)
    n = max(1, len(outcomes))
    complied = sum(v for k, v in counts.items() if k.startswith("complied"))
    return Outcomes(n=len(outcomes), refused=counts["refused"] / n, complied=complied / n, collapsed=counts["collapsed"] / n)


@dataclass
class Scorer:
    """Generation + judge with a shared sink of per-sample records."""

    tokenizer: Any
    judge: Any
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    records: list[dict] = field(default_factory=list)

    def _answers(self, model, examples: list[Example], prefills: list[str] | None = None) -> list[str]:
        answers = generate(model, self.tokenizer, [e.prompt_messages for e in examples], self.generation, prefills)
        if prefills is None:
            return answers
        return [" ".join(filter(None, (p, a.strip()))) for p, a in zip(prefills, answers)]

    def prefix(self, text: str, tokens: int) -> str:
        """The first ``tokens`` tokens of ``text``, as text."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def harmful(self, model, examples: list[Example], context: dict,
                prefill_tokens: int = 0) -> tuple[float, float | None, Outcomes]:
        """(mean judge harmfulness, exact harmful accuracy if references exist, outcome split).

        ``prefill_tokens`` > 0 forces that many tokens of each reference answer first (the
        prefilling attack); the judge sees the whole answer, forced prefix included."""
        prefills = [self.prefix(e.response, prefill_tokens) for e in examples] if prefill_tokens else None
        answers = self._answers(model, examples, prefills)
        samples = [JudgeSample(e.prompt, a, e.response or None, dict(e.meta)) for e, a in zip(examples, answers)]
        verdicts = self.judge.judge(samples)
        exact = [normalise(a) == normalise(e.response) for e, a in zip(examples, answers)] if all(e.response for e in examples) else None
        for s, v in zip(samples, verdicts):
            self.records.append({**context, "prompt": s.prompt, "response": s.response, "outcome": v.outcome, "harmful": v.harmful})
        score = sum(v.harmful for v in verdicts) / max(1, len(verdicts))
        accuracy = sum(exact) / max(1, len(exact)) if exact is not None else None
        return score, accuracy, outcome_rates([v.outcome for v in verdicts])

    def accuracy(self, model, examples: list[Example], context: dict) -> tuple[float, float, dict[str, float]]:
        """(exact-match accuracy, refusal rate, accuracy by task) on prompts with reference answers."""
        answers = self._answers(model, examples)
        by_task: dict[str, list[bool]] = defaultdict(list)
        refused = 0
        for e, a in zip(examples, answers):
            ok = normalise(a) == normalise(e.response)
            by_task[e.meta.get("task", "all")].append(ok)
            refused += is_refusal(a)
            self.records.append({**context, "prompt": e.prompt, "response": a, "correct": ok})
        flat = [x for v in by_task.values() for x in v]
        return sum(flat) / max(1, len(flat)), refused / max(1, len(examples)), {k: sum(v) / len(v) for k, v in by_task.items()}


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
