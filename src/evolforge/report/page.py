"""The report page: one self-contained HTML file per dataset version, or two versions side by side.

    >>> html = render([("workspace", collect("."))])                       # doctest: +SKIP
    >>> html = render([("A", collect("exp_a")), ("B", collect("exp_b"))])  # doctest: +SKIP

Charts are Vega-Lite specs filled by DVC's own renderer (``dvc_render``) from the same templates
``dvc plots show`` uses (``templates/*.json`` and DVC's built-in ``simple``), drawn by the Vega libraries
inlined from ``plots_template.html``: no request leaves the page. With two versions, each chart shows both
(one panel or one colour per version, as ``dvc plots diff`` does) and each table sits beside its twin.
Every chart reports to ``window.evolforgeCharts`` (drawn, errors), which the browser test reads.

This module lays the page out (its style, the charts, the sections in order, two versions side by side); each
section's table is built in :mod:`evolforge.report.sections` (the LLM spend's in :mod:`evolforge.report.spend`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from evolforge.report.assets import library_scripts
from evolforge.report.collect import PAIRS_PER_ROUND, SCORE_FIELDS
from evolforge.report.sections import (checks_html, chains_html, compare_table, difficulty_table, esc, eval_table,
                                       examples_table, funnel_table, harder_table, levels_table, minutes_html,
                                       optimize_html, pairs_html, provenance_html, scenario_html, summary_html,
                                       verification_html)
from evolforge.report.spend import spend_html

TEMPLATES = Path(__file__).with_name("templates")
Version = tuple[str, dict[str, Any]]  # (label, collect() output)

STYLE = """
body { font-family: system-ui, -apple-system, sans-serif; margin: 1.5rem auto; max-width: 1400px; padding: 0 1rem;
       color: #1a202c; line-height: 1.4; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #cbd5e0; padding-bottom: 0.2rem; margin-top: 2rem; }
.side { display: grid; grid-template-columns: repeat(var(--n), minmax(0, 1fr)); gap: 1.5rem; }
.side > div { min-width: 0; overflow-x: auto; }  /* a wide table scrolls in its column, never over its twin */
.side > div > h3 { margin: 0.3rem 0; color: #4a5568; font-size: 1rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.3rem 0 1rem; }
th, td { border: 1px solid #e2e8f0; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f7fafc; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.charts { display: flex; flex-wrap: wrap; gap: 1.5rem; }
.chart { min-width: 320px; }
.missing { color: #a0aec0; font-style: italic; }
.warning { background: #fffbea; border-left: 4px solid #d69e2e; padding: 0.4rem 0.8rem; margin: 0.4rem 0; }
.text { max-width: 38rem; white-space: pre-wrap; word-break: break-word; }
.failed { color: #c53030; } .evolved { color: #2f855a; } .sel { font-weight: bold; }
.from { color: #4a5568; font-size: 0.8rem; }
ol.chain { margin: 0.2rem 0 0.8rem; padding-left: 1.4rem; font-size: 0.85rem; }
code { font-size: 0.8rem; }
"""

RUNNER = """
<script>
window.evolforgeCharts = {expected: 0, drawn: 0, errors: []};
function evolforgeDraw(id, spec) {
  window.evolforgeCharts.expected += 1;
  vegaEmbed('#' + id, spec, {actions: false, renderer: 'svg'})
    .then(function () { window.evolforgeCharts.drawn += 1; })
    .catch(function (e) { window.evolforgeCharts.errors.push(id + ': ' + e); console.error(id, e); });
}
</script>
"""


def side_by_side(versions: list[Version], part: Callable[[dict], str]) -> str:
    if len(versions) == 1:
        return part(versions[0][1])
    cols = "".join(f"<div><h3>{esc(label)}</h3>{part(v)}</div>" for label, v in versions)
    return f'<div class="side" style="--n: {len(versions)}">{cols}</div>'


# (chart id, title, template, x, y, x label, y label, data getter). Templates are the ones dvc.yaml names.
CHARTS = [
    ("difficulty_levels", "Difficulty level per round (judge)", "rounds_grouped_bars", "level", "share",
     "difficulty level", "share of the round", lambda v: v["levels"]),
    ("difficulty_scores", "Judge difficulty score per round", "rounds_box", "round", "median", "round (0 = seeds)",
     "judge score (0-100)", lambda v: [{**r, "set": SCORE_FIELDS[r["score"]]} for r in v["difficulty"]]),
    ("evolve_failures", "Evolution failures by reason, per round", "rounds_grouped_bars", "reason", "count",
     "failure reason", "items", lambda v: v["evolve_failures"]),
    ("optimize", "Optimize: dev-set evol failure rate per step", "steps", "step", "failure_rate",
     "optimization step", "failure rate", lambda v: v["optimize"]),
    ("train_loss", "Fine-tuning loss per step", "steps", "step", "loss", "step", "loss (nats)",
     lambda v: v["train_curve"]),
    ("ifd", "IFD: pool and selection", "histogram", "bin_low", "count", "IFD", "items",
     lambda v: v["histograms"].get("ifd")),
    ("ic_ifd", "IC-IFD: pool and selection", "histogram", "bin_low", "count", "IC-IFD", "items",
     lambda v: v["histograms"].get("ic_ifd")),
    ("mnd", "Minimum neighbour distance (diversity)", "histogram", "bin_low", "count", "MND", "items",
     lambda v: v["histograms"].get("mnd")),
]


def spec(versions: list[Version], chart: tuple) -> dict | None:
    """A filled Vega-Lite spec for one chart over all versions, or None when no version has its data."""
    from dvc_render.vega import VegaRenderer

    name, title, template, x, y, x_label, y_label, get = chart
    points = []
    for label, v in versions:
        for row in get(v) or []:
            # a histogram's pool and selection are two panels of the same version, like two revisions
            rev = f"{label} · {row['set']}" if "set" in row else label
            points.append({**row, "rev": rev})
    if not points:
        return None
    path = TEMPLATES / f"{template}.json"
    renderer = VegaRenderer(points, name, template=str(path) if path.exists() else template,
                            x=x, y=y, title=title, x_label=x_label, y_label=y_label)
    return renderer.get_filled_template()


def charts_html(versions: list[Version], names: list[str]) -> str:
    out = []
    for chart in CHARTS:
        if chart[0] not in names:
            continue
        content = spec(versions, chart)
        if content is None:
            out.append(f'<div class="chart"><b>{esc(chart[1])}</b><p class="missing">no data</p></div>')
            continue
        payload = json.dumps(content, ensure_ascii=False).replace("</", "<\\/")
        out.append(f'<div class="chart" id="chart-{chart[0]}"></div>'
                   f"<script>evolforgeDraw('chart-{chart[0]}', {payload});</script>")
    return f'<div class="charts">{"".join(out)}</div>'


def render(versions: list[Version], title: str = "evolforge dataset report") -> str:
    """The whole page for one or more (label, collected data) versions."""
    labels = " vs ".join(label for label, _ in versions)
    where = "".join(f"<li>{esc(label)}: <code>{esc(v['root'])}</code></li>" for label, v in versions)
    sections = [
        ("Summary", "the headline figures of metrics/summary.json, as dvc exp show compares them",
         side_by_side(versions, summary_html)),
        ("Funnel per round",
         "seeds → evolved / failed by reason (survival: the share of a round's attempts that evolved) "
         "→ answered → deduplicated / decontaminated → judged → selected",
         side_by_side(versions, funnel_table)),
        ("Scenario", "the pool that went on to dedup: evolved instructions (evol) or AutoIF's verified items (autoif)",
         side_by_side(versions, scenario_html)),
        ("Answer checks", "the answers of items whose seed carries a check (a number, or Python tests run in the "
         "sandbox); "
         "a rewrite changes the question, so evolved items have none", side_by_side(versions, checks_html)),
        ("Verification", "every answer that could be selected, checked by the verify stage: code against tests it "
         "did not write, numbers recomputed, the rest judged (counts over the pool; then each selected item)",
         side_by_side(versions, verification_html)),
        ("Evolution and optimization", "", charts_html(versions, ["evolve_failures", "optimize"])),
        ("Auto Evol-Instruct's optimization loop", "each step's candidate methods, their failure rates on the "
         "development "
         "set, the one chosen, and the chosen method against the initial one", side_by_side(versions, optimize_html)),
        ("Evolved instructions beside their parents", f"up to {PAIRS_PER_ROUND} surviving rewrites per round (the same "
         "seeds' lineages in every round), the method used, and the judge's score and level of both",
         side_by_side(versions, pairs_html)),
        ("Difficulty per round", "harder round over round? the share of each round's judged items at the top two "
         "levels and their mean expected score (the SLM paper's measure, over the answered, deduplicated, "
         "decontaminated pool); judge labels (counts) per round; the judge's 0-100 scores per round "
         "(box: quartiles, whiskers: min and max, dark line: median)",
         side_by_side(versions, harder_table) + side_by_side(versions, levels_table)
         + side_by_side(versions, difficulty_table)
         + charts_html(versions, ["difficulty_levels", "difficulty_scores"])),
        ("IFD / IC-IFD", "distributions over the scored pool and over the selection",
         charts_html(versions, ["ifd", "ic_ifd", "mnd"])),
        ("Selected examples: highest selection metric", "", side_by_side(versions, lambda v: examples_table(v, "top"))),
        ("Selected examples: lowest selection metric", "",
         side_by_side(versions, lambda v: examples_table(v, "bottom"))),
        ("Fine-tuning and evaluation", "base model vs the model tuned on this selection",
         charts_html(versions, ["train_loss"]) + side_by_side(versions, eval_table)),
        ("Pairwise comparison", "the judge's verdicts, fine-tuned model against the other, on held-out prompts",
         side_by_side(versions, compare_table)),
        ("Sample lineage chains", "seed → last round: the method tried at each round, and why an attempt failed",
         side_by_side(versions, chains_html)),
        ("Models and prompts", "each stage's model, its identity and the hashes of the prompt templates it rendered",
         side_by_side(versions, provenance_html)),
        ("Where the minutes went", "each stage's wall seconds in its last run (metrics/summary.json wall.*; the model "
         "fetch stages are not timed), longest first", side_by_side(versions, minutes_html)),
        ("LLM spend", "tokens and cost per role over the stages' last runs (cached answers cost nothing), "
         "and per item kept", side_by_side(versions, spend_html)),
    ]
    warnings = "".join(f"<p class='warning'>{esc(label)}: {esc(w)}</p>" for label, v in versions
                       for w in v.get("warnings") or [])
    body = warnings + "".join(f"<h2>{esc(h)}</h2>{f'<p>{esc(sub)}</p>' if sub else ''}{content}"
                              for h, sub, content in sections)
    return (f"<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>\n<title>{esc(title)}: "
            f"{esc(labels)}</title>\n"
            f"{library_scripts()}\n{RUNNER}\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{esc(title)}</h1>\n<ul>{where}</ul>\n{body}\n</body>\n</html>\n")
