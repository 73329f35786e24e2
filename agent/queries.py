"""Run queries and the leaderboard, written once against :class:`agent.store.RunStore`."""
from __future__ import annotations

import csv
import io
import json
import math
import re

from .store import RunStore, Sweep, Trial

#: The states a user names (``cvsweep runs --state``), each a plain word for what happened to a trial.
STATE_NAMES = ("queued", "running", "finished", "stopped", "failed", "crashed", "preempted", "killed")


def state_name(t: Trial) -> str:
    """A trial's state as a user names it: a trial the sweep stopped early is ``stopped`` (the store
    and W&B call it finished, with its real metric), a trial waiting for a worker is ``queued``."""
    if t.state == "finished" and t.stopped:
        return "stopped"
    return "queued" if t.state == "pending" else t.state


def get_runs(store: RunStore, sweep_id: str, states: tuple[str, ...] | None = None,
             limit: int | None = None) -> list[Trial]:
    """Trials of a sweep, oldest first, optionally filtered by state name (:data:`STATE_NAMES`) and cut
    to ``limit``."""
    trials = [t for t in store.list_trials(sweep_id) if not states or state_name(t) in states]
    return trials[:limit] if limit else trials


def get_latest_runs(store: RunStore, sweep_id: str, n: int = 10, states: tuple[str, ...] | None = None) -> list[Trial]:
    """The ``n`` most recently created trials, newest first."""
    trials = get_runs(store, sweep_id, states)
    return sorted(trials, key=lambda t: (t.created_at or 0, t.id or 0), reverse=True)[:n]


def state_counts(trials: list[Trial]) -> dict[str, int]:
    """Trials per state name, in :data:`STATE_NAMES` order, states with none left out."""
    names = [state_name(t) for t in trials]
    return {n: names.count(n) for n in STATE_NAMES if n in names}


def nothing_to_rank(trials: list[Trial], metric: str, sweep_ref: str) -> str:
    """Why a leaderboard is empty, and what to look at."""
    if not trials:
        return f"nothing to rank: sweep {sweep_ref} has no trials yet (start them with `cvsweep agent {sweep_ref}`)"
    counts = ", ".join(f"{v} {k}" for k, v in state_counts(trials).items())
    hint = (f"; see why: cvsweep runs {sweep_ref} --state failed"
            if any(state_name(t) in ("failed", "crashed") for t in trials) else "")
    return f"nothing to rank: no trial of sweep {sweep_ref} has a finite {metric} yet ({counts}){hint}"


def auto_increment_run_suffix(existing: list[str], base: str, width: int = 3) -> str:
    """``base-001``, ``base-002``...: one more than the highest suffix already used for ``base``."""
    pat = re.compile(rf"^{re.escape(base)}-(\d+)$")
    used = [int(m.group(1)) for n in existing if (m := pat.match(n))]
    return f"{base}-{(max(used) + 1 if used else 1):0{width}d}"


def is_finite_number(x) -> bool:
    """A real, finite metric value (not a bool, None, NaN or a summary dict)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


#: The figure shown beside the ranked one: clean and shifted validation side by side (val_shift).
COMPANION = {"best_val_f1": "best_val_shift_f1", "best_val_shift_f1": "best_val_f1"}


def leaderboard(store: RunStore, sweep_id: str, metric: str | None = None, top: int | None = None,
                goal: str | None = None) -> list[dict]:
    """Trials with a finite metric, best first: rank, run, state, metric, config, and more."""
    sweep: Sweep = store.get_sweep(sweep_id)
    metric = metric or sweep.metric_name
    if not metric:
        raise ValueError(f"sweep {sweep_id} has no metric; pass --metric NAME")
    goal = goal or sweep.goal
    rows = []
    for t in store.list_trials(sweep_id):
        if t.state in ("failed", "crashed"):
            continue  # a partial metric of a run that broke is no candidate for "best"
        value = t.metric if metric == sweep.metric_name and t.metric is not None else t.summary.get(metric)
        if not is_finite_number(value):
            continue
        rows.append({"run": t.name, "state": t.state, "metric": float(value), "metric_name": metric,
                     "config": t.params, "stopped": t.stopped, "epochs": t.summary.get("epochs_completed"),
                     "run_id": t.run_id})
        other = t.summary.get(COMPANION.get(metric, ""))
        if is_finite_number(other):
            rows[-1]["also"] = {COMPANION[metric]: float(other)}
    rows.sort(key=lambda r: r["metric"], reverse=goal.startswith("max"))
    for i, r in enumerate(rows, start=1):
        r["rank"] = i
    rows = [{"rank": r.pop("rank"), **r} for r in rows]
    return rows[:top] if top else rows


def param_columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in r["config"]:
            if k not in cols:
                cols.append(k)
    return cols


def format_cell(v) -> str:
    """A parameter value for a table cell: floats to 4 significant digits, containers as JSON."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return "" if v is None else str(v)


def varying_columns(rows: list[dict]) -> list[str]:
    """Parameters whose value differs between rows (all of them for a single row)."""
    cols = param_columns(rows)
    if len(rows) < 2:
        return cols
    return [c for c in cols if len({json.dumps(r["config"].get(c), sort_keys=True) for r in rows}) > 1]


STOPPED_NOTE = "stopped: ended early by the sweep (hyperband), ranked with its real metric"


def format_leaderboard(rows: list[dict], fmt: str = "table") -> str:
    """json and csv carry every parameter at full precision; table and markdown show the ones that vary.

    The state column names a trial the sweep stopped early ``stopped`` (json keeps W&B's
    ``finished`` with ``stopped: true``); table and markdown explain it below.
    """
    if fmt == "json":
        return json.dumps(rows, indent=2, default=str)
    params = param_columns(rows) if fmt == "csv" else varying_columns(rows)
    metric_name = rows[0]["metric_name"] if rows else "metric"
    also = [k for k in dict.fromkeys(k for r in rows for k in r.get("also", {}))]
    header = ["rank", "run", "state", metric_name, *also, *params]
    states = ["stopped" if r["stopped"] else r["state"] for r in rows]

    def beside(r: dict, fmt_value) -> list[str]:
        return [fmt_value(r["also"][k]) if k in r.get("also", {}) else "" for k in also]

    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows([[r["rank"], r["run"], st, repr(r["metric"]), *beside(r, repr),
                      *[_exact(r["config"].get(p)) for p in params]] for r, st in zip(rows, states)])
        return buf.getvalue().rstrip("\n")
    body = [[str(r["rank"]), r["run"], st, f"{r['metric']:.4f}", *beside(r, lambda v: f"{v:.4f}"),
             *[format_cell(r["config"].get(p)) for p in params]] for r, st in zip(rows, states)]
    note = [STOPPED_NOTE] if "stopped" in states else []
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(lines + ([""] + [f"_{n}_" for n in note] if note else []))
    return "\n".join([format_table([header, *body])] + note)


def format_table(rows: list) -> str:
    """Rows of cells (the first the header) as left-aligned columns two spaces apart."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _exact(v) -> str:
    """A parameter value for CSV: as stored (floats at full precision), containers as JSON."""
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    if isinstance(v, float):
        return repr(v)
    return "" if v is None else str(v)


def progress_line(store: RunStore, sweep_id: str) -> str:
    """One line for a running sweep: trials by state, and the best so far."""
    trials = store.list_trials(sweep_id, with_history=False)
    c = state_counts(trials)
    board = leaderboard(store, sweep_id, top=1) if store.get_sweep(sweep_id).metric_name else []
    best = f" | best {board[0]['metric_name']} {board[0]['metric']:.4f} ({board[0]['run']})" if board else ""
    return (f"trials: {c.get('finished', 0)} done, {c.get('running', 0)} running, {c.get('stopped', 0)} stopped, "
            f"{c.get('failed', 0) + c.get('crashed', 0)} failed, {c.get('queued', 0) + c.get('preempted', 0)} "
            f"queued{best}")
