"""Shared fixtures: offline environment and a tiny model built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests never touch the network.
for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS",
            "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_TELEMETRY", "DVC_NO_ANALYTICS"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# Under pytest-xdist each worker (and every stage process it starts) computes on one thread: two workers
# on two cores, and torch's two-thread matrix products slow down manyfold when another process shares
# the cores (docs/explanation/controls.md "Threads").
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


# The longest test files, started first: `make test` runs two workers that each take one file at a time
# (pytest-xdist, --dist loadfile), so the end-to-end build and its first experiments (about 8 minutes) run
# beside all the others instead of after them. The other experiments on that build come once the other long
# files have given the build time to finish (about 7 minutes: the worker that takes them would wait otherwise).
LONGEST_FIRST = ("test_pipeline.py", "test_plan.py", "test_humaneval_real.py", "test_bench_smoke.py",
                 "test_pipeline_scenarios.py")


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist (3.x) hands out --dist loadfile's files by their number of tests, most first, unless told
    # not to: the end-to-end file, with few tests, would start minutes late
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise


@pytest.fixture(autouse=True)
def _forget_stage_accounts():
    """``llm.max_failure_rate`` is judged over what a stage (one process) asked; a test is one stage."""
    from evolforge.core.accounts import STAGE

    yield
    STAGE.clear()


@pytest.fixture(scope="session", autouse=True)
def _kernel_verdicts_of_the_run(tmp_path_factory):
    """The llamacpp kernel probe's verdicts on the tests' model files are kept for this run only, not in the
    repository's .evolforge (stages run by a test keep theirs under the folder they run in), and none in the
    machine's store (a test of its own sets one): every test and the stages it runs probe as on a new machine."""
    from evolforge.llm.backends.llamacpp import probe

    probe.VERDICTS = tmp_path_factory.mktemp("kernels") / "llamacpp_kernels.json"
    before = os.environ.get(probe.MACHINE_VERDICTS_ENV)
    os.environ[probe.MACHINE_VERDICTS_ENV] = ""
    yield
    if before is None:
        os.environ.pop(probe.MACHINE_VERDICTS_ENV, None)
    else:
        os.environ[probe.MACHINE_VERDICTS_ENV] = before


@pytest.fixture
def no_proxy(monkeypatch):
    """A proxy set in the environment must not intercept requests to a local test server."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def sandbox_checks_alone(tmp_path_factory):
    """Held by the tests that count the processes a sandbox run leaves: one pytest-xdist worker at a time
    (a fork bomb's orphans in one worker's test must not land in another's count)."""
    from run_shared import held, run_folder

    with held(run_folder(tmp_path_factory) / "sandbox-checks.lock"):
        yield


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The project's tiny model, briefly trained (fewer steps than the shipped params: tests need its
    code paths and formats, not its answers); built once per run, shared by the xdist workers, read only."""
    from run_shared import once, run_folder
    from tiny import TinyConfig, build_tiny_model

    def build(folder: Path) -> None:
        build_tiny_model(folder / "model", REPO / "data/seeds/demo.jsonl", REPO / "prompts", TinyConfig(steps=40),
                         log=lambda _: None)

    return once(run_folder(tmp_path_factory) / "tiny", build) / "model"


@pytest.fixture(scope="module")
def pipeline_built(tmp_path_factory) -> tuple[Path, dict, str]:
    """The module's own copy of the end-to-end build (tests/pipeline_build.py: built from nothing once per
    run, committed as "built"), its environment, and the output of the build's `dvc repro`."""
    from pipeline_build import built_copy, own_copy

    shared, out = built_copy(tmp_path_factory, REPO)
    work, env = own_copy(tmp_path_factory, shared)
    return work, env, out
