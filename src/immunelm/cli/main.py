"""The ``immunelm`` command. Each verb is a thin layer over library functions."""

from __future__ import annotations

import sys
import warnings
import time
from pathlib import Path
from typing import Optional

import typer

from immunelm.cli import diagnose as diagnose_cmd
from immunelm.cli import evaluate as evaluate_cmd
from immunelm.cli import finetune as finetune_cmd
from immunelm.cli import immunise as immunise_cmd
from immunelm.cli import inspect as inspect_cmd
from immunelm.cli import leaderboard as leaderboard_cmd
from immunelm.cli import listing as listing_cmd
from immunelm.cli import report as report_cmd
from immunelm.cli import search as search_cmd
from immunelm.cli import smol as smol_cmd
from immunelm.cli import world as world_cmd
from immunelm.api import EvaluateConfig, ImmuniseConfig, ModelSpec, run_evaluation, run_immunise, validate_evaluation, validate_immunise
from immunelm.cli import common
from immunelm.cli.common import (
    CONFIG_OPTION, OVERRIDES_ARG, OVERWRITE_OPTION, RUN_DIR_OPTION, check_run_dir, console, resolve_config, start_run,
)
from immunelm.defences import build_defence
from immunelm.errors import ImmuneLMError

app = typer.Typer(
    help="ImmuneLM: immunise language models against harmful fine-tuning, attack them, report.",
    no_args_is_help=True, pretty_exceptions_enable=False,
)
app.add_typer(world_cmd.app, name="world")
app.add_typer(smol_cmd.app, name="smol")
data_app = typer.Typer(help="Inspect and validate datasets.", no_args_is_help=True)
data_app.command("check")(inspect_cmd.data_check)
app.add_typer(data_app, name="data")
model_app = typer.Typer(help="Inspect models.", no_args_is_help=True)
model_app.command("inspect")(inspect_cmd.model_inspect)
app.add_typer(model_app, name="model")
app.command("finetune")(finetune_cmd.finetune)
app.command("immunise")(immunise_cmd.immunise)
app.command("evaluate")(evaluate_cmd.evaluate)
app.command("diagnose")(diagnose_cmd.diagnose)
app.command("report")(report_cmd.report)
app.command("search")(search_cmd.search)
app.command("leaderboard")(leaderboard_cmd.leaderboard)
app.command("attacks")(listing_cmd.attacks)
app.command("defences")(listing_cmd.defences)


class DemoConfig(EvaluateConfig):
    defence: str = "deep-align"
    defence_config: dict = {}


@app.command()
def demo(config: Optional[Path] = CONFIG_OPTION, overrides: Optional[list[str]] = OVERRIDES_ARG,
         run_dir: Optional[Path] = RUN_DIR_OPTION, overwrite: bool = OVERWRITE_OPTION) -> None:
    """The main job on the embedded default: organism -> immunise -> attack both (quick suite) -> report."""
    cfg = resolve_config(DemoConfig, config, overrides)
    build_defence(cfg.defence)
    check_run_dir(run_dir, overwrite=overwrite)
    validate_evaluation(cfg)
    immunise_cfg = ImmuniseConfig(defence=cfg.defence_config, organism=cfg.organism, cache_dir=cfg.cache_dir)
    defence_cfg = validate_immunise(cfg.defence, immunise_cfg, section="defence_config")  # errors before any work
    path = start_run("demo", run_dir, cfg, cfg.organism.seed, overwrite=overwrite)
    started = time.perf_counter()
    world_cmd.build_organism(world_cmd.WorldRunConfig(organism=cfg.organism, cache_dir=cfg.cache_dir))
    checkpoint = run_immunise(cfg.defence, immunise_cfg, path / "immunised", defence_cfg)
    cfg.models = [
        ModelSpec(name="aligned", source="organism:aligned", role="reference"),
        ModelSpec(name=cfg.defence, source=str(checkpoint), role="defended", defence=cfg.defence),
    ]
    evaluate_cmd.print_summary(run_evaluation(cfg, path))
    console.print(f"demo finished in {time.perf_counter() - started:.0f}s; results in {path}")


def _caused_by_interrupt(exc: BaseException) -> bool:
    """typer turns Ctrl-C into a silent ``Exit(130)``; the KeyboardInterrupt is in its chain."""
    seen = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _interrupted() -> None:
    console.print(common.interrupted_message(), markup=False, highlight=False, soft_wrap=True)
    sys.exit(130)


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2; Ctrl-C one
    line saying what was kept, exit 130."""
    # Library deprecation chatter (transformers v6 renames) is not for end users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    common.CURRENT_RUN = None
    try:
        app()
    except ImmuneLMError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()
    except SystemExit as exc:
        if exc.code == 130 and _caused_by_interrupt(exc):
            _interrupted()
        raise


if __name__ == "__main__":
    main()
