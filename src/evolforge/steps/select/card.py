"""The dataset card of a selection, written with its ``datasets``-loadable copy (Hugging Face dataset layout;
the shards: :mod:`evolforge.steps.select.shards`).

Written into the selection's folder, beside what the select stage wrote::

    data/selected/README.md                              the card: YAML header + how the data was made
    data/selected/data/train-00000-of-00001.parquet      the rows (lineage, text, chat messages, scores)

The card's ``configs`` entry points ``datasets`` at the shards, so the other files of the folder
(items.parquet, train.jsonl, ...) are not mistaken for data::

    >>> import datasets                                                   # doctest: +SKIP
    >>> datasets.load_dataset("data/selected")["train"][0]["messages"]    # doctest: +SKIP
    [{'role': 'user', 'content': '...'}, {'role': 'assistant', 'content': '...'}]

The card says what made the data: seed source, every role's model and identity (the models stage's identity file),
prompt template hashes, the settings each input recorded (:mod:`evolforge.steps.select.recorded`: the card quotes
them, not ``params.yaml``) and the selection's own, counts per stage, the versions of the packages that can change
the data, and known limitations. The ``configs`` entry's ``description`` carries the shards' sha256 fingerprint:
``datasets`` keys its cache on the folder's name and that header, so each version gets its own cache entry and
loads as itself. ``params.yaml`` section ``card`` (optional) sets the header: the select stage declares ``card`` and
``select`` alone. The other stages' outputs it reads are the select stage's card flags (a
:class:`~evolforge.steps.common.layout.Layout`), and of each the files it reads are the select stage's dvc.yaml deps
(``tests/test_card_deps.py``): the seeds' and the rounds' ``items.parquet`` and ``meta.json``, the responses' and
dedup's ``meta.json``, the pool, so the card changes only with them and select reruns only for them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

import polars as pl
import yaml

from evolforge.config.loader import load_section
from evolforge.config.data import DataSettings
from evolforge.io.jsonfiles import read_json
from evolforge.io.records import META, OUTPUT_PACKAGES, TABLE, VERSIONS, output_versions
from evolforge.steps.select.recorded import evolution_line, recorded_folders, recorded_settings, seed_line, settings_of
from evolforge.steps.select.settings import CardSettings, SelectSettings
from evolforge.steps.common.funnel import funnel, provenance, round_strategies
from evolforge.steps.common.layout import Layout
from evolforge.steps.common.verification import COLUMNS as VERIFY_COLUMNS, DESCRIPTIONS as VERIFY_DESCRIPTIONS
from evolforge.steps.common.verification import evidence_line
from evolforge.steps.select.shards import hub_rows, shards_fingerprint, write_shards

DESCRIPTIONS = {
    "id": "stable content-derived id", "root_id": "id of the seed the item descends from",
    "parent_id": "id of the item it was evolved from", "round": "evolution round (0 = seed)",
    "method": "evolution method that produced it", "instruction": "the instruction", "input": "optional input",
    "output": "the response (responder model)", "messages": "the pair as chat messages (user, assistant)",
    "difficulty_level": "judge's difficulty label (5 levels)", "difficulty_score": "judge's difficulty score, 0-100",
    "ifd": "instruction-following difficulty, L(A|Q) / L(A)", "ic_ifd": "IC-IFD, L(A|Q) / (L(Q) L(A))",
    "mnd": "minimum distance to another item's embedding (diversity)",
    **VERIFY_DESCRIPTIONS,
}
# The configs header carries the shards' fingerprint: `datasets` keys its cache on the folder's name and the
# header (not on the files' contents), so without it every `data/selected` would share one cache entry and a
# second version would load as the first.
LOADING = """## Loading

```python
import datasets
ds = datasets.load_dataset("<this folder or hub id>")["train"]
```

The header's `configs` entry carries this version's fingerprint (`{fingerprint}`, sha256 of the shards), so
the `datasets` cache keeps each version apart. Or read the shards directly:
`polars.read_parquet("<this folder>/data/train-*.parquet")`."""
LIMITATIONS = (
    "- Instructions and responses are written by language models: they can be wrong, unsafe or unanswerable, and\n"
    """  the verify stage's verdicts (see Verification) rest on small models' tests, samples and judgements: a `right`
  is evidence, not proof. Difficulty labels and scores are one judge model's opinion.
- Evolution and selection favour what the evolver and scorer models find hard; topics, languages and styles of
  the seed set carry over, and so do its biases.
- Licence: the rows derive from the seed set and from the models' outputs; check the terms of both (see the
  models above) before redistributing or training on this data.""")


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n`` rows."""
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")):
        if n < bound:
            return label
    return "n>100M"


HUB_SHARE = 8  # the shards are written data.chunk_rows / HUB_SHARE rows at a time (write_card)


def _models(identities: Path | None) -> list[dict]:
    """Each role's backend, model, revision and identity, as the models stage pinned them; none without its file."""
    found = read_json(identities) if identities is not None and identities.is_file() else {}
    return [{"role": role, **{k: v.get(k) for k in ("backend", "model", "revision", "identity")}}
            for role, v in sorted(found.items()) if isinstance(v, dict)]


def _cell(value: Any) -> str:
    if value is None or value == {}:
        return ""
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _scenario_line(path: Path | None) -> str:
    """Which pool was deduplicated, judged and selected from (``path``: the pick_scenario stage's metrics)."""
    pool = read_json(path) if path is not None and path.is_file() else {}
    if not pool:
        return "**Scenario**: not recorded (no metrics of the pick_scenario stage)."
    line = (f"**Scenario**: `{pool.get('scenario', '?')}`, {pool.get('items', '?')} items from "
            f"`{pool.get('source', '?')}`")
    if pool.get("autoif_items"):
        line += f", of them {pool['autoif_items']} verified by AutoIF (their constraints checked by code)"
    if pool.get("fallback"):
        line += ("; the AutoIF pool was empty, so the evolved one was used (`autoif.on_empty: evol`): "
                 f"{pool['fallback']}")
    return line + "."


STRATEGY_WORDS = {"evol": "Evol-Instruct's hand-written methods", "auto": "Auto Evol-Instruct's optimized method",
                  "auto_initial": "Auto Evol-Instruct's initial (not optimized) method"}


def summary_text(rows: pl.DataFrame, funnel_rows: list[dict], strategies: list[dict], metric: str) -> str:
    """The card's opening paragraph: what the rows are, claiming evolution only where items evolved
    (``strategies``: one per evolved round built).

    >>> rows = pl.DataFrame({"round": [0, 0]})
    >>> summary_text(rows, [{"round": 1, "evolved": 0}], [], "ic_ifd")[:60]
    '2 instruction-response pairs. No instruction evolved: no evo'
    """
    evolved_total = sum(r["evolved"] or 0 for r in funnel_rows if r["round"] != 0)
    n_rounds = len(strategies)
    from_seed = int((rows["round"] == 0).sum()) if "round" in rows.columns else 0
    from_rounds = rows.height - from_seed
    tail = (f"answered, judged for difficulty, scored by IFD / IC-IFD and selected by `{metric}`. Built with "
            "evolforge (a DVC pipeline): `params.yaml` and the prompt templates, whose hashes are listed below, "
            "determine it.")
    if evolved_total == 0:
        tried = f"{n_rounds} round(s) of evolution were run and every rewrite was eliminated" if strategies else \
            "no evolution round was run"
        return (f"{rows.height} instruction-response pairs. No instruction evolved: {tried} (see the counts "
                f"below), so the pairs are seed instructions, {tail}")
    used = sorted({s["used"] for s in strategies if s["used"]})
    how = " and ".join(STRATEGY_WORDS.get(u, f"strategy `{u}`") for u in used) or "Evol-Instruct"
    fell_back = [s for s in strategies if s["fallback"]]
    if fell_back:
        how += (f" (strategy `{fell_back[0]['requested']}` was asked for; the rounds fell back because the evolver "
                "could not follow the optimized method)")
    return (f"{rows.height} instruction-response pairs: {from_rounds} with instructions evolved from a seed set "
            f"({evolved_total} rewrites survived over {n_rounds} round(s), with {how}) and {from_seed} seed "
            f"instructions; {tail}")


def _versions_rows(layout: Layout) -> list[list[Any]]:
    """Package, version, the stage outputs (:func:`~evolforge.steps.select.recorded.recorded_folders`) whose
    ``meta.json`` recorded it; this install's where none did. The selection itself is left out: the card is written
    by the same install, while it is being replaced."""
    seen: dict[str, dict[str, list[str]]] = {name: {} for name in OUTPUT_PACKAGES}
    for meta_path in sorted(p for p in (f / META for f in recorded_folders(layout)) if p.is_file()):
        recorded = (read_json(meta_path) or {}).get(VERSIONS)
        for name, version in (recorded.items() if isinstance(recorded, dict) else ()):
            if name in seen:
                seen[name].setdefault(str(version), []).append(layout.relative(meta_path.parent))
    now = output_versions()
    rows = []
    for name, by_version in seen.items():
        for version, stages in sorted(by_version.items()) or [(str(now[name]),
                                                               ["(installed when the card was written)"])]:
            rows.append([f"`{name}`", "not installed" if version == "None" else version, ", ".join(stages)])
    return rows


CARD_ITEMS = 50  # selected items listed one by one, in rank order, in the card's verification section


def verification_section(table: Path) -> str:
    """``## Verification``: the selected items per method and verdict, then the first :data:`CARD_ITEMS` items one by
    one (method, verdict, confidence, evidence) -- read from the selection's table, a few columns at a time."""
    if "verify_verdict" not in pl.read_parquet_schema(table):
        return "## Verification\n\nSelected without the verify stage: no answer was checked."
    counts = (pl.scan_parquet(table).group_by("verify_method", "verify_verdict").len()
              .sort("verify_method", "verify_verdict").collect())
    head = pl.read_parquet(table, columns=["id", "round", "instruction", *VERIFY_COLUMNS], n_rows=CARD_ITEMS)
    items = [[f"`{r['id']}`", r["round"], r["instruction"][:80], r["verify_method"], r["verify_verdict"],
              "" if r["verify_confidence"] is None else f"{r['verify_confidence']:.2f}",
              evidence_line(r["verify_method"], r["verify_evidence"])[:160]] for r in head.iter_rows(named=True)]
    return ("## Verification\n\nEach answer was checked before selection (stage `verify`): code run against tests "
            "written for the instruction, numbers recomputed, the rest judged for correctness; `select.drop_wrong` "
            "drops the answers found wrong.\n\n"
            + _md_table(["method", "verdict", "items"], [list(r) for r in counts.iter_rows()])
            + f"\n\nThe selected items (the first {CARD_ITEMS}, best ranked first):\n\n"
            + _md_table(["id", "round", "instruction", "method", "verdict", "confidence", "evidence"], items))


def card_text(rows: pl.DataFrame, columns: list[str], layout: Layout, select: SelectSettings, settings: CardSettings,
              fingerprint: str = "", verification: str = "") -> str:
    """The README.md text: YAML header, then how the data was made. ``rows``: the published rows' ``round``
    column (its height, the row count), ``columns``: the published columns, ``layout``: the other stages'
    outputs, whose recorded settings it quotes; ``select``: the selection's own settings."""
    header = {"license": settings.license, "language": settings.language, "task_categories": settings.task_categories,
              "size_categories": [size_category(rows.height)], "pretty_name": settings.pretty_name,
              "tags": ["synthetic", "evol-instruct", "instruction-tuning", "evolforge"],
              "configs": [{"config_name": "default", "description": f"fingerprint {fingerprint}",
                          "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}]}
    select_cfg = dataclasses.asdict(select)
    funnel_rows = funnel(layout, selected=rows, removed=False)  # the selection being written, not an older one
    counts = [[("seed" if r["round"] == 0 else r["round"]), r["in"], r["evolved"], r["failed"],
               ", ".join(f"{k}: {v}" for k, v in r["failed_by_reason"].items()), r["answered"],
               r["clean"], r["judged"], r["selected"]] for r in funnel_rows]
    prompts = [[p["stage"], p["model"], ", ".join(f"`{n}` {h}" for n, h in sorted(p["template_hashes"].items()))]
               for p in provenance(layout)]
    models = [[m["role"], m["backend"], m["model"], m["revision"], m["identity"]]
              for m in _models(layout.identities)]
    columns = [[f"`{c}`", DESCRIPTIONS.get(c, "")] for c in columns]
    limitations = LIMITATIONS + (f"\n{settings.limitations.strip()}" if settings.limitations else "")
    if any(str(m[2] or "").rstrip("/").endswith("models/tiny") for m in models):
        limitations += ("\n- Built with the project's tiny test model: the rows exercise the pipeline and are not "
                        "data to train a real model on.")
    parts = [
        "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---",
        f"# {settings.pretty_name}",
        summary_text(rows, funnel_rows, round_strategies(layout), select.metric),
        LOADING.format(fingerprint=fingerprint),
        "## How it was made",
        seed_line(settings_of(layout.seed)),
        evolution_line(layout),
        _scenario_line(layout.pool_metrics),
        "**Selection**: " + ", ".join(f"`{k}`: {_cell(v)}" for k, v in sorted(select_cfg.items())) + ".",
        "### Models\n\n" + _md_table(["role", "backend", "model", "revision", "identity"], models),
        "### Prompt templates (sha256 prefixes)\n\n" + _md_table(["stage", "model", "templates"], prompts),
        "### Counts per stage\n\nSeeds in, then per round: items in, evolved, failed (by reason), answered, kept after "
        "deduplication / decontamination (when run), judged, selected.\n\n"
        + _md_table(["round", "in", "evolved", "failed", "failed by reason", "answered",
                     "kept", "judged", "selected"], counts),
        "### Settings\n\nThe settings each stage output the selection was made from recorded (`settings` in its "
        "`meta.json`; null: none recorded; outputs that recorded the same share an entry).\n\n```yaml\n"
        + yaml.safe_dump(recorded_settings(layout), sort_keys=False, allow_unicode=True) + "```",
        "### Software versions\n\nThe installed versions of the packages that can change the data, as each stage "
        "output's `meta.json` recorded them (`make setup` installs the locked set: `requirements/cpu.txt`).\n\n"
        + _md_table(["package", "version", "recorded by"], _versions_rows(layout)),
        *([verification] if verification else []),
        "## Columns\n\n" + _md_table(["column", "meaning"], columns),
        "## Known limitations\n\n" + limitations,
    ]
    return "\n\n".join(parts) + "\n"


@dataclasses.dataclass(frozen=True)
class CardParams:
    """What the card takes from params.yaml: its ``card`` section and ``data.chunk_rows`` (how many rows at a
    time it reads). What the other stages did, it reads from their outputs (:mod:`evolforge.steps.select.recorded`)."""

    settings: CardSettings
    chunk_rows: int


def card_params(params: Mapping[str, Any]) -> CardParams:
    """The :class:`CardParams` of ``params`` (a params.yaml mapping)."""
    return CardParams(load_section(params, "card", CardSettings), load_section(params, "data", DataSettings).chunk_rows)


def write_card(selected_dir: str | Path, layout: Layout, card: CardParams, select: SelectSettings) -> Path:
    """Write the shards and ``README.md`` into ``selected_dir``, telling how the outputs of ``layout`` made the
    selection (by ``select``'s settings); return the card's path."""
    settings = card.settings
    selected_dir = Path(selected_dir)
    table_path = selected_dir / TABLE
    if not table_path.exists():
        raise FileNotFoundError(f"{table_path}: no selection; run the select stage first")
    # a hub row's chat messages are built as Python objects first: several times a streamed row's memory
    chunk_rows = max(1, card.chunk_rows // HUB_SHARE)
    fingerprint = shards_fingerprint(selected_dir, write_shards(table_path, selected_dir, chunk_rows))
    has_round = "round" in pl.read_parquet_schema(table_path)
    # 8 bytes per row: the rows' rounds, for the counts per round (a row number where there is no round)
    rounds = pl.scan_parquet(table_path).select(pl.col("round") if has_round
                                                else pl.int_range(pl.len()).alias("row")).collect()
    columns = list(hub_rows(pl.read_parquet(table_path, n_rows=0)).columns)
    card = selected_dir / "README.md"
    tmp = card.with_name(f".README.md.tmp-{os.getpid()}")
    tmp.write_text(card_text(rounds, columns, layout, select, settings, fingerprint,
                             verification_section(table_path)), encoding="utf-8")
    os.replace(tmp, card)
    return card


def push_to_hub(selected_dir: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload the card and the shards to a Hub dataset repository (needs a token: ``hf auth login``)."""
    from huggingface_hub import HfApi

    selected_dir = Path(selected_dir)
    if not (selected_dir / "README.md").exists() or not list((selected_dir / "data").glob("train-*.parquet")):
        raise FileNotFoundError(f"{selected_dir}: no card or shards; run `evolforge card` (or the select stage) first")
    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(selected_dir),
                      allow_patterns=["README.md",
                                      "data/train-*.parquet"], commit_message="evolforge: dataset card and shards")
    return f"https://huggingface.co/datasets/{repo_id}"
