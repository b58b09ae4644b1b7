"""Benchmark: calibrate the same-problem thresholds of selection (``select.same_problem_lineage`` and
``select.same_problem``, :mod:`evolforge.steps.select.same_problem`) on the labelled rewrites.

``bench/data/rewrites*.jsonl`` holds (parent, rewrite) pairs, each labelled by reading: the rewrite adds something,
asks the same problem, makes it easier (hands over the formula, the method or its solution), or is broken. Both
texts of every pair are embedded with the shipped embedder (``roles.embedder`` as ``diversity.embedder`` says, the
diversity stage's own code), and a pair is called the same problem when the squared distance of its two unit
vectors, d^2 = 2 - 2 cos, is at most a threshold. A rewrite labelled ``same_problem`` or ``easier`` asks what its
parent asked: it is the same problem; ``adds_something`` is another one; ``broken`` pairs are left out (neither: they
contradict themselves or cannot be answered, and verify keeps them out of a selection). The thresholds are chosen on
the pairs of the ``tune`` split; the ``held_out`` pairs are measured at them.

- **In the lineage** (``same_problem_lineage``): the labelled pairs as they are (each a parent and its rewrite,
  the population the thresholds apply to). Per threshold: pairs called the same, precision, recall. As the walk
  does, a rewrite that states a restriction its parent does not (``asking.adds_a_restriction``) is never called the
  same, whatever its distance.
- **Any two items** (``same_problem``): the same positives against every pair of texts of different lineages as
  well (two seeds of the set are two problems, and so are their rewrites), the many unrelated items a selection
  compares; two texts whose restrictions differ (``asking.restriction_mask``) are never called the same.

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
from evolforge.steps.common.asking import adds_a_restriction, restriction_mask
from evolforge.steps.diversity.settings import DiversitySettings
from evolforge.steps.diversity.step import role_embedder

REPO = Path(__file__).resolve().parents[1]
LABELLED = str(REPO / "bench" / "data" / "rewrites*.jsonl")
SAME, OTHER, LEFT_OUT = ("same_problem", "easier"), ("adds_something",), ("broken",)  # the labels, as the set writes them
TUNE = "tune"  # the split the thresholds are chosen on; the others (held_out) are measured at those thresholds
PRECISION = 0.8  # of the pairs called the same problem, the share that must be
MIN_CALLED = 5   # pairs called the same, at least, for that share to be a measurement
CLOSEST = 5      # the closest pairs of texts of different lineages, printed to be read


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
    for t in np.unique(distances[same & np.isfinite(distances)]):
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


def lineages(rows: list[dict]) -> list[int]:
    """A lineage number for each text (pair i's parent is text 2i, its rewrite 2i + 1): a parent and its rewrite
    share one, and so do texts that are the same once normalised (a rewrite of one run that another run evolved
    again is the parent of a later pair), whatever pairs link them.

    >>> lineages([{"parent": "a", "rewrite": "b"}, {"parent": "B", "rewrite": "c"}, {"parent": "d", "rewrite": "e"}])
    [0, 0, 0, 0, 4, 4]
    """
    link = list(range(2 * len(rows)))

    def find(i: int) -> int:
        while link[i] != i:
            i = link[i]
        return i
    first: dict[str, int] = {}
    for i, row in enumerate(rows):
        for t, side in ((2 * i, "parent"), (2 * i + 1, "rewrite")):
            same = first.setdefault(normalize_text(text(row[side])), t)
            link[find(t)] = find(same)
        link[find(2 * i + 1)] = find(2 * i)
    return [find(t) for t in range(2 * len(rows))]


def cross_pairs(groups: list[int], texts: int) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (a, b) of texts of different lineages (``groups``: each text's, :func:`lineages`)."""
    pairs = [(a, b) for a, b in itertools.combinations(range(texts), 2) if groups[a] != groups[b]]
    return np.array([a for a, _ in pairs], dtype=np.int64), np.array([b for _, b in pairs], dtype=np.int64)


def measure(rows: list[dict], vectors: np.ndarray) -> dict:
    """The distances both calibrations read, from the unit ``vectors`` of the texts (pair i's parent is row 2i, its
    rewrite row 2i + 1): each pair's d^2, label and split, and per split the d^2 of the pairs of its texts that belong
    to different parents and are at most the farthest same-problem pair's (the only ones a threshold can call the
    same), with how many such pairs there are in all. Texts of different lineages (:func:`lineages`) are different
    problems: the set's parents are distinct seeds and rewrites of them."""
    pairs = [{"id": r.get("id"), "label": r["label"], "split": r.get("split", TUNE),
              "d2": 2.0 - 2.0 * float(vectors[2 * i] @ vectors[2 * i + 1]), "source": r.get("source"),
              "adds_a_restriction": adds_a_restriction(text(r["parent"]), text(r["rewrite"])),
              "restrictions_differ": restriction_mask(text(r["parent"])) != restriction_mask(text(r["rewrite"]))}
             for i, r in enumerate(rows)]
    farthest = max((p["d2"] for p in pairs if p["label"] in SAME), default=0.0)
    cross: dict[str, dict] = {}
    lineage = lineages(rows)
    for split in sorted({p["split"] for p in pairs}):
        texts = [t for i, p in enumerate(pairs) if p["split"] == split for t in (2 * i, 2 * i + 1)]
        a, b = cross_pairs([lineage[t] for t in texts], len(texts))
        rows_a, rows_b = np.array(texts)[a], np.array(texts)[b]
        d2 = 2.0 - 2.0 * np.einsum("ij,ij->i", vectors[rows_a], vectors[rows_b]) if len(a) else np.zeros(0)
        texts_of = [text(rows[t // 2]["rewrite" if t % 2 else "parent"]) for t in range(2 * len(rows))]
        masks = np.array([restriction_mask(t) for t in texts_of], dtype=np.int64)
        d2 = np.where(masks[rows_a] == masks[rows_b], d2, np.inf) if len(a) else d2  # never called the same
        cross[split] = {"pairs": len(d2), "closest": float(d2.min()) if np.isfinite(d2).any() else None,
                        "within": sorted(float(x) for x in d2[d2 <= farthest]),
                        "closest_texts": [[round(float(d2[k]), 4), texts_of[rows_a[k]], texts_of[rows_b[k]]]
                                          for k in np.argsort(d2)[:CLOSEST] if np.isfinite(d2[k])]}
    return {"pairs": pairs, "cross": cross}


def param_value(threshold: float) -> float:
    """A recommended threshold as params.yaml writes it: rounded up to four decimals.

    >>> param_value(0.012301)
    0.0124
    """
    return math.ceil(threshold * 10_000 - 1e-9) / 10_000


def _split(distances: dict, split: str, with_cross: bool) -> tuple[np.ndarray, np.ndarray]:
    """The d^2 and same-problem flags of one split's labelled pairs (broken ones left out), with its cross pairs."""
    kept = [p for p in distances["pairs"] if p["split"] == split and p["label"] not in LEFT_OUT]
    guard = "restrictions_differ" if with_cross else "adds_a_restriction"  # the walk's guard: never the same
    d2 = np.array([np.inf if p.get(guard) else p["d2"] for p in kept])
    same = np.array([p["label"] in SAME for p in kept], dtype=bool)
    if not with_cross:
        return d2, same
    cross = np.array(distances["cross"].get(split, {}).get("within", []))
    return np.concatenate([d2, cross]), np.concatenate([same, np.zeros(len(cross), dtype=bool)])


def at(values: np.ndarray, same: np.ndarray, threshold: float) -> dict:
    """Pairs called the same at ``threshold``, precision (None: none called) and recall (None: no such pair)."""
    called = values <= threshold
    hits = int(np.sum(called & same))
    return {"called": int(called.sum()), "precision": hits / int(called.sum()) if called.any() else None,
            "recall": hits / int(same.sum()) if same.any() else None}


def calibrate(distances: dict, precision: float = PRECISION, min_called: int = MIN_CALLED) -> dict:
    """Both tables on the tune split and their recommended thresholds (module docstring), and what each threshold,
    as params.yaml writes it, gives on every split, from :func:`measure`'s ``distances``."""
    splits = sorted({p["split"] for p in distances["pairs"]})
    out = {"by_label": {split: {label: sum(p["label"] == label and p["split"] == split for p in distances["pairs"])
                                for label in SAME + OTHER + LEFT_OUT} for split in splits},
           "precision_asked": precision, "min_called": min_called}
    for name, with_cross in (("lineage", False), ("any", True)):
        figures = table(*_split(distances, TUNE, with_cross))
        best = recommended(figures, precision, min_called)
        param = param_value(best["threshold"]) if best else None
        out[name] = {"table": figures, "recommended": best, "param": param,
                     "at_param": {split: at(*_split(distances, split, with_cross), param) for split in splits}
                     if param is not None else None}
    return out


def _print(name: str, part: dict) -> None:
    print(f"\n{name}, {TUNE} split: threshold (d^2) | called the same | precision | recall")
    for f in part["table"]:
        print(f"  {f['threshold']:.4f} | {f['called']:4d} | {f['precision']:.2f} | {f['recall']:.2f}")
    if part["param"] is None:
        print("  recommended: none reaches the precision asked")
        return
    print(f"  recommended: {part['param']}; at it, per split:")
    for split, f in part["at_param"].items():
        shown = {k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in f.items()}
        print(f"    {split}: {shown['called']} called the same, precision {shown['precision']}, recall {shown['recall']}")


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
    print(f"{len(rows)} labelled pairs {figures['by_label']}, embedder {cfg.embedder} {role.model}")
    for split, cross in distances["cross"].items():
        print(f"  {split}: {cross['pairs']} pairs of texts of different lineages; the closest:")
        for d2, first, second in cross["closest_texts"]:
            print(f"    {d2:.3f}: {first[:90]!r} / {second[:90]!r}")
    for label in SAME + OTHER:
        values = sorted(p["d2"] for p in distances["pairs"] if p["label"] == label and p["split"] == TUNE)
        print(f"  d^2 of the {TUNE} {label} pairs: {', '.join(f'{v:.3f}' for v in values)}")
    _print("in the lineage (select.same_problem_lineage)", figures["lineage"])
    _print("any two items (select.same_problem)", figures["any"])
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
