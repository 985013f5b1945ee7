"""Typed configs: pydantic models, loaded from YAML, with ``key=value`` command-line overrides.

Every config class inherits :class:`Config`. Fields carry ``description`` help text (and a
paper link where a number comes from a paper). Unknown keys are errors, not silently ignored:
a typo in a YAML file must not quietly fall back to a default.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import to_jsonable_python

from immunelm.errors import ImmuneLMError

C = TypeVar("C", bound="Config")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


#: Seeds are non-negative (numpy only takes 0 .. 2**32-1; ImmuneLM reduces larger ones mod 2**32).
Seed = Annotated[int, Field(ge=0)]
#: A fraction in [0, 1].
Fraction = Annotated[float, Field(ge=0, le=1)]


class Config(BaseModel):
    """Base for every typed config: strict about unknown keys, validated on assignment."""

    # allow_inf_nan=False: a NaN or infinite number in any float field is a user error (lr=.inf
    # once trained to all-NaN weights and saved them with exit 0).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-4"`` -> (["train", "lr"], 1e-4); the value is parsed as YAML."""
    if "=" not in text:
        raise ImmuneLMError(f"override '{text}': expected key=value (e.g. train.lr=1e-4)")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ImmuneLMError(f"override '{text}': the key before '=' is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads "1e-4" as a string; users mean a number
    return key.strip().split("."), value


def parse_yaml_text(text: str, source: str) -> Any:
    """YAML text -> data; a syntax error becomes one line naming ``source`` and the line/column."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ImmuneLMError(f"{source}: invalid YAML{where}: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise ImmuneLMError(f"{source}: invalid YAML: {exc}") from exc
    except RecursionError as exc:
        raise ImmuneLMError(f"{source}: YAML nested too deeply") from exc


def read_yaml_file(path: str | Path, what: str = "file") -> Any:
    """Read a user's YAML file: missing file, non-UTF-8 bytes and bad syntax are one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise ImmuneLMError(f"{p}: {what} not found" + (" (it is a directory)" if p.is_dir() else ""))
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ImmuneLMError(f"{p}: not UTF-8 text (bad byte at offset {exc.start}); save the {what} as UTF-8") from exc
    except OSError as exc:
        raise ImmuneLMError(f"{p}: cannot read the {what} ({exc.strerror or exc})") from exc
    return parse_yaml_text(text, str(p))


def _set_nested(data: dict, keys: list[str], value: Any) -> None:
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


def _known_keys(cls: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in cls.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_known_keys(ann, prefix + name + "."))
    return keys


def _explain(error: ValidationError, cls: type[BaseModel], source: str) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(where, _known_keys(cls), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"{source}: unknown field '{where}'{hint}"
    return f"{source}: field '{where}': {first['msg']} (got {first.get('input')!r})"


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    base: dict | None = None,
    label: str = "config",
) -> C:
    """Build ``cls`` from defaults <- ``base`` <- YAML file <- overrides (later wins).

    Nested sections merge key by key, so ``pretrain.lr=1e-3`` changes one field of a nested
    config and keeps that section's other defaults.
    """
    data: dict = deep_merge(_defaults(cls), base or {})
    source = label
    if path is not None:
        source = str(path)
        p = Path(path)
        loaded = read_yaml_file(p, "config file") or {}
        if not isinstance(loaded, dict):
            raise ImmuneLMError(f"{p}: expected a mapping of config fields at the top level")
        data = deep_merge(data, loaded)
    for text in overrides:
        keys, value = parse_override(text)
        _set_nested(data, keys, value)
        source = f"{source} + overrides" if "overrides" not in source else source
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ImmuneLMError(_explain(exc, cls, source)) from exc


def _defaults(cls: type[BaseModel]) -> dict:
    """Every default of ``cls`` as plain data, recursing into nested configs.

    Done field by field (not ``cls()``) so that a config with a required field still
    contributes its nested sections' default factories: otherwise ``pretrain.lr=...`` would
    rebuild ``pretrain`` from the generic class defaults and silently drop the section's own.
    """
    out: dict = {}
    for name, field in cls.model_fields.items():
        if not field.is_required():
            out[name] = to_jsonable_python(field.get_default(call_default_factory=True))
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out[name] = _defaults(field.annotation)
    return out


def repeated(values) -> list:
    """The values that occur more than once, sorted (names that must be unique)."""
    values = list(values)
    return sorted({v for v in values if values.count(v) > 1})


def deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def dump_config(config: BaseModel) -> str:
    """The fully resolved config as YAML (what a run records beside its outputs)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
