"""The ``cvsweep`` command line: options in, one library call, one line per error.

    cvsweep validate sweeps/demo.yaml
    cvsweep create sweeps/demo.yaml --backend local      # prints the sweep id last
    cvsweep agent SWEEP --gpus all                       # one worker per GPU (or --gpus none --workers 2)
    cvsweep leaderboard SWEEP --format markdown --write-back
    cvsweep list                                         # every local sweep, newest first
    cvsweep slurm SWEEP --tasks 8 --gpus-per-task 4      # its agents as a SLURM job array (prints the job id)
    cvsweep demo                                         # demo data + local sweep + agents + finalize + report

What the commands do lives in the library (agent.access, agent.actions, agent.queries, ...);
errors the user can fix are the library's own exceptions, each turned here into one line:
exit code 2 for bad input, 1 for everything else.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import click

from .queries import STATE_NAMES, format_table
from .settings import Settings, SettingsError, load_settings, unset_empty_wandb_vars


def _user_errors():
    """(bad input -> exit 2, other problems -> exit 1): the library's exceptions the user can act on."""
    from cvtrain.config import ConfigError
    from cvtrain.shift_profile import ProfileError, ShiftError

    from .access import AccessProblem, WandbUnreachable
    from .finalize import FinalizeError
    from .launcher import LaunchError
    from .store import StoreError
    from .validate import SweepFileError
    from .wandb_backend import SweepPathError

    return (SweepPathError, LaunchError, SettingsError, SweepFileError, ConfigError, ShiftError,
            ProfileError), \
        (AccessProblem, StoreError, FinalizeError), WandbUnreachable


class Exit2(click.ClickException):
    """One line (``Error: ...``) and exit code 2, without a usage banner: the fix is in the line."""
    exit_code = 2


class Group(click.Group):
    """Turns the library's errors into one line (``Error: ...``) and an exit code, never a traceback."""

    def invoke(self, ctx):
        usage, other, unreachable = _user_errors()
        try:
            return super().invoke(ctx)
        except unreachable as exc:
            raise Exit2(str(exc).strip().replace("\n", "; ")) from None
        except usage as exc:
            raise click.UsageError(str(exc).strip().replace("\n", "; "), ctx) from None
        except other as exc:
            raise click.ClickException(str(exc).strip().replace("\n", "; ")) from None


def settings() -> Settings:
    """The settings the group resolved for this invocation (environment over .env over defaults)."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return obj if isinstance(obj, Settings) else load_settings()


def open_sweep(sweep_id: str, project: str | None = None, entity: str | None = None, backend: str | None = None):
    """The sweep's backend, store and key; a W&B store's in-process calls see .env's key for this command."""
    from .access import open_sweep as _open

    ctx = click.get_current_context()
    return _open(settings(), sweep_id, project, entity, backend, enter=ctx.with_resource)


def sweep_options(f):
    """``--project`` / ``--entity`` for a command that takes a sweep (W&B sweeps only)."""
    f = click.option("--entity", default=None, help="W&B entity of the sweep (or ENTITY/PROJECT/ID)")(f)
    return click.option("--project", default=None, help="W&B project of the sweep (or PROJECT/ID; "
                        "default WANDB_PROJECT, else cvsweep)")(f)


def _echo(text: str = "", err: bool = False) -> None:
    click.echo(text, err=err)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def cli(ctx):
    """W&B Sweeps for timm image classifiers: online against W&B, or offline with a local controller."""
    # Resolved once (environment over .env over defaults) and passed down. The API key stays in
    # the settings object: it goes only into the environments built for the children that need it.
    # An empty WANDB_* (a common way to "unset" one) means not set; wandb itself would reject it.
    unset_empty_wandb_vars(os.environ)
    try:
        ctx.obj = load_settings()
    except SettingsError as exc:
        raise click.UsageError(str(exc), ctx) from None


# ---------------------------------------------------------------------------
@cli.command("demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--per-class", default=12, show_default=True, help="training images per class")
@click.option("--test-per-class", default=4, show_default=True, help="test images per class")
@click.option("--seed", default=0, show_default=True)
def demo_data(out_dir, per_class, test_per_class, seed):
    """Write the synthetic 17-class document dataset to OUT_DIR (competition layout)."""
    from cvtrain.demo_data import make_demo_data

    out = make_demo_data(out_dir, per_class=per_class, test_per_class=test_per_class, seed=seed)
    click.echo(f"wrote demo data to {out} ({17 * per_class} train, {17 * test_per_class} test images)")


@cli.command()
@click.argument("data_dir", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="write the recommended val_shift profile (YAML) here")
@click.option("--max-images", type=click.IntRange(1), default=200, show_default=True,
              help="images sampled (seeded) from each of train and test")
@click.option("--test-dir", default="test", show_default=True, help="folder of test images under DATA_DIR")
@click.option("--size", type=click.IntRange(32), default=224, show_default=True,
              help="side of the square the images are measured at (blur sigmas are scaled to 224 px)")
@click.option("--seed", default=0, show_default=True)
def shift(data_dir, fmt, output, max_images, test_dir, size, seed):
    """Compare the training with the test images (no labels needed) and recommend a val_shift profile."""
    from cvtrain.shift import measure_shift, shift_table
    from cvtrain.shift_profile import dump

    result = measure_shift(data_dir, max_images=max_images, seed=seed, size=size,
                           cache_dir=settings().env.get("CVTRAIN_CACHE_DIR") or None, test_dir=test_dir)
    if output:
        with open(output, "w") as f:
            f.write(dump(result["train"]["profile"]))
    if fmt == "json":
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(format_table(shift_table(result)))
        click.echo(f"\nval_shift profile: {json.dumps(result['train']['profile'])}"
                   + (f" (written to {output})" if output else ""))


def load_valid_sweep(file) -> dict:
    """The sweep file's config, or every violation (one line each) and exit code 2."""
    from .validate import SweepFileError, check_sweep_file

    try:
        return check_sweep_file(file)
    except SweepFileError as exc:
        for v in exc.violations:
            click.echo(f"{file}: {v}", err=True)
        sys.exit(2)


@cli.command()
@click.argument("file", type=click.Path())
def validate(file):
    """Check a sweep file: the W&B schema plus every check the trainer runs. Exit 2 on any violation."""
    from .validate import path_problems

    cfg = load_valid_sweep(file)
    for p in path_problems(cfg.get("parameters") or {}):
        click.echo(f"{file}: warning: {p}", err=True)
    click.echo(f"{file}: ok ({cfg['method']}, {len(cfg.get('parameters', {}))} parameters)")


@cli.command()
@click.argument("file", type=click.Path())
@click.option("--backend", type=click.Choice(["local", "wandb"]), default=None,
              help="default: wandb when an API key is configured and mode is online, else local")
@click.option("--project", default=None, help="W&B project (default: the file's, WANDB_PROJECT, or cvsweep)")
@click.option("--entity", default=None)
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=None,
              help="local backend: the search's seed (same file, seed and results: same suggestions); "
                   "default: drawn and stored")
@click.option("--holdout", type=click.FloatRange(0, 0.5, min_open=True, max_open=True), default=None,
              help="keep this fraction of the training images (stratified, the same for every trial) out of "
                   "every trial's training and validation; cvsweep finalize scores its ensemble on it once")
def create(file, backend, project, entity, seed, holdout):
    """Validate FILE and register the sweep; prints the sweep id as the last line."""
    from .access import default_backend, ensure_reachable, local_store, wandb_call_env
    from .finalize import FinalizeError, with_holdout
    from .validate import absolute_paths, path_problems

    cfg, changes = absolute_paths(load_valid_sweep(file))
    if holdout is not None:
        try:
            cfg = with_holdout(cfg, holdout)
        except FinalizeError as exc:
            raise click.BadParameter(f"{exc} ({file})", param_hint="--holdout") from None
    for c in changes:
        click.echo(f"stored as an absolute path (agents may start elsewhere): {c}")
    s = settings()
    if backend is None:
        backend, why = default_backend(s)
        click.echo(f"backend: {backend} ({why})")
    for p in path_problems(cfg.get("parameters") or {}):
        click.echo(f"{file}: warning: {p}", err=True)
    project = project or cfg.get("project") or s.project or "cvsweep"
    entity = entity or cfg.get("entity") or s.entity
    if backend == "local":
        from .controller import LocalController

        store = local_store(s, create=True)
        sweep = LocalController(store).create_sweep(cfg, project=project, entity=entity, seed=seed)
        click.echo(f"created local sweep in {store.root} (seed {sweep.seed}); run it with: cvsweep agent {sweep.id}")
        click.echo(sweep.id)
        return
    if seed is not None:
        raise click.UsageError("--seed: the W&B server draws a W&B sweep's suggestions; it takes no seed "
                               "(use --backend local for a replayable search)")
    from .wandb_backend import create_wandb_sweep

    ensure_reachable(s)
    with wandb_call_env(s):
        path = create_wandb_sweep(cfg, project=project, entity=entity)
    click.echo(f"created W&B sweep {path}; run it with: cvsweep agent {path}  (or: wandb agent {path})")
    click.echo(path.id)


# ---------------------------------------------------------------------------
@cli.command()
@click.argument("sweep_id")
@click.option("--gpus", default="all", show_default=True,
              help="all: the GPUs this process may use (CUDA_VISIBLE_DEVICES as SLURM or a container set it, else "
                   "every GPU) | none | indices into that list, as torch numbers them, e.g. 0,2")
@click.option("--gpus-per-trial", default=1, show_default=True, type=click.IntRange(1))
@click.option("--workers", type=click.IntRange(1), default=None, help="worker processes (default: one per GPU group; "
              "without GPUs, up to 2 CPU workers)")
@click.option("--count", type=click.IntRange(1), default=None, help="trials per worker before it exits")
@click.option("--backend", type=click.Choice(["local", "wandb"]), default=None,
              help="default: local when the local store has SWEEP_ID, else W&B")
@click.option("--pin/--no-pin", default=True, show_default=True,
              help="confine each worker to its share of the cores this process may use")
@click.option("--dry-run", is_flag=True, help="print the plan, one line per worker, and start nothing")
@sweep_options
def agent(sweep_id, gpus, gpus_per_trial, workers, count, backend, pin, dry_run, project, entity):
    """Run SWEEP_ID's trials (ID, PROJECT/ID or ENTITY/PROJECT/ID): one worker per GPU group, restarted if it dies.

    SIGTERM/SIGINT preempt the running trials (checkpointed; marked preempting on W&B, which
    requeues them) and the command exits 128 + the signal (143 for SIGTERM, 130 for Ctrl-C)."""
    from .actions import run_agents

    sweep = open_sweep(sweep_id, project, entity, backend)
    sys.exit(run_agents(settings(), sweep, gpus, gpus_per_trial, workers, count, dry_run=dry_run, pin=pin,
                        echo=_echo))


@cli.command()
@click.argument("sweep_id", required=False)
@sweep_options
def status(sweep_id, project, entity):
    """Show a sweep's state, trials by state and disk use (the newest local sweep without SWEEP_ID)."""
    from .access import local_store
    from .actions import status_lines

    if sweep_id is None:
        sweeps = sorted(local_store(settings()).list_sweeps(), key=lambda x: x.created_at or 0)
        if not sweeps:
            raise click.ClickException(f"no local sweep in {settings().state_dir}; `cvsweep create FILE` makes one")
        sweep_id = sweeps[-1].id
    sweep = open_sweep(sweep_id, project, entity)
    from .slurm_jobs import task_lines

    for line in status_lines(sweep) + task_lines(settings(), sweep.key):
        click.echo(line)


@cli.command()
@click.argument("sweep_id")
@click.option("--tasks", type=int, required=True, help="array tasks: one `cvsweep agent` each, on one node")
@click.option("--gpus-per-task", type=click.IntRange(0), default=1, show_default=True,
              help="GPUs per task (--gres=gpu:G); 0: CPU-only tasks (agent --gpus none)")
@click.option("--cpus-per-task", type=click.IntRange(1), default=None, help="default: the partition's")
@click.option("--time", "time_text", default=None, help="each task's time limit (SLURM's formats: 90, 4:00:00, "
              "1-12:00:00); SIGTERM comes 120 s before it, the trials checkpoint and the task requeues")
@click.option("--partition", default=None)
@click.option("--account", default=None)
@click.option("--max-running", type=int, default=None, help="tasks running at once (--array=0-(N-1)%%K)")
@click.option("--nodes", type=click.IntRange(1), default=None, help="machines the tasks may use: 1 keeps them all "
              "on this one (the default, and the only choice, for a local sweep); a W&B sweep's tasks go anywhere")
@click.option("--sbatch-arg", "sbatch_args", multiple=True, help="one more #SBATCH option, e.g. --sbatch-arg=--qos=low "
              "(repeatable)")
@click.option("--dry-run", is_flag=True, help="write the script and print it; submit nothing")
@sweep_options
def slurm(sweep_id, tasks, gpus_per_task, cpus_per_task, time_text, partition, account, max_running, nodes,
          sbatch_args, dry_run, project, entity):
    """Run SWEEP_ID's agents as a SLURM job array (a plain sbatch script beside the sweep's state); prints
    the job id last. Tasks get SIGTERM before their time limit, checkpoint, and requeue themselves."""
    from .access import AccessProblem
    from .slurm import SlurmError, parse_time
    from .slurm_jobs import SubmitError, make_plan, need_sbatch, submit, write_script
    from .store import StoreError

    try:
        time_s = parse_time(time_text) if time_text is not None else None
        try:
            sweep = open_sweep(sweep_id, project, entity)
        except (StoreError, AccessProblem) as exc:
            raise SlurmError(str(exc)) from None
        plan = make_plan(settings(), sweep, tasks, gpus_per_task, cpus_per_task, time_s, partition, account,
                         max_running, nodes, sbatch_args)
        if dry_run:
            path = write_script(plan)
            click.echo(path.read_text(), nl=False)
            click.echo(f"wrote {path}; nothing submitted (sbatch {path} submits it)", err=True)
            return
        job = submit(plan, need_sbatch())
    except SlurmError as exc:
        raise click.UsageError(str(exc)) from None
    except SubmitError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"submitted {tasks} task(s) of {plan.out_dir / 'job.sh'}; output in {plan.out_dir}; "
               f"see them with: cvsweep status {sweep_id}")
    click.echo(job)


@cli.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def list_cmd(fmt):
    """Every local sweep, newest first: id, name, backend, state, trials by state, best, age."""
    from .access import local_store
    from .actions import format_age, sweep_table
    from .store import StoreError

    try:
        rows = sweep_table(local_store(settings()))
    except StoreError:  # no database yet: no sweeps
        rows = []
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no sweeps in {settings().state_dir}; `cvsweep create FILE` makes one", err=True)
        return
    table = [("id", "name", "backend", "state", "trials", "best", "age")]
    table += [(r["id"], r["name"], r["backend"], r["state"], ", ".join(f"{v} {k}" for k, v in r["trials"].items())
               or "none", "-" if r["best"] is None else f"{r['best']:.4f}", format_age(r["age_s"])) for r in rows]
    click.echo(format_table(table))


def _set_state(sweep_id: str, state: str, allowed_from: tuple[str, ...], project=None, entity=None):
    sweep = open_sweep(sweep_id, project, entity)
    if sweep.backend != "local":
        from .wandb_backend import parse_sweep_path, set_wandb_sweep_state

        try:
            set_wandb_sweep_state(parse_sweep_path(sweep.key), state, env=settings().child_env(with_key=True))
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"W&B sweep {sweep.key}: {state}")
        return
    sweep.store.change_sweep_state(sweep.key, state, allowed_from,
                                   None if state in ("running", "paused") else f"{state} by user")
    click.echo(f"sweep {sweep.key}: {state}")


@cli.command()
@click.argument("sweep_id")
@sweep_options
def pause(sweep_id, project, entity):
    """Stop handing out new trials (running ones go on); agents wait."""
    _set_state(sweep_id, "paused", ("running",), project, entity)


@cli.command()
@click.argument("sweep_id")
@sweep_options
def resume(sweep_id, project, entity):
    """Hand out trials again after pause."""
    _set_state(sweep_id, "running", ("paused",), project, entity)


@cli.command()
@click.argument("sweep_id")
@sweep_options
def stop(sweep_id, project, entity):
    """Finish the sweep: no new trials; running trials complete; agents exit."""
    _set_state(sweep_id, "finished", ("running", "paused"), project, entity)


@cli.command()
@click.argument("sweep_id")
@sweep_options
def cancel(sweep_id, project, entity):
    """Cancel the sweep: running trials stop (on W&B: stopped by the server), marked accordingly."""
    _set_state(sweep_id, "cancelled", ("running", "paused", "finished"), project, entity)


# ---------------------------------------------------------------------------
STATE_CHOICE = click.Choice(STATE_NAMES)


@cli.command()
@click.argument("sweep_id", required=False)
@click.option("--state", "states", multiple=True, type=STATE_CHOICE,
              help="only trials in this state (repeatable); stopped: ended early by the sweep")
@click.option("--limit", type=click.IntRange(1), default=None)
@click.option("--latest", is_flag=True, help="newest first")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@sweep_options
def runs(sweep_id, states, limit, latest, fmt, project, entity):
    """List a sweep's trials (every local sweep's without SWEEP_ID)."""
    from .access import local_store
    from .queries import get_latest_runs, get_runs, state_name

    if sweep_id is None:
        store = local_store(settings())
        ids = [sw.id for sw in store.list_sweeps()]
    else:
        sweep = open_sweep(sweep_id, project, entity)
        store, ids = sweep.store, [sweep.key]
    rows = []
    for sid in ids:
        rows += (get_latest_runs(store, sid, limit or 10**9, tuple(states) or None) if latest
                 else get_runs(store, sid, tuple(states) or None, limit))
    if fmt == "json":
        click.echo(json.dumps([{"sweep": t.sweep_id, "run": t.name, "run_id": t.run_id, "state": state_name(t),
                                "metric": t.metric, "stopped": t.stopped, "config": t.params, "error": t.error,
                                "stop_reason": t.stop_reason, **_clean_and_shifted(t)} for t in rows], indent=2))
        return
    if not rows:
        click.echo("no trials" + (f" in state {', '.join(states)}" if states else ""), err=True)
        return
    shifted = any("best_val_shift_f1" in _clean_and_shifted(t) for t in rows)
    table = [("sweep", "run_id", "run", "state", "metric", *(("clean_f1", "shifted_f1") if shifted else ()), "config",
              "reason")]
    table += [(t.sweep_id, t.run_id or "", t.name, state_name(t), f"{t.metric:.4f}" if t.metric is not None else "-",
               *((_fmt(_clean_and_shifted(t).get("best_val_f1")), _fmt(_clean_and_shifted(t).get("best_val_shift_f1")))
                 if shifted else ()),
               json.dumps(t.params, sort_keys=True), ((t.stop_reason if t.stopped else t.error) or "").split("\n")[0])
              for t in rows]
    click.echo(format_table(table))


def _clean_and_shifted(t) -> dict:
    """The trial's clean and shifted validation figures (best_val_f1, best_val_shift_f1) that it has."""
    from .queries import is_finite_number

    return {k: t.summary[k] for k in ("best_val_f1", "best_val_shift_f1") if is_finite_number(t.summary.get(k))}


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


@cli.command("leaderboard")
@click.argument("sweep_id")
@click.option("--top", type=click.IntRange(0), default=10, show_default=True, help="rows to show; 0 for all")
@click.option("--metric", default=None, help="default: the sweep's metric")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "markdown"]), default="table")
@click.option("--write-back", is_flag=True, help="log the table to the sweep's one sweep-summary W&B run "
              "(an offline run for local sweeps) and record ranks")
@sweep_options
def leaderboard_cmd(sweep_id, top, metric, fmt, write_back, project, entity):
    """The best trials of a sweep, best first."""
    from .queries import format_leaderboard, leaderboard, nothing_to_rank

    sweep = open_sweep(sweep_id, project, entity)
    try:
        full = leaderboard(sweep.store, sweep.key, metric=metric)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    rows = full[:top] if top else full
    if not full and fmt in ("table", "markdown"):
        metric = metric or sweep.store.get_sweep(sweep.key).metric_name
        click.echo(nothing_to_rank(sweep.store.list_trials(sweep.key), metric, sweep_id), err=True)
    else:
        click.echo(format_leaderboard(rows, fmt))
    if len(rows) < len(full):
        click.echo(f"showing {len(rows)} of {len(full)}; --top 0 for all", err=True)
    if write_back:
        from .wandb_backend import write_back_leaderboard

        where = write_back_leaderboard(sweep.store, sweep.store.get_sweep(sweep.key), full, sweep.backend)
        click.echo(f"leaderboard written back: {where}", err=True)


@cli.command()
@click.argument("sweep_id")
@click.option("--dry-run", is_flag=True, help="list what would be uploaded")
def sync(sweep_id, dry_run):
    """Upload a local sweep's offline runs to W&B (grouped by sweep id) with `wandb sync`."""
    from .access import AccessProblem, ensure_reachable, wandb_access

    if "/" in sweep_id:
        raise click.ClickException(f"{sweep_id} is a W&B sweep path: its runs are online already")
    sweep = open_sweep(sweep_id)
    if sweep.backend != "local":
        raise click.ClickException(f"{sweep_id} is a W&B sweep: its runs are online already")
    sw = sweep.store.get_sweep(sweep.key)
    root = sweep.store.root / "sweeps" / sweep.key
    dirs = sorted(str(p) for p in root.glob("**/wandb/offline-run-*") if p.is_dir())
    if not dirs:
        raise click.ClickException(f"no offline runs under {root}")
    click.echo(f"{len(dirs)} offline run(s) of sweep {sweep.key}")
    if dry_run:
        click.echo("\n".join(dirs))
        return
    s = settings()
    try:
        wandb_access(s, mode="online")
    except AccessProblem as exc:
        raise click.ClickException(f"{exc}. Do that on a machine with network, then run "
                                   f"`cvsweep sync {sweep.key}` again. Nothing was uploaded.") from None
    ensure_reachable(s)
    # The child finds the key where wandb looks: the environment built for it (.env's key), ~/.netrc.
    cmd = [sys.executable, "-m", "wandb", "sync", "--project", sw.project or "cvsweep"]
    if sw.entity:
        cmd += ["--entity", sw.entity]
    proc = subprocess.run(cmd + dirs, env=s.child_env(with_key=True))
    if proc.returncode != 0:
        raise click.ClickException(f"`wandb sync` failed (exit {proc.returncode}): is W&B reachable from here?")
    click.echo(f"synced {len(dirs)} run(s) to {sw.project}, grouped as {sweep.key}")


@cli.command()
@click.argument("sweep_id")
@click.option("-o", "--output", default=None, help="default: report-SWEEP_ID.html")
@click.option("--top", type=click.IntRange(1), default=20, show_default=True, help="trials in the leaderboard table")
@sweep_options
def report(sweep_id, output, top, project, entity):
    """Write one self-contained HTML page for a sweep (opens from disk, no network)."""
    from .report import write_report

    sweep = open_sweep(sweep_id, project, entity)
    path = write_report(sweep.store, sweep.key, output or f"report-{sweep.key.rsplit('/', 1)[-1]}.html", top=top)
    click.echo(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


@cli.command()
@click.argument("sweep_id")
@click.option("--top", default=3, show_default=True, type=click.IntRange(1),
              help="distinct configurations taken from the leaderboard")
@click.option("--folds", default=5, show_default=True, type=click.IntRange(2),
              help="folds of the training data (less the sweep's holdout); stratified when every class has 2 images")
@click.option("--tta", default=None, help="test-time views, comma-separated (default: each configuration's tta)")
@click.option("--gpus", default="all", show_default=True, help="all | none | comma-separated indices")
@click.option("--workers", type=click.IntRange(1), default=None)
@click.option("--seed", default=0, show_default=True, help="seed of the folds (shared by every configuration)")
@click.option("-o", "--output", default="submission.csv", show_default=True)
@sweep_options
def finalize(sweep_id, top, folds, tta, gpus, workers, seed, output, project, entity):
    """Retrain SWEEP_ID's top configurations on K folds of the data; choose the ensemble out of fold; submit.

    Prints the selected ensemble's nested out-of-fold macro-F1 as the last line (oof_macro_f1: X).
    """
    from cvtrain.tta import TTA_VIEWS

    from .actions import run_finalize

    views = [v.strip() for v in tta.split(",") if v.strip()] if tta else None
    bad = [v for v in views or [] if v not in TTA_VIEWS]
    if bad or views == []:
        raise click.BadParameter(f"{tta!r}: views are comma-separated from {', '.join(TTA_VIEWS)}", param_hint="--tta")
    sweep = open_sweep(sweep_id, project, entity)
    sys.exit(run_finalize(settings(), sweep, top, folds, views, gpus, workers, seed, output, echo=_echo))


@cli.command()
@click.option("--data-dir", default="data/demo", show_default=True)
@click.option("--sweep-file", default=None, help="default: sweeps/demo.yaml")
@click.option("--gpus", default="all", show_default=True)
@click.option("--workers", type=click.IntRange(1), default=None)
def demo(data_dir, sweep_file, gpus, workers):
    """Demo data (made if missing) -> a local sweep -> leaderboard -> finalize (submission.csv) -> report."""
    from .actions import run_demo

    sys.exit(run_demo(settings(), data_dir, sweep_file, gpus, workers, echo=_echo))


def main():
    cli(prog_name="cvsweep")
