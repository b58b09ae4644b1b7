"""DVC's command line with ``dvc.lock`` updated one stage at a time: ``make run`` runs ``dvc repro`` through it.

After every stage it runs, ``dvc repro`` records the stage in ``dvc.lock``: DVC reads the whole lock with
ruamel.yaml's round-trip loader (pure Python, so that comments and quoting survive), replaces the stage's entry and
writes the whole file again. The shipped pipeline's lock has about 6,800 lines (each stage lists the source files
it runs), and that round trip costs 1.2 s a stage on an AVX-512 Xeon, about half a minute a run
(``bench/dvc_lock.py``). A lock that is exactly what DVC's dumper writes for it holds no comment or layout to
keep, so here it is read with the C YAML loader (checked once a process: a lock this process wrote is known to be
so), and only the stages whose entry changed are written again, by DVC's own dumper, between the unchanged lines of
the others. The text is read back and compared with what DVC meant to write; where it differs, or anything beside
the stages changed, DVC's dumper writes the whole lock. A lock with a comment, or none yet, goes to DVC as before.
The file is replaced at once (a new file renamed over it), never left half written. Every other file, and
everything else, is DVC's own: the lock is the file ``dvc repro`` would write, byte for byte
(``tests/test_dvc_cli.py``).

    python -m evolforge.core.dvc_cli repro [args]   # what `dvc repro [args]` does
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import sys
import tempfile
from typing import Any, Iterator

LOCK_NAME = "dvc.lock"
STAGES_LINE = "\nstages:\n"
_STAGE_START = re.compile(r"^  (?=\S)", re.M)  # a stage's first line: its name, two spaces in under `stages:`


def stage_blocks(text: str, names: list[str]) -> tuple[str, dict[str, str]] | None:
    """The lock's text up to and with its ``stages:`` line, and each stage's lines by name (``names``: the
    stages in the order the lock holds them); None when the text is not laid out as DVC writes it (``stages``
    the last top-level key, each stage a block starting two spaces in)."""
    head, found, body = text.partition(STAGES_LINE)
    if not found or re.search(r"^\S", body, re.M):
        return None
    starts = [m.start() for m in _STAGE_START.finditer(body)]
    if len(starts) != len(names) or (starts and starts[0] != 0) or (not starts and body):
        return None
    ends = starts[1:] + [len(body)]
    return head + STAGES_LINE, {name: body[a:b] for name, a, b in zip(names, starts, ends)}


def dump_stage(name: str, entry: Any) -> str:
    """One stage's block of the lock, as DVC's dumper writes it inside the whole file."""
    from dvc.utils.serialize._yaml import _dump

    out = io.StringIO()
    _dump({"stages": {name: entry}}, out)
    return out.getvalue().partition("\n")[2]


def lock_text(text: str, rest_before: dict, stages_before: dict, data: dict) -> str:
    """The lock's new text: ``data`` (what DVC means to write) where ``text`` held ``stages_before`` and, beside
    its stages, ``rest_before``. Stages whose entry is unchanged keep their lines and the rest are dumped; the whole
    lock is dumped when anything beside the stages changed or the text's layout is not DVC's."""
    from dvc.utils.serialize._yaml import _dump, parse_yaml

    stages = data.get("stages")
    rest = {key: value for key, value in data.items() if key != "stages"}
    split = stage_blocks(text, list(stages_before)) if isinstance(stages, dict) else None
    if split is not None and rest == rest_before:
        head, blocks = split

        def unchanged(name: str, entry: Any) -> bool:
            return name in blocks and (stages_before[name] is entry or stages_before[name] == entry)

        new = head + "".join(blocks[name] if unchanged(name, entry) else dump_stage(name, entry)
                             for name, entry in stages.items())
        if parse_yaml(new, LOCK_NAME) == data:  # read back: exactly what DVC means to write
            return new
    out = io.StringIO()
    _dump(data, out)
    return out.getvalue()


def _write(path: str, text: str, fs: Any) -> None:
    """Replace ``path`` by ``text`` at once (a local file), else through ``fs`` as DVC writes."""
    if fs is not None and getattr(fs, "protocol", "local") != "local":
        with fs.open(path, "w", encoding="utf-8") as fd:
            fd.write(text)
        return
    folder = os.path.dirname(os.path.abspath(path))
    handle, temp = tempfile.mkstemp(prefix=".dvc.lock.", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as fd:
            fd.write(text)
        with contextlib.suppress(FileNotFoundError):
            os.chmod(temp, os.stat(path).st_mode & 0o777)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


# lock path -> the text this process last wrote there or found to be exactly DVC's dump of what it holds
_DUMPED: dict[str, str] = {}


def dumped_by_dvc(path: str, text: str, data: dict) -> bool:
    """Whether ``text`` is what DVC's dumper writes for ``data`` (no comment, no other layout): checked once
    for a text this process did not write itself."""
    from dvc.utils.serialize._yaml import _dump

    if _DUMPED.get(path) != text:
        out = io.StringIO()
        _dump(data, out)
        if out.getvalue() != text:
            return False
        _DUMPED[path] = text
    return True


def modify_yaml(path, fs=None) -> contextlib.AbstractContextManager[dict]:
    """DVC's ``modify_yaml`` with ``dvc.lock`` updated as above; any other file, and a lock that does not exist
    yet or is not exactly as DVC's dumper writes it (a comment, another layout), go to DVC's own."""
    from dvc.utils.serialize import modify_yaml as dvc_modify_yaml
    from dvc.utils.serialize._yaml import parse_yaml

    path = os.fspath(path)
    if os.path.basename(path) != LOCK_NAME:
        return dvc_modify_yaml(path, fs=fs)
    if not (fs.exists(path) if fs is not None else os.path.exists(path)):
        return dvc_modify_yaml(path, fs=fs)
    with (fs.open(path, encoding="utf-8") if fs is not None else open(path, encoding="utf-8")) as fd:
        text = fd.read()
    data = parse_yaml(text, path)
    key = os.path.realpath(path)
    if not isinstance(data, dict) or not dumped_by_dvc(key, text, data):
        return dvc_modify_yaml(path, fs=fs)
    return _modify_lock(path, key, fs, text, data)


@contextlib.contextmanager
def _modify_lock(path: str, key: str, fs: Any, text: str, data: dict) -> Iterator[dict]:
    rest_before = copy.deepcopy({name: value for name, value in data.items() if name != "stages"})
    stages_before = dict(data.get("stages") or {})
    yield data
    new = lock_text(text, rest_before, stages_before, data)
    _write(path, new, fs)
    _DUMPED[key] = new


def install() -> None:
    """Route DVC's updates of ``dvc.lock`` (``dvc.dvcfile``'s ``modify_yaml``) through :func:`modify_yaml`."""
    import dvc.dvcfile

    dvc.dvcfile.modify_yaml = modify_yaml


def main(argv: list[str] | None = None) -> int:
    from dvc.cli import main as dvc_main

    install()
    return dvc_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
