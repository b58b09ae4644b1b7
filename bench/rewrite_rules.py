"""Benchmark: each elimination rule's precision and recall on the labelled rewrites of ``bench/data/rewrites.jsonl``.

The set holds (parent, rewrite) pairs from several runs and seed kinds (this project's development sets and shipped
runs, the Auto Evol-Instruct repository's GSM8K evolutions and method trajectories, gpt-3.5 code evolutions of Code
Alpaca with WizardCoder's methods from the evol-teacher repository), each labelled by reading:
``adds_something`` (a harder or new task), ``same_problem`` (its parent again in other words, or with details that
change nothing), ``easier`` (it hands over the formula, the method, the steps or its own result) or ``broken`` (it
contradicts itself or cannot be answered). About a fifth, chosen by a hash of the parent (every rewrite of one
parent on the same side), is ``held_out``: thresholds are set on ``tune`` alone and the figures of both are printed.

For each rule the bench prints how many pairs it fails and, of those, the share that should fail (any label but
``adds_something``: its precision, the figure the rules are held to, >= 0.8) and the share of its own label; and
its recall of its own label. The rules: ``hands_over_method`` and the shipped text rules on the rewrite alone,
``same_problem`` on roles.embedder's similarity (``--params``: the model and kind; ``--embedder`` names another
model folder to compare, e.g. models/SmolLM2-135M-Instruct with ``--kind causal-lm-mean``), ``same_answer`` on
the pairs whose two answers are known (``parent_answer``, ``rewrite_answer``), and selection's backstop in a lineage
``same_answer_in_lineage`` on the same pairs (the same answer, and the rewrite asks for no more results:
:func:`~evolforge.steps.common.asking.asks_nothing_new`). ``hands_over_method`` is printed per kind of pair too
(``hands_over_method[code]``: the code evolutions' erroneous references, examples and stubs must pass).
``--thresholds`` prints the ``same_problem`` table over several similarity thresholds.

    PYTHONPATH=src python bench/rewrite_rules.py [--params params.yaml] [--embedder DIR --kind KIND] [--thresholds]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from evolforge.config.loader import load_section, read_params
from evolforge.config.roles import load_role
from evolforge.steps.common import elimination
from evolforge.steps.common.asking import asks_nothing_new
from evolforge.steps.common.embedding import pair_similarities, role_embedder
from evolforge.steps.common.giveaway import hands_over_method
from evolforge.steps.common.sameness import same_answer, same_problem
from evolforge.steps.diversity.settings import DiversitySettings
from evolforge.steps.evolve.settings import EvolveSection

DATA = Path(__file__).parent / "data" / "rewrites.jsonl"
LABELS = ("adds_something", "same_problem", "easier", "broken")
KINDS = ("math", "code", "prose")
SPLITS = ("tune", "held_out")


def read_pairs(path: Path = DATA) -> list[dict]:
    """The labelled pairs; a row without its fields, or with an unknown label or split, is refused by line."""
    pairs = []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        row = json.loads(line)
        for field in ("parent", "rewrite", "label", "split", "source"):
            if not row.get(field):
                raise SystemExit(f"{path}:{k}: field {field!r} is missing or empty")
        if row["label"] not in LABELS or row["split"] not in SPLITS or row.get("kind") not in KINDS:
            raise SystemExit(f"{path}:{k}: label {row['label']!r} / split {row['split']!r} / kind {row.get('kind')!r}: "
                             f"not one of {LABELS} / {SPLITS} / {KINDS}")
        pairs.append(row)
    return pairs


def scores(pairs: list[dict], fails: list[bool | None], own: str) -> dict:
    """A rule's figures on ``pairs`` (``fails[i]`` None: the rule cannot judge pair i)."""
    judged = [(p, f) for p, f in zip(pairs, fails) if f is not None]
    failed = [p for p, f in judged if f]
    should = sum(p["label"] != "adds_something" for p in failed)
    mine = sum(p["label"] == own for p in failed)
    total_own = sum(p["label"] == own for p, _ in judged)
    return {"judged": len(judged), "fails": len(failed),
            "precision": should / len(failed) if failed else None,
            "precision_own_label": mine / len(failed) if failed else None,
            "recall_own_label": mine / total_own if total_own else None}


def text_rule(pairs: list[dict]) -> list[bool]:
    """Whether the shipped text rules (every one of ``instruction_failure`` but hands_over_method) fail each pair."""
    return [elimination.instruction_failure(p["parent"], p["rewrite"], hands_over_method=False) is not None
            for p in pairs]


def rule_fails(pairs: list[dict], similarities: list[float], threshold: float) -> dict[str, tuple[list, str]]:
    """rule -> (its verdict per pair, the label it is meant to find)."""
    answers = [(p.get("parent_answer"), p.get("rewrite_answer")) for p in pairs]
    handed = [hands_over_method(p["parent"], p["rewrite"]) for p in pairs]
    return {
        "hands_over_method": (handed, "easier"),
        **{f"hands_over_method[{kind}]": ([h if p["kind"] == kind else None for p, h in zip(pairs, handed)], "easier")
           for kind in KINDS},
        "same_problem": ([same_problem(p["parent"], p["rewrite"], s, threshold) for p, s in zip(pairs, similarities)],
                         "same_problem"),
        "same_answer": ([same_answer(a, b) if a and b else None for a, b in answers], "same_problem"),
        "same_answer_in_lineage": ([same_answer(a, b) and asks_nothing_new(p["parent"], p["rewrite"]) if a and b
                                    else None for p, (a, b) in zip(pairs, answers)], "same_problem"),
        "the shipped text rules": (text_rule(pairs), "easier"),
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_table(pairs: list[dict], similarities: list[float], threshold: float) -> dict:
    out: dict = {}
    print(f"{'rule':<28} {'split':<9} {'judged':>6} {'fails':>5} {'precision':>9} {'own label':>9} {'recall':>6}")
    for split in SPLITS + ("all",):
        keep = [i for i, p in enumerate(pairs) if split in ("all", p["split"])]
        chosen = [pairs[i] for i in keep]
        for rule, (fails, own) in rule_fails(chosen, [similarities[i] for i in keep], threshold).items():
            s = out.setdefault(rule, {})[split] = scores(chosen, fails, own)
            print(f"{rule:<28} {split:<9} {s['judged']:>6} {s['fails']:>5} {_fmt(s['precision']):>9} "
                  f"{_fmt(s['precision_own_label']):>9} {_fmt(s['recall_own_label']):>6}")
    return out


def embedder(args: argparse.Namespace, params: dict) -> Callable:
    if args.embedder:
        from evolforge.config.roles import Role

        return role_embedder(Role.from_params("embedder", {"backend": "hf", "model": args.embedder}), args.kind)
    return role_embedder(load_role(params, "embedder"), load_section(params, "diversity", DiversitySettings).embedder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--embedder", help="another model folder for same_problem (default: roles.embedder)")
    parser.add_argument("--kind", default="mean-pooled", help="its diversity.embedder kind")
    parser.add_argument("--thresholds", action="store_true", help="same_problem over several thresholds")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    params = read_params(args.params)
    threshold = load_section(params, "evolve", EvolveSection).same_problem_similarity
    pairs = read_pairs(args.data)
    similarities = pair_similarities(embedder(args, params), [p["parent"] for p in pairs],
                                     [p["rewrite"] for p in pairs])
    print(f"{len(pairs)} pairs ({sum(p['split'] == 'held_out' for p in pairs)} held out); same_problem at "
          f"similarity >= {threshold}")
    figures = {"pairs": len(pairs), "threshold": threshold, "rules": print_table(pairs, similarities, threshold)}
    if args.thresholds:
        figures["same_problem_by_threshold"] = {}
        for t in (0.75, 0.8, 0.85, 0.88, 0.9, 0.92, 0.95):
            row = {}
            for split in SPLITS:
                chosen = [(p, s) for p, s in zip(pairs, similarities) if p["split"] == split]
                row[split] = scores([p for p, _ in chosen],
                                    [same_problem(p["parent"], p["rewrite"], s, t) for p, s in chosen], "same_problem")
            figures["same_problem_by_threshold"][t] = row
            print(f"same_problem >= {t:.2f}: " + "; ".join(
                f"{split} fails {r['fails']}, precision {_fmt(r['precision'])}, recall {_fmt(r['recall_own_label'])}"
                for split, r in row.items()))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
