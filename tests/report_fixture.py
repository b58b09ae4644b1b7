"""A small dataset version laid out as the pipeline writes it, for the report and card tests.

Tables follow the stages' schemas (lineage columns, judge and score columns); metrics and plot data are
computed from those tables, so counts on the page can be checked against the fixture.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import polars as pl

from evolforge.steps.common.difficulty import LEVELS

from evolforge.steps.evolve.report import difficulty_per_round
from evolforge.steps.judge.step import level_distribution
from evolforge.io.records import make_id, write_json, write_output
from evolforge.score.histogram import histogram
from evolforge.steps.common.layout import Layout, stage_flags

REPO = Path(__file__).resolve().parents[1]
# where the report and the card read a version's artifacts: the paths dvc.yaml's report and select stages give
REPORT = Layout.from_flags(stage_flags("report", REPO / "dvc.yaml"))
CARD = Layout.from_flags(stage_flags("select", REPO / "dvc.yaml"), clean="items")
METHODS = ["add_constraints", "deepening", "concretizing", "increase_reasoning", "breadth"]
REASONS = ["missing_final_marker", "unchanged", "copied_template_words"]


def build_version(root: Path, seed: int = 0, n_seeds: int = 24, rounds: int = 3, fraction: float = 0.3) -> dict:
    """Write data/ and metrics/ of one version under ``root``; return the expected counts."""
    rng = random.Random(seed)
    # markup in every instruction: the page must show it as text (escaped), never as HTML
    seeds = [{"instruction": f"Seed task {i}: explain <b>topic {i}</b> & its history.", "input": "", "output": f"Answer {i}."}
             for i in range(n_seeds)]
    seed_rows = [{"id": make_id(s["instruction"]), "root_id": make_id(s["instruction"]), "parent_id": None, "round": 0,
                  "method": "seed", "status": "seed", "failure_reason": None, **s} for s in seeds]
    seed_table = pl.DataFrame(seed_rows, schema_overrides={"parent_id": pl.String, "failure_reason": pl.String})
    write_output(root / "data" / "seed", seed_table, meta={"settings": {"source": "data/seeds/demo.jsonl", "limit": n_seeds}})
    pool, evolved_rows, expected = seed_rows, [], {"failed": {}, "evolved": {}}
    for k in range(1, rounds + 1):
        rows, next_pool = [], []
        for parent in pool:
            failed = rng.random() < 0.2
            text = parent["instruction"] + f" Then add step {k}."
            row = {"id": make_id(parent["id"], k, text), "root_id": parent["root_id"], "parent_id": parent["id"], "round": k,
                   "method": rng.choice(METHODS), "status": "failed" if failed else "evolved",
                   "failure_reason": rng.choice(REASONS) if failed else None, "instruction": text, "input": "",
                   "output": "", "evolve_template_hash": "t" * 16, "evolver_model": "evolver-model"}
            rows.append(row)
            next_pool.append(parent if failed else row)  # on_failure: keep_parent
        table = pl.DataFrame(rows, schema_overrides={"failure_reason": pl.String})
        write_output(root / "data" / "evolved" / f"round_{k}", table,
                     meta={"round": f"round_{k}", "model": "evolver-model", "model_identity": {"weights_sha256": "e" * 64},
                           "template_hashes": {"evolve/depth.j2": "d" * 16, "evolve/breadth.j2": "b" * 16},
                           "settings": {"strategy": "evol", "on_failure": "keep_parent"}, "requested_strategy": "evol"})
        expected["failed"][k] = sum(r["status"] == "failed" for r in rows)
        expected["evolved"][k] = sum(r["status"] == "evolved" for r in rows)
        evolved_rows += [r for r in rows if r["status"] == "evolved"]
        pool = next_pool
    responses = pl.DataFrame([{**r, "output": f"Response to: {r['instruction']}"} for r in evolved_rows],
                             schema_overrides={"failure_reason": pl.String})
    for folder in ("responses", "pool"):  # pick_scenario copies the evol branch to data/pool
        write_output(root / "data" / folder, responses,
                     meta={"model": "responder-model", "model_identity": {"weights_sha256": "r" * 64}, "template_hash": "p" * 16})
    judged = responses.select("id", "round").with_columns(
        difficulty_level=pl.Series([rng.choice(LEVELS) for _ in range(responses.height)]),
        difficulty_score=pl.Series([float(rng.randint(0, 100)) for _ in range(responses.height)]),
        difficulty_expected=pl.Series([round(rng.uniform(20, 80), 2) for _ in range(responses.height)]))  # judge.probabilities
    write_output(root / "data" / "judged", judged, meta={"model": "judge-model", "model_identity": {"weights_sha256": "j" * 64},
                                                         "template_hashes": {"judge/difficulty_level.j2": "l" * 16}})
    scores = responses.select("id", "round").with_columns(
        ifd=pl.Series([rng.uniform(0.4, 1.2) for _ in range(responses.height)]),
        ic_ifd=pl.Series([rng.uniform(0.05, 0.6) for _ in range(responses.height)]),
        mnd=pl.Series([rng.uniform(0.0, 0.4) for _ in range(responses.height)]))
    write_output(root / "data" / "scores", scores, meta={"scorer": {"weights_sha256": "s" * 64}, "settings": {"template": "raw"}})
    table = responses.join(judged.drop("round"), on="id").join(scores.drop("round"), on="id")
    n = max(1, int(fraction * table.height))
    selected = table.sort(["ic_ifd", "id"], descending=[True, False]).head(n)
    write_output(root / "data" / "selected", selected, meta={"settings": {"metric": "ic_ifd", "top_fraction": fraction}})

    metrics = root / "metrics"
    per_round = {f"round_{k}": {"round": f"round_{k}", "in": n_seeds, "evolved": expected["evolved"][k],
                                "failed": expected["failed"][k]} for k in range(1, rounds + 1)}
    write_json(metrics / "evolve.json", {**per_round, "total": {key: sum(r[key] for r in per_round.values())
                                                                for key in ("in", "evolved", "failed")},
                                         "difficulty": difficulty_per_round(root / "data" / "judged", {
                                             k: f"round_{k}" for k in range(1, rounds + 1)})})
    write_json(metrics / "select.json", {"metric": "ic_ifd", "items": table.height, "selected": n,
                                         "distinct_problems_selected": n})
    rounds_table = pl.concat([pl.read_parquet(root / "data" / "evolved" / f"round_{i}" / "items.parquet") for i in range(1, rounds + 1)])
    failures = rounds_table.filter(pl.col("failure_reason").is_not_null()).group_by(["round", "failure_reason"]).len()
    write_json(metrics / "plots" / "evolve_failures.json",
               [{"round": k, "reason": r, "count": c} for k, r, c in sorted(failures.iter_rows())])
    for col in ("ifd", "ic_ifd", "mnd"):
        write_json(metrics / "plots" / f"{col}_hist.json", histogram(scores[col].to_list()))
    write_json(metrics / "plots" / "data_quality.json",  # as the decontaminate stage writes it
               [{"round": k, "reason": r, "count": c} for k in range(1, rounds + 1)
                for r, c in (("near-duplicate", k), ("contaminated", 1))])
    # the small metrics of the other stages, in the shapes those stages write
    benchmarks = {"gsm8k/exact_match_flexible": 0.2, "ifeval/prompt_level_strict_acc": 0.4, "humaneval/pass@1": 0.25}
    write_json(metrics / "eval_base.json", {"base": benchmarks, "skipped": {}})
    write_json(metrics / "eval.json", {"finetuned": {k: v + 0.05 for k, v in benchmarks.items()}, "skipped": {}})
    steps = [{"step": 0, "failure_rate": 0.5, "best_failure_rate": 0.5}, {"step": 1, "failure_rate": 0.25, "best_failure_rate": 0.25}]
    write_json(metrics / "pool.json", {"scenario": "evol", "source": "data/responses", "items": table.height,
                                       "autoif_items": 0, "fallback": None, "per_method": {"seed": table.height}})
    write_json(metrics / "compare.json", {"against": "base", "items": 10, "win": 6, "tie": 3, "identical": 2, "lose": 1, "unjudged": 0,
                                          "win_rate": 0.6, "lose_rate": 0.1, "both_orders": True})
    write_json(metrics / "optimize.json", {"skipped": False, "per_step": steps, "steps_run": 1, "stop_reason": "steps"})
    write_json(metrics / "plots" / "optimize.json", steps)
    curve = [{"step": s, "loss": 2.0 - 0.2 * s} for s in range(1, 7)]
    write_json(metrics / "train.json", {"train_loss": 1.5, "steps": len(curve)})
    write_json(metrics / "plots" / "train_loss.json", curve)
    write_json(metrics / "plots" / "evolve_length.json",
               [{"round": k, "mean_length_growth": 1.0 + 0.2 * k, "evolved_share": expected["evolved"][k] / n_seeds} for k in range(1, rounds + 1)])
    write_json(metrics / "plots" / "difficulty_levels.json", level_distribution(judged))
    write_json(root / "models" / "identity.json",
               {"evolver": {"backend": "hf", "model": "evolver-model", "revision": None, "identity": {"weights_sha256": "e" * 64}}})
    expected.update(seeds=n_seeds, answered=responses.height, selected=n)
    return expected


if __name__ == "__main__":
    import sys

    print(json.dumps(build_version(Path(sys.argv[1])), indent=1))
