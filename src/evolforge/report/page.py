"""The report page: one self-contained HTML file per dataset version, or two versions side by side.

    >>> html = render([("workspace", collect("."))])                       # doctest: +SKIP
    >>> html = render([("A", collect("exp_a")), ("B", collect("exp_b"))])  # doctest: +SKIP

Charts are Vega-Lite specs filled by DVC's own renderer (``dvc_render``) from the same templates
``dvc plots show`` uses (``templates/*.json`` and DVC's built-in ``simple``), drawn by the Vega libraries
inlined from ``plots_template.html``: no request leaves the page. With two versions, each chart shows both
(one panel or one colour per version, as ``dvc plots diff`` does) and each table sits beside its twin.
Every chart reports to ``window.evolforgeCharts`` (drawn, errors), which the browser test reads.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Callable

from evolforge.report.assets import library_scripts
from evolforge.report.collect import PAIRS_PER_ROUND, SCORE_FIELDS
from evolforge.report.spend import spend_html
from evolforge.report.summary import MAIN_SCORE

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


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def num(value: Any) -> str:
    if value is None:
        return '<td class="num missing">-</td>'
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>'
    return f'<td class="num">{esc(value)}</td>'


def pct(share: float | None) -> str:
    """A share (0-1) as a percentage cell."""
    return num(None) if share is None else f'<td class="num">{share:.1%}</td>'


def clip(text: str | None, limit: int = 400) -> str:
    text = text or ""
    return esc(text if len(text) <= limit else text[:limit] + " …")


def table(header: list[str], rows: list[str]) -> str:
    if not rows:
        return '<p class="missing">not built in this version</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def reasons(counts: dict[str, int]) -> str:
    return "<br>".join(f"{esc(r)}: {n}" for r, n in counts.items()) or ""


def funnel_table(v: dict) -> str:
    has_clean = any(r["clean"] is not None for r in v["funnel"])
    header = ["round", "in", "evolved", "survival (evolved / in)", "failed", "failed by reason", "answered"] + \
             (["kept after dedup / decontamination", "removed by reason"] if has_clean else []) + ["judged", "selected"]
    rows = []
    for r in v["funnel"]:
        cells = [num("seed" if r["round"] == 0 else r["round"]), num(r["in"]), num(r["evolved"]), pct(r["survival"]),
                 num(r["failed"]), f"<td>{reasons(r['failed_by_reason'])}</td>", num(r["answered"])]
        if has_clean:
            cells += [num(r["clean"]), f"<td>{reasons(r['removed_by_reason'])}</td>"]
        cells += [num(r["judged"]), num(r["selected"])]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return table(header, rows)


def levels_table(v: dict) -> str:
    levels = list(dict.fromkeys(r["level"] for r in v["levels"]))
    by_round: dict[int, dict[str, int]] = {}
    for r in v["levels"]:
        by_round.setdefault(r["round"], {})[r["level"]] = r["count"]
    rows = [f"<tr>{num('seed' if rnd == 0 else rnd)}{''.join(num(c.get(level, 0)) for level in levels)}"
            f"{num(sum(c.values()))}</tr>" for rnd, c in sorted(by_round.items())]
    return table(["round"] + levels + ["total"], rows)


def difficulty_table(v: dict) -> str:
    """The judge's scores per round (0-100): how many, their mean and quartiles."""
    rows = [f"<tr><td>{esc(SCORE_FIELDS[r['score']])} (<code>{esc(r['score'])}</code>)</td>"
            f"{num('seed' if r['round'] == 0 else r['round'])}{num(r['judged'])}{num(r['scored'])}"
            f"{''.join(num(r[k]) for k in ('mean', 'min', 'q1', 'median', 'q3', 'max'))}</tr>" for r in v["difficulty"]]
    return table(["judge score", "round", "judged", "scored", "mean", "min", "Q1", "median", "Q3", "max"], rows)


def judgement(side: dict) -> str:
    """A judged item's score and level as a cell ("-" when it was not judged: removed before, or not answered)."""
    if side.get("score") is None and side.get("level") is None:
        return num(None)
    score = f"{side['score']:.1f}" if isinstance(side.get("score"), float) else esc(side.get("score"))
    return f'<td class="num">{score}<br><span class="from">{esc(side.get("level"))}</span></td>'


def with_input(row: dict) -> str:
    return (row.get("instruction") or "") + (("\n\n" + row["input"]) if row.get("input") else "")


def pairs_html(v: dict) -> str:
    """Each round's sampled survivors beside the instruction they rewrote."""
    rows = []
    for r in v["pairs"]:
        parent = r["parent"] or {}
        origin = "seed" if parent.get("round") == 0 else f"round {parent['round']}" if parent else "not found"
        rows.append(f"<tr>{num(r['round'])}<td><code>{esc(r['method'])}</code></td>"
                    f"<td class='text'><span class='from'>{esc(origin)}</span>\n{clip(with_input(parent))}</td>"
                    f"<td class='text'>{clip(with_input(r))}</td>{judgement(parent)}{judgement(r)}</tr>")
    field = next((r["score_field"] for r in v["pairs"] if r["score_field"]), None)
    judge = f"{SCORE_FIELDS[field]}, level" if field else "judge"
    return table(["round", "method", "parent", "evolved", f"{judge}: parent", f"{judge}: evolved"], rows)


def summary_html(v: dict) -> str:
    """The headline figures (``metrics/summary.json``, the columns ``dvc exp show`` compares)."""
    h = v["headline"]
    rows = [f"<tr><td><code>surv.{esc(r)}</code></td>{pct(s)}<td>survival: share of round {esc(r[1:])}'s attempts "
            f"that passed the elimination rules</td></tr>" for r, s in h["surv"].items()]
    sel, what = h["sel"], {"n": "items selected", "diff": "mean judge difficulty score of the selection (0-100)",
                           "icifd": "mean IC-IFD of the selection"}
    rows += [f"<tr><td><code>sel.{k}</code></td>{num(sel.get(k))}<td>{esc(what[k])}</td></tr>" for k in what]
    rows += [f"<tr><td><code>ev.{esc(task)}</code></td>{num(score)}<td>the fine-tuned model's {esc(task)} "
             f"{esc(MAIN_SCORE.get(task, 'score'))}</td></tr>" for task, score in h["ev"].items()]
    rows.append(f"<tr><td><code>cost.usd</code></td>{num(h['cost']['usd'])}<td>LLM spend (- : no prices set)</td></tr>")
    return table(["metric", "value", "what"], rows)


def checks_html(v: dict) -> str:
    """The answers that have an answer check (the seeds that carry one): passed or not, and why."""
    rows_in = v.get("answer_checks") or []
    if not rows_in:
        return '<p class="missing">no answered item has an answer check in this version (seeds without `check`)</p>'
    passed = sum(bool(r["passed"]) for r in rows_in)
    kinds: dict[str, list[int]] = {}
    for r in rows_in:
        kinds.setdefault(r["kind"], [0, 0])
        kinds[r["kind"]][0] += bool(r["passed"])
        kinds[r["kind"]][1] += 1
    line = (f"<p><b>Answer checks: {passed} of {len(rows_in)} answers pass</b> ("
            + ", ".join(f"{esc(k)} {p} of {n}" for k, (p, n) in sorted(kinds.items()))
            + "); items without a check are not counted.</p>")
    rows = [f"<tr>{num('seed' if r['round'] == 0 else r['round'])}<td>{esc(r['kind'])}</td>"
            f"<td class='{'evolved' if r['passed'] else 'failed'}'>{'passed' if r['passed'] else 'failed'}</td>"
            f"<td>{esc(r['detail'])}</td><td>{'yes' if r['selected'] else 'no'}</td>"
            f"<td class='text'>{clip(r['instruction'], 200)}</td><td class='text'>{clip(r['output'], 300)}</td></tr>"
            for r in rows_in]
    return line + table(["round", "check", "result", "detail", "selected", "instruction", "answer"], rows)


def optimize_html(v: dict) -> str:
    """Auto Evol-Instruct's loop (metrics/optimize.json): each step's candidates with their development-set
    failure rates, the one chosen, and the chosen method beside the initial one as a diff."""
    m = v.get("optimize_metrics") or {}
    if not m:
        return '<p class="missing">no optimize metrics in this version</p>'
    if m.get("skipped"):
        return f"<p>optimize skipped: {esc(m.get('reason'))}</p>"
    dev = m.get("dev_size")
    head = (f"<p>initial method: fails {esc(m.get('initial_failures'))} of {esc(dev)} development items; "
            f"chosen method: fails {esc(m.get('best_failures'))} of {esc(dev)}; "
            f"{esc(m.get('parseable_candidates'))} of "
            f"{esc(m.get('candidates_proposed'))} candidates parsed over {esc(m.get('steps_run'))} step(s) "
            f"(stop: {esc(m.get('stop_reason'))})"
            f"{'; fallback: ' + esc(m.get('fallback')) if m.get('fallback') else ''}.</p>")
    rows = []
    for step in m.get("loop") or []:
        for c in step["candidates"]:
            chosen = "chosen" if step["chosen"] == c["index"] else ""
            parsed = "yes" if c["parsed"] else esc(c["parse_error"])
            rows.append(f"<tr>{num(step['step'])}{num(c['index'])}<td>{parsed}</td>"
                        f"{num(c['failures'])}{num(c['failure_rate'])}<td>{chosen}</td>"
                        f"{num(step['current_failure_rate'])}{num(step['best_failure_rate'])}</tr>")
    steps = table(["step", "candidate", "parsed", "dev failures", "failure rate", "", "current rate after the step",
                   "best rate so far"], rows)
    diff = m.get("method_diff")
    shown = (f"<h4>chosen method vs initial method</h4><pre class='text'>{esc(diff)}</pre>" if diff
             else "<p>the chosen method is the initial one (no candidate failed the development set less often)</p>")
    return head + steps + shown


def minutes_html(v: dict) -> str:
    """Where the minutes went: each stage's wall seconds (metrics/summary.json ``wall``) and its share."""
    wall = dict((v.get("headline") or {}).get("wall") or {})
    total = wall.pop("total", None)
    if not wall:
        return '<p class="missing">no stage recorded its wall time in this version</p>'
    rows = [f"<tr><td>{esc(stage)}</td>{num(round(s, 1))}{num(round(s / 60, 2))}"
            f"{pct(s / total if total else None)}</tr>"
            for stage, s in sorted(wall.items(), key=lambda kv: -kv[1])]
    rows.append(f"<tr><td><b>total</b></td>{num(total)}{num(round(total / 60, 2) if total else None)}{pct(1.0)}</tr>")
    return table(["stage", "seconds", "minutes", "share"], rows)


def examples_table(v: dict, which: str) -> str:
    rows = []
    for e in v["examples"].get(which, []):
        instruction = e.get("instruction", "") + (("\n\n" + e["input"]) if e.get("input") else "")
        rows.append(f"<tr>{num(e.get('ic_ifd'))}{num(e.get('ifd'))}{num(e.get('round'))}<td>{esc(e.get('difficulty_level'))}</td>"
                    f"<td class='text'>{clip(instruction)}</td><td class='text'>{clip(e.get('output'))}</td></tr>")
    return table(["IC-IFD", "IFD", "round", "level", "instruction", "response"], rows)


def eval_table(v: dict) -> str:
    ev = v["eval"] or {}
    base, tuned = ev.get("base") or {}, ev.get("finetuned") or {}
    rows = []
    for key in sorted(set(base) | set(tuned)):
        if key.endswith("/n"):
            continue
        b, t = base.get(key), tuned.get(key)
        delta = t - b if isinstance(b, (int, float)) and isinstance(t, (int, float)) else None
        rows.append(f"<tr><td>{esc(key)}</td>{num(b)}{num(t)}{num(delta)}{num(sample_size(key, base, tuned))}</tr>")
    skipped = ev.get("skipped") or {}
    note = "".join(f"<p>skipped {esc(k)}: {esc(r)}</p>" for k, r in skipped.items())
    return table(["metric", "base", "fine-tuned", "difference", "items (n)"], rows) + note


def sample_size(key: str, base: dict, tuned: dict) -> str | None:
    """Items behind a benchmark's score (``<task>/n``), as ``n`` or ``base n / tuned n`` when they differ: a
    difference of 0.25 on 4 items is one item."""
    task = key.split("/", 1)[0]
    nb, nt = base.get(f"{task}/n"), tuned.get(f"{task}/n")
    if nb is None or nt is None or nb == nt:
        return nt if nt is not None else nb
    return f"{nb} / {nt}"


def scenario_html(v: dict) -> str:
    """Which pool went on to dedup (``metrics/pool.json``, stage pick_scenario)."""
    pool = v["metrics"].get("pool")
    if not pool:
        return '<p class="missing">no pick_scenario metrics in this version</p>'
    rows = [f"<tr><td>{esc(k)}</td><td>{esc(pool.get(k))}</td></tr>"
            for k in ("scenario", "source", "items", "autoif_items", "fallback") if k in pool]
    per_method = pool.get("per_method") or {}
    if per_method:
        rows.append(f"<tr><td>items per method</td><td>{reasons(per_method)}</td></tr>")
    return table(["", "value"], rows)


def compare_table(v: dict) -> str:
    """The pairwise judge's verdicts on the held-out prompts (``metrics/compare.json``, stage compare)."""
    cmp = v["metrics"].get("compare")
    if not cmp:
        return '<p class="missing">no compare metrics in this version</p>'
    rows = [f"<tr><td>{esc(cmp.get('against'))}</td>{num(cmp.get('items'))}{num(cmp.get('win'))}{num(cmp.get('tie'))}"
            f"{num(cmp.get('lose'))}{num(cmp.get('unjudged'))}{num(cmp.get('win_rate'))}{num(cmp.get('lose_rate'))}"
            f"<td>{esc('both' if cmp.get('both_orders') else 'one')}</td></tr>"]
    return table(["fine-tuned vs", "judged", "win", "tie", "lose", "unjudged", "win rate", "lose rate",
                  "answer orders judged"], rows)


def chains_html(v: dict) -> str:
    if not v["chains"]:
        return '<p class="missing">no seed or rounds in this version</p>'
    out = []
    for chain in v["chains"]:
        items = []
        for s in chain:
            tag = f"<span class='{esc(s['status'])}'>{esc(s['status'])}</span>"
            if s.get("failure_reason"):
                tag += f" ({esc(s['failure_reason'])})"
            extra = ", ".join(f"{k} {s[k]:.3g}" if isinstance(s.get(k), float) else f"{k} {esc(s[k])}"
                              for k in ("difficulty_level", "ic_ifd") if s.get(k) is not None)
            sel = " <span class='sel'>selected</span>" if s.get("selected") else ""
            label = "seed" if s["round"] == 0 else f"round {s['round']}"
            items.append(f"<li>{label} · <code>{esc(s['method'])}</code> · {tag}{' · ' + extra if extra else ''}{sel}"
                         f"<div class='text'>{clip(s['instruction'], 300)}</div></li>")
        out.append(f"<ol class='chain' start='0'>{''.join(items)}</ol>")
    return "".join(out)


def provenance_html(v: dict) -> str:
    rows = []
    for p in v["provenance"]:
        hashes = "<br>".join(f"{esc(n)}: <code>{esc(h)}</code>" for n, h in sorted(p["template_hashes"].items()))
        identity = esc(json.dumps(p["identity"], sort_keys=True)) if p["identity"] else ""
        rows.append(f"<tr><td>{esc(p['stage'])}</td><td>{esc(p['model'])}</td><td><code>{identity}</code></td><td>{hashes}</td></tr>")
    out = table(["stage", "model", "identity", "prompt template hashes"], rows)
    if v["identities"]:
        ids = [f"<tr><td>{esc(role)}</td><td>{esc(i.get('backend'))}</td><td>{esc(i.get('model'))}</td>"
               f"<td>{esc(i.get('revision'))}</td><td><code>{esc(i.get('identity'))}</code></td></tr>"
               for role, i in sorted(v["identities"].items()) if isinstance(i, dict)]
        out += "<h4>models/identity.json</h4>" + table(["role", "backend", "model", "revision", "identity"], ids)
    return out


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
        ("Evolution and optimization", "", charts_html(versions, ["evolve_failures", "optimize"])),
        ("Auto Evol-Instruct's optimization loop", "each step's candidate methods, their failure rates on the "
         "development "
         "set, the one chosen, and the chosen method against the initial one", side_by_side(versions, optimize_html)),
        ("Evolved instructions beside their parents", f"up to {PAIRS_PER_ROUND} surviving rewrites per round (the same "
         "seeds' lineages in every round), the method used, and the judge's score and level of both",
         side_by_side(versions, pairs_html)),
        ("Difficulty per round", "judge labels (counts) and their share per round; the judge's 0-100 scores per round "
         "(box: quartiles, whiskers: min and max, dark line: median)",
         side_by_side(versions, levels_table) + side_by_side(versions, difficulty_table)
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
