"""``immunelm attacks`` and ``immunelm defences``: what is registered, its paper and its settings."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from immunelm.cli.common import out
from immunelm.config import Config
from immunelm.registry import unknown_name


def _fields(config_cls: type[Config]) -> str:
    return ", ".join(config_cls.model_fields)


def _settings_table(title: str, config_cls: type[Config]) -> Table:
    table = Table(title=title)
    for col in ("setting", "default", "help"):
        table.add_column(col)
    for name, field in config_cls.model_fields.items():
        default = field.get_default(call_default_factory=True) if not field.is_required() else "(required)"
        shown = default.model_dump(mode="json") if isinstance(default, Config) else default
        table.add_row(name, f"{shown!r:.60}", field.description or "")
    return table


def attacks(name: Optional[str] = typer.Argument(None, help="Show one attack's settings.")) -> None:
    """List the registered attacks (family, paper, settings), or one attack's settings."""
    from immunelm.attacks import FAMILIES, attack_names, build_attack

    if name:
        spec = build_attack(name)
        out.print(_settings_table(f"attack {name} ({spec.family}; {spec.paper or 'no paper'})", spec.config_cls))
        return
    table = Table(title="attacks (use one as `kind:` in a suite)")
    for col in ("name", "family", "budget", "paper", "settings"):
        table.add_column(col)
    specs = [build_attack(n) for n in attack_names()]
    for spec in sorted(specs, key=lambda s: (FAMILIES.index(s.family), s.name)):
        table.add_row(spec.name, spec.family, spec.budget_unit, spec.paper, _fields(spec.config_cls))
    out.print(table)


def defences(name: Optional[str] = typer.Argument(None, help="Show one defence's settings.")) -> None:
    """List the registered defences (paper, settings), or one defence's settings."""
    from immunelm.defences import build_defence, defence_names

    if name:
        if name not in defence_names():
            raise unknown_name("defence", name, defence_names())
        spec = build_defence(name)
        out.print(_settings_table(f"defence {name} ({spec.paper or 'no paper'})", spec.config_cls))
        return
    table = Table(title="defences (immunelm immunise NAME)")
    for col in ("name", "paper", "needs base", "settings"):
        table.add_column(col)
    for n in defence_names():
        spec = build_defence(n)
        table.add_row(n, spec.paper, "maybe" if callable(spec.needs_base) else ("yes" if spec.needs_base else "no"),
                      _fields(spec.config_cls))
    out.print(table)
