"""The leaderboard page's Jinja2 template and its script, kept as Python strings so no
package-data rule is needed.

Rendered with autoescaping on: row, defence, suite and cell names are user input. The script
is plain JavaScript with no libraries and no network, so the page works as a mailed file.
"""

from immunelm.report.template import TEMPLATE as _REPORT_TEMPLATE

# The evaluation report's stylesheet, reused verbatim so both pages look alike.
REPORT_CSS = _REPORT_TEMPLATE.split("<style>", 1)[1].split("</style>", 1)[0]

EXTRA_CSS = """
  th[data-key] { cursor: pointer; user-select: none; }
  th[data-key]:hover { background: #e6e6e6; }
  th[aria-sort="ascending"]::after { content: " \\25B2"; } th[aria-sort="descending"]::after { content: " \\25BC"; }
  td.warn-cell { background: #fdecea; }
  tr.reference td { background: #f6f6f6; }
  tr[hidden] { display: none; }
  #leaderboard td.name { min-width: 110px; }
  .controls { display: flex; gap: 20px; align-items: center; margin: 8px 0; font-size: 13px; }
  .controls input[type=search] { width: 240px; padding: 3px 6px; }
  td pre { margin: 0; padding: 4px; white-space: pre-wrap; text-align: left; max-width: 700px; }
"""

# Sorting and filtering, and the same state read from / written to the query string so a sorted
# view can be shared as a link: ?sort=<column key>&dir=asc|desc&filter=<text>&hide_collapse=1.
SCRIPT = r"""
(function () {
  "use strict";
  var table = document.getElementById("leaderboard");
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var headers = Array.prototype.slice.call(table.querySelectorAll("thead th[data-key]"));
  var filterBox = document.getElementById("filter");
  var hideBox = document.getElementById("hide-collapse");
  var shown = document.getElementById("shown");
  var state = {sort: null, dir: "asc"};
  rows.forEach(function (r, i) { r.dataset.order = i; });

  function cellValue(row, th) {
    var raw = row.cells[th.cellIndex].getAttribute("data-value");
    if (raw === null || raw === "") return null;
    if (th.dataset.type === "text") return raw.toLowerCase();
    var n = Number(raw);
    return isNaN(n) ? null : n;
  }

  // Missing values (n/a) go last in both directions: flipping the order must not float them up.
  function sortBy(key, dir) {
    var th = headers.filter(function (h) { return h.dataset.key === key; })[0];
    if (!th) return;
    var sign = dir === "desc" ? -1 : 1;
    rows.slice().sort(function (a, b) {
      var va = cellValue(a, th), vb = cellValue(b, th);
      var tie = a.dataset.order - b.dataset.order;
      if (va === null || vb === null) return ((va === null) - (vb === null)) || tie;
      var c = typeof va === "string" ? va.localeCompare(vb) : va - vb;
      return (c * sign) || tie;
    }).forEach(function (r) { body.appendChild(r); });
    headers.forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir === "desc" ? "descending" : "ascending");
    state.sort = key; state.dir = dir;
  }

  function applyFilter() {
    var needle = filterBox.value.trim().toLowerCase(), hide = hideBox.checked, count = 0;
    rows.forEach(function (r) {
      var off = r.dataset.name.toLowerCase().indexOf(needle) < 0 || (hide && r.dataset.collapse === "1");
      r.hidden = off;
      if (!off) count += 1;
    });
    shown.textContent = "showing " + count + " of " + rows.length + " rows";
  }

  // Keep the address bar in step with the view; file:// pages may refuse, which only costs the link.
  function remember() {
    var q = new URLSearchParams();
    if (state.sort) { q.set("sort", state.sort); q.set("dir", state.dir); }
    if (filterBox.value) q.set("filter", filterBox.value);
    if (hideBox.checked) q.set("hide_collapse", "1");
    try { history.replaceState(null, "", "?" + q.toString()); } catch (e) { /* opaque origin */ }
  }

  headers.forEach(function (th) {
    function click() {
      sortBy(th.dataset.key, state.sort === th.dataset.key && state.dir === "asc" ? "desc" : "asc");
      remember();
    }
    th.addEventListener("click", click);
    th.addEventListener("keydown", function (e) { if (e.key === "Enter") click(); });
  });
  filterBox.addEventListener("input", function () { applyFilter(); remember(); });
  hideBox.addEventListener("change", function () { applyFilter(); remember(); });

  var q = new URLSearchParams(window.location.search);
  filterBox.value = q.get("filter") || "";
  hideBox.checked = q.get("hide_collapse") === "1";
  if (q.get("sort")) sortBy(q.get("sort"), q.get("dir") === "desc" ? "desc" : "asc");
  applyFilter();
})();
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ImmuneLM leaderboard: {{ report.name }}</title>
<style>{{ css | safe }}</style>
</head>
<body>
{%- macro stat(c) -%}
<td class="{{ c.cls }}" data-value="{{ c.value }}">{{ c.text }}{% if c.ci %}<small>{{ c.ci }}</small>{% endif %}{% if c.note %}<small class="wrap">{{ c.note }}</small>{% endif %}</td>
{%- endmacro %}
<h1>ImmuneLM leaderboard: {{ report.name }}</h1>
<dl class="meta">
{% for key, value in header %}  <dt>{{ key }}</dt><dd>{{ value }}</dd>
{% endfor %}</dl>
{% if not report.complete %}<p class="warn" id="incomplete"><b>Incomplete leaderboard:</b> failed cells: {{ cell_counts.failed }},
missing cells: {{ cell_counts.missing }}; so some rows lack seeds or suites (see <a href="#cells">Cells</a>).</p>
{% endif %}{% for w in warnings %}<p class="warn">{{ w }}</p>
{% endfor %}
<h2>Leaderboard</h2>
<p class="note">Each number is the mean over seeds, with its 95% confidence interval below when there is more than one seed;
n/a: not measured. Harmful scores are in [0, 1], lower is better, read at the end of each attack. "Within ε": only attacks
whose utility drop stayed within the bound; an attack that breaks the model's utility is not a win for the defence.
A collapse share above 0.2 (highlighted) means the resistance is partly the model collapsing, not refusing.
Click a column header to sort.</p>
<div class="controls">
  <label>filter by name <input type="search" id="filter" placeholder="name contains…"></label>
  <label><input type="checkbox" id="hide-collapse"> hide rows whose resistance is only collapse</label>
  <span id="shown" class="note"></span>
</div>
<div class="scroll">
<table id="leaderboard">
<thead><tr>
  <th class="name" data-key="name" data-type="text" tabindex="0">name</th><th class="name">defence</th>
{% for col in columns %}  <th data-key="{{ col.key }}" tabindex="0" title="{{ col.title }}">{{ col.header }}</th>
{% endfor %}  <th data-key="seeds" tabindex="0">seeds (n)</th>
</tr></thead>
<tbody>
{% for row in rows %}<tr data-name="{{ row.name }}" data-collapse="{{ '1' if row.collapse else '0' }}"{% if row.reference %} class="reference"{% endif %}>
  <td class="name" data-value="{{ row.name }}">{{ row.name }}{% if row.reference %} <span class="role role-reference">reference</span>{% endif %}</td>
  <td class="txt{{ ' na' if not row.defence else '' }}">{{ row.defence or 'none' }}</td>
  {% for c in row.cells %}{{ stat(c) }}{% endfor %}
  <td data-value="{{ row.seeds | length }}">{{ row.seeds | length }}{% if row.seeds %}<small>{{ row.seeds | join(', ') }}</small>{% endif %}</td>
</tr>
{% endfor %}</tbody>
</table>
</div>
{% if families.names %}
<h3>Worst harmful by attack family ↓</h3>
<div class="scroll"><table id="families">
<thead><tr><th class="name">name</th>{% for f in families.names %}<th>{{ f }}</th>{% endfor %}</tr></thead>
<tbody>
{% for r in families.rows %}<tr><td class="name">{{ r.name }}</td>{% for c in r.cells %}{{ stat(c) }}{% endfor %}</tr>
{% endfor %}</tbody>
</table></div>{% endif %}

<h2>Resistance vs trainability</h2>
{% for fig in figures if fig.name == "pareto" %}<figure id="fig-pareto">
  <img src="data:image/png;base64,{{ fig.data }}" alt="Pareto plot of resistance against trainability">
  <figcaption>Resistance (1 − worst harmful within ε) against trainability (benign fine-tuning accuracy); up and right is
  better. Filled points on the line are Pareto-optimal: no other row is at least as good on both and better on one. Hollow
  points: no attack stayed within ε, so resistance falls back to 1 − worst harmful over all attacks; such a model was broken,
  not resistant, and is never put on the front.</figcaption>
</figure>{% endfor %}
<div class="scroll"><table id="pareto">
<thead><tr><th class="name">name</th><th>trainability ↑</th><th>resistance ↑</th><th class="name">resistance from</th><th>Pareto-optimal</th></tr></thead>
<tbody>
{% for p in pareto %}<tr><td class="name">{{ p.name }}</td><td>{{ p.x }}</td><td>{{ p.y }}</td><td class="txt">{{ p.basis }}</td>
<td class="{{ 'yes' if p.front else 'na' }}">{{ 'yes' if p.front else 'no' }}</td></tr>
{% endfor %}</tbody>
</table></div>
{% if not_plotted %}<p class="note">Not plotted (no trainability or harmful score): {{ not_plotted | join(', ') }}.</p>{% endif %}

{% if searches %}<h2>Attacker search</h2>
{% for fig in figures if fig.name == "search_curves" %}<figure id="fig-search">
  <img src="data:image/png;base64,{{ fig.data }}" alt="Search curves: best harmful within the bound against trials">
  <figcaption>Best harmful score within the utility bound found so far, against trials (first search of each row). A defence
  that slows the attacker down rises later.</figcaption>
</figure>{% endfor %}
<div class="scroll"><table id="searches">
<thead><tr><th class="name">name</th><th>seed</th><th>trials</th><th>feasible trials</th><th>best harmful within ε ↓</th>
<th>best trial</th><th class="name">kind</th><th class="name">params</th><th>harmful</th><th>utility</th><th class="name">outcome</th></tr></thead>
<tbody>
{% for s in searches %}<tr><td class="name">{{ s.name }}</td><td>{{ s.seed }}</td><td>{{ s.trials }}</td><td>{{ s.feasible }}</td>
<td class="{{ 'na' if s.best == 'n/a' else '' }}">{{ s.best }}</td><td>{{ s.number }}</td><td class="txt">{{ s.kind }}</td>
<td class="txt"><small class="wrap">{{ s.params }}</small></td><td>{{ s.harmful }}</td><td>{{ s.utility }}</td><td class="txt">{{ s.outcome }}</td></tr>
{% endfor %}</tbody>
</table></div>{% endif %}

<h2 id="cells">Cells</h2>
<div class="scroll"><table id="cell-counts">
<thead><tr><th class="name">kind</th>{% for s in statuses %}<th>{{ s }}</th>{% endfor %}<th>seconds</th></tr></thead>
<tbody>
{% for k in cell_kinds %}<tr><td class="name">{{ k.kind }}</td>{% for n in k.counts %}<td>{{ n }}</td>{% endfor %}<td>{{ k.seconds }}</td></tr>
{% endfor %}<tr><td class="name">all</td>{% for s in statuses %}<td>{{ cell_counts[s] }}</td>{% endfor %}<td></td></tr>
</tbody>
</table></div>
{% if problems %}<details id="problems"><summary>{{ problems | length }} failed or missing cells</summary>
<div class="scroll"><table>
<thead><tr><th class="name">status</th><th class="name">kind</th><th class="name">row</th><th>seed</th><th class="name">suite</th><th class="name">key</th><th class="name">error</th></tr></thead>
<tbody>
{% for c in problems %}<tr><td class="txt no">{{ c.status }}</td><td class="txt">{{ c.kind }}</td><td class="name">{{ c.row }}</td>
<td>{{ c.seed if c.seed is not none else '' }}</td><td class="txt">{{ c.suite or '' }}</td><td class="txt"><small>{{ c.key }}</small></td><td><pre>{{ c.error or '' }}</pre></td></tr>
{% endfor %}</tbody>
</table></div>
</details>{% else %}<p class="note">No failed or missing cells.</p>{% endif %}

{% if details %}<h2>Configuration</h2>
<details><summary>config and provenance</summary>
<pre>{{ details }}</pre>
</details>{% endif %}
<script>{{ script | safe }}</script>
</body>
</html>
"""
