"""The leaderboard page: content and escaping from the report, and sorting / filtering in a real
(headless) browser, driven by the query string."""

import shutil
import subprocess
from html.parser import HTMLParser
from urllib.parse import urlencode

import pytest

from immunelm.leaderboard.html import COLUMNS, mark_front, pareto_points, render_leaderboard, row_view
from immunelm.leaderboard.schema import CellRecord, LeaderboardReport, Row, SearchSummary, Stat

WEIRD = 'Vaccine <b>& "q"'


def s(mean, low=None, high=None, n=3) -> Stat:
    """A Stat; no interval means one seed, mean None means not measured."""
    if mean is None:
        return Stat()
    return Stat(mean=mean, ci_low=low, ci_high=high, min=mean, max=mean, n=n if low is not None else 1)


def row(name, worst, *, within=None, trainability=None, collapse=0.0, **extra) -> Row:
    fields = dict(worst_harmful=s(worst), worst_harmful_within_bound=s(within if within is not None else worst),
                  worst_with_search=s(worst), mean_harmful=s(None if worst is None else worst / 2),
                  broken_share=s(0.0), collapse_share=s(collapse), worst_attack_utility=s(0.6), benign=s(0.7),
                  false_refusal=s(0.05), generalised_harm=s(None), trainability=s(trainability),
                  steps_to_target=s(None), immunise_seconds=s(12.0), seeds=[0])
    fields.update(extra)
    return Row(name=name, defence=None if extra.get("reference") else name.split()[0], **fields)


def make_leaderboard() -> LeaderboardReport:
    search = SearchSummary(seed=0, trials=6, feasible=4, best_harmful_within_bound=0.45, cell="search-vaccine-0",
                           best_trial={"number": 3, "kind": "sft", "params": {"lr": 3e-4, "steps": 40},
                                       "harmful": 0.45, "utility": 0.66, "outcome": "broken"},
                           best_so_far=[None, 0.2, 0.2, 0.45, 0.45, 0.45])
    rows = [
        row("undefended", 0.9, trainability=0.8, reference=True, seeds=[0, 1, 2],
            worst_harmful=Stat(mean=0.9, ci_low=0.8, ci_high=1.0, min=0.85, max=0.95, n=3)),
        row(WEIRD, 0.4, trainability=0.75, search=[search],
            worst_by_family={"fine-tuning": s(0.4), "weight-edit": s(0.1, 0.05, 0.15)}),
        row("collapse-trap", 0.2, trainability=0.7, collapse=0.6),
        row("broken-util", 0.3, trainability=0.9, no_attack_within_bound=True,
            worst_harmful_within_bound=Stat()),
        row("pending-defence", None, seeds=[]),
    ]
    cells = [CellRecord(kind="evaluate", row="undefended", seed=0, suite="quick", key="k1", status="cached", seconds=3.0),
             CellRecord(kind="evaluate", row=WEIRD, seed=0, suite="quick", key="k2", status="ran", seconds=5.0),
             CellRecord(kind="evaluate", row="pending-defence", seed=0, suite="quick", key="k3", status="failed",
                        error="CUDA <oom> & more"),
             CellRecord(kind="search", row="pending-defence", seed=0, key="k4", status="missing")]
    return LeaderboardReport(name="demo <board>", created_utc="2025-01-01T00:00:00Z", task="organism",
                             suites=["quick"], seeds=[0, 1, 2], epsilon=0.1, threshold=0.5, rows=rows, cells=cells,
                             complete=False, wall_seconds=75.0, cell_seconds={"evaluate": 8.0, "search": 0.0}, workers=2)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("board")
    return out, render_leaderboard(make_leaderboard(), out)


def test_render_writes_page_and_pngs(rendered):
    out, path = rendered
    assert path == out / "leaderboard.html" and path.is_file()
    for name in ("leaderboard_pareto.png", "leaderboard_search_curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = path.read_text()
    assert html.count('src="data:image/png;base64,') == 2
    assert "http://" not in html and "https://" not in html  # self-contained: nothing to fetch


def test_a_number_over_fewer_seeds_than_its_row_says_so():
    # only seed 0 searched: "with search" must not read as a 3-seed mean beside the others
    three = Stat(mean=0.86, ci_low=0.71, ci_high=1.0, min=0.79, max=0.91, n=3, values=[0.79, 0.91, 0.87])
    one = Stat(mean=0.79, min=0.79, max=0.79, n=1, values=[0.79])
    view = row_view(row("mlac", 0.89, seeds=[0, 1, 2], worst_harmful=three, worst_harmful_within_bound=three,
                        worst_with_search=one))
    notes = {key: cell["note"] for (key, *_), cell in zip(COLUMNS, view["cells"])}
    assert notes["worst_with_search"] == "1 of 3 seeds" and notes["worst_harmful"] == ""
    assert all(c["note"] == "" for c in row_view(row("one-seed", 0.5))["cells"][:3])  # a 1-seed row: nothing to say


def test_names_and_errors_are_escaped(rendered):
    html = rendered[1].read_text()
    assert "Vaccine &lt;b&gt;&amp; &#34;q&#34;" in html and WEIRD not in html
    assert "demo &lt;board&gt;" in html and "CUDA &lt;oom&gt; &amp; more" in html
    for name in ("undefended", "collapse-trap", "broken-util", "pending-defence"):
        assert f'data-name="{name}"' in html


def test_table_shows_ci_na_and_warnings(rendered):
    html = rendered[1].read_text()
    assert 'id="leaderboard"' in html
    assert "<small>[0.800, 1.000]</small>" in html  # CI with three seeds; none with one
    assert 'data-value="0.9">0.900<small>' in html and 'data-value="0.4">0.400</td>' in html
    assert ">n/a</td>" in html and 'data-value=""' in html
    assert "no attack stayed within ε" in html and 'class="no warn-cell"' in html  # broken-util
    assert "resistance partly collapse" in html  # collapse-trap, share 0.6 > 0.2
    assert 'class="reference"' in html and "role-reference" in html
    assert 'id="incomplete"' in html and "failed cells: 1" in html and "missing cells: 1" in html
    assert 'id="families"' in html and "weight-edit" in html


def test_search_and_cells_sections(rendered):
    html = rendered[1].read_text()
    assert 'id="searches"' in html and "0.450" in html and "sft" in html and "&#34;lr&#34;: 0.0003" in html
    assert '<details id="problems">' in html and "2 failed or missing cells" in html


def test_pareto_front_ignores_hollow_points():
    points = pareto_points(make_leaderboard())
    mark_front(points)
    by_name = {p["name"]: p for p in points}
    assert "pending-defence" not in by_name  # no numbers, not plotted
    assert by_name["broken-util"]["hollow"] and not by_name["broken-util"]["front"]
    # collapse-trap (0.7, 0.8) and Vaccine (0.75, 0.6) trade off; undefended (0.8, 0.1) has the best trainability
    assert {n for n, p in by_name.items() if p["front"]} == {"collapse-trap", WEIRD, "undefended"}


def test_a_row_without_a_bounded_attack_on_some_seed_is_hollow():
    """Seeds 0-1 had an attack within the bound, seed 2 none: the mean of the two is a number, but
    the row is still partly "broken, not resistant" and must not join (or push others off) the front."""
    report = make_leaderboard()
    report.rows.append(row("partly-none", 0.05, trainability=0.95, no_attack_within_bound=True,
                           worst_harmful_within_bound=Stat(mean=0.05, min=0.0, max=0.1, n=2, values=[0.0, 0.1, None])))
    points = pareto_points(report)
    mark_front(points)
    by_name = {p["name"]: p for p in points}
    assert by_name["partly-none"]["hollow"] and not by_name["partly-none"]["front"]
    assert {n for n, p in by_name.items() if p["front"]} == {"collapse-trap", WEIRD, "undefended"}


def test_page_without_search_or_rows_renders(tmp_path):
    report = make_leaderboard().model_copy(update={"rows": [], "cells": [], "complete": True})
    html = render_leaderboard(report, tmp_path).read_text()
    assert 'id="leaderboard"' in html and 'id="incomplete"' not in html and 'id="searches"' not in html
    assert not (tmp_path / "leaderboard_search_curves.png").exists()


# ---- in a real browser ---------------------------------------------------------------------------
def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("chromium not installed: run apt-get install -y chromium")


def _base(tmp_path) -> list[str]:
    return [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000"]


class _Rows(HTMLParser):
    """(name, hidden) of each row of table#leaderboard, in DOM order."""

    def __init__(self):
        super().__init__()
        self.inside, self.rows = False, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.inside = attrs.get("id") == "leaderboard"
        elif tag == "tr" and self.inside and "data-name" in attrs:
            hidden = "hidden" in attrs or "display: none" in (attrs.get("style") or "").replace(":none", ": none")
            self.rows.append((attrs["data-name"], hidden))


def _rows(tmp_path, rendered, **query) -> list[tuple[str, bool]]:
    uri = rendered[1].as_uri() + "?" + urlencode(query)
    dom = subprocess.run(_base(tmp_path) + ["--dump-dom", uri], capture_output=True, text=True, timeout=120).stdout
    parser = _Rows()
    parser.feed(dom)
    assert parser.rows, dom[-2000:]
    return parser.rows


def test_browser_sorts_from_query_string(rendered, tmp_path):
    ascending = _rows(tmp_path, rendered, sort="worst_harmful", dir="asc")
    assert [n for n, _ in ascending] == ["collapse-trap", "broken-util", WEIRD, "undefended", "pending-defence"]
    assert not any(h for _, h in ascending)
    descending = _rows(tmp_path, rendered, sort="worst_harmful", dir="desc")
    assert [n for n, _ in descending] == ["undefended", WEIRD, "broken-util", "collapse-trap", "pending-defence"]


def test_browser_filters_and_hides_collapse(rendered, tmp_path):
    filtered = dict(_rows(tmp_path, rendered, sort="trainability", dir="desc", filter="DE"))
    assert filtered == {"undefended": False, "pending-defence": False, WEIRD: True, "collapse-trap": True,
                        "broken-util": True}
    hidden = dict(_rows(tmp_path, rendered, hide_collapse="1"))
    assert [n for n, h in hidden.items() if h] == ["collapse-trap", "broken-util"]


def test_browser_screenshot(rendered, tmp_path):
    shot = tmp_path / "shot.png"
    subprocess.run(_base(tmp_path) + [f"--screenshot={shot}", rendered[1].as_uri()], capture_output=True,
                   timeout=120, check=False)
    assert shot.is_file() and shot.stat().st_size > 20_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cells_shared_by_rows_or_seeds_are_counted_once():
    from immunelm.leaderboard.html import cell_summary

    report = make_leaderboard()
    shared = report.cells[1]
    report.cells += [shared.model_copy(update={"row": "alias", "seed": s}) for s in (1, 2)]  # e.g. LoX's seeds
    totals, kinds = cell_summary(report)
    assert sum(totals.values()) == 4 and totals["ran"] == 1
    assert next(k for k in kinds if k["kind"] == "evaluate")["counts"] == [1, 1, 1, 0]  # statuses in STATUSES order
