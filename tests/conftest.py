import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-test-0123456789abcdef0123456789abcdef01234567"  # a fake API key that must never be written


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """Every test: offline W&B under tmp, no stray settings from the developer's shell."""
    for var in list(os.environ):
        if var.startswith(("CVTRAIN_", "CVSWEEP_")) or var in (
                "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_RUN_ID", "WANDB_PROJECT", "WANDB_ENTITY",
                "WANDB_TAGS", "WANDB_RUN_GROUP"):
            monkeypatch.delenv(var, raising=False)
    if not os.environ.get("CVSWEEP_LIVE_TESTS"):
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-root"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    from cvtrain.demo_data import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("demo") / "data", per_class=5, test_per_class=2, seed=1)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("decoded-cache")


@pytest.fixture
def tiny(demo_dir, cache_dir, tmp_path):
    """A resolved config for a fast CPU run on the demo data."""
    from cvtrain.config import mapping_layer, resolve

    def make(**over):
        base = dict(data_dir=str(demo_dir), model_name="test_resnet", img_size=32, batch_size=16, epochs=2,
                    learning_rate=0.003, num_workers=0, cache_dir=str(cache_dir), progress=False,
                    output_dir=str(tmp_path / "out"), mode="offline", system_interval=0.5)
        base.update(over)
        return resolve(mapping_layer(base, "test"))

    return make


def files_under(*roots):
    for root in roots:
        for p in Path(root).rglob("*"):
            if p.is_file():
                yield p


def assert_secret_absent(*roots, secret=SECRET):
    hits = [str(p) for p in files_under(*roots) if secret.encode() in p.read_bytes()]
    assert not hits, f"API key written to: {hits}"


PY = sys.executable


@pytest.fixture
def wandb_server(tmp_path, monkeypatch):
    """A stand-in W&B server on 127.0.0.1 (tests/wandb_server.py); wandb's client online against it."""
    from wandb_server import serve_wandb

    yield from serve_wandb(tmp_path, monkeypatch)


@pytest.fixture
def wandb_server_netrc(tmp_path, monkeypatch):
    """The same, credentials only in $HOME/.netrc (HOME under tmp), as after `wandb login`."""
    from wandb_server import serve_wandb

    yield from serve_wandb(tmp_path, monkeypatch, netrc=True)
