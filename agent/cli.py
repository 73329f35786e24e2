"""The ``cvsweep`` command line.

    cvsweep validate sweeps/demo.yaml
    cvsweep create sweeps/demo.yaml --backend local      # prints the sweep id last
    cvsweep agent SWEEP --gpus all                       # one worker per GPU (or --gpus none --workers 2)
    cvsweep leaderboard SWEEP --format markdown --write-back
    cvsweep demo                                         # demo data + local sweep + agents + leaderboard
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click

from .settings import KEY_VAR, Settings, SettingsError, load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def settings() -> Settings:
    """The settings the group resolved for this invocation (environment over .env over defaults)."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return obj if isinstance(obj, Settings) else _load_settings()


def _load_settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None


def wandb_access(s: Settings, mode: str | None = None):
    """How wandb would reach W&B from here (environment, .env, ~/.netrc, wandb settings); mode from them."""
    from cvtrain.tracking import AccessError, wandb_access as access

    try:
        return access(mode if mode is not None else s.env.get("WANDB_MODE"), s.api_key, s.env.get("WANDB_BASE_URL"),
                      s.env)
    except AccessError as exc:
        raise click.ClickException(exc.problems[0]) from None


def default_backend(s: Settings) -> tuple[str, str]:
    acc = wandb_access(s)
    return ("wandb" if acc.mode == "online" else "local"), acc.reason


@contextlib.contextmanager
def wandb_call_env(s: Settings):
    """For wandb's in-process calls that read the key and server only from the environment
    (``wandb.sweep``, ``wandb.Api``, write-back's ``wandb.init``): .env's values are there for the
    call and gone after it. Children get environments built for them (``Settings.child_env``)."""
    values = {KEY_VAR: s.api_key, "WANDB_BASE_URL": s.env.get("WANDB_BASE_URL")}
    added = {k: v for k, v in values.items() if v and not os.environ.get(k)}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def local_store(create: bool = False):
    from .store import SQLiteStore, StoreError

    try:
        return SQLiteStore(settings().state_dir, create=create)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


def open_sweep(sweep_id: str, project: str | None = None, entity: str | None = None, backend: str | None = None):
    """(backend, store, key) for a sweep: local when the local store has the id, else W&B
    (``backend`` forces one).

    ``key`` is what the store's methods take: the local id, or the W&B sweep's full
    ``entity/project/id`` (from ``ID``, ``project/ID`` or ``entity/project/ID`` and the options).
    """
    from .store import SQLiteStore, StoreError
    from .wandb_backend import SweepPathError, WandbStore, full_path, sweep_path_from_env

    s = settings()
    root_db = s.state_dir / "cvsweep.db"
    local_miss = None
    if backend == "local":
        store = local_store()
        try:
            store.get_sweep(sweep_id)
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
        return "local", store, sweep_id
    if backend is None and root_db.exists() and "/" not in sweep_id and not (project or entity):
        store = SQLiteStore(s.state_dir)
        try:
            store.get_sweep(sweep_id)
            return "local", store, sweep_id
        except StoreError as exc:
            local_miss = str(exc)
    try:
        wandb_access(s, mode="online")  # reading W&B needs credentials, whatever mode runs use
    except click.ClickException as exc:
        raise click.ClickException(f"{local_miss or f'no local sweep {sweep_id!r} in {root_db.parent}'}; "
                                   f"and to look it up on W&B: {exc.message}") from None
    # wandb's in-process calls of this command (public API, write-back) read .env's key and server
    # from the environment: there for this command only, never inherited by a child we start.
    click.get_current_context().with_resource(wandb_call_env(s))
    try:
        path = sweep_path_from_env(sweep_id, project, entity, s.env)
        store = WandbStore(project=path.project, entity=path.entity)
        path = full_path(path, store.api)
    except SweepPathError as exc:
        raise click.UsageError(str(exc)) from None
    return "wandb", store, str(path)


def sweep_options(f):
    """``--project`` / ``--entity`` for a command that takes a sweep (W&B sweeps only)."""
    f = click.option("--entity", default=None, help="W&B entity of the sweep (or ENTITY/PROJECT/ID)")(f)
    return click.option("--project", default=None, help="W&B project of the sweep (or PROJECT/ID; "
                        "default WANDB_PROJECT, else cvsweep)")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def cli(ctx):
    """W&B Sweeps for timm image classifiers: online against W&B, or offline with a local controller."""
    # Resolved once (environment over .env over defaults) and passed down. The API key stays in
    # the settings object: it goes only into the environments built for the children that need it.
    ctx.obj = _load_settings()


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
def create(file, backend, project, entity, seed):
    """Validate FILE and register the sweep; prints the sweep id as the last line."""
    from .validate import absolute_paths, path_problems

    cfg, changes = absolute_paths(load_valid_sweep(file))
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

        store = local_store(create=True)
        sweep = LocalController(store).create_sweep(cfg, project=project, entity=entity, seed=seed)
        click.echo(f"created local sweep in {store.root} (seed {sweep.seed}); run it with: cvsweep agent {sweep.id}")
        click.echo(sweep.id)
        return
    if seed is not None:
        raise click.UsageError("--seed: the W&B server draws a W&B sweep's suggestions; it takes no seed "
                               "(use --backend local for a replayable search)")
    from .wandb_backend import create_wandb_sweep

    with wandb_call_env(s):
        path = create_wandb_sweep(cfg, project=project, entity=entity)
    click.echo(f"created W&B sweep {path}; run it with: cvsweep agent {path}  (or: wandb agent {path})")
    click.echo(path.id)


# ---------------------------------------------------------------------------
def _progress_printer(store, sweep_id: str):
    from .queries import leaderboard

    last = [None]

    def show():
        trials = store.list_trials(sweep_id, with_history=False)
        counts = {k: 0 for k in ("finished", "running", "failed", "crashed", "stopped", "queued")}
        for t in trials:
            if t.state == "finished" and t.stopped:
                counts["stopped"] += 1
            elif t.state in ("pending", "preempted"):
                counts["queued"] += 1
            elif t.state in counts:
                counts[t.state] += 1
        board = leaderboard(store, sweep_id, top=1) if store.get_sweep(sweep_id).metric_name else []
        best = f" | best {board[0]['metric_name']} {board[0]['metric']:.4f} ({board[0]['run']})" if board else ""
        line = (f"trials: {counts['finished']} done, {counts['running']} running, {counts['stopped']} stopped, "
                f"{counts['failed'] + counts['crashed']} failed, {counts['queued']} queued{best}")
        if line != last[0]:
            click.echo(f"[{time.strftime('%H:%M:%S')}] {line}")
            last[0] = line

    return show


def run_agents(sweep_id: str, gpus: str, gpus_per_trial: int, workers: int | None, count: int | None,
               project: str | None = None, entity: str | None = None, dry_run: bool = False, pin: bool = True,
               backend: str | None = None) -> int:
    """Plan the workers (GPUs this process may use, its cores), print the plan, then run it unless ``dry_run``."""
    from cvtrain.system import Visible, visible_gpus

    from .launcher import (LaunchError, Launcher, allowed_cpus, build_specs, cpu_ranges, describe_visible, nvml_view,
                           parse_gpus, plan_groups, plan_line)

    backend, store, key = open_sweep(sweep_id, project, entity, backend)
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    cpus = allowed_cpus()
    try:
        use_gpus = (gpus or "all").strip().lower() != "none"
        visible = visible_gpus(inherited, nvml_view()) if use_gpus else Visible([], [])
        chosen = parse_gpus(gpus, visible, inherited)
        if not chosen and workers is None:
            workers = min(2, len(cpus)) if use_gpus else 1
        groups = plan_groups(chosen, gpus_per_trial, workers)
    except LaunchError as exc:
        raise click.UsageError(str(exc)) from None
    conf = settings()
    state_dir = str(conf.state_dir.resolve())
    env = conf.child_env(with_key=backend == "wandb")  # local workers never need the key
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if "CVTRAIN_NUM_WORKERS" in conf.env:  # the user's loader count (.env too) beats our sizing
        env.setdefault("CVTRAIN_NUM_WORKERS", conf.env["CVTRAIN_NUM_WORKERS"])
    # W&B workers get the sweep's full entity/project/id as their sweep id
    specs = build_specs(key, backend, groups, env, state_dir, count, cpus=cpus, pin=pin)
    # The plan: one line per worker on stdout; where it came from on stderr.
    for line in describe_visible(visible, inherited) if use_gpus else []:
        click.echo(line, err=True)
    click.echo(f"sweep {key} ({backend}): {len(specs)} worker(s) on cpus {cpu_ranges(cpus)}"
               + (" — dry run, nothing started" if dry_run else ""), err=True)
    for s in specs:
        click.echo(plan_line(s))
    if dry_run:
        return 0
    progress = _progress_printer(store, key) if backend == "local" else None
    code = Launcher(specs, progress=progress, echo=click.echo).run()
    if backend == "local":
        sweep = store.get_sweep(key)
        click.echo(f"sweep {key}: {sweep.state}" + (f" ({sweep.finished_reason})" if sweep.finished_reason else ""))
    return code


@cli.command()
@click.argument("sweep_id")
@click.option("--gpus", default="all", show_default=True,
              help="all: the GPUs this process may use (CUDA_VISIBLE_DEVICES as SLURM or a container set it, else "
                   "every GPU) | none | indices into that list, as torch numbers them, e.g. 0,2")
@click.option("--gpus-per-trial", default=1, show_default=True)
@click.option("--workers", type=int, default=None, help="worker processes (default: one per GPU group; "
              "without GPUs, up to 2 CPU workers)")
@click.option("--count", type=int, default=None, help="trials per worker before it exits")
@click.option("--backend", type=click.Choice(["local", "wandb"]), default=None,
              help="default: local when the local store has SWEEP_ID, else W&B")
@click.option("--pin/--no-pin", default=True, show_default=True,
              help="confine each worker to its share of the cores this process may use")
@click.option("--dry-run", is_flag=True, help="print the plan, one line per worker, and start nothing")
@sweep_options
def agent(sweep_id, gpus, gpus_per_trial, workers, count, backend, pin, dry_run, project, entity):
    """Run SWEEP_ID's trials (ID, PROJECT/ID or ENTITY/PROJECT/ID): one worker per GPU group, restarted if it dies.

    SIGTERM/SIGINT preempt the running trials (checkpointed; marked preempting on W&B, which
    requeues them) and the command exits 143."""
    sys.exit(run_agents(sweep_id, gpus, gpus_per_trial, workers, count, project, entity, dry_run=dry_run, pin=pin,
                        backend=backend))


@cli.command()
@click.argument("sweep_id")
@sweep_options
def status(sweep_id, project, entity):
    """Show a sweep's state and trial counts."""
    backend, store, key = open_sweep(sweep_id, project, entity)
    sweep = store.get_sweep(key)
    trials = store.list_trials(key)
    counts: dict = {}
    for t in trials:
        k = "stopped early" if t.stopped else t.state
        counts[k] = counts.get(k, 0) + 1
    where = key if backend == "wandb" else sweep.id
    click.echo(f"sweep {where} ({backend}) {sweep.name or ''}: {sweep.state}"
               + (f" ({sweep.finished_reason})" if sweep.finished_reason else ""))
    click.echo(f"method {sweep.config.get('method')}, metric {sweep.metric_name} ({sweep.goal}), "
               f"run_cap {sweep.config.get('run_cap')}")
    click.echo("trials: " + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none yet"))
    if backend == "local":
        from .store import disk_usage

        where = store.root / "sweeps" / sweep.id
        total, ckpts = disk_usage(where), disk_usage(where, "**/checkpoints/*.pt")
        click.echo(f"disk: {total / 2**20:.1f} MiB in {where} (checkpoints {ckpts / 2**20:.1f} MiB)")


def _set_state(sweep_id: str, state: str, allowed_from: tuple[str, ...], project=None, entity=None):
    backend, store, key = open_sweep(sweep_id, project, entity)
    if backend != "local":
        from .wandb_backend import parse_sweep_path, set_wandb_sweep_state

        try:
            set_wandb_sweep_state(parse_sweep_path(key), state, env=settings().child_env(with_key=True))
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"W&B sweep {key}: {state}")
        return
    sweep = store.get_sweep(key)
    if sweep.state not in allowed_from:
        raise click.ClickException(f"sweep {key} is {sweep.state}; cannot go to {state}")
    store.set_sweep_state(key, state, None if state in ("running", "paused") else f"{state} by user")
    click.echo(f"sweep {key}: {state}")


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
@cli.command()
@click.argument("sweep_id", required=False)
@click.option("--state", "states", multiple=True, help="only trials in this state (repeatable)")
@click.option("--limit", type=int, default=None)
@click.option("--latest", is_flag=True, help="newest first")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@sweep_options
def runs(sweep_id, states, limit, latest, fmt, project, entity):
    """List a sweep's trials (every local sweep's without SWEEP_ID)."""
    from .queries import get_latest_runs, get_runs

    if sweep_id is None:
        store = local_store()
        ids = [s.id for s in store.list_sweeps()]
    else:
        _, store, key = open_sweep(sweep_id, project, entity)
        ids = [key]
    rows = []
    for sid in ids:
        trials = (get_latest_runs(store, sid, limit or 10**9, tuple(states) or None) if latest
                  else get_runs(store, sid, tuple(states) or None, limit))
        rows += trials
    if fmt == "json":
        click.echo(json.dumps([{"sweep": t.sweep_id, "run": t.name, "run_id": t.run_id, "state": t.state,
                                "metric": t.metric, "stopped": t.stopped, "config": t.params, "error": t.error,
                                "stop_reason": t.stop_reason} for t in rows], indent=2))
        return
    for t in rows:
        m = f"{t.metric:.4f}" if t.metric is not None else "-"
        extra = t.stop_reason if t.stopped else (t.error or "")
        click.echo(f"{t.sweep_id}  {t.run_id or '':<10} {t.name:<24} {t.state + ('*' if t.stopped else ''):<10} "
                   f"{m:>8}  {json.dumps(t.params, sort_keys=True)}  {extra}")


@cli.command("leaderboard")
@click.argument("sweep_id")
@click.option("--top", type=int, default=10, show_default=True)
@click.option("--metric", default=None, help="default: the sweep's metric")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "markdown"]), default="table")
@click.option("--write-back", is_flag=True, help="log the table to the sweep's one sweep-summary W&B run "
              "(an offline run for local sweeps) and record ranks")
@sweep_options
def leaderboard_cmd(sweep_id, top, metric, fmt, write_back, project, entity):
    """The best trials of a sweep, best first."""
    from .queries import format_leaderboard, leaderboard

    backend, store, key = open_sweep(sweep_id, project, entity)
    try:
        rows = leaderboard(store, key, metric=metric, top=top)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_leaderboard(rows, fmt))
    if write_back:
        from .wandb_backend import write_back_leaderboard

        full = leaderboard(store, key, metric=metric)
        where = write_back_leaderboard(store, store.get_sweep(key), full, backend)
        click.echo(f"leaderboard written back: {where}", err=True)


@cli.command()
@click.argument("sweep_id")
@click.option("--dry-run", is_flag=True, help="list what would be uploaded")
def sync(sweep_id, dry_run):
    """Upload a local sweep's offline runs to W&B (grouped by sweep id) with `wandb sync`."""
    if "/" in sweep_id:
        raise click.ClickException(f"{sweep_id} is a W&B sweep path: its runs are online already")
    backend, store, key = open_sweep(sweep_id)
    if backend != "local":
        raise click.ClickException(f"{sweep_id} is a W&B sweep: its runs are online already")
    sweep = store.get_sweep(key)
    root = store.root / "sweeps" / key
    dirs = sorted(str(p) for p in root.glob("**/wandb/offline-run-*") if p.is_dir())
    if not dirs:
        raise click.ClickException(f"no offline runs under {root}")
    click.echo(f"{len(dirs)} offline run(s) of sweep {key}")
    if dry_run:
        click.echo("\n".join(dirs))
        return
    s = settings()
    try:
        wandb_access(s, mode="online")
    except click.ClickException as exc:
        raise click.ClickException(f"{exc.message}. Do that on a machine with network, then run "
                                   f"`cvsweep sync {key}` again. Nothing was uploaded.") from None
    # The child finds the key where wandb looks: the environment built for it (.env's key), ~/.netrc.
    cmd = [sys.executable, "-m", "wandb", "sync", "--project", sweep.project or "cvsweep"]
    if sweep.entity:
        cmd += ["--entity", sweep.entity]
    proc = subprocess.run(cmd + dirs, env=s.child_env(with_key=True))
    if proc.returncode != 0:
        raise click.ClickException(f"`wandb sync` failed (exit {proc.returncode}): is W&B reachable from here?")
    click.echo(f"synced {len(dirs)} run(s) to {sweep.project}, grouped as {key}")


@cli.command()
@click.argument("sweep_id")
@click.option("-o", "--output", default=None, help="default: report-SWEEP_ID.html")
@click.option("--top", type=int, default=20, show_default=True, help="trials in the leaderboard table")
@sweep_options
def report(sweep_id, output, top, project, entity):
    """Write one self-contained HTML page for a sweep (opens from disk, no network)."""
    from .report import write_report

    _, store, key = open_sweep(sweep_id, project, entity)
    path = write_report(store, key, output or f"report-{key.rsplit('/', 1)[-1]}.html", top=top)
    click.echo(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


@cli.command()
@click.argument("sweep_id")
@click.option("--top", default=3, show_default=True, help="distinct configurations taken from the leaderboard")
@click.option("--folds", default=5, show_default=True, help="stratified folds of all the training data")
@click.option("--tta", default=None, help="test-time views, comma-separated (default: each configuration's tta)")
@click.option("--gpus", default="all", show_default=True, help="all | none | comma-separated indices")
@click.option("--workers", type=int, default=None)
@click.option("--seed", default=0, show_default=True, help="seed of the folds (shared by every configuration)")
@click.option("-o", "--output", default="submission.csv", show_default=True)
@sweep_options
def finalize(sweep_id, top, folds, tta, gpus, workers, seed, output, project, entity):
    """Retrain SWEEP_ID's top configurations on K folds of all the data; ensemble; write a submission.

    Prints the ensemble's out-of-fold macro-F1 as the last line (oof_macro_f1: X).
    """
    from cvtrain.tta import TTA_VIEWS

    views = [v.strip() for v in tta.split(",") if v.strip()] if tta else None
    bad = [v for v in views or [] if v not in TTA_VIEWS]
    if bad or views == []:
        raise click.BadParameter(f"{tta!r}: views are comma-separated from {', '.join(TTA_VIEWS)}", param_hint="--tta")
    sys.exit(run_finalize(sweep_id, top, folds, views, gpus, workers, seed, output, project, entity))


def run_finalize(sweep_id: str, top: int, folds: int, tta: list | None, gpus: str, workers: int | None, seed: int,
                 output: str, project: str | None = None, entity: str | None = None) -> int:
    from .finalize import FinalizeError, collect, finalize_config, find_or_create_final_sweep, select_finalists, \
        write_outputs
    from .wandb_backend import log_submission

    backend, parent_store, key = open_sweep(sweep_id, project, entity)
    parent = parent_store.get_sweep(key)
    try:
        finalists = select_finalists(parent_store, key, top)
        config = finalize_config(parent, finalists, folds, tta, seed)
    except FinalizeError as exc:
        raise click.ClickException(str(exc)) from None
    store = parent_store if backend == "local" else local_store(create=True)
    final, resumed = find_or_create_final_sweep(store, parent, config)
    click.echo(f"finalize {parent.id}: {len(finalists)} configuration(s) x {folds} folds = "
               f"{len(finalists) * folds} fold trials in local sweep {final.id}" + (" (resumed)" if resumed else ""))
    for f in finalists:
        click.echo(f"  #{f.index} {f.run} ({parent.metric_name} {f.metric:.4f}): {json.dumps(f.params, sort_keys=True)}")
    code = run_agents(final.id, gpus, 1, workers, None)
    if code != 0:
        click.echo(f"finalize: the agents exited with {code}; run the same command again to resume", err=True)
        return code
    try:
        result = collect(store, store.get_sweep(final.id), finalists, folds)
        out = write_outputs(result, output, store.root)
    except FinalizeError as exc:
        raise click.ClickException(str(exc)) from None
    where = log_submission(result, out, parent, backend, store.root)
    click.echo(f"\nout-of-fold macro-F1 ({result.n_images} images, {folds} folds):")
    for r in result.finalists:
        click.echo(f"  #{r['index']} {r['run']}: {r['oof_macro_f1']:.4f}  (folds: "
                   + ", ".join(f"{v:.3f}" for v in r["fold_macro_f1"]) + ")")
    click.echo(f"  ensemble of {len(result.finalists)}: {result.oof_macro_f1:.4f}")
    click.echo(f"wrote {out} ({len(result.test_ids)} rows); submission logged to W&B: {where}")
    click.echo(f"oof_macro_f1: {result.oof_macro_f1:.6f}")
    return 0


@cli.command()
@click.option("--data-dir", default="data/demo", show_default=True)
@click.option("--sweep-file", default=None, help="default: sweeps/demo.yaml")
@click.option("--gpus", default="all", show_default=True)
@click.option("--workers", type=int, default=None)
def demo(data_dir, sweep_file, gpus, workers):
    """Make the demo data if missing, run a local sweep over it, print the leaderboard."""
    from cvtrain.demo_data import make_demo_data

    from .controller import LocalController
    from .queries import format_leaderboard, leaderboard
    from .wandb_backend import write_back_leaderboard

    if not (Path(data_dir) / "train.csv").exists():
        click.echo(f"making demo data in {data_dir} ...")
        make_demo_data(data_dir)
    path = Path(sweep_file) if sweep_file else (Path("sweeps/demo.yaml") if Path("sweeps/demo.yaml").exists()
                                               else REPO_ROOT / "sweeps" / "demo.yaml")
    cfg = load_valid_sweep(path)
    cfg.setdefault("parameters", {})["data_dir"] = {"value": str(Path(data_dir).resolve())}
    store = local_store(create=True)
    sweep = LocalController(store).create_sweep(cfg)
    click.echo(f"local sweep {sweep.id} from {path} ({cfg['method']}, run_cap {cfg.get('run_cap')})")
    code = run_agents(sweep.id, gpus, 1, workers, None)
    from .report import write_report

    rows = leaderboard(store, sweep.id)
    click.echo("\n" + format_leaderboard(rows[:10], "table"))
    if rows:
        where = write_back_leaderboard(store, store.get_sweep(sweep.id), rows, "local")
        click.echo(f"\nleaderboard logged to the offline W&B run in {where}")
        click.echo(f"\nfinalize: the top 2 configurations retrained on 3 folds of all the data, ensembled "
                   f"(`cvsweep finalize {sweep.id} --top 2 --folds 3`)")
        code = code or run_finalize(sweep.id, 2, 3, None, gpus, workers, 0, "submission.csv")
        page = write_report(store, sweep.id, f"report-{sweep.id}.html")
        click.echo(f"sweep report (open in a browser, works offline): {page}")
    click.echo(f"upload the runs later, with a W&B key and a network: cvsweep sync {sweep.id}")
    sys.exit(code)


def main():
    cli(prog_name="cvsweep")
