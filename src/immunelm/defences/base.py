"""The defence plug-in boundary: a registry of (config class, immunise function) pairs.

A defence takes a model (usually the aligned one), its tokenizer and the defender's data, and
returns an immunised model. It trains through the shared engine with its own step function
or data recipe; it never copies the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from immunelm.config import Config
from immunelm.data import Example, PaddingCollator, encode_example
from immunelm.engine.sampling import BatchOrder
from immunelm.errors import ImmuneLMError
from immunelm.registry import unknown_name


@dataclass
class DefenceData:
    """What a defender has: refusal data, harmful demonstrations, benign (utility) data."""

    refusals: list[Example]  # (harmful prompt, refusal)
    harmful: list[Example] = field(default_factory=list)  # (harmful prompt, harmful answer), defender-side
    benign: list[Example] = field(default_factory=list)
    # The pre-alignment checkpoint, loaded only by defences that need it (LoX); a callable so
    # that the other defences never pay for loading a second model.
    load_base: Callable[[], Any] | None = None


@dataclass
class Immunised:
    """A defence's result: the model, and what the defence measured on the way (written to the
    run's ``immunise.json``; e.g. LoX's effective ranks, a pipeline's per-step record)."""

    model: Any
    info: dict[str, Any] = field(default_factory=dict)
    # Tensors a defence trained beside the model and keeps out of it (AntiDote's hypernetwork):
    # saved as ``artifacts/<name>.safetensors`` in the run, never inside the immunised model.
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)


def trained(result, artifacts: dict[str, dict[str, Any]] | None = None, **info) -> Immunised:
    """A defence's engine run as its result: the model plus the training history (every logged
    step's loss terms), so that ``immunise.json`` keeps what each term did during training."""
    return Immunised(result.model, {"steps": result.steps, "train_seconds": round(result.seconds, 3),
                                    "history": result.history, **info}, artifacts or {})


def alignment_rows(tokenizer, data: "DefenceData") -> list[dict[str, list[int]]]:
    """D_align: (harmful prompt, refusal) pairs plus benign pairs (the data most defences align on)."""
    return [encode_example(tokenizer, e) for e in data.refusals + data.benign]


@dataclass
class DefenceSpec:
    name: str
    config_cls: type[Config]
    run: Callable[[Any, Any, DefenceData, Config], Any]
    paper: str = ""
    needs_base: bool | Callable[[Config], bool] = False  # reads DefenceData.load_base (LoX)

    @property
    def training_free(self) -> bool:
        """No engine run (LoX): the config has no ``train`` section to seed or time."""
        return "train" not in self.config_cls.model_fields

    def requires_base(self, config: Config) -> bool:
        """Whether running with ``config`` needs the pre-alignment checkpoint (so a front end
        can ask for it before any work starts)."""
        return self.needs_base(config) if callable(self.needs_base) else self.needs_base


_DEFENCES: dict[str, DefenceSpec] = {}


def register_defence(name: str, config_cls: type[Config], paper: str = "", needs_base: bool | Callable[[Config], bool] = False):
    def wrap(fn):
        _DEFENCES[name] = DefenceSpec(name, config_cls, fn, paper, needs_base)
        return fn
    return wrap


def defence_names() -> list[str]:
    return sorted(_DEFENCES)


def build_defence(name: str) -> DefenceSpec:
    if name not in _DEFENCES:
        raise unknown_name("defence", name, _DEFENCES)
    return _DEFENCES[name]


def merged(model):
    """The model with any LoRA adapters merged into its weights (plain weights to save or to
    hand to the next defence)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def apply_defence(name: str, model, tokenizer, data: DefenceData, config: Config | None = None) -> Immunised:
    """Run a defence; a defence function may return the model or an :class:`Immunised`."""
    spec = build_defence(name)
    result = spec.run(model, tokenizer, data, config or spec.config_cls())
    return result if isinstance(result, Immunised) else Immunised(result)


def immunise(name: str, model, tokenizer, data: DefenceData, config: Config | None = None):
    """The immunised model only (see :func:`apply_defence` for the defence's own record)."""
    return apply_defence(name, model, tokenizer, data, config).model


class BatchStream:
    """A second, deterministic stream of batches (e.g. harmful pairs) beside the engine's own,
    for methods whose step needs two datasets (Booster, RepNoise, Circuit Breakers)."""

    def __init__(self, rows: list[dict], collate, batch_size: int, seed: int, what: str = "harmful") -> None:
        if not rows:
            raise ImmuneLMError(f"this defence needs {what} examples but data.{what} is empty")
        self.rows, self.collate = rows, collate
        self.order = BatchOrder(len(rows), batch_size, seed)
        self._batches = self.order.batches()

    def next(self, device) -> dict:
        batch = self.collate([self.rows[i] for i in next(self._batches)])
        return {k: v.to(device) for k, v in batch.items()}


def harmful_stream(tokenizer, data: DefenceData, batch_size: int, seed: int) -> BatchStream:
    """Batches of the defender's (harmful prompt, harmful answer) pairs, seeded apart from the
    engine's own data order."""
    rows = [encode_example(tokenizer, e) for e in data.harmful]
    return BatchStream(rows, PaddingCollator.for_tokenizer(tokenizer), batch_size, seed + 1)
