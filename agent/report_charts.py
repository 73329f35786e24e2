"""The report's plotly figures, one function each: data in, a figure out (no page, no files).
Imported only by :mod:`agent.report`, which ``cvsweep report`` loads when it runs: plotly loads at the top."""
from __future__ import annotations

import json
import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .queries import is_finite_number
from .store import Trial


def flatten_params(params: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out.update(flatten_params(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def axis(name: str, values: list):
    """A parcoords dimension: numbers as they are (log10 when they span decades), categories as ticks."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        vals = [float(v) for v in values]
        if min(vals) > 0 and max(vals) / min(vals) >= 100:
            return dict(label=f"log10({name})", values=[math.log10(v) for v in vals])
        return dict(label=name, values=vals)
    cats = sorted({json.dumps(v, sort_keys=True) for v in values})
    idx = {c: i for i, c in enumerate(cats)}
    return dict(label=name, values=[idx[json.dumps(v, sort_keys=True)] for v in values],
                tickvals=list(range(len(cats))), ticktext=[str(json.loads(c))[:20] for c in cats])


def parcoords(trials: list[Trial], metric: str, goal: str):
    flat = [flatten_params(t.params) for t in trials]
    keys = [k for k in sorted({k for f in flat for k in f})
            if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
    dims = [axis(k, [f.get(k) for f in flat]) for k in keys]
    values = [t.metric for t in trials]
    dims.append(dict(label=metric, values=values))
    fig = go.Figure(go.Parcoords(line=dict(color=values, colorscale="Viridis", showscale=True,
                                           reversescale=not goal.startswith("max")), dimensions=dims))
    return fig.update_layout(title=dict(text="drag along an axis to filter trials", y=0.98), height=500,
                             margin=dict(t=110))


def scatter(trials: list[Trial], metric: str, goal: str):
    xs, ys, names, best_x, best_y = [], [], [], [], []
    best = None
    maximize = goal.startswith("max")
    for i, t in enumerate(trials, start=1):
        if not is_finite_number(t.metric):
            continue
        xs.append(i)
        ys.append(t.metric)
        names.append(t.name + (" (stopped)" if t.stopped else ""))
        if best is None or (t.metric > best if maximize else t.metric < best):
            best = t.metric
        best_x.append(i)
        best_y.append(best)
    fig = go.Figure([go.Scatter(x=xs, y=ys, mode="markers", name=metric, text=names,
                                hovertemplate="%{text}<br>%{y:.4f}<extra></extra>"),
                     go.Scatter(x=best_x, y=best_y, mode="lines", name="best so far", line=dict(shape="hv"))])
    return fig.update_layout(xaxis_title="trial (creation order)", yaxis_title=metric, height=400)


def curves(curves: dict[str, list[dict]], by_id: dict[str, Trial], metric: str):
    fig = go.Figure()
    stop_x, stop_y, stop_names = [], [], []
    for run_id, hist in curves.items():
        pts = [(h.get("epoch", i + 1), h.get("val_f1", h.get(metric))) for i, h in enumerate(hist)]
        pts = [(e, v) for e, v in pts if is_finite_number(v)]
        if not pts:
            continue
        t = by_id[run_id]
        name = t.name
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=name,
                                 opacity=0.45 if t.stopped else 1.0))
        if t.stopped:
            stop_x.append(pts[-1][0])
            stop_y.append(pts[-1][1])
            stop_names.append(f"{name}: {t.stop_reason or 'stopped early'}"[:160])
    if stop_x:
        fig.add_trace(go.Scatter(x=stop_x, y=stop_y, mode="markers", name="hyperband stop", text=stop_names,
                                 marker=dict(symbol="x", size=12, color="crimson"),
                                 hovertemplate="%{text}<extra></extra>"))
    return fig.update_layout(xaxis_title="epoch", yaxis_title="val_f1 (macro-F1)", height=440)


def importance_bars(rows: list[dict], metric: str):
    rows = rows[:25][::-1]
    names = [r["parameter"] for r in rows]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, subplot_titles=("importance (random forest)",
                                                                             f"correlation with {metric}"))
    fig.add_trace(go.Bar(x=[r["importance"] for r in rows], y=names, orientation="h", name="importance"), 1, 1)
    corr = [0.0 if math.isnan(r["correlation"]) else r["correlation"] for r in rows]
    fig.add_trace(go.Bar(x=corr, y=names, orientation="h", name="correlation",
                         marker_color=["seagreen" if c >= 0 else "indianred" for c in corr]), 1, 2)
    return fig.update_layout(showlegend=False, height=max(300, 28 * len(rows) + 120))


def confusion_figure(cm: dict, run: str):
    """The best trial's confusion matrix (confusion_matrix.json), true classes down, predicted across."""
    return (go.Figure(go.Heatmap(z=cm["matrix"], x=cm["class_names"], y=cm["class_names"], colorscale="Blues",
                                 hovertemplate="true %{y}<br>predicted %{x}<br>%{z}<extra></extra>"))
            .update_layout(title=f"{run} (epoch {cm.get('epoch')})", height=620,
                           xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed"))


def per_class_figure(pc: list[dict], scored: list[bool]):
    """Per-class F1 (per_class.json); classes not in macro-F1 (``scored`` False) grey at 0."""
    return (go.Figure(go.Bar(x=[r["class"] for r in pc], y=[r["f1"] or 0.0 for r in pc],
                             marker_color=["#1f77b4" if ok else "#cccccc" for ok in scored],
                             customdata=[[_num(r["precision"]), _num(r["recall"]), r["support"],
                                          "" if ok else " (absent: not in macro-F1)"]
                                         for r, ok in zip(pc, scored)],
                             hovertemplate="%{x}%{customdata[3]}<br>F1 %{y:.3f}<br>precision %{customdata[0]}"
                                           "<br>recall %{customdata[1]}<br>support %{customdata[2]}"
                                           "<extra></extra>"))
            .update_layout(yaxis_range=[0, 1], yaxis_title="F1", height=420))


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"
