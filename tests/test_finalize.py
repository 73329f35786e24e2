"""`cvsweep finalize`: from a real local sweep to out-of-fold estimates and a submission, with real workers."""
import csv
import json
import os
import signal
import subprocess
import threading

import numpy as np
import pytest
import yaml

from conftest import PY
from sweep_helpers import cvsweep, cvsweep_env, db_rows, tiny_params, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def parent(tmp_path_factory, demo_dir, cache_dir):
    """A real tiny local sweep: 3 grid trials of 2 epochs on the demo data."""
    from agent.controller import LocalController
    from agent.store import SQLiteStore
    from agent.worker import local_worker_loop

    root = tmp_path_factory.mktemp("finalize-state")
    os.environ["WANDB_MODE"] = "offline"
    store = SQLiteStore(root)
    sweep = LocalController(store).create_sweep({
        "name": "par", "method": "grid", "metric": {"name": "best_val_f1", "goal": "maximize"},
        "parameters": tiny_params(demo_dir, cache_dir, epochs={"value": 2},
                                  learning_rate={"values": [0.003, 0.01, 0.03]})})
    local_worker_loop(sweep.id, "w0", None, threading.Event(), poll=0.1, root=root)
    assert {t.state for t in store.list_trials(sweep.id)} == {"finished"}
    return root, sweep.id


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_finalize_writes_the_submission_and_honest_out_of_fold_estimates(parent, demo_dir, tmp_path):
    from cvtrain.config import mapping_layer, resolve
    from cvtrain.data import load_index, split_indices
    from cvtrain.metrics import macro_f1

    root, sid = parent
    sub = tmp_path / "sub.csv"
    res = cvsweep(["finalize", sid, "--top", "2", "--folds", "3", "-o", str(sub), "--gpus", "none",
                   "--workers", "2", "--tta", "none,rot180"], root)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("oof_macro_f1: ")
    reported = float(last.split(": ")[1])

    sample = _read(demo_dir / "sample_submission.csv")
    rows = _read(sub)
    assert list(rows[0]) == list(sample[0]) and [r["ID"] for r in rows] == [r["ID"] for r in sample]
    assert all(0 <= int(r["target"]) < 17 for r in rows)

    final_id = db_rows(root, "SELECT id FROM sweeps WHERE name='par-final'")[0]["id"]
    trials = db_rows(root, "SELECT * FROM trials WHERE sweep_id=?", (final_id,))
    assert len(trials) == 6 and {t["state"] for t in trials} == {"finished"}
    index = load_index(resolve(mapping_layer({"data_dir": str(demo_dir)}, "t")).data)
    ids = index.image_ids()
    oof = {}
    for t in trials:
        out = t["output_dir"]
        cfg = resolve(mapping_layer(yaml.safe_load(open(f"{out}/config.yaml")), "saved"))
        assert cfg.data.folds == 3 and cfg.data.split_seed == 0 and cfg.experiment.tta == ["none", "rot180"]
        tr, _ = split_indices(index.labels, cfg.data, cfg.experiment.seed)
        held = _read(f"{out}/val_predictions.csv")
        # the fold's own training images never appear in its out-of-fold predictions
        assert not ({r["ID"] for r in held} & {ids[j] for j in tr})
        key = json.dumps(json.loads(t["params"])["candidate"], sort_keys=True)
        for r in held:
            assert (key, r["ID"]) not in oof
            oof[(key, r["ID"])] = (int(r["target"]), np.array([float(r[f"p{c}"]) for c in range(17)]))
        assert [r["ID"] for r in _read(f"{out}/test_predictions.csv")] == [r["ID"] for r in sample]
    keys = sorted({k for k, _ in oof})
    assert len(keys) == 2 and all(sum(1 for k, _ in oof if k == key) == len(ids) for key in keys)
    y = np.array([oof[(keys[0], i)][0] for i in ids])
    ens = np.mean([[oof[(k, i)][1] for i in ids] for k in keys], axis=0)
    assert reported == pytest.approx(macro_f1(y, ens.argmax(1)), abs=1e-6)

    final = json.loads((root / "sweeps" / sid / "final.json").read_text())
    assert final["oof_macro_f1"] == pytest.approx(reported, abs=1e-6) and len(final["finalists"]) == 2
    assert final["final_sweep"] == final_id and len(final["confusion"]) == 17
    arts = list((root / "sweeps" / sid / "wandb").glob("offline-run-*"))
    assert arts, "the submission is logged to an offline W&B run beside the parent sweep"

    page = cvsweep(["report", sid, "-o", str(tmp_path / "r.html")], root)
    assert page.returncode == 0, page.stderr
    html = (tmp_path / "r.html").read_text()
    assert "id='final'" in html and f"{reported:.4f}" in html and 'id="final-confusion"' in html


def test_running_finalize_again_retries_a_fold_that_failed(parent, tmp_path):
    """A grid never suggests a point twice: the rerun itself must queue the failed fold again."""
    import sqlite3

    root, sid = parent
    args = ["finalize", sid, "--top", "1", "--folds", "2", "-o", str(tmp_path / "sub.csv"), "--gpus", "none",
            "--workers", "1"]
    assert cvsweep(args, root).returncode == 0
    final_id = db_rows(root, "SELECT sweep_id FROM trials WHERE params LIKE '%\"folds\": 2%' LIMIT 1")[0]["sweep_id"]
    victim = db_rows(root, "SELECT id, output_dir FROM trials WHERE sweep_id=? ORDER BY id LIMIT 1", (final_id,))[0]
    (tmp_path / "gone").mkdir()
    os.replace(f"{victim['output_dir']}/val_predictions.csv", tmp_path / "gone" / "val_predictions.csv")
    conn = sqlite3.connect(root / "cvsweep.db")
    with conn:
        conn.execute("UPDATE trials SET state='failed', error='RuntimeError: CUDA out of memory' WHERE id=?",
                     (victim["id"],))
    conn.close()
    again = cvsweep(args, root)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "(resumed)" in again.stdout and again.stdout.strip().splitlines()[-1].startswith("oof_macro_f1: ")
    assert db_rows(root, "SELECT state FROM trials WHERE id=?", (victim["id"],))[0]["state"] == "finished"
    assert (tmp_path / "sub.csv").exists() and os.path.exists(f"{victim['output_dir']}/val_predictions.csv")


def test_a_killed_fold_worker_is_requeued_and_the_ensemble_still_completes(tmp_path, demo_dir, cache_dir):
    from agent.controller import LocalController
    from agent.store import SQLiteStore

    root = tmp_path / "state"
    store = SQLiteStore(root)
    ctl = LocalController(store)
    # The parent's training is not under test here: one finished trial with long training.
    sweep = ctl.create_sweep({"name": "long", "method": "grid", "metric": {"name": "best_val_f1", "goal": "maximize"},
                              "parameters": tiny_params(demo_dir, cache_dir, epochs={"value": 25},
                                                        learning_rate={"values": [0.01]})})
    t = ctl.claim(sweep.id, "w").trial
    ctl.finish(t.id, "finished", {"best_val_f1": 0.5}, owner=t.owner)
    store.close()
    proc = subprocess.Popen([PY, "-m", "agent", "finalize", sweep.id, "--top", "1", "--folds", "2", "--gpus", "none",
                             "--workers", "1", "-o", str(tmp_path / "sub.csv")],
                            env=cvsweep_env(root, CVSWEEP_LEASE_SECONDS="3"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)

    def running_with_history():
        rows = db_rows(root, "SELECT t.id, t.worker, COUNT(h.epoch) AS n FROM trials t JOIN history h "
                             "ON h.trial_id=t.id WHERE t.state='running' AND t.sweep_id!=? GROUP BY t.id", (sweep.id,))
        return [r for r in rows if r["n"] >= 2]

    row = wait_for(running_with_history, timeout=240, every=0.05, what="a running fold trial")[0]
    os.kill(int(row["worker"].split(":")[1]), signal.SIGKILL)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    assert "restarting" in out and "resuming from" in out
    assert out.strip().splitlines()[-1].startswith("oof_macro_f1: ")
    killed = db_rows(root, "SELECT state, attempts FROM trials WHERE id=?", (row["id"],))[0]
    assert killed["state"] == "finished" and killed["attempts"] == 1
    assert len(_read(tmp_path / "sub.csv")) == len(_read(demo_dir / "sample_submission.csv"))
