"""Benchmark table: the served path against in-process, stage by stage, from two runs' metrics.

Both runs are the shipped ``dvc repro`` on one machine, one with the chat roles in-process (``params.yaml`` as
shipped: llama.cpp in the stage's own process), the other with every chat role (evolver, optimizer, responder,
judge) ``backend: openai`` on a server (docs/how-to/servers.md has the params and the server's command). Each
stage's metrics file already holds its wall seconds (``wall_s``: the stage process, model load included) and per
role its requests and tokens (``llm``); this reads both ``metrics/`` folders and prints, per stage that asked an
LLM, time and calls and tokens side by side, and the ratio of the times (served / in-process).

    python bench/served_vs_inprocess.py --inprocess metrics --served ../served-run/metrics [--markdown]

Calls count requests asked of the model (cache hits apart): a served ranking is the walk's 1-6 short
generations per item and prompt where in-process scores every answer in one pass, so call counts differ there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def stage_figures(metrics_dir: Path) -> dict[str, dict]:
    """stage name -> {wall_s, calls, prompt_tokens, completion_tokens} for each stage whose metrics name LLMs."""
    out = {}
    for path in sorted(metrics_dir.rglob("*.json")):
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        llm = metrics.get("llm") if isinstance(metrics, dict) else None
        if not isinstance(llm, dict) or not llm or "wall_s" not in metrics:
            continue
        roles = [s for s in llm.values() if isinstance(s, dict)]
        name = str(path.relative_to(metrics_dir).with_suffix(""))
        out[name] = {"wall_s": float(metrics["wall_s"]),
                     **{k: sum(int(s.get(k) or 0) for s in roles)
                        for k in ("calls", "cache_hits", "prompt_tokens", "completion_tokens")}}
    return out


def table(inprocess: dict[str, dict], served: dict[str, dict]) -> list[list[str]]:
    """Rows: stage, in-process (s, calls, tokens), served (s, calls, tokens), time ratio; then the total."""
    rows, total = [], {"in": 0.0, "served": 0.0}
    for stage in sorted(set(inprocess) & set(served)):
        a, b = inprocess[stage], served[stage]
        total["in"] += a["wall_s"]
        total["served"] += b["wall_s"]
        rows.append([stage, f"{a['wall_s']:.0f}", str(a["calls"]), f"{a['prompt_tokens']} + {a['completion_tokens']}",
                     f"{b['wall_s']:.0f}", str(b["calls"]), f"{b['prompt_tokens']} + {b['completion_tokens']}",
                     f"{b['wall_s'] / a['wall_s']:.2f}x" if a["wall_s"] else "-"])
    rows.append(["total", f"{total['in']:.0f}", "", "", f"{total['served']:.0f}", "", "",
                 f"{total['served'] / total['in']:.2f}x" if total["in"] else "-"])
    return rows


HEADER = ["stage", "in-process s", "calls", "tokens (prompt + completion)", "served s", "calls",
          "tokens (prompt + completion)", "served / in-process"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inprocess", required=True, type=Path, help="the in-process run's metrics/ folder")
    ap.add_argument("--served", required=True, type=Path, help="the served run's metrics/ folder")
    ap.add_argument("--markdown", action="store_true", help="a Markdown table (for docs/how-to/servers.md)")
    args = ap.parse_args()
    rows = table(stage_figures(args.inprocess), stage_figures(args.served))
    if args.markdown:
        print("| " + " | ".join(HEADER) + " |")
        print("|" + "---|" * len(HEADER))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    for row in [HEADER, *rows]:
        print("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))))


if __name__ == "__main__":
    main()
