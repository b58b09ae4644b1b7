"""The evolver analyses of the SLM paper (why small evolvers win), to compare two evolvers on the same seeds.

1. **Top-token probability** (paper Fig. 5; reference ``get_response_prob.py``): evolve greedily and record
   the probability of each chosen token over the first ``first_tokens`` generated tokens. Greedy decoding
   picks the most likely token, so this is the top-token probability; a flatter distribution (more mass
   below 1) means a less over-confident evolver with a larger space of possible instructions.
2. **Distinct method keywords** (paper §3.3, Fig. 18): sample the Auto Evol-Instruct prompt, keep its
   Step-1 methods list, turn each method line into one keyword phrase with the judge, count distinct ones.
   The paper lets a 72B model merge near-synonyms; here keywords are merged only when they are equal
   after lower-casing and dropping punctuation (:func:`keyword_key`).

>>> method_lines("Step 1 #Methods List#:\\n1. Add a constraint\\n- Ask for reasoning\\nStep 2 #Plan#: do it")
['Add a constraint', 'Ask for reasoning']
>>> keyword_key("  Adding Constraints. ")
'adding constraints'
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from pathlib import Path
from typing import Any, Sequence

from evolforge.core.models import load_causal_lm, load_tokenizer
from evolforge.steps.evolve.settings import EvolveSection
from evolforge.steps.evolver_analysis.settings import AnalysisSettings
from evolforge.steps.optimize.settings import OptimizeSettings
from evolforge.core.prompts import PromptLibrary
from evolforge.io.records import read_table
from evolforge.core.stage import Outputs
from evolforge.llm.cached import LLM, open_llm
from evolforge.steps.common.llms import RoleLLMs
from evolforge.steps.common.evolving import assign_methods, evolving_prompt, initial_method_text

KEYWORD_TEMPLATE = "judge/method_keyword.j2"
_STEP2 = re.compile(r"step\s*2\s*#?\s*plan", re.IGNORECASE)
_MARKER = re.compile(r"^\s*(?:[-*\u2022]|\(?\d{1,3}[.):]|[a-z][.)])\s*")


def top_token_probs(model, tokenizer, prompts: Sequence[str], max_tokens: int = 32, first_tokens: int | None = 5,
                    batch_size: int = 8) -> list[list[float]]:
    """Per prompt (a user turn, rendered with the chat template), the probability of each greedily chosen
    token, for the first ``first_tokens`` tokens (up to and including the end-of-turn token)."""
    import torch

    stop = {tokenizer.eos_token_id, *_as_list(getattr(model.generation_config, "eos_token_id", None))} - {None}
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    tokenizer.padding_side = "left"  # new tokens must follow every row's last real token
    out: list[list[float]] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        with torch.inference_mode():
            gen = model.generate(**batch, do_sample=False, max_new_tokens=max_tokens, output_logits=True,
                                 return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id,
                                 temperature=None, top_p=None, top_k=None)
        # raw logits (no processors): softmax gives the model's own distribution at each step
        probs = torch.stack([torch.softmax(step.float(), dim=-1) for step in gen.logits], dim=1)  # batch, steps, vocab
        chosen = gen.sequences[:, batch["input_ids"].shape[1]:]
        picked = probs.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
        for row, tokens in zip(picked.tolist(), chosen.tolist()):
            keep = []
            for p, t in zip(row, tokens):
                keep.append(p)
                if t in stop:
                    break
            out.append(keep if first_tokens is None else keep[:first_tokens])
    return out


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def histogram(values: Sequence[float], bins: int = 10) -> list[dict[str, float]]:
    """Counts and shares of ``values`` in ``bins`` equal bins over [0, 1] (1.0 falls in the last bin)."""
    counts = [0] * bins
    for v in values:
        counts[min(int(v * bins), bins - 1)] += 1
    n = len(values)
    return [{"bin_low": round(i / bins, 6), "count": c, "share": c / n if n else 0.0} for i, c in enumerate(counts)]


def method_lines(text: str) -> list[str]:
    """The Step-1 methods of an Auto Evol-Instruct answer: lines before "Step 2 #Plan#", without lines naming
    Step 1 or the Methods List, list markers removed."""
    head = _STEP2.split(text, maxsplit=1)[0]
    lines = []
    for line in head.splitlines():
        if "step 1" in line.lower() or "method list" in line.lower() or "methods list" in line.lower():
            continue
        cleaned = _MARKER.sub("", line).strip()
        if cleaned:
            lines.append(cleaned)
    return lines


def keyword_key(text: str) -> str:
    """A keyword phrase compared for distinctness: first line, lower case, punctuation and extra spaces removed."""
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", first)).strip().lower()


def method_keywords(evolver: LLM, judge: LLM, prompts: PromptLibrary, evolving_prompts: Sequence[str],
                    keyword_max_tokens: int = 16) -> dict[str, Any]:
    """Sample the evolver on each evolving prompt (its role's sampling), extract method lines and one keyword
    per line (judge, greedy); return counts and the distinct keywords."""
    answers = evolver.complete([evolver.request([{"role": "user", "content": p}]) for p in evolving_prompts],
                               desc="evolver methods")
    methods = [m for a in answers for m in method_lines(a)]
    requests = [judge.request([{"role": "user", "content": prompts.render(KEYWORD_TEMPLATE, method=m)}],
                              temperature=0.0, max_tokens=keyword_max_tokens) for m in methods]
    keywords = [keyword_key(k) for k in judge.complete(requests, desc="method keywords")]
    distinct = sorted({k for k in keywords if k})
    return {"answers": len(answers), "answers_with_methods": sum(1 for a in answers if method_lines(a)),
            "method_lines": len(methods), "distinct_keywords": len(distinct), "keywords": distinct}


def run(seed: str | Path, cfg: AnalysisSettings, evolve: EvolveSection, optimize: OptimizeSettings, llms: RoleLLMs,
        prompts: PromptLibrary) -> Outputs:
    """Both analyses on the first ``evolver_analysis.items`` seeds of ``seed``, for roles.evolver and each model
    of ``evolver_analysis.evolvers``: Evol-Instruct prompts with the paper's method rotation (round 1,
    ``evolve.breadth``) for the top-token probabilities, the Auto Evol-Instruct initial method
    (``optimize.initial_method``) for the keywords, named by roles.judge (``llms``)."""
    table = read_table(seed).head(cfg.items)
    seeds = table["instruction"].to_list()
    methods = assign_methods(table["root_id"].to_list(), 1, "round_robin",
                             evolve.breadth, cfg.seed)
    evol_prompts = [evolving_prompt(prompts, m, q) for m, q in zip(methods, seeds)]
    method_text = initial_method_text(prompts, optimize.initial_method)
    auto_prompts = [evolving_prompt(prompts, "auto", q, method_text) for q in seeds]
    cache = llms.cache
    judge, evolver = llms["judge"], llms.role("evolver")
    roles = [evolver] + [dataclasses.replace(evolver, name=f"evolver_{i + 1}", model=m, revision=None)
                         for i, m in enumerate(cfg.evolvers or [])]
    metrics, plot = {"items": len(seeds), "first_tokens": cfg.first_tokens, "evolvers": {}}, []
    for role in roles:
        tokenizer = load_tokenizer(role.model, role.revision)
        model = load_causal_lm(role.model, role.revision, dtype=role.transformers.dtype,
                               device=role.transformers.device)
        probs = [p
                 for row in top_token_probs(model, tokenizer, evol_prompts,
                                            cfg.max_tokens, cfg.first_tokens) for p in row]
        del model
        # the paper samples the Auto Evol prompt at 0.7 / 0.95 for the methods lists
        sampler = open_llm(dataclasses.replace(role, temperature=0.7, top_p=0.95), cache, settings=llms.settings)
        keywords = method_keywords(sampler, judge, prompts, auto_prompts, cfg.keyword_max_tokens)
        metrics["evolvers"][role.model] = {
            "tokens": len(probs), "mean_top_prob": statistics.fmean(probs) if probs else None,
            "median_top_prob": statistics.median(probs) if probs else None,
            "share_above_0_9": sum(p > 0.9 for p in probs) / len(probs) if probs else None, **keywords}
        plot += [{"evolver": role.model, **row} for row in histogram(probs, cfg.bins)]
    return Outputs(metrics, "\n".join(f"evolver_analysis: {name}: mean top-token probability {m['mean_top_prob']}, "
                                       f"{m['distinct_keywords']} distinct keywords"
                                      for name, m in metrics["evolvers"].items()),
                   plot=plot)
