"""Everything cvsweep does with a W&B server, in one place.

- :class:`SweepPath` / :func:`parse_sweep_path`: ``ID``, ``project/ID`` or ``entity/project/ID``
  (as ``wandb agent`` takes them) plus ``--project/--entity``; every call below gets the full path.
- :class:`WandbStore`: the run-store interface over ``wandb.Api`` (read side, ranks).
- :func:`create_wandb_sweep`, :func:`set_wandb_sweep_state`: register a sweep, change its state
  through W&B's own ``wandb sweep`` verbs.
- :func:`write_back_leaderboard`: one ``sweep-summary`` run per sweep, resumed by a stable id.
- :func:`log_submission`: the ``finalize`` run with the submission as an artifact.

The worker that runs a W&B sweep's trials in-process is :mod:`agent.wandb_worker`.

The key is never passed around here: wandb finds it itself (environment, ``~/.netrc``, settings).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Optional

from .queries import param_columns
from .store import RunStore, Sweep, Trial

DEFAULT_PROJECT = "cvsweep"


class SweepPathError(ValueError):
    pass


# ---------------------------------------------------------------------------
# Sweep paths
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepPath:
    project: str
    id: str
    entity: Optional[str] = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.entity, self.project, self.id) if p)


def parse_sweep_path(text: str, project: str | None = None, entity: str | None = None,
                     default_project: str | None = None) -> SweepPath:
    """``ID`` | ``project/ID`` | ``entity/project/ID``, with ``--project``/``--entity`` filling the gaps.

    An option that disagrees with the path is an error rather than a silent choice.
    """
    parts = [p.strip() for p in str(text).strip().strip("/").split("/")]
    if not parts or not all(parts) or len(parts) > 3:
        raise SweepPathError(f"sweep {text!r}: expected ID, PROJECT/ID or ENTITY/PROJECT/ID")
    sid = parts[-1]
    p_project = parts[-2] if len(parts) >= 2 else None
    p_entity = parts[-3] if len(parts) == 3 else None
    for name, given, opt in (("project", p_project, project), ("entity", p_entity, entity)):
        if given and opt and given != opt:
            raise SweepPathError(f"sweep {text!r} names {name} {given!r} but --{name} says {opt!r}")
    proj = p_project or project or default_project
    if not proj:
        raise SweepPathError(f"sweep {text!r}: no project; give PROJECT/ID, --project or WANDB_PROJECT")
    return SweepPath(project=proj, id=sid, entity=p_entity or entity or None)


def sweep_path_from_env(text: str, project: str | None, entity: str | None, env: Mapping[str, str]) -> SweepPath:
    """:func:`parse_sweep_path` with WANDB_PROJECT / WANDB_ENTITY (then ``cvsweep``) as defaults."""
    return parse_sweep_path(text, project, entity or env.get("WANDB_ENTITY") or None,
                            default_project=env.get("WANDB_PROJECT") or DEFAULT_PROJECT)


def full_path(path: SweepPath, api=None) -> SweepPath:
    """The path with its entity: the viewer's default entity when none was given."""
    if path.entity:
        return path
    api = api or _api()
    entity = api.default_entity
    if not entity:
        raise SweepPathError(f"sweep {path}: no entity given and W&B reports no default entity; "
                             "give ENTITY/PROJECT/ID or --entity")
    return SweepPath(path.project, path.id, entity)


def _api():
    import wandb  # lazy: wandb takes seconds to import; only the calls that talk to W&B load it

    return wandb.Api()


# ---------------------------------------------------------------------------
# Read side: the run store over wandb.Api
# ---------------------------------------------------------------------------
_WANDB_STATE = {"finished": "finished", "failed": "failed", "crashed": "crashed", "killed": "killed",
                "running": "running", "preempted": "preempted", "preempting": "running", "pending": "pending"}


class WandbStore(RunStore):
    """Reads a W&B sweep and its runs through ``wandb.Api`` (W&B cloud or a W&B Server).

    Sweep ids may be any form :func:`parse_sweep_path` accepts; ``project``/``entity`` fill gaps.
    Runs are keyed by run id (display names repeat).
    """

    def __init__(self, project: str | None = None, entity: str | None = None, api=None):
        self._api_obj = api
        self.project = project or DEFAULT_PROJECT
        self.entity = entity
        self._runs: dict = {}  # run id -> public-API run, from the last listing
        self._metric_of: dict = {}  # run id -> its sweep's metric name

    @property
    def api(self):
        if self._api_obj is None:
            self._api_obj = _api()
        return self._api_obj

    def path(self, sweep_id: str) -> SweepPath:
        return full_path(parse_sweep_path(sweep_id, None, None, default_project=self.project)
                         if "/" in str(sweep_id) else SweepPath(self.project, str(sweep_id), self.entity), self.api)

    def _sweep(self, sweep_id: str):
        return self.api.sweep(str(self.path(sweep_id)))

    def _sweep_runs(self, sweep) -> list:
        """The sweep's runs, oldest first: whole runs (config, summary) in pages of 100. ``sweep.runs``
        pages by 10 and loads each run's config and summary with a request of its own."""
        return list(self.api.runs(f"{sweep.entity}/{sweep.project}", filters={"sweep": sweep.id},
                                  order="+created_at", per_page=100, lazy=False))

    def get_sweep(self, sweep_id: str) -> Sweep:
        s = self._sweep(sweep_id)
        cfg = dict(s.config)
        return Sweep(id=s.id, config=cfg, state=_sweep_state(getattr(s, "state", None)),
                     name=cfg.get("name") or getattr(s, "name", None), project=s.project, entity=s.entity,
                     backend="wandb")

    def list_trials(self, sweep_id=None, states=None, with_history: bool = True) -> list[Trial]:
        s = self._sweep(sweep_id)
        cfg = dict(s.config)
        metric = (cfg.get("metric") or {}).get("name")
        sweep_params = cfg.get("parameters") or {}
        out = []
        for r in self._sweep_runs(s):
            summary = plain(r.summary)
            config = plain(r.config)
            params = {k: v for k, v in config.items() if not k.startswith("_")}
            if sweep_params:
                params = {k: v for k, v in params.items() if k in sweep_params}
            state = _WANDB_STATE.get(str(r.state).lower(), str(r.state).lower())
            m = summary.get(metric) if metric else None
            stopped = summary.get("stopped") is True or summary.get("state") == "stopped"
            reason = summary.get("reason")
            self._runs[r.id] = r
            self._metric_of[r.id] = metric
            out.append(Trial(
                sweep_id=s.id, name=r.name, state=state, params=params, run_id=r.id, summary=summary,
                metric=m if isinstance(m, (int, float)) and not isinstance(m, bool) else None,
                rank=summary.get("sweep_rank"), created_at=_ts(getattr(r, "created_at", None)),
                error=reason if state in ("failed", "crashed") or summary.get("state") == "failed" else None,
                stopped=stopped, stop_reason=reason if stopped else None, output_dir=config.get("output_dir")))
        out.sort(key=lambda t: (t.created_at or 0, t.run_id or ""))
        if states:
            out = [t for t in out if t.state in states]
        return out

    def epoch_history(self, trial: Trial) -> list[dict]:
        """Every epoch's row with the keys the report and queries read (epoch, val_f1, the sweep's
        metric), by ``scan_history``: ``history()`` samples, and would drop epochs of a long run."""
        run = self._runs.get(trial.run_id)
        if run is None:
            return []
        keys = list(dict.fromkeys(["epoch", "val_f1", *([self._metric_of.get(trial.run_id)] if
                                                         self._metric_of.get(trial.run_id) else [])]))
        return [dict(r) for r in run.scan_history(keys=keys, use_cache=False) if r.get("epoch") is not None]

    def set_ranks(self, sweep_id: str, ranks: dict[str, int]) -> None:
        """``ranks`` by run id; every other run of the sweep loses a rank it held before.

        Only ``sweep_rank`` changes. W&B's summary write replaces the whole summary, so each run is
        read again just before its write, never from the listing the ranks came from: a run that
        ended meanwhile keeps its final state, stop flag, reason and metric. A run still running is
        left alone (its own process writes its summary); it gets its rank at a write-back after it ends.
        """
        for r in self._sweep_runs(self._sweep(sweep_id)):
            new = ranks.get(r.id)
            if plain(r.summary).get("sweep_rank") != new and str(r.state).lower() not in ("running", "pending"):
                self._write_rank(r, new)

    def _write_rank(self, listed, rank: int | None) -> None:
        self.api.flush()  # the Api caches runs by path: this read must reach the server
        run = self.api.run(f"{listed.entity}/{listed.project}/{listed.id}")
        if str(run.state).lower() in ("running", "pending") or plain(run.summary).get("sweep_rank") == rank:
            return
        if rank is None:
            del run.summary["sweep_rank"]
        else:
            run.summary["sweep_rank"] = rank
        run.summary.update()  # the summary only: config and tags stay as the trainer wrote them


def plain(value):
    """wandb's summary/config objects (HTTPSummary, SummarySubDict) as plain dicts, all the way down."""
    if isinstance(value, (str, bytes, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping) or (hasattr(value, "keys") and hasattr(value, "__getitem__")):
        return {str(k): plain(value[k]) for k in list(value.keys())}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _sweep_state(state) -> str:
    s = str(state or "running").lower()
    return {"canceled": "cancelled"}.get(s, s)


def _ts(value) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)

    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


# ---------------------------------------------------------------------------
# Write side
# ---------------------------------------------------------------------------
def create_wandb_sweep(cfg: dict, project: str, entity: str | None = None) -> SweepPath:
    """``wandb.sweep``: the W&B server becomes the controller. Returns the sweep's full path."""
    import wandb  # lazy: wandb takes seconds to import; only the calls that talk to W&B load it

    sweep_id = wandb.sweep(sweep=cfg, project=project, entity=entity)
    return full_path(SweepPath(project, sweep_id, entity))


_STATE_VERBS = {"paused": "--pause", "running": "--resume", "finished": "--stop", "cancelled": "--cancel"}


def set_wandb_sweep_state(path: SweepPath, state: str, env: Mapping[str, str] | None = None) -> None:
    """pause / resume / stop / cancel through W&B's own CLI, with the sweep's full path."""
    cmd = [sys.executable, "-m", "wandb", "sweep", _STATE_VERBS[state], str(full_path(path))]
    proc = subprocess.run(cmd, env=dict(os.environ if env is None else env), capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"`wandb sweep {_STATE_VERBS[state]} {cmd[-1]}` failed: {' / '.join(tail)}")


def summary_run_id(sweep_id: str) -> str:
    """The stable W&B run id of a sweep's ``sweep-summary`` run: every write-back resumes it."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{sweep_id}-summary")[:64]


def write_back_leaderboard(store: RunStore, sweep: Sweep, rows: list[dict], backend: str) -> str:
    """Log the leaderboard as a W&B Table on the sweep's one ``sweep-summary`` run; record ranks by run id.

    Local sweeps get an offline run under the sweep's directory (``cvsweep sync`` uploads it).
    """
    import wandb  # lazy: wandb takes seconds to import; only the calls that talk to W&B load it


    params = param_columns(rows)
    columns = ["rank", "run", "run_id", "state", rows[0]["metric_name"] if rows else "metric", "stopped", *params]
    data = [[r["rank"], r["run"], r["run_id"], r["state"], r["metric"], r["stopped"],
             *[_cell(r["config"].get(p)) for p in params]] for r in rows]
    kwargs = dict(project=sweep.project or DEFAULT_PROJECT, entity=sweep.entity, group=sweep.id,
                  job_type="sweep-summary", id=summary_run_id(sweep.id), resume="allow",
                  name=f"{sweep.name or sweep.id}-leaderboard", mode="online" if backend == "wandb" else "offline",
                  tags=["cvsweep", f"sweep-{sweep.id}"],
                  config={"sweep_id": sweep.id, "method": sweep.config.get("method"),
                          "metric": sweep.config.get("metric")},
                  settings=wandb.Settings(silent=True), reinit="finish_previous")
    if backend == "local":
        kwargs["dir"] = str(store.root / "sweeps" / sweep.id)
    run = wandb.init(**{k: v for k, v in kwargs.items() if v is not None})
    run.log({"leaderboard": wandb.Table(columns=columns, data=data)})
    run.summary["ranked"] = len(rows)
    if rows:
        run.summary["best_run"] = rows[0]["run"]
        run.summary["best_run_id"] = rows[0]["run_id"]
        run.summary["best_metric"] = rows[0]["metric"]
    where = run.dir if backend == "local" else run.url
    run.finish()
    store.set_ranks(sweep.id, {r["run_id"]: r["rank"] for r in rows if r.get("run_id")})
    return str(where)


def _cell(v):
    if isinstance(v, (dict, list)):

        return json.dumps(v, sort_keys=True)
    return v


def submission_meta(result) -> dict:
    """What the finalize run's config and the submission artifact carry: the figures, each finalist's weight,
    the views (and how they were chosen), the images the weights were selected on, clean and shifted figures."""
    keys = ("oof_macro_f1", "oof_macro_f1_clean", "oof_macro_f1_shift", "weight")
    return {"oof_macro_f1": result.oof_macro_f1, "folds": result.folds, "parent_sweep": result.parent,
            "final_sweep": result.final_sweep, "n_images": result.n_images, "oof_views": list(result.oof_views),
            "tta_choice": result.tta_choice, "selected_on": result.selected_on, "oof_clean": result.clean,
            "oof_shift": result.shifted or None, "weights": {f["run"]: f["weight"] for f in result.finalists},
            "finalists": [{"index": f["index"], "run": f["run"], **{k: f.get(k) for k in keys}}
                          for f in result.finalists]}


def log_submission(result, submission, sweep: Sweep, backend: str, state_root) -> str:
    """A ``finalize`` run grouped with the parent sweep: the submission as an artifact, OOF figures in its
    metadata and summary. Local sweeps get an offline run (``cvsweep sync`` uploads it)."""
    import wandb  # lazy: wandb takes seconds to import; only the calls that talk to W&B load it

    meta = submission_meta(result)
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
