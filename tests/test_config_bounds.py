"""Every numeric config field has real bounds, and no float field accepts NaN or infinity.

Walks every :class:`immunelm.config.Config` subclass in the package, so a new config field
without bounds fails here rather than training on ``lr=.inf`` with exit 0.
"""

from __future__ import annotations

import importlib
import pkgutil
import typing

import annotated_types as at
import pytest
from pydantic import BaseModel, ValidationError

import immunelm
from immunelm.config import Config, load_config
from immunelm.engine import TrainConfig
from immunelm.errors import ImmuneLMError

# Numbers whose every value is meaningful, with the reason.
UNBOUNDED_OK = {
    "ClassifierJudgeConfig.label": "a class id or label name of the user's classifier",
    # a search range is the user's choice of any real (or integer) interval; the Param validator checks
    # low < high (and low > 0 for log_uniform), and Config rejects nan/inf
    "Param.uniform": "a search range over real values",
    "Param.log_uniform": "a search range over positive real values (checked by Param)",
    "Param.int_range": "a search range over integers",
}
BOUNDS = (at.Gt, at.Ge, at.Lt, at.Le, at.Interval)


def _config_classes() -> list[type[Config]]:
    for info in pkgutil.walk_packages(immunelm.__path__, "immunelm."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    seen, stack = [], list(Config.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls not in seen:
            seen.append(cls)
            stack.extend(cls.__subclasses__())
    return [cls for cls in seen if cls.__module__.startswith("immunelm.")]  # not tests' own configs


def _unbounded_numbers(annotation, metadata=()) -> bool:
    """True when ``annotation`` contains an int/float that carries no bound."""
    if annotation in (int, float):
        return not any(isinstance(m, BOUNDS) for m in metadata)
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        inner_meta = [m for e in extra for m in (getattr(e, "metadata", None) or [e])]
        return _unbounded_numbers(base, [*metadata, *inner_meta])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return False  # nested configs are checked on their own
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType")):
        return any(_unbounded_numbers(a, metadata) for a in args if a is not type(None))
    return any(_unbounded_numbers(a) for a in args if a is not Ellipsis)


def test_every_numeric_config_field_is_bounded():
    missing = []
    for cls in _config_classes():
        for name, field in cls.model_fields.items():
            key = f"{cls.__name__}.{name}"
            if key in UNBOUNDED_OK or field.annotation is bool:
                continue
            if _unbounded_numbers(field.annotation, field.metadata):
                missing.append(f"{cls.__module__}.{key}: {field.annotation}")
    assert not missing, "numeric fields without bounds:\n" + "\n".join(missing)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_no_float_field_accepts_non_finite_values(value):
    with pytest.raises(ValidationError, match="finite"):
        TrainConfig(max_steps=1, lr=value)
    with pytest.raises(ValidationError, match="finite"):
        TrainConfig(max_steps=1, betas=(value, 0.9))


@pytest.mark.parametrize("override,field", [
    ("lr=.inf", "lr"), ("max_grad_norm=0", "max_grad_norm"), ("betas=[0.9, 1.0]", "betas"),
    ("warmup_steps=11", "warmup_steps"), ("eval_at=[-1]", "eval_at"), ("seed=-1", "seed"),
])
def test_train_config_bounds_are_one_line_errors(override, field):
    with pytest.raises(ImmuneLMError, match=field) as info:
        load_config(TrainConfig, overrides=["max_steps=10", override])
    assert "\n" not in str(info.value)


def test_warmup_equal_to_budget_is_allowed():
    assert TrainConfig(max_steps=10, warmup_steps=10).warmup_steps == 10
