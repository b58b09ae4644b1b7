"""A crash in native code (a segmentation fault in llama.cpp, an illegal instruction) ends a stage with one
clear message and its previous outputs put back, as any other failure does (:func:`evolforge.core.stage.run_stage`).

A signal such as SIGSEGV kills the process where it happens: no Python handler can run after it (the faulting
instruction would only run again). So the stage arms a guard first (:func:`arm`): Python's ``faulthandler``
writes its report of a fatal signal into a pipe, and a small watcher process (the Python interpreter with
nothing imported) reads that pipe until the stage process is gone. Before native code that may crash, the
stage says what a crash there would mean (:func:`note`: the role, the model, the CPU and the setting that
works around it; the llamacpp backend writes one per generation call). When the pipe ends with a fault
report in it, the watcher prints ``<stage>: error: ...`` with the last note, the report itself only with
``--debug``, and puts the stage's previous outputs back under ``dvc repro``; a stage that ends in any other
way leaves the pipe empty and the watcher silent.

Why a watcher and not a supervising parent process: the stage script has imported its libraries (polars,
torch) before :func:`run_stage` runs, so a forked child would start with their threads half-copied, and a
re-executed one would hold every import twice in memory for the stage's whole life; the watcher costs one
bare interpreter. What it cannot change is the exit status: the stage still ends killed by its signal
(``dvc repro`` adds ``exited with -11``), after this message.
"""

from __future__ import annotations

import faulthandler
import os
import subprocess
import sys

NOTE = "evolforge-native-note: "  # a line of the pipe that is a note, not a fault report
_armed: list[int] = []  # the pipe's write end, once armed

_WATCHER = r"""
import os, subprocess, sys
name, debug, note_prefix = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
note, report = "", []
for line in sys.stdin.buffer:
    text = line.decode("utf-8", "replace")
    if text.startswith(note_prefix):
        note = text[len(note_prefix):].strip()
    else:
        report.append(text)
if not any(line.strip() for line in report):
    sys.exit(0)
fatal = next((l for l in report if l.startswith("Fatal Python error")), "Fatal Python error: " + report[0])
what = fatal.split(": ", 1)[-1].strip()
message = f"{name}: error: the process died in native code ({what})"
message += f": {note}" if note else "; rerun with --debug or EVOLFORGE_DEBUG=1 to see where"
print(message, file=sys.stderr, flush=True)
if debug:
    print("".join(report), file=sys.stderr, end="", flush=True)
if os.environ.get("DVC_ROOT") and os.environ.get("DVC_STAGE"):
    subprocess.call([sys.executable, "-c", "import sys; from evolforge.core.stage import restore_under_dvc; "
                     "restore_under_dvc(sys.argv[1])", name])
"""


def arm(name: str, debug: bool = False) -> None:
    """Watch this process for a fatal signal from here to its end (once per process; a no-op after)."""
    if _armed:
        return
    read, write = os.pipe()
    # -S -E: a bare interpreter (no site packages, no PYTHON* variables); the restore, rarely needed, starts its own
    subprocess.Popen([sys.executable, "-S", "-E", "-c", _WATCHER, name, "1" if debug else "0", NOTE], stdin=read,
                     close_fds=True)
    os.close(read)
    faulthandler.enable(file=write, all_threads=True)
    _armed.append(write)


def note(text: str) -> None:
    """What a crash from here on would mean, for the guard's message (one line; a no-op when not armed)."""
    if not _armed:
        return
    try:
        os.write(_armed[0], f"{NOTE}{' '.join(text.split())}\n".encode("utf-8"))
    except OSError:  # the watcher is gone: nothing to tell
        pass
