"""Check on a copy of a real run: plant two benchmark items among the seeds, run the pipeline up to
decontamination, and print what the decontaminate stage flagged.

    python bench/plant_contamination.py /tmp/plant      # a clone of the repo (never the one you work in)

The copy needs what `dvc repro decontaminate` needs: the models folder and, to rerun only the two new
items, the LLM call cache (.evolforge); e.g. ``git clone . /tmp/plant && cp -r models .evolforge /tmp/plant/``.
`python` and `dvc` are taken from this interpreter's environment; the copy's own src/ is imported.

What it changes in the copy (and nowhere else):

- writes ``data/seeds/planted.jsonl``: the seeds the copy's params currently sample (same rows, same
  order, so their ids and LLM calls are unchanged: cache hits), then the two planted items;
- points ``seed.source`` at it and sets ``seed.limit: null`` in params.yaml, so both planted seeds are in
  (with ``respond.include_seed: true`` a seed reaches the answered pool as a round-0 item).

The planted items (``PLANTED``):

- HumanEval/12 (``longest``) lightly paraphrased: every clause of the docstring reordered, the function
  renamed, the doctests kept (their order changed);
- GSM8K offline/1 (the train problem of the offline items) with its question's ending reworded.

Exit status 0 when every planted seed item is flagged with its benchmark and problem id, 1 otherwise.
Evolved descendants of the planted seeds are listed too (flagged or not: a 135M evolver rewrites freely).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HUMANEVAL_12_PARAPHRASE = '''Complete the following Python function.

```python
from typing import List, Optional


def pick_longest(strings: List[str]) -> Optional[str]:
    """ Return None in case the input list is empty. Out of list of strings, return the longest one;
    in case of multiple strings of the same length, return the first one.
    >>> pick_longest(['a', 'bb', 'ccc'])
    'ccc'
    >>> pick_longest([])

    >>> pick_longest(['a', 'b', 'c'])
    'a'
    """
```'''

GSM8K_1_REWORDED = ("Solve step by step: A train travels at 60 miles per hour for 3 hours and then at 40 miles per "
                    "hour for 2 hours. In total, how many miles does it travel?")

# seed row -> the (benchmark, problem id) it must be flagged with
PLANTED = [
    ({"instruction": HUMANEVAL_12_PARAPHRASE, "input": "", "output": ""}, ("humaneval", "HumanEval/12")),
    ({"instruction": GSM8K_1_REWORDED, "input": "", "output": "60 * 3 + 40 * 2 = 260 miles."}, ("gsm8k", "offline/1")),
]
SEED_FILE = "data/seeds/planted.jsonl"


def plant(repo: Path) -> list[str]:
    """Write the planted seed file and point params.yaml at it; returns the planted seeds' ids."""
    sys.path.insert(0, str(repo / "src"))
    from evolforge.steps.common.source import build_seed
    from evolforge.config.loader import read_params, load_section
    from evolforge.steps.seed.settings import SeedSettings
    from evolforge.io.records import make_id

    params_path = repo / "params.yaml"
    cfg = load_section(read_params(str(params_path)), "seed", SeedSettings)
    cwd = os.getcwd()
    os.chdir(repo)  # seed.source is relative to the repository
    try:
        current = build_seed(cfg.source, fmt=cfg.format, fields=cfg.fields, config=cfg.config, split=cfg.split,
                             revision=cfg.revision, limit=cfg.limit, seed=cfg.seed).table
    finally:
        os.chdir(cwd)
    if cfg.source == SEED_FILE:
        raise SystemExit(f"{repo}: seed.source is already {SEED_FILE}; plant into a fresh copy")
    rows = [{"instruction": r["instruction"], "input": r["input"], "output": r["output"]} for r in current.iter_rows(named=True)]
    rows += [row for row, _ in PLANTED]
    (repo / SEED_FILE).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    # edit only the two keys of the `seed:` section, keeping the file's comments and layout
    text = params_path.read_text(encoding="utf-8")
    section = re.search(r"(?m)^seed:\n(?:[ \t]+.*\n|\n)*", text)
    if section is None:
        raise SystemExit(f"{params_path}: no top-level `seed:` section")
    block = re.sub(r"(?m)^(\s+source:)\s*\S+", rf"\1 {SEED_FILE}", section.group(0), count=1)
    block = re.sub(r"(?m)^(\s+limit:)\s*\S+", r"\1 null", block, count=1)
    params_path.write_text(text[:section.start()] + block + text[section.end():], encoding="utf-8")
    print(f"planted 2 seeds after the {len(current)} sampled ones -> {SEED_FILE}; params.yaml seed.source/limit edited")
    return [make_id(row["instruction"], row["input"]) for row, _ in PLANTED]


def run_pipeline(repo: Path) -> float:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(repo / "src"),
           # as the Makefile runs it: the offline switches also reach the converted model's tokenizer_config.json,
           # hence its hash, hence every LLM cache key; without them fetch_model's output differs
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run(["dvc", "repro", "decontaminate"], cwd=repo, env=env, check=True)
    return time.perf_counter() - start


def report(repo: Path, planted_ids: list[str]) -> bool:
    import polars as pl

    pool = pl.read_parquet(repo / "data/pool/items.parquet")
    removed = pl.concat([pl.read_parquet(repo / f"data/{folder}/removed.parquet").with_columns(removed_by=pl.lit(stage))
                         for folder, stage in (("dedup", "dedup"), ("clean", "decontaminate"))], how="diagonal_relaxed")
    cols = ["id", "root_id", "round", "removed_by", "duplicate_of", "contamination_reason", "contamination_benchmark",
            "contamination_problem_id", "contamination_field", "contamination_similarity", "contamination_ngram"]
    flags = removed.select([c for c in cols if c in removed.columns])
    ok = True
    for seed_id, (_row, (benchmark, problem_id)) in zip(planted_ids, PLANTED):
        family = pool.filter(pl.col("root_id") == seed_id).sort("round")
        print(f"\nplanted {benchmark} {problem_id} (seed id {seed_id}): {family.height} item(s) in the answered pool")
        for item in family.iter_rows(named=True):
            hit = flags.filter(pl.col("id") == item["id"])
            if hit.height == 0:
                print(f"  round {item['round']} {item['id']}: NOT flagged")
                ok &= item["round"] != 0
                continue
            f = hit.row(0, named=True)
            score = f.get("contamination_similarity")
            print(f"  round {item['round']} {item['id']}: removed_by={f['removed_by']} "
                  f"benchmark={f.get('contamination_benchmark')} problem_id={f.get('contamination_problem_id')} "
                  f"reason={f.get('contamination_reason')} field={f.get('contamination_field')}"
                  + (f" score={score:.3f}" if score is not None else "")
                  + f"\n    matched: {(f.get('contamination_ngram') or f.get('duplicate_of') or '')[:160]!r}")
            if item["round"] == 0:
                ok &= (f.get("contamination_benchmark"), f.get("contamination_problem_id")) == (benchmark, problem_id)
        if family.filter(pl.col("round") == 0).height == 0:
            print("  the planted seed is not in the answered pool (respond.include_seed off?)")
            ok = False
    metrics = json.loads((repo / "metrics/decontaminate.json").read_text())
    print(f"\nmetrics/decontaminate.json: flagged {metrics['flagged']} of {metrics['items']}, "
          f"per benchmark {metrics['flagged_per_benchmark']}, per reason {metrics.get('flagged_per_reason')}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo", type=Path, help="a copy of the repository (it is modified)")
    ap.add_argument("--no-run", action="store_true", help="only plant; run `dvc repro decontaminate` yourself")
    ap.add_argument("--report-only", action="store_true", help="only print the flags of an already planted copy")
    args = ap.parse_args()
    repo = args.repo.resolve()
    if args.report_only:
        sys.path.insert(0, str(repo / "src"))
        from evolforge.io.records import make_id

        ids = [make_id(row["instruction"], row["input"]) for row, _ in PLANTED]
    else:
        ids = plant(repo)
        if args.no_run:
            return
        print(f"dvc repro decontaminate: {run_pipeline(repo):.0f} s")
    sys.exit(0 if report(repo, ids) else 1)


if __name__ == "__main__":
    main()
