"""The report page and the `dvc plots show` page in a real browser (headless Chromium): every chart draws,
nothing is logged as an error, and no request leaves the page. Screenshots go to
$EVOLFORGE_TEST_ARTIFACTS/browser/ (default: pytest's temporary folder)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from browser import chromium, open_page
from evolforge.report import build_report
from evolforge.report.page import CHARTS
from report_fixture import REPO, REPORT, build_version

needs_chromium = pytest.mark.skipif(chromium() is None, reason="headless Chromium is not installed "
                                    "(Debian: apt-get install -y chromium); the browser checks are skipped")
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    base = os.environ.get("EVOLFORGE_TEST_ARTIFACTS")
    folder = Path(base) / "browser" if base else tmp_path_factory.mktemp("browser")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def plots_section() -> str:
    """The `plots:` block of docs/how-to/report.md (the dvc.yaml one, checked in :func:`dvc_repo`)."""
    text = (REPO / "docs" / "how-to" / "report.md").read_text(encoding="utf-8")
    return re.search(r"<!-- plots section.*?-->\n```yaml\n(.*?)```", text, re.S).group(1)


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory) -> Path:
    """A temporary git + DVC repository: the fixture's plot data, the docs' plots section, the template."""
    import shutil

    import yaml

    repo = tmp_path_factory.mktemp("plots_repo")
    build_version(repo)
    live = repo / "metrics" / "train_live" / "plots" / "metrics"
    live.mkdir(parents=True)
    (live / "loss.tsv").write_text("step\tloss\n1\t3.1\n10\t2.4\n20\t1.9\n")
    (live / "learning_rate.tsv").write_text("step\tlearning_rate\n1\t2e-05\n10\t1.5e-05\n20\t1e-05\n")
    shutil.copytree(REPO / "src" / "evolforge" / "report", repo / "src" / "evolforge" / "report",
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (repo / "dvc.yaml").write_text(plots_section())
    assert yaml.safe_load(plots_section())["plots"] == yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"], \
        "docs/how-to/report.md shows a plots section other than dvc.yaml's"

    def run(*cmd: str) -> str:
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
        assert proc.returncode == 0, f"{cmd}: {proc.stderr[-2000:]}"
        return proc.stdout

    dvc = (sys.executable, "-m", "dvc")
    run("git", "init", "-q")
    run(*dvc, "init", "-q")
    run(*dvc, "config", "core.analytics", "false")
    run(*dvc, "config", "plots.html_template", "../src/evolforge/report/plots_template.html")  # the project's setting
    run(*dvc, "plots", "show", "-o", "dvc_plots")
    return repo


def test_plots_page_uses_the_offline_template(dvc_repo):
    page = (dvc_repo / "dvc_plots" / "index.html").read_text(encoding="utf-8")
    assert "cdn.jsdelivr" not in page and 'data-library="vega@5.20.2"' in page
    assert page.count("vegaEmbed('#") == 10  # each plot once


def test_export_from_dvc(dvc_repo, tmp_path):
    from evolforge.report.export import export_plots

    files = export_plots(tmp_path, "svg", repo=dvc_repo)
    assert sorted(p.stem for p in files) == sorted(
        ["difficulty_levels_by_round", "evolve_failures_by_reason", "removed_by_dedup_and_decontamination",
         "evolve_length_growth", "optimize_failure_rate",
         "ifd_histogram", "ic_ifd_histogram", "mnd_histogram", "train_loss", "train_learning_rate"])
    assert all("<path" in p.read_text() for p in files)


@needs_chromium
def test_plots_page_renders_offline_in_chromium(dvc_repo, shots):
    result = open_page(dvc_repo / "dvc_plots" / "index.html", shots / "dvc_plots.png")
    assert result.console_errors == [] and result.requests == []
    assert len(result.charts) == 10
    assert all(c["marks"] > 50 for c in result.charts), result.charts  # coloured pixels: bars and lines drew
    assert (shots / "dvc_plots.png").stat().st_size > 10_000


@needs_chromium
def test_report_page_renders_offline_in_chromium(tmp_path, shots):
    a, b = tmp_path / "a", tmp_path / "b"
    build_version(a)
    build_version(b, seed=1)
    for name, sources in (("report", [a]), ("compare", [a, b])):
        page = build_report(tmp_path / f"{name}.html", REPORT, [str(s) for s in sources], ["A", "B"][: len(sources)])
        result = open_page(page, shots / f"{name}.png")
        assert result.console_errors == [] and result.requests == []
        assert result.status == {"expected": len(CHARTS), "drawn": len(CHARTS), "errors": []}
        assert len(result.charts) == len(CHARTS) and all(c["kind"] == "svg" and c["marks"] > 0 for c in result.charts), result.charts
