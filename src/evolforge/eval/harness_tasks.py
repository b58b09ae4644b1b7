"""The harness tasks an evaluation runs, and the checks made before any model loads.

:func:`resolve_tasks` maps the benchmark names of ``evaluate.tasks`` to harness task names for the suite
(:data:`evolforge.eval.tasks.SUITES`), leaving out the code benchmarks when model-written code may not run.
:func:`task_manager` indexes the suite's task configs (written once per process, :func:`suite_dir`), and the
harness's own only where a task needs them. Before generating: :func:`check_sandboxed` refuses a task that would
run model code outside evolforge's sandbox, :func:`check_nltk` a hub IFEval run without the NLTK data its
checkers need.

    >>> resolve_tasks(["gsm8k", "humaneval"], "offline", allow_code_execution=False)[0]
    {'gsm8k': 'evolforge_offline_gsm8k'}
"""

from __future__ import annotations

import atexit
import functools
import importlib
import io
import logging
import shutil
import tempfile
from contextlib import redirect_stdout
from pathlib import Path
from typing import Sequence

from evolforge.eval.tasks import CODE_BENCHMARKS, SUITES, write_suite

log = logging.getLogger(__name__)


def resolve_tasks(tasks: Sequence[str], suite: str,
                  allow_code_execution: bool) -> tuple[dict[str, str], dict[str, str]]:
    """Benchmark names -> harness task names for ``suite``, and the benchmarks skipped (with the reason)."""
    if suite not in SUITES:
        raise ValueError(f"evaluate.suite must be one of {', '.join(SUITES)}, got {suite!r}")
    selected, skipped = {}, {}
    for name in tasks:
        if name in CODE_BENCHMARKS and not allow_code_execution:
            skipped[name] = "allow_code_execution is false: model-written code is not run"
            log.warning("skipping %s: it scores by running model-written code, and evaluate.allow_code_execution "
                        "is false (set it to true to run each program in the sandbox)", name)
            continue
        selected[name] = SUITES[suite].get(name, name)
    return selected, skipped


def check_nltk(harness_tasks: Sequence[str]) -> None:
    """The hub IFEval checkers need NLTK's punkt_tab; fail before hours of generation, not after. The offline
    IFEval items use none of the checkers that need it: without it they run, and nothing is downloaded."""
    ifeval = [t for t in harness_tasks if "ifeval" in t]
    if not ifeval:
        return
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab")
        return
    except LookupError:
        pass
    if all(t.startswith("evolforge_offline") for t in ifeval):
        _import_ifeval_without_download()
    elif not nltk.download("punkt_tab", quiet=True):  # what the harness would try; offline it fails
        raise RuntimeError("IFEval needs the NLTK data package punkt_tab, which is not installed: run "
                           "`python -m nltk.downloader punkt_tab` on a connected machine (copy ~/nltk_data "
                           "to this one, or set NLTK_DATA)")


def _import_ifeval_without_download() -> None:
    """Import lm-eval's IFEval checkers with NLTK's download switched off. On its first import that module
    tries to download punkt_tab and then prints "Downloaded punkt_tab" whether or not it could: offline that
    is a misleading line, and where the network drops packets a long wait."""
    import nltk

    download = nltk.download
    nltk.download = lambda *args, **kwargs: False
    try:
        with redirect_stdout(io.StringIO()):
            importlib.import_module("lm_eval.tasks.ifeval.instructions_util")
    except ImportError:  # another harness layout: it does its own checks
        pass
    finally:
        nltk.download = download
    log.info("NLTK punkt_tab is not installed: not downloaded, the offline IFEval items need none of its checkers")


def _unsafe_tasks(task_manager, name: str) -> list[str]:
    """Leaf tasks under a task, group, tag or YAML path whose configs say they execute model code."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = task_manager.task_index.get(name)
    if entry is not None:
        kind, cfg = entry.kind, entry.cfg or {}
    elif Path(name).is_file():  # the harness also takes a YAML file's path as a task
        cfg = load_yaml(Path(name), resolve_func=False)
        kind = Kind.GROUP if "group" in cfg else Kind.TASK
    else:
        return []  # the harness reports unknown names itself
    if kind in (Kind.TASK, Kind.PY_TASK):
        return [cfg.get("task", name)] if cfg.get("unsafe_code") else []
    if kind == Kind.GROUP:
        children = [c if isinstance(c, str) else c.get("task", "") for c in cfg.get("task", [])]
    else:
        children = [n for n, e in task_manager.task_index.items() if name in e.tags]
    return [leaf for child in children for leaf in _unsafe_tasks(task_manager, child)]


def check_sandboxed(task_manager, harness_tasks: Sequence[str]) -> None:
    """Tasks that execute code must be ours (sandboxed), never the harness's code_eval ones."""
    unsafe = [t for name in harness_tasks for t in _unsafe_tasks(task_manager, name) if not t.startswith("evolforge_")]
    if unsafe:
        raise ValueError(f"tasks {unsafe} would execute model code outside evolforge's sandbox (the harness's "
                         "code_eval); use the benchmarks humaneval / mbpp instead")


def needs_harness_index(task: str) -> bool:
    """Whether ``task`` is one of the harness's own (not evolforge's, not a YAML file's path)."""
    return not (task.startswith("evolforge_") or task.endswith((".yaml", ".yml")))


@functools.lru_cache(maxsize=1)
def suite_dir() -> Path:
    """The task configs and offline data, written once per process (they are constants of the package)."""
    path = Path(tempfile.mkdtemp(prefix="evolforge-tasks-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return write_suite(path)


@functools.lru_cache(maxsize=2)
def task_manager(include_defaults: bool):
    """The harness's task index of the suite's configs, and of its own few thousand with ``include_defaults``."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(suite_dir()), include_defaults=include_defaults)
