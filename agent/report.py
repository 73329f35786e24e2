"""``cvsweep report``: what W&B's sweep page shows, as one self-contained HTML file.

Plotly draws every chart; its JavaScript is embedded once, so the page opens
from disk with no network. Data comes through the run-store interface, so a
local sweep and a W&B sweep give the same page.
"""
from __future__ import annotations

import html
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from plotly.offline import get_plotlyjs

from .finalize import final_path
from .queries import format_cell, is_finite_number, leaderboard, state_counts, varying_columns
from .report_charts import (
    confusion_figure,
    curves,
    flatten_params,
    importance_bars,
    parcoords,
    per_class_figure,
    scatter,
)
from .report_final import final_section, finalist_marks
from .report_shift import clean_vs_shifted, has_shift, shift_curves
from .store import RunStore, Sweep, Trial, state_dir

MIN_TRIALS_FOR_IMPORTANCE = 5


@dataclass
class ReportData:
    sweep: Sweep
    trials: list[Trial]
    rows: list[dict]                      # leaderboard, best first
    curves: dict[str, list[dict]] = field(default_factory=dict)   # run id -> per-epoch metrics
    best_files: dict = field(default_factory=dict)                # confusion matrix, per-class report
    final: dict | None = None             # `cvsweep finalize` results (final.json), when there are any


def collect(store: RunStore, sweep_id: str, curves_for: int = 10) -> ReportData:
    sweep = store.get_sweep(sweep_id)
    trials = store.list_trials(sweep_id)
    rows = leaderboard(store, sweep_id) if sweep.metric_name else []
    data = ReportData(sweep, trials, rows)
    by_id = {t.run_id: t for t in trials}   # display names repeat on W&B; run ids do not
    wanted = [r["run_id"] for r in rows[:curves_for]] + [t.run_id for t in trials if t.stopped][:20]
    for run_id in dict.fromkeys(wanted):
        data.curves[run_id] = store.epoch_history(by_id[run_id])
    if rows:
        best = by_id[rows[0]["run_id"]]
        out_dir = best.output_dir or best.summary.get("output_dir")
        if out_dir:
            for key, fname in (("confusion", "confusion_matrix.json"), ("per_class", "per_class.json")):
                p = Path(out_dir) / fname
                if p.is_file():
                    data.best_files[key] = json.loads(p.read_text())

    fp = final_path(getattr(store, "root", None) or state_dir(), sweep.id)
    if fp.is_file():
        data.final = json.loads(fp.read_text())
    return data


# ---------------------------------------------------------------------------
def param_importance(trials: list[Trial], metric: str) -> tuple[list[dict], str | None]:
    """Correlation with the metric and random-forest importance, as W&B's panel computes them.

    Categorical parameters are one-hot encoded (one row per value). Returns (rows, note).
    """

    done = [t for t in trials if t.state == "finished" and is_finite_number(t.metric)]
    if len(done) < MIN_TRIALS_FOR_IMPORTANCE:
        return [], (f"Parameter importance needs at least {MIN_TRIALS_FOR_IMPORTANCE} finished trials with "
                    f"{metric}; this sweep has {len(done)}.")
    flat = [flatten_params(t.params) for t in done]
    keys = sorted({k for f in flat for k in f})
    columns: list[tuple[str, list[float]]] = []
    for k in keys:
        vals = [f.get(k) for f in flat]
        if len({json.dumps(v, sort_keys=True) for v in vals}) < 2:
            continue  # constant: says nothing
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            columns.append((k, [float(v) for v in vals]))
        elif all(isinstance(v, bool) for v in vals):
            columns.append((k, [float(v) for v in vals]))
        else:
            for cat in sorted({json.dumps(v) for v in vals}):
                columns.append((f"{k}={json.loads(cat)}", [float(json.dumps(v) == cat) for v in vals]))
    if not columns:
        return [], "Parameter importance needs at least one parameter that varies between finished trials."
    X = np.array([c[1] for c in columns]).T
    y = np.array([t.metric for t in done], dtype=float)
    from sklearn.ensemble import RandomForestRegressor  # lazy: sklearn loads only when there are enough trials to rank

    rf = RandomForestRegressor(n_estimators=200, random_state=0).fit(X, y)
    out = []
    for (name, col), imp in zip(columns, rf.feature_importances_):
        c = np.asarray(col)
        corr = float(np.corrcoef(c, y)[0, 1]) if c.std() > 0 and y.std() > 0 else float("nan")
        out.append({"parameter": name, "importance": float(imp), "correlation": corr})
    out.sort(key=lambda r: r["importance"], reverse=True)
    return out, None


# ---------------------------------------------------------------------------
class Page:
    """Collects sections and figures; renders one HTML document with plotly embedded once."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []
        self.n_figures = 0

    def add(self, markup: str) -> None:
        self.parts.append(markup)

    def figure(self, fig, fig_id: str) -> None:
        top = fig.layout.margin.t if fig.layout.margin.t is not None else 50
        fig.update_layout(template="plotly_white", margin=dict(l=60, r=30, t=top, b=50))
        self.parts.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=fig_id,
                                      config={"displaylogo": False, "responsive": True}))
        self.n_figures += 1

    def note(self, text: str) -> None:
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def render(self) -> str:

        return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
                f"<title>{html.escape(self.title)}</title><style>{_CSS}</style>"
                f"<script type='text/javascript'>{get_plotlyjs()}</script></head>"
                f"<body data-figures='{self.n_figures}'>" + "\n".join(self.parts) +
                f"<script>{_SORT_JS}</script></body></html>")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{margin-bottom:4px} h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
.stats{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.stat{background:#f4f6fa;border-radius:6px;padding:8px 14px} .stat b{display:block;font-size:1.3em}
table{border-collapse:collapse;font-size:13px;width:100%} th,td{border-bottom:1px solid #e4e4e4;padding:4px 8px;text-align:left}
th{cursor:pointer;background:#fafafa;position:sticky;top:0} th:hover{background:#eef}
td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f8fa;padding:12px;border-radius:6px;overflow:auto}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:8px 12px}
.muted{color:#777}
"""

_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var table = th.closest('table'), body = table.tBodies[0], rows = Array.from(body.rows);
    var asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
    rows.sort(function(a, b){
      var x = a.cells[col].dataset.v || a.cells[col].textContent, y = b.cells[col].dataset.v || b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function(r){ body.appendChild(r); });
  });
});
"""


def _signed(x: float) -> str:
    return "" if math.isnan(x) else f"{x:+.3f}"


def _trial_hours(trials: list[Trial], now: float) -> float:
    total = 0.0
    for t in trials:
        if t.started_at:
            total += max(0.0, (t.finished_at or (now if t.state == "running" else t.started_at)) - t.started_at)
        elif is_finite_number(t.summary.get("_runtime")):
            total += t.summary["_runtime"]
    return total / 3600


# ---------------------------------------------------------------------------
def build_html(data: ReportData, top: int = 20) -> str:
    """The page, section by section: header, leaderboard, charts, importance, best trial, the
    finalize results (when there are any), failures."""
    sweep = data.sweep
    page = Page(f"Sweep {sweep.name or sweep.id} — cvsweep report")
    by_id = {t.run_id: t for t in data.trials}
    _header(page, data, by_id, time.time())
    _leaderboard(page, data, top)
    _charts(page, data, by_id)
    _importance(page, data.trials, sweep.metric_name or "metric")
    _best_trial(page, data)
    if data.final:
        final_section(page, data.final, sweep.metric_name or "metric")
    _failures(page, data.trials)
    page.add(f"<p class='muted'>Generated by cvsweep on {time.strftime('%Y-%m-%d %H:%M:%S')}.</p>")
    return page.render()


def _header(page: Page, data: ReportData, by_id: dict[str, Trial], now: float) -> None:
    """The sweep's name, method and state; trials by state, trial-hours and the best trial."""
    sweep, trials, rows = data.sweep, data.trials, data.rows
    metric = sweep.metric_name or "metric"
    counts = state_counts(trials)  # the state names `cvsweep status` and `runs --state` use
    best = rows[0] if rows else None
    when = ""
    if best:
        bt = by_id[best["run_id"]]
        order = [t.run_id for t in trials].index(best["run_id"]) + 1
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(bt.finished_at)) if bt.finished_at else "?"
        when = f"trial {order} of {len(trials)}, {stamp}"
    page.add(f"<h1>Sweep {html.escape(sweep.name or sweep.id)}</h1>"
             f"<div class='muted'>id {html.escape(sweep.id)} · {html.escape(sweep.backend)} backend · "
             f"method {html.escape(str(sweep.config.get('method')))} · metric {html.escape(metric)} ({html.escape(sweep.goal)}) · "
             f"state {html.escape(sweep.state)}{' (' + html.escape(sweep.finished_reason) + ')' if sweep.finished_reason else ''}</div>")
    stats = [(str(len(trials)), "trials")] + [(str(v), k) for k, v in counts.items()]
    stats.append((f"{_trial_hours(trials, now):.2f}", "trial-hours"))
    if best:
        stats.append((f"{best['metric']:.4f}", f"best {metric} ({best['run']}, {when})"))
    page.add("<div class='stats'>" + "".join(f"<div class='stat'><b>{html.escape(a)}</b>{html.escape(b)}</div>"
                                             for a, b in stats) + "</div>")


def _leaderboard(page: Page, data: ReportData, top: int) -> None:
    """The ranked trials (sortable), the finalists marked; the best config as YAML to paste."""
    rows, metric = data.rows, data.sweep.metric_name or "metric"
    page.add("<h2>Leaderboard</h2>")
    if not rows:
        page.note(f"No trial has a finite {metric} yet: nothing to rank.")
        return
    params = varying_columns(rows) or list(rows[0]["config"])
    head = ["rank", "run", "state", metric, "epochs", *params]
    body = []
    marks = finalist_marks(data.final)
    for r in rows[:top]:
        mark = f" <span class='muted'>({html.escape(marks[r['run']])})</span>" if r["run"] in marks else ""
        cells = [f"<td class='num'>{r['rank']}</td>", f"<td>{html.escape(r['run'])}{mark}</td>",
                 f"<td>{html.escape(r['state'] + (' (stopped)' if r['stopped'] else ''))}</td>",
                 f"<td class='num' data-v='{r['metric']}'>{r['metric']:.4f}</td>",
                 f"<td class='num'>{html.escape(format_cell(r.get('epochs')))}</td>"]
        cells += [f"<td>{html.escape(format_cell(r['config'].get(p)))}</td>" for p in params]
        body.append("<tr>" + "".join(cells) + "</tr>")
    page.add("<table class='sortable' id='leaderboard'><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
             + "</tr></thead><tbody>" + "".join(body) + "</tbody></table>")
    if len(rows) > top:
        page.add(f"<p class='muted'>top {top} of {len(rows)} ranked trials</p>")
    best = rows[0]
    page.add(f"<h3>Best config ({html.escape(best['run'])})</h3><p class='muted'>paste into a file for "
             f"<code>cvtrain --config=best.yaml</code></p><pre id='best-config'>"
             f"{html.escape(yaml.safe_dump(best['config'], sort_keys=True))}</pre>")


def _charts(page: Page, data: ReportData, by_id: dict[str, Trial]) -> None:
    """Parallel coordinates, the metric over trials, learning curves; clean against shifted validation."""
    trials, metric, goal = data.trials, data.sweep.metric_name or "metric", data.sweep.goal
    ranked = [t for t in trials if is_finite_number(t.metric)]
    page.add("<h2>Parameters against the metric</h2>")
    if len(ranked) >= 2:
        page.figure(parcoords(ranked, metric, goal), "parcoords")
    else:
        page.note("Parallel coordinates need at least 2 trials with the metric.")
    page.add("<h2>Metric per trial</h2>")
    if ranked:
        page.figure(scatter(trials, metric, goal), "metric-scatter")
    else:
        page.note(f"No trial logged {metric}.")
    page.add("<h2>Learning curves</h2>")
    if any(data.curves.values()):
        page.figure(curves(data.curves, by_id, metric), "learning-curves")
    else:
        page.note("No per-epoch history recorded yet.")
    if has_shift(data.curves):
        page.add("<h2>Clean and shifted validation</h2><p class='muted'>val_shift: each validation image's "
                 "test-like copy. A trial above the diagonal holds up under the shift.</p>")
        page.figure(shift_curves(data.curves, by_id), "shift-curves")
        page.figure(clean_vs_shifted(trials), "clean-vs-shifted")


def _importance(page: Page, trials: list[Trial], metric: str) -> None:
    page.add("<h2>Parameter importance</h2>")
    imp, why = param_importance(trials, metric)
    if why:
        page.note(why)
        return
    page.figure(importance_bars(imp, metric), "importance")
    page.add("<table class='sortable' id='importance-table'><thead><tr><th>parameter</th><th>importance</th>"
             "<th>correlation</th></tr></thead><tbody>" + "".join(
                 f"<tr><td>{html.escape(r['parameter'])}</td><td class='num'>{r['importance']:.3f}</td>"
                 f"<td class='num'>{_signed(r['correlation'])}</td></tr>" for r in imp) + "</tbody></table>")


def _best_trial(page: Page, data: ReportData) -> None:
    """The best trial's confusion matrix and per-class F1, from its files when this machine has them."""
    page.add("<h2>Best trial: confusion matrix and per-class F1</h2>")
    if "confusion" in data.best_files:
        page.figure(confusion_figure(data.best_files["confusion"], data.rows[0]["run"]), "confusion")
    if "per_class" in data.best_files:
        pc = data.best_files["per_class"]
        # Classes absent from the validation labels and predictions do not count in macro-F1: drawn grey at 0.
        scored = [r.get("in_macro_f1", True) for r in pc]
        page.figure(per_class_figure(pc, scored), "per-class-f1")
        absent = [r["class"] for r, ok in zip(pc, scored) if not ok]
        if absent:
            page.note(f"{len(absent)} class(es) absent from this trial's validation labels and predictions, "
                      f"not counted in its macro-F1 (as the competition scores it): {', '.join(absent)}.")
    if not data.best_files:
        page.note("The best trial's confusion matrix files (confusion_matrix.json, per_class.json) are not on this "
                  "machine." if data.rows else "No best trial yet.")


def _failures(page: Page, trials: list[Trial]) -> None:
    """Failed and crashed trials, grouped by their first error line with the numbers blanked."""
    page.add("<h2>Failures</h2>")
    groups: dict[str, list[str]] = {}
    shown: dict[str, str] = {}
    for t in trials:
        if t.state in ("failed", "crashed"):
            msg = (t.error or "no error message recorded").strip().splitlines()[0][:300]
            key = re.sub(r"\d+(\.\d+)?", "#", msg)  # "nan at epoch 2, step 6" and "... epoch 1, step 5" are one failure
            shown.setdefault(key, msg)
            groups.setdefault(key, []).append(t.name)
    if not groups:
        page.add("<p class='muted'>No failed or crashed trials.</p>")
        return
    page.add("<table id='failures'><thead><tr><th>trials</th><th>error</th><th>runs</th></tr></thead><tbody>" + "".join(
        f"<tr><td class='num'>{len(v)}</td><td><code>{html.escape(shown[k])}</code></td><td>{html.escape(', '.join(v[:12]))}"
        f"{' …' if len(v) > 12 else ''}</td></tr>" for k, v in sorted(groups.items(), key=lambda kv: -len(kv[1])))
             + "</tbody></table>")


def write_report(store: RunStore, sweep_id: str, out: str | Path, top: int = 20) -> Path:
    data = collect(store, sweep_id, curves_for=min(top, 10))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(build_html(data, top=top), encoding="utf-8")
    tmp.replace(path)
    return path
