"""The report's figures for a sweep with val_shift: clean and shifted validation side by side."""
from __future__ import annotations

import plotly.colors
import plotly.graph_objects as go

from .queries import is_finite_number
from .store import Trial


def has_shift(curves: dict[str, list[dict]]) -> bool:
    return any("val_shift_f1" in h for hist in curves.values() for h in hist)


def shift_curves(curves: dict[str, list[dict]], by_id: dict[str, Trial]):
    """Per trial: val_f1 (solid) and val_shift_f1 (dashed, same colour) over the epochs."""

    fig = go.Figure()
    palette = plotly.colors.qualitative.Plotly
    for i, (run_id, hist) in enumerate(curves.items()):
        colour = palette[i % len(palette)]
        for key, dash in (("val_f1", "solid"), ("val_shift_f1", "dash")):
            pts = [(h.get("epoch", j + 1), h.get(key)) for j, h in enumerate(hist)]
            pts = [(e, v) for e, v in pts if is_finite_number(v)]
            if pts:
                fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                         name=f"{by_id[run_id].name} {key}", line=dict(color=colour, dash=dash),
                                         legendgroup=run_id))
    return fig.update_layout(xaxis_title="epoch", yaxis_title="macro-F1 (solid clean, dashed shifted)", height=440)


def clean_vs_shifted(trials: list[Trial]):
    """One point per trial: best_val_f1 against best_val_shift_f1, with the diagonal."""

    pts = [(t.summary.get("best_val_f1"), t.summary.get("best_val_shift_f1"), t.name) for t in trials]
    pts = [p for p in pts if is_finite_number(p[0]) and is_finite_number(p[1])]
    lo = min([min(p[0], p[1]) for p in pts] + [1.0])
    fig = go.Figure([go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers", text=[p[2] for p in pts],
                                name="trial", hovertemplate="%{text}<br>clean %{x:.4f}<br>shifted %{y:.4f}<extra></extra>"),
                     go.Scatter(x=[lo, 1], y=[lo, 1], mode="lines", name="clean = shifted",
                                line=dict(dash="dot", color="grey"))])
    return fig.update_layout(xaxis_title="best_val_f1 (clean validation)",
                             yaxis_title="best_val_shift_f1 (shifted validation)", height=440)
