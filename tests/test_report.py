"""`cvsweep report`: one self-contained HTML page, built from a real local sweep and from faked W&B runs."""
import os
import re
import shutil
import threading
import time

import pytest
import yaml
from click.testing import CliRunner
from conftest import ROOT
from sweep_helpers import tiny_params

from agent.cli import cli
from agent.controller import LocalController
from agent.report import build_html, collect, param_importance, write_report
from agent.store import SQLiteStore, Trial

ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def local_sweep(tmp_path_factory, demo_dir, cache_dir):
    """A real tiny local sweep: 10 grid trials of 3 epochs with hyperband; weight_decay 1e12 diverges (failed).

    Ranked by val_loss (minimize): a continuous figure with no ties at a constant-prediction floor, so
    with eta 10 (the band's threshold is the best first epoch so far) the high learning rates (0.03,
    0.5: first-epoch losses in the tens and thousands against ~2.4) are stopped whatever the draws;
    the diverging ones fail in their first epoch, before they report.
    """
    from agent.worker import local_worker_loop

    root = tmp_path_factory.mktemp("report-state")
    os.environ["WANDB_MODE"] = "offline"
    store = SQLiteStore(root)
    sweep = LocalController(store).create_sweep({
        "name": "rep", "method": "grid", "metric": {"name": "val_loss", "goal": "minimize"},
        "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 10},
        "parameters": tiny_params(demo_dir, cache_dir, epochs={"value": 3},
                                  learning_rate={"values": [0.003, 0.01, 0.03, 0.0003, 0.5]},
                                  weight_decay={"values": [0.05, 1.0e12]})})
    local_worker_loop(sweep.id, "w0", None, threading.Event(), poll=0.1, root=root)
    return root, sweep.id


def _no_network_refs(page: str):
    """Script, style, image and frame sources on the network (links inside plotly's bundle are not loads)."""
    tags = re.findall(r"""<(?:script|img|link|iframe|source|video|audio|embed)\b[^>]*?(?:src|href)\s*=\s*["']?https?://""",
                      page, re.I)
    return tags + re.findall(r"""@import\s+["']?https?://|url\(\s*["']?https?://""", page, re.I)


def test_report_from_a_real_local_sweep_has_every_section(local_sweep, tmp_path):
    root, sid = local_sweep
    store = SQLiteStore(root)
    out = write_report(store, sid, tmp_path / "r.html")
    page = out.read_text()
    assert _no_network_refs(page) == [] and "<script type='text/javascript'>" in page
    for fig in ("parcoords", "metric-scatter", "learning-curves", "confusion", "per-class-f1"):
        assert f'id="{fig}"' in page, fig
    trials = store.list_trials(sid)
    assert f"<b>{len(trials)}</b>trials" in page and "trial-hours" in page
    data = collect(store, sid)
    best = data.rows[0]
    m = re.search(r"<pre id='best-config'>(.*?)</pre>", page, re.S)
    import html as h

    assert yaml.safe_load(h.unescape(m.group(1))) == best["config"]
    assert page.count("<tr>") >= len(data.rows)
    assert any(t.state == "failed" for t in trials) and any(t.stopped for t in trials)
    assert "id='failures'" in page and "NonFiniteLossError" in page and "hyperband stop" in page
    from agent.queries import is_finite_number

    done = sum(t.state == "finished" and is_finite_number(t.metric) for t in trials)
    assert ('id="importance"' in page) == (done >= 5)
    assert ("Parameter importance needs at least 5 finished" in page) == (done < 5)


def test_report_marks_classes_absent_from_the_best_trials_validation(local_sweep, tmp_path):
    """Absent classes (support 0, never predicted) are drawn apart and named: they are not in macro-F1."""
    root, sid = local_sweep
    data = collect(SQLiteStore(root), sid)
    pc = [dict(r) for r in data.best_files["per_class"]]
    pc[4].update(f1=None, precision=None, recall=None, support=0, predicted=0, in_macro_f1=False)
    data.best_files["per_class"] = pc
    page = build_html(data)
    assert f"not counted in its macro-F1 (as the competition scores it): {pc[4]['class']}." in page
    assert page.count("#cccccc") == 1


def test_report_cli_writes_the_file(local_sweep, tmp_path, monkeypatch):
    root, sid = local_sweep
    monkeypatch.setenv("CVSWEEP_DIR", str(root))
    res = CliRunner().invoke(cli, ["report", sid, "-o", str(tmp_path / "x.html")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "x.html").stat().st_size > 1_000_000  # plotly is inside


def test_all_failed_and_empty_sweeps_render_with_notes(tmp_path):
    store = SQLiteStore(tmp_path)
    ctl = LocalController(store)
    sweep = ctl.create_sweep({"name": "bad", "method": "grid", "metric": {"name": "best_val_f1", "goal": "maximize"},
                              "parameters": {"learning_rate": {"values": [0.1, 0.2, 0.3]}}})
    empty = build_html(collect(store, sweep.id))
    assert "No trial has a finite best_val_f1 yet" in empty and "No per-epoch history" in empty
    for msg in ("CUDA out of memory", "CUDA out of memory", "DataError: 2 image(s) could not be read"):
        t = ctl.claim(sweep.id, "w").trial
        ctl.finish(t.id, "failed", error=msg, owner=t.owner)
    page = build_html(collect(store, sweep.id))
    assert "Parallel coordinates need at least 2 trials" in page and "<b>3</b>failed" in page
    assert re.search(r"<td class='num'>2</td><td><code>CUDA out of memory</code>", page)
    assert _no_network_refs(page) == []


def test_importance_one_hot_encodes_categoricals_and_finds_the_parameter_that_matters(tmp_path):
    import random

    rng = random.Random(0)
    trials = []
    for i in range(40):
        lr = 10 ** rng.uniform(-4, -1)
        model = rng.choice(["a", "b", "c"])
        metric = (0.9 if model == "b" else 0.3) + rng.uniform(-0.02, 0.02)
        trials.append(Trial(sweep_id="s", name=f"t{i}", state="finished", metric=metric,
                            params={"learning_rate": lr, "model_name": model, "augment": {"rotate": 0.5}}))
    rows, note = param_importance(trials, "best_val_f1")
    assert note is None
    names = [r["parameter"] for r in rows]
    assert "model_name=b" in names and "augment.rotate" not in names  # constant says nothing
    assert names[0] == "model_name=b" and rows[0]["correlation"] > 0.9


def test_report_stays_readable_for_500_trials(tmp_path, capsys):
    import random

    store = SQLiteStore(tmp_path)
    sweep = LocalController(store).create_sweep({"name": "big", "method": "random",
                                                 "metric": {"name": "best_val_f1", "goal": "maximize"},
                                                 "parameters": {"learning_rate": {"min": 1e-5, "max": 1e-1}}})
    rng = random.Random(1)
    with store.transaction() as c:
        for i in range(500):
            tid = store.insert_trial(c, Trial(sweep_id=sweep.id, name=f"big-{i:03d}", state="running", run_id=str(i),
                                              params={"learning_rate": 10 ** rng.uniform(-5, -1),
                                                      "model_name": rng.choice(["resnet18", "resnet34"]),
                                                      "img_size": rng.choice([224, 320])}))
            m = rng.random()
            for e in range(1, 6):
                store.add_history(tid, e, m * e / 5, {"epoch": e, "val_f1": m * e / 5, "best_val_f1": m * e / 5}, c)
            store.update_trial(tid, conn=c, state="finished", metric=m, summary={"best_val_f1": m},
                               started_at=1000.0 + i, finished_at=1060.0 + i)
    t0 = time.perf_counter()
    out = write_report(store, sweep.id, tmp_path / "big.html")
    took = time.perf_counter() - t0
    size = out.stat().st_size
    with capsys.disabled():
        print(f"\n500-trial report: {size / 2**20:.2f} MiB, built in {took:.2f} s")
    assert size < 8 * 2**20
    assert out.read_text().count("<tr>") <= 20 + 60  # top 20 in the leaderboard, importance rows


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(not _chromium(), reason="Debian's chromium is not installed (make test installs it as root)")
def test_report_opens_in_headless_chromium_without_network_or_errors(local_sweep, tmp_path):
    from playwright.sync_api import sync_playwright

    root, sid = local_sweep
    out = write_report(SQLiteStore(root), sid, tmp_path / "r.html")
    errors, outside = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))

        def route(r):
            if r.request.url.startswith("file://"):
                return r.continue_()
            outside.append(r.request.url)
            return r.abort()

        page.route("**/*", route)
        page.goto(out.as_uri())
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length > 0", timeout=30000)
        expected = int(page.get_attribute("body", "data-figures"))
        drawn = page.evaluate("document.querySelectorAll('.js-plotly-plot').length")
        page.click("#leaderboard th:nth-child(4)")  # sortable: by metric, ascending
        first_metric = float(page.inner_text("#leaderboard tbody tr:first-child td:nth-child(4)"))
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
    assert errors == [] and outside == []
    assert expected >= 5 and drawn == expected
    rows = collect(SQLiteStore(root), sid).rows
    assert first_metric == pytest.approx(min(r["metric"] for r in rows[:20]), abs=1e-4)
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
