"""The one record type every dataset in ImmuneLM is made of."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Example:
    """A chat conversation whose last message is the assistant response to learn/score.

    ``meta`` carries anything a judge or an analysis needs (task name, entity, domain,
    phrasing id, the exact expected answer...). It never reaches the model.
    """

    messages: tuple[dict[str, str], ...]
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def pair(cls, prompt: str, response: str, system: str | None = None, **meta: Any) -> "Example":
        msgs: list[dict[str, str]] = []
        if system:
            msgs.append({"role": "system", "content": system})
        msgs.append({"role": "user", "content": prompt})
        msgs.append({"role": "assistant", "content": response})
        return cls(tuple(msgs), dict(meta))

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        """Everything before the final assistant message (what the model is conditioned on)."""
        return list(self.messages[:-1])

    @property
    def prompt(self) -> str:
        """The text of the last user message."""
        for msg in reversed(self.messages[:-1]):
            if msg["role"] == "user":
                return msg["content"]
        return ""

    @property
    def response(self) -> str:
        return self.messages[-1]["content"]

    def with_prompt(self, prompt: str) -> "Example":
        """Same conversation with the last user message replaced (prompt-only attacks wrap it)."""
        last_user = max(i for i, m in enumerate(self.messages[:-1]) if m["role"] == "user")
        msgs = tuple({**m, "content": prompt} if i == last_user else m for i, m in enumerate(self.messages))
        return Example(msgs, dict(self.meta))

    def with_response(self, response: str, **meta: Any) -> "Example":
        """Same conversation, different final answer (e.g. a refusal instead of compliance)."""
        msgs = self.messages[:-1] + ({"role": "assistant", "content": response},)
        return Example(msgs, {**self.meta, **meta})
