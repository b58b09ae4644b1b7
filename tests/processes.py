"""Processes a sandbox run may have left behind: this process's descendants, and processes of the sandbox's uids."""

from __future__ import annotations

import os
from pathlib import Path

from evolforge.eval import sandbox


def descendants() -> set[int]:
    """Live processes below this one (a run's survivors would be here, or in the run's uid range)."""
    parents = {}
    for entry in os.listdir("/proc"):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
        except (OSError, ValueError, IndexError):
            pass
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def sandbox_uid_processes() -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        try:
            uid = os.stat(f"/proc/{entry}").st_uid
        except OSError:
            continue
        if entry.isdigit() and sandbox.UID_BASE <= uid < sandbox.UID_BASE + sandbox.UID_SPAN:
            out.append(int(entry))
    return out
