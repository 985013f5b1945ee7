"""Task vectors and the angles between them: which fine-tunes point against safety?

A task vector is a checkpoint's difference from the one it was trained from (Ilharco et al.
2023): tau_align = theta_aligned - theta_base, tau_ft = theta_ft - theta_aligned. The seeds'
"task-dependent degradation" (Hsiung et al. 2025) reads cos(tau_ft, -tau_align): a downstream
fine-tune whose update points against the alignment update undoes more of it. For unlearning
defences (Wang et al. 2025, ILU) the quantity is cos(tau_{u->ft}, tau_u), tau_u = theta_u -
theta_o and tau_{u->ft} = theta_u^ft - theta_u: negative means fine-tuning walks the unlearning
back (paper: NPO -0.41, ILU ~ +0.09).

Decisions: every parameter counts, flattened into one vector (the papers' whole-model cosine);
tied parameters once (``named_parameters`` yields a shared tensor once); the vectors are float32
on the CPU, so a 135M model's vector is ~0.5 GB (fine on the machines this runs on; a 7B model
would need a per-tensor accumulation, which :func:`cosine` already does).
"""

from __future__ import annotations

import math

import torch

from immunelm.diagnostics.base import DiagnosticResult, finite, matching_parameters
from immunelm.errors import ImmuneLMError

TaskVector = dict[str, torch.Tensor]


@torch.no_grad()
def task_vector(model_to, model_from, what: str = "task vector") -> TaskVector:
    """tau = theta_to - theta_from, per parameter (float32, CPU)."""
    names = matching_parameters(model_to, model_from, what)
    to, frm = dict(model_to.named_parameters()), dict(model_from.named_parameters())
    return {n: to[n].detach().float().cpu() - frm[n].detach().float().cpu() for n in names}


def cosine(a: TaskVector, b: TaskVector, what: str = "task-vector cosine") -> float:
    """cos(a, b) of two task vectors over the parameters they share, accumulated per tensor."""
    shared = [n for n in a if n in b]
    if not shared:
        raise ImmuneLMError(f"{what}: the task vectors share no parameter (expected deltas of one architecture)")
    dot = sum(float((a[n].double() * b[n].double()).sum()) for n in shared)
    norm_a = math.sqrt(sum(float(a[n].double().pow(2).sum()) for n in shared))
    norm_b = math.sqrt(sum(float(b[n].double().pow(2).sum()) for n in shared))
    if norm_a == 0 or norm_b == 0:
        raise ImmuneLMError(f"{what}: one of the task vectors is zero (the two checkpoints are identical)")
    return finite(dot / (norm_a * norm_b), what)


def norm(a: TaskVector) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in a.values()))


class TaskVectorAngle(DiagnosticResult):
    first: str  # e.g. "attacked - aligned"
    second: str  # e.g. "aligned - base"
    cosine: float
    first_norm: float
    second_norm: float


def angle(a: TaskVector, b: TaskVector, first: str, second: str) -> TaskVectorAngle:
    return TaskVectorAngle(first=first, second=second, cosine=cosine(a, b, f"cos({first}, {second})"),
                           first_norm=norm(a), second_norm=norm(b))
