"""Building workers' commands and environments is pure; the supervisor is tested with real processes."""
import sys

import pytest

from agent.launcher import LaunchError, Launcher, WorkerSpec, build_specs, parse_gpus, plan_groups, worker_env


def test_gpu_selection():
    assert parse_gpus("all", 4) == [0, 1, 2, 3]
    assert parse_gpus("none", 4) == []
    assert parse_gpus("0,2,3", 4) == [0, 2, 3]
    with pytest.raises(LaunchError, match=r"GPU\(s\) \[5\] not present; this machine has 4"):
        parse_gpus("1,5", 4)
    with pytest.raises(LaunchError, match="no GPU; use --gpus none"):
        parse_gpus("0", 0)


def test_one_worker_per_gpu_group_with_disjoint_devices():
    groups = plan_groups(list(range(8)), gpus_per_trial=2)
    assert groups == [[0, 1], [2, 3], [4, 5], [6, 7]]
    specs = build_specs("abc", "local", groups, {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"},
                        "/state", cpu_count=32)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in specs] == ["0,1", "2,3", "4,5", "6,7"]
    assert all(s.env["OMP_NUM_THREADS"] == "8" for s in specs)
    assert all(s.cmd[1:4] == ["-m", "agent.worker", "abc"] for s in specs)
    assert len({tuple(s.cmd) for s in specs}) == 4  # each worker has its own name
    with pytest.raises(LaunchError):
        plan_groups([0, 1, 2], gpus_per_trial=4)
    assert plan_groups([0, 1, 2], gpus_per_trial=1, workers=2) == [[0], [1]]


def test_cpu_workers_hide_gpus_and_share_threads_without_touching_the_parent_env():
    base = {"PATH": "/bin"}
    env = worker_env(base, [], n_workers=2, cpu_count=2, state_dir="/s")
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["OMP_NUM_THREADS"] == "1" and env["CVSWEEP_DIR"] == "/s"
    assert env["CVTRAIN_NUM_WORKERS"] == "0"
    assert base == {"PATH": "/bin"}
    assert plan_groups([], workers=3) == [[], [], []]


def test_launcher_restarts_a_worker_that_dies(tmp_path):
    marker = tmp_path / "died-once"
    code = (f"import pathlib, sys; m = pathlib.Path({str(marker)!r}); "
            "sys.exit(0) if m.exists() else (m.touch(), sys.exit(9))")
    spec = WorkerSpec(slot=0, gpus=[], cmd=[sys.executable, "-c", code], env={})
    messages = []
    assert Launcher([spec], poll=0.05, echo=messages.append).run() == 0
    assert spec.restarts == 1 and "exited with 9; restarting" in messages[0]


def test_launcher_gives_up_on_a_worker_that_keeps_dying():
    spec = WorkerSpec(slot=0, gpus=[], cmd=[sys.executable, "-c", "import sys; sys.exit(3)"], env={})
    messages = []
    assert Launcher([spec], poll=0.05, max_restarts=1, echo=messages.append).run() == 1
    assert "giving up" in messages[-1]
