"""Benchmark: calibrate the verify step's judge method (everything neither code nor a number) on a labelled set.

``bench/data/judge_labelled.jsonl`` holds prose tasks of the kinds the demo evolves (idioms, facts, SQL, summaries,
explanations, constrained writing, translations), each with one answer labelled ``right`` or ``wrong`` by hand:
most written for this bench, the wrong ones of the kinds a small model writes (a tautology, a false fact, an answer
that ignores the task's constraint, a question asked back); those with a ``source`` are answers the demo's
responder wrote in a shipped run, the items its judge method had to decide. The judge role of ``--params`` judges each
pair as the verify step does (:func:`evolforge.steps.verify.methods.verify_judged`, ``params.yaml verify``), and the
bench prints, for each threshold on P(right), how many answers would be called right and how many of those are
labelled right (precision), and what share of the wrong answers it keeps out; the same with the judge's reason
required to agree (its first word not "Wrong"). ``verify.right_at`` is set from that table: the lowest threshold at
which at least ``--min-called`` answers are called right and ``--precision`` of them are right (:func:`recommended`);
where none is, ``null``: the judge cannot vouch for an answer and says ``unsure`` rather than ``right``
(docs/explanation/verification.md "The judge method, calibrated"). Every call goes through the call cache.

    PYTHONPATH=src python bench/judge_calibration.py [--params params.yaml] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from pathlib import Path

from evolforge.config.loader import load_section, read_params
from evolforge.config.runtime import load_llm_params
from evolforge.core.prompts import PromptLibrary
from evolforge.llm.cache import open_cache
from evolforge.llm.cached import open_role
from evolforge.steps.verify.methods import Item, verify_judged
from evolforge.steps.verify.settings import VerifySettings

REPO = Path(__file__).resolve().parents[1]
LABELLED = REPO / "bench" / "data" / "judge_labelled.jsonl"
THRESHOLDS = (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 0.9)
PRECISION = 0.9  # of the answers the judge calls right, the share that must be right to train on them
MIN_CALLED = 10  # answers called right, at least, for that share to be a measurement


def labelled(path: Path = LABELLED) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def table(rows: list[dict], p_right: list[float | None], reason_says: list[str | None]) -> list[dict]:
    """Per threshold: answers called right, precision, recall of the right ones, share of the wrong ones kept out;
    alone and with the reason agreeing."""
    out = []
    right = [r["label"] == "right" for r in rows]
    for t in THRESHOLDS:
        for agree in (False, True):
            called = [p is not None and p >= t and (not agree or said != "wrong")
                      for p, said in zip(p_right, reason_says)]
            hits = sum(c and r for c, r in zip(called, right))
            out.append({"threshold": t, "reason_agrees": agree, "called_right": sum(called),
                        "precision": hits / sum(called) if any(called) else None,
                        "recall_right": hits / sum(right) if any(right) else None,
                        "wrong_kept_out": sum(not c for c, r in zip(called, right) if not r) / right.count(False)})
    return out


def recommended(figures: list[dict], precision: float = PRECISION, min_called: int = MIN_CALLED) -> float | None:
    """``verify.right_at`` from :func:`table`'s ``figures``: the lowest threshold at which P(right) alone calls at
    least ``min_called`` answers right and at least ``precision`` of them are right; None where no threshold does.

    >>> recommended([{"threshold": 0.5, "reason_agrees": False, "called_right": 12, "precision": 0.75},
    ...              {"threshold": 0.6, "reason_agrees": False, "called_right": 10, "precision": 0.9}])
    0.6
    """
    return next((f["threshold"] for f in figures if not f["reason_agrees"] and f["called_right"] >= min_called
                 and f["precision"] is not None and f["precision"] >= precision), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--prompts", default=str(REPO / "prompts"))
    ap.add_argument("--json", help="write the table and per-item probabilities here")
    ap.add_argument("--precision", type=float, default=PRECISION, help="asked of the answers called right")
    ap.add_argument("--min-called", type=int, default=MIN_CALLED, help="answers called right, at least")
    args = ap.parse_args()
    params = copy.deepcopy(read_params(args.params))
    rows = labelled()
    llms = load_llm_params(params, ("judge",))
    judge = open_role(llms.roles["judge"], open_cache(llms.cache), llms.llm, str(REPO / "models" / "identity.json"))
    settings = dataclasses.replace(load_section(params, "verify", VerifySettings))
    results = verify_judged([Item(r["task"], r["task"], "", r["answer"]) for r in rows], judge, PromptLibrary(args.prompts),
                            settings)
    evidence = [json.loads(r.evidence) for r in results]
    p_right = [e["p_right"] for e in evidence]
    said = [e["reason_says"] for e in evidence]
    figures = table(rows, p_right, said)
    print(f"{len(rows)} labelled answers ({sum(r['label'] == 'right' for r in rows)} right), judge {judge.label}")
    print("threshold  reason  called right  precision  right kept  wrong kept out")
    for f in figures:
        def pct(x):
            return "-" if x is None else f"{x:.1%}"
        print(f"{f['threshold']:>9}  {'agrees' if f['reason_agrees'] else 'any':>6}  {f['called_right']:>12}  "
              f"{pct(f['precision']):>9}  {pct(f['recall_right']):>10}  {pct(f['wrong_kept_out']):>14}")
    right_at = recommended(figures, args.precision, args.min_called)
    print(f"verify.right_at: {'null' if right_at is None else right_at} (precision {args.precision:.0%} "
          f"on at least {args.min_called} answers called right"
          f"{'; no threshold reaches it: the judge cannot vouch' if right_at is None else ''})")
    per_item = [{"id": r["id"], "kind": r["kind"], "label": r["label"], "p_right": p, "reason_says": s,
                 "reason": e["reason"]} for r, p, s, e in zip(rows, p_right, said, evidence)]
    for item in sorted(per_item, key=lambda i: -(i["p_right"] or 0)):
        print(f"  {item['p_right'] if item['p_right'] is None else round(item['p_right'], 3)!s:>6}  {item['label']:>5}  "
              f"{item['reason_says'] or '-':>5}  {item['id']}")
    if args.json:
        chosen = {"right_at": right_at, "precision": args.precision, "min_called": args.min_called}
        counts = {"answers": len(rows), "right": sum(r["label"] == "right" for r in rows),
                  "from_runs": sum("source" in r for r in rows)}
        Path(args.json).write_text(json.dumps({"labelled": counts, "table": figures, "recommended": chosen,
                                               "per_item": per_item}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
