"""`cvsweep slurm`: the sbatch script, field by field (no SLURM needed), bad input, and on a real one-node
SLURM (scripts/slurm_local.sh): an array running a local sweep, and a task preempted then requeued."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from sweep_helpers import create_local, cvsweep, db_rows, tiny_params, wait_for

SLURM_LOCAL = ROOT / "scripts" / "slurm_local.sh"


def _grid(demo_dir, cache_dir, **over):
    return {"name": "slurm", "method": "grid", "metric": {"name": "best_val_f1", "goal": "maximize"},
            "parameters": tiny_params(demo_dir, cache_dir, **over)}


def _sbatch_lines(script):
    return [line.split(None, 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]


@pytest.fixture
def local_sweep(tmp_path, demo_dir, cache_dir):
    state = tmp_path / "state"
    return state, create_local(tmp_path, _grid(demo_dir, cache_dir, learning_rate={"values": [0.003, 0.01]}), state)


def test_dry_run_prints_the_array_script_that_runs_the_agent_on_the_sweep(tmp_path, local_sweep):
    state, sweep_id = local_sweep
    res = cvsweep(["slurm", sweep_id, "--tasks", "4", "--gpus-per-task", "2", "--dry-run"], state)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    for want in ("#SBATCH --array=0-3", "#SBATCH --gres=gpu:2", "#SBATCH --signal=B:TERM@120", "#SBATCH --requeue"):
        assert want in lines
    agent_line = next(x for x in lines if x.endswith(" &") and " agent " in x)
    assert agent_line.split()[1:] == ["agent", sweep_id, "--gpus", "all", "&"]
    assert Path(agent_line.split()[0]).name in ("cvsweep", "python") and Path(agent_line.split()[0]).is_absolute()
    assert subprocess.run(["bash", "-n"], input=res.stdout, text=True).returncode == 0
    slurm_dir = state / "sweeps" / sweep_id / "slurm"
    assert (slurm_dir / "job.sh").read_text() == res.stdout  # kept beside the sweep's state
    assert not (slurm_dir / "job_id").exists()  # nothing submitted
    # a local sweep: every task on this machine, sharing its state directory
    assert f"--nodelist={os.uname().nodename.split('.')[0]}" in _sbatch_lines(res.stdout)


def test_dry_run_for_a_wandb_sweep_on_4_nodes_field_by_field(wandb_server, tmp_path):
    server = wandb_server
    sweep_id = server.add_sweep({"method": "random", "metric": {"name": "best_val_f1", "goal": "maximize"},
                                 "parameters": {"learning_rate": {"min": 1e-5, "max": 1e-1}}}, project="docs")
    path = f"{server.entity}/docs/{sweep_id}"
    state = tmp_path / "state"
    res = cvsweep(["slurm", path, "--tasks", "4", "--nodes", "4", "--gpus-per-task", "8", "--cpus-per-task", "32",
                   "--time", "1-00:00:00", "--partition", "gpu", "--account", "vision", "--max-running", "2",
                   "--sbatch-arg=--qos=low", "--dry-run"], state)
    assert res.returncode == 0, res.stderr
    out = state.resolve() / "sweeps" / sweep_id / "slurm"
    assert _sbatch_lines(res.stdout) == [
        f"--job-name=cvsweep-{sweep_id}", "--array=0-3%2", "--nodes=1", "--ntasks=1", "--gres=gpu:8",
        "--cpus-per-task=32", "--time=1-00:00:00", "--partition=gpu", "--account=vision",  # no --nodelist: any node
        "--signal=B:TERM@120", "--requeue", "--open-mode=append", f"--output={out}/%A_%a.out",
        f"--chdir={tmp_path}", "--qos=low"]
    body = res.stdout
    assert f"export CVSWEEP_DIR={state.resolve()}" in body
    assert f" agent {path} --gpus all &" in body
    assert "% 2 * 3 ))" in body  # staggered: the first wave of 2 starts 3 s apart
    assert 'scontrol requeue "$SLURM_JOB_ID"' in body and "trap on_term TERM" in body
    assert "WANDB_API_KEY" not in body and server.api_key not in body


@pytest.mark.parametrize("text, seconds", [("90", 5400), ("2:30", 150), ("4:00:00", 14400), ("1-12", 129600),
                                           ("1-00:30", 88200), ("2-01:02:03", 176523)])
def test_time_limits_read_as_slurm_reads_them(text, seconds):
    from agent.slurm import format_time, parse_time

    assert parse_time(text) == seconds and parse_time(format_time(seconds)) == seconds


def _one_line_error(res, *words):
    assert res.returncode == 2, res.stdout + res.stderr
    error = [x for x in res.stderr.splitlines() if x.startswith("Error:")]
    assert len(error) == 1 and all(w in error[0] for w in words), res.stderr
    return error[0]


def test_bad_input_is_one_line_exit_2_and_submits_nothing(tmp_path, local_sweep):
    state, sweep_id = local_sweep
    no_sbatch = tmp_path / "bin"
    no_sbatch.mkdir()
    (no_sbatch / "python").symlink_to(sys.executable)
    _one_line_error(cvsweep(["slurm", sweep_id, "--tasks", "2"], state, PATH=str(no_sbatch)),
                    "sbatch not found", "apt-get install slurm-client", "--dry-run")
    _one_line_error(cvsweep(["slurm", "nosuchid", "--tasks", "2", "--dry-run"], state), "'nosuchid'", sweep_id)
    _one_line_error(cvsweep(["slurm", sweep_id, "--tasks", "2", "--time", "2:30", "--dry-run"], state,
                            CVSWEEP_LEASE_SECONDS="60"), "--time 00:02:30", "CVSWEEP_LEASE_SECONDS=60", "00:03:00")
    _one_line_error(cvsweep(["slurm", sweep_id, "--tasks", "0", "--dry-run"], state), "--tasks 0")
    _one_line_error(cvsweep(["slurm", sweep_id, "--tasks", "2", "--time", "soon", "--dry-run"], state), "'soon'")
    _one_line_error(cvsweep(["slurm", sweep_id, "--tasks", "2", "--nodes", "2", "--dry-run"], state),
                    "--nodes 2", "SQLite", "network filesystem", "W&B sweep")
    assert not (state / "sweeps" / sweep_id / "slurm").exists()


# --------------------------------------------------------------------------- on a real SLURM
def _run(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def slurm():
    """A one-node SLURM on this machine (scripts/slurm_local.sh): used if up, else installed and started when
    this is root with apt-get (or SLURM is installed), else the test is skipped with the reason."""
    import shutil

    if _run("bash", str(SLURM_LOCAL), "status").returncode == 0:
        yield
        return
    can_install = os.geteuid() == 0 and shutil.which("apt-get")
    if not (shutil.which("slurmctld") or can_install):
        pytest.skip("no SLURM here, and installing one needs root and apt-get (apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("SLURM is installed but not running, and starting its daemons needs root")
    started = subprocess.run(["bash", str(SLURM_LOCAL), "start"], capture_output=True, text=True, timeout=900)
    if started.returncode != 0:
        pytest.skip(f"could not start a local SLURM: {started.stderr.strip().splitlines()[-1:]}")
    yield
    _run("bash", str(SLURM_LOCAL), "stop")


def _submit(state, sweep_id, *args):
    res = cvsweep(["slurm", sweep_id, "--gpus-per-task", "0", *args], state)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.strip().splitlines()[-1]


def _task_states(job):
    out = _run("squeue", "-h", "-t", "all", "-r", "-j", job, "-o", "%i %T").stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def _done(job, n):
    states = _task_states(job)
    return len(states) == n and all(s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") for s in states.values()) \
        and states


def _logs(state, sweep_id):
    return "\n".join(p.read_text() for p in sorted((state / "sweeps" / sweep_id / "slurm").glob("*.out")))


@pytest.mark.slow
def test_an_array_of_two_tasks_runs_every_trial_of_a_local_sweep_once(slurm, tmp_path, demo_dir, cache_dir):
    state = tmp_path / "state"
    sweep_id = create_local(tmp_path, _grid(demo_dir, cache_dir, learning_rate={"values": [0.003, 0.01]},
                                       label_smoothing={"values": [0.0, 0.1]}), state)
    job = _submit(state, sweep_id, "--tasks", "2")
    try:
        states = wait_for(lambda: _done(job, 2), timeout=600, every=0.5, what=f"array {job} to end")
    finally:
        _run("scancel", job)
    logs = _logs(state, sweep_id)
    assert states == {f"{job}_0": "COMPLETED", f"{job}_1": "COMPLETED"}, logs[-3000:]
    assert "cvsweep slurm: task 0" in logs and "cvsweep slurm: task 1" in logs
    rows = db_rows(state, "SELECT params, state, attempt, attempts FROM trials")
    assert len(rows) == 4 and len({r["params"] for r in rows}) == 4, logs[-3000:]
    assert {(r["state"], r["attempt"], r["attempts"]) for r in rows} == {("finished", 1, 0)}  # each ran once
    status = cvsweep(["status", sweep_id], state)
    assert status.returncode == 0, status.stderr
    assert "trials: 4 finished" in status.stdout and f"slurm array {job}" in status.stdout
    assert f"{job}_0" in status.stdout and "COMPLETED" in status.stdout


def _running_with_history(state):
    return db_rows(state, "SELECT t.id, t.name FROM trials t WHERE t.state='running' "
                          "AND EXISTS (SELECT 1 FROM history h WHERE h.trial_id=t.id)")


def _epochs(state, trial_id):
    return [r["epoch"] for r in db_rows(state, "SELECT epoch FROM history WHERE trial_id=? ORDER BY epoch",
                                        (trial_id,))]


@pytest.mark.slow
def test_sigterm_to_a_task_preempts_its_trial_which_resumes_when_the_task_requeues(slurm, tmp_path, demo_dir,
                                                                                     cache_dir):
    state = tmp_path / "state"
    sweep_id = create_local(tmp_path, _grid(demo_dir, cache_dir, epochs={"value": 12}), state)
    job = _submit(state, sweep_id, "--tasks", "1")
    try:
        trial = wait_for(lambda: _running_with_history(state), timeout=300, every=0.05,
                         what="the trial's first epoch in the store")[0]
        # what SLURM does before the time limit (--signal=B:TERM@120), sent now
        assert _run("scancel", "--signal=TERM", "--batch", f"{job}_0").returncode == 0
        wait_for(lambda: db_rows(state, "SELECT 1 FROM trials WHERE id=? AND state='preempted'", (trial["id"],)),
                 timeout=120, every=0.05, what="the trial marked preempted")
        done_before = len(_epochs(state, trial["id"]))
        assert (state / "sweeps" / sweep_id / "trials" / trial["name"] / "checkpoints" / "last.pt").exists()
        states = wait_for(lambda: _done(job, 1), timeout=600, every=0.5, what=f"the requeued task {job}_0 to end")
    finally:
        _run("scancel", job)
    logs = _logs(state, sweep_id)
    assert states == {f"{job}_0": "COMPLETED"}, logs[-3000:]
    assert "SIGTERM at" in logs and "restart 1" in logs  # the trap requeued the task, which started again
    assert f"after epoch {done_before}" in logs and "resuming from" in logs
    t = db_rows(state, "SELECT state FROM trials WHERE id=?", (trial["id"],))[0]
    assert t["state"] == "finished" and _epochs(state, trial["id"]) == list(range(1, 13))
