"""Bench section ``shift`` (``python scripts/bench.py --only shift``): does the shifted validation rank
trials as the shifted test set does, how close is the measured profile, what does it cost.

- ``shift_profile_error``: the largest relative error of the profile ``cvsweep shift`` measures on
  the demo data (rotate_any, brightness, blur) against what the demo's generator applied to
  those images (``test_shift.json``: the realised share of turned pages, the mean factor and sigma); ``shift_orientation_accuracy``: the share of test images whose
  not-upright verdict matches the generator's angle (off the axes by more than SKEW_DEG, or a
  quarter turn).
- ``shift_rank_spearman_shifted`` / ``_clean``: a random sweep of ``N_TRIALS`` trials (learning
  rate, label smoothing, the rotate_any / brightness / blur augmentations) ranked by
  ``best_val_shift_f1`` with the measured profile as ``val_shift``; every trial's final model
  predicts the shifted test set (``save_predictions``). The Spearman rank correlation, over the
  trials, of ``best_val_shift_f1`` (resp. ``best_val_f1``) with the macro-F1 on that test set.
- ``val_shift_cost_ratio``: median epoch time of one trial with val_shift over the same trial without.
"""
from __future__ import annotations

import csv
import json
import statistics
import subprocess
from pathlib import Path

N_TRIALS = 8


def _macro_f1(pred_csv: Path, answers: dict[str, int]) -> float:
    from sklearn.metrics import f1_score

    with pred_csv.open(newline="") as f:
        rows = list(csv.reader(f))[1:]
    y_true = [answers[r[0]] for r in rows]
    y_pred = [max(range(len(r) - 1), key=lambda c: float(r[c + 1])) for r in rows]
    return float(f1_score(y_true, y_pred, average="macro"))


def profile_error(data: Path, work: Path, emit) -> dict:
    from cvtrain import shift_stats as S
    from cvtrain.demo_data import TEST_SHIFT_FILE
    from cvtrain.shift import _read, measure_shift, test_paths

    result = measure_shift(data, max_images=200, cache_dir=str(work / "cache"))
    prof = result["test"]["profile"]
    applied = json.loads((data / TEST_SHIFT_FILE).read_text())["applied"]
    # what the generator drew for these images (the realised share and means, not the nominal TEST_SHIFT)
    truth = {"rotate_any": statistics.mean(v["angle"] != 0 for v in applied.values()),
             "brightness": statistics.mean(v["brightness"] for v in applied.values()),
             "blur": statistics.mean(v["blur"] for v in applied.values())}
    errors = {k: abs(prof.get(k, 0.0) - truth[k]) / truth[k] for k in truth}
    emit("shift_profile_measured", json.dumps(prof))
    emit("shift_profile_applied", json.dumps({k: round(v, 4) for k, v in truth.items()}))
    emit("shift_profile_error", max(errors.values()))
    paths = test_paths(data, "test")
    x, sizes = _read(paths, 224, str(work / "cache"))
    flagged = S.image_stats(x, sizes)["not_upright"]
    truth = []
    for p in paths:
        a = applied[Path(p).name]["angle"] % 360
        off = min(a % 90, 90 - a % 90)
        truth.append(off > S.SKEW_DEG or (off <= S.SKEW_DEG and round(a / 90) % 2 == 1))
    emit("shift_orientation_accuracy", sum(bool(f) == t for f, t in zip(flagged, truth)) / len(truth))
    return prof


def rank_correlation(data: Path, work: Path, prof: dict, emit, create, env_for, trials_of, py) -> None:
    import yaml
    from scipy.stats import spearmanr

    state = work / "state-shift"
    cfg = {"name": "shift", "method": "random", "metric": {"name": "best_val_shift_f1", "goal": "maximize"},
           "run_cap": N_TRIALS,
           "parameters": {"data_dir": {"value": str(data)}, "img_size": {"value": 64}, "epochs": {"value": 8},
                          "batch_size": {"value": 32}, "model_name": {"value": "resnet10t"},
                          "cache_dir": {"value": str(work / "cache")}, "system_interval": {"value": 5.0},
                          "save_predictions": {"value": True}, "tta": {"value": ["none"]},
                          "val_shift": {"value": prof},
                          "learning_rate": {"distribution": "log_uniform_values", "min": 3.0e-4, "max": 0.03},
                          "label_smoothing": {"values": [0.0, 0.1]},
                          "augment": {"parameters": {"rotate_any": {"values": [0.0, 0.5, 0.9]},
                                                     "brightness": {"values": [0.0, 0.5]},
                                                     "blur": {"values": [0.0, 0.5]}}}}}
    f = work / "shift.yaml"
    f.write_text(yaml.safe_dump(cfg))
    sid = create(f, state)
    subprocess.run([py, "-m", "agent", "agent", sid, "--gpus", "none", "--workers", "2"], env=env_for(state),
                   check=True, capture_output=True)
    with (data / "test_answers.csv").open(newline="") as fh:
        answers = {r["ID"]: int(r["target"]) for r in csv.DictReader(fh)}
    shifted, clean, test = [], [], []
    for row in trials_of(state):
        out = Path(row["output_dir"])
        summary_path = out / "summary.json"
        if not (out / "test_predictions.csv").is_file() or not summary_path.is_file():
            continue
        s = json.loads(summary_path.read_text())
        shifted.append(s["best_val_shift_f1"])
        clean.append(s["best_val_f1"])
        test.append(_macro_f1(out / "test_predictions.csv", answers))
    emit("shift_rank_workload", f"random sweep, {len(test)} trials x 8 epochs, resnet10t at 64 px, demo shifted test")
    emit("shift_rank_spearman_shifted", spearmanr(shifted, test).statistic)
    emit("shift_rank_spearman_clean", spearmanr(clean, test).statistic)
    emit("shift_test_f1_of_pick_shifted", test[max(range(len(test)), key=lambda i: shifted[i])])
    emit("shift_test_f1_of_pick_clean", test[max(range(len(test)), key=lambda i: clean[i])])


def cost_ratio(data: Path, work: Path, prof: dict, emit) -> None:
    from cvtrain.config import mapping_layer, resolve
    from cvtrain.engine import train

    times = {}
    for name, vs in (("off", {}), ("on", prof)):
        cfg = resolve(mapping_layer(dict(data_dir=str(data), model_name="resnet10t", img_size=64, batch_size=32,
                                         epochs=4, num_workers=0, cache_dir=str(work / "cache"), progress=False,
                                         output_dir=str(work / f"cost-{name}"), mode="disabled", val_shift=vs),
                                    "bench"))
        res = train(cfg)
        times[name] = statistics.median(h["epoch_time"] for h in res.history[1:])
    emit("val_shift_cost_ratio", times["on"] / times["off"])


def bench_shift(work: Path, emit, create, env_for, trials_of, py) -> None:
    from cvtrain.demo_data import make_demo_data

    data = make_demo_data(work / "data-shift", per_class=12, test_per_class=6, seed=21)
    prof = profile_error(data, work, emit)
    cost_ratio(data, work, prof, emit)
    rank_correlation(data, work, prof, emit, create, env_for, trials_of, py)
