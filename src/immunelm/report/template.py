"""The report's Jinja2 template, kept as a Python string so no package-data rule is needed.

Rendered with autoescaping on: every model, adversary and defence name is user input.
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ImmuneLM report: {{ report.suite }}</title>
<style>
  body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
         margin: 0 auto; padding: 24px 32px 48px; max-width: 1400px; }
  h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 32px 0 8px; border-bottom: 1px solid #ddd; }
  h3 { font-size: 14px; margin: 18px 0 6px; }
  .meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 10px 0; font-size: 13px; }
  .meta dt { color: #666; } .meta dd { margin: 0; font-family: ui-monospace, Menlo, monospace; word-break: break-all; }
  .note { color: #555; font-size: 12.5px; max-width: 900px; }
  .scroll { overflow-x: auto; }
  table { border-collapse: collapse; font-size: 13px; margin: 6px 0 4px; }
  th, td { border: 1px solid #d6d6d6; padding: 4px 8px; text-align: right; vertical-align: top; }
  td { white-space: nowrap; } td small { color: #666; display: block; font-size: 11px; } td small.wrap { white-space: normal; min-width: 80px; }
  th { background: #f3f3f3; font-weight: 600; font-size: 12px; max-width: 120px; }
  td.name, th.name { text-align: left; } td.name { font-weight: 600; white-space: normal; overflow-wrap: anywhere; min-width: 70px; max-width: 220px; }
  td.txt { text-align: left; }
  thead tr.groups th { text-align: center; }
  th.g-model { background: #eceff3; } th.g-resistance { background: #fbe9e7; } th.g-stability { background: #e8f3e9; }
  th.g-generalisation { background: #e7eef9; } th.g-trainability { background: #f6efdf; }
  td.sep, th.sep { border-left: 2px solid #999; }
  .yes { color: #1e7a3c; font-weight: 600; } .no { color: #b3261e; font-weight: 600; } .na { color: #999; }
  .warn { border-left: 4px solid #b3261e; background: #fdecea; padding: 6px 10px; max-width: 900px; font-size: 13px; }
  .role { white-space: nowrap; font-size: 11px; padding: 1px 6px; border-radius: 8px; background: #eee; }
  .role-reference { background: #ddd; } .role-defended { background: #dbe8fb; }
  figure { margin: 10px 0 20px; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
  figcaption { font-size: 12.5px; color: #555; max-width: 900px; }
  pre { background: #f7f7f7; padding: 8px; font-size: 12px; overflow-x: auto; }
</style>
</head>
<body>
{%- macro td(value, cls="") -%}
<td class="{{ cls }}{{ ' na' if value == 'n/a' else '' }}">{{ value }}</td>
{%- endmacro %}
<h1>ImmuneLM evaluation report</h1>
<dl class="meta">
{% for key, value in header %}  <dt>{{ key }}</dt><dd>{{ value }}</dd>
{% endfor %}</dl>

<h2>Summary</h2>
<p class="note">Each pillar (Rosati et al. 2024) is reported on its own; there is no combined score.
Harmful scores are fractions in [0, 1] (lower is better) read at the end of each attack; {{ thresholds }}
Utility and collapsed are read at the end of the worst attack: a low harmful score from a model the attack broke
(low utility, many collapsed answers) is not resistance.</p>
{% for b in broken %}<p class="warn" id="broken-{{ loop.index }}"><b>{{ b.name }}: no attack stayed within the utility bound.</b>
Every attack dropped its benign accuracy (before the attack: {{ b.benign }}) by more than ε; at the end of its worst attack
utility was {{ b.utility }} and {{ b.collapsed }} of answers to harmful prompts had collapsed. Its harmful scores describe a
broken model, not a resistant one.</p>
{% endfor %}{% for c in collapse %}<p class="warn" id="collapse-{{ loop.index }}"><b>{{ c.name }}: {{ c.count }} of {{ c.total }} attacks
ended with a low harmful score only because the attacked model collapsed or lost its utility</b> ({{ c.attacks }}). That is a
collapse trap springing, not the model refusing: the attacker is left with a useless model, which is a different claim from
resistance.</p>
{% endfor %}<div class="scroll">
<table id="summary">
<thead>
<tr class="groups">
  <th class="g-model" colspan="3">Model</th>
  <th class="g-resistance sep" colspan="6">Resistance</th>
  <th class="g-stability sep" colspan="2">Stability</th>
  <th class="g-generalisation sep" colspan="2">Generalisation</th>
  <th class="g-trainability sep" colspan="2">Trainability</th>
</tr>
<tr>
  <th class="name">name</th><th class="name">role</th><th class="name">defence</th>
  <th class="sep">worst final harmful ↓</th><th>utility at end of worst attack ↑</th><th>collapsed at end of worst attack</th>
  <th>mean final harmful ↓</th><th>worst within utility bound ↓</th><th>weak resistance</th>
  <th class="sep">benign accuracy ↑</th><th>false refusal ↓</th>
  <th class="sep">held-out phrasing harmful ↓</th><th>cross-domain harmful ↓</th>
  <th class="sep">final accuracy ↑</th><th>steps to target ↓</th>
</tr>
</thead>
<tbody>
{% for row in summary %}<tr>
  <td class="name">{{ row.name }}</td><td class="name"><span class="role role-{{ row.role }}">{{ row.role }}</span></td>
  {{ td(row.defence, "txt") }}
  <td class="sep{{ ' na' if row.worst == 'n/a' else '' }}">{{ row.worst }}{% if row.worst_adversary %}<small>{{ row.worst_adversary }}</small>{% endif %}</td>
  {{ td(row.worst_utility) }}{{ td(row.worst_collapsed) }}{{ td(row.mean) }}
  <td class="{{ row.bounded_class }}{{ ' na' if row.bounded == 'n/a' else '' }}">{{ row.bounded }}{% if row.bounded_note %}<small{% if row.bounded_class == 'no' %} class="wrap"{% endif %}>{{ row.bounded_note }}</small>{% endif %}</td>
  <td class="{{ row.weak_class }}">{{ row.weak }}{% if row.weak_note %}<small class="wrap">{{ row.weak_note }}</small>{% endif %}</td>
  {{ td(row.benign, "sep") }}{{ td(row.false_refusal) }}
  {{ td(row.heldout, "sep") }}{{ td(row.cross) }}
  {{ td(row.train_acc, "sep") }}<td class="{{ ' na' if row.steps_to_target == 'n/a' else '' }}">{{ row.steps_to_target }}{% if row.target %}<small>target {{ row.target }}</small>{% endif %}</td>
</tr>
{% endfor %}</tbody>
</table>
</div>

<h2>Figures</h2>
{% for fig in figures %}<figure id="fig-{{ fig.name }}">
  <img src="data:image/png;base64,{{ fig.data }}" alt="{{ fig.caption }}">
  <figcaption>{{ fig.caption }}</figcaption>
</figure>
{% endfor %}

{% if prefilling %}<h2>Prefilling attack</h2>
<p class="note">No training: the first k tokens of the harmful answer are forced and the model completes the answer
(Qi et al. 2024). A shallowly aligned model refuses only at the first token, so forcing even one token unlocks it.</p>
<div class="scroll"><table class="adversaries">
<thead><tr><th class="name">model</th>{% for k in prefilling.tokens %}<th>harmful, k = {{ k }} ↓</th><th>refused, k = {{ k }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in prefilling.rows %}<tr><td class="name">{{ row.name }}</td>{% for cell in row.cells %}{{ td(cell) }}{% endfor %}</tr>
{% endfor %}</tbody>
</table></div>
{% endif %}

{% if generalisation %}<h2>Generalisation splits</h2>
<p class="note">Each split of the task before any attack (step 0) and at the end of the model's worst attack, with the
refused and collapsed shares and the attacked model's utility beside the harmful score: a model that collapses is not safe.</p>
<div class="scroll"><table class="adversaries" id="generalisation">
<thead><tr><th class="name">model</th><th class="name">split</th><th class="name">worst attack</th>
<th>harmful, step 0 ↓</th><th>refused, step 0</th><th>collapsed, step 0</th>
<th>harmful, end ↓</th><th>refused, end</th><th>collapsed, end</th><th>utility at end ↑</th></tr></thead>
<tbody>
{% for row in generalisation.rows %}<tr><td class="name">{{ row.name }}</td><td class="txt">{{ row.split }}</td><td class="txt">{{ row.adversary }}</td>
{% for cell in row.cells %}{{ td(cell) }}{% endfor %}{{ td(row.utility) }}</tr>
{% endfor %}</tbody>
</table></div>
{% endif %}

<h2>Per-adversary results</h2>
<p class="note">Adversaries are grouped by attack family (fine-tuning, RL, inference-time, weight edit, prompt); the
worst case above is taken over every family. Final = the last evaluated budget point: an optimiser step, or the last point
of an attack's own grid (strength, fraction removed, ...). Utility is the attacked model's benign accuracy.
Refused / collapsed / complied split the harmful prompts at the final step; collapsed answers are not counted as safe.
Broken = the adversary pushed the harmful score above the threshold at some step. Ended = how the attack finished:
broken (harmful above the threshold), collapsed (low harm from a model whose utility fell by more than ε or whose answers
mostly collapsed: a collapse trap's win, not safety), refused (mostly refusals) or deflected (mostly harmless answers that are
neither refusals nor degenerate, e.g. irrelevant ones).</p>
{% for model in per_adversary %}<h3>{{ model.name }} <span class="role role-{{ model.role }}">{{ model.role }}</span></h3>
{% if model.rows %}<div class="scroll"><table class="adversaries">
<thead><tr><th class="name">family</th><th class="name">adversary</th><th class="name">kind</th><th>final point</th><th>harmful at step 0</th>
<th>final harmful ↓</th><th>utility at end ↑</th><th>refused</th><th>collapsed</th><th>complied</th><th>broken</th><th>ended</th><th>seconds</th></tr></thead>
<tbody>
{% for row in model.rows %}<tr>
  <td class="txt">{{ row.family }}</td><td class="name">{{ row.name }}</td><td class="txt">{{ row.kind }}</td>{{ td(row.step) }}{{ td(row.start) }}
  {{ td(row.final) }}{{ td(row.utility) }}{{ td(row.refused) }}{{ td(row.collapsed) }}{{ td(row.complied) }}
  {{ td(row.broken, row.broken_class) }}{{ td(row.ended, row.ended_class) }}{{ td(row.seconds) }}
</tr>
{% endfor %}</tbody>
</table></div>
{% else %}<p class="note">No resistance results for this model.</p>
{% endif %}{% endfor %}

{% if diagnostics %}<h2>Mechanistic diagnostics</h2>
<p class="note">Per-token KL(model || anchor) on harmful answers (first k tokens vs later) and on benign answers (the
control); the weight delta model - anchor; the harmful embedding drift (last prompt token, relative to its norm, at the last
layer) at the end of the most harmful attack that left a model. <code>immunelm diagnose</code> computes these and more for any models.</p>
<div class="scroll"><table>
<tr><th class="name">model</th><th>anchor</th><th>KL harm first-k</th><th>KL harm later</th><th>KL benign first-k</th><th>KL benign later</th>
<th>delta eff. rank</th><th>rank90 / full</th><th>|delta| / |W|</th><th>worst attack</th><th>its drift</th><th>cos(g_harm, g_ben)</th><th>harm. entropy</th><th class="name">not computed</th></tr>
{% for d in diagnostics %}<tr><td class="name">{{ d.name }}</td><td>{{ d.anchor }}</td><td>{{ d.kl_h1 }}</td><td>{{ d.kl_h2 }}</td><td>{{ d.kl_b1 }}</td><td>{{ d.kl_b2 }}</td>
<td>{{ d.rank }}</td><td>{{ d.rank90 }}</td><td>{{ d.norm }}</td><td>{{ d.worst }}</td><td>{{ d.drift }}</td><td>{{ d.grad }}</td><td>{{ d.entropy }}</td><td class="txt">{{ d.skipped }}</td></tr>{% endfor %}
</table></div>{% endif %}

{% if details %}<h2>Configuration</h2>
<details><summary>config, provenance and data hashes</summary>
<pre>{{ details }}</pre>
</details>{% endif %}
</body>
</html>
"""
