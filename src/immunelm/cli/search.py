"""``immunelm search``: an attacker hyper-parameter search against one model; the work is
:mod:`immunelm.api.search`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from immunelm.api.search import SearchConfig, fingerprint, run_search, safe_url, validate_search
from immunelm.config import load_config, read_yaml_file
from immunelm.errors import ImmuneLMError
from immunelm.cli.common import CONFIG_OPTION, OVERRIDES_ARG, OVERWRITE_OPTION, RUN_DIR_OPTION, console, out, start_run


def search(
    model: Optional[str] = typer.Argument(None, help="Model to attack (any source; default organism:aligned)."),
    name: Optional[str] = typer.Option(None, "--name", help="Its label (default: 'model')."),
    space: Optional[str] = typer.Option(None, "--space", help="Search space: organism | smol | a YAML path."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Total trials of the study (all workers, all machines)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes on this machine."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Journal file or database URL shared by every worker (default RUN_DIR/study.journal)."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name (required with a database; the same on every machine)."),
    first_worker: Optional[int] = typer.Option(None, "--first-worker", help="This machine's first worker index (its TPE seed offset)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the search in RUN_DIR: finished trials are kept, missing ones run."),
    config: Optional[Path] = CONFIG_OPTION,
    overrides: Optional[list[str]] = OVERRIDES_ARG,
    run_dir: Optional[Path] = RUN_DIR_OPTION,
    overwrite: bool = OVERWRITE_OPTION,
) -> None:
    """Optuna (TPE) search over the attacker's hyper-parameters: the most harmful attack whose
    utility drop stays within epsilon (TamperBench's bounded worst case)."""
    if model and re.match(r"^[A-Za-z_][\w.]*=", model) and not Path(model).exists():
        overrides, model = [model, *(overrides or [])], None  # `search --resume threads=1`: an override, not a model
    recorded = recorded_search(run_dir, storage) if resume else None
    cfg = load_config(SearchConfig, config, overrides or [], base=recorded)
    flags = {"model": model, "name": name, "space": space, "trials": trials, "workers": workers, "storage": storage,
             "study": study, "first_worker": first_worker}
    cfg = load_config(SearchConfig, base={**cfg.model_dump(), **{k: v for k, v in flags.items() if v is not None}},
                      label="search options")
    space_cfg = validate_search(cfg)
    if recorded is not None:
        check_same_search(run_dir, SearchConfig.model_validate(recorded), cfg, space_cfg)
    on_disk = cfg.model_copy(update={"storage": safe_url(cfg.storage) if cfg.storage else None})  # no password on disk
    path = start_run("search", run_dir, on_disk, space_cfg.seed, resume=resume, overwrite=overwrite, resumable=True)
    record = run_search(cfg, path, space_cfg)
    best = record["best"]
    out.print(f"{record['n_complete']} trials ({record['n_feasible']} within the utility bound, epsilon {space_cfg.epsilon}); "
              + (f"best harmful {best['harmful']:.3f} by trial {best['number']} ({best['kind']}, utility {best['utility']:.3f}, "
                 f"{best['outcome']})" if best else "no trial stayed within the utility bound"), highlight=False)
    console.print(f"results: {path / 'search.json'}")


def recorded_search(run_dir: Optional[Path], storage: Optional[str]) -> Optional[dict]:
    """``--resume`` continues the search recorded in RUN_DIR: its config.yaml is the base that the
    command line's options change (e.g. more --workers or --trials), so a bare
    ``immunelm search --resume --run-dir D`` never starts a different study in D."""
    path = run_dir / "config.yaml" if run_dir is not None else None
    if path is None or not path.is_file():
        return None
    recorded = read_yaml_file(path, "recorded search config")
    if not isinstance(recorded, dict):
        raise ImmuneLMError(f"{path}: expected the mapping of a search's config fields")
    if recorded.get("storage") and "***" in str(recorded["storage"]) and storage is None:
        raise ImmuneLMError(f"{path}: the search's database URL was recorded without its password; "
                            "pass --storage again to resume it")
    return recorded


def check_same_search(run_dir: Path, before: SearchConfig, now: SearchConfig, space) -> None:
    """Refuse a resume that would attack another model, space or task than the recorded search, or
    that would open another study (a new --name, --study or --storage names another study, which
    would start from trial 0 and replace the recorded search.json)."""
    from immunelm.search.space import load_space

    if fingerprint(before, load_space(before.space)) != fingerprint(now, space):
        raise ImmuneLMError(f"{run_dir}: --resume continues the search recorded there ({before.name} on {before.model}, "
                            f"space {before.space}); this command changes its model, space or task: "
                            "drop those options or use another --run-dir")
    where = {"name": (before.name, now.name), "study": (before.study, now.study),
             "storage": (before.storage, safe_url(now.storage) if now.storage else None)}
    changed = [k for k, (was, new) in where.items() if was != new]
    if changed:
        was, new = where[changed[0]]
        raise ImmuneLMError(f"{run_dir}: --resume continues the study recorded there; --{changed[0]} '{new}' differs from "
                            f"the recorded '{was}' (another study): drop it or use another --run-dir")
