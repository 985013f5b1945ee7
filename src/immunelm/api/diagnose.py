"""``run_diagnose``: the mechanistic diagnostics for any set of base / aligned / immunised /
attacked models, on one task's prompts.

A model's *name* says its role, and the role says which checkpoint it was made from (its
parent), because every delta and every output difference is read on such a pair:

    base                  no parent
    aligned               parent base
    immunised, immunised-X        parent aligned
    attacked               parent aligned
    attacked-X             parent X if a model is named X, else immunised-X, else aligned

So ``-m aligned=... -m immunised-npo=... -m attacked-npo=...`` reads the attack on the NPO model
against the NPO model, and ``-m attacked=...`` an attack on the aligned model. Any subset works:
a pair whose parent is missing is skipped (and said so). Decision (issue 13): roles by name
rather than a second flag, because the name is already what tables and plots show.
"""

from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator
from tqdm.auto import tqdm

from immunelm.config import Config, Seed, repeated
from immunelm.diagnostics.schema import DiagnosticsReport, ModelDiagnostics, PairDiagnostics
from immunelm.errors import ImmuneLMError
from immunelm.diagnostics.base import Timer
from immunelm.eval.diagnostics import harmful_pairs, sample
from immunelm.io import write_json_atomic
from immunelm.models.adapters import merged_full
from immunelm.provenance import provenance
from immunelm.smol.config import SmolOrganismConfig
from immunelm.sources import check_model_source, load_model_source, load_tokenizer_source
from immunelm.tasks import EvalTask, TaskContext, load_task
from immunelm.world.organism import OrganismConfig

ROLES = ("base", "aligned", "immunised", "attacked")
CHEAP = ["kl", "spectra", "overlap", "task_vectors", "drift", "gradients", "entropy", "conditioning"]
EXPENSIVE = ["landscape", "landscape_2d", "map"]


class DiagnosedModel(Config):
    name: str = Field(description="base | aligned | immunised[-X] | attacked[-X]: the role (see immunelm.api.diagnose).")
    source: str = Field(description="Model dir, .gguf, hub name, organism:<stage>, smol:<stage>.")
    chat_template: Optional[str] = Field(None, description="For tokenizers without one: chatml, a .jinja file or template text.")


class DiagnoseSettings(Config):
    diagnostics: list[str] = Field(default_factory=lambda: list(CHEAP),
                                   description=f"Which to compute: {', '.join(CHEAP + EXPENSIVE)} (the last two are expensive).")
    examples: int = Field(128, ge=2, description="Harmful and benign examples per measurement (a seeded sample of the task's).")
    seed: Seed = Field(0, description="Seed of the example sample, random directions and t-SNE.")
    first_k: int = Field(5, ge=1, description="Per-token KL: positions counted as 'first tokens' (Qi et al. 2024).")
    overlap_fraction: float = Field(0.025, gt=0, le=1, description="Subspace overlap: top-k = fraction x min(shape) (Wei et al. 2024: ~2.5%).")
    conditioning_draws: int = Field(5, ge=1, description="Draws of examples averaged for kappa / RIR (paper: 20).")
    landscape_points: int = Field(21, ge=3, description="Grid points of the 1-D landscape (Peng et al. 2024: 21).")
    landscape_span: float = Field(0.5, gt=0, description="The grid is linspace(-span, span) (paper: 0.5).")
    landscape_points_2d: int = Field(11, ge=3, description="Grid points per axis of the 2-D landscape (points^2 evaluations).")
    landscape_metric: Literal["harmful_loss", "harmful_rate"] = Field(
        "harmful_loss", description="harmful_loss: CE on harmful answers (cheap); harmful_rate: generate and judge, "
                                    "rate = 1 - refused (the paper's keyword ASR: collapse is not safety; one "
                                    "generation pass per grid point).")
    map_method: Literal["pca", "tsne"] = Field("pca", description="2-D map of representations: pca (deterministic) or tsne.")
    map_layer: float = Field(0.5, ge=0, description="Layer of the map: a fraction of depth (<1) or a layer index (>=1).")
    progress: bool = Field(True, description="Show a progress bar with ETA (one step per pair and per model).")

    @field_validator("diagnostics")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in CHEAP + EXPENSIVE]
        if unknown:
            raise ValueError(f"unknown diagnostic '{unknown[0]}'; known: {', '.join(CHEAP + EXPENSIVE)}")
        return list(dict.fromkeys(names))


class DiagnoseConfig(Config):
    models: list[DiagnosedModel] = Field(default_factory=list, description="The models, named by role.")
    diagnose: DiagnoseSettings = Field(default_factory=DiagnoseSettings)
    task: str = Field("world", description="Whose prompts: world | smol | a task YAML path.")
    task_options: dict = Field(default_factory=dict, description="Overrides of the task provider's options.")
    organism: OrganismConfig = Field(default_factory=OrganismConfig)
    smol: SmolOrganismConfig = Field(default_factory=SmolOrganismConfig)
    cache_dir: Optional[str] = None
    trust_remote_code: bool = Field(False, description="Allow model repos to run their own code (off by default).")
    chat_template: Optional[str] = None


def role_of(name: str) -> str:
    head = name.split("-", 1)[0]
    if head not in ROLES or (head in ("base", "aligned") and name != head):
        raise ImmuneLMError(f"model name '{name}': expected base, aligned, immunised[-X] or attacked[-X] "
                            "(the name is the model's role: it says which checkpoint a delta is read against)")
    return head


def parent_of(name: str, names: list[str]) -> Optional[str]:
    """The checkpoint ``name`` was made from, among ``names`` (None: no such model given)."""
    role = role_of(name)
    if role == "base":
        return None
    if role == "aligned":
        return "base" if "base" in names else None
    if role == "attacked" and "-" in name:
        rest = name.split("-", 1)[1]
        for candidate in (rest, f"immunised-{rest}"):
            if candidate in names:
                return candidate
    return "aligned" if "aligned" in names else None


def pairs_of(names: list[str]) -> list[tuple[str, str, str]]:
    """(child, parent, kind) for every model whose parent is among ``names``."""
    kinds = {"aligned": "alignment", "immunised": "immunisation", "attacked": "attack"}
    return [(n, p, kinds[role_of(n)]) for n in names if (p := parent_of(n, names)) is not None]


def task_for(cfg: DiagnoseConfig) -> EvalTask:
    return load_task(cfg.task, TaskContext(cfg.organism, cfg.cache_dir, cfg.smol),
                     {"options": cfg.task_options} if cfg.task_options else None)


def validate_diagnose(cfg: DiagnoseConfig) -> EvalTask:
    """Names, roles, sources, the task and the tokenizers, before any model is loaded."""
    if not cfg.models:
        raise ImmuneLMError("models: none given; pass -m NAME=SOURCE, e.g. -m base=organism:base -m aligned=organism:aligned")
    names = [m.name for m in cfg.models]
    duplicated = repeated(names)
    if duplicated:
        raise ImmuneLMError(f"models: duplicate name '{duplicated[0]}'; every model needs its own name")
    for name in names:
        role_of(name)
    needs_pair = {"kl", "spectra", "overlap", "task_vectors", "drift"} & set(cfg.diagnose.diagnostics)
    if needs_pair and not pairs_of(names) and len(names) > 1:
        raise ImmuneLMError(f"models {', '.join(names)}: no model's parent is given, so {', '.join(sorted(needs_pair))} "
                            "have nothing to compare (e.g. add -m aligned=... for an attacked or immunised model)")
    task = task_for(cfg)
    vocabularies = {}
    for m in cfg.models:
        try:
            check_model_source(m.source)
            tokenizer = load_tokenizer_source(m.source, cfg.cache_dir, cfg.trust_remote_code, cfg.organism, cfg.smol,
                                              m.chat_template or cfg.chat_template)
        except ImmuneLMError as exc:
            raise ImmuneLMError(f"model '{m.name}' ({m.source}): {exc}") from exc
        vocabularies[m.name] = tokenizer.get_vocab()
    for child, parent, _ in pairs_of(names):
        if vocabularies[child] != vocabularies[parent]:
            raise ImmuneLMError(f"models '{child}' and '{parent}': different tokenizers; a pair's KL and deltas need "
                                "one tokenizer and one architecture (a model and the checkpoint it was trained from)")
    return task


def run_diagnose(cfg: DiagnoseConfig, run_dir: Path, task: EvalTask | None = None) -> DiagnosticsReport:
    """Compute the asked diagnostics; writes ``results.json`` and ``report.html`` into ``run_dir``."""
    from immunelm.diagnostics import compute  # lazy: the diagnostics pull scikit-learn and matplotlib

    started = time.perf_counter()
    task = task or validate_diagnose(cfg)
    s, wanted, timer = cfg.diagnose, set(cfg.diagnose.diagnostics), Timer()
    loaded = {m.name: load_model_source(m.source, cfg.cache_dir, cfg.trust_remote_code, cfg.organism, cfg.smol,
                                        m.chat_template or cfg.chat_template) for m in cfg.models}
    # LoRA adapters are merged: every delta is read on full weights (decision, issue 13)
    models = {name: merged_full(model).eval() for name, (model, _) in loaded.items()}
    harmful, benign = sample(harmful_pairs(task), s.examples, s.seed), sample(task.benign, s.examples, s.seed + 1)
    ctx = compute.Context(models, {n: t for n, (_, t) in loaded.items()}, harmful, benign, s, timer, task)
    pair_list = pairs_of(list(models))
    parents = {child: parent for child, parent, _ in pair_list}
    # one step per pair and per model: on a real model a step takes minutes, so show an ETA
    bar = tqdm(total=len(pair_list) + len(cfg.models), unit="step", desc="diagnose", disable=not s.progress)
    pairs, per_model = [], []
    for child, parent, kind in pair_list:
        bar.set_postfix_str(f"{child} vs {parent}")
        pairs.append(compute.pair(ctx, child, parent, kind, wanted, parents.get(parent)))
        bar.update()
    for m in cfg.models:
        bar.set_postfix_str(m.name)
        per_model.append(ModelDiagnostics(name=m.name, source=m.source, role=role_of(m.name), **compute.single(ctx, m.name, wanted)))
        bar.update()
    bar.close()
    report = DiagnosticsReport(
        created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), task=task.name,
        diagnostics=s.diagnostics, models=per_model, pairs=pairs,
        landscape_metric=s.landscape_metric if wanted & {"landscape", "landscape_2d"} else None,
        representation_map=compute.representation_map(ctx) if "map" in wanted else None,
        seconds=timer.seconds, config=cfg.model_dump(mode="json"), provenance=provenance(s.seed),
        wall_seconds=time.perf_counter() - started)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(run_dir) / "results.json", report.model_dump(mode="json"))
    from immunelm.diagnostics.html import render_diagnostics

    render_diagnostics(report, Path(run_dir))
    return report


__all__ = ["DiagnoseConfig", "DiagnosedModel", "DiagnoseSettings", "PairDiagnostics", "run_diagnose", "validate_diagnose"]
