"""Diagnostics with known answers: per-token KL, delta spectra, subspace overlap, task vectors,
and the role/parent rules of ``immunelm diagnose``."""

import copy

import pytest
import torch

from immunelm.api.diagnose import pairs_of, parent_of, role_of
from immunelm.data import Example
from immunelm.diagnostics.kl import kl_profile, split_profile
from immunelm.diagnostics.spectra import delta_spectra, overlap, spectrum_stats, subspace_overlap, top_left_subspace, two_d_deltas
from immunelm.diagnostics.task_vectors import angle, cosine, task_vector
from immunelm.errors import ImmuneLMError
from immunelm.models.tiny import tiny_model, tiny_tokenizer

PAIRS = [Example.pair("say red", "red blue green red"), Example.pair("say blue", "blue red green")]


def orthonormal(rows: int, cols: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)))
    return q


def test_kl_of_a_model_with_itself_is_zero_and_positive_against_another():
    tok, model = tiny_tokenizer(), tiny_model("llama", seed=0)
    same = kl_profile(model, copy.deepcopy(model), tok, PAIRS, PAIRS, first_k=2)
    assert max(same.harmful.per_position) == pytest.approx(0.0, abs=1e-6)
    assert len(same.harmful.per_position) == 5  # the longest answer: 4 words + end of turn
    other = kl_profile(model, tiny_model("llama", seed=1), tok, PAIRS, first_k=2)
    assert min(other.harmful.per_position) > 0 and other.benign is None


def test_split_profile_means_and_ratio():
    split = split_profile(torch.tensor([4.0, 2.0, 1.0, 1.0, 1.0]), first_k=2)
    assert split.first_mean == pytest.approx(3.0) and split.later_mean == pytest.approx(1.0) and split.ratio == pytest.approx(3.0)
    assert split_profile(torch.tensor([1.0]), first_k=2).later_mean is None
    with pytest.raises(ImmuneLMError, match="finite"):
        split_profile(torch.tensor([1.0, float("nan")]), first_k=1)


def with_delta(model, name: str, delta: torch.Tensor):
    changed = copy.deepcopy(model)
    with torch.no_grad():
        dict(changed.named_parameters())[name].add_(delta)
    return changed


def test_a_rank_two_delta_has_effective_rank_two():
    model = tiny_model("llama", seed=0)
    name = "model.layers.0.mlp.down_proj.weight"
    rows, cols = dict(model.named_parameters())[name].shape
    u, v = orthonormal(rows, 2, 1), orthonormal(cols, 2, 2)
    spectra = delta_spectra(with_delta(model, name, 0.5 * u @ v.T), model)
    changed = {m.name: m for m in spectra.matrices}[name]
    assert changed.effective_rank == pytest.approx(2.0, abs=1e-4) and changed.rank90 == 2
    assert changed.singular_values[:2] == pytest.approx([0.5, 0.5], abs=1e-5)
    assert all(m.rank90 == 0 for m in spectra.matrices if m.name != name)  # untouched matrices: no delta
    assert spectra.median_effective_rank == pytest.approx(2.0, abs=1e-4)


def test_spectrum_stats_known_values():
    assert spectrum_stats(torch.tensor([3.0, 0.0, 0.0]))["effective_rank"] == pytest.approx(1.0)
    assert spectrum_stats(torch.ones(4))["effective_rank"] == pytest.approx(4.0)
    assert spectrum_stats(torch.tensor([3.0, 1.0]))["rank90"] == 1  # 9 / 10 of the energy
    assert spectrum_stats(torch.zeros(3))["rank90"] == 0


def test_overlap_is_one_for_the_same_subspace_and_zero_for_orthogonal_ones():
    q = orthonormal(16, 6, 0)
    assert overlap(q[:, :3], q[:, :3]) == pytest.approx(1.0)
    assert overlap(q[:, :3], q[:, 3:]) == pytest.approx(0.0, abs=1e-6)
    # a rotation inside the same span is the same subspace
    rotated = q[:, :2] @ torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    assert overlap(q[:, :2], rotated) == pytest.approx(1.0)
    found = top_left_subspace(3 * q[:, :1] @ q[:1, :], 1).squeeze().float()  # rank 1: its column space is q_0
    assert torch.allclose(found.abs(), q[:, 0].abs(), atol=1e-5)


def test_subspace_overlap_of_two_model_deltas():
    model = tiny_model("llama", seed=0)
    name = "model.layers.1.self_attn.o_proj.weight"
    rows, cols = dict(model.named_parameters())[name].shape
    u, v = orthonormal(rows, 4, 3), orthonormal(cols, 1, 4)
    first = two_d_deltas(with_delta(model, name, u[:, :1] @ v.T), model, "first")
    same_direction = two_d_deltas(with_delta(model, name, 2 * u[:, :1] @ v.T), model, "same")
    orthogonal = two_d_deltas(with_delta(model, name, u[:, 1:2] @ v.T), model, "orthogonal")
    aligned = subspace_overlap(first, same_direction, fraction=0.01)
    assert [m.name for m in aligned.matrices] == [name] and aligned.matrices[0].k == 1
    assert aligned.mean_overlap == pytest.approx(1.0) and aligned.mean_chance == pytest.approx(1 / rows)
    assert subspace_overlap(first, orthogonal, fraction=0.01).mean_overlap == pytest.approx(0.0, abs=1e-6)


def test_task_vector_cosines():
    base = tiny_model("llama", seed=0)
    step = {n: torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.01
            for i, (n, p) in enumerate(base.named_parameters())}
    forward, backward = copy.deepcopy(base), copy.deepcopy(base)
    with torch.no_grad():
        for n, p in forward.named_parameters():
            p.add_(step[n])
        for n, p in backward.named_parameters():
            p.sub_(2 * step[n])
    tau = task_vector(forward, base)
    assert cosine(tau, tau) == pytest.approx(1.0) and cosine(tau, task_vector(backward, base)) == pytest.approx(-1.0)
    result = angle(tau, task_vector(backward, base), "f", "b")
    assert result.second_norm == pytest.approx(2 * result.first_norm, rel=1e-5)
    with pytest.raises(ImmuneLMError, match="zero"):
        cosine(tau, task_vector(base, copy.deepcopy(base)))
    with pytest.raises(ImmuneLMError, match="different parameters|shape"):
        task_vector(tiny_model("gpt2", seed=0), base)


def test_roles_and_parents():
    names = ["base", "aligned", "immunised-npo", "attacked-npo", "attacked", "attacked-sft"]
    assert [parent_of(n, names) for n in names] == [None, "base", "aligned", "immunised-npo", "aligned", "aligned"]
    assert parent_of("attacked-immunised", ["aligned", "immunised", "attacked-immunised"]) == "immunised"
    assert parent_of("attacked", ["attacked"]) is None
    assert ("aligned", "base", "alignment") in pairs_of(names) and len(pairs_of(names)) == 5
    for bad in ("reference", "aligned-2", "Attacked"):
        with pytest.raises(ImmuneLMError, match="expected base, aligned"):
            role_of(bad)


def test_parent_angle_reads_cos_tau_u_to_ft_tau_u(tmp_path):
    """An attack that exactly undoes an immunisation has cos(tau_{u->ft}, tau_u) = -1."""
    from types import SimpleNamespace

    from immunelm.api.diagnose import DiagnoseSettings, Timer
    from immunelm.diagnostics import compute

    aligned = tiny_model("llama", seed=0)
    name = "model.layers.0.mlp.up_proj.weight"
    step = 0.1 * torch.randn(dict(aligned.named_parameters())[name].shape, generator=torch.Generator().manual_seed(5))
    immunised = with_delta(aligned, name, step)
    undone = with_delta(immunised, name, -0.5 * step)
    ctx = compute.Context({"aligned": aligned, "immunised-x": immunised, "attacked-x": undone}, {}, [], [],
                          DiagnoseSettings(), Timer())
    result = compute.pair(ctx, "attacked-x", "immunised-x", "attack", {"task_vectors"}, grandparent="aligned")
    assert result.parent_angle.cosine == pytest.approx(-1.0) and result.alignment_angle is None  # no base: no alignment
    assert result.parent_angle.first_norm == pytest.approx(0.5 * result.parent_angle.second_norm, rel=1e-5)
