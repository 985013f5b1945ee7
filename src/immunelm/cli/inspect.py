"""``immunelm data check`` and ``immunelm model inspect``: look before you train."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from immunelm.cli.common import CONFIG_OPTION, OVERRIDES_ARG, out, resolve_config
from immunelm.data import DataSourceConfig, describe_examples, load_examples


def data_check(path: Optional[Path] = typer.Argument(None, help="Data file (or set path=... / hub=...)."),
               config: Optional[Path] = CONFIG_OPTION, overrides: Optional[list[str]] = OVERRIDES_ARG) -> None:
    """Validate a dataset file and print its shape (errors name file, row and field)."""
    extra = [f"path={path}"] if path else []
    cfg = resolve_config(DataSourceConfig, config, extra + (overrides or []))
    summary = describe_examples(load_examples(cfg))
    table = Table(title=f"data: {path or cfg.hub}")
    table.add_column("field"), table.add_column("value")
    for key, value in summary.items():
        table.add_row(key, str(value))
    out.print(table)


def model_inspect(source: str = typer.Argument(..., help="Model dir, .gguf, hub name, smollm2-135m-instruct, organism:<stage>."),
                  trust_remote_code: bool = typer.Option(False, help="Allow repository code (off by default).")) -> None:
    """Show how ImmuneLM sees a model: family, blocks, hidden size, linear layers, hook points."""
    from immunelm.sources import load_model_source
    from immunelm.models import ModelAdapter

    model, tokenizer = load_model_source(source, trust_remote_code=trust_remote_code)
    adapter = ModelAdapter(model)
    table = Table(title=f"model: {source}")
    table.add_column("property"), table.add_column("value")
    rows = {
        "family": adapter.family, "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
        "blocks": adapter.num_layers, "hidden size": adapter.hidden_size,
        "block 0 linear layers": ", ".join(adapter.linear_layers(0)),
        "hook points": f"{len(adapter.hook_points())} (e.g. {adapter.hook_points()[0]})",
        "chat template": "yes" if getattr(tokenizer, "chat_template", None) else "no",
    }
    for key, value in rows.items():
        table.add_row(key, str(value))
    out.print(table)
