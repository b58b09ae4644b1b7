"""See a dataset version: the report page, offline plots, PNG/SVG export.

    evolforge report --out reports/index.html                 # the workspace's version
    evolforge report --compare exp-a exp-b --out reports/compare.html   # folders, git revisions or experiments
    evolforge plots export --format svg --out reports/plots   # every dvc.yaml plot as a file for papers
"""

from __future__ import annotations

import sys
from pathlib import Path

from evolforge.report.collect import collect
from evolforge.report.page import render
from evolforge.steps.common.layout import Layout


def materialize(rev: str, dest: str | Path, layout: Layout, repo: str | Path = ".") -> Path:
    """Copy what the report reads of git revision or experiment ``rev`` (the paths of ``layout``) into ``dest``
    (from DVC's cache).

    DVC-tracked outputs come from the local cache: run ``dvc exp pull`` / ``dvc pull`` first when they
    were built elsewhere. Paths that version lacks are skipped (the page shows them as missing).
    """
    from dvc.api import DVCFileSystem

    fs = DVCFileSystem(str(repo), rev=rev)
    dest = Path(dest)
    reads = [path.as_posix() for path in layout.given().values()]
    present = [rel for rel in reads if fs.exists(rel)]
    if not present:  # a mistyped folder or revision: a page of "missing" would say nothing useful
        raise RuntimeError(f"{rev!r} is no folder here, and as a git revision or experiment it holds none of the "
                           f"files the report reads ({', '.join(reads)})")
    for rel in present:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fs.get(rel, str(target), recursive=fs.isdir(rel))
        except Exception as err:  # dvc-data raises several kinds for an output that is not in the cache
            raise RuntimeError(f"{rev}: {rel} is not in the local DVC cache ({type(err).__name__}); fetch it with "
                               f"`dvc pull` or `dvc exp pull <remote> {rev}`, or pass a folder") from err
    return dest


def resolve(source: str, scratch: Path, layout: Layout, repo: str | Path = ".") -> Path:
    """A version's folder: ``source`` itself when it is a folder, else ``source`` as a revision, copied out."""
    if Path(source).is_dir():
        return Path(source)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in source)
    return materialize(source, scratch / safe, layout, repo)


def build_report(out: str | Path, layout: Layout, sources: list[str], labels: list[str] | None = None,
                 repo: str | Path = ".", scratch: str | Path | None = None, stale_check: bool = True) -> Path:
    """Write the report page for one version, or several side by side, to ``out`` (written atomically): each
    version a folder (or a revision copied out) holding its artifacts where ``layout`` says. ``stale_check``: warn
    about the metrics of a workspace folder (one with a dvc.yaml) that sit beside an absent output
    (:func:`~evolforge.report.collect.stale_metrics`)."""
    import os
    import tempfile

    labels = labels or [("workspace" if s in (".", "") else s) for s in sources]
    if len(labels) != len(sources):
        raise ValueError(f"{len(sources)} versions but {len(labels)} labels")
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        versions = []
        for label, source in zip(labels, sources):
            folder = resolve(source, Path(tmp), layout, repo)
            data = collect(layout.under(folder), folder / "dvc.yaml" if stale_check else None)
            data["root"] = source  # a revision's copy lives in a temporary folder: name the revision
            for warning in data["warnings"]:  # also on the page, above the first section
                print(f"evolforge report: warning: {label}: {warning}", file=sys.stderr)
            versions.append((label, data))
        text = render(versions)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    part.write_text(text, encoding="utf-8")
    os.replace(part, out)
    return out
