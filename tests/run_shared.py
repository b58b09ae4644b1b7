"""Folders made once per pytest run and shared by all its pytest-xdist workers, and the lock that guards them.

``once(folder, make)`` runs ``make(folder)`` in whichever worker asks first; a worker asking meanwhile waits
on the lock, then uses the folder as made. What is shared is read, never changed: a test that changes it
works on its own copy.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def run_folder(tmp_path_factory) -> Path:
    """This pytest run's temporary folder that all its pytest-xdist workers share (each worker's own is a
    subfolder of it); without xdist, the run's own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if "PYTEST_XDIST_WORKER" in os.environ else base


@contextmanager
def held(lock: Path) -> Iterator[None]:
    """``lock`` held exclusively: by one worker at a time."""
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        yield


def once(folder: Path, make: Callable[[Path], None]) -> Path:
    """``folder`` made by ``make(folder)`` once per run, whichever worker asks first; the others wait for it.
    A failed attempt is recorded, so a later asker fails at once with the same message instead of repeating
    minutes of work."""
    done, failed = folder.with_name(folder.name + ".done"), folder.with_name(folder.name + ".failed")
    with held(folder.with_name(folder.name + ".lock")):
        if failed.exists():
            raise AssertionError(f"{folder.name} failed in another test module of this run:\n{failed.read_text()}")
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            try:
                make(folder)
            except Exception as e:
                failed.write_text(str(e)[-8000:])
                raise
            done.touch()
    return folder
