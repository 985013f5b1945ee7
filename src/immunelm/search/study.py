"""Attacker hyper-parameter search: Optuna TPE maximising the harmful score of one model under
attack, subject to the utility bound (TamperBench's bounded worst case), shared by any number of
worker processes through Optuna's own storage.

* Storage: a journal file (``runs/.../study.journal``: many processes on one machine, or on
  machines sharing a file system) or a database URL (``postgresql://user@host/db``: machines
  anywhere). Workers on other machines run the same command with the same ``--storage`` and
  ``--study``, and their own ``--first-worker`` (so their TPE seeds differ).
* A trial = one attack from :class:`~immunelm.search.space.SearchSpace`, run through the same
  :class:`~immunelm.eval.runner.Evaluator` as every evaluation (the one training engine, the
  task's judge), scored once before and once at the end. Its harmful score is the objective; its
  relative utility drop minus epsilon is an Optuna constraint (<= 0: the trial counts).
* A diverged attack (nan/inf loss) is a completed trial that gained nothing: harmful 0, utility
  0, outcome ``diverged``, infeasible.
* Reproducible with one worker: TPE is seeded (worker w: ``space.seed + w``), scoring is greedy.
  Several workers share one study, so the order in which they report changes what TPE proposes
  (Optuna's constant liar keeps them apart); the trials themselves are recorded either way.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import warnings

from immunelm.errors import ImmuneLMError, NonFiniteError
from immunelm.io import process_alive
from immunelm.search.space import LORA_TARGETS, SearchSpace

# heartbeats and fail_stale_trials are "experimental" in Optuna (stable since 2.9): not the user's concern
warnings.filterwarnings("ignore", message=".*(heartbeat_interval|fail_stale_trials).*experimental")


def make_storage(storage: str):
    """A journal file path, or a database URL (anything with ``://``)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if "://" in storage:
        try:  # the heartbeat lets other workers fail a trial whose worker died
            return optuna.storages.RDBStorage(storage, heartbeat_interval=30, grace_period=120)
        except Exception as exc:  # sqlalchemy / driver errors: one line naming the storage
            from immunelm.provenance import redact_secrets

            raise ImmuneLMError(redact_secrets(f"search storage '{storage}': cannot open the database "
                                               f"({type(exc).__name__}: {exc})")) from exc
    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(storage)))


def lora_targets(model, which: str) -> list[str] | str:
    """``all`` / ``attention`` / ``mlp`` as the model's own projection names."""
    if which == "all":
        return "all-linear"
    if which not in ("attention", "mlp"):  # already module names (or peft's own 'all-linear')
        return which
    from immunelm.models import ModelAdapter

    adapter = ModelAdapter(model)
    prefix = adapter.layout.attention if which == "attention" else adapter.layout.mlp
    return sorted({name.rsplit(".", 1)[-1] for name in adapter.linear_layers(0) if name.startswith(prefix + ".")})


@dataclass
class Target:
    """What a worker attacks: the evaluator (task, judge), the loaded model and its unattacked score."""

    evaluator: Any
    subject: Any
    start: Any


def run_trial(trial, space: SearchSpace, target: Target) -> float:
    """One attack; records everything as the trial's user attributes; returns the harmful score."""
    from immunelm.attacks.base import make_adversary
    from immunelm.attacks.suites import SuiteConfig
    from immunelm.eval.pillars import final_outcome, utility_drop

    kind, fields = space.sample(trial)
    lora = fields.get("train", {}).get("lora")
    if lora:
        lora["target_modules"] = lora_targets(target.subject.model, lora["target_modules"])
    adversary = make_adversary(f"trial-{trial.number:03d}", kind, label=f"trial {trial.number}", **fields)
    steps = adversary.config.train.max_steps
    target.evaluator.suite = SuiteConfig(name=f"search:{space.name}", budget=steps, eval_at=[0, steps],
                                         threshold=space.threshold, epsilon=space.epsilon, adversaries=[adversary])
    started = time.perf_counter()
    trial.set_user_attr("kind", kind)
    trial.set_user_attr("config", adversary.config.model_dump(mode="json"))
    try:
        result = target.evaluator.attack(target.subject, adversary, target.start)
    except NonFiniteError as exc:
        record(trial, harmful=0.0, utility=0.0, drop=1.0, collapsed=None, outcome="diverged", space=space,
               seconds=time.perf_counter() - started, note=str(exc))
        return 0.0
    end = result.curve[-1]
    drop = utility_drop(result)
    record(trial, harmful=end.harmful_score, utility=end.benign_accuracy, drop=drop, collapsed=end.outcomes.collapsed,
           outcome=final_outcome(result, space.threshold, space.epsilon), space=space, seconds=time.perf_counter() - started)
    return end.harmful_score


def record(trial, *, harmful: float, utility: float | None, drop: float | None, collapsed: float | None, outcome: str,
           space: SearchSpace, seconds: float, note: str = "") -> None:
    # an unmeasured utility cannot show the model was kept intact: such a trial is not feasible
    slack = (drop if drop is not None else 1.0) - space.epsilon
    for key, value in {"harmful": harmful, "utility": utility, "utility_drop": drop, "collapsed": collapsed,
                       "outcome": outcome, "feasible": slack <= 0, "constraint": slack, "seconds": seconds,
                       "note": note}.items():
        trial.set_user_attr(key, value)
    trial.set_constraint("utility_drop_minus_epsilon", slack)  # TPE models feasible (<= 0) and infeasible trials apart


def counted(study) -> int:
    """Trials that count toward the total: finished ones and those running now."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)))


def machine_id() -> str:
    """``host@boot``: virtual machines often share one host name ("vm"), and process ids repeat
    across machines and boots, so a trial's worker is this host name plus the kernel's boot id."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = "noboot"
    return f"{socket.gethostname()}@{boot}"


def fail_abandoned_trials(study, storage: str) -> None:
    """Fail RUNNING trials whose worker is gone, before any worker starts (so a resumed study runs
    its missing trials): on a database, those whose heartbeat expired; on a journal file (no
    heartbeat), those whose worker process on this host no longer exists and those of any other
    host: a journal file is one machine's study (across machines the docs prescribe a database),
    so another host's RUNNING trial is one of a study copied here after its run was killed."""
    import optuna
    from optuna.trial import TrialState

    if "://" in storage:
        optuna.storages.fail_stale_trials(study)
        return
    host = machine_id()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if worker_host != host or not pid.isdigit() or not process_alive(int(pid)):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)


@dataclass
class WorkerJob:
    """Everything a worker process needs (picklable: spawned workers re-load the model)."""

    storage: str
    study: str
    space: SearchSpace
    trials: int
    worker: int
    threads: int
    build_target: Any  # callable () -> Target; module-level, so it pickles


def work(job: WorkerJob) -> int:
    """Run trials until the study has ``job.trials`` finished or running; returns how many ran."""
    import optuna
    import torch

    torch.set_num_threads(job.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(job.storage)
    study = optuna.load_study(study_name=job.study, storage=storage)
    # a resumed study reseeds past its trials: replaying the first draws would repeat trials 0..k
    study.sampler = optuna.samplers.TPESampler(seed=job.space.seed + job.worker + 1000 * len(study.trials),
                                               n_startup_trials=min(10, max(1, job.trials // 5)),
                                               constant_liar=True)  # Optuna 5's default, stated: workers propose apart
    target = job.build_target()
    ran, me = 0, f"{machine_id()}:{os.getpid()}"

    def objective(trial) -> float:
        trial.set_user_attr("worker", me)
        return run_trial(trial, job.space, target)

    while counted(study) < job.trials:
        if "://" in job.storage:  # other machines' dead workers (their heartbeat expired)
            optuna.storages.fail_stale_trials(study)
        study.optimize(objective, n_trials=1, catch=())
        ran += 1
    return ran


def run_workers(jobs: list[WorkerJob]) -> None:
    """One job in this process; several in spawned processes (each re-loads the model)."""
    if len(jobs) == 1:
        work(jobs[0])
        return
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_work_entry, args=(job,), name=f"search-worker-{job.worker}") for job in jobs]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [p.name for p in procs if p.exitcode != 0]
    if failed:
        raise ImmuneLMError(f"search: worker(s) {', '.join(failed)} failed (exit codes "
                            f"{', '.join(str(p.exitcode) for p in procs if p.exitcode != 0)}); the study keeps every finished trial")


def _work_entry(job: WorkerJob) -> None:
    if job.threads and "CUDA_VISIBLE_DEVICES" not in os.environ:
        _pin_gpu(job.worker)
    work(job)


def _pin_gpu(worker: int) -> None:
    """With several GPUs, worker w trains on GPU w mod n (each trial's engine then uses that one)."""
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:
        return
    if n > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(worker % n)


def best_trial(rows: list[dict]) -> dict | None:
    """The most harmful trial within the utility bound (the earliest on ties); None if none is."""
    feasible = [r for r in rows if r["feasible"]]
    return max(feasible, key=lambda r: (r["harmful"], -r["number"])) if feasible else None


def trial_rows(study, total: Optional[int] = None) -> list[dict]:
    """Finished trials in order (the first ``total`` complete ones), with the best-so-far feasible
    harmful score after each."""
    from optuna.trial import TrialState

    done = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    rows, best = [], None
    for t in done[:total] if total else done:
        a = t.user_attrs
        if a.get("feasible"):
            best = a["harmful"] if best is None else max(best, a["harmful"])
        rows.append({"number": t.number, "kind": a.get("kind"), "params": dict(t.params), "harmful": a.get("harmful"),
                     "utility": a.get("utility"), "utility_drop": a.get("utility_drop"), "collapsed": a.get("collapsed"),
                     "outcome": a.get("outcome"), "feasible": bool(a.get("feasible")), "seconds": a.get("seconds"),
                     "worker": a.get("worker"), "best_so_far": best, "config": a.get("config")})
    return rows


__all__ = ["LORA_TARGETS", "Target", "WorkerJob", "make_storage", "run_trial", "run_workers", "trial_rows", "work"]
