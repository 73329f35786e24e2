"""`cvsweep finalize`: from a real local sweep to out-of-fold estimates and a submission, with real workers."""
import csv
import json
import os
import signal
import sqlite3
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import PY
from sweep_helpers import cvsweep, cvsweep_env, db_rows, tiny_params, wait_for

pytestmark = pytest.mark.slow

HOLDOUT = 0.15
SHIFT = {"parameters": {"rotate_any": {"value": 0.5}, "brightness": {"value": 1.2}, "blur": {"value": 1.0}}}


@pytest.fixture(scope="module")
def parent(tmp_path_factory, demo_dir, cache_dir):
    """A real tiny local sweep with a holdout, validated on shifted copies too (val_shift): 3 grid trials
    of 2 epochs on the demo data."""
    from agent.controller import LocalController
    from agent.finalize import with_holdout
    from agent.store import SQLiteStore
    from agent.worker import local_worker_loop

    root = tmp_path_factory.mktemp("finalize-state")
    os.environ["WANDB_MODE"] = "offline"
    store = SQLiteStore(root)
    sweep = LocalController(store).create_sweep(with_holdout({
        "name": "par", "method": "grid", "metric": {"name": "best_val_f1", "goal": "maximize"},
        "parameters": tiny_params(demo_dir, cache_dir, epochs={"value": 2},
                                  learning_rate={"values": [0.003, 0.01, 0.03]}, val_shift=SHIFT)}, HOLDOUT))
    local_worker_loop(sweep.id, "w0", None, threading.Event(), poll=0.1, root=root)
    assert {t.state for t in store.list_trials(sweep.id)} == {"finished"}
    return root, sweep.id


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _probs(rows):
    return np.array([[float(r[k]) for k in r if k.startswith("p")] for r in rows])


def _f1(y, pred):
    from sklearn.metrics import f1_score

    return f1_score(y, pred, average="macro", zero_division=0)


def test_finalize_submits_the_selected_ensemble_with_honest_estimates(parent, demo_dir, tmp_path):
    root, sid = parent
    sub = tmp_path / "sub.csv"
    # A setting the parent's trials did not sweep, changed in today's environment: finalize must
    # retrain what was ranked (the trial's saved weight_decay), not what the environment says now.
    res = cvsweep(["finalize", sid, "--top", "2", "--folds", "3", "-o", str(sub), "--gpus", "none",
                   "--workers", "2", "--tta", "none,rot180"], root, CVTRAIN_WEIGHT_DECAY="0.3")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert lines[-1].startswith("oof_macro_f1: ") and any(x.startswith("holdout macro-F1") for x in lines)
    reported = float(lines[-1].split(": ")[1])

    sample = _read(demo_dir / "sample_submission.csv")
    rows = _read(sub)
    assert list(rows[0]) == list(sample[0]) and [r["ID"] for r in rows] == [r["ID"] for r in sample]
    final = json.loads((root / "sweeps" / sid / "final.json").read_text())
    final_id = final["final_sweep"]
    trials = db_rows(root, "SELECT * FROM trials WHERE sweep_id=?", (final_id,))
    assert len(trials) == 6 and {t["state"] for t in trials} == {"finished"}
    parents = {t["name"]: yaml.safe_load(Path(t["output_dir"], "config.yaml").read_text())
               for t in db_rows(root, "SELECT name, output_dir FROM trials WHERE sweep_id=?", (sid,))}
    labels = {r["ID"]: int(r["target"]) for r in _read(demo_dir / "train.csv")}
    runs = [f["run"] for f in final["finalists"]]
    held, shifted, folds, test, holdout, holdout_shift = {}, {}, {}, {}, {}, {}
    for t in trials:
        out = t["output_dir"]
        cfg = yaml.safe_load(Path(out, "config.yaml").read_text())
        run = next(r for r in runs if parents[r]["learning_rate"] == cfg["learning_rate"])
        assert cfg["folds"] == 3 and cfg["tta"] == ["none", "rot180"] and cfg["holdout"] == HOLDOUT
        assert cfg["weight_decay"] == parents[run]["weight_decay"] == 0.05
        single = _read(f"{out}/val_predictions_single.csv")
        summary = json.loads(Path(out, "summary.json").read_text())
        # the final epoch's model, not the best epoch's: its single view scores what the last epoch scored
        assert _f1([int(r["target"]) for r in single], _probs(single).argmax(1)) == pytest.approx(summary["val_f1"])
        tta = _read(f"{out}/val_predictions.csv")
        held.setdefault(run, {}).update({r["ID"]: p for r, p in zip(tta, _probs(tta))})
        shift = _read(f"{out}/val_shift_predictions.csv")   # the held-out fold's shifted copies, same views
        assert [r["ID"] for r in shift] == [r["ID"] for r in tta] and not np.allclose(_probs(shift), _probs(tta))
        shifted.setdefault(run, {}).update({r["ID"]: p for r, p in zip(shift, _probs(shift))})
        folds.setdefault(run, {}).update({r["ID"]: cfg["fold"] for r in tta})
        test.setdefault(run, []).append(_probs(_read(f"{out}/test_predictions.csv")))
        ho = _read(f"{out}/holdout_predictions.csv")
        holdout.setdefault(run, []).append(_probs(ho))
        holdout_ids = [r["ID"] for r in ho]
        hs = _read(f"{out}/holdout_shift_predictions.csv")   # the holdout's shifted copies, same views
        assert [r["ID"] for r in hs] == holdout_ids
        holdout_shift.setdefault(run, []).append(_probs(hs))

    # every image but the holdout held out exactly once, on the same folds for both finalists, stratified
    assert len(holdout_ids) == round(HOLDOUT * len(labels))
    assert sorted(held[runs[0]]) == sorted(set(labels) - set(holdout_ids)) and folds[runs[0]] == folds[runs[1]]
    for c in set(labels.values()):
        per_fold = [sum(1 for i, f in folds[runs[0]].items() if f == k and labels[i] == c) for k in range(3)]
        assert max(per_fold) - min(per_fold) <= 1, (c, per_fold)
    assert final["folds_stratified"] is True and final["oof_views"] == ["none", "rot180"]

    ids = sorted(held[runs[0]])
    y = [labels[i] for i in ids]
    # val_shift on: the weights and the headline figures are on the shifted copies, the clean ones beside
    assert final["selected_on"] == "shifted" and final["tta_choice"] is None
    for probs, figures in ((shifted, final), (held, final["oof_clean"])):
        singles = [_f1(y, np.array([probs[r][i] for i in ids]).argmax(1)) for r in runs]
        equal = np.mean([[probs[r][i] for i in ids] for r in runs], axis=0).argmax(1)
        key = "oof_macro_f1_" if figures is final else ""
        assert figures[key + "best_single"] == pytest.approx(max(singles))
        assert figures[key + "equal"] == pytest.approx(_f1(y, equal))
    assert final["oof_shift"]["selected"] == pytest.approx(reported, abs=1e-6)
    assert any(ln.startswith("  selected ensemble (nested):") and "(clean: " in ln for ln in lines)
    assert final["oof_macro_f1_selected"] == pytest.approx(reported, abs=1e-6) == final["oof_macro_f1"]
    from cvtrain.metrics import macro_f1_from_confusion
    assert macro_f1_from_confusion(final["confusion"]) == pytest.approx(reported, abs=1e-6)
    for name in ("best_single", "equal", "selected"):
        lo, hi = final[f"oof_macro_f1_{name}_ci90"]
        assert lo <= final[f"oof_macro_f1_{name}"] <= hi
    assert 0 <= final["p_selected_beats_best_single"] <= 1

    # the submission and the holdout figure use the chosen weights
    w = final["weights"]
    assert set(w) == set(runs) and sum(w.values()) == pytest.approx(1.0)
    sub_probs = sum(w[r] * np.mean(test[r], axis=0) for r in runs)
    assert [int(r["target"]) for r in rows] == sub_probs.argmax(1).tolist()
    ho_probs = sum(w[r] * np.mean(holdout[r], axis=0) for r in runs)
    assert final["holdout"]["macro_f1"] == pytest.approx(_f1([labels[i] for i in holdout_ids], ho_probs.argmax(1)))
    hs_probs = sum(w[r] * np.mean(holdout_shift[r], axis=0) for r in runs)
    want = _f1([labels[i] for i in holdout_ids], hs_probs.argmax(1))
    assert final["holdout"]["macro_f1_shift"] == pytest.approx(want)
    assert any(x.startswith("holdout macro-F1") and f"(its shifted copies: {want:.4f})" in x for x in lines)
    assert list((root / "sweeps" / sid / "wandb").glob("offline-run-*")), "the submission is logged beside the sweep"

    page = cvsweep(["report", sid, "-o", str(tmp_path / "r.html")], root)
    assert page.returncode == 0, page.stderr
    html = (tmp_path / "r.html").read_text()
    assert "id='final'" in html and f"{reported:.4f}" in html and 'id="final-confusion"' in html
    assert f"{final['oof_macro_f1_equal']:.4f}" in html and "weight" in html


def test_running_finalize_again_queues_failed_and_incomplete_folds(parent, tmp_path):
    """A grid never suggests a point twice: the rerun itself must queue those folds again."""
    root, sid = parent
    args = ["finalize", sid, "--top", "1", "--folds", "2", "-o", str(tmp_path / "sub.csv"), "--gpus", "none",
            "--workers", "1"]
    first = cvsweep(args, root)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    final_id = db_rows(root, "SELECT sweep_id FROM trials WHERE params LIKE '%\"folds\": 2%' LIMIT 1")[0]["sweep_id"]
    _views_chosen_out_of_fold(root, sid, final_id, first.stdout, tmp_path / "sub.csv")
    failed, partial = db_rows(root, "SELECT id, name, output_dir FROM trials WHERE sweep_id=? ORDER BY id",
                              (final_id,))
    os.unlink(f"{failed['output_dir']}/val_predictions.csv")
    test_file = f"{partial['output_dir']}/test_predictions.csv"
    with open(test_file) as f:
        lines = f.readlines()
    with open(test_file, "w") as f:   # cut short, as a full disk would leave it
        f.writelines(lines[: len(lines) // 2])
    conn = sqlite3.connect(root / "cvsweep.db")
    with conn:
        conn.execute("UPDATE trials SET state='failed', error='RuntimeError: CUDA out of memory' WHERE id=?",
                     (failed["id"],))
    conn.close()
    again = cvsweep(args, root)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    out = again.stdout
    assert "(resumed)" in out and out.strip().splitlines()[-1].startswith("oof_macro_f1: ")
    # keep_checkpoints=best deleted their last.pt when they ended: the rerun says they train from the start
    assert f"queued again: {failed['name']}: failed; no last.pt was kept (keep_checkpoints): it trains again" in out
    assert f"queued again: {partial['name']}: {test_file}:" in out
    states = db_rows(root, "SELECT state FROM trials WHERE sweep_id=?", (final_id,))
    assert {r["state"] for r in states} == {"finished"}
    assert os.path.exists(f"{failed['output_dir']}/val_predictions.csv") and len(Path(test_file).read_text().splitlines()) == len(lines)


def _views_chosen_out_of_fold(root, sid, final_id, stdout, sub):
    """No --tta and val_shift on: the views are chosen on the shifted out-of-fold predictions, and the
    submission uses them (one finalist: its mean over folds of those views' softmax)."""
    final = json.loads((root / "sweeps" / sid / "final.json").read_text())
    choice = final["tta_choice"]
    assert choice["scored_on"] == "shifted" and final["oof_views"] == choice["views"] and choice["views"][0] == "none"
    assert choice["f1"] >= choice["f1_none"] and final["selected_on"] == "shifted" and final["oof_shift"]
    line = next(ln for ln in stdout.splitlines() if ln.startswith("tta auto: views "))
    assert f"{choice['f1']:.4f} on the shifted out-of-fold images" in line and "slightly optimistic" in line
    test = []
    for t in db_rows(root, "SELECT output_dir FROM trials WHERE sweep_id=?", (final_id,)):
        with np.load(Path(t["output_dir"], "view_predictions.npz")) as z:
            names, test_ids = list(z["views"]), list(z["test_ids"])
            test.append(z["test"][[names.index(v) for v in choice["views"]]].mean(0))
            assert len(z["val_shift"]) == len(names) == 6
    rows = _read(sub)
    assert [r["ID"] for r in rows] == test_ids
    assert [int(r["target"]) for r in rows] == np.mean(test, axis=0).argmax(1).tolist()


def test_a_killed_fold_worker_is_requeued_and_the_ensemble_still_completes(tmp_path, demo_dir, cache_dir):
    from agent.controller import LocalController
    from agent.store import SQLiteStore

    root = tmp_path / "state"
    store = SQLiteStore(root)
    ctl = LocalController(store)
    # The parent's training is not under test here: one finished trial with long training.
    sweep = ctl.create_sweep({"name": "long", "method": "grid", "metric": {"name": "best_val_f1", "goal": "maximize"},
                              "parameters": tiny_params(demo_dir, cache_dir, epochs={"value": 10},
                                                        learning_rate={"values": [0.01]})})
    t = ctl.claim(sweep.id, "w").trial
    ctl.finish(t.id, "finished", {"best_val_f1": 0.5}, owner=t.owner)
    store.close()
    # A lease no stalled heartbeat on a loaded machine can outlive; the test ends the killed one's itself.
    proc = subprocess.Popen([PY, "-m", "agent", "finalize", sweep.id, "--top", "1", "--folds", "2", "--gpus", "none",
                             "--workers", "1", "-o", str(tmp_path / "sub.csv")],
                            env=cvsweep_env(root, CVSWEEP_LEASE_SECONDS="900"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)

    def running_with_history():
        rows = db_rows(root, "SELECT t.id, t.worker, COUNT(h.epoch) AS n FROM trials t JOIN history h "
                             "ON h.trial_id=t.id WHERE t.state='running' AND t.sweep_id!=? GROUP BY t.id", (sweep.id,))
        return [r for r in rows if r["n"] >= 2]

    try:
        row = wait_for(running_with_history, timeout=240, every=0.05, what="a running fold trial")[0]
        os.kill(int(row["worker"].split(":")[1]), signal.SIGKILL)
        conn = sqlite3.connect(root / "cvsweep.db")
        with conn:
            conn.execute("UPDATE trials SET lease_expires=0 WHERE id=?", (row["id"],))
        conn.close()
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-3000:]
    assert "restarting" in out and "resuming from" in out
    assert out.strip().splitlines()[-1].startswith("oof_macro_f1: ")
    killed = db_rows(root, "SELECT state, attempts FROM trials WHERE id=?", (row["id"],))[0]
    assert killed["state"] == "finished" and killed["attempts"] == 1
    assert len(_read(tmp_path / "sub.csv")) == len(_read(demo_dir / "sample_submission.csv"))
