"""``cvsweep slurm``'s dealings with SLURM: plan the array for an opened sweep, write the script beside
the sweep's state, submit it with ``sbatch``, and read the array's tasks back (``squeue``, ``sacct``)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from .access import OpenSweep
from .settings import Settings
from .slurm import SlurmError, SlurmPlan, check_request, render_script

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "job.sh"
JOB_ID = "job_id"


class SubmitError(RuntimeError):
    """sbatch refused the script; the message carries its reason and where the script is."""


def slurm_dir(s: Settings, sweep_key: str) -> Path:
    """Beside the sweep's state: the script, the job id, one output file per task."""
    return s.state_dir.resolve() / "sweeps" / sweep_key.rsplit("/", 1)[-1] / "slurm"


def cvsweep_command() -> list[str]:
    """cvsweep of the environment running now, by absolute path: a job's shell may not have it on PATH."""
    exe = Path(sys.executable).with_name("cvsweep")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "agent"]


def job_env(s: Settings) -> dict:
    """What the script exports: where the state is, the lease, and this checkout ahead of any installed copy."""
    paths = [str(REPO_ROOT)] if (REPO_ROOT / "setup.cfg").exists() else []
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in paths]
    env = {"CVSWEEP_DIR": str(s.state_dir.resolve()), "CVSWEEP_LEASE_SECONDS": f"{s.lease_seconds:g}"}
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def make_plan(s: Settings, sweep: OpenSweep, tasks: int, gpus_per_task: int = 1, cpus_per_task: int | None = None,
              time_s: int | None = None, partition: str | None = None, account: str | None = None,
              max_running: int | None = None, nodes: int | None = None, sbatch_args: tuple[str, ...] = ()) -> SlurmPlan:
    """The array for ``sweep``; raises :class:`SlurmError` for one that cannot work."""
    check_request(sweep.backend, tasks, nodes, time_s, s.lease_seconds)
    if max_running is not None and max_running < 1:
        raise SlurmError(f"--max-running {max_running}: at least 1 task must be allowed to run")
    chose_node = any(a.startswith(("--nodelist", "-w")) for a in sbatch_args)
    # A local sweep's tasks share this machine's state directory: they run here. Nodes>1 was refused above;
    # a W&B sweep asked for --nodes 1 is pinned the same way.
    pin = (sweep.backend == "local" or nodes == 1) and not chose_node
    return SlurmPlan(sweep=sweep.key, backend=sweep.backend, tasks=tasks, out_dir=slurm_dir(s, sweep.key),
                     cvsweep=cvsweep_command(), workdir=Path.cwd(), env=job_env(s), gpus_per_task=gpus_per_task,
                     cpus_per_task=cpus_per_task, time_s=time_s, partition=partition, account=account,
                     max_running=max_running, nodelist=socket.gethostname().split(".")[0] if pin else None,
                     sbatch_args=tuple(sbatch_args))


def need_sbatch() -> str:
    exe = shutil.which("sbatch")
    if exe is None:
        raise SlurmError("sbatch not found on PATH: run this where SLURM's client commands are (a login node; "
                         "Debian/Ubuntu: apt-get install slurm-client), or add --dry-run to print the script only")
    return exe


def write_script(plan: SlurmPlan) -> Path:
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    path = plan.out_dir / SCRIPT
    path.write_text(render_script(plan))
    path.chmod(0o755)
    return path


def submit(plan: SlurmPlan, sbatch: str) -> str:
    """Write and submit the script; record the job id beside it; return the id."""
    path = write_script(plan)
    proc = subprocess.run([sbatch, "--parsable", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise SubmitError(f"sbatch refused {path}: {why}")
    job_id = proc.stdout.strip().split(";")[0]
    (plan.out_dir / JOB_ID).write_text(job_id + "\n")
    return job_id


def recorded_job(s: Settings, sweep_key: str) -> str | None:
    f = slurm_dir(s, sweep_key) / JOB_ID
    return f.read_text().strip() or None if f.exists() else None


def _run(cmd: list[str]) -> subprocess.CompletedProcess | None:
    if shutil.which(cmd[0]) is None:
        return None
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def task_lines(s: Settings, sweep_key: str) -> list[str]:
    """The sweep's array, task by task (squeue while SLURM holds them, else sacct), for ``cvsweep status``."""
    job = recorded_job(s, sweep_key)
    if job is None:
        return []
    head = f"slurm array {job} (output: {slurm_dir(s, sweep_key)}):"
    q = _run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%i|%T|%M|%N|%r"])
    if q is None:
        return [head, "  squeue not found here: the tasks' states are unknown"]
    rows = [r.split("|", 4) for r in q.stdout.splitlines() if r.strip()] if q.returncode == 0 else []
    if not rows:  # SLURM forgot the job (MinJobAge): accounting may remember it
        a = _run(["sacct", "-n", "-P", "-X", "-j", job, "-o", "JobID,State,Elapsed,NodeList,ExitCode"])
        if a is not None and a.returncode == 0:
            rows = [r.split("|") for r in a.stdout.splitlines() if r.strip()]
        if not rows:
            return [head, "  not known to squeue any more, and sacct has no record of it"]
    lines = [head]
    for r in sorted(rows, key=lambda r: (len(r[0]), r[0])):  # 12_2 before 12_10
        task, state, elapsed, node, *rest = r + [""] * (5 - len(r))
        extra = " ".join(x for x in rest if x and x != "None")
        lines.append(f"  {task:<14} {state:<11} {elapsed:>10}  {node or '-'}" + (f"  ({extra})" if extra else ""))
    return lines
