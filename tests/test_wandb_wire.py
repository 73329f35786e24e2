"""cvsweep and cvtrain against the stand-in W&B server (tests/wandb_server.py), wandb's client unchanged.

Read side here (cvsweep commands over 120 runs with colliding display names, paginated as the
real API pages them; write-back; sweep state verbs; create). The agents and trainers on the wire
are in test_wandb_agents.py.
"""
import json

import pytest
from click.testing import CliRunner
from conftest import ROOT

from agent.cli import cli

METRIC = {"name": "best_val_f1", "goal": "maximize"}
SWEEP = {"name": "docs", "method": "bayes", "metric": METRIC,
         "parameters": {"learning_rate": {"min": 1e-5, "max": 1e-2}, "mixup": {"parameters": {"alpha": {
             "values": [0.0, 0.2]}}}}}


def assert_clean(server):
    assert server.unknown_ops == [] and server.errors == []


def cvsweep(*args):
    res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return res


def seed(server, count=120, names=7):
    """A W&B sweep with `count` runs whose display names repeat every `names` runs, as the
    trainer writes them (summary numbers, state, stopped, reason); plus one non-sweep run."""
    sweep_id = server.add_sweep(SWEEP, project="docs")
    runs = []
    for i in range(count):
        state = "failed" if i % 10 == 3 else "finished"
        stopped = state == "finished" and i % 4 == 0
        summary = {"best_val_f1": round(0.3 + i / 400, 4), "epochs_completed": 5 if stopped else 12,
                   "state": "stopped" if stopped else state, "stopped": stopped,
                   "sys": {"proc_rss_gb_peak": 1.5}}
        if state == "failed":
            summary["reason"] = f"NonFiniteLossError: loss became nan at epoch 2, global step {i}"
        elif stopped:
            summary["reason"] = "stopped after epoch 5: the W&B sweep stopped this run"
        runs.append(server.add_run(
            "docs", name=f"resnet18-lr0.001-bs32-{i % names}", sweep=sweep_id, state=state, summary=summary,
            config={"learning_rate": 0.001 + i / 1e5, "mixup": {"alpha": 0.2 if i % 2 else 0.0}, "epochs": 12},
            history=[{"_step": e, "epoch": e, "val_f1": 0.1 * e, "best_val_f1": 0.1 * e} for e in range(1, 4)],
            created_at=f"2026-11-27T10:{i // 60:02d}:{i % 60:02d}.000Z"))
    server.add_run("docs", name="resnet18-lr0.001-bs32-0", config={"learning_rate": 0.5},
                   summary={"best_val_f1": 0.99})  # same project, not in the sweep: never on the board
    return sweep_id, runs


@pytest.fixture
def board(wandb_server, tmp_path, monkeypatch):
    monkeypatch.setenv("CVSWEEP_DIR", str(tmp_path / "no-local-state"))
    sweep_id, runs = seed(wandb_server)
    return wandb_server, sweep_id, runs


def _expected(runs):
    ranked = [r for r in runs if r.state == "finished"]
    return sorted(ranked, key=lambda r: r.summary["best_val_f1"], reverse=True)


def test_leaderboard_ranks_120_runs_by_run_id_though_display_names_collide(board):
    server, sweep_id, runs = board
    res = cvsweep("leaderboard", f"{server.entity}/docs/{sweep_id}", "--format", "json", "--top", "200")
    assert res.exit_code == 0, res.output + res.stderr
    rows = json.loads(res.stdout)
    expected = _expected(runs)
    assert [r["run_id"] for r in rows] == [r.id for r in expected]   # 108 rows, unique ids, best first
    assert len({r["run"] for r in rows}) == 7 and len(rows) == 108
    assert rows[0]["config"] == {"learning_rate": expected[0].params["learning_rate"], "mixup": {"alpha": 0.2}}
    assert [r["stopped"] for r in rows] == [r.summary["stopped"] for r in expected]
    # whole runs in pages of 100: 2 requests, not sweep.runs' 12 pages of 10 plus one request per run's config
    assert server.requests.count("Runs") == 2 and server.requests.count("Run") == 0
    assert_clean(server)


@pytest.mark.parametrize("form", ["ID --project docs --entity {entity}", "docs/ID --entity {entity}",
                                  "{entity}/docs/ID", "docs/ID"])
def test_every_form_of_sweep_path_reaches_the_same_sweep(board, form, monkeypatch):
    server, sweep_id, _ = board
    args = form.replace("ID", sweep_id).format(entity=server.entity).split()
    res = cvsweep("status", *args)
    assert res.exit_code == 0, res.output + res.stderr
    assert f"sweep {server.entity}/docs/{sweep_id} (wandb) docs: running" in res.stdout
    assert "trials: 78 finished, 30 stopped, 12 failed" in res.stdout


def test_a_bare_id_uses_wandb_project_and_a_wrong_project_says_so(board, monkeypatch):
    server, sweep_id, _ = board
    monkeypatch.setenv("WANDB_PROJECT", "docs")
    assert cvsweep("status", sweep_id).exit_code == 0
    res = CliRunner().invoke(cli, ["status", sweep_id, "--project", "elsewhere"])
    assert res.exit_code != 0
    res = CliRunner().invoke(cli, ["status", f"docs/{sweep_id}", "--project", "elsewhere"])
    assert res.exit_code == 2 and "names project 'docs' but --project says 'elsewhere'" in res.stderr


def test_runs_lists_failures_with_their_reasons_and_stops_with_theirs(board):
    server, sweep_id, runs = board
    res = cvsweep("runs", f"docs/{sweep_id}", "--state", "failed", "--format", "json")
    rows = json.loads(res.stdout)
    failed = [r for r in runs if r.state == "failed"]
    assert [r["run_id"] for r in rows] == [r.id for r in failed]  # oldest first
    assert all(r["error"].startswith("NonFiniteLossError: loss became nan") for r in rows)
    stopped = [r for r in json.loads(cvsweep("runs", f"docs/{sweep_id}", "--format", "json").stdout) if r["stopped"]]
    assert len(stopped) == 30 and all("the W&B sweep stopped this run" in r["stop_reason"] for r in stopped)
    assert_clean(server)


def test_report_of_a_wandb_sweep_keys_curves_and_the_best_run_by_id(board, tmp_path):
    server, sweep_id, runs = board
    out = tmp_path / "r.html"
    res = cvsweep("report", f"docs/{sweep_id}", "-o", str(out))
    assert res.exit_code == 0, res.output + res.stderr
    page = out.read_text()
    best = _expected(runs)[0]
    assert f"({best.display_name}, trial {runs.index(best) + 1} of 120" in page
    assert 'id="learning-curves"' in page and "NonFiniteLossError: loss became nan" in page
    assert_clean(server)


def test_write_back_updates_one_summary_run_and_clears_stale_ranks(board):
    server, sweep_id, runs = board
    path = f"{server.entity}/docs/{sweep_id}"
    assert cvsweep("leaderboard", path, "--write-back").exit_code == 0
    first = _expected(runs)
    assert server.runs[first[0].id].summary["sweep_rank"] == 1
    assert server.runs[first[-1].id].summary["sweep_rank"] == len(first)
    # the best run fails after all (say, re-evaluated): it must not keep rank 1
    server.runs[first[0].id].state = "failed"
    assert cvsweep("leaderboard", path, "--write-back").exit_code == 0
    assert "sweep_rank" not in server.runs[first[0].id].summary
    assert server.runs[first[1].id].summary["sweep_rank"] == 1
    assert all(r.summary.get("sweep_rank") is None for r in runs if r.state == "failed")
    summaries = [r for r in server.runs.values() if r.job_type == "sweep-summary"]
    assert len(summaries) == 1 and summaries[0].group == sweep_id and summaries[0].sweep is None
    assert summaries[0].summary["best_run_id"] == first[1].id
    assert summaries[0].state == "finished"
    assert_clean(server)


@pytest.mark.parametrize("verb, state", [("pause", "PAUSED"), ("stop", "FINISHED"), ("cancel", "CANCELED")])
def test_sweep_state_verbs_send_the_full_path(board, verb, state):
    server, sweep_id, _ = board
    res = cvsweep(verb, sweep_id, "--project", "docs")
    assert res.exit_code == 0, res.output + res.stderr
    assert server.sweeps[sweep_id].states == [state]


def test_create_on_wandb_prints_the_full_path_and_the_id_last(wandb_server, tmp_path, monkeypatch):
    monkeypatch.setenv("CVSWEEP_DIR", str(tmp_path / "state"))
    res = cvsweep("create", str(ROOT / "sweeps" / "demo.yaml"), "--project", "p1")
    assert res.exit_code == 0, res.output + res.stderr
    sweep_id = res.stdout.strip().splitlines()[-1]
    assert "backend: wandb (W&B credentials for" in res.stdout
    assert f"cvsweep agent {wandb_server.entity}/p1/{sweep_id}" in res.stdout
    sweep = wandb_server.sweeps[sweep_id]
    assert sweep.project == "p1" and sweep.config["command"][:4] == ["${env}", "${interpreter}", "-m", "cvtrain"]
    assert wandb_server.api_key not in res.stdout + res.stderr
    assert_clean(wandb_server)


def test_write_back_keeps_what_a_run_wrote_after_the_board_was_read(board, monkeypatch):
    """W&B's summary write replaces the whole summary: a rank written from a stale read would undo
    what the run (or anyone) wrote since. Each listing is followed at once by a change on the server."""
    from agent.wandb_backend import WandbStore

    server, sweep_id, runs = board
    edited = _expected(runs)[5]  # finished: its rank is written
    ending = server.add_run("docs", name="late", sweep=sweep_id, state="running", config={"learning_rate": 0.002},
                            summary={"best_val_f1": 0.31, "state": "running"},
                            created_at="2026-11-27T11:00:00.000Z")
    listings = []
    listed = WandbStore._sweep_runs

    def listing_then_change(self, sweep):
        out = listed(self, sweep)
        listings.append(len(listings))
        n = len(listings)
        server.runs[edited.id].summary.update(best_val_f1=0.6 + n / 1000, reason=f"re-evaluated {n}")
        late = server.runs[ending.id]
        late.state = "finished"
        late.summary = {"best_val_f1": 0.5 + n / 1000, "state": "stopped", "stopped": True,
                        "reason": f"stopped after epoch {n}"}
        return out

    monkeypatch.setattr(WandbStore, "_sweep_runs", listing_then_change)
    assert cvsweep("leaderboard", f"{server.entity}/docs/{sweep_id}", "--write-back").exit_code == 0
    n = len(listings)
    assert n >= 2  # the board's read, and the write-back's own
    record = server.runs[edited.id].summary
    assert (record["best_val_f1"], record["reason"], record["sweep_rank"]) == (0.6 + n / 1000, f"re-evaluated {n}", 6)
    late = server.runs[ending.id]
    assert late.summary == {"best_val_f1": 0.5 + n / 1000, "state": "stopped", "stopped": True,
                            "reason": f"stopped after epoch {n}"}
    assert_clean(server)


def test_a_long_runs_history_is_read_whole_not_sampled(wandb_server, monkeypatch, tmp_path):
    """120 batch rows between epoch rows, 100 epochs: 12,100 rows, more than history()'s samples."""
    from agent.wandb_backend import WandbStore

    monkeypatch.setenv("CVSWEEP_DIR", str(tmp_path / "no-local-state"))
    server = wandb_server
    sweep_id = server.add_sweep(SWEEP, project="docs")
    rows, step = [], 0
    for epoch in range(1, 101):
        for _ in range(120):
            rows.append({"_step": step, "batch/loss": 1.0, "global_step": step})
            step += 1
        rows.append({"_step": step, "epoch": epoch, "val_f1": epoch / 100, "best_val_f1": epoch / 100})
        step += 1
    server.add_run("docs", name="long", sweep=sweep_id, config={"learning_rate": 0.001},
                   summary={"best_val_f1": 1.0, "state": "finished"}, history=rows)
    store = WandbStore(project="docs", entity=server.entity)
    (trial,) = store.list_trials(f"{server.entity}/docs/{sweep_id}")
    history = store.epoch_history(trial)
    assert [h["epoch"] for h in history] == list(range(1, 101))
    assert [h["best_val_f1"] for h in history] == [e / 100 for e in range(1, 101)]
    assert_clean(server)
