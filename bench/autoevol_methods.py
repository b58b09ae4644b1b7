"""Experiment: the Auto Evol-Instruct paper's own evolving methods (a strong optimizer's, step by step) measured on the
shipped development set with the shipped evolver, beside the initial method and Evol-Instruct's in-depth methods.

The paper's official repository publishes, for each of 9 optimization steps of a Llama-3-70B optimizer on GSM8K,
the evolving method of that step (``data/autoevol_llama3_optimizer.json``, ``evol_prompt``; entry 0 is the
paper's initial method). The repository states no licence (no LICENSE file, none in its README), so the file is not
shipped here: ``fetch`` downloads it at a pinned commit (or reads a local copy), checks its sha256 and writes it as a
candidates file, ``prompts/optimize/candidates/autoevol_llama3.yaml`` (git ignores it). ``measure`` then scores each
method in order -- this project's initial method, the 9 steps, and
``prompts/optimize/candidates/evol_in_depth.yaml`` -- exactly as the optimize stage scores a candidate
(:func:`evolforge.steps.optimize.scoring.measure`: the same development set, evolving call, failure rules), every
method on every item (no racing), judges the difficulty of each method's evolutions as the stage's
``judge_difficulty`` does, and merges the figures into ``docs/experiments/autoevol-methods.json`` with the
evolutions kept for reading. Methods are measured a few at a time (``--methods``), each run adding to the record,
the call cache answering what an earlier run asked; equal method texts (steps 1-3, steps 4-8) are the same requests.

    PYTHONPATH=src python bench/autoevol_methods.py fetch [--from path/to/autoevol_llama3_optimizer.json]
    PYTHONPATH=src python bench/autoevol_methods.py measure [--methods initial step_0 ...] [--params params.yaml]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import platform
import random
import time
import urllib.request
from pathlib import Path

import yaml

from evolforge.config.loader import load_section, read_params
from evolforge.config.runtime import load_llm_params
from evolforge.core.prompts import PromptLibrary
from evolforge.core.text import question_text
from evolforge.steps.common.difficulty import difficulty_scores
from evolforge.steps.common.evolving import initial_method_text
from evolforge.steps.common.llms import RoleLLMs
from evolforge.steps.evolve.settings import EvolveSection
from evolforge.steps.judge.settings import JudgeSettings
from evolforge.steps.optimize.dev import read_dev_pool
from evolforge.steps.optimize.method_file import read_methods
from evolforge.steps.optimize.scoring import FailureRules, measure, method_score
from evolforge.steps.optimize.settings import OptimizeSettings
from evolforge.steps.optimize.step import evolving_call

REPO = Path(__file__).resolve().parents[1]
REPOSITORY, COMMIT = "Zeng-WH/Auto-Evol-Instruct", "e26b08d90e4ddb1689210a36444c375034e1f7ec"
PATH = "data/autoevol_llama3_optimizer.json"
URL = f"https://raw.githubusercontent.com/{REPOSITORY}/{COMMIT}/{PATH}"
SHA256 = "abec3fb52b51e21b3ee148fc2e2ea77551d1d665e254b75a338bfec4dd42dddc"
LICENCE = "none stated: the repository has no LICENSE file and its README names none (checked at the commit)"
FETCHED = REPO / "prompts" / "optimize" / "candidates" / "autoevol_llama3.yaml"
IN_DEPTH = REPO / "prompts" / "optimize" / "candidates" / "evol_in_depth.yaml"
RECORD = REPO / "docs" / "experiments" / "autoevol-methods.json"
HEADING = "#Instruction#:"  # the reference code appends the instruction after it; the method template adds its own


def as_candidates(raw: bytes, sha256: str = SHA256) -> dict:
    """The published file as a candidates file: one method per step, ``step_<k>``, each ending before the
    ``#Instruction#:`` heading the reference code appends the instruction to (the method template adds it)."""
    digest = hashlib.sha256(raw).hexdigest()
    if digest != sha256:
        raise ValueError(f"{PATH}: sha256 {digest}, expected {sha256} (the file at {REPOSITORY}@{COMMIT[:7]})")
    methods = []
    for k, step in enumerate(json.loads(raw)):
        text = step["evol_prompt"].strip()
        if not text.endswith(HEADING):
            raise ValueError(f"{PATH}: entry {k}: evol_prompt does not end in {HEADING!r}")
        methods.append({"name": f"step_{k}", "method": text[:-len(HEADING)].strip(),
                        "source": f"{REPOSITORY}@{COMMIT[:7]} {PATH}, entry {k} (evol_prompt): the evolving method at "
                                  f"step {k} of a Llama-3-70B-Instruct optimizer on GSM8K; entry 0 is the paper's "
                                  f"initial method"})
    return {"about": f"{REPOSITORY} at {COMMIT}, {PATH} (sha256 {sha256}); licence: {LICENCE}; fetched by "
                     f"bench/autoevol_methods.py for local use, not redistributed", "methods": methods}


def fetch(source: str | None, out: Path = FETCHED) -> Path:
    """Write the candidates file from ``source`` (a local copy of the published file) or the pinned URL."""
    if source:
        raw = Path(source).read_bytes()
    else:
        with urllib.request.urlopen(URL, timeout=60) as response:  # noqa: S310 (a pinned https URL)
            raw = response.read()
    out.write_text("# Fetched by bench/autoevol_methods.py; not redistributed (see `about`).\n"
                   + yaml.safe_dump(as_candidates(raw), sort_keys=False, allow_unicode=True, width=120),
                   encoding="utf-8")
    return out


def methods_in_order(prompts: PromptLibrary, initial: str) -> list[dict]:
    """The methods the experiment measures, in its order: the initial one, the 9 steps (when fetched), the in-depth
    ones."""
    found = [{"name": "initial", "method": initial, "source": "prompts/optimize/initial_method.j2 (this project's "
                                                               "wording of the paper's initial method)"}]
    for path in (FETCHED, IN_DEPTH):
        if path.is_file():
            found += [{"name": m.name, "method": m.method, "source": m.source} for m in read_methods(path)]
    return found


def measure_methods(names: list[str] | None, params_path: Path, seed: Path, record_path: Path = RECORD) -> dict:
    params = read_params(params_path)
    settings = load_section(params, "optimize", OptimizeSettings)
    evolve, judge_settings = load_section(params, "evolve", EvolveSection), load_section(params, "judge", JudgeSettings)
    prompts = PromptLibrary(REPO / "prompts")
    llms = RoleLLMs(load_llm_params(params, ("evolver", "judge")))
    evolver, judge = llms["evolver"], llms["judge"]
    dev, _ = read_dev_pool(seed, settings, random.Random(settings.seed))  # the stage's development set
    call, rules = evolving_call(settings, evolve), FailureRules.of(settings.failure, evolve, prompts)
    inputs = [d.get("input") or "" for d in dev]
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {"methods": []}
    done = {m["name"]: m for m in record["methods"]}
    ordered = methods_in_order(prompts, initial_method_text(prompts, settings.initial_method))
    for m in ordered:
        if names and m["name"] not in names:
            continue
        start, cpu = time.perf_counter(), time.process_time()
        items = measure(evolver, prompts, dev, [(m["method"], k) for k in range(len(dev))], call=call, rules=rules,
                        desc=m["name"])
        score = method_score(items)
        queries = [question_text(it.evolution.instruction, x) for it, x in zip(items, inputs)
                   if it.evolution.instruction is not None]
        difficulty = [v for v in difficulty_scores(queries, judge, prompts, score_prompt=judge_settings.score_prompt,
                                                   max_tokens=judge_settings.max_tokens,
                                                   constrain=judge_settings.constrain,
                                                   probabilities=judge_settings.probabilities,
                                                   desc=f"{m['name']}: judge") if v is not None]
        digest = hashlib.sha256(m["method"].encode("utf-8")).hexdigest()
        done[m["name"]] = {
            "name": m["name"], "source": m["source"], "sha256": digest, "chars": len(m["method"]),
            "failures": score.failures, "failure_rate": score.failure_rate,
            "missing_marker": score.missing_marker, "cut_at_max_tokens": score.cut_at_max_tokens,
            "failures_by_reason": score.failures_by_reason,
            "difficulty": {"items": len(difficulty), "mean": sum(difficulty) / len(difficulty) if difficulty else None},
            "wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(time.process_time() - cpu, 1),
            "evolutions": [{"id": d["id"], "evolved": it.evolution.instruction, "failure": it.reason,
                            "answer_head": None if it.evolution.raw is None else it.evolution.raw[:240]}
                           for d, it in zip(dev, items)],
        }
        print(f"{m['name']}: fails {score.failures} of {len(dev)} {score.failures_by_reason}; difficulty "
              f"{done[m['name']]['difficulty']}", flush=True)
    seeds = [v for v in difficulty_scores([question_text(d["instruction"], x) for d, x in zip(dev, inputs)], judge,
                                          prompts, score_prompt=judge_settings.score_prompt,
                                          max_tokens=judge_settings.max_tokens, constrain=judge_settings.constrain,
                                          probabilities=judge_settings.probabilities, desc="seeds: judge")
             if v is not None]
    order = [m["name"] for m in ordered]
    methods = sorted(done.values(), key=lambda m: order.index(m["name"]) if m["name"] in order else len(order))
    first: dict[str, str] = {}
    for m in methods:  # an equal text is the same requests: the same figures, from the call cache
        m["same_as"] = first.setdefault(m["sha256"], m["name"])
        m["same_as"] = None if m["same_as"] == m["name"] else m["same_as"]
    record.update({
        "command": "PYTHONPATH=src python bench/autoevol_methods.py fetch && "
                   "PYTHONPATH=src python bench/autoevol_methods.py measure",
        "source": {"repository": REPOSITORY, "commit": COMMIT, "file": PATH, "sha256": SHA256, "licence": LICENCE},
        "cpu": platform.processor() or platform.machine(), "date": datetime.date.today().isoformat(),
        "evolver": evolver.label, "judge": judge.label,
        "settings": {"dev_size": len(dev), "failure": settings.failure, "evolver_temperature":
                     settings.evolver_temperature, "few_shot": evolve.few_shot, "missing_marker": evolve.missing_marker,
                     "method_max_tokens": call.max_tokens, "difficulty": "difficulty_expected"
                     if judge_settings.probabilities else "difficulty_score"},
        "dev": [{"id": d["id"], "instruction": d["instruction"]} for d in dev],
        "seeds_difficulty": {"items": len(seeds), "mean": sum(seeds) / len(seeds) if seeds else None},
        "methods": methods,
    })
    record_path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    got = sub.add_parser("fetch", help="write prompts/optimize/candidates/autoevol_llama3.yaml")
    got.add_argument("--from", dest="source", help="a local copy of the published file (default: download it)")
    run = sub.add_parser("measure", help="measure the methods and add them to the record")
    run.add_argument("--methods", nargs="*", help="names to measure (default: all, in order)")
    run.add_argument("--params", type=Path, default=REPO / "params.yaml")
    run.add_argument("--seed", type=Path, default=REPO / "data" / "seed", help="the seed stage's output")
    run.add_argument("--record", type=Path, default=RECORD)
    args = ap.parse_args()
    if args.command == "fetch":
        print(f"wrote {fetch(args.source)}")
    else:
        measure_methods(args.methods, args.params, args.seed, args.record)


if __name__ == "__main__":
    main()
