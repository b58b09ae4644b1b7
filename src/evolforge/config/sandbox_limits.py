"""The limits of a sandbox run (model-written code, :mod:`evolforge.eval.sandbox`), declared once.

What a section sets: the sections that run model-written code (``evaluate``, ``verify``, ``autoif``) type their
limits with the fields below, so each limit's default, unit and help are these, whatever the key is called
there (``evaluate.sandbox_memory_mb``, ``verify.memory_mb``); the sandbox's own defaults, a seed's
``python_tests`` check and the function runs of verify and AutoIF read the same values. What the sandbox holds
fixed, for every run: the processes a run may have, the size of a file it writes, its open files, and the
quota of its work directory.

    >>> MEMORY_MB, PROGRAM_TIMEOUT_S, CASE_TIMEOUT_S, WORKERS
    (512, 10.0, 5.0, 2)
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

# settable (each section's fields below)
MEMORY_MB = 512  # address space of each process of a run (RLIMIT_AS), MiB: it must hold the interpreter (~30 MiB)
PROGRAM_TIMEOUT_S = 10.0  # wall clock of one program run with its tests, seconds
CASE_TIMEOUT_S = 5.0  # wall clock a test case of a model-written function may take, seconds
WORKERS = 2  # sandbox runs at a time

# fixed
PROCESSES = 16  # tasks (threads included) a run's uid may have (RLIMIT_NPROC): the harness uses two
FILE_MB = 16  # the largest file a process may write (RLIMIT_FSIZE), MiB
OPEN_FILES = 256  # file descriptors a process may hold (RLIMIT_NOFILE)
# the work directory's disk quota, where a mount namespace allows a tmpfs (else only RLIMIT_FSIZE holds)
WORK_QUOTA_MB = 64
WORK_QUOTA_FILES = 2048


def memory_mb() -> Any:
    """A section's memory limit per sandbox process."""
    return field(default=MEMORY_MB, metadata={
        "help": "address space of each sandbox process (it holds the interpreter, about 30 MiB, too)", "unit": "MiB"})


def program_timeout_s() -> Any:
    """A section's time limit per program run with its tests."""
    return field(default=PROGRAM_TIMEOUT_S, metadata={"help": "seconds per program (with its tests) in the sandbox",
                                                      "unit": "s"})


def case_timeout_s() -> Any:
    """A section's time limit per test case of a model-written function."""
    return field(default=CASE_TIMEOUT_S, metadata={
        "help": "seconds a test case may run in the sandbox (the AutoIF reference code's SIGALRM limit per case); a "
                "case that runs longer stops its function's run, and the cases after it get no verdict (verify gives "
                "a number's program twice it)", "unit": "s"})


def workers() -> Any:
    """A section's sandbox runs at a time."""
    return field(default=WORKERS, metadata={"help": "sandbox processes at a time"})
