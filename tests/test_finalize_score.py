"""Finalize's scoring on arrays (no training): what final.json and the report say, and what is submitted."""
import json

import numpy as np
import pytest

from agent import ensemble as E
from agent.finalize import Finalist, score, with_holdout
from agent.fold_outputs import FoldOutputs
from agent.report import Page
from agent.report_final import final_section, finalist_marks
from agent.store import Sweep


def outputs(seed=0, n=150, c=4):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    eye = np.eye(c)

    def member(strength, n_img, truth):
        return rng.dirichlet(np.ones(c), n_img) + strength * eye[truth] * rng.random((n_img, 1))

    hy = rng.integers(0, c, 30)
    return FoldOutputs(
        ids=[f"img{i}" for i in range(n)], y=y, fold_of=np.arange(n) % 3,
        oof={"tta": np.stack([member(s, n, y) for s in (1.2, 1.0, 0.1)]),
             "single": np.stack([member(s, n, y) for s in (1.0, 0.9, 0.1)])},
        config={"tta": ["none", "rot90"], "stratify": True, "data_dir": "/data", "holdout": 0.1},
        class_names=["a", "b", "c", "d"], test_ids=["t0", "t1"], test=rng.dirichlet(np.ones(c), (3, 2)),
        holdout_ids=[f"h{i}" for i in range(30)], holdout_y=hy,
        holdout=np.stack([member(s, 30, hy) for s in (1.2, 1.0, 0.1)]))


FINALISTS = [Finalist(i + 1, f"run-{i + 1}", None, 0.9 - i / 10, {"learning_rate": 10.0 ** -(i + 2)}) for i in range(3)]
FINAL = Sweep("fin", {"parameters": {"parent_sweep": {"value": "par"}}})


def test_final_json_holds_the_interface_and_the_submission_uses_the_chosen_weights():
    data = outputs()
    result = score(data, FINALISTS, FINAL, 3, n_boot=300)
    j = json.loads(json.dumps(result.to_json(), default=float))
    assert j["folds_stratified"] is True and j["oof_views"] == ["none", "rot90"]
    w = np.array([j["weights"][f.run] for f in FINALISTS])
    assert w.sum() == pytest.approx(1.0)
    assert w.tolist() == E.weights_of(E.greedy_select(data.oof["tta"], data.y)).tolist()
    singles = [E.macro_f1(data.y, p.argmax(1)) for p in data.oof["tta"]]
    assert j["oof_macro_f1_best_single"] == pytest.approx(max(singles))
    assert j["oof_macro_f1_equal"] == pytest.approx(E.macro_f1(data.y, data.oof["tta"].mean(0).argmax(1)))
    nested, _ = E.nested_selection(data.oof["tta"], data.y, data.fold_of)
    assert j["oof_macro_f1_selected"] == j["oof_macro_f1"] == pytest.approx(E.macro_f1(data.y, nested))
    for name in ("best_single", "equal", "selected"):
        lo, hi = j[f"oof_macro_f1_{name}_ci90"]
        assert lo <= j[f"oof_macro_f1_{name}"] <= hi and len(j[f"oof_fold_macro_f1_{name}"]) == 3
    assert np.allclose(result.test_probs, np.tensordot(w, data.test, axes=1))
    want = E.macro_f1(data.holdout_y, np.tensordot(w, data.holdout, axes=1).argmax(1))
    assert j["holdout"] == {"n_images": 30, "macro_f1": pytest.approx(want)}
    assert set(j["oof_single_view"]) == {"best_single", "equal", "selected"}


def test_folds_are_reported_plain_when_a_class_has_a_single_image():
    data = outputs()
    data.y[0] = 3
    data.y[data.y == 3] = 0
    data.y[0] = 3
    result = score(data, FINALISTS, FINAL, 3, n_boot=50)
    assert result.to_json()["folds_stratified"] is False and result.small_classes == {"d": 1}


def test_the_report_shows_weights_estimates_and_ties_with_the_best():
    final = json.loads(json.dumps(score(outputs(), FINALISTS, FINAL, 3, n_boot=300).to_json(), default=float))
    page = Page("t")
    final_section(page, final, "best_val_f1")
    html = page.render()
    for name in ("selected", "equal", "best_single"):
        assert f"{final[f'oof_macro_f1_{name}']:.4f}" in html
        lo, hi = final[f"oof_macro_f1_{name}_ci90"]
        assert f"[{lo:.3f}, {hi:.3f}]" in html
    assert "id='final-estimates'" in html and "Holdout: the submitted ensemble scores" in html
    assert all(f"<td class='num'>{w:.2f}</td>" in html for w in final["weights"].values())
    marks = finalist_marks(final)
    best = max(final["finalists"], key=lambda r: r["oof_macro_f1"])
    assert marks[best["run"]].endswith("best out of fold")
    for r in final["finalists"]:
        if r is not best:
            overlaps = r["oof_macro_f1_ci90"][1] >= best["oof_macro_f1_ci90"][0]
            assert marks[r["run"]].endswith("tied with the best (intervals overlap)" if overlaps else "below the best")


def test_a_sweep_created_with_a_holdout_gives_every_trial_the_same_one():
    cfg = with_holdout({"method": "grid", "parameters": {"epochs": {"value": 1}}}, 0.1)
    assert cfg["parameters"]["holdout"] == {"value": 0.1} and cfg["parameters"]["holdout_seed"] == {"value": 0}
    with pytest.raises(Exception, match="already sets holdout"):
        with_holdout(cfg, 0.2)


def test_create_with_a_holdout_stores_it_with_the_sweep(tmp_path, demo_dir, cache_dir):
    import yaml
    from sweep_helpers import cvsweep, db_rows, tiny_params

    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"name": "h", "method": "grid", "metric": {"name": "best_val_f1", "goal": "maximize"},
                                 "parameters": tiny_params(demo_dir, cache_dir)}))
    res = cvsweep(["create", str(f), "--backend", "local", "--holdout", "0.1"], tmp_path / "state")
    assert res.returncode == 0, res.stderr
    params = json.loads(db_rows(tmp_path / "state", "SELECT config FROM sweeps")[0]["config"])["parameters"]
    assert params["holdout"] == {"value": 0.1} and params["holdout_seed"] == {"value": 0}
    bad = cvsweep(["create", str(f), "--backend", "local", "--holdout", "0.5"], tmp_path / "state")
    assert bad.returncode == 2 and "--holdout" in bad.stderr and "0.5" in bad.stderr
