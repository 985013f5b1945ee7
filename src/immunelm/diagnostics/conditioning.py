"""Condition numbers of linear-probe Hessians and the Relative Immunisation Ratio (RIR).

Zheng et al. 2025 (https://arxiv.org/abs/2505.23760, seed 002): a linear probe on features Phi
under l2 loss has Hessian S = Phi^T Phi, so kappa(S) = sigma_max / sigma_min sets how fast gradient
descent can fit it. For a causal LM the probe is the LM head and the features are the last hidden
states it reads (after the final norm), one row per position that predicts a response token.

RIR relative to theta_0 (eq. 17):
    [kappa(S_harm(theta_I)) / kappa(S_harm(theta_0))] / [kappa(S_benign(theta_I)) / kappa(S_benign(theta_0))]
> 1 means the harmful probe got harder to fit than the benign one. RIR relative to the identity
(eqs. 5'-6') replaces theta_0's features with the identity feature extractor on the embedded input:
for an LM the "input" of a position is theta_0's embedding of its token, which has the same
width as the features (the "dimensions allow"). Both are averaged over draws of examples as in
the paper (20 draws of 100).
"""

from __future__ import annotations

import math
import random
import statistics

import torch

from immunelm.data import IGNORE_INDEX, PaddingCollator, encode_example


def feature_gram(features: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """S = Phi^T Phi (divided by the row count if ``normalise``: kappa is unchanged, but the
    regularisers' scale then does not depend on the batch size)."""
    phi = features.reshape(-1, features.shape[-1])
    phi = phi if phi.dtype == torch.float64 else phi.float()
    gram = phi.T @ phi
    return gram / phi.shape[0] if normalise else gram


def singular_values(gram: torch.Tensor) -> torch.Tensor:
    """Singular values of a symmetric PSD matrix, ascending (its eigenvalues, clamped at 0)."""
    return torch.linalg.eigvalsh(gram).clamp(min=0)


def condition_number(gram: torch.Tensor) -> float:
    """kappa = sigma_max / sigma_min; inf if S is numerically singular (e.g. fewer rows than
    dims), judged at the precision ``gram`` was computed in."""
    sigma = singular_values(gram.double())
    tolerance = sigma[-1] * gram.shape[0] * torch.finfo(gram.dtype).eps
    return float(sigma[-1] / sigma[0]) if sigma[0] > tolerance else float("inf")


def probe_features(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Final hidden states (what the LM head reads) at positions that predict a response token."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    return out.hidden_states[-1][:, :-1][batch["labels"][:, 1:] != IGNORE_INDEX]


def embedded_inputs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The identity feature extractor: token embeddings at the same positions as probe_features."""
    embedded = model.get_input_embeddings()(batch["input_ids"])
    return embedded[:, :-1][batch["labels"][:, 1:] != IGNORE_INDEX]


@torch.no_grad()
def kappa_of(model, rows: list[dict], collate, features=probe_features) -> float:
    batch = collate(rows)
    return condition_number(feature_gram(features(model, batch).double(), normalise=False))


def relative_immunisation_ratio(immunised, reference, tokenizer, harmful, benign, draws: int = 20,
                                size: int = 100, seed: int = 0) -> dict:
    """RIR relative to ``reference`` (theta_0) and to the identity, mean and spread over draws of
    ``size`` examples from each of ``harmful`` and ``benign`` (lists of Examples)."""
    collate = PaddingCollator.for_tokenizer(tokenizer)
    harm_rows = [encode_example(tokenizer, e) for e in harmful]
    ben_rows = [encode_example(tokenizer, e) for e in benign]
    rng = random.Random(seed)
    kappas = []
    for _ in range(draws):
        h = rng.sample(harm_rows, min(size, len(harm_rows)))
        b = rng.sample(ben_rows, min(size, len(ben_rows)))
        kappas.append({
            "harm_I": kappa_of(immunised, h, collate), "harm_0": kappa_of(reference, h, collate),
            "ben_I": kappa_of(immunised, b, collate), "ben_0": kappa_of(reference, b, collate),
            "harm_id": kappa_of(reference, h, collate, embedded_inputs), "ben_id": kappa_of(reference, b, collate, embedded_inputs),
        })
    return {
        **_summary("rir_theta0", [_rir(k["harm_I"], k["harm_0"], k["ben_I"], k["ben_0"]) for k in kappas]),
        **_summary("rir_identity", [_rir(k["harm_I"], k["harm_id"], k["ben_I"], k["ben_id"]) for k in kappas]),
        "kappa": {key: statistics.fmean(k[key] for k in kappas) for key in kappas[0]},
        "draws": draws, "size": size,
    }


def _rir(harm: float, harm_ref: float, ben: float, ben_ref: float) -> float | None:
    """(harm / harm_ref) / (ben / ben_ref); None if any kappa is infinite (a singular Gram)."""
    if any(math.isinf(k) for k in (harm, harm_ref, ben, ben_ref)):
        return None
    return (harm / harm_ref) / (ben / ben_ref)


def _summary(name: str, values: list[float | None]) -> dict:
    """Mean and spread over the draws where the ratio is defined, and how many those were."""
    valid = [v for v in values if v is not None]
    return {name: statistics.fmean(valid) if valid else None,
            f"{name}_std": statistics.pstdev(valid) if valid else None, f"{name}_defined_draws": len(valid)}
