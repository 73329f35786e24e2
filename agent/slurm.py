"""A sweep's agents as a SLURM job array: the sbatch script, written as plain bash a user can read and edit.

Each array task runs one ``cvsweep agent SWEEP`` on the node and GPUs SLURM gave it (the launcher
reads ``CUDA_VISIBLE_DEVICES`` as SLURM sets it). Before the time limit SLURM sends SIGTERM to the
batch shell (``--signal=B:TERM@120``); the script's trap forwards it to the agent, which checkpoints
its trials and marks them preempted (its own SIGTERM path: exit 143), then puts the task back in the
queue with ``scontrol requeue`` so the trials resume from their checkpoints. A task that ends because
the sweep is done exits 0 and is not requeued.

Building the script is a pure function of a :class:`SlurmPlan` (tested without SLURM);
:mod:`agent.slurm_jobs` submits it and reads the array's tasks back.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

#: Seconds between SIGTERM and the time limit: enough for every worker to finish its epoch's checkpoint
#: and say "preempted" (the launcher waits up to 120 s for its workers; SLURM's KillWait follows).
SIGNAL_LEAD = 120
#: Seconds between the starts of neighbouring tasks: hundreds of agents starting their wandb service
#: in the same second time out (wandb/wandb issues 6234, 2696).
STAGGER = 3
#: The first wave spreads over at most this many stagger steps (a task's index modulo it).
MAX_STAGGER_STEPS = 100


class SlurmError(ValueError):
    """A job array that cannot be asked for; the message names the bad value and the fix."""


@dataclass(frozen=True)
class SlurmPlan:
    sweep: str                      # what `cvsweep agent` takes: a local id or W&B's ENTITY/PROJECT/ID
    backend: str                    # local | wandb
    tasks: int
    out_dir: Path                   # the script, the job id and one output file per task
    cvsweep: list[str]              # how to run cvsweep here, absolute (the environment that wrote the script)
    workdir: Path                   # the submitter's directory (its .env is read there)
    env: dict = field(default_factory=dict)  # exported by the script: CVSWEEP_DIR, the lease, PYTHONPATH
    gpus_per_task: int = 1
    cpus_per_task: int | None = None
    time_s: int | None = None
    partition: str | None = None
    account: str | None = None
    max_running: int | None = None
    nodelist: str | None = None     # every task on this one node (a local sweep)
    sbatch_args: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return "cvsweep-" + self.sweep.rsplit("/", 1)[-1]


_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time(text: str) -> int:
    """SLURM's time formats -> seconds: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    m = _TIME.match(text.strip())
    if not m:
        raise SlurmError(f"--time {text!r}: use SLURM's formats, e.g. 90 (minutes), 4:00:00 or 1-12:00:00")
    days, a, b, c = m.groups()
    if days is not None:  # D-H[:M[:S]]
        h, mi, s = int(a), int(b or 0), int(c or 0)
        return ((int(days) * 24 + h) * 60 + mi) * 60 + s
    if c is not None:
        return (int(a) * 60 + int(b)) * 60 + int(c)
    if b is not None:
        return int(a) * 60 + int(b)
    return int(a) * 60


def format_time(seconds: int) -> str:
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return (f"{d}-" if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def check_request(backend: str, tasks: int, nodes: int | None, time_s: int | None, lease_s: float) -> None:
    """Refuse what cannot work, before anything is written or submitted."""
    if tasks < 1:
        raise SlurmError(f"--tasks {tasks}: an array needs at least 1 task")
    if backend == "local" and nodes not in (None, 1):
        raise SlurmError(f"--nodes {nodes}: a local sweep's state is one SQLite file, and SQLite over a network "
                         "filesystem loses its locks, so every task of a local sweep runs on this machine (--nodes 1); "
                         "for more machines use a W&B sweep (cvsweep create FILE --backend wandb: W&B cloud or a "
                         "self-hosted W&B Server)")
    if time_s is not None and time_s <= SIGNAL_LEAD + lease_s:
        raise SlurmError(f"--time {format_time(time_s)}: a task gets SIGTERM {SIGNAL_LEAD} s before its limit and "
                         f"must outlast one epoch's lease (CVSWEEP_LEASE_SECONDS={lease_s:g}); ask for more than "
                         f"{format_time(int(SIGNAL_LEAD + lease_s))}")


def header_lines(p: SlurmPlan) -> list[str]:
    """The ``#SBATCH`` lines, one option each."""
    array = f"0-{p.tasks - 1}" + (f"%{p.max_running}" if p.max_running else "")
    opts = [f"--job-name={p.name}", f"--array={array}", "--nodes=1", "--ntasks=1"]
    if p.gpus_per_task:
        opts.append(f"--gres=gpu:{p.gpus_per_task}")
    if p.cpus_per_task:
        opts.append(f"--cpus-per-task={p.cpus_per_task}")
    if p.time_s is not None:
        opts.append(f"--time={format_time(p.time_s)}")
    opts += [f"--partition={p.partition}"] if p.partition else []
    opts += [f"--account={p.account}"] if p.account else []
    opts += [f"--nodelist={p.nodelist}"] if p.nodelist else []
    opts += [f"--signal=B:TERM@{SIGNAL_LEAD}", "--requeue", "--open-mode=append",
             f"--output={p.out_dir}/%A_%a.out", f"--chdir={p.workdir}"]
    opts += list(p.sbatch_args)
    return [f"#SBATCH {shlex.quote(o) if ' ' in o else o}" for o in opts]


def agent_command(p: SlurmPlan) -> str:
    gpus = "all" if p.gpus_per_task else "none"
    return shlex.join([*p.cvsweep, "agent", p.sweep, "--gpus", gpus])


def render_script(p: SlurmPlan) -> str:
    """The whole sbatch script."""
    steps = min(p.max_running or p.tasks, p.tasks, MAX_STAGGER_STEPS)
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in p.env.items())
    where = ("a local sweep: every task on this node, sharing its state directory" if p.backend == "local"
             else "a W&B sweep: the W&B server hands trials to every task, on any node")
    return f"""#!/bin/bash
# {p.tasks} cvsweep agent(s) for sweep {p.sweep} ({where}).
# Written by `cvsweep slurm`; edit freely and submit again with: sbatch {p.out_dir / 'job.sh'}
{chr(10).join(header_lines(p))}
#
# SIGTERM ({SIGNAL_LEAD} s before the time limit, a preemption, `scancel --signal=TERM --batch`) reaches this
# shell only (B:). The trap hands it to the agent, which checkpoints its trials and marks them preempted
# (exit 143), then requeues this task: its trials resume from their checkpoints when it starts again.
# When the sweep is done the agent exits 0 and the task ends for good.
set -u
{exports}

agent=
on_term() {{
  echo "cvsweep slurm: SIGTERM at $(date +%T): preempting the agent, then requeueing task ${{SLURM_ARRAY_TASK_ID:-0}}"
  if [ -n "$agent" ]; then kill -TERM "$agent" 2>/dev/null; wait "$agent"; fi
  scontrol requeue "$SLURM_JOB_ID" || echo "cvsweep slurm: not requeued (cancelled?)"
  exit 143
}}
trap on_term TERM

# Staggered starts: task i waits {STAGGER} s x (i mod {steps}), so the agents' wandb services start apart.
sleep $(( ${{SLURM_ARRAY_TASK_ID:-0}} % {steps} * {STAGGER} )) &
wait $!
echo "cvsweep slurm: task ${{SLURM_ARRAY_TASK_ID:-0}} (job $SLURM_JOB_ID) on $(hostname -s), \\
CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-unset}}, restart ${{SLURM_RESTART_COUNT:-0}}"
{agent_command(p)} &
agent=$!
wait "$agent"
"""
