"""evolforge's import hook (:mod:`evolforge.import_hooks`): once evolforge is imported, transformers reports
scikit-learn missing, so loading a model class imports no ``sklearn``; scikit-learn itself still imports for
whoever asks (lm-eval), and ``EVOLFORGE_TRANSFORMERS_SKLEARN=1`` leaves transformers as it is. Each case runs in
a fresh interpreter: the hook acts on the first import of transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import json, sys
import evolforge
import transformers.utils
from transformers import AutoModelForCausalLM
AutoModelForCausalLM.from_pretrained  # what a model load imports: transformers' generation module among it
found = {"available": transformers.utils.is_sklearn_available(), "imported": "sklearn" in sys.modules,
         "generation": "transformers.generation.utils" in sys.modules}
import sklearn.metrics
found["roc_curve"] = callable(sklearn.metrics.roc_curve)
print(json.dumps(found))
"""


def probe(**env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "EVOLFORGE_TRANSFORMERS_SKLEARN"}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), environ.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", PROBE], env={**environ, **env}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_model_load_imports_no_sklearn_and_sklearn_still_imports():
    assert probe() == {"available": False, "imported": False, "generation": True, "roc_curve": True}


def test_the_variable_leaves_transformers_as_it_is():
    assert probe(EVOLFORGE_TRANSFORMERS_SKLEARN="1") == {"available": True, "imported": True, "generation": True,
                                                         "roc_curve": True}


def test_install_is_idempotent_and_finds_only_its_module():
    from evolforge import import_hooks

    def hooks() -> int:
        return sum(isinstance(f, import_hooks._TransformersImportUtils) for f in sys.meta_path)

    import_hooks.install()
    installed = hooks()  # 1; 0 where this process imported transformers before evolforge
    import_hooks.install()
    assert hooks() == installed <= 1
    assert import_hooks._TransformersImportUtils().find_spec("json", None) is None


STRUCTURE = """
import json, sys
from pathlib import Path
import evolforge
import transformers
from transformers import AutoTokenizer  # transformers.models: its own scan of the folder
from transformers.utils import import_utils
from evolforge.import_hooks import encode
models = Path(transformers.__file__).parent / "models"
print(json.dumps([encode(import_utils.define_import_structure(models, prefix="models")),
                  encode(import_utils.define_import_structure(str(models / "__init__.py")))]))
"""


def structures(cache: Path, **env: str) -> list:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("EVOLFORGE_TRANSFORMERS")}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), environ.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", STRUCTURE], env={**environ, "XDG_CACHE_HOME": str(cache), **env},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_models_import_structure_is_kept_on_disk_and_read_back_the_same(tmp_path):
    """The first process scans transformers' models folder and writes both structures; a later one reads them
    back: the same as transformers' own scan, which EVOLFORGE_TRANSFORMERS_IMPORT_CACHE=0 keeps."""
    from evolforge.import_hooks import CACHE_FOLDER

    scanned = structures(tmp_path / "off", EVOLFORGE_TRANSFORMERS_IMPORT_CACHE="0")
    assert not (tmp_path / "off").exists()
    assert len(scanned[0]) >= 2 and sum(len(modules) for _, modules in scanned[0]) > 500  # a real scan
    written = structures(tmp_path)
    kept = sorted((tmp_path / "evolforge" / CACHE_FOLDER).glob("*.json"))
    assert written == scanned and len(kept) == 2
    assert structures(tmp_path) == scanned  # read back
    # a damaged file: scanned again and rewritten as it was (the structure as transformers' scan returns it, before
    # transformers' __init__ adds its own modules to the first one in place)
    before = kept[0].read_text(encoding="utf-8")
    for damaged in ("{not json", "[[[], []]]"):
        kept[0].write_text(damaged, encoding="utf-8")
        assert structures(tmp_path) == scanned
        assert kept[0].read_text(encoding="utf-8") == before


def test_only_the_models_folder_is_kept(tmp_path):
    from evolforge.import_hooks import cache_file

    transformers = pytest.importorskip("transformers")
    models = Path(transformers.__file__).parent / "models"
    assert cache_file(models, "models") != cache_file(models / "__init__.py", None)
    assert cache_file(models / "llama", None) is None and cache_file(tmp_path / "models", None) is None


def test_encode_refuses_what_is_not_an_import_structure():
    from evolforge.import_hooks import decode, encode

    structure = {frozenset({"torch"}): {"models.a.modeling_a": {"A"}}, frozenset(): {"models.a.configuration_a": set()}}
    assert decode(encode(structure)) == structure
    with pytest.raises(TypeError):
        encode({"torch": {"models.a": {"A"}}})


def test_a_failed_write_leaves_neither_a_part_nor_a_temporary_file(tmp_path, monkeypatch):
    from evolforge import import_hooks

    target = tmp_path / "kept" / "structure.json"
    monkeypatch.setattr(import_hooks.os, "replace", lambda *args: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        import_hooks._write(target, "[]")
    assert list(target.parent.iterdir()) == []


READ_AHEAD = """
import json, os, sys
import evolforge
from evolforge import import_hooks
advised = []
os.posix_fadvise = lambda fd, offset, length, advice: advised.append(
    [os.path.basename(os.readlink(f"/proc/self/fd/{fd}")), offset, length, advice == os.POSIX_FADV_WILLNEED])
import torch  # the fake package first on the path
import torch  # a second import reads nothing again
finder = next((f for f in sys.meta_path if isinstance(f, import_hooks._TorchReadAhead)), None)
if finder is not None and finder.thread is not None:
    finder.thread.join(30)
print(json.dumps({"advised": advised, "imported": torch.WHERE}))
"""


def read_ahead_probe(root: Path, **env: str) -> dict:
    """:data:`READ_AHEAD` in a fresh interpreter, with a fake ``torch`` package under ``root`` first on the path."""
    environ = {k: v for k, v in os.environ.items() if k != "EVOLFORGE_READ_AHEAD"}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), str(REPO / "src"), environ.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", READ_AHEAD], env={**environ, **env}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def fake_torch(root: Path) -> Path:
    """A package named torch whose ``lib`` folder holds two shared libraries of different sizes and a text file."""
    lib = root / "torch" / "lib"
    lib.mkdir(parents=True)
    (root / "torch" / "__init__.py").write_text("WHERE = 'fake'\n")
    (lib / "libsmall.so").write_bytes(b"\0" * 10)
    (lib / "libbig.so.1").write_bytes(b"\0" * 4096)
    (lib / "README.txt").write_text("not a library")
    return lib


@pytest.mark.skipif(not hasattr(os, "posix_fadvise") or not Path("/proc/self/fd").is_dir(), reason="Linux only")
def test_the_first_import_of_torch_reads_its_libraries_ahead_largest_first(tmp_path):
    fake_torch(tmp_path)
    found = read_ahead_probe(tmp_path)
    assert found["imported"] == "fake"  # the import itself is the path finder's, as before
    assert found["advised"] == [["libbig.so.1", 0, 0, True], ["libsmall.so", 0, 0, True]]


@pytest.mark.skipif(not hasattr(os, "posix_fadvise") or not Path("/proc/self/fd").is_dir(), reason="Linux only")
def test_the_variable_turns_the_read_ahead_off(tmp_path):
    fake_torch(tmp_path)
    assert read_ahead_probe(tmp_path, EVOLFORGE_READ_AHEAD="0") == {"advised": [], "imported": "fake"}


def test_read_ahead_skips_a_folder_without_libraries(tmp_path):
    from evolforge.import_hooks import _TorchReadAhead, read_ahead

    (tmp_path / "notes.txt").write_text("x")
    assert read_ahead(tmp_path) is None and read_ahead(tmp_path / "missing") is None
    assert _TorchReadAhead().find_spec("json", None) is None  # other modules: nothing found, nothing read
