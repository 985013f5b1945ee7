"""Checks on a suite file that pydantic cannot phrase well: each failure is one line naming the
suite file and the adversary (by index and name), raised when the suite is loaded, so a bad
suite never costs minutes of attacks on the first model before it fails.

* Shape: the file is a mapping, ``adversaries`` a list of mappings, ``defaults`` and every
  ``train`` section mappings (a string there used to end in a Python traceback).
* Kinds: every adversary's ``kind`` (and every ``search.kinds`` entry) is a registered attack kind.
* ``eval_at``: steps are integers in [0, T], T the largest attack budget of the suite.
* Distinctness: no two adversaries are the same attack once defaults are merged and settings
  that cannot change the trained weights are set aside (e.g. Adam and AdamW with weight
  decay 0 are one optimiser): a suite listing the same attack twice over-weights it in the
  mean and wastes its run time, and the user cannot have meant it.
"""

from __future__ import annotations

from typing import Any

from immunelm.attacks.base import Adversary, attack_names
from immunelm.errors import ImmuneLMError
from immunelm.registry import unknown_name

DEFAULT_KIND = "harmful_sft"  # a suite entry without ``kind``


def _type_name(value: Any) -> str:
    return {dict: "mapping", list: "list", str: "string", type(None): "null"}.get(type(value), type(value).__name__)


def label(index: int, entry: Any) -> str:
    name = entry.get("name") if isinstance(entry, dict) else None
    return f"adversaries[{index}]" + (f" '{name}'" if isinstance(name, str) else "")


def check_shape(raw: Any, source: str) -> None:
    """The file's top level, ``defaults`` and each adversary entry have the right types."""
    if not isinstance(raw, dict):
        raise ImmuneLMError(f"{source}: expected a mapping with 'name' and an 'adversaries' list, got {_type_name(raw)}")
    if not isinstance(raw.get("adversaries"), list):
        got = "nothing" if "adversaries" not in raw else _type_name(raw["adversaries"])
        raise ImmuneLMError(f"{source}: 'adversaries' must be a list of mappings (name, kind, train, ...), got {got}")
    if not raw["adversaries"]:
        raise ImmuneLMError(f"{source}: 'adversaries' is empty; a suite needs at least one adversary")
    defaults = raw.get("defaults")
    if defaults is not None and not isinstance(defaults, dict):
        raise ImmuneLMError(f"{source}: 'defaults' must be a mapping merged into every adversary, got {_type_name(defaults)}")
    if defaults is not None and "train" in defaults and not isinstance(defaults["train"], dict):
        raise ImmuneLMError(f"{source}: 'defaults.train' must be a mapping of engine settings, got {_type_name(defaults['train'])}")
    for i, entry in enumerate(raw["adversaries"]):
        _check_entry(i, entry, source)


def _check_entry(index: int, entry: Any, source: str) -> None:
    where = f"{source}: {label(index, entry)}"
    if not isinstance(entry, dict):
        raise ImmuneLMError(f"{where}: expected a mapping (name, kind, examples, train, ...), got {_type_name(entry)} {entry!r:.40}")
    if "train" in entry and not isinstance(entry["train"], dict):
        raise ImmuneLMError(f"{where}: 'train' must be a mapping of engine settings, got {_type_name(entry['train'])}")
    name = entry.get("name")
    if name is None:
        raise ImmuneLMError(f"{where}: missing 'name' (every adversary needs a name, unique in its suite)")
    if not isinstance(name, str) or not name.strip():
        raise ImmuneLMError(f"{where}: 'name' must be a non-empty string, got {name!r}")


def check_kinds(adversaries: list[dict], search: Any, source: str) -> None:
    """Every kind is registered; checked before pydantic so the line names the adversary."""
    known = attack_names()
    for i, entry in enumerate(adversaries):
        kind = entry.get("kind", DEFAULT_KIND)
        if kind not in known:
            raise ImmuneLMError(f"{source}: {label(i, entry)}: {unknown_name('attack kind', str(kind), known)}")
    kinds = search.get("kinds", []) if isinstance(search, dict) else []
    for kind in kinds if isinstance(kinds, list) else []:
        if kind not in known:
            raise ImmuneLMError(f"{source}: search.kinds: {unknown_name('attack kind', str(kind), known)}")


def check_unique_names(adversaries: list[dict], source: str) -> None:
    seen: dict[str, int] = {}
    for i, entry in enumerate(adversaries):
        name = entry.get("name")
        if name in seen:
            raise ImmuneLMError(f"{source}: adversaries[{seen[name]}] and adversaries[{i}] are both named '{name}'; "
                                "adversary names must be unique")
        seen[name] = i


def check_eval_at(eval_at: list[int], budgets: list[int], source: str) -> None:
    """Steps outside [0, T] would be silently dropped, leaving a curve the user did not ask for."""
    top = max(budgets)
    for step in eval_at:
        if step < 0 or step > top:
            raise ImmuneLMError(f"{source}: eval_at step {step} is outside [0, {top}] "
                                f"(0 = before the attack, {top} = the largest attack budget)")


def effective_attack(adv: Adversary) -> dict:
    """What determines the attacked model: the kind and the attack's resolved config, minus
    settings that cannot change the result (the attack's ``effective()`` when it has one)."""
    config = adv.config
    settings = config.effective(adv.kind) if hasattr(config, "effective") else config.model_dump(mode="json")
    return {"kind": adv.kind, **settings}


def check_distinct(adversaries: list[Adversary], source: str) -> None:
    """Refuse the first pair of adversaries that would train the same attack."""
    seen: dict[str, str] = {}
    for adv in adversaries:
        key = repr(sorted(_flatten(effective_attack(adv))))
        if key in seen:
            raise ImmuneLMError(
                f"{source}: adversaries '{seen[key]}' and '{adv.name}' are the same attack (same kind, data and "
                "training settings after defaults; Adam and AdamW with weight_decay 0 are one optimiser); "
                "change or remove one")
        seen[key] = adv.name


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((prefix + key, value if not isinstance(value, list) else tuple(value)))
    return out
