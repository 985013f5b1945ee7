from pathlib import Path

import pytest
from pydantic import Field

from immunelm.config import Config, dump_config, load_config, parse_override
from immunelm.errors import ImmuneLMError


class Inner(Config):
    lr: float = 1e-3
    steps: int = 10


class Outer(Config):
    name: str  # required: Outer() cannot be built from defaults alone
    inner: Inner = Field(default_factory=lambda: Inner(lr=5e-2, steps=7))
    tags: list[str] = Field(default_factory=lambda: ["a"])


def test_override_keeps_section_defaults_even_when_parent_has_required_fields():
    cfg = load_config(Outer, overrides=["name=x", "inner.steps=3"])
    assert cfg.inner.lr == 5e-2 and cfg.inner.steps == 3  # the section's own default, not Inner's


def test_override_values_are_typed_as_yaml():
    assert parse_override("a.b=1e-4") == (["a", "b"], 1e-4)
    assert parse_override("flag=true") == (["flag"], True)
    assert parse_override("xs=[1, 2]") == (["xs"], [1, 2])
    with pytest.raises(ImmuneLMError, match="expected key=value"):
        parse_override("novalue")


def test_yaml_then_overrides_later_wins(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("name: from-file\ninner:\n  lr: 0.5\n")
    cfg = load_config(Outer, path, ["inner.lr=0.25"])
    assert (cfg.name, cfg.inner.lr, cfg.inner.steps) == ("from-file", 0.25, 7)
    assert "lr: 0.25" in dump_config(cfg)


def test_unknown_key_suggests_nearest(tmp_path: Path):
    with pytest.raises(ImmuneLMError, match=r"unknown field 'inner.lrr'; did you mean 'inner.lr'"):
        load_config(Outer, overrides=["name=x", "inner.lrr=1"])


def test_bad_value_and_bad_file_are_one_line_errors(tmp_path: Path):
    with pytest.raises(ImmuneLMError, match="field 'inner.steps'"):
        load_config(Outer, overrides=["name=x", "inner.steps=many"])
    with pytest.raises(ImmuneLMError, match="config file not found"):
        load_config(Outer, tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ImmuneLMError, match="expected a mapping"):
        load_config(Outer, bad)
