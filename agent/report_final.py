"""The report's finalize section (final.json): weights, the three out-of-fold estimates with their
intervals and spread over folds, the holdout; and the marks finalists get in the parent's leaderboard."""
from __future__ import annotations

import html

import plotly.graph_objects as go


def _num(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def final_section(page, final: dict, metric: str) -> None:
    """`cvsweep finalize`: each configuration's weight and out-of-fold figures, the three ensemble
    estimates with 90% intervals and their spread over folds, the holdout apart."""

    how = "stratified" if final.get("folds_stratified", True) else "plain (not stratified: a class has one image)"
    views = ", ".join(final.get("oof_views") or ["none"])
    page.add(f"<h2 id='final'>Final: {len(final['finalists'])} configuration(s) x {final['folds']} folds</h2>"
             f"<p class='muted'>Retrained on {final['folds']} {how} folds of {final['n_images']} training images "
             f"(local sweep {html.escape(final['final_sweep'])}); out-of-fold macro-F1 from held-out predictions of "
             f"each fold's final epoch, with the submission's views ({html.escape(views)}). The submission is the "
             "softmax averaged over folds and views, weighted over configurations by forward selection on the "
             "out-of-fold predictions; the selected ensemble's figure is nested (weights chosen on the other "
             "folds). The configurations were chosen on the sweep's validation images, which are part of these "
             "folds: all figures favour them a little.</p>")
    if final.get("tta_choice"):
        t = final["tta_choice"]
        page.note(f"Views chosen out of fold (--tta auto): {html.escape(', '.join(t['views']))}: the finalists' mean "
                  f"macro-F1 {t['f1']:.4f} on the {html.escape(t['scored_on'])} held-out images vs {t['f1_none']:.4f} "
                  f"without test-time views; chosen on those same images, so slightly optimistic (chosen on the "
                  f"other folds: {t['f1_nested']:.4f}).")
    if final.get("selected_on") == "shifted":
        page.note("The weights and the figures below are on the shifted copies of the held-out images (val_shift: "
                  "the shifted test is what counts); the clean figures are beside them.")
    if final.get("small_classes"):
        page.note("Classes with fewer images than folds (some folds validate none of them): " + ", ".join(
            f"{html.escape(str(k))} ({v})" for k, v in final["small_classes"].items()))
    body = "".join(
        f"<tr><td class='num'>{r['index']}</td><td>{html.escape(r['run'])}</td>"
        f"<td class='num'>{r['parent_metric']:.4f}</td><td class='num'>{r.get('weight', 0):.2f}</td>"
        f"<td class='num'>{r['oof_macro_f1']:.4f}</td><td>{_ci(r.get('oof_macro_f1_ci90'))}</td>"
        f"<td class='num'>{_num(r.get('oof_macro_f1_clean'))}</td><td class='num'>{_num(r.get('oof_macro_f1_shift'))}</td>"
        f"<td class='num'>{_num(r.get('oof_macro_f1_single_view'))}</td>"
        f"<td>{', '.join(f'{v:.3f}' for v in r['fold_macro_f1'])}</td></tr>" for r in final["finalists"])
    page.add(f"<table id='final-finalists'><thead><tr><th>#</th><th>from trial</th><th>sweep {html.escape(metric)}</th>"
             "<th>weight</th><th>OOF macro-F1</th><th>90% interval</th><th>clean</th><th>shifted</th><th>one view</th>"
             "<th>per fold</th></tr>"
             "</thead><tbody>" + body + "</tbody></table>")
    if "oof_macro_f1_selected" in final:
        _final_estimates(page, final)
    names = final["class_names"]
    page.figure(go.Figure(go.Heatmap(z=final["confusion"], x=names, y=names, colorscale="Blues",
                                     hovertemplate="true %{y}<br>predicted %{x}<br>%{z}<extra></extra>"))
                .update_layout(title=f"selected ensemble, out of fold (macro-F1 {final['oof_macro_f1']:.4f})",
                               height=620, xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed"),
                "final-confusion")
    if final.get("submission"):
        page.note(f"Submission: {final['submission']}")


def _final_estimates(page, final: dict) -> None:
    """The three estimates: value, 90% interval, per-fold spread; then the one-view and holdout figures."""
    rows = []
    for name, label in (("selected", "selected ensemble (nested)"), ("equal", "equal-weight ensemble"),
                        ("best_single", "best single configuration")):
        folds = final.get(f"oof_fold_macro_f1_{name}") or []
        spread = f"{min(folds):.3f} – {max(folds):.3f}" if folds else "-"
        rows.append(f"<tr><td>{label}</td><td class='num'>{final[f'oof_macro_f1_{name}']:.4f}</td>"
                    f"<td>{_ci(final.get(f'oof_macro_f1_{name}_ci90'))}</td><td>{spread}</td>"
                    f"<td>{', '.join(f'{v:.3f}' for v in folds)}</td></tr>")
    page.add("<table id='final-estimates'><thead><tr><th>out of fold</th><th>macro-F1</th><th>90% interval</th>"
             "<th>fold range</th><th>per fold</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    notes = [(f"P(selected ensemble beats the best single) = {final['p_selected_beats_best_single']:.2f} "
              "(paired bootstrap over images).")]
    if final.get("selected_on") == "shifted" and final.get("oof_clean"):
        c = final["oof_clean"]
        notes.append(f"Clean held-out images, same weights: best single {c['best_single']:.4f}, equal-weight "
                     f"{c['equal']:.4f}, selected {c['selected']:.4f}.")
    sv = final.get("oof_single_view") or {}
    if sv:
        notes.append(f"With one view (none): best single {sv['best_single']:.4f}, equal-weight {sv['equal']:.4f}, "
                     f"selected {sv['selected']:.4f}.")
    if final.get("holdout"):
        h = final["holdout"]
        shift = f" ({h['macro_f1_shift']:.4f} on their shifted copies)" if "macro_f1_shift" in h else ""
        notes.append(f"Holdout: the submitted ensemble scores {h['macro_f1']:.4f}{shift} on "
                     f"{h['n_images']} images that no trial trained or validated on.")
    page.note(" ".join(notes))


def _ci(pair) -> str:
    return f"[{pair[0]:.3f}, {pair[1]:.3f}]" if pair else "-"


def finalist_marks(final: dict | None) -> dict[str, str]:
    """Leaderboard marks: each finalist's out-of-fold figure, and whether its interval overlaps the best's."""
    if not final:
        return {}
    rows = final["finalists"]
    best = max(rows, key=lambda r: r["oof_macro_f1"])
    out = {}
    for r in rows:
        tie = "best out of fold" if r is best else (
            "tied with the best (intervals overlap)" if r.get("tied_with_best") else "below the best")
        out[r["run"]] = f"finalist #{r['index']}: OOF {r['oof_macro_f1']:.3f} {_ci(r.get('oof_macro_f1_ci90'))}, {tie}"
    return out
