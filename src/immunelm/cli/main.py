"""The ``immunelm`` command. Each verb is a thin layer over library functions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from immunelm.cli import finetune as finetune_cmd
from immunelm.cli import inspect as inspect_cmd
from immunelm.cli import world as world_cmd
from immunelm.cli.common import CONFIG_OPTION, OVERRIDES_ARG, RUN_DIR_OPTION, console, resolve_config, start_run
from immunelm.errors import ImmuneLMError

app = typer.Typer(
    help="ImmuneLM: immunise language models against harmful fine-tuning, attack them, report.",
    no_args_is_help=True, pretty_exceptions_enable=False,
)
app.add_typer(world_cmd.app, name="world")
data_app = typer.Typer(help="Inspect and validate datasets.", no_args_is_help=True)
data_app.command("check")(inspect_cmd.data_check)
app.add_typer(data_app, name="data")
model_app = typer.Typer(help="Inspect models.", no_args_is_help=True)
model_app.command("inspect")(inspect_cmd.model_inspect)
app.add_typer(model_app, name="model")
app.command("finetune")(finetune_cmd.finetune)


@app.command()
def demo(config: Optional[Path] = CONFIG_OPTION, overrides: Optional[list[str]] = OVERRIDES_ARG,
         run_dir: Optional[Path] = RUN_DIR_OPTION) -> None:
    """The main job on the embedded default: build (or reuse) the organism and check it."""
    cfg = resolve_config(world_cmd.WorldRunConfig, config, overrides)
    path = start_run("demo", run_dir, cfg, cfg.organism.seed)
    report = world_cmd.check_organism(cfg, path)
    console.print(f"results: {path / 'world_check.json'}")
    raise typer.Exit(0 if report["passed"] else 1)


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except ImmuneLMError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
