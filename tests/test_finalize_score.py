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


VIEWS = ["none", "rot90", "rot180", "rot270", "hflip", "vflip"]


def viewed(seed=0, n=150, c=4):
    """Fold outputs with every view's softmax: on the shifted copies only rot180 sees the truth well
    (most pages came upside down), on the clean images "none" does; member 2 is best shifted, member 0 clean."""
    data = outputs(seed, n, c)
    rng = np.random.default_rng(seed + 1)
    eye = np.eye(c)

    def noise(*shape):
        return rng.dirichlet(np.ones(c), shape[:-1]) if len(shape) == 2 else np.stack(
            [noise(*shape[1:]) for _ in range(shape[0])])

    k, v = 3, len(VIEWS)
    val, shift = noise(k, v, n, c), noise(k, v, n, c)
    for m, (clean_s, shift_s) in enumerate([(2.0, 0.3), (1.0, 0.5), (0.2, 1.5)]):
        val[m, 0] += clean_s * eye[data.y] * rng.random((n, 1))
        shift[m, 2] += shift_s * eye[data.y] * rng.random((n, 1))
    test, hold = noise(k, v, 2, c), noise(k, v, 30, c)
    hold[:, 2] += eye[data.holdout_y]
    data.views = {"names": VIEWS, "val": val, "shift": shift, "test": test, "holdout": hold}
    return data


def test_auto_views_are_chosen_on_the_shifted_oof_and_make_every_array_finalize_uses():
    from agent.finalize_views import apply_views, choose_views, mean_f1

    data = viewed()
    choice = choose_views(data)
    assert choice.views[:2] == ["none", "rot180"] and choice.scored_on == "shifted"
    shift = data.views["shift"]
    assert choice.f1 == pytest.approx(mean_f1(shift, VIEWS, data.y, choice.views))
    assert choice.f1_none == pytest.approx(mean_f1(shift, VIEWS, data.y, ["none"])) and choice.f1 > choice.f1_none
    assert all(mean_f1(shift, VIEWS, data.y, choice.views + [v]) <= choice.f1 for v in VIEWS if v not in choice.views)
    assert 0 <= choice.f1_nested <= 1 and "tta auto: views none, rot180" in choice.describe()
    idx = [VIEWS.index(v) for v in choice.views]
    apply_views(data, choice.views)
    assert np.allclose(data.oof["shift"], shift[:, idx].mean(1))
    assert np.allclose(data.oof["tta"], data.views["val"][:, idx].mean(1))
    assert np.allclose(data.oof["single"], data.views["val"][:, 0])
    assert np.allclose(data.test, data.views["test"][:, idx].mean(1))
    assert np.allclose(data.holdout, data.views["holdout"][:, idx].mean(1))
    del data.views["shift"]
    assert choose_views(data).scored_on == "clean"


def test_the_nested_view_choice_scores_each_fold_with_views_chosen_on_the_others():
    from agent.finalize_views import greedy, nested_f1

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    fold_of = np.arange(60) % 2
    probs = np.stack([np.stack([rng.dirichlet([1, 1], 60) for _ in VIEWS])])
    # rot90 tells the truth on fold 0 only, hflip on fold 1 only: chosen on the other fold, neither helps
    probs[0, 1, fold_of == 0] = np.eye(2)[y[fold_of == 0]]
    probs[0, 4, fold_of == 1] = np.eye(2)[y[fold_of == 1]]
    views, f1, _ = greedy(probs, VIEWS, y)
    pred = np.empty(60, dtype=np.int64)
    for f in (0, 1):
        vs, _, _ = greedy(probs[:, :, fold_of != f], VIEWS, y[fold_of != f])
        held = fold_of == f
        pred[held] = probs[0, [VIEWS.index(v) for v in vs]][:, held].mean(0).argmax(1)
    nested = nested_f1(probs, VIEWS, y, fold_of)
    assert nested == pytest.approx(E.macro_f1(y, pred, 2)) and nested < f1


def test_with_shifted_oof_the_weights_are_selected_on_it_and_the_clean_figures_stay():
    from agent.finalize import score_views

    data = viewed()
    result = score_views(data, FINALISTS, FINAL, 3, n_boot=200)
    j = json.loads(json.dumps(result.to_json(), default=float))
    shift, clean = data.oof["shift"], data.oof["tta"]
    assert j["selected_on"] == "shifted" and j["oof_views"] == j["tta_choice"]["views"] == result.oof_views
    assert set(j["tta_choice"]) >= {"views", "scored_on", "f1", "f1_none", "f1_nested", "note"}
    w = np.array([j["weights"][f.run] for f in FINALISTS])
    assert w.tolist() == E.weights_of(E.greedy_select(shift, data.y)).tolist()
    assert w.tolist() != E.weights_of(E.greedy_select(clean, data.y)).tolist()   # the clean choice differs
    nested, fold_weights = E.nested_selection(shift, data.y, data.fold_of)
    assert j["oof_macro_f1"] == j["oof_macro_f1_selected"] == pytest.approx(E.macro_f1(data.y, nested))
    assert j["oof_shift"]["selected"] == pytest.approx(j["oof_macro_f1"])
    assert j["oof_macro_f1_best_single"] == pytest.approx(max(E.macro_f1(data.y, p.argmax(1)) for p in shift))
    clean_nested = np.empty(len(data.y), dtype=np.int64)
    for f, fw in fold_weights.items():
        clean_nested[data.fold_of == f] = E.combine(clean[:, data.fold_of == f], fw).argmax(1)
    assert j["oof_clean"] == {"best_single": pytest.approx(max(E.macro_f1(data.y, p.argmax(1)) for p in clean)),
                              "equal": pytest.approx(E.macro_f1(data.y, clean.mean(0).argmax(1))),
                              "selected": pytest.approx(E.macro_f1(data.y, clean_nested))}
    from cvtrain.metrics import macro_f1_from_confusion
    assert macro_f1_from_confusion(j["confusion"]) == pytest.approx(j["oof_macro_f1"])
    assert np.allclose(result.test_probs, np.tensordot(w, data.test, axes=1))
    row = j["finalists"][0]
    assert row["oof_macro_f1_clean"] == pytest.approx(E.macro_f1(data.y, clean[0].argmax(1)))
    assert row["oof_macro_f1"] == row["oof_macro_f1_shift"] == pytest.approx(E.macro_f1(data.y, shift[0].argmax(1)))

    page = Page("t")
    final_section(page, j, "best_val_shift_f1")
    html = page.render()
    assert "Views chosen out of fold (--tta auto): none, rot180" in html and "slightly optimistic" in html
    assert f"selected {j['oof_clean']['selected']:.4f}" in html and "shifted copies of the held-out" in html

    from agent.wandb_backend import submission_meta
    meta = json.loads(json.dumps(submission_meta(result), default=float))
    assert meta["weights"] == j["weights"] and meta["oof_views"] == j["oof_views"]
    assert meta["selected_on"] == "shifted" and meta["oof_shift"] == j["oof_shift"]
    assert meta["tta_choice"]["views"] == j["oof_views"] and meta["oof_clean"] == j["oof_clean"]
    assert [f["weight"] for f in meta["finalists"]] == w.tolist()
    assert meta["finalists"][0]["oof_macro_f1_shift"] == row["oof_macro_f1_shift"]


def test_auto_is_the_default_when_every_finalist_validates_on_shifted_copies():
    from agent.finalize import auto_views

    on = [Finalist(1, "a", None, 0.5, {"val_shift": {"blur": 1.0}}), Finalist(2, "b", None, 0.4, {"val_shift": "p.yaml"})]
    off = on[:1] + [Finalist(3, "c", None, 0.3, {"val_shift": {}})]
    assert auto_views(on, None) and not auto_views(off, None) and auto_views(off, "auto")
    assert not auto_views(on, ["none", "rot90"])


def test_finalize_takes_tta_auto_and_names_it_when_the_views_are_wrong(tmp_path):
    from sweep_helpers import cvsweep

    auto = cvsweep(["finalize", "nosuch", "--tta", "auto"], tmp_path / "state")
    assert auto.returncode == 1 and "--tta" not in auto.stderr and "no local sweep 'nosuch'" in auto.stderr
    bad = cvsweep(["finalize", "nosuch", "--tta", "none,auto"], tmp_path / "state")
    assert bad.returncode == 2 and "--tta" in bad.stderr and "or auto" in bad.stderr


def test_a_view_file_whose_rows_do_not_match_its_ids_is_incomplete_not_a_crash(tmp_path):
    """A damaged or foreign view_predictions.npz: the fold trial is queued again (OutputsError), finalize
    never stacks arrays of the wrong length."""
    from agent.fold_outputs import OutputsError, read_views

    views = np.array(["none", "rot90"])
    whole = dict(views=views, val_ids=np.array(["a", "b", "c"]), val_y=np.array([0, 1, 0]),
                 val=np.full((2, 3, 2), 0.5))
    np.savez(tmp_path / "ok.npz", **whole)
    assert read_views(tmp_path / "ok.npz", {})["val"].shape == (2, 3, 2)
    np.savez(tmp_path / "short.npz", **{**whole, "val": np.full((2, 2, 2), 0.5)})
    with pytest.raises(OutputsError, match="val is not"):
        read_views(tmp_path / "short.npz", {})
    with pytest.raises(OutputsError, match="no holdout_ids, holdout_y, holdout"):
        read_views(tmp_path / "ok.npz", {"holdout": 0.1})


def test_the_holdouts_shifted_copies_are_scored_once_with_the_submitted_weights():
    data = outputs(seed=3)
    rng = np.random.default_rng(7)
    data.holdout_shift = rng.dirichlet(np.ones(4), (3, 30))
    result = score(data, FINALISTS, FINAL, 3, n_boot=100)
    w = np.array([f["weight"] for f in result.finalists])
    want = E.macro_f1(data.holdout_y, np.tensordot(w, data.holdout_shift, axes=1).argmax(1))
    assert result.holdout["macro_f1_shift"] == pytest.approx(want)
    assert result.holdout["macro_f1_shift"] != pytest.approx(result.holdout["macro_f1"])
    page = Page("t")
    final_section(page, json.loads(json.dumps(result.to_json(), default=float)), "best_val_shift_f1")
    assert f"{want:.4f} on their shifted copies" in page.render()


def test_finalize_prints_what_the_sweep_varied_and_where_finalists_differ_not_whole_configurations():
    from agent.actions import _distinctive

    parent = Sweep("par", {"parameters": {"learning_rate": {"min": 0.001, "max": 0.1}, "epochs": {"value": 12},
                                          "augment": {"parameters": {"rotate": {"values": [0, 0.5]}}}}})
    base = {"epochs": 12, "weight_decay": 0.05, "augment": {"rotate": 0.5, "flip": 0.3}, "seed": 42}
    fins = [Finalist(1, "a", None, 0.9, {**base, "learning_rate": 0.01, "model_name": "resnet10t"}),
            Finalist(2, "b", None, 0.8, {**base, "learning_rate": 0.02, "model_name": "test_resnet"})]
    assert _distinctive(fins[0], fins, parent) == {"augment": {"rotate": 0.5, "flip": 0.3}, "learning_rate": 0.01,
                                                   "model_name": "resnet10t"}
    assert _distinctive(fins[0], fins[:1], parent) == {"augment": {"rotate": 0.5, "flip": 0.3}, "learning_rate": 0.01}


def test_a_fold_queued_again_says_whether_it_resumes_or_trains_from_the_start(tmp_path):
    from agent.finalize import _restart_note
    from agent.store import Trial

    kept, slimmed = tmp_path / "kept", tmp_path / "slimmed"
    (kept / "checkpoints").mkdir(parents=True)
    (kept / "checkpoints" / "last.pt").write_bytes(b"x")
    (slimmed / "checkpoints").mkdir(parents=True)
    (slimmed / "checkpoints" / "best.pt").write_bytes(b"x")  # keep_checkpoints=best: last.pt deleted at the end
    elsewhere = tmp_path / "ckpts"
    elsewhere.mkdir()
    (elsewhere / "last.pt").write_bytes(b"x")

    def trial(out, **params):
        return Trial(sweep_id="s", name="t", state="failed", params=params, output_dir=str(out))

    assert _restart_note(trial(kept)) == "it resumes from its last.pt"
    assert _restart_note(trial(slimmed)) == "no last.pt was kept (keep_checkpoints): it trains again from the start"
    assert _restart_note(trial(tmp_path / "never-started")) == "no last.pt: it trains again from the start"
    assert _restart_note(trial(slimmed, checkpoint_dir=str(elsewhere))) == "it resumes from its last.pt"
