"""Lineage: the chain of one item from its seed through every round it took part in.

>>> for step in chain("9f0c...", seed_dir="data/seed", round_dirs=["data/evolved/round_1"]):  # doctest: +SKIP
...     print(step["round"], step["method"], step["status"], step["instruction"])

:func:`format_chain` prints each step with its status; for a failed attempt it also prints why
(``failure_reason``), what the evolver wrote (``raw_output``, with its ``instruction_finish_reason``) and, when a
check on an answer to it failed it, that answer (``check_response``: by default the responder's). An
auto-strategy attempt that failed has no instruction, so its raw output is the only trace of what the
model did.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from evolforge.io.records import EVOLVED, FAILED, read_table
from evolforge.io.validation import DataError

COLUMNS = ["id", "root_id", "parent_id", "round", "method", "status", "failure_reason", "instruction"]
DETAIL = ["raw_output", "instruction_finish_reason", "check_response"]  # round tables only; None for seeds


def _columns(table: pl.DataFrame) -> pl.DataFrame:
    missing = [c for c in DETAIL if c not in table.columns]  # seeds
    return table.with_columns([pl.lit(None, pl.String).alias(c) for c in missing]).select(COLUMNS + DETAIL)


def load_all(seed_dir: str | Path, round_dirs: list[str | Path]) -> pl.DataFrame:
    parts = [_columns(read_table(seed_dir))] + [_columns(read_table(d)) for d in round_dirs]
    return pl.concat(parts, how="vertical_relaxed")


def chain(item_id: str, seed_dir: str | Path, round_dirs: list[str | Path]) -> list[dict]:
    """Ancestors of ``item_id`` back to its seed, the item, then its descendants round by round.

    Going back, an ancestor's failed attempts in the rounds before its child evolved are shown too
    (with ``keep_parent`` the ancestor went on to the next round and was evolved again).

    Going forward, each round shows the attempt made on the current item: if it evolved, the chain
    continues from the new item; if it failed (and the parent was kept), the chain continues from
    the same item in the next round.
    """
    rows = load_all(seed_dir, round_dirs)
    by_id = {r["id"]: r for r in rows.to_dicts()}
    if item_id not in by_id:
        matches = [i for i in by_id if i.startswith(item_id)]
        if len(matches) != 1:
            where = f"{seed_dir} and {len(round_dirs)} round folder{'s' if len(round_dirs) != 1 else ''}"
            raise DataError(where, "an item id, or the prefix of exactly one",
                            detail=f"{item_id!r} matches {'no item' if not matches else f'{len(matches)} items'}")
        item_id = matches[0]
    back = [by_id[item_id]]
    while back[0]["parent_id"] is not None:
        back.insert(0, by_id[back[0]["parent_id"]])
    children: dict[str, list[dict]] = {}
    for r in by_id.values():
        if r["parent_id"] is not None:
            children.setdefault(r["parent_id"], []).append(r)
    # An ancestor kept after a failed attempt (keep_parent) was tried again in a later round: its
    # failed attempts before the one that evolved belong on the chain, in round order.
    back = [back[0]] + [step for parent, child in zip(back, back[1:])
                        for step in sorted((a for a in children.get(parent["id"], [])
                                            if a["status"] != EVOLVED and a["round"] < child["round"]),
                                           key=lambda a: a["round"]) + [child]]
    forward, current = [], back[-1]
    if current["status"] == EVOLVED or current["parent_id"] is None:
        while True:
            attempts = sorted(children.get(current["id"], []), key=lambda r: r["round"])
            if not attempts:
                break
            forward.extend(attempts)
            evolved = [a for a in attempts if a["status"] == EVOLVED]
            if not evolved:
                break
            current = evolved[0]
    return back + forward


def _indent(label: str, text: str) -> str:
    body = "\n".join(f"      {line}" for line in text.splitlines()) or "      (empty)"
    return f"    {label}:\n{body}"


def format_chain(steps: list[dict], raw: bool = False) -> str:
    """Readable chain; failed attempts (and every attempt with ``raw``) show what the evolver wrote."""
    lines = []
    for s in steps:
        tag = s["status"] + (f" ({s['failure_reason']})" if s["failure_reason"] else "")
        lines.append(f"round {s['round']}  {s['method']:<16} {tag:<32} {s['id']}")
        if s["instruction"]:  # every line indented: an instruction of several lines stays inside its step
            lines.append("\n".join(f"    {line}".rstrip() for line in s["instruction"].splitlines()))
        failed = s["status"] == FAILED
        if (failed or raw) and s.get("raw_output") is not None and s["raw_output"].strip() != (s["instruction"] or ""):
            finish = f", finish_reason {s['instruction_finish_reason']}" if s.get("instruction_finish_reason") else ""
            lines.append(_indent(f"evolver wrote{finish}", s["raw_output"]))
        elif failed and s.get("instruction_finish_reason") == "length":
            lines.append("    (the evolver stopped at max_tokens)")
        if failed and s.get("check_response") is not None:
            lines.append(_indent("the answer to it (response check)", s["check_response"]))
    return "\n".join(lines)
