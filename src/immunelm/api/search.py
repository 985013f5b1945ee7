"""``run_search``: an attacker hyper-parameter search against one model (immunelm.search).

Writes ``search.json`` (every trial, the best feasible attack, the best-so-far curve, the space,
provenance) and ``search.png`` (best-so-far harmful score vs trials) into the run directory. The
study itself lives in its storage, so a killed search resumes by running the same command: the
finished trials stay, and the workers run only the missing ones.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Optional

from pydantic import Field

from immunelm.api.evaluation import EvaluateConfig, ModelSpec, validate_evaluation
from immunelm.config import Config
from immunelm.errors import ImmuneLMError
from immunelm.eval.runner import EvaluationConfig
from immunelm.io import write_json_atomic
from immunelm.provenance import provenance
from immunelm.smol.config import SmolOrganismConfig
from immunelm.world.organism import OrganismConfig

SCHEMA = "search-1.0"


class SearchConfig(Config):
    name: str = Field("model", description="Label of the attacked model.")
    model: str = Field("organism:aligned", description="The model to attack (any source evaluate takes).")
    space: str = Field("organism", description="Search space: shipped name (organism | smol) or a YAML path.")
    trials: int = Field(50, ge=1, description="Total trials of the study (over all workers and machines).")
    workers: int = Field(1, ge=1, description="Worker processes on this machine sharing the study.")
    first_worker: int = Field(0, ge=0, description="Index of this machine's first worker (TPE seed offset; give each machine its own).")
    storage: Optional[str] = Field(None, description="Journal file path or database URL (postgresql://...); default RUN_DIR/study.journal.")
    study: Optional[str] = Field(None, description="Study name in the storage; default: derived from model, space and task.")
    threads: Optional[int] = Field(None, ge=1, description="Torch threads per worker (default: CPU cores / workers).")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description="Task, judge, generation (suite unused).")
    organism: OrganismConfig = Field(default_factory=OrganismConfig)
    smol: SmolOrganismConfig = Field(default_factory=SmolOrganismConfig)
    cache_dir: Optional[str] = None
    trust_remote_code: bool = False
    chat_template: Optional[str] = None


def evaluate_config(cfg: SearchConfig) -> EvaluateConfig:
    return EvaluateConfig(models=[ModelSpec(name=cfg.name, source=cfg.model, role="defended")], evaluation=cfg.evaluation,
                          organism=cfg.organism, smol=cfg.smol, cache_dir=cfg.cache_dir,
                          trust_remote_code=cfg.trust_remote_code, chat_template=cfg.chat_template)


def fingerprint(cfg: SearchConfig, space) -> str:
    """What makes two searches the same study: model, space, task and scoring (not workers/storage)."""
    keep = {"model": cfg.model, "space": space.model_dump(mode="json"), "evaluation": cfg.evaluation.model_dump(mode="json"),
            "organism": cfg.organism.model_dump(mode="json") if cfg.model.startswith("organism:") else None,
            "smol": cfg.smol.model_dump(mode="json") if cfg.model.startswith("smol:") else None,
            "chat_template": cfg.chat_template, "trust_remote_code": cfg.trust_remote_code}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def validate_search(cfg: SearchConfig):
    """The space, the model, the task and the storage, before any run directory or model exists."""
    from immunelm.search.space import load_space

    space = load_space(cfg.space)
    validate_evaluation(evaluate_config(cfg))
    if cfg.storage and "://" in cfg.storage and not cfg.study:
        raise ImmuneLMError(f"study: required with a database storage ({safe_url(cfg.storage)}); every machine passes the same --study name")
    if cfg.storage and "://" in cfg.storage:
        from immunelm.search.study import make_storage

        make_storage(cfg.storage)  # connects: a wrong URL or a server that is down fails here, before any run
    return space


def build_target(cfg_json: dict):
    """Load the task, the evaluator and the model, and score the unattacked model once (runs in
    each worker process)."""
    from immunelm.api.evaluation import _loader, task_for
    from immunelm.eval.runner import Evaluator, ModelEntry, resolve_settings
    from immunelm.search.study import Target

    cfg = SearchConfig.model_validate(cfg_json)
    ev_cfg = evaluate_config(cfg)
    task = task_for(ev_cfg)
    evaluator = Evaluator(ev_cfg.evaluation, task, resolve_settings(ev_cfg.evaluation, task))
    spec = ev_cfg.models[0]
    subject = evaluator.subject(ModelEntry(spec.name, spec.role, _loader(spec, ev_cfg), None, spec.source))
    start = evaluator.curve_point(subject, subject.model, 0, {"model": spec.name, "adversary": None})
    return Target(evaluator, subject, start)


def run_search(cfg: SearchConfig, run_dir: Path, space=None) -> dict:
    """Create (or join) the study, run the workers, write ``search.json`` and its plot."""
    import optuna

    from immunelm.search.study import WorkerJob, fail_abandoned_trials, make_storage, run_workers

    space = space or validate_search(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    storage_url = cfg.storage or str(run_dir / "study.journal")
    key = fingerprint(cfg, space)
    study_name = cfg.study or f"{cfg.name}-{space.name}-{key}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name, storage=make_storage(storage_url), direction="maximize",
                                load_if_exists=True)
    known = study.user_attrs.get("fingerprint")
    if known is None:
        study.set_user_attr("fingerprint", key)
        study.set_user_attr("model", cfg.model)
    elif known != key:
        raise ImmuneLMError(f"study '{study_name}' in {safe_url(storage_url)} was made for another model, space or task "
                            f"(its fingerprint {known}, this search {key}); pass another --study name")
    fail_abandoned_trials(study, storage_url)  # once, here: two workers must not both fail the same trial
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // cfg.workers)
    target = functools.partial(build_target, cfg.model_dump(mode="json"))
    jobs = [WorkerJob(storage_url, study_name, space, cfg.trials, cfg.first_worker + w, threads, target) for w in range(cfg.workers)]
    run_workers(jobs)
    record = write_search_record(cfg, space, study_name, storage_url, run_dir)
    if not record["complete"]:  # e.g. trials still RUNNING on another machine: say so, never a silent short study
        raise ImmuneLMError(f"search: {record['n_complete']} of {cfg.trials} trials finished (others are running or "
                            f"failed); {run_dir / 'search.json'} has complete=false; run the same command again to finish")
    return record


def safe_url(storage: str) -> str:
    """A storage to write into results: a database URL without its password."""
    if "://" not in storage:
        return storage
    from immunelm.provenance import redact_secrets

    return redact_secrets(storage)


def write_search_record(cfg: SearchConfig, space, study_name: str, storage_url: str, run_dir: Path) -> dict:
    import optuna

    from immunelm.search.study import best_trial, make_storage, trial_rows

    study = optuna.load_study(study_name=study_name, storage=make_storage(storage_url))
    rows = trial_rows(study, cfg.trials)
    feasible = [r for r in rows if r["feasible"]]
    best = best_trial(rows)
    record = {
        "schema": SCHEMA, "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": cfg.name, "source": cfg.model, "study": study_name,
        "storage": safe_url(storage_url),
        "trials": rows, "n_complete": len(rows), "n_feasible": len(feasible), "complete": len(rows) >= cfg.trials,
        "best": best, "best_harmful_within_bound": best["harmful"] if best else None,
        "no_trial_within_bound": not feasible,
        "best_so_far": [r["best_so_far"] for r in rows],
        "space": space.model_dump(mode="json"), "config": {**cfg.model_dump(mode="json"), "storage": safe_url(storage_url)}, "provenance": provenance(space.seed),
    }
    write_json_atomic(run_dir / "search.json", record)
    from immunelm.search.plots import plot_search_curves

    plot_search_curves({cfg.name: record}, run_dir / "search.png")
    return record


__all__ = ["SearchConfig", "run_search", "validate_search", "write_search_record"]
