"""``cvsweep`` commands of a sweep's life: validate, create, agent, pause, resume, stop, cancel."""
from __future__ import annotations

import sys

import click

from .cli_common import _echo, open_sweep, settings, sweep_options


def load_valid_sweep(file) -> dict:
    """The sweep file's config, or every violation (one line each) and exit code 2."""
    # lazy: what this command runs loads with it; `cvsweep --help` and the other commands stay fast
    from .validate import SweepFileError, check_sweep_file

    try:
        return check_sweep_file(file)
    except SweepFileError as exc:
        for v in exc.violations:
            click.echo(f"{file}: {v}", err=True)
        sys.exit(2)


@click.command()
@click.argument("file", type=click.Path())
def validate(file):
    """Check a sweep file: the W&B schema plus every check the trainer runs. Exit 2 on any violation."""
    # lazy: what this command runs loads with it; `cvsweep --help` and the other commands stay fast
    from .validate import path_problems

    cfg = load_valid_sweep(file)
    for p in path_problems(cfg.get("parameters") or {}):
        click.echo(f"{file}: warning: {p}", err=True)
    click.echo(f"{file}: ok ({cfg['method']}, {len(cfg.get('parameters', {}))} parameters)")


@click.command()
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
    # lazy: what this command runs loads with it; `cvsweep --help` and the other commands stay fast
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


@click.command()
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
    # lazy: what this command runs loads with it; `cvsweep --help` and the other commands stay fast
    from .actions import run_agents

    sweep = open_sweep(sweep_id, project, entity, backend)
    sys.exit(run_agents(settings(), sweep, gpus, gpus_per_trial, workers, count, dry_run=dry_run, pin=pin,
                        echo=_echo))


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


@click.command()
@click.argument("sweep_id")
@sweep_options
def pause(sweep_id, project, entity):
    """Stop handing out new trials (running ones go on); agents wait."""
    _set_state(sweep_id, "paused", ("running",), project, entity)


@click.command()
@click.argument("sweep_id")
@sweep_options
def resume(sweep_id, project, entity):
    """Hand out trials again after pause."""
    _set_state(sweep_id, "running", ("paused",), project, entity)


@click.command()
@click.argument("sweep_id")
@sweep_options
def stop(sweep_id, project, entity):
    """Finish the sweep: no new trials; running trials complete; agents exit."""
    _set_state(sweep_id, "finished", ("running", "paused"), project, entity)


@click.command()
@click.argument("sweep_id")
@sweep_options
def cancel(sweep_id, project, entity):
    """Cancel the sweep: running trials stop (on W&B: stopped by the server), marked accordingly."""
    _set_state(sweep_id, "cancelled", ("running", "paused", "finished"), project, entity)


COMMANDS = (validate, create, agent, pause, resume, stop, cancel)
