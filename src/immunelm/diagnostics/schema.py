"""The typed ``results.json`` of ``immunelm diagnose`` (schema "diagnostics-1.0").

Models are named by their role (``base``, ``aligned``, ``immunised[-X]``, ``attacked[-X]``); a
*pair* is a model and the checkpoint it was made from (see :mod:`immunelm.api.diagnose`), and
every weight or output difference is read on a pair. Single-model quantities (gradient
geometry, response entropy, conditioning, the landscape) sit on the model.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from immunelm.diagnostics.base import DiagnosticResult
from immunelm.diagnostics.drift import DirectionCosine, EmbeddingDrift, RepresentationMap
from immunelm.diagnostics.gradients import GradientCosine, ResponseEntropy
from immunelm.diagnostics.kl import KLProfile
from immunelm.diagnostics.landscape import Landscape1D, Landscape2D
from immunelm.diagnostics.spectra import DeltaSpectra, SubspaceOverlap
from immunelm.diagnostics.task_vectors import TaskVectorAngle

DIAGNOSTICS_SCHEMA = "diagnostics-1.0"
PairKind = Literal["alignment", "immunisation", "attack"]


class PairDrift(DiagnosticResult):
    embedding: EmbeddingDrift  # harmful-prompt states, parent -> child, per layer
    harmful_direction: DirectionCosine  # cos of the two models' harmful-minus-benign directions


class PairDiagnostics(DiagnosticResult):
    child: str
    parent: str
    kind: PairKind
    kl: Optional[KLProfile] = None  # KL(child || parent) by response position
    spectra: Optional[DeltaSpectra] = None  # of child - parent
    alignment_overlap: Optional[SubspaceOverlap] = None  # top-k subspaces of (child - parent) vs (aligned - base)
    alignment_angle: Optional[TaskVectorAngle] = None  # cos(child - parent, aligned - base)
    # cos(child - parent, parent - grandparent): does this change undo the parent's own? For an
    # attacked unlearned model this is ILU's cos(tau_{u->ft}, tau_u) (Wang et al. 2025)
    parent_angle: Optional[TaskVectorAngle] = None
    drift: Optional[PairDrift] = None
    landscape: Optional[Landscape1D] = None  # along parent -> child (a = 0 parent, a = 1 child), beyond both ends


class ModelDiagnostics(DiagnosticResult):
    name: str
    source: str
    role: str
    gradients: Optional[GradientCosine] = None  # cos(g_harmful, g_benign) (SEAM's quantity)
    entropy: Optional[ResponseEntropy] = None  # response entropy on harmful prompts (TokenBuncher's)
    conditioning: Optional[dict[str, Any]] = None  # kappa of the harmful/benign probe Hessians, RIR vs aligned
    landscape: Optional[Landscape1D] = None  # 1-D safety landscape along a random direction around the model
    landscape_2d: Optional[Landscape2D] = None  # 2-D, two random directions


class DiagnosticsReport(DiagnosticResult):
    schema_version: str = DIAGNOSTICS_SCHEMA
    created_utc: str
    task: str
    diagnostics: list[str]
    models: list[ModelDiagnostics]
    pairs: list[PairDiagnostics]
    landscape_metric: Optional[str] = None  # harmful_loss | harmful_rate: what the landscapes measure
    representation_map: Optional[RepresentationMap] = None  # 2-D PCA / t-SNE of harmful vs benign
    seconds: dict[str, float]  # wall time per diagnostic (what each costs)
    config: dict[str, Any]
    provenance: dict[str, Any]
    wall_seconds: float
