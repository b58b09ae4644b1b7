"""Benchmark: calibrate the same-problem thresholds of selection (``select.same_problem_lineage`` and
``select.same_problem``, :mod:`evolforge.steps.select.same_problem`) on the labelled rewrites.

``bench/data/rewrites*.jsonl`` holds (parent, rewrite) pairs, each labelled by reading: the rewrite adds something,
asks the same problem, makes it easier (hands over the formula, the method or its solution), or is broken. Both
texts of every pair are embedded with the shipped embedder (``roles.embedder`` as ``diversity.embedder`` says, the
diversity stage's own code), and a pair is called the same problem when the squared distance of its two unit
vectors, d^2 = 2 - 2 cos, is at most a threshold. A rewrite labelled ``same`` or ``easier`` asks what its parent
asked: it is the same problem; ``adds`` is another one; ``broken`` pairs are left out (neither: they contradict
themselves or cannot be answered, and verify keeps them out of a selection).

- **In the lineage** (``same_problem_lineage``): the labelled pairs as they are (each a parent and its rewrite,
  the population the thresholds apply to). Per threshold: pairs called the same, precision, recall.
- **Any two items** (``same_problem``): the same positives against every pair of texts that belong to different
  parents as well (two seeds of the set are two problems), the many unrelated items a selection compares.

The recommended threshold of each is the largest at which at least ``--precision`` of the pairs called the same are
(and at least ``--min-called`` are called): what params.yaml's comments quote.

    PYTHONPATH=src python bench/same_problem_calibration.py [--params params.yaml] [--json out.json]
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import math
from pathlib import Path

import numpy as np

from evolforge.config.loader import load_section, read_params
from evolforge.config.roles import load_role
from evolforge.core.text import normalize_text, question_text
from evolforge.steps.diversity.settings import DiversitySettings
from evolforge.steps.diversity.step import role_embedder

REPO = Path(__file__).resolve().parents[1]
LABELLED = str(REPO / "bench" / "data" / "rewrites*.jsonl")
SAME, OTHER, LEFT_OUT = ("same", "easier"), ("adds",), ("broken",)  # the labels, as the set writes them
PRECISION = 0.8  # of the pairs called the same problem, the share that must be
MIN_CALLED = 5   # pairs called the same, at least, for that share to be a measurement


def labelled(pattern: str = LABELLED) -> list[dict]:
    """Every labelled pair of the files matching ``pattern``; a row without what the bench reads is refused, naming
    its file, line and field."""
    rows = []
    for path in sorted(glob.glob(pattern)):
        for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            for key in ("parent", "rewrite", "label"):
                if not isinstance(row.get(key), (str, dict)) or not row[key]:
                    raise SystemExit(f"{path}:{number}: field {key!r} missing or empty")
            if row["label"] not in SAME + OTHER + LEFT_OUT:
                raise SystemExit(f"{path}:{number}: label {row['label']!r} is none of {SAME + OTHER + LEFT_OUT}")
            rows.append(row)
    if not rows:
        raise SystemExit(f"no labelled pairs in {pattern}")
    return rows


def text(side: str | dict) -> str:
    """The question text of one side of a pair: a string, or an item's instruction and input."""
    return side if isinstance(side, str) else question_text(side["instruction"], side.get("input"))


def table(distances: np.ndarray, same: np.ndarray) -> list[dict]:
    """Per threshold (each distinct distance of a same-problem pair): pairs called the same (d^2 <= threshold),
    precision and recall."""
    out = []
    for t in np.unique(distances[same]):
        called = distances <= t
        hits = int(np.sum(called & same))
        out.append({"threshold": float(t), "called": int(called.sum()), "precision": hits / int(called.sum()),
                    "recall": hits / int(same.sum())})
    return out


def recommended(figures: list[dict], precision: float = PRECISION, min_called: int = MIN_CALLED) -> dict | None:
    """The row of :func:`table`'s ``figures`` with the largest threshold at which at least ``min_called`` pairs are
    called the same and at least ``precision`` of them are; None where none is.

    >>> recommended([{"threshold": 0.1, "called": 6, "precision": 1.0}, {"threshold": 0.2, "called": 9,
    ...              "precision": 0.8}, {"threshold": 0.3, "called": 20, "precision": 0.5}])["threshold"]
    0.2
    """
    fits = [f for f in figures if f["called"] >= min_called and f["precision"] >= precision]
    return max(fits, key=lambda f: f["threshold"]) if fits else None


def cross_pairs(groups: list[int], texts: int) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (a, b) of texts whose parents differ (``groups``: each text's parent's group)."""
    pairs = [(a, b) for a, b in itertools.combinations(range(texts), 2) if groups[a] != groups[b]]
    return np.array([a for a, _ in pairs], dtype=np.int64), np.array([b for _, b in pairs], dtype=np.int64)


def measure(rows: list[dict], vectors: np.ndarray) -> dict:
    """The distances both calibrations read, from the unit ``vectors`` of the texts (pair i's parent is row 2i, its
    rewrite row 2i + 1): each pair's d^2 and label, and the d^2 of the pairs of texts of different parents that
    are at most the farthest same-problem pair's (the only ones a threshold can call the same), with their count."""
    pairs = [{"label": r["label"], "d2": 2.0 - 2.0 * float(vectors[2 * i] @ vectors[2 * i + 1]),
              "source": r.get("source")} for i, r in enumerate(rows)]
    parents: dict[str, int] = {}
    groups = [parents.setdefault(normalize_text(text(rows[i // 2]["parent"])), len(parents))
              for i in range(2 * len(rows))]
    a, b = cross_pairs(groups, len(groups))
    cross = 2.0 - 2.0 * np.einsum("ij,ij->i", vectors[a], vectors[b])
    farthest = max((p["d2"] for p in pairs if p["label"] in SAME), default=0.0)
    return {"pairs": pairs, "cross_pairs": len(cross), "closest_cross_pair": float(cross.min()) if len(cross) else None,
            "cross_within": sorted(float(x) for x in cross[cross <= farthest])}


def param_value(threshold: float) -> float:
    """A recommended threshold as params.yaml writes it: rounded up to four decimals.

    >>> param_value(0.012301)
    0.0124
    """
    return math.ceil(threshold * 10_000 - 1e-9) / 10_000


def calibrate(distances: dict, precision: float = PRECISION, min_called: int = MIN_CALLED) -> dict:
    """Both tables and their recommended thresholds (module docstring) from :func:`measure`'s ``distances``."""
    kept = [p for p in distances["pairs"] if p["label"] not in LEFT_OUT]
    d2 = np.array([p["d2"] for p in kept])
    same = np.array([p["label"] in SAME for p in kept])
    cross = np.array(distances["cross_within"])
    out = {"by_label": {label: sum(p["label"] == label for p in distances["pairs"]) for label in SAME + OTHER + LEFT_OUT},
           "precision_asked": precision, "min_called": min_called}
    for name, values, labels in (("lineage", d2, same), ("any", np.concatenate([d2, cross]),
                                                         np.concatenate([same, np.zeros(len(cross), dtype=bool)]))):
        figures = table(values, labels)
        best = recommended(figures, precision, min_called)
        out[name] = {"table": figures, "recommended": best,
                     "param": param_value(best["threshold"]) if best else None}
    return out


def _print(name: str, part: dict) -> None:
    print(f"\n{name}: threshold (d^2) | called the same | precision | recall")
    for f in part["table"]:
        print(f"  {f['threshold']:.4f} | {f['called']:4d} | {f['precision']:.2f} | {f['recall']:.2f}")
    best = part["recommended"]
    print(f"  recommended: {part['param']} (precision {best['precision']:.2f}, recall {best['recall']:.2f}, "
          f"{best['called']} called)" if best else "  recommended: none reaches the precision asked")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--data", default=LABELLED, help="the labelled pairs (a glob)")
    ap.add_argument("--precision", type=float, default=PRECISION)
    ap.add_argument("--min-called", type=int, default=MIN_CALLED)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    params = read_params(args.params)
    rows = labelled(args.data)
    cfg, role = load_section(params, "diversity", DiversitySettings), load_role(params, "embedder")
    embed = role_embedder(role, cfg)
    vectors = embed([text(r[side]) for r in rows for side in ("parent", "rewrite")])
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    distances = measure(rows, vectors)
    figures = {"embedder": cfg.embedder, "model": role.model, "distances": distances,
               **calibrate(distances, args.precision, args.min_called)}
    print(f"{len(rows)} labelled pairs {figures['by_label']}, embedder {cfg.embedder} {role.model}; "
          f"{distances['cross_pairs']} pairs of texts of different parents, the closest at d^2 "
          f"{distances['closest_cross_pair']}")
    for label in SAME + OTHER:
        values = sorted(p["d2"] for p in distances["pairs"] if p["label"] == label)
        print(f"  d^2 of the {label} pairs: {', '.join(f'{v:.3f}' for v in values)}")
    _print("in the lineage (select.same_problem_lineage)", figures["lineage"])
    _print("any two items (select.same_problem)", figures["any"])
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
