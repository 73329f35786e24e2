"""The thin W&B side: register a sweep, change its state, write a leaderboard back.

Everything goes through wandb's own client; tests replace it at that boundary.
"""
from __future__ import annotations

from pathlib import Path

from .store import RunStore, Sweep


def create_wandb_sweep(cfg: dict, project: str, entity: str | None = None, sweep_fn=None) -> str:
    """``wandb.sweep``: the W&B server becomes the controller. Returns the sweep id.

    The key reaches wandb through the environment the CLI set up (never ``wandb.login``,
    which may write it to ~/.netrc).
    """
    import wandb

    return (sweep_fn or wandb.sweep)(sweep=cfg, project=project, entity=entity)


def set_wandb_sweep_state(sweep_id: str, state: str, runner=None) -> None:
    """pause / resume / stop / cancel through W&B's own CLI verbs."""
    import subprocess
    import sys

    verb = {"paused": "--pause", "running": "--resume", "finished": "--stop", "cancelled": "--cancel"}[state]
    (runner or subprocess.run)([sys.executable, "-m", "wandb", "sweep", verb, sweep_id], check=True)


def write_back_leaderboard(store: RunStore, sweep: Sweep, rows: list[dict], backend: str, env: dict) -> str:
    """Log the leaderboard as a W&B Table on a summary run grouped with the sweep; record ranks.

    Local sweeps get an offline run under the sweep's directory (``cvsweep sync`` uploads it).
    """
    import wandb

    from .queries import param_columns

    params = param_columns(rows)
    columns = ["rank", "run", "state", rows[0]["metric_name"] if rows else "metric", "stopped", *params]
    data = [[r["rank"], r["run"], r["state"], r["metric"], r["stopped"],
             *[_cell(r["config"].get(p)) for p in params]] for r in rows]
    mode = "online" if backend == "wandb" else "offline"
    settings = {"silent": True}
    if backend == "wandb" and env.get("WANDB_API_KEY"):
        settings["api_key"] = env["WANDB_API_KEY"]
    kwargs = dict(project=sweep.project or "cvsweep", entity=sweep.entity, group=sweep.id, job_type="sweep-summary",
                  name=f"{sweep.name or sweep.id}-leaderboard", mode=mode, tags=["cvsweep", f"sweep-{sweep.id}"],
                  config={"sweep_id": sweep.id, "method": sweep.config.get("method"),
                          "metric": sweep.config.get("metric")},
                  settings=wandb.Settings(**settings), reinit="finish_previous")
    if backend == "local":
        kwargs["dir"] = str(store.root / "sweeps" / sweep.id)
    run = wandb.init(**{k: v for k, v in kwargs.items() if v is not None})
    run.log({"leaderboard": wandb.Table(columns=columns, data=data)})
    if rows:
        run.summary["best_run"] = rows[0]["run"]
        run.summary["best_metric"] = rows[0]["metric"]
    where = run.dir if backend == "local" else run.url
    run.finish()
    store.set_ranks(sweep.id, {r["run"]: r["rank"] for r in rows})
    return str(where)


def _cell(v):
    if isinstance(v, (dict, list)):
        import json

        return json.dumps(v, sort_keys=True)
    return v


def log_submission(result, submission, sweep: Sweep, backend: str, state_root) -> str:
    """A ``finalize`` run grouped with the parent sweep: the submission as an artifact, OOF figures in its
    metadata and summary. Local sweeps get an offline run (``cvsweep sync`` uploads it)."""
    import wandb

    meta = {"oof_macro_f1": result.oof_macro_f1, "folds": result.folds, "parent_sweep": result.parent,
            "final_sweep": result.final_sweep, "n_images": result.n_images,
            "finalists": [{"index": f["index"], "run": f["run"], "oof_macro_f1": f["oof_macro_f1"]}
                          for f in result.finalists]}
    kwargs = dict(project=sweep.project or "cvsweep", entity=sweep.entity, group=result.parent, job_type="finalize",
                  name=f"{sweep.name or sweep.id}-submission", mode="online" if backend == "wandb" else "offline",
                  tags=["cvsweep", f"sweep-{result.parent}", "finalize"], config=meta,
                  settings=wandb.Settings(silent=True), reinit="finish_previous")
    if backend == "local":
        kwargs["dir"] = str(Path(state_root) / "sweeps" / result.parent)
    run = wandb.init(**{k: v for k, v in kwargs.items() if v is not None})
    run.summary.update({"oof_macro_f1": result.oof_macro_f1,
                        **{f"oof_macro_f1/{f['index']}": f["oof_macro_f1"] for f in result.finalists}})
    art = wandb.Artifact(f"submission-{result.parent}", type="submission", metadata=meta)
    art.add_file(str(submission), name=Path(submission).name)
    run.log_artifact(art, aliases=["latest"])
    where = run.dir if backend == "local" else run.url
    run.finish()
    return str(where)
