import csv
import io
import json

from agent.controller import LocalController
from agent.queries import auto_increment_run_suffix, format_leaderboard, get_latest_runs, get_runs, leaderboard
from agent.store import SQLiteStore


def test_auto_increment_run_suffix():
    assert auto_increment_run_suffix([], "demo") == "demo-001"
    assert auto_increment_run_suffix(["demo-001", "demo-007", "other-009", "demo-x"], "demo") == "demo-008"
    assert auto_increment_run_suffix(["a.b-002"], "a.b") == "a.b-003"


def _sweep_with_results(tmp_path, goal="maximize"):
    ctl = LocalController(SQLiteStore(tmp_path))
    sweep = ctl.create_sweep({"name": "s", "method": "grid", "metric": {"name": "val_loss", "goal": goal},
                              "parameters": {"learning_rate": {"values": [0.1, 0.2, 0.3, 0.4]},
                                             "epochs": {"value": 3}}})
    results = [0.5, None, 0.9, 0.2]
    for v in results:
        t = ctl.claim(sweep.id, "w").trial
        if v is None:
            ctl.finish(t.id, "failed", error="boom", owner=t.owner)
        else:
            ctl.finish(t.id, "finished", {"val_loss": v, "epochs_completed": 3}, owner=t.owner)
    return ctl.store, sweep


def test_leaderboard_orders_by_goal_and_skips_trials_without_metric(tmp_path):
    store, sweep = _sweep_with_results(tmp_path / "a", "minimize")
    rows = leaderboard(store, sweep.id)
    assert [r["metric"] for r in rows] == [0.2, 0.5, 0.9] and [r["rank"] for r in rows] == [1, 2, 3]
    assert rows[0]["config"] == {"learning_rate": 0.4, "epochs": 3} and rows[0]["state"] == "finished"
    store2, sweep2 = _sweep_with_results(tmp_path / "b", "maximize")
    assert [r["metric"] for r in leaderboard(store2, sweep2.id, top=2)] == [0.9, 0.5]


def test_leaderboard_formats(tmp_path):
    store, sweep = _sweep_with_results(tmp_path, "minimize")
    rows = leaderboard(store, sweep.id)
    js = json.loads(format_leaderboard(rows, "json"))
    assert [r["rank"] for r in js] == [1, 2, 3] and {"rank", "run", "state", "metric", "config"} <= set(js[0])
    table = list(csv.reader(io.StringIO(format_leaderboard(rows, "csv"))))
    assert table[0][:4] == ["rank", "run", "state", "val_loss"] and len(table) == 4
    assert sorted(table[0][4:]) == ["epochs", "learning_rate"]  # csv carries every parameter
    md = format_leaderboard(rows, "markdown").splitlines()
    assert md[0] == "| rank | run | state | val_loss | learning_rate |"  # only what varies
    assert md[1].startswith("|---|") and len(md) == 5
    text = format_leaderboard(rows, "table").splitlines()
    assert text[1].split()[:2] == ["1", "s-004"]


def test_get_runs_and_latest_runs(tmp_path):
    store, sweep = _sweep_with_results(tmp_path)
    assert [t.name for t in get_runs(store, sweep.id)] == ["s-001", "s-002", "s-003", "s-004"]
    assert [t.name for t in get_runs(store, sweep.id, states=("failed",))] == ["s-002"]
    assert [t.name for t in get_latest_runs(store, sweep.id, 2)] == ["s-004", "s-003"]
