"""``run_immunise``: apply a registered defence to a model and save the immunised checkpoint.

The defender's data comes from the user's files, or from the organism the model belongs to
(``organism:*`` -> the built-in world's align split; ``smol:*`` -> the SmolLM2 organism's
align split). Everything is validated by :func:`validate_immunise` before a run directory
exists. LoRA results are saved as a PEFT adapter (megabytes) beside a note naming the base
source; ``save_merged=true`` also writes merged full weights.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from pydantic import Field, create_model

from immunelm.config import Config, load_config
from immunelm.data import DataSourceConfig, load_examples
from immunelm.defences import DefenceData, apply_defence, build_defence, merged
from immunelm.errors import ImmuneLMError
from immunelm.io import atomic_path, write_json_atomic
from immunelm.models import save_model
from immunelm.models.adapters import is_peft_model, save_adapter
from immunelm.smol.config import SmolOrganismConfig
from immunelm.sources import ORGANISM, SMOL, load_model_source, load_tokenizer_source
from immunelm.world.organism import Organism, OrganismConfig


class DefenceDataSources(Config):
    refusals: Optional[DataSourceConfig] = Field(None, description="(harmful prompt, refusal) pairs.")
    harmful: Optional[DataSourceConfig] = Field(None, description="(harmful prompt, harmful answer) pairs.")
    benign: Optional[DataSourceConfig] = Field(None, description="Utility pairs.")


class ImmuniseConfig(Config):
    model: str = Field("organism:aligned", description="Model to immunise: organism:<stage>, smol:<stage>, a dir, .gguf, hub name.")
    base_model: Optional[str] = Field(
        None, description="Pre-alignment checkpoint, for defences that need it (LoX); organism:* defaults to organism:base, smol:* to smol:base.")
    defence: dict[str, Any] = Field(default_factory=dict, description="The method's own config fields (e.g. defence.train.lr=1e-4).")
    data: DefenceDataSources = Field(default_factory=DefenceDataSources, description="Defender data; organisms: built from their world.")
    organism: OrganismConfig = Field(default_factory=OrganismConfig)
    smol: SmolOrganismConfig = Field(default_factory=SmolOrganismConfig)
    chat_template: Optional[str] = Field(None, description="For tokenizers without one: chatml, a .jinja file or template text.")
    save_merged: bool = Field(False, description="LoRA results: also save merged full weights (default: the adapter only).")
    cache_dir: Optional[str] = None
    trust_remote_code: bool = False


def world_defence_data(organism_cfg: OrganismConfig) -> DefenceData:
    """The defender's data on the organism: the align split only (never attack or eval entities)."""
    from immunelm.world import corpus
    from immunelm.world.spec import BENIGN_TASKS, HARMFUL_DOMAINS

    world = Organism(organism_cfg).world
    align_items = [i for d in HARMFUL_DOMAINS for i in world.by_task(d, "align")]
    return DefenceData(
        refusals=corpus.chat_examples(align_items, world.train_phrasings, refuse=True, seed=world.config.seed + 1),
        harmful=corpus.chat_examples(align_items, world.train_phrasings),
        benign=corpus.chat_examples([i for t in BENIGN_TASKS for i in world.by_task(t)], world.train_phrasings),
    )


def _organism_data(cfg: ImmuniseConfig) -> DefenceData | None:
    if cfg.model.startswith(ORGANISM):
        return world_defence_data(cfg.organism)
    if cfg.model.startswith(SMOL):
        from immunelm.smol.data import defence_data as smol_defence_data

        return smol_defence_data(cfg.smol)
    return None


def check_data_sources(cfg: ImmuniseConfig) -> None:
    if cfg.data.refusals is None and not cfg.model.startswith((ORGANISM, SMOL)):
        raise ImmuneLMError("data.refusals: required for a model other than an organism (a file of harmful prompt -> refusal)")


def base_source(cfg: ImmuniseConfig) -> str | None:
    if cfg.base_model:
        return cfg.base_model
    for prefix in (ORGANISM, SMOL):
        if cfg.model.startswith(prefix):
            return prefix + "base"
    return None


def _load(source: str, cfg: ImmuniseConfig):
    return load_model_source(source, cfg.cache_dir, cfg.trust_remote_code, cfg.organism, cfg.smol, cfg.chat_template)


def defence_data(cfg: ImmuniseConfig) -> DefenceData:
    check_data_sources(cfg)
    src = cfg.data
    data = _organism_data(cfg) if src.refusals is None else DefenceData(
        refusals=load_examples(src.refusals),
        harmful=load_examples(src.harmful) if src.harmful else [],
        benign=load_examples(src.benign) if src.benign else [],
    )
    base = base_source(cfg)
    data.load_base = (lambda: _load(base, cfg)[0]) if base else None
    return data


def _check_source(source: str, cfg: ImmuniseConfig) -> None:
    """A user's model source exists and has a tokenizer (organisms are built on demand)."""
    if not source.startswith((ORGANISM, SMOL)):
        load_tokenizer_source(source, cfg.cache_dir, cfg.trust_remote_code, cfg.organism, cfg.smol, cfg.chat_template)


def load_defence_config(method: str, fields: dict[str, Any], section: str = "defence"):
    """``method``'s config from ``fields``; an error names the field as the user wrote it
    (``defence.train.lr``), by validating it as the ``section`` field of a one-field config."""
    spec = build_defence(method)
    wrapper = create_model(f"{spec.config_cls.__name__}Section", __base__=Config, **{section: (spec.config_cls, ...)})
    return getattr(load_config(wrapper, base={section: fields}, label=f"defence '{method}'"), section)


def validate_immunise(method: str, cfg: ImmuniseConfig, section: str = "defence"):
    """The defence's validated config; one-line errors (bad defence fields, unreadable data
    files, missing model sources) before any run directory exists or a model is loaded.
    ``section``: what the user calls ``cfg.defence`` (the demo's ``defence_config``)."""
    spec = build_defence(method)
    defence_cfg = load_defence_config(method, cfg.defence, section)
    check_data_sources(cfg)
    if spec.requires_base(defence_cfg) and base_source(cfg) is None:
        raise ImmuneLMError(f"base_model: required by '{method}' for a model other than an organism (the pre-alignment checkpoint)")
    for source in (cfg.data.refusals, cfg.data.harmful, cfg.data.benign):
        if source is not None:
            load_examples(source)
    _check_source(cfg.model, cfg)
    if cfg.base_model and spec.requires_base(defence_cfg):
        _check_source(cfg.base_model, cfg)
    return defence_cfg


def immunise_seed(method: str, defence_cfg) -> int | None:
    """The seed a defence run uses: its own ``seed`` (e.g. deep-align's augmentation draws), else
    its engine's ``train.seed``; a pipeline: its first step's. None for a training-free defence,
    which draws nothing at random."""
    if getattr(defence_cfg, "seed", None) is not None:
        return defence_cfg.seed
    train = getattr(defence_cfg, "train", None)
    if getattr(train, "seed", None) is not None:
        return train.seed
    for step in getattr(defence_cfg, "steps", None) or []:
        step_cfg = load_config(build_defence(step.defence).config_cls, base=step.config, label=f"pipeline step '{step.defence}'")
        if (seed := immunise_seed(step.defence, step_cfg)) is not None:
            return seed
    return None


def save_immunised(model, tokenizer, out: Path, base: str, save_merged: bool) -> dict:
    """An adapter (plus a note naming its base) for LoRA results, full weights otherwise."""
    if is_peft_model(model):
        save_adapter(model, tokenizer, out, base)
        if save_merged:
            save_model(merged(model), tokenizer, out.parent / "model-merged")
        return {"format": "peft-adapter", "base": base, "merged": str(out.parent / "model-merged") if save_merged else None}
    save_model(model, tokenizer, out)
    return {"format": "full"}


def save_artifacts(artifacts: dict[str, dict], directory: Path) -> list[str]:
    """Each artifact's tensors as ``<directory>/<name>.safetensors`` (written atomically)."""
    from safetensors.torch import save_file

    written = []
    for name, tensors in sorted(artifacts.items()):
        target = directory / f"{name}.safetensors"
        with atomic_path(target) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        written.append(str(target.relative_to(directory.parent)))
    return written


def run_immunise(method: str, cfg: ImmuniseConfig, run_dir: Path, defence_cfg=None) -> Path:
    """Apply ``method`` and save ``run_dir/model``; ``defence_cfg``: from :func:`validate_immunise`
    when the caller already ran it (it reads the data files, so it is not repeated)."""
    spec = build_defence(method)
    defence_cfg = defence_cfg if defence_cfg is not None else validate_immunise(method, cfg)
    model, tokenizer = _load(cfg.model, cfg)
    started = time.perf_counter()
    result = apply_defence(method, model, tokenizer, defence_data(cfg), defence_cfg)
    out = run_dir / "model"
    saved = save_immunised(result.model, tokenizer, out, cfg.model, cfg.save_merged)
    artifacts = save_artifacts(result.artifacts, run_dir / "artifacts")
    write_json_atomic(run_dir / "immunise.json", {
        "defence": method, "paper": spec.paper, "seconds": time.perf_counter() - started, "saved": saved,
        "defence_config": defence_cfg.model_dump(mode="json"), "source_model": cfg.model, "info": result.info,
        "artifacts": artifacts,
    })
    return out
