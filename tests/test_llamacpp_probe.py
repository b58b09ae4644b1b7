"""The llamacpp kernel probe (evolforge.llm.backends.llamacpp.probe) and the stage's guard against a crash in
native code (evolforge.core.native): where llama.cpp's extra buffer types kill the probe's child, the model
loads with them off, and the stage log, the LLM's stats, the engine options of models/identity.json and so the
cache keys say so; a crash inside a stage ends with one message naming the role, the model, the CPU and the
setting that works around it.

The crash is made, not found (no CPU of the suite's machines crashes): a ``sitecustomize`` put first on the
child's ``PYTHONPATH`` makes ``llama_decode`` of a batch of several tokens kill its process with SIGSEGV when the
model was loaded with the extra buffer types, as llama.cpp's AMX kernels did on Q4_K_M prompts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evolforge.config.backend_settings import LlamacppSettings
from evolforge.config.roles import Role
from evolforge.llm.backends.llamacpp import probe
from evolforge.llm.backends.llamacpp.backend import LlamaCppBackend
from evolforge.llm.cached import open_llm
from evolforge.llm.identity import identity_entry
from evolforge.llm.keys import resolved_engine

REPO = Path(__file__).resolve().parents[1]

# llama_decode of a batch of several tokens dies by SIGSEGV in a process whose model uses the extra buffer types
CRASHING_KERNELS = '''
import os, signal
from llama_cpp import _internals

_model_init, _decode = _internals.LlamaModel.__init__, _internals.LlamaContext.decode
EXTRA = []

def model_init(self, *args, params, **kwargs):
    EXTRA.append(bool(params.use_extra_bufts))
    _model_init(self, *args, params=params, **kwargs)

def decode(self, batch):
    if EXTRA and EXTRA[-1] and batch.n_tokens() > 1:
        os.kill(os.getpid(), signal.SIGSEGV)
    return _decode(self, batch)

_internals.LlamaModel.__init__, _internals.LlamaContext.decode = model_init, decode
'''


@pytest.fixture(scope="module")
def folder(tiny_model, tmp_path_factory):
    from tiny_gguf import write_tiny_gguf

    return write_tiny_gguf(tiny_model, tmp_path_factory.mktemp("tiny-gguf-q4"), quant="Q4_0")


@pytest.fixture
def verdicts(tmp_path, monkeypatch):
    """A store of verdicts of this test's own, and no verdict remembered by the process."""
    store = tmp_path / "llamacpp_kernels.json"
    monkeypatch.setattr(probe, "VERDICTS", store)
    monkeypatch.setattr(probe, "_SEEN", {})
    return store


@pytest.fixture
def crashing(tmp_path, monkeypatch):
    """Child processes started from here on crash as llama.cpp's AMX kernels did."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(CRASHING_KERNELS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hooks), str(REPO / "src"), str(REPO / "tests")]))
    return hooks


def role_of(folder: Path, **extra) -> Role:
    return Role(name="evolver", backend="llamacpp", model=str(folder), extra=extra,
                settings=LlamacppSettings(threads=1, batch_size=4))


def test_the_probe_runs_once_and_keeps_its_verdict(folder, verdicts, monkeypatch, capfd):
    found = probe.verdict(probe.gguf_of(str(folder)), threads=1)
    assert (found.extra_bufts, found.outcome, found.probed) == (True, "ran", True)
    assert "with llama.cpp's extra buffer types: ran (96-token prompt, 4 sequences)" in capfd.readouterr().err
    monkeypatch.setattr(probe, "_SEEN", {})
    monkeypatch.setattr(probe, "_run_child", lambda *a: pytest.fail("the kept verdict was not used"))
    again = probe.verdict(probe.gguf_of(str(folder)), threads=1)
    assert (again.extra_bufts, again.outcome, again.probed) == (True, "ran", False)
    assert resolved_engine(role_of(folder)) == {"context": 4096}  # where they run, the keys are as before


def test_a_fresh_clone_on_the_same_machine_reads_the_verdict_the_machine_kept(folder, verdicts, tmp_path, monkeypatch):
    """The machine's store keys a verdict by the model folder's bytes: the same files in another folder (a fresh
    clone's) with an empty store of its own are not probed again; other bytes are."""
    monkeypatch.chdir(tmp_path)  # where the models stage's memo of folder digests is kept, as in a stage
    machine = tmp_path / "home-cache" / "llamacpp_kernels.json"
    monkeypatch.setenv(probe.MACHINE_VERDICTS_ENV, str(machine))
    first = probe.verdict(probe.gguf_of(str(folder)), threads=1)
    assert first.probed and first.outcome == "ran" and machine.is_file()
    clone = Path(shutil.copytree(folder, tmp_path / "clone"))  # a fresh clone's copy, under another path
    monkeypatch.setattr(probe, "_SEEN", {})
    monkeypatch.setattr(probe, "VERDICTS", tmp_path / "clone-store.json")
    monkeypatch.setattr(probe, "_run_child", lambda *a: pytest.fail("the machine's verdict was not used"))
    gguf = probe.gguf_of(str(clone))
    again = probe.verdict(gguf, threads=1)
    assert (again.extra_bufts, again.outcome, again.probed) == (True, "ran", False)
    assert probe.probe_key(gguf) in probe._read(tmp_path / "clone-store.json")  # now kept locally
    gguf.write_bytes(gguf.read_bytes() + b"\0")
    monkeypatch.setattr(probe, "_run_child", lambda *a: "ran")
    assert probe.verdict(gguf, threads=1).probed  # other bytes: probed


def test_a_crashing_child_turns_the_extra_buffer_types_off_and_every_record_says_so(
        folder, verdicts, crashing, capfd, tmp_path):
    role = role_of(folder)
    engine = resolved_engine(role)
    assert engine == {"context": 4096, "extra_bufts": False}
    probe_log = capfd.readouterr().err
    assert "extra buffer types: killed by SIGSEGV (96-token prompt, 4 sequences); it loads with them off" in probe_log
    assert '"extra_bufts": false' in verdicts.read_text() and '"outcome": "killed by SIGSEGV"' in verdicts.read_text()
    # models/identity.json's entry carries it, so the cache keys follow the kernels that made the answers
    assert identity_entry(role, {"sha256": "x"}, engine=engine)["engine"]["extra_bufts"] is False
    llm = open_llm(role, None, identity={"sha256": "x"}, engine=engine)
    plain = open_llm(role, None, identity={"sha256": "x"}, engine={"context": 4096})
    request = llm.request([{"role": "user", "content": "Name a color."}])
    assert llm.key(request) != plain.key(request)
    assert llm.stats["extra_bufts"] is False and "extra_bufts" not in plain.stats  # in the stage's metrics
    # the backend (in this process: nothing crashes here) loads as the probe found, says so and answers
    backend = LlamaCppBackend.from_role(role)
    assert backend.extra_bufts is False and backend.runs_with() == {"extra_bufts": False}
    stage_log = capfd.readouterr().err
    assert f"roles.evolver: {folder}: llama.cpp's extra buffer types were killed by SIGSEGV on this CPU" in stage_log
    assert "loaded with them off (the plain kernels)" in stage_log
    llm._backend = backend
    assert llm.generate([request])[0].completion_tokens > 0


def test_a_role_that_sets_extra_bufts_is_loaded_as_it_says_and_not_probed(folder, verdicts, monkeypatch):
    monkeypatch.setattr(probe, "_run_child", lambda *a: pytest.fail("probed"))
    assert resolved_engine(role_of(folder, extra_bufts=True)) == {"context": 4096, "extra_bufts": True}
    backend = LlamaCppBackend.from_role(role_of(folder, extra_bufts=False))
    assert backend.extra_bufts is False and not verdicts.exists()


STAGE = '''
import sys
from evolforge.config.backend_settings import LlamacppSettings
from evolforge.config.roles import Role
from evolforge.core.stage import run_stage
from evolforge.llm.backends.llamacpp.backend import LlamaCppBackend
from evolforge.llm.requests import ChatRequest


def main():
    role = Role(name="evolver", backend="llamacpp", model=sys.argv[1], extra={"extra_bufts": True},
                settings=LlamacppSettings(threads=1))
    backend = LlamaCppBackend.from_role(role)
    backend.generate([ChatRequest.chat([{"role": "user", "content": "Rewrite: " * 40}], max_tokens=4)])
    print("answered")


run_stage(main, name="evolve")
'''


def test_a_crash_inside_a_stage_ends_with_one_message_naming_the_role_model_cpu_and_setting(
        folder, crashing, tmp_path):
    script = tmp_path / "evolve.py"
    script.write_text(STAGE)
    done = subprocess.run([sys.executable, str(script), str(folder)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == -11 and "answered" not in done.stdout
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith("evolve: error: the process died in native code (Segmentation fault): "
                                f"roles.evolver ({folder}) crashed in llama.cpp on this CPU ({probe.cpu_name()})")
    assert "set roles.evolver.extra.extra_bufts: false in params.yaml" in errors[0]
    assert "File " not in done.stderr  # the fault's traceback only with --debug
    debug = subprocess.run([sys.executable, str(script), str(folder), "--debug"], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)
    assert "llamacpp/context.py" in debug.stderr and "in prefill" in debug.stderr


TOY = '''
import os, pathlib, signal, yaml
from evolforge.core import native
from evolforge.core.stage import run_stage


def main():
    n = yaml.safe_load(open("params.yaml"))["n"]
    if n < 0:  # as llama.cpp's kernels did: a fatal signal in native code, after a note of what runs there
        native.note("roles.evolver (models/toy) crashed in llama.cpp; set roles.evolver.extra.extra_bufts: false")
        os.kill(os.getpid(), signal.SIGSEGV)
    pathlib.Path("out.txt").write_text(f"n={n}\\n")


run_stage(main, name="toy")
'''


def test_a_stage_killed_by_a_native_crash_under_dvc_repro_gets_its_previous_outputs_back(tmp_path):
    import yaml

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "stage.py").write_text(TOY)
    (repo / "params.yaml").write_text("n: 2\n")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"toy": {
        "cmd": "python stage.py", "deps": ["stage.py"], "params": ["n"], "outs": ["out.txt"]}}}))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro", "-q"]):
        subprocess.run(command, cwd=repo, check=True, env=env, capture_output=True, timeout=240)
    assert (repo / "out.txt").read_text() == "n=2\n"
    (repo / "params.yaml").write_text("n: -1\n")
    done = subprocess.run(["dvc", "repro"], cwd=repo, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode != 0
    assert ("toy: error: the process died in native code (Segmentation fault): roles.evolver (models/toy) crashed "
            "in llama.cpp; set roles.evolver.extra.extra_bufts: false") in done.stderr
    assert "the previous outputs are back in place (from DVC's cache): out.txt" in done.stderr
    assert (repo / "out.txt").read_text() == "n=2\n"


@pytest.mark.parametrize("status, outcome, extra_bufts, kept", [
    (-11, "killed by SIGSEGV", False, True), (-4, "killed by SIGILL", False, True),
    (3, "logits not finite", False, True), (0, "ran", True, True),
    (-9, "failed: killed by SIGKILL", True, False),  # the OOM killer's: no verdict on the kernels
    (1, "failed: exit status 1: ValueError: no model", True, False)])
def test_what_the_childs_end_decides(tmp_path, verdicts, monkeypatch, status, outcome, extra_bufts, kept):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    done = subprocess.CompletedProcess([], status, "", "Traceback ...\nValueError: no model\n")
    monkeypatch.setattr(probe.subprocess, "run", lambda *a, **kw: done)
    found = probe.verdict(model)
    assert (found.outcome, found.extra_bufts) == (outcome, extra_bufts)
    assert verdicts.exists() == kept
