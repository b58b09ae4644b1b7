"""The plan as a text table: one line per stage, role and call, a line per stage, and the total."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from evolforge.plan import Plan, Row, make_plan
from evolforge.plan.stages import pipeline

HEADER = ("stage", "role", "call", "requests", "prompt tok", "completion tok exp / max", "cost exp / max", "time")


def render(plan: Plan) -> str:
    """The plan's table, its notes, and the stale stages that send nothing."""
    lines = []
    if not plan.stale:
        lines.append("nothing is stale: `dvc repro` would send no request")
    elif plan.rows:
        table = [list(HEADER)]
        for stage in dict.fromkeys(r.stage for r in plan.rows):
            rows = [r for r in plan.rows if r.stage == stage]
            table += [_cells(r.stage, r.role + ("" if r.pinned else " *"), r.label, r) for r in rows]
            if len(rows) > 1:
                table.append(_cells(stage, "", "(stage)", _sum(rows)))
        table.append(_cells("total", "", "", _sum(plan.rows)))
        widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
        for n, row in enumerate(table):
            lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
    elif plan.failed:
        lines.append(f"no request counted: the dry run of {', '.join(plan.failed)} failed (see the notes)")
    else:
        lines.append("no request to send: the call cache answers every LLM call of the stale stages")
    quiet = [s for s in plan.stale if s not in {r.stage for r in plan.rows} and s not in plan.failed]
    if quiet:
        lines.append(f"stale, sending nothing: {', '.join(quiet)}")
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def dry_run_command(argv: list[str]) -> None:
    """``python stages/X.py ARGS --dry-run``: print the plan of the dvc.yaml stage whose command this is."""
    root = Path.cwd()
    wanted = [os.path.normpath(argv[0])] + argv[1:]
    for stage in pipeline(root):
        words = shlex.split(stage.cmd)
        if len(words) > 1 and Path(words[0]).name.startswith("python") and \
                [os.path.normpath(words[1])] + words[2:] == wanted:
            print(render(make_plan(root, [stage.name])))
            return
    raise ValueError(f"--dry-run: no stage of {root / 'dvc.yaml'} runs `{shlex.join(argv)}`; "
                     f"`evolforge plan STAGE` plans a stage by name")


def _sum(rows: list[Row]) -> Row:
    def add(name: str):
        values = [getattr(r, name) for r in rows]
        return None if any(v is None for v in values) else sum(values)

    return Row("", "", "", sum(r.requests for r in rows), sum(r.prompt_tokens for r in rows),
               sum(r.completion_tokens_max for r in rows), add("completion_tokens_expected"), add("cost_max"),
               add("cost_expected"), add("seconds"))


def _cells(stage: str, role: str, label: str, r: Row) -> list[str]:
    expected = "?" if r.completion_tokens_expected is None else f"{r.completion_tokens_expected:,}"
    if r.cost_max is None:
        cost = "-"  # no price: tokens and time only
    else:
        cost = ("?" if r.cost_expected is None else f"{r.cost_expected:.4f}") + f" / {r.cost_max:.4f}"
    # a server role's HTTP requests where they are not one per request (a ranking on vLLM's server)
    sent = f" ({r.sent:,} sent)" if r.sent is not None and r.sent != r.requests else ""
    return [stage, role, label, f"{r.requests:,}{sent}", f"{r.prompt_tokens:,}",
            f"{expected} / {r.completion_tokens_max:,}", cost, _duration(r.seconds)]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


__all__ = ["dry_run_command", "render"]
