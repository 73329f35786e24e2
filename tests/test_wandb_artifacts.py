"""Checkpoint artifacts on the wire: no copy in wandb's cache, and files `wandb sync` can trust
after a resume (the stand-in W&B server receives what wandb's real client uploads)."""
import os
import subprocess

import pytest
from conftest import PY

pytestmark = pytest.mark.slow


def _big_files(root, size):
    return [p for p in root.rglob("*") if p.is_file() and p.stat().st_size == size]


def test_an_online_run_uploads_its_checkpoint_without_a_copy_in_wandbs_cache(wandb_server, tiny, tmp_path):
    from cvtrain.engine import train

    result = train(tiny(mode="online", epochs=2, project="docs"))
    best = result.output_dir / "checkpoints" / "best.pt"
    frozen = sorted((result.output_dir / "checkpoints" / "logged").iterdir())
    assert frozen and all(os.path.samefile(f, best) or f.name.startswith("last") for f in frozen)
    record = wandb_server.runs[result.run_id]
    arts = [wandb_server.artifacts[a] for a in record.artifacts if wandb_server.artifacts[a].type == "model"]
    assert arts and all(a.state == "COMMITTED" for a in arts)
    assert arts[0].files == {"best.pt": best.read_bytes()} and "best" in arts[0].aliases
    # wandb-core copies an uploaded file into WANDB_CACHE_DIR unless skip_cache: none here
    assert _big_files(tmp_path / "wandb-cache", best.stat().st_size) == []
    assert wandb_server.unknown_ops == [] and wandb_server.errors == []


def test_a_resumed_offline_run_leaves_every_logged_checkpoint_syncable(tiny, tmp_path, monkeypatch):
    """Preempted after epoch 2 (its last.pt logged), resumed to epoch 4 (last.pt replaced twice),
    then `wandb sync` of both offline runs: each artifact uploads the bytes it recorded."""
    from cvtrain import checkpoint as ckpt
    from cvtrain.engine import train

    cfg = dict(epochs=4, mode="offline", project="docs", run_id="resumable1", learning_rate=0.01,
               keep_checkpoints="all")  # the ended run keeps last.pt too: it is read below
    cut = train(tiny(**cfg), reporter=lambda e, m: "preempt" if e == 2 else None)
    assert cut.state == "preempted"
    logged = cut.output_dir / "checkpoints" / "logged"
    first = {p.name: p.read_bytes() for p in logged.iterdir()}
    done = train(tiny(**cfg), resume="auto")
    assert done.state == "finished" and done.history[-1]["epoch"] == 4
    assert ckpt.read(done.output_dir / "checkpoints" / "last.pt")["state"]["epoch"] == 4
    assert {p.name: p.read_bytes() for p in logged.iterdir() if p.name in first} == first  # never replaced

    from wandb_server import serve_wandb

    gen = serve_wandb(tmp_path / "sync", monkeypatch)
    server = next(gen)
    try:
        runs = sorted(str(p) for p in (tmp_path / "wandb-root" / "wandb").glob("offline-run-*"))
        assert len(runs) == 2
        proc = subprocess.run([PY, "-m", "wandb", "sync", "--project", "docs", *runs], capture_output=True,
                              text=True, timeout=300, env=dict(os.environ))
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        uploaded = {}
        for art in server.artifacts.values():
            assert art.state == "COMMITTED", art
            if art.type != "model":
                continue
            uploaded.update({(art.metadata or {}).get("epoch"): b for b in art.files.values()})
        for name, data in first.items():  # e.g. last-epoch2.pt: what the preempted run logged
            epoch = int(name.split("epoch")[1].split(".")[0])
            assert uploaded[epoch] == data, name
        assert server.unknown_ops == [] and server.errors == []
    finally:
        gen.close()
