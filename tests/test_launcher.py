"""Which GPUs and cores each worker gets is pure and tested at the NVML boundary (pynvml's functions
answering as an 8-GPU server would); the supervisor, pinning and the dry run with real processes."""
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import PY, ROOT, SECRET
from nvml_fake import MIXED8, Machine, no_driver, uuid
from sweep_helpers import cvsweep, db_rows

from agent.cli import cli
from agent.launcher import (
    Launcher,
    LaunchError,
    WorkerSpec,
    allowed_cpus,
    build_specs,
    cpu_shares,
    nvml_view,
    parse_gpus,
    plan_groups,
    plan_line,
    worker_env,
)
from cvtrain.gpus import Gpu, Visible, visible_gpus


@pytest.fixture
def server(monkeypatch):
    """An 8-GPU server (four A100s, then four H100s, in PCI bus order)."""
    return Machine(MIXED8).install(monkeypatch)


def plan(inherited, spec="all", gpus_per_trial=1, workers=None, cpus=tuple(range(32))):
    visible = visible_gpus(inherited, nvml_view())
    groups = plan_groups(parse_gpus(spec, visible, inherited), gpus_per_trial, workers)
    return build_specs("abc", "local", groups, {"PATH": "/bin"}, "/state", cpus=list(cpus))


def devices(specs):
    return [s.env["CUDA_VISIBLE_DEVICES"] for s in specs]


def test_all_is_every_gpu_nvml_sees_when_nothing_narrowed_it(server):
    specs = plan(None)
    assert devices(specs) == [str(i) for i in range(8)]
    assert all(s.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" for s in specs)
    assert [s.gpus[0].uuid for s in specs] == [uuid(i) for i in range(8)]


def test_all_is_the_inherited_cuda_visible_devices_not_the_whole_machine(server):
    specs = plan("2,3")  # what SLURM or `docker run --gpus` hands a job
    assert devices(specs) == ["2", "3"]
    assert [s.gpus[0].index for s in specs] == [2, 3] and [s.gpus[0].uuid for s in specs] == [uuid(2), uuid(3)]


def test_inherited_uuids_stay_uuids_and_keep_their_order(server):
    specs = plan(f"{uuid(6)},{uuid(1)}")
    assert devices(specs) == [uuid(6), uuid(1)]
    assert [s.gpus[0].index for s in specs] == [6, 1]
    assert [s.gpus[0].name for s in specs] == ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"]
    assert devices(plan(uuid(5)[:12])) == [uuid(5)[:12]]  # a unique prefix, as CUDA accepts


def test_gpus_indices_count_the_visible_list_as_torch_does(server):
    specs = plan("2,5,7", "0,2")
    assert devices(specs) == ["2", "7"]
    with pytest.raises(LaunchError) as err:
        plan("2,5,7", "3")
    msg = str(err.value)
    assert "GPU(s) [3] not visible" in msg and "CUDA_VISIBLE_DEVICES='2,5,7'" in msg
    assert f"0 = GPU 2 ({uuid(2)}), 1 = GPU 5 ({uuid(5)}), 2 = GPU 7 ({uuid(7)})" in msg


def test_empty_cuda_visible_devices_means_no_gpu(server):
    assert visible_gpus("", nvml_view()) == Visible([], [])
    specs = plan("", "all", workers=2)
    assert devices(specs) == ["", ""] and all(s.env["CVTRAIN_NUM_WORKERS"] == "0" for s in specs)
    with pytest.raises(LaunchError, match="no GPU is visible to this process \\(CUDA_VISIBLE_DEVICES is empty\\)"):
        plan("", "0")


def test_like_cuda_an_entry_that_names_no_gpu_hides_it_and_all_after_it(server):
    visible = visible_gpus(f"{uuid(1)},GPU-deadbeef,{uuid(2)}", nvml_view())
    assert [g.index for g in visible.gpus] == [1] and visible.ignored == ["GPU-deadbeef", uuid(2)]
    assert [g.index for g in visible_gpus("0,-1,3", nvml_view()).gpus] == [0]
    assert [g.index for g in visible_gpus("4,9,5", nvml_view()).gpus] == [4]  # there is no GPU 9
    assert [g.index for g in visible_gpus(f"2,{uuid(3)}", nvml_view()).gpus] == [2]  # the first entry sets the form
    assert visible_gpus("1,3,1", nvml_view()) == Visible([], ["1", "3", "1"])  # named twice: CUDA shows none
    assert [g.token for g in visible_gpus("1gpu2, 3", nvml_view()).gpus] == ["1gpu2", "3"]  # read like strtoul


def test_gpus_a_cgroup_keeps_from_the_job_are_skipped_and_indices_count_the_rest(monkeypatch):
    # SLURM with ConstrainDevices: NVML lists 8 GPUs but may open only 3 and 6; CUDA numbers those 0 and 1.
    Machine(MIXED8, no_permission={0, 1, 2, 4, 5, 7}).install(monkeypatch)
    specs = plan("0,1")
    assert devices(specs) == ["0", "1"] and [s.gpus[0].index for s in specs] == [3, 6]


def test_mig_instances_are_devices_of_their_own(monkeypatch):
    Machine(MIXED8, mig={7: 2}).install(monkeypatch)
    specs = plan(None)
    assert devices(specs) == [*map(str, range(7)), uuid(16 * 7, "MIG"), uuid(16 * 7 + 1, "MIG")]
    assert devices(plan(uuid(16 * 7 + 1, "MIG"))) == [uuid(16 * 7 + 1, "MIG")]


def test_without_an_nvidia_driver_all_means_cpu_workers(monkeypatch):
    no_driver(monkeypatch)
    assert nvml_view() == []
    assert plan("0,1", "all", workers=2)[0].gpus == []


def test_one_worker_per_gpu_group_with_disjoint_devices(server):
    specs = plan(None, gpus_per_trial=2)
    assert devices(specs) == ["0,1", "2,3", "4,5", "6,7"]
    assert all(s.cmd[1:4] == ["-m", "agent.worker", "abc"] for s in specs)
    assert len({tuple(s.cmd) for s in specs}) == 4  # each worker has its own name
    with pytest.raises(LaunchError):
        plan_groups([0, 1, 2], gpus_per_trial=4)
    assert plan_groups([0, 1, 2], gpus_per_trial=1, workers=2) == [[0], [1]]
    assert plan_groups([], workers=3) == [[], [], []]


def test_threads_and_loader_workers_come_from_the_allowed_cores_divided_among_workers(server, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8, 16)))  # a SLURM task with 8 of 64 cores
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    visible = visible_gpus("4,5,6,7", nvml_view())
    specs = build_specs("abc", "local", plan_groups(visible.gpus), {}, "/s", cpus=allowed_cpus(topology=lambda c: (0, c)))
    assert [s.cpus for s in specs] == [[8, 9], [10, 11], [12, 13], [14, 15]] and all(s.pin for s in specs)
    assert all(s.env["OMP_NUM_THREADS"] == "2" and s.env["MKL_NUM_THREADS"] == "2" for s in specs)
    assert all(s.env["CVTRAIN_NUM_WORKERS"] == "1" for s in specs)  # one core feeds the GPU, one loads
    cpu = build_specs("abc", "local", [[], [], []], {}, "/s", cpus=allowed_cpus(topology=lambda c: (0, c)))
    assert [len(s.cpus) for s in cpu] == [3, 3, 2] and [s.env["OMP_NUM_THREADS"] for s in cpu] == ["3", "3", "2"]
    assert all(s.env["CVTRAIN_NUM_WORKERS"] == "0" for s in cpu)


def test_shares_hold_whole_cores_and_overlap_only_when_workers_outnumber_cores():
    siblings = lambda c: (0, c % 4)  # 4 cores with 2 hyperthreads each: cpu c and c+4 share a core
    assert cpu_shares(allowed_cpus(range(8), siblings), 2) == [[0, 4, 1, 5], [2, 6, 3, 7]]
    assert cpu_shares([0, 1], 3) == [[0], [1], [0]]
    specs = build_specs("abc", "local", [[], [], []], {}, "/s", cpus=[0, 1])
    assert not any(s.pin for s in specs) and all(s.env["OMP_NUM_THREADS"] == "1" for s in specs)


def test_a_users_loader_worker_count_wins_and_the_parent_env_is_untouched():
    base = {"PATH": "/bin", "CVTRAIN_NUM_WORKERS": "6"}
    env = worker_env(base, [], cpus=[0, 1], state_dir="/s")
    assert env["CVTRAIN_NUM_WORKERS"] == "6" and env["OMP_NUM_THREADS"] == "2" and env["CVSWEEP_DIR"] == "/s"
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert base == {"PATH": "/bin", "CVTRAIN_NUM_WORKERS": "6"}


def test_workers_start_their_own_wandb_service_not_the_launchers():
    """wandb keeps its service address in os.environ once a process used wandb; a worker sharing it
    would leave a killed trial's run id "in use" there (see the finalize kill test)."""
    env = worker_env({"PATH": "/bin", "WANDB_SERVICE": "2-123-unix-/tmp/x.sock"}, [], cpus=[0], state_dir="/s")
    assert "WANDB_SERVICE" not in env


def test_plan_line_names_slot_gpu_uuid_threads_loaders_and_command(server):
    line = plan_line(plan("2,5,7", "1", cpus=range(4))[0])
    assert line.startswith(f"w0: GPU 5 ({uuid(5)}, NVIDIA H100 80GB HBM3, 80 GiB) | CUDA_VISIBLE_DEVICES=5 | ")
    assert "pinned to cpus 0-3, 4 threads, 3 loader workers | " in line
    assert line.endswith("-m agent.worker abc --backend local --name w0")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning to 1 of 1 core changes nothing")
def test_pinned_worker_and_the_processes_it_starts_run_only_on_its_share(tmp_path):
    cpu = sorted(os.sched_getaffinity(0))[-1]
    out = tmp_path / "affinity"
    code = ("import os, subprocess, sys; child = subprocess.run([sys.executable, '-c', "
            "'import os; print(sorted(os.sched_getaffinity(0)))'], capture_output=True, text=True).stdout; "
            f"open({str(out)!r}, 'w').write(str(sorted(os.sched_getaffinity(0))) + ' ' + child)")
    spec = WorkerSpec(slot=0, gpus=[], cmd=[sys.executable, "-c", code], env=dict(os.environ), cpus=[cpu], pin=True)
    assert Launcher([spec], poll=0.05, echo=lambda m: None).run() == 0
    assert out.read_text().split() == [f"[{cpu}]", f"[{cpu}]"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning to 1 of 1 core changes nothing")
def test_a_pinned_worker_runs_on_its_share_from_its_first_instruction(tmp_path, monkeypatch):
    """The launcher does nothing after Popen returns until the child has read its affinity: only a mask
    set before the child's exec can be seen there."""
    cpu = sorted(os.sched_getaffinity(0))[-1]
    out = tmp_path / "affinity"
    code = f"import os; open({str(out)!r}, 'w').write(str(sorted(os.sched_getaffinity(0))))"

    class ParentWaits(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.wait(timeout=60)  # the child ran to its end before the launcher could touch it

    monkeypatch.setattr(subprocess, "Popen", ParentWaits)
    spec = WorkerSpec(slot=0, gpus=[], cmd=[sys.executable, "-c", code], env=dict(os.environ), cpus=[cpu], pin=True)
    assert Launcher([spec], poll=0.05, echo=lambda m: None).run() == 0
    assert out.read_text() == f"[{cpu}]"


def test_a_workers_spec_never_shows_the_api_key():
    spec = WorkerSpec(slot=0, gpus=[], cmd=["python"], env={"WANDB_API_KEY": SECRET, "OMP_NUM_THREADS": "2"},
                      cpus=[0], pin=True)
    assert SECRET not in repr(spec) and SECRET not in str(spec) and SECRET not in f"{spec!r} {spec}"


def _local_sweep(tmp_path):
    state = tmp_path / "state"
    res = cvsweep(["create", str(ROOT / "sweeps" / "demo.yaml"), "--backend", "local"], state)
    assert res.returncode == 0, res.stderr
    return state, res.stdout.strip().splitlines()[-1]


def test_dry_run_prints_one_line_per_worker_and_creates_no_trial(tmp_path):
    state, sid = _local_sweep(tmp_path)
    res = cvsweep(["agent", sid, "--gpus", "none", "--workers", "2", "--dry-run"], state, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["w0", "w1"]
    assert all("CPU | CUDA_VISIBLE_DEVICES= |" in line and f"agent.worker {sid}" in line for line in lines)
    assert "dry run, nothing started" in res.stderr
    assert db_rows(state, "SELECT COUNT(*) AS n FROM trials")[0]["n"] == 0
    assert not (state / "sweeps" / sid).exists()  # no worker ran: no trial output, no W&B run


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to narrow the affinity to 1")
def test_agent_sizes_workers_from_a_restricted_affinity_not_the_machine(tmp_path):
    state, sid = _local_sweep(tmp_path)
    cpu = sorted(os.sched_getaffinity(0))[0]
    env = dict(os.environ, CVSWEEP_DIR=str(state), PYTHONPATH=str(ROOT), WANDB_MODE="offline")
    res = subprocess.run([PY, "-m", "agent", "agent", sid, "--gpus", "none", "--workers", "1", "--dry-run"],
                         env=env, capture_output=True, text=True, timeout=120,
                         preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))  # taskset -c CPU
    assert res.returncode == 0, res.stderr
    assert f"pinned to cpus {cpu}, 1 thread, 0 loader workers" in res.stdout


def test_dry_run_on_an_8_gpu_server_under_slurm(tmp_path, monkeypatch, server):
    monkeypatch.setenv("CVSWEEP_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5,7")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)))
    run = CliRunner().invoke  # click >= 8.2: stdout and stderr apart
    sid = run(cli, ["create", str(ROOT / "sweeps" / "demo.yaml"), "--backend", "local"]).stdout.split()[-1]
    res = run(cli, ["agent", sid, "--gpus", "0,2", "--dry-run"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert [line.split(" | ")[:2] for line in lines] == [
        [f"w0: GPU 2 ({uuid(2)}, NVIDIA A100-SXM4-80GB, 80 GiB)", "CUDA_VISIBLE_DEVICES=2"],
        [f"w1: GPU 7 ({uuid(7)}, NVIDIA H100 80GB HBM3, 80 GiB)", "CUDA_VISIBLE_DEVICES=7"]]
    assert "pinned to cpus 0-5, 6 threads, 5 loader workers" in lines[0]
    assert "from CUDA_VISIBLE_DEVICES='2,5,7' (inherited): 0 = GPU 2" in res.stderr
    bad = run(cli, ["agent", sid, "--gpus", "3", "--dry-run"])
    assert bad.exit_code == 2 and "GPU(s) [3] not visible" in bad.stderr


def test_a_loader_worker_count_in_dot_env_beats_the_sizing(tmp_path, monkeypatch):
    monkeypatch.setenv("CVSWEEP_DIR", str(tmp_path / "state"))
    (tmp_path / ".env").write_text("CVTRAIN_NUM_WORKERS=3\n")  # tmp_path is the working directory
    sid = CliRunner().invoke(cli, ["create", str(ROOT / "sweeps" / "demo.yaml"), "--backend", "local"]).stdout.split()[-1]
    res = CliRunner().invoke(cli, ["agent", sid, "--gpus", "none", "--dry-run"])
    assert res.exit_code == 0 and "3 loader workers" in res.stdout, res.output


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


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a hand-over needs two cores")
@pytest.mark.parametrize("w0, restarts, ended, rc", [("pass", 5, "finished", 0),
                                                     ("import sys; sys.exit(3)", 0, "was given up on", 1)])
def test_a_finished_cpu_workers_cores_go_to_the_worker_still_training(tmp_path, w0, restarts, ended, rc):
    """w0 finds no more work and exits (or keeps dying and is given up on); the launcher hands its core to
    w1, which takes it between epochs (agent.cores): every thread of w1 widened, torch on two threads."""
    a, b = sorted(os.sched_getaffinity(0))[:2]
    out = tmp_path / "w1"
    taker = (
        "import os, sys, threading, time, torch; from agent.cores import CoreGrant\n"
        "torch.set_num_threads(1); g = CoreGrant.from_env(); ev = threading.Event()\n"
        "t = threading.Thread(target=ev.wait); t.start()  # a thread started before the hand-over\n"
        "deadline = time.monotonic() + 60\n"
        "while g.apply() is None:  # the launcher writes the grant once w0 has exited\n"
        "    assert time.monotonic() < deadline, 'no grant'; time.sleep(0.02)\n"
        "other = sorted(os.sched_getaffinity(t.native_id)); ev.set(); t.join()\n"
        f"open({str(out)!r}, 'w').write(f'{{sorted(os.sched_getaffinity(0))}} {{other}} {{torch.get_num_threads()}}')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    specs = [WorkerSpec(slot=0, gpus=[], cmd=[sys.executable, "-c", w0], env=env, cpus=[a], pin=True),
             WorkerSpec(slot=1, gpus=[], cmd=[sys.executable, "-c", taker], env=env, cpus=[b], pin=True)]
    messages = []
    assert Launcher(specs, poll=0.05, max_restarts=restarts, echo=messages.append).run() == rc
    assert out.read_text() == f"{[a, b]} {[a, b]} 2"
    assert any(f"w0 {ended}: its cpus {a} go to w1" in m for m in messages)


def test_a_cpu_workers_cores_go_to_no_gpu_worker(tmp_path):
    """A GPU worker's cores feed its loaders: it is never given more, even as the only one running."""
    gpu = Gpu(index=0, uuid="GPU-x", name="fake", memory_total=1, token="0")
    specs = [WorkerSpec(slot=0, gpus=[], cmd=[], env={}, cpus=[0], pin=True),
             WorkerSpec(slot=1, gpus=[gpu], cmd=[], env={}, cpus=[1], pin=True),
             WorkerSpec(slot=2, gpus=[], cmd=[], env={}, cpus=[2, 3], pin=True)]
    launcher = Launcher(specs, echo=lambda m: None)
    launcher._grants = str(tmp_path)
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE) as live:
        specs[1].proc = live
        launcher._hand_on(specs[0])
        assert specs[1].cpus == [1] and specs[0].cpus == [0] and not list(tmp_path.iterdir())
        specs[2].proc = live
        launcher._hand_on(specs[0])
        live.stdin.close()
    assert specs[2].cpus == [0, 2, 3] and specs[0].cpus == [] and specs[1].cpus == [1]
    assert (tmp_path / "w2.cpus").read_text() == "0,2,3\n"


def test_a_worker_restarted_after_a_hand_over_starts_on_its_widened_share_with_as_many_threads(tmp_path, monkeypatch):
    started = []

    class Recorded:
        def __init__(self, cmd, env=None, preexec_fn=None):
            started.append(env)
    monkeypatch.setattr(subprocess, "Popen", Recorded)
    spec = WorkerSpec(slot=1, gpus=[], cmd=["worker"], env={"OMP_NUM_THREADS": "1", "CVSWEEP_CPU_GRANT": "x"},
                      cpus=[0, 1], pin=True)
    launcher = Launcher([spec], echo=lambda m: None)
    launcher._grants = str(tmp_path)
    launcher._start(spec)
    env = started[-1]
    assert env["OMP_NUM_THREADS"] == "2" and env["CVSWEEP_CPU_GRANT"] == str(tmp_path / "w1.cpus")
    assert "CVSWEEP_CPU_GRANT" not in worker_env({"CVSWEEP_CPU_GRANT": "/elsewhere"}, [], cpus=[0], state_dir="/s")
