"""PNG / SVG / PDF files of the pipeline's plots, for papers: DVC fills the specs, vl-convert draws them.

    >>> export_plots("reports/plots", fmt="svg")                 # doctest: +SKIP
    [PosixPath('reports/plots/difficulty_levels_by_round.svg'), ...]

The specs are what ``dvc plots show --json`` (or ``dvc plots diff REV... --json`` for experiments side
by side) returns for every plot in ``dvc.yaml``, so the files match the HTML page. vl-convert renders
with its own bundled Vega (no browser, no network).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

FORMATS = ("svg", "png", "pdf")


def dvc_specs(revs: list[str] | None = None, repo: str | Path = ".") -> dict[str, dict]:
    """{plot id: filled Vega-Lite spec} from DVC, for the workspace or the given revisions / experiments."""
    # this interpreter's DVC: the one installed with evolforge, whether or not its bin/ is on PATH
    cmd = [sys.executable, "-m", "dvc", "plots", *(["diff", *revs] if revs else ["show"]), "--json"]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {repo}: {proc.stderr.strip()[-2000:]}")
    data = json.loads(proc.stdout)  # {"data": {plot id: [{"type": "vega", "content": spec, ...}]}, "errors": [...]}
    specs = {}
    for plot_id, renderers in (data.get("data") or {}).items():
        for r in renderers:
            if r.get("type") == "vega" and r.get("content"):
                specs[plot_id] = r["content"]
    if not specs:
        raise RuntimeError(f"{' '.join(cmd)}: no plot has data; has the pipeline run? {data.get('errors', '')}")
    return specs


def file_name(plot_id: str) -> str:
    """A plot id (a name, or a data file path for stage plots) as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", plot_id).strip("_")


def render(spec: dict, fmt: str, scale: float = 2.0) -> bytes:
    import vl_convert as vlc

    # the specs use Vega-Lite 5 (DVC's 5.2.0); 5.8 is vl-convert's oldest, closest release
    if fmt == "svg":
        return vlc.vegalite_to_svg(spec, vl_version="5.8").encode("utf-8")
    if fmt == "png":
        return vlc.vegalite_to_png(spec, vl_version="5.8", scale=scale)
    if fmt == "pdf":
        return vlc.vegalite_to_pdf(spec, vl_version="5.8")
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def export_plots(out_dir: str | Path, fmt: str = "svg", revs: list[str] | None = None, repo: str | Path = ".",
                 scale: float = 2.0, specs: dict[str, dict] | None = None) -> list[Path]:
    """Write one file per plot to ``out_dir``; ``specs`` defaults to DVC's (:func:`dvc_specs`)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    specs = specs if specs is not None else dvc_specs(revs, repo)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for plot_id, spec in specs.items():
        path = out_dir / f"{file_name(plot_id)}.{fmt}"
        path.write_bytes(render(spec, fmt, scale))
        written.append(path)
    return written
