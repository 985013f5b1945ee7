"""Mechanistic diagnostics inside an evaluation (``evaluation.diagnostics``), per model.

Cheap ones by default: the per-token KL and the weight delta against the model's *anchor* (the
reference for a defended model; the base model, if the evaluation has one, for the reference),
and the harmful embedding drift of every attack that leaves a model (one forward pass over the
sampled harmful prompts), the worst attack's shown in the summary. Expensive ones on request:
``gradients`` / ``entropy`` (one backward / forward pass each; cheap, but not about attacks),
``landscape`` (a 1-D random slice of the harmful loss, 21 forward passes) and ``map`` (PCA of
harmful and benign prompt states before and after the worst attack). What each cost is
recorded in ``seconds`` (``benchmarks/insights.py`` records the same per model size; docs/diagnostics.md
states it).
"""

from __future__ import annotations

import random
from typing import Any, Optional

import torch

from immunelm.diagnostics import drift, gradients, landscape
from immunelm.diagnostics.base import Timer, matching_parameters
from immunelm.diagnostics.kl import kl_profile
from immunelm.diagnostics.spectra import delta_spectra
from immunelm.errors import ImmuneLMError
from immunelm.eval.schema import DeltaSummary, DriftSummary, KLSummary, ModelDiagnostics, ModelReport

DEFAULT = ["kl", "spectra", "drift"]
KNOWN = DEFAULT + ["gradients", "entropy", "landscape", "map"]
EXAMPLES = 64  # harmful and benign prompts per measurement
LANDSCAPE_GRID = [round(-0.5 + 0.05 * i, 10) for i in range(21)]  # Peng et al.: linspace(-0.5, 0.5, 21)


def check_names(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        raise ValueError(f"unknown diagnostic '{unknown[0]}'; known: {', '.join(KNOWN)}")
    return list(dict.fromkeys(names))


def sample(examples: list, n: int, seed: int) -> list:
    return examples if len(examples) <= n else random.Random(seed).sample(examples, n)


def harmful_pairs(task) -> list:
    """(harmful prompt, harmful answer) pairs: the eval set where every prompt has a reference
    answer, else the attacker's pool (a KL or a loss along answers needs answers)."""
    return task.harmful if all(e.response for e in task.harmful) else task.attack.harmful


def same_tokenizer(a, b) -> bool:
    return a.get_vocab() == b.get_vocab()


def same_parameters(a, b) -> bool:
    try:
        matching_parameters(a, b, "weight delta")
    except ImmuneLMError:
        return False
    return True


class ModelProbe:
    """The diagnostics of one evaluated model: call :meth:`after_attack` for each adversary and
    :meth:`summary` at the end."""

    def __init__(self, wanted: list[str], model, tokenizer, harmful: list, benign: list,
                 anchor: Optional[tuple[str, Any, Any]] = None) -> None:
        self.wanted, self.model, self.tokenizer = set(wanted), model, tokenizer
        self.harmful = sample(harmful, EXAMPLES, 0)
        self.benign = sample(benign, EXAMPLES, 1)
        self.anchor = anchor  # (name, model, tokenizer) or None
        self.result = ModelDiagnostics(anchor=anchor[0] if anchor else None)
        self.drifts: dict[str, DriftSummary] = {}
        self.states_after: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.map_layer = model.config.num_hidden_layers // 2
        self.before = self._timed("drift", self._states, model) if self.wanted & {"drift", "map"} else None

    def _timed(self, name: str, fn, *args):
        with Timer(self.result.seconds)(name):
            return fn(*args)

    def _states(self, model) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(harmful states at every layer, benign states at the map layer if the map is wanted)."""
        harmful = drift.prompt_states(model, self.tokenizer, self.harmful, what="harmful embedding drift")
        benign = drift.prompt_states(model, self.tokenizer, self.benign, what="representation map")[self.map_layer] \
            if "map" in self.wanted else None
        return harmful, benign

    def after_attack(self, adversary: str, attacked) -> Optional[DriftSummary]:
        """Drift of the harmful-prompt states from the unattacked model (None: no drift wanted,
        or the attack left no model, e.g. a prompt attack)."""
        if self.before is None or attacked is None:
            return None
        harmful, benign = self._timed("drift", self._states, attacked)
        found = drift.drift_between(self.before[0], harmful)
        self.drifts[adversary] = DriftSummary(relative_distance=found.relative_distance, cosine=found.cosine)
        if "map" in self.wanted:
            self.states_after[adversary] = (harmful[self.map_layer], benign)
        return self.drifts[adversary]

    def summary(self, report: ModelReport) -> ModelDiagnostics:
        out = self.result
        self._anchor_diagnostics(out)
        ranked = sorted(report.resistance, key=lambda a: -a.curve[-1].harmful_score)
        worst = next((a.name for a in ranked if a.name in self.drifts), None)
        if worst:
            out.worst_attack, out.worst_attack_drift = worst, self.drifts[worst]
        elif "drift" in self.wanted:
            out.skipped["drift"] = "no attack of the suite left a model (prompt and hook attacks have no weights)"
        if "gradients" in self.wanted:
            out.gradient_cosine = self._timed("gradients", gradients.gradient_cosine, self.model, self.tokenizer,
                                              self.harmful, self.benign).cosine
        if "entropy" in self.wanted:
            out.response_entropy = self._timed("entropy", gradients.response_entropy, self.model, self.tokenizer, self.harmful).mean
        if "landscape" in self.wanted:
            out.landscape = self._timed("landscape", self._landscape).model_dump(mode="json")
        if "map" in self.wanted and worst:
            out.representation_map = self._timed("map", self._map, report.name, worst).model_dump(mode="json")
        return out

    def _anchor_diagnostics(self, out: ModelDiagnostics) -> None:
        if not self.wanted & {"kl", "spectra"}:
            return
        if self.anchor is None:
            out.skipped.update({k: "no anchor: the reference has no base model in this evaluation" for k in ("kl", "spectra") if k in self.wanted})
            return
        name, anchor_model, anchor_tok = self.anchor
        if "kl" in self.wanted:
            if same_tokenizer(self.tokenizer, anchor_tok):
                kl = self._timed("kl", kl_profile, self.model, anchor_model, self.tokenizer, self.harmful, self.benign)
                out.kl = KLSummary(first_k=kl.first_k, harmful=kl.harmful.per_position, harmful_first_mean=kl.harmful.first_mean,
                                   harmful_later_mean=kl.harmful.later_mean, benign=kl.benign.per_position if kl.benign else None,
                                   benign_first_mean=kl.benign.first_mean if kl.benign else None,
                                   benign_later_mean=kl.benign.later_mean if kl.benign else None)
            else:
                out.skipped["kl"] = f"tokenizer differs from '{name}' (a KL needs one vocabulary)"
        if "spectra" in self.wanted:
            if same_parameters(self.model, anchor_model):
                spectra = self._timed("spectra", delta_spectra, self.model, anchor_model, f"delta {name} -> model")
                out.delta = DeltaSummary(median_effective_rank=spectra.median_effective_rank,
                                         median_rank90_fraction=spectra.median_rank90_fraction, relative_norm=spectra.relative_norm)
            else:
                out.skipped["spectra"] = f"architecture differs from '{name}' (a weight delta needs one architecture)"

    def _landscape(self):
        metric = landscape.harmful_loss_metric(self.tokenizer, self.harmful)
        return landscape.slice_1d(self.model, landscape.random_direction(self.model, seed=0), LANDSCAPE_GRID, metric)

    def _map(self, name: str, worst: str):
        if self.before[1] is None:
            raise ImmuneLMError("representation map: benign states missing (internal: map not requested at start)")
        after_harm, after_benign = self.states_after[worst]
        blocks = [(name, "harmful", self.before[0][self.map_layer]), (name, "benign", self.before[1]),
                  (f"{name} after {worst}", "harmful", after_harm), (f"{name} after {worst}", "benign", after_benign)]
        return drift.project(blocks, self.map_layer)
