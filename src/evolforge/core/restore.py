"""Put back the outputs ``dvc repro`` removed before running a stage that then failed.

DVC deletes a stage's outputs before it runs the stage's command (unless they are ``persist``, which turns
the run-cache off). A stage of this pipeline that refuses its input writes nothing, yet under ``dvc repro``
its previous outputs would be gone. When a stage fails under DVC (``DVC_ROOT`` and ``DVC_STAGE`` are set),
:func:`restore_outputs` copies back, from DVC's cache, every output of that stage that ``dvc.lock`` records
and the workspace lacks -- what ``dvc checkout <stage>`` would do, which cannot run while ``dvc repro`` holds
the repository's lock. Outputs with ``cache: false`` (the metrics files) are not in DVC's cache: git holds
them (``git checkout -- metrics/``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import yaml


def _lock_entry(root: Path, stage: str) -> dict:
    """``dvc.lock``'s entry of ``stage`` (``name`` or ``name@key`` of a foreach; ``file.yaml:name`` elsewhere)."""
    lock = root / "dvc.lock"
    if ":" in stage or not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages") or {}
    return stages.get(stage) or {}


def _cache_dir(root: Path) -> Path:
    """The DVC cache's ``files/md5`` folder (``cache.dir`` of .dvc/config when set)."""
    from dvc.config import Config

    configured = Config(dvc_dir=str(root / ".dvc")).get("cache", {}).get("dir")
    base = Path(configured) if configured else root / ".dvc" / "cache"
    return (base if base.is_absolute() else root / ".dvc" / base) / "files" / "md5"


def _cached(cache: Path, md5: str) -> Path:
    return cache / md5[:2] / md5[2:]


def _copy(source: Path, target: Path) -> None:
    """Copy one cached file into place (written beside it, then renamed: never a half file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.restore-{os.getpid()}")
    shutil.copyfile(source, part)
    os.replace(part, target)


def restore_outputs(root: str | Path, stage: str) -> list[str]:
    """Restore ``stage``'s missing outputs from DVC's cache; return the paths put back (those whose cache
    entries are all present; the others are left missing, as they were)."""
    root = Path(root)
    entry = _lock_entry(root, stage)
    restored = []
    cache = None
    for out in entry.get("outs") or []:
        path, md5 = out.get("path"), out.get("md5")
        if not path or not md5 or (root / path).exists():
            continue
        cache = cache or _cache_dir(root)
        if md5.endswith(".dir"):
            listing_file = _cached(cache, md5)
            if not listing_file.is_file():
                continue
            listing = json.loads(listing_file.read_text(encoding="utf-8"))
            if not all(_cached(cache, f["md5"]).is_file() for f in listing):
                continue
            for f in listing:
                _copy(_cached(cache, f["md5"]), root / path / f["relpath"])
            (root / path).mkdir(parents=True, exist_ok=True)  # an empty folder too
        elif _cached(cache, md5).is_file():
            _copy(_cached(cache, md5), root / path)
        else:
            continue
        restored.append(path)
    return restored


def restore_under_dvc(name: str) -> None:
    """Called by a failing stage: under ``dvc repro``, put its previous outputs back and say so."""
    root, stage = os.environ.get("DVC_ROOT"), os.environ.get("DVC_STAGE")
    if not root or not stage:
        return
    try:
        restored = restore_outputs(root, stage)
    except Exception as err:  # noqa: BLE001 - restoring is a courtesy; the stage's own error is what matters
        print(f"{name}: could not restore the previous outputs ({type(err).__name__}: {err}); "
              f"`dvc checkout {stage}` does", file=sys.stderr)
        return
    if restored:
        print(f"{name}: the previous outputs are back in place (from DVC's cache): {', '.join(restored)}",
              file=sys.stderr)
