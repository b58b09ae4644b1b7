"""CPU threads for hf roles: the default respects the environment's limits, and the backend applies it."""

from __future__ import annotations

import pytest
import torch

from evolforge.config.roles import Role
from evolforge.llm.threads import usable_cores


def test_omp_num_threads_wins(tmp_path):
    assert usable_cores({"OMP_NUM_THREADS": "3"}, cgroup_root=tmp_path) == 3
    assert usable_cores({"OMP_NUM_THREADS": "0"}, cgroup_root=tmp_path) == usable_cores({}, cgroup_root=tmp_path)


def test_cgroup_quota_caps_the_affinity(tmp_path):
    affinity = usable_cores({}, cgroup_root=tmp_path / "none")  # no cgroup files: the cores we may run on
    assert affinity >= 1
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs -> 1 thread
    assert usable_cores({}, cgroup_root=v2) == 1
    (v2 / "cpu.max").write_text("max 100000\n")  # unlimited
    assert usable_cores({}, cgroup_root=v2) == affinity
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000")  # half a CPU still gets one thread
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert usable_cores({}, cgroup_root=v1) == 1
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert usable_cores({}, cgroup_root=v1) == affinity


@pytest.mark.parametrize("threads", [0, -2, 1.5, "4", True])
def test_role_threads_are_checked(threads):
    with pytest.raises(ValueError, match="roles.evolver.threads"):
        Role.from_params("evolver", {"backend": "hf", "model": "m", "threads": threads})


def test_hf_backend_applies_the_role_threads(tmp_path, monkeypatch):
    from tiny import build_random_llama

    from evolforge.llm.requests import ChatRequest
    from evolforge.llm.backends.hf.backend import HFBackend

    path = build_random_llama(tmp_path / "m", vocab_size=300, hidden_size=32, num_layers=1, num_heads=2,
                              intermediate_size=64, texts=["name a colour and say hello to the world"] * 50)
    before = torch.get_num_threads()
    try:
        role = Role.from_params("evolver", {"backend": "hf", "model": str(path), "threads": 1})
        backend = HFBackend.from_role(role)
        assert backend.threads == 1 and torch.get_num_threads() == 1
        torch.set_num_threads(2)  # another backend of the process set its own
        backend.generate([ChatRequest.chat([{"role": "user", "content": "hi"}], max_tokens=2)])
        assert torch.get_num_threads() == 1
        from evolforge.llm import threads

        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(threads, "busy_cores", lambda: 64.0)  # a machine busy with others
        assert HFBackend(str(path)).threads == usable_cores()  # the default: every usable core, whatever the load
        assert HFBackend(str(path), follow_load=True).threads == 1  # following the load: one thread
        monkeypatch.setattr(threads, "busy_cores", lambda: 0.0)  # an idle machine: every usable core
        assert HFBackend(str(path), follow_load=True).threads == usable_cores()
    finally:
        torch.set_num_threads(before)


def test_pick_threads_leaves_the_cores_others_use():
    from evolforge.llm.threads import pick_threads

    usable = usable_cores({})
    assert pick_threads({}, busy=0.0) == usable
    assert pick_threads({}, busy=0.4) == usable  # a little noise costs no thread
    assert pick_threads({}, busy=1.0) == max(1, usable - 1)
    assert pick_threads({}, busy=99.0) == 1
    assert pick_threads({}, busy=None) == usable  # cannot measure: as before
    assert pick_threads({"OMP_NUM_THREADS": "3"}, busy=99.0) == 3  # the user's choice stands


def test_busy_cores_reads_proc_stat(tmp_path):
    from evolforge.llm.threads import busy_cores

    assert busy_cores(0.0, stat=str(tmp_path / "missing")) is None


def test_decoding_threads_follow_the_load_only_when_asked(monkeypatch):
    """The thread count changes llama.cpp's logits: by default it is every usable core, busy machine or not, so
    a rerun decodes the same tokens; ``follow_load`` (a role's ``threads_follow_load``) picks fewer when busy."""
    from evolforge.llm import threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "busy_cores", lambda: 64.0)
    assert threads.decoding_threads() == usable_cores({})
    assert threads.decoding_threads(follow_load=True) == 1
    assert threads.decoding_threads(3, follow_load=True) == 3  # the role's own number stands
    role = Role.from_params("responder", {"backend": "llamacpp", "model": "m", "threads_follow_load": True})
    assert role.settings.threads_follow_load and not Role.from_params("responder", {"backend": "llamacpp", "model": "m"}).settings.threads_follow_load
