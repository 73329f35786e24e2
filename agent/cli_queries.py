"""``cvsweep`` commands that read sweeps: status, list, runs, leaderboard, report."""
from __future__ import annotations

import json

import click

from .cli_common import open_sweep, settings, sweep_options
from .queries import (
    STATE_NAMES,
    format_leaderboard,
    format_table,
    get_latest_runs,
    get_runs,
    is_finite_number,
    leaderboard,
    nothing_to_rank,
    state_name,
)


@click.command()
@click.argument("sweep_id", required=False)
@sweep_options
def status(sweep_id, project, entity):
    """Show a sweep's state, trials by state and disk use (the newest local sweep without SWEEP_ID)."""
    # lazy: what this command runs loads with it; `cvsweep --help` and the other commands stay fast
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


@click.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def list_cmd(fmt):
    """Every local sweep, newest first: id, name, backend, state, trials by state, best, age."""
    # lazy: what this command runs loads with it; `cvsweep --help` and the other commands stay fast
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


STATE_CHOICE = click.Choice(STATE_NAMES)


@click.command()
@click.argument("sweep_id", required=False)
@click.option("--state", "states", multiple=True, type=STATE_CHOICE,
              help="only trials in this state (repeatable); stopped: ended early by the sweep")
@click.option("--limit", type=click.IntRange(1), default=None)
@click.option("--latest", is_flag=True, help="newest first")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@sweep_options
def runs(sweep_id, states, limit, latest, fmt, project, entity):
    """List a sweep's trials (every local sweep's without SWEEP_ID)."""
    # lazy: what this command runs loads with it; `cvsweep --help` and the other commands stay fast
    from .access import local_store

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

    return {k: t.summary[k] for k in ("best_val_f1", "best_val_shift_f1") if is_finite_number(t.summary.get(k))}


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


@click.command("leaderboard")
@click.argument("sweep_id")
@click.option("--top", type=click.IntRange(0), default=10, show_default=True, help="rows to show; 0 for all")
@click.option("--metric", default=None, help="default: the sweep's metric")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "markdown"]), default="table")
@click.option("--write-back", is_flag=True, help="log the table to the sweep's one sweep-summary W&B run "
              "(an offline run for local sweeps) and record ranks")
@sweep_options
def leaderboard_cmd(sweep_id, top, metric, fmt, write_back, project, entity):
    """The best trials of a sweep, best first."""

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


@click.command()
@click.argument("sweep_id")
@click.option("-o", "--output", default=None, help="default: report-SWEEP_ID.html")
@click.option("--top", type=click.IntRange(1), default=20, show_default=True, help="trials in the leaderboard table")
@sweep_options
def report(sweep_id, output, top, project, entity):
    """Write one self-contained HTML page for a sweep (opens from disk, no network)."""
    # lazy: what this command runs loads with it; `cvsweep --help` and the other commands stay fast
    from .report import write_report

    sweep = open_sweep(sweep_id, project, entity)
    path = write_report(sweep.store, sweep.key, output or f"report-{sweep.key.rsplit('/', 1)[-1]}.html", top=top)
    click.echo(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


COMMANDS = (status, list_cmd, runs, leaderboard_cmd, report)
