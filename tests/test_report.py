"""Report page, plot data, templates and the dataset card, on a small fixture version (no browser here:
tests/test_browser.py opens the pages)."""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import statistics

import polars as pl
import pytest

from evolforge.config.bounds import ParamsError
from evolforge.config.loader import load_section
from evolforge.io.records import write_output
import yaml

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

from evolforge.steps.select.card import CardSettings, card_params, size_category, write_card  # noqa: E402
from evolforge.steps.select.settings import SelectSettings  # noqa: E402
from evolforge.report import build_report  # noqa: E402
from evolforge.report.assets import LIBRARIES, TEMPLATE, library_scripts  # noqa: E402
from evolforge.report.collect import collect  # noqa: E402
from evolforge.report.page import CHARTS, render, spec  # noqa: E402
from evolforge.score.histogram import histogram, nice_step  # noqa: E402
from report_fixture import CARD, REPO, REPORT, build_version  # noqa: E402


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    root = tmp_path_factory.mktemp("version")
    return root, build_version(root)


def significant_digits(x: float) -> int:
    digits = f"{abs(x):.12g}".replace(".", "").lstrip("0").split("e")[0]
    return len(digits.rstrip("0")) or 1


@pytest.mark.parametrize("values", [
    [0.48697741213187384, 0.53, 0.91, 1.0681340194346, 0.77],
    [0.0, 0.0209, 0.3, 0.41],
    [3.0, 3.0],
    [1e-5 * i for i in range(40)],
    [-2.5, 7.25, 1000.0],
])
def test_histogram_bins_are_round_and_count_everything(values):
    bins = histogram(values + [None, float("nan")])
    assert sum(b["count"] for b in bins) == len(values)
    assert 1 <= len(bins) <= 21
    step = bins[0]["bin_high"] - bins[0]["bin_low"]
    for b in bins:
        assert significant_digits(b["bin_low"]) <= 3 and significant_digits(b["bin_high"]) <= 3, b
        assert b["bin_high"] - b["bin_low"] == pytest.approx(step)
    assert bins[0]["bin_low"] <= min(values) and bins[-1]["bin_high"] >= max(values)
    assert histogram([None]) == []
    column = pl.Series(values + [None, float("nan")], dtype=pl.Float64)  # a table's column, as score bins it
    assert histogram(column.to_numpy()) == bins


def test_nice_step():
    assert [nice_step(span, 20) for span in (1.0, 0.58, 7.0, 2e-4)] == [0.05, 0.05, 0.5, 1e-5]


def test_template_inlines_the_three_libraries_with_their_licences():
    text = TEMPLATE.read_text(encoding="utf-8")
    assert "{plot_divs}" in text and "{scripts}" not in text  # {scripts} is where DVC puts its CDN tags
    assert not re.search(r"<script[^>]+src=", text) and "sourceMappingURL" not in text
    for name, version, _, _ in LIBRARIES:
        assert f'data-library="{name}@{version}"' in text
        assert text.count(f"/*! {name} {version} (npm)") == 1
    assert text.count("University of Washington Interactive Data Lab") >= 3
    assert text.count("Redistribution and use in source and binary forms") == 3
    from dvc_render.html import HTML  # DVC accepts it as a template and fills it

    page = HTML(text).with_element("<div id='x'></div>").embed()
    assert "<div id='x'></div>" in page and "{plot_divs}" not in page
    assert library_scripts().count("<script") == 3


def test_collect_counts_match_the_fixture(version):
    root, expected = version
    v = collect(REPORT.under(root))
    funnel = {r["round"]: r for r in v["funnel"]}
    assert funnel[0]["in"] == expected["seeds"]
    for k in (1, 2, 3):
        assert (funnel[k]["evolved"], funnel[k]["failed"]) == (expected["evolved"][k], expected["failed"][k])
        assert funnel[k]["in"] == expected["seeds"]  # keep_parent: the pool keeps its size
        assert sum(funnel[k]["failed_by_reason"].values()) == expected["failed"][k]
        assert funnel[k]["answered"] == funnel[k]["judged"] == expected["evolved"][k]
    assert sum(r["selected"] or 0 for r in v["funnel"]) == expected["selected"]
    assert sum(r["answered"] or 0 for r in v["funnel"]) == expected["answered"]
    assert all(r["clean"] is None for r in v["funnel"])  # no data/clean in this version

    assert len(v["chains"]) == 20
    for chain in v["chains"]:
        assert chain[0]["round"] == 0 and [s["round"] for s in chain] == sorted(s["round"] for s in chain)
        assert chain[-1]["round"] == 3  # preferring chains that reach the last round
        assert len({s["root_id"] for s in chain}) == 1
    assert all(s["failure_reason"] for c in v["chains"] for s in c if s["status"] == "failed")

    shares = {}
    for row in v["levels"]:
        shares[row["round"]] = shares.get(row["round"], 0) + row["share"]
    assert shares == pytest.approx({1: 1.0, 2: 1.0, 3: 1.0}, abs=1e-3)
    ic = v["histograms"]["ic_ifd"]
    assert sum(b["count"] for b in ic if b["set"] == "pool") == expected["answered"]
    assert sum(b["count"] for b in ic if b["set"] == "selected") == expected["selected"]
    top, bottom = v["examples"]["top"], v["examples"]["bottom"]
    assert top[0]["ic_ifd"] >= top[-1]["ic_ifd"] >= bottom[-1]["ic_ifd"] >= bottom[0]["ic_ifd"]
    assert {p["stage"] for p in v["provenance"]} >= {"evolve round_1", "responses", "judged", "scores"}


def test_grouped_bars_keep_rounds_apart(version):
    root, _ = version
    chart = next(c for c in CHARTS if c[0] == "difficulty_levels")
    content = spec([("A", collect(REPORT.under(root)))], chart)
    enc = content["encoding"]
    assert enc["xOffset"]["field"] == enc["color"]["field"] == "round"  # one bar per round, side by side
    assert "stack" not in json.dumps(enc) and enc["x"]["field"] == "level" and enc["y"]["field"] == "share"
    assert {row["rev"] for row in content["data"]["values"]} == {"A"}


def test_report_page_one_and_two_versions(version, tmp_path):
    root, expected = version
    other = tmp_path / "other"
    build_version(other, seed=1)
    page = build_report(tmp_path / "index.html", REPORT, [str(root)], ["A"]).read_text(encoding="utf-8")
    assert page.count("<ol class='chain'") == 20
    assert page.count("evolforgeDraw('chart-") == len(CHARTS)
    # nothing the browser would fetch: no src / href attributes, no CSS url()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page) and "url(" not in page.split("<style>")[-1]
    assert "models/identity.json" in page and "evolver-model" in page
    assert "<h2>Scenario</h2>" in page and "<td>scenario</td><td>evol</td>" in page
    assert "<h2>Pairwise comparison</h2>" in page  # win, tie, lose of the fixture's 10 prompts
    assert ('<td>base</td><td class="num">10</td><td class="num">6</td><td class="num">3</td><td class="num">2</td>'
            '<td class="num">1</td>') in page  # 2 of the ties identical answers, no judge asked

    both = build_report(tmp_path / "compare.html", REPORT, [str(root), str(other)], ["A", "B"]).read_text(encoding="utf-8")
    assert both.count("<ol class='chain'") == 40 and "<h3>A</h3>" in both and "<h3>B</h3>" in both
    specs = [json.loads(m) for m in re.findall(r"evolforgeDraw\('chart-[a-z_]+', (\{.*?\})\);</script>", both)]
    revs = set().union(*({row["rev"].split(" · ")[0] for row in s["data"]["values"]} for s in specs))
    assert revs == {"A", "B"}


def test_report_of_a_version_with_nothing_built(tmp_path):
    page = render([("empty", collect(REPORT.under(tmp_path)))])
    assert "not built in this version" in page and "no data" in page


def test_dataset_card_and_datasets_folder(version, tmp_path):
    import datasets

    root, expected = version
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["card"] = {"license": "apache-2.0", "limitations": "Demo seeds only."}
    card = write_card(root / "data" / "selected", CARD.under(root), card_params(params), SelectSettings())
    text = card.read_text(encoding="utf-8")
    header = yaml.safe_load(text.split("---")[1])
    assert header["license"] == "apache-2.0" and header["size_categories"] == ["n<1K"]
    assert header["task_categories"] == ["text-generation"] and header["language"] == ["en"]
    for section in ("## How it was made", "### Models", "### Prompt templates", "### Counts per stage", "## Known limitations"):
        assert section in text
    assert "Demo seeds only." in text and "evolver-model" in text and "e" * 64 in text
    assert "**Scenario**: `evol`, " in text and " items from `data/responses`." in text
    assert f"| 1 | {expected['seeds']} | {expected['evolved'][1]} | {expected['failed'][1]} |" in text

    assert "### Software versions" in text and f"| `polars` | {pl.__version__} |" in text
    assert header["configs"][0]["description"].startswith("fingerprint ")
    # its own cache folder: the machine's cache may hold another version's `selected` entry
    ds = datasets.load_dataset(str(root / "data" / "selected"), cache_dir=str(tmp_path / "hf-datasets"))["train"]
    selected = pl.read_parquet(root / "data" / "selected" / "items.parquet")
    assert ds.num_rows == selected.height == expected["selected"]
    assert ds[0]["id"] == selected["id"][0]
    assert [m["role"] for m in ds[0]["messages"]] == ["user", "assistant"]
    assert ds[0]["messages"][1]["content"] == selected["output"][0]


def test_card_quotes_what_its_inputs_recorded_not_params(version, tmp_path):
    """The card states the settings each input recorded (its meta.json's `settings`), so another params.yaml -- a
    role, another stage's section -- writes the same card, and select declares only `select` and `card`."""
    root, _ = version
    copy = _copy_version(root, tmp_path / "v")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    other = {**params, "seed": {"source": "elsewhere.jsonl"}, "judge": {"score_prompt": "code"},
             "roles": {**params["roles"], "base": {"backend": "hf", "model": "another-base"}}}
    select = load_section(params, "select", SelectSettings)
    texts = [write_card(copy / "data" / "selected", CARD.under(copy), card_params(p), select).read_text(encoding="utf-8")
             for p in (params, other)]
    assert texts[0] == texts[1] and "elsewhere" not in texts[0] and "another-base" not in texts[0]
    assert "**Seed source**: `data/seeds/demo.jsonl`, limit 24." in texts[0]
    assert "**Evolution**: strategy `evol`, rounds round_1, round_2, round_3, failures `keep_parent`." in texts[0]
    assert f"`top_fraction`: {select.top_fraction}" in texts[0] and "`near_duplicates`: 0.7" in texts[0]
    recorded = yaml.safe_load(texts[0].split("### Settings")[1].split("```yaml\n")[1].split("```")[0])
    # those there, in pipeline order; the rounds recorded the same settings: one entry
    assert list(recorded) == ["data/seed", "data/evolved/round_1, data/evolved/round_2, data/evolved/round_3",
                              "data/pool", "data/judged", "data/scores"]
    assert recorded["data/evolved/round_1, data/evolved/round_2, data/evolved/round_3"] == {
        "strategy": "evol", "on_failure": "keep_parent"}
    assert recorded["data/seed"] == {"source": "data/seeds/demo.jsonl", "limit": 24}
    assert recorded["data/scores"] == {"template": "raw"} and recorded["data/judged"] is None  # it recorded none
    assert "### Models" in texts[0] and "| evolver | hf | evolver-model |" in texts[0]  # models/identity.json


def _selection(root, prefix: str, n: int):
    """A minimal selection folder ``root/data/selected`` of ``n`` items whose ids start with ``prefix``."""
    folder = root / "data" / "selected"
    folder.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"id": [f"{prefix}-{i}" for i in range(n)], "root_id": ["r"] * n, "parent_id": [None] * n,
                  "round": [1] * n, "method": ["deepen"] * n, "instruction": [f"{prefix} question {i}" for i in range(n)],
                  "input": [""] * n, "output": [f"{prefix} answer {i}" for i in range(n)]}).write_parquet(folder / "items.parquet")
    write_card(folder, CARD.under(root), card_params({}), SelectSettings())
    return folder


def test_each_dataset_version_loads_as_itself_through_one_shared_cache(tmp_path):
    """Two versions, one cache: each loads its own rows, as two experiments' folders and as one folder whose
    content changed (`dvc checkout` of another version). `datasets` keys its cache on the folder's name and the
    card's header, so without the fingerprint in the header the second would load as the first."""
    import datasets

    cache = str(tmp_path / "shared-cache")

    def load(folder):
        return datasets.load_dataset(str(folder), cache_dir=cache)["train"]["id"]

    a, b = _selection(tmp_path / "a", "a", 3), _selection(tmp_path / "b", "b", 5)
    assert load(a) == ["a-0", "a-1", "a-2"]
    assert load(b) == [f"b-{i}" for i in range(5)]
    assert load(a) == ["a-0", "a-1", "a-2"]
    _selection(tmp_path / "a", "c", 4)  # the same folder, another version
    assert load(a) == [f"c-{i}" for i in range(4)]
    headers = [yaml.safe_load((f / "README.md").read_text().split("---")[1])["configs"][0] for f in (a, b)]
    assert headers[0]["description"] != headers[1]["description"]
    assert headers[0]["data_files"] == headers[1]["data_files"] == [{"split": "train", "path": "data/train-*.parquet"}]


def test_card_scenario_line(tmp_path):
    from evolforge.steps.select.card import _scenario_line

    pool = tmp_path / "metrics" / "pool.json"
    assert "not recorded" in _scenario_line(None) and "not recorded" in _scenario_line(pool)
    (tmp_path / "metrics").mkdir()
    pool.write_text(json.dumps(
        {"scenario": "autoif", "source": "data/responses", "items": 40, "autoif_items": 0,
         "fallback": "no_autoif_items: 0 verified constraints"}))
    line = _scenario_line(pool)
    assert line.startswith("**Scenario**: `autoif`, 40 items from `data/responses`")
    assert "evolved one was used" in line and "0 verified constraints" in line and "verified by AutoIF" not in line
    pool.write_text(json.dumps(
        {"scenario": "autoif", "source": "data/autoif/responses", "items": 12, "autoif_items": 12, "fallback": None}))
    line = _scenario_line(pool)
    assert "12 items from `data/autoif/responses`, of them 12 verified by AutoIF" in line and "used" not in line
    page = render([("A", {**collect(REPORT.under(tmp_path / "nothing")), "metrics": {"pool": {"scenario": "autoif", "items": 3,
                                                                                 "fallback": "no_autoif_items: none"}}})])
    assert "<td>fallback</td><td>no_autoif_items: none</td>" in page and "no compare metrics" in page


def test_card_settings_are_checked():
    with pytest.raises(ParamsError, match="card.licence"):
        load_section({"card": {"licence": "mit"}}, "card", CardSettings)
    with pytest.raises(ParamsError, match="card.language"):
        load_section({"card": {"language": "en"}}, "card", CardSettings)
    assert load_section({}, "card", CardSettings) == CardSettings()
    assert [size_category(n) for n in (0, 999, 1000, 250_000)] == ["n<1K", "n<1K", "1K<n<10K", "100K<n<1M"]


def test_export_draws_svg_and_png_offline(version, tmp_path):
    from evolforge.report.export import export_plots

    root, _ = version
    v = collect(REPORT.under(root))
    specs = {c[0]: spec([("A", v)], c) for c in CHARTS}
    svg = export_plots(tmp_path, "svg", specs=specs)
    assert len(svg) == len(CHARTS) and all(p.read_text().lstrip().startswith("<svg") for p in svg)
    assert "<path" in (tmp_path / "ic_ifd.svg").read_text()
    png = export_plots(tmp_path, "png", specs={"ic_ifd": specs["ic_ifd"]}, scale=1)
    assert png[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="format"):
        export_plots(tmp_path, "gif", specs=specs)


def _copy_version(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_card_counts_come_from_the_selection_being_written(version, tmp_path):
    """The select stage writes the card inside its atomic write, before data/selected exists."""
    import shutil

    root, expected = version
    copy = _copy_version(root, tmp_path / "v")
    staging = tmp_path / "staging"
    staging.mkdir()
    shutil.copy(copy / "data" / "selected" / "items.parquet", staging / "items.parquet")
    shutil.rmtree(copy / "data" / "selected")
    text = write_card(staging, CARD.under(copy), card_params({}), SelectSettings()).read_text(encoding="utf-8")
    selected = pl.read_parquet(staging / "items.parquet")
    rows = [line for line in text.splitlines() if re.match(r"\| [123] \|", line)]
    per_round = {int(line.split("|")[1]): int(line.split("|")[-2]) for line in rows}
    assert per_round == {k: int((selected["round"] == k).sum()) for k in (1, 2, 3)}
    assert sum(per_round.values()) == expected["selected"] > 0
    evolved = sum(expected["evolved"].values())
    assert f"{expected['selected']} instruction-response pairs: {expected['selected']} with instructions evolved" in text
    assert f"({evolved} rewrites survived over 3 round(s)" in text and "No instruction evolved" not in text


def _nothing_evolved_version(root):
    """A version whose one round failed entirely after `auto` fell back to the hand-written methods."""
    from evolforge.io.records import make_id, write_output

    seeds = pl.DataFrame([{"id": make_id(f"s{i}"), "root_id": make_id(f"s{i}"), "parent_id": None, "round": 0,
                           "method": "seed", "status": "seed", "failure_reason": None, "instruction": f"Seed {i}.",
                           "input": "", "output": f"Answer {i}."} for i in range(4)],
                         schema_overrides={"parent_id": pl.String, "failure_reason": pl.String})
    write_output(root / "data" / "seed", seeds)
    failed = seeds.with_columns(parent_id=pl.col("id"), id=pl.col("id") + "x", round=pl.lit(1, pl.Int64),
                                method=pl.lit("deepening"), status=pl.lit("failed"),
                                failure_reason=pl.lit("copied_template_words"))
    write_output(root / "data" / "evolved" / "round_1", failed,
                 meta={"round": "round_1", "settings": {"strategy": "evol", "on_failure": "drop"}, "requested_strategy": "auto",
                       "fallback": "evolve.strategy auto falls back to evol: the evolver cannot follow the method"})
    write_output(root / "data" / "responses", seeds)
    write_output(root / "data" / "pool", seeds)
    write_output(root / "data" / "selected", seeds.head(3))


def test_card_says_nothing_evolved_and_names_the_fallback(tmp_path):
    _nothing_evolved_version(tmp_path)  # auto requested (its round's meta.json), fell back to evol
    text = write_card(tmp_path / "data" / "selected", CARD.under(tmp_path), card_params({}), SelectSettings()).read_text(encoding="utf-8")
    intro = text.split("\n# ", 1)[1].split("\n\n")[1]
    assert intro.startswith("3 instruction-response pairs. No instruction evolved: 1 round(s) of evolution were run")
    assert "seed instructions" in intro and "Evol-Instruct" not in intro
    assert "**Evolution**: strategy `auto` requested, used `evol` (evolve.strategy auto falls back to evol" in text
    assert "rounds round_1, failures `drop`." in text
    assert "| seed | 4 |  |  |  | 4 |  |  | 3 |" in text and "| 1 | 4 | 0 | 4 | copied_template_words: 4 |" in text


def test_report_shows_what_dedup_and_decontamination_removed(version, tmp_path):
    from evolforge.io.records import write_output

    root, _ = version
    copy = _copy_version(root, tmp_path / "v")
    responses = pl.read_parquet(copy / "data" / "responses" / "items.parquet")
    r1 = responses.filter(pl.col("round") == 1)
    duplicates = pl.concat([r1.head(2).with_columns(dedup_reason=pl.lit("near_duplicate")),
                            r1.slice(2, 1).with_columns(dedup_reason=pl.lit("exact_duplicate"))])
    contaminated = responses.filter(pl.col("round") == 2).head(1).with_columns(contamination_benchmark=pl.lit("gsm8k"))
    deduped = responses.join(duplicates.select("id"), on="id", how="anti")
    write_output(copy / "data" / "dedup", deduped, tables={"removed.parquet": duplicates})
    write_output(copy / "data" / "clean", deduped.join(contaminated.select("id"), on="id", how="anti"),
                 tables={"removed.parquet": contaminated})
    funnel = {r["round"]: r for r in collect(REPORT.under(copy))["funnel"]}
    assert funnel[1]["removed_by_reason"] == {"near_duplicate": 2, "exact_duplicate": 1}
    assert funnel[2]["removed_by_reason"] == {"contaminated": 1} and funnel[3]["removed_by_reason"] == {}
    assert funnel[1]["clean"] == funnel[1]["answered"] - 3
    page = render([("A", collect(REPORT.under(copy)))])
    assert "near_duplicate: 2<br>exact_duplicate: 1" in page and "contaminated: 1" in page


def test_partly_built_workspace_warns_about_stale_metrics(version, tmp_path, capsys):
    """A metric sits beside its stage's outputs as the workspace's dvc.yaml declares them."""
    import shutil

    root, _ = version
    copy = _copy_version(root, tmp_path / "v")
    layout = REPORT.under(copy)
    assert collect(layout)["warnings"] == []  # no dvc.yaml: a version copied out of a revision, complete by construction
    assert collect(layout, copy / "dvc.yaml")["warnings"] == []  # none there either
    shutil.copy(REPO / "dvc.yaml", copy / "dvc.yaml")
    (copy / "metrics" / "evolve").mkdir()
    (copy / "metrics" / "evolve" / "round_1.json").write_text("{}")  # an evolve round's own metrics
    for output in ("data/method", "data/pool", "data/clean", "data/diversity", "models/sft", "data/eval_base",
                   "data/eval", "data/compare"):
        (copy / output).mkdir(parents=True, exist_ok=True)
    assert collect(layout, copy / "dvc.yaml")["warnings"] == []  # every metric sits beside its stage's outputs
    shutil.rmtree(copy / "data" / "evolved")  # a fresh clone that built only the seed and responses
    shutil.rmtree(copy / "data" / "compare")  # evaluate ran here, compare did not
    warnings = collect(layout, copy / "dvc.yaml")["warnings"]
    assert any(w.startswith("metrics/evolve present but data/evolved is not") for w in warnings)
    assert any("metrics/compare.json present but data/compare is not" in w for w in warnings)
    assert not any("metrics/eval.json" in w for w in warnings) and len(warnings) == 2
    build_report(tmp_path / "index.html", REPORT, [str(copy)], ["ws"])
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert page.count("<p class='warning'>ws: ") == len(warnings)
    assert "evolforge report: warning: ws: metrics/compare.json present" in capsys.readouterr().err
    build_report(tmp_path / "stage.html", REPORT, [str(copy)], ["ws"], stale_check=False)  # the report stage's
    assert "<p class='warning'>" not in (tmp_path / "stage.html").read_text(encoding="utf-8")


def test_evaluation_differences_show_their_sample_size(version):
    from evolforge.report.sections import eval_table

    v = {"eval": {"base": {"mbpp/pass@1": 0.5, "mbpp/n": 4, "gsm8k/exact_match_flexible": 0.2, "gsm8k/n": 5},
                  "finetuned": {"mbpp/pass@1": 0.75, "mbpp/n": 4, "gsm8k/exact_match_flexible": 0.4, "gsm8k/n": 10}}}
    page = eval_table(v)
    assert "<th>items (n)</th>" in page
    assert '<td>mbpp/pass@1</td><td class="num">0.5</td><td class="num">0.75</td><td class="num">0.25</td><td class="num">4</td>' in page
    assert '<td class="num">5 / 10</td>' in page and "mbpp/n" not in page


def test_side_by_side_tables_scroll_in_their_column():
    from evolforge.report.page import STYLE

    rule = re.search(r"\.side > div \{([^}]*)\}", STYLE).group(1)
    assert "min-width: 0" in rule and "overflow-x: auto" in rule


def test_charts_read_well_with_few_points_and_two_sets(version):
    """The selection's histogram shares the pool's bins (bars of one width); step charts tick whole steps from zero."""
    root, _ = version
    v = collect(REPORT.under(root))
    for col in ("ifd", "ic_ifd", "mnd"):
        pool = [(b["bin_low"], b["bin_high"]) for b in v["histograms"][col] if b["set"] == "pool"]
        chosen = [(b["bin_low"], b["bin_high"]) for b in v["histograms"][col] if b["set"] == "selected"]
        assert chosen == pool
    for name in ("optimize", "train_loss"):
        content = spec([("A", v)], next(c for c in CHARTS if c[0] == name))
        enc = content["encoding"]
        assert content["mark"]["point"] is True and enc["x"]["axis"] == {"tickMinStep": 1, "format": "d"}
        assert enc["y"]["scale"]["zero"] is True and enc["color"]["field"] == "rev"


def _section(page: str, title: str) -> str:
    """The page's HTML between the heading ``title`` and the next heading."""
    return page.split(f"<h2>{title}</h2>", 1)[1].split("<h2>", 1)[0]


def test_survival_per_round_in_the_funnel_and_the_summary(version):
    root, expected = version
    v = collect(REPORT.under(root))
    page = render([("A", v)])
    funnel = {r["round"]: r for r in v["funnel"]}
    assert funnel[0]["survival"] is None
    for k in (1, 2, 3):
        share = expected["evolved"][k] / expected["seeds"]  # survivors over the round's attempts
        assert funnel[k]["survival"] == pytest.approx(share, abs=1e-4)
        assert v["headline"]["surv"][f"r{k}"] == pytest.approx(share, abs=1e-4)  # metrics/evolve.json agrees
        cell = f'<td class="num">{share:.1%}</td>'
        row = (f'<tr><td class="num">{k}</td><td class="num">{expected["seeds"]}</td>'
               f'<td class="num">{expected["evolved"][k]}</td>{cell}<td class="num">{expected["failed"][k]}</td>')
        assert row in _section(page, "Funnel per round")
        assert f"<td><code>surv.r{k}</code></td>{cell}" in _section(page, "Summary")
    assert f'<td><code>sel.n</code></td><td class="num">{expected["selected"]}</td>' in page


def test_evolved_instructions_beside_their_parents(version):
    root, expected = version
    v = collect(REPORT.under(root))
    tables = [pl.read_parquet(root / "data" / "seed" / "items.parquet")] + [
        pl.read_parquet(root / "data" / "evolved" / f"round_{k}" / "items.parquet") for k in (1, 2, 3)]
    by_id = {r["id"]: r for t in tables for r in t.to_dicts()}
    judged = {r["id"]: r for r in pl.read_parquet(root / "data" / "judged" / "items.parquet").to_dicts()}
    section = _section(render([("A", v)]), "Evolved instructions beside their parents")
    for k in (1, 2, 3):
        pairs = [p for p in v["pairs"] if p["round"] == k]
        # the 4 survivors whose seed ids hash lowest: the same lineages in every round
        survivors = tables[k].filter(pl.col("status") == "evolved")
        lowest = sorted(survivors.iter_rows(named=True), key=lambda r: hashlib.sha256(r["root_id"].encode()).hexdigest())[:4]
        assert [p["id"] for p in pairs] == [r["id"] for r in lowest] and len(pairs) == min(4, expected["evolved"][k])
        for p in pairs:
            parent = by_id[p["parent_id"]]
            assert p["parent"]["instruction"] == parent["instruction"] and p["parent"]["round"] == parent["round"] < k
            assert p["instruction"] == parent["instruction"] + f" Then add step {k}."  # how the fixture evolves
            assert p["score"] == judged[p["id"]]["difficulty_expected"] and p["level"] == judged[p["id"]]["difficulty_level"]
            assert p["parent"]["score"] == (judged[parent["id"]]["difficulty_expected"] if parent["id"] in judged else None)
            assert html.escape(parent["instruction"]) in section and html.escape(p["instruction"]) in section
    assert any(p["parent"]["round"] == 0 for p in v["pairs"]) and any(p["parent"]["score"] is not None for p in v["pairs"])
    assert "expected score, level: parent" in section and section.count("<tr>") == len(v["pairs"]) + 1


def test_difficulty_distribution_per_round(version, tmp_path):
    root, _ = version
    v = collect(REPORT.under(root))
    judged = pl.read_parquet(root / "data" / "judged" / "items.parquet")
    for field in ("difficulty_expected", "difficulty_score"):
        rows = {r["round"]: r for r in v["difficulty"] if r["score"] == field}
        assert sorted(rows) == [1, 2, 3]
        for k, r in rows.items():
            scores = judged.filter(pl.col("round") == k)[field].to_list()
            q1, median, q3 = statistics.quantiles(scores, n=4, method="inclusive")
            assert r["median"] == pytest.approx(statistics.median(scores)) == pytest.approx(median)
            assert (r["q1"], r["q3"]) == (pytest.approx(q1), pytest.approx(q3))
            assert (r["judged"], r["scored"], r["min"], r["max"]) == (len(scores), len(scores), min(scores), max(scores))
            assert r["mean"] == pytest.approx(statistics.fmean(scores))
    page = render([("A", v)])
    r2 = next(r for r in v["difficulty"] if r["score"] == "difficulty_expected" and r["round"] == 2)
    assert (f'<td>expected score (<code>difficulty_expected</code>)</td><td class="num">2</td><td class="num">{r2["judged"]}'
            f'</td><td class="num">{r2["judged"]}</td><td class="num">{r2["mean"]:.4g}</td>') in _section(page, "Difficulty per round")
    content = spec([("A", v)], next(c for c in CHARTS if c[0] == "difficulty_scores"))
    assert content["spec"]["layer"][2]["encoding"]["y"]["field"] == "median"
    assert {row["rev"] for row in content["data"]["values"]} == {"A · expected score", "A · most likely score"}

    # judge.probabilities off: the expected score is null, the most likely one is all there is
    copy = _copy_version(root, tmp_path / "v")
    write_output(copy / "data" / "judged", judged.with_columns(difficulty_expected=pl.lit(None, pl.Float64)))
    off = collect(REPORT.under(copy))
    assert {r["score"] for r in off["difficulty"]} == {"difficulty_score"}
    assert all(p["score"] == judged.filter(pl.col("id") == p["id"])["difficulty_score"].item() for p in off["pairs"])


def test_harder_per_round_on_the_page(version):
    """The SLM paper's measure per round (metrics/evolve.json, evolve_report's): the share of the judged items at
    hard or very hard and their mean expected score, as the judged items give them; the distinct problems of the
    selection in the summary."""
    root, expected = version
    v = collect(REPORT.under(root))
    judged = pl.read_parquet(root / "data" / "judged" / "items.parquet")
    section = _section(render([("A", v)]), "Difficulty per round")
    assert list(v["harder"]) == ["round_1", "round_2", "round_3"]
    for k in (1, 2, 3):
        part = judged.filter(pl.col("round") == k)
        top = int(part["difficulty_level"].is_in(["hard", "very hard"]).sum())
        mean = statistics.fmean(part["difficulty_expected"].to_list())
        assert v["harder"][f"round_{k}"]["mean_expected"] == pytest.approx(mean, abs=1e-4)
        assert (f'<tr><td>round_{k}</td><td class="num">{part.height}</td><td class="num">{part.height}</td>'
                f'<td class="num">{top}</td><td class="num">{top / part.height:.1%}</td>'
                f'<td class="num">{v["harder"][f"round_{k}"]["mean_expected"]:.4g}</td></tr>') in section
    assert v["headline"]["sel"]["problems"] == expected["selected"]
    assert f'<td><code>sel.problems</code></td><td class="num">{expected["selected"]}</td>' in render([("A", v)])


def test_instruction_text_is_escaped_on_the_page(version):
    root, _ = version
    page = render([("A", collect(REPORT.under(root)))])
    assert "<b>topic" not in page  # every fixture instruction holds "<b>topic i</b> & its history."
    for title in ("Evolved instructions beside their parents", "Sample lineage chains"):
        assert "&lt;b&gt;topic" in _section(page, title) and "&amp; its history" in _section(page, title)


def test_card_versions_come_from_the_select_stages_inputs_only(tmp_path):
    """The card is part of data/selected, so it reads only the select stage's deps: an output of a later stage
    (data/compare) or a folder another run left behind must not change it."""
    _nothing_evolved_version(tmp_path)
    (tmp_path / "data" / "clean").mkdir(parents=True, exist_ok=True)
    (tmp_path / "data" / "clean" / "meta.json").write_text(json.dumps({"versions": {"polars": "9.9.9-clean"}}))
    (tmp_path / "data" / "compare").mkdir(parents=True)
    (tmp_path / "data" / "compare" / "meta.json").write_text(json.dumps({"versions": {"polars": "0.0.1-later"}}))
    text = write_card(tmp_path / "data" / "selected", CARD.under(tmp_path), card_params({}), SelectSettings()).read_text(encoding="utf-8")
    assert "| `polars` | 9.9.9-clean | data/clean |" in text
    assert "0.0.1-later" not in text and "data/compare" not in text
