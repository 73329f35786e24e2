"""One validation split per sweep: trials that differ in `seed` are ranked on the same images."""
import csv

import pytest
import yaml
from sweep_helpers import cvsweep, db_rows, tiny_params

from agent.store import seed_from_id
from cvtrain.cli import ParsedArgs, build_config


def _val_ids(out_dir):
    with open(f"{out_dir}/val_predictions.csv", newline="") as f:
        return sorted(r["ID"] for r in csv.DictReader(f))


@pytest.mark.slow
def test_two_trials_of_a_local_sweep_with_different_seeds_validate_on_the_same_images(tmp_path, demo_dir, cache_dir):
    state = tmp_path / "state"
    cfg = {"name": "seeds", "method": "grid", "metric": {"name": "best_val_f1", "goal": "maximize"},
           "parameters": tiny_params(demo_dir, cache_dir, seed={"values": [1, 2]}, save_predictions={"value": True})}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(cfg))
    made = cvsweep(["create", str(tmp_path / "sweep.yaml"), "--backend", "local", "--seed", "7"], state)
    assert made.returncode == 0, made.stderr
    sweep_id = made.stdout.strip().splitlines()[-1]
    res = cvsweep(["agent", sweep_id, "--gpus", "none", "--workers", "1"], state)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    rows = db_rows(state, "SELECT output_dir, state FROM trials")
    assert len(rows) == 2 and {r["state"] for r in rows} == {"finished"}
    saved = [yaml.safe_load(open(f"{r['output_dir']}/config.yaml")) for r in rows]
    assert sorted(s["seed"] for s in saved) == [1, 2]
    assert [s["split_seed"] for s in saved] == [7, 7]  # the sweep's stored seed
    assert saved[0]["split"] == saved[1]["split"] and saved[0]["split"]["split_seed"] == 7
    a, b = (_val_ids(r["output_dir"]) for r in rows)
    assert a == b and len(a) == saved[0]["split"]["n_val"]


def test_under_a_wandb_sweep_the_split_seed_comes_from_the_sweep_id_unless_the_sweep_sets_it(tmp_path):
    params = tmp_path / "config-run1.yaml"
    params.write_text(yaml.safe_dump({"seed": {"value": 5}}))
    env = {"WANDB_SWEEP_ID": "abc123", "WANDB_SWEEP_PARAM_PATH": str(params)}
    cfg = build_config(ParsedArgs(env_file=None), env, check_model=False)
    assert cfg.experiment.seed == 5 and cfg.data.split_seed == seed_from_id("abc123")
    params.write_text(yaml.safe_dump({"seed": {"value": 5}, "split_seed": {"value": 11}}))
    assert build_config(ParsedArgs(env_file=None), env, check_model=False).data.split_seed == 11
    # A plain run keeps following its seed.
    assert build_config(ParsedArgs(env_file=None), {}, check_model=False).data.split_seed is None


def test_a_runs_config_records_the_split_it_used_and_reads_back(tiny):
    from cvtrain.config import mapping_layer, resolve
    from cvtrain.engine import train

    a = train(tiny(epochs=1, seed=1, mode="disabled"))
    b = train(tiny(epochs=1, seed=2, mode="disabled", output_dir=str(a.output_dir) + "-b"))
    sa, sb = (yaml.safe_load((r.output_dir / "config.yaml").read_text()) for r in (a, b))
    assert sa["split"]["split_seed"] == 1 and sb["split"]["split_seed"] == 2  # a plain run: its seed
    assert sa["split"]["n_val"] == sb["split"]["n_val"] and sa["split"]["val_ids_sha1"] != sb["split"]["val_ids_sha1"]
    assert resolve(mapping_layer(sa, "saved")).experiment.seed == 1  # the record is a fact, not a setting
