"""The report's spend section: tokens and cost per role over the stages' metrics, and per item kept.

Every LLM stage writes its roles' ``LLM.stats`` under ``llm.<role>`` in its metrics (``calls``,
``prompt_tokens``, ``completion_tokens``, and ``cost`` for a role with prices). They count the calls that
stage's last run made: answers served from the call cache cost nothing, so a version rebuilt from a warm
cache shows what its last runs paid, not what the data cost first.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import polars as pl

from evolforge.io.records import TABLE
from evolforge.steps.common.layout import Layout


def spend(layout: Layout) -> dict[str, Any]:
    """Per role and in total: calls, tokens, cost (None when no role has a price) over the metrics folder of
    ``layout``; and the cost per item surviving to its clean items and per item of its selection."""
    roles: dict[str, dict[str, Any]] = {}
    metrics = sorted(layout.metrics_dir.rglob("*.json")) if layout.metrics_dir is not None else []
    for path in metrics:
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for role, stats in ((metrics.get("llm") or {}) if isinstance(metrics, dict) else {}).items():
            if not isinstance(stats, dict):
                continue
            mine = roles.setdefault(role, {"calls": 0, "prompt_tokens": 0, "cached_prompt_tokens": 0,
                                           "completion_tokens": 0, "cost": None})
            for name in ("calls", "prompt_tokens", "cached_prompt_tokens", "completion_tokens"):
                mine[name] += int(stats.get(name) or 0)
            if stats.get("cost") is not None:
                mine["cost"] = (mine["cost"] or 0.0) + float(stats["cost"])
    costs = [r["cost"] for r in roles.values() if r["cost"] is not None]
    total = sum(costs) if costs else None
    surviving, selected = _rows(layout.clean), _rows(layout.selected)
    return {"roles": roles, "cost": total,
            "tokens": sum(r["prompt_tokens"] + r["completion_tokens"] for r in roles.values()),
            "surviving": surviving, "selected": selected,
            "cost_per_surviving": total / surviving if total is not None and surviving else None,
            "cost_per_selected": total / selected if total is not None and selected else None}


def _rows(folder: Path | None) -> int | None:
    if folder is None or not (folder / TABLE).exists():
        return None
    table = pl.read_parquet(folder / TABLE)
    if "failure_reason" in table.columns:  # the clean items keep the removed ones, marked
        table = table.filter(pl.col("failure_reason").is_null())
    return table.height


def spend_html(v: dict) -> str:
    """The spend of one version as an HTML table (per role, then the totals and costs per item)."""
    s = v.get("spend") or {}
    if not s.get("roles"):
        return '<p class="missing">no LLM stage metrics</p>'

    rows = [f"<tr><td>{html.escape(role)}</td>" + "".join(f"<td>{_fmt(r.get(k))}</td>" for k in STATS) + "</tr>"
            for role, r in sorted(s["roles"].items())]
    head = "".join(f"<th>{h}</th>" for h in ("role", "calls", "prompt tokens", "of them cached", "completion tokens",
                                             "cost"))
    per_item = (f"<p>cost {_fmt(s['cost'])}; per surviving item ({_fmt(s['surviving'])} in data/clean) "
                f"{_fmt(s['cost_per_surviving'])}; per selected item ({_fmt(s['selected'])}) "
                f"{_fmt(s['cost_per_selected'])}</p>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>{per_item}"


# cached_prompt_tokens: of prompt_tokens, those a provider served from its prompt cache
STATS = ("calls", "prompt_tokens", "cached_prompt_tokens", "completion_tokens", "cost")


def _fmt(x: Any) -> str:
    return "–" if x is None else f"{x:.4g}" if isinstance(x, float) else f"{x:,}"


__all__ = ["spend", "spend_html"]
