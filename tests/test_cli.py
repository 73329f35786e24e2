"""The cvsweep commands around a local sweep, through click's runner."""
import json

from click.testing import CliRunner
from conftest import ROOT

from agent.cli import cli
from agent.controller import LocalController
from agent.store import SQLiteStore


def _sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("CVSWEEP_DIR", str(tmp_path / "state"))
    res = CliRunner().invoke(cli, ["create", str(ROOT / "sweeps" / "demo.yaml"), "--backend", "local"])
    assert res.exit_code == 0, res.output
    return res.output.strip().splitlines()[-1]


def test_status_pause_resume_stop(tmp_path, monkeypatch):
    sid = _sweep(tmp_path, monkeypatch)
    run = CliRunner().invoke
    out = run(cli, ["status", sid]).output
    assert f"sweep {sid} (local) demo: running" in out and "method bayes" in out and "trials: none yet" in out
    assert run(cli, ["pause", sid]).exit_code == 0
    assert ": paused" in run(cli, ["status", sid]).output
    res = run(cli, ["pause", sid])
    assert res.exit_code == 1 and "is paused; cannot go to paused" in res.output
    assert run(cli, ["resume", sid]).exit_code == 0
    assert run(cli, ["stop", sid]).exit_code == 0
    assert "finished (finished by user)" in run(cli, ["status", sid]).output


def test_runs_lists_and_filters_trials(tmp_path, monkeypatch):
    sid = _sweep(tmp_path, monkeypatch)
    ctl = LocalController(SQLiteStore(tmp_path / "state"))
    a = ctl.claim(sid, "w").trial
    # the demo sweep ranks by the shifted validation; runs shows clean and shifted side by side
    ctl.finish(a.id, "finished", {"best_val_shift_f1": 0.4, "best_val_f1": 0.45}, owner=a.owner)
    b = ctl.claim(sid, "w").trial
    ctl.finish(b.id, "failed", error="RuntimeError: out of memory", owner=b.owner)
    res = CliRunner().invoke(cli, ["runs", sid, "--state", "failed", "--format", "json"])
    rows = json.loads(res.output)
    assert [r["run"] for r in rows] == [b.name] and rows[0]["error"] == "RuntimeError: out of memory"
    text = CliRunner().invoke(cli, ["runs"]).output
    assert a.name in text and b.name in text and "0.4000" in text and "0.4500" in text


def test_unknown_sweep_names_the_fix(tmp_path, monkeypatch):
    _sweep(tmp_path, monkeypatch)
    res = CliRunner().invoke(cli, ["status", "nope1234"])
    assert res.exit_code == 1 and "no sweep 'nope1234'" in res.output and "recent sweeps" in res.output
