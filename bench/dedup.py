"""Benchmark: dedup and decontaminate on synthetic items (default 52k x 3 rounds), printing seconds.

    PYTHONPATH=src python bench/dedup.py [--items 52000] [--rounds 3]

Items are random sentences from a 20k-word vocabulary (instructions of 12-60 words, responses of 40-200),
with a quarter of each later round a light edit of an earlier item, so dedup has clusters to resolve.
Decontamination checks instruction and response against the offline benchmark items and the 164 HumanEval
problems. Single process: the figure is for one core of the machine (the other may be busy).
"""

import argparse
import os
import random
import resource
import time
from typing import Iterator

import polars as pl

from evolforge.steps.decontaminate.step import decontaminate
from evolforge.steps.decontaminate.index import load_problems
from evolforge.steps.dedup.minhash import dedup_table
from evolforge.steps.decontaminate.settings import DecontaminateSettings
from evolforge.steps.dedup.settings import DedupSettings


def synthetic_chunks(n: int, rounds: int, seed: int = 0, chunk: int = 100_000) -> Iterator[pl.DataFrame]:
    """:func:`synthetic`'s rows, ``chunk`` at a time (the same rows: one random stream), so millions of
    items can be written without holding them; only the previous round's instructions are kept."""
    rng = random.Random(seed)
    vocab = [f"w{k}" for k in range(20_000)]
    rows, previous = [], []

    def frame() -> pl.DataFrame:
        return pl.DataFrame(rows, schema=["id", "round", "instruction", "output"], orient="row").with_columns(input=pl.lit(""))

    for r in range(1, rounds + 1):
        current = []
        for k in range(n):
            if previous and rng.random() < 0.25:
                words = rng.choice(previous).split()
                words[rng.randrange(len(words))] = rng.choice(vocab)
                text = " ".join(words)
            else:
                text = " ".join(rng.choices(vocab, k=rng.randint(12, 60)))
            current.append(text)
            rows.append((f"r{r}-{k}", r, text, " ".join(rng.choices(vocab, k=rng.randint(40, 200)))))
            if len(rows) == chunk:
                yield frame()
                rows = []
        previous = current
    if rows:
        yield frame()


def synthetic(n: int, rounds: int, seed: int = 0) -> pl.DataFrame:
    """``n`` items per round for ``rounds`` rounds (see the module docstring)."""
    parts = list(synthetic_chunks(n, rounds, seed))
    return pl.concat(parts) if parts else frame_of_nothing()


def frame_of_nothing() -> pl.DataFrame:
    return pl.DataFrame(schema={"id": pl.String, "round": pl.Int64, "instruction": pl.String, "output": pl.String,
                                "input": pl.String})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--items", type=int, default=52_000, help="items per round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    table = synthetic(args.items, args.rounds)
    print(f"{table.height} items ({args.items} x {args.rounds} rounds), {os.cpu_count()} cores visible")

    start = time.perf_counter()
    marked, metrics = dedup_table(table, [True] * table.height, DedupSettings())
    print(f"dedup: {time.perf_counter() - start:.1f} s, {metrics['removed']} removed per round {metrics['removed_per_round']}")

    problems, _ = load_problems(["ifeval", "gsm8k", "math", "humaneval", "mbpp"], "offline")
    kept = marked.filter(pl.col("duplicate_of").is_null())
    start = time.perf_counter()
    _, metrics = decontaminate(kept, problems, DecontaminateSettings())
    print(f"decontaminate: {time.perf_counter() - start:.1f} s for {kept.height} items against {len(problems)} problems, "
          f"{metrics['flagged']} flagged {metrics['flagged_per_reason']}")
    start = time.perf_counter()  # the contiguous rule alone: what the reordered-clause coverage check costs
    decontaminate(kept, problems, DecontaminateSettings(paraphrase_ngram=None))
    print(f"decontaminate without the coverage check (paraphrase_ngram: null): {time.perf_counter() - start:.1f} s")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")  # Linux: KiB


if __name__ == "__main__":
    main()
