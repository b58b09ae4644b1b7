"""The report page's sections (:mod:`evolforge.report.page` lays them out): one HTML table or block per
part of a dataset version's collected data (:func:`evolforge.report.collect.collect`), and the cells they share.

Each builder takes one version's data and returns its HTML (a table, or a note in ``class="missing"`` when
the version lacks that part): the headline figures, the funnel per round, the scenario, the answer checks,
Auto Evol-Instruct's optimization loop, evolved instructions beside their parents, difficulty levels and
scores, the selected examples, the evaluation, the pairwise comparison, lineage chains, models and prompt
templates, and where the minutes went (the LLM spend's is :mod:`evolforge.report.spend`). Every value is
HTML-escaped (:func:`esc`).
"""

from __future__ import annotations

import html
import json
from typing import Any

from evolforge.report.collect import SCORE_FIELDS
from evolforge.report.summary import MAIN_SCORE


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


def harder_table(v: dict) -> str:
    """Per round, the seeds first: the share of the judged items the judge puts at hard or very hard and their mean
    expected score (metrics/evolve.json ``difficulty``), with the counts both rest on."""
    rows = [f"<tr><td>{esc(name)}</td>{num(r['judged'])}{num(r['levels'])}{num(r['top_two'])}{pct(r['top_two_share'])}"
            f"{num(r['mean_expected'])}</tr>" for name, r in v.get("harder", {}).items()]
    return table(["round", "judged", "levels parsed", "hard or very hard", "share", "mean expected score"], rows)


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
    sel, what = h["sel"], {"n": "items selected", "problems": "distinct problems among them (no two the same problem "
                           "by lineage or embedding distance; - : the same-problem walk is off)",
                           "diff": "mean expected judge difficulty of the selection (0-100)",
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


VERDICT_CLASS = {"right": "evolved", "wrong": "failed", "unsure": ""}


def verification_html(v: dict) -> str:
    """The verify stage: items per method and verdict over the pool, then each selected item's verification."""
    data = v.get("verification") or {}
    m = data.get("metrics") or {}
    if not m and not data.get("selected"):
        return '<p class="missing">no verify stage in this version: no answer was checked before selection</p>'
    per = m.get("per_method") or {}
    counts = [f"<tr><td>{esc(method)}</td>{''.join(num(n.get(k)) for k in ('right', 'wrong', 'unsure'))}</tr>"
              for method, n in per.items() if sum(n.values())]
    rows = [f"<tr><td><code>{esc(r['id'])}</code></td>{num('seed' if r['round'] == 0 else r['round'])}"
            f"<td>{esc(r['method'])}</td><td class='{VERDICT_CLASS.get(r['verdict'], '')}'>{esc(r['verdict'])}</td>"
            f"{num(r['confidence'])}<td>{clip(r['evidence'], 300)}</td>"
            f"<td class='text'>{clip(r['instruction'], 200)}</td><td class='text'>{clip(r['output'], 300)}</td></tr>"
            for r in data.get("selected") or []]
    return (table(["method", "right", "wrong", "unsure"], counts)
            + "<p>The selected items, one by one:</p>"
            + table(["id", "round", "method", "verdict", "confidence", "evidence", "instruction", "answer"], rows))


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
            notes = [n for n, on in (("written back unchanged", c.get("unchanged")),
                                     ("reply format kept", c.get("reply_format_kept")),
                                     (f"no evolving method: {c.get('not_a_method')}", c.get("not_a_method"))) if on]
            parsed = ("yes" + "".join(f"; {n}" for n in notes)) if c["parsed"] else esc(c["parse_error"])
            rows.append(f"<tr>{num(step['step'])}{num(c['index'])}<td>{parsed}</td>"
                        f"{num(c['failures'])}{num(c.get('measured'))}<td>{esc(c.get('cut') or '')}</td>"
                        f"<td>{chosen}</td>{num(step['current_failure_rate'])}{num(step['best_failure_rate'])}</tr>")
    rows = [f"<tr><td>file</td><td>{esc(c['name'])}</td><td>from the file: {esc(c['source'])}</td>{num(c['failures'])}"
            f"{num(c['measured'])}<td>{esc(c['cut'] or '')}</td>"
            f"<td>{'chosen' if m.get('file_chosen') == c['index'] else ''}</td><td></td><td></td></tr>"
            for c in m.get("file_candidates") or []] + rows  # optimize.candidates_file, measured before the steps
    steps = table(["step", "candidate", "parsed", "dev failures", "items measured", "stopped (racing)", "",
                   "current rate after the step", "best rate so far"], rows)
    diff = m.get("method_diff")
    shown = (f"<h4>chosen method vs initial method</h4><pre class='text'>{esc(diff)}</pre>" if diff
             else "<p>the chosen method is the initial one (no candidate failed the development set less often)</p>")
    warned = "".join(f"<p class='warning'>{esc(w)}</p>" for w in [*(m.get("warnings") or []),
                                                                   *([m["optimizer_limit"]] if m.get("optimizer_limit")
                                                                     else [])])
    return head + warned + steps + shown


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
            f"{num(cmp.get('identical'))}{num(cmp.get('lose'))}{num(cmp.get('unjudged'))}{num(cmp.get('win_rate'))}"
            f"{num(cmp.get('lose_rate'))}<td>{esc('both' if cmp.get('both_orders') else 'one')}</td></tr>"]
    return table(["fine-tuned vs", "pairs", "win", "tie", "of them identical answers", "lose", "unjudged",
                  "win rate", "lose rate", "answer orders judged"], rows)


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
