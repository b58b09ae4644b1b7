"""How often each stage's parser accepts a model's greedy answers, per prompt format.

Run on the tiny model (stage ``tiny_probe``), it shows that the offline pipeline walks both the success
and the failure paths: a share between 0 and 1 on a format means both occur.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import polars as pl

from evolforge.build import failures
from evolforge.build.judge import parse_level, parse_score
from evolforge.llm import LLM, ChatRequest
from evolforge.llm.hf import HFBackend
from evolforge.build.optimize import parse_optimized_method
from evolforge.core.prompts import PromptLibrary
from tiny import FEEDBACK


def probe(model_dir: str | Path, prompts_dir: str | Path, seeds_path: str | Path, n: int = 12) -> dict[str, float]:
    """Share of greedy answers that each stage's own parser accepts, per format, on ``n`` demo seeds."""
    prompts = PromptLibrary(prompts_dir)
    rows = pl.read_ndjson(seeds_path).head(n).to_dicts()
    method = prompts.render("optimize/initial_method.j2")
    def _messages(prompt: str | list[dict]) -> list[dict]:
        return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt

    checks: dict[str, tuple[Callable[[dict], str | list[dict]], Callable[[dict, str], bool]]] = {
        "evolve_depth": (lambda r: prompts.render("evolve/depth.j2", method="add_constraints", instruction=r["instruction"]),
                         lambda r, t: failures.instruction_failure(r["instruction"], t) is None),
        "evolve_auto": (lambda r: prompts.render("optimize/evolve_with_method.j2", method=method, instruction=r["instruction"]),
                        lambda r, t: failures.parse_final_instruction(t) is not None),
        "respond": (lambda r: prompts.render("respond/response.j2", instruction=r["instruction"], input=r.get("input") or ""),
                    lambda r, t: failures.response_failure(t) is None),
        "judge_level": (lambda r: prompts.render("judge/difficulty_level.j2", query=r["instruction"]),
                        lambda r, t: parse_level(t)[0] is not None),
        "judge_score": (lambda r: prompts.render("judge/difficulty_score.j2", query=r["instruction"]),
                        lambda r, t: parse_score(t)[0] is not None),
        "optimizer_method": (lambda r: _messages(prompts.render("optimize/analysis.j2", trajectory=json.dumps(
                                 [{"id": 0, "stage0": r["instruction"], "stage1": r["instruction"]}])))
                             + [{"role": "assistant", "content": FEEDBACK[0].format(i=0, j=0)}]
                             + _messages(prompts.render("optimize/optimization.j2", method=method)),
                             lambda r, t: parse_optimized_method(t)[0] is not None),
    }
    llm = LLM(HFBackend(str(model_dir)), cache=None, batch_size=32)
    report = {}
    for name, (render, ok) in checks.items():
        answers = llm.complete([ChatRequest.chat(_messages(render(r)), max_tokens=160)
                                for r in rows], desc=f"probe {name}")
        report[name] = sum(ok(r, t) for r, t in zip(rows, answers)) / len(rows)
    return report
