"""Check the CUDA path end to end on a machine with an NVIDIA GPU, in one short call (about 2 minutes
on one GPU, 5 at most).

    python scripts/gpu_check.py        # exit 0: every check passed; 1: a check failed; 2: no usable GPU here

What it checks, printing one line per check:
1. Numbering: under a narrowed ``CUDA_VISIBLE_DEVICES`` (the last GPU this process may use, by
   UUID; with two or more, also two GPUs by index in reverse order) torch's ``cuda:i`` is the GPU
   ``cvtrain.gpus.visible_gpus`` names ``gpu/i`` -- UUIDs compared, with the launcher's
   ``CUDA_DEVICE_ORDER=PCI_BUS_ID``.
2. The plan: ``cvsweep agent SWEEP --gpus all --dry-run`` under the narrowing plans one worker, on
   that GPU, and starts nothing.
3. A short local sweep, ``cvsweep agent SWEEP --gpus all`` under the narrowing: resnet18 at 96 px, two
   epochs, AMP bf16 and fp16 (a grid), channels_last, on generated demo data.
4. Each trial finished; its summary.json holds ``gpu/0/...`` peaks; its W&B offline run's history has
   ``gpu/0/...`` rows, and its config says torch trained on the planned GPU. Peak GPU memory per trial
   is reported (NVML's, for the whole device).

On a machine without an NVIDIA GPU it stops at once with exit code 2 and says so.
``GPU_CHECK_ON_CPU=1`` runs the same sweep on the CPU, skipping what needs a GPU: for working on this
script without spending GPU time.
"""
from __future__ import annotations

import json
import os
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.launcher import nvml_view  # noqa: E402
from cvtrain.gpus import Gpu, visible_gpus  # noqa: E402

PY = sys.executable
SWEEP_TIMEOUT_S = 240
PROBE = r"""
import json, os, pynvml, torch
from cvtrain.gpus import nvml_gpus, visible_gpus
pynvml.nvmlInit()
print(json.dumps({
    "torch": [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())],
    "nvml": [g.uuid for g in visible_gpus(os.environ["CUDA_VISIBLE_DEVICES"], nvml_gpus(pynvml)).gpus]}))
"""


class Checks:
    def __init__(self):
        self.failed = 0
        self.passed = 0

    def __call__(self, ok: bool, what: str) -> bool:
        print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        return ok


def bare_uuid(u: str) -> str:
    """NVML says GPU-<hex>/MIG-<hex>, torch prints <hex>."""
    return (u.split("-", 1)[1] if u[:4] in ("GPU-", "MIG-") else u).lower()


def env_for(state: Path, cvd: str | None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), CVSWEEP_DIR=str(state), WANDB_MODE="offline", WANDB_SILENT="true")
    if cvd is not None:
        env["CUDA_VISIBLE_DEVICES"] = cvd
    return env


def cvsweep(args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "agent", *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=env["CVSWEEP_DIR"])


def wandb_records(path: Path):
    """Protobuf records of a W&B run file (.wandb: a LevelDB-style log of 32 KiB blocks after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf, block = path.read_bytes(), 7, b"", 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a record header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


def run_file_facts(path: Path) -> tuple[set[str], list[str] | None]:
    """(history keys, torch's GPU UUIDs from the run config's env) of one offline run."""
    keys: set[str] = set()
    uuids = None
    for rec in wandb_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            keys.update(it.key or "/".join(it.nested_key) for it in rec.history.item)
        elif kind in ("config", "run"):
            items = rec.config.update if kind == "config" else rec.run.config.update
            for it in items:
                if it.key == "env":
                    env = json.loads(it.value_json)
                    env = env.get("value", env) if isinstance(env, dict) else env
                    uuids = env.get("gpu_uuids", uuids)
    return keys, uuids


def sweep_file(work: Path, on_gpu: bool) -> Path:
    params = {
        "data_dir": {"value": str(work / "data")}, "cache_dir": {"value": str(work / "cache")},
        "model_name": {"value": "resnet18"}, "img_size": {"value": 96}, "batch_size": {"value": 32},
        "epochs": {"value": 2}, "learning_rate": {"value": 0.001}, "amp": {"value": True},
        "amp_dtype": {"values": ["bf16", "fp16"]}, "channels_last": {"value": True},
        "device": {"value": "cuda" if on_gpu else "cpu"}, "system_interval": {"value": 0.5},
        "progress": {"value": False}, "log_artifacts": {"value": False},
    }
    if not on_gpu:
        params["model_name"], params["img_size"] = {"value": "test_resnet"}, {"value": 32}
    f = work / "gpu-check.yaml"
    f.write_text(yaml.safe_dump({"name": "gpu-check", "method": "grid", "parameters": params,
                                 "metric": {"name": "best_val_f1", "goal": "maximize"}}))
    return f


def probe(check: Checks, cvd: str, expect: list[Gpu]) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES=cvd, CUDA_DEVICE_ORDER="PCI_BUS_ID")
    res = subprocess.run([PY, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    if not check(res.returncode == 0, f"probe under CUDA_VISIBLE_DEVICES={cvd} ran"):
        print(res.stderr[-2000:])
        return
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    want = [bare_uuid(g.uuid) for g in expect]
    check([bare_uuid(u) for u in seen["torch"]] == want and [bare_uuid(u) for u in seen["nvml"]] == want,
          f"CUDA_VISIBLE_DEVICES={cvd}: torch's cuda:0.. are {seen['torch']}, the metrics' gpu/0.. {seen['nvml']}; "
          f"planned {[g.uuid for g in expect]}")


def preflight(on_cpu: bool):
    """The GPUs to check, or an exit status when there is nothing to check here."""
    visible = visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), nvml_view()).gpus
    if not visible and not on_cpu:
        cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
        why = "NVML sees none" if cvd is None else f"NVML sees none, or CUDA_VISIBLE_DEVICES={cvd!r} hides them"
        print(f"gpu_check: no NVIDIA GPU visible here ({why}). Run it on a machine with a GPU; nothing was checked.",
              file=sys.stderr)
        return 2
    import torch

    if not on_cpu and not torch.cuda.is_available():
        print(f"gpu_check: NVML sees {len(visible)} GPU(s) but torch {torch.__version__} cannot use CUDA "
              f"(torch.version.cuda={torch.version.cuda}); nothing was checked.", file=sys.stderr)
        return 2
    return visible


def check_plan(check: Checks, work: Path, state: Path, target, cvd: str):
    """Step 2: a local sweep and its dry run; the sweep id, or None when it could not be created."""
    from cvtrain.demo_data import make_demo_data

    make_demo_data(work / "data", per_class=16, test_per_class=2, seed=0)
    env = env_for(state, cvd if target else None)
    res = cvsweep(["create", str(sweep_file(work, bool(target))), "--backend", "local"], env, 120)
    if not check(res.returncode == 0, "local sweep created"):
        print(res.stdout[-2000:], res.stderr[-2000:])
        return None
    sid = res.stdout.strip().splitlines()[-1]
    gpus = ["--gpus", "all"] if target else ["--gpus", "none"]
    dry = cvsweep(["agent", sid, *gpus, "--dry-run"], env, 120)
    lines = dry.stdout.splitlines()
    check(dry.returncode == 0 and len(lines) == 1 and (not target or f"CUDA_VISIBLE_DEVICES={cvd} |" in lines[0]
                                                      and target.uuid in lines[0]),
          f"dry run plans one worker on the narrowed GPU: {lines or dry.stderr[-500:]}")
    return sid


def check_trials(check: Checks, db, sid: str, target) -> None:
    """Step 4: what the trials recorded (summaries, W&B runs, and on a GPU its peaks and identity)."""
    rows = db.execute("SELECT name, run_id, state, output_dir, wandb_dir FROM trials WHERE sweep_id=? ORDER BY id",
                      (sid,)).fetchall()
    check(len(rows) == 2, f"{len(rows)} trial(s), 2 expected (bf16 and fp16)")
    for name, run_id, st, out_dir, wandb_dir in rows:
        summary_path = Path(out_dir) / "summary.json"
        if not check(st == "finished" and summary_path.exists(), f"{name}: {st}"):
            continue
        summary = json.loads(summary_path.read_text())
        cfg = yaml.safe_load((Path(out_dir) / "config.yaml").read_text())
        label = f"{name} (amp_dtype={cfg.get('amp_dtype')}, channels_last={cfg.get('channels_last')})"
        runs = list(Path(wandb_dir).glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
        keys, torch_uuids = run_file_facts(runs[0]) if runs else (set(), None)
        check(bool(runs) and any(k.startswith("sys/") for k in keys), f"{label}: W&B offline run with history")
        if not target:
            print(f"skip {label}: GPU checks (on the CPU)")
            continue
        mem, util = summary.get("gpu/0/mem_used_gb_peak"), summary.get("gpu/0/util_peak")
        check(bool(mem) and util is not None and "gpu/1/mem_used_gb_peak" not in summary,
              f"{label}: summary.json has gpu/0 peaks only: peak GPU memory {mem or 0:.2f} GiB "
              f"(NVML, whole device), utilisation peak {util}%")
        check({"gpu/0/mem_used_gb", "gpu/0/util"} <= keys, f"{label}: run history has gpu/0/mem_used_gb, gpu/0/util")
        check([bare_uuid(u) for u in torch_uuids or []] == [bare_uuid(target.uuid)],
              f"{label}: torch trained on {torch_uuids}, planned {target.uuid}")


def main() -> int:
    on_cpu = os.environ.get("GPU_CHECK_ON_CPU") == "1"
    visible = preflight(on_cpu)
    if isinstance(visible, int):
        return visible

    check = Checks()
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    state = work / "state"
    state.mkdir()
    target = visible[-1] if visible else None
    cvd = target.uuid if target else ""
    print(f"gpu_check: working in {work}; " + (f"narrowing to {target.describe()} by CUDA_VISIBLE_DEVICES={cvd}"
                                               if target else "on the CPU (GPU_CHECK_ON_CPU=1)"), flush=True)

    if target:  # 1. numbering
        probe(check, target.uuid, [target])
        if len(visible) >= 2:
            probe(check, f"{visible[-1].token},{visible[0].token}", [visible[-1], visible[0]])

    sid = check_plan(check, work, state, target, cvd)  # 2. the plan
    if sid is None:
        return 1
    db = sqlite3.connect(state / "cvsweep.db")
    check(db.execute("SELECT COUNT(*) FROM trials").fetchone()[0] == 0, "dry run created no trial")

    # 3. the sweep
    gpus = ["--gpus", "all"] if target else ["--gpus", "none"]
    try:
        run = cvsweep(["agent", sid, *gpus], env_for(state, cvd if target else None), SWEEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        check(False, f"sweep finished within {SWEEP_TIMEOUT_S}s")
        return 1
    if not check(run.returncode == 0, f"cvsweep agent --gpus all exited {run.returncode} "
                                      f"({time.monotonic() - t0:.0f}s so far)"):
        print(run.stdout[-3000:], run.stderr[-3000:])

    check_trials(check, db, sid, target)  # 4. what the trials recorded
    print(f"gpu_check: {check.passed} passed, {check.failed} failed in {time.monotonic() - t0:.0f}s; outputs in {work}")
    return 1 if check.failed else 0

if __name__ == "__main__":
    sys.exit(main())
