"""What every bench section shares: the output line, the child processes' environment, sweeps
made and read back through the local controller's files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the sections import agent and cvtrain from this checkout
PY = sys.executable


def emit(name: str, value) -> None:
    if isinstance(value, float):
        value = f"{value:.4g}"
    print(f"{name}: {value}", flush=True)


def env_for(state: Path | None = None, **extra) -> dict:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(ROOT), WANDB_MODE="offline", WANDB_SILENT="true", **extra)
    env.pop("WANDB_API_KEY", None)
    if state is not None:
        env["CVSWEEP_DIR"] = str(state)
    return env


def sweep_file(work: Path, name: str, data: Path, cache: Path, n: int, epochs: int = 1, img: int = 32,
                model: str = "test_resnet", method: str = "grid") -> Path:
    import yaml

    cfg = {"name": name, "method": method, "metric": {"name": "best_val_f1", "goal": "maximize"},
           "parameters": {"data_dir": {"value": str(data)}, "model_name": {"value": model},
                          "img_size": {"value": img}, "batch_size": {"value": 32}, "epochs": {"value": epochs},
                          "cache_dir": {"value": str(cache)}, "system_interval": {"value": 5.0},
                          "learning_rate": {"values": [round(0.001 + 0.0001 * i, 6) for i in range(n)]}}}
    f = work / f"{name}.yaml"
    f.write_text(yaml.safe_dump(cfg))
    return f


def create(f: Path, state: Path, *extra: str) -> str:
    r = subprocess.run([PY, "-m", "agent", "create", str(f), "--backend", "local", *extra], env=env_for(state),
                       capture_output=True, text=True, check=True)
    return r.stdout.strip().splitlines()[-1]


def trials(state: Path) -> list[dict]:
    import sqlite3

    conn = sqlite3.connect(state / "cvsweep.db")
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute("SELECT * FROM trials ORDER BY id")]
    conn.close()
    return rows


def history(state: Path) -> dict[int, list[dict]]:
    import sqlite3

    conn = sqlite3.connect(state / "cvsweep.db")
    out: dict[int, list[dict]] = {}
    for tid, metrics, at in conn.execute("SELECT trial_id, metrics, reported_at FROM history ORDER BY trial_id, epoch"):
        out.setdefault(tid, []).append({**json.loads(metrics), "reported_at": at})
    conn.close()
    return out


def sweep_mid(spec: dict):
    """A sweep parameter's middle: a range's midpoint, a list's middle value, a fixed value."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return spec["values"][len(spec["values"]) // 2]
    return round((spec["min"] + spec["max"]) / 2, 4)
