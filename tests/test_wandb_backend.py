"""The W&B backend's pure parts (sweep paths) and the choice of backend; the wire is in test_wandb_wire.py.

Live tests at the bottom run only with WANDB_API_KEY and CVSWEEP_LIVE_TESTS=1.
"""

import pytest
from click.testing import CliRunner
from conftest import ROOT

from agent.cli import cli
from agent.wandb_backend import SweepPath, SweepPathError, parse_sweep_path, summary_run_id, sweep_path_from_env


def test_sweep_paths_are_read_as_wandb_agent_reads_them():
    assert parse_sweep_path("abc", default_project="p") == SweepPath("p", "abc", None)
    assert parse_sweep_path("proj/abc") == SweepPath("proj", "abc", None)  # two parts: project/ID, never entity/ID
    assert parse_sweep_path("team/proj/abc") == SweepPath("proj", "abc", "team")
    assert str(parse_sweep_path("abc", project="proj", entity="team")) == "team/proj/abc"
    assert parse_sweep_path("proj/abc", entity="team") == SweepPath("proj", "abc", "team")


def test_a_sweep_path_that_disagrees_with_an_option_is_an_error():
    with pytest.raises(SweepPathError, match="names project 'a' but --project says 'b'"):
        parse_sweep_path("a/abc", project="b")
    with pytest.raises(SweepPathError, match="expected ID, PROJECT/ID or ENTITY/PROJECT/ID"):
        parse_sweep_path("x/y/z/w")
    with pytest.raises(SweepPathError, match="no project"):
        parse_sweep_path("abc")


def test_project_and_entity_default_to_the_wandb_environment():
    env = {"WANDB_PROJECT": "docs", "WANDB_ENTITY": "team"}
    assert str(sweep_path_from_env("abc", None, None, env)) == "team/docs/abc"
    assert str(sweep_path_from_env("abc", None, None, {})) == "cvsweep/abc"
    assert str(sweep_path_from_env("other/abc", None, None, env)) == "team/other/abc"


def test_the_summary_run_id_is_stable_per_sweep():
    assert summary_run_id("abc123") == summary_run_id("abc123") != summary_run_id("abc124")


def test_default_backend_is_local_without_credentials(monkeypatch, tmp_path):
    monkeypatch.setenv("CVSWEEP_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc
    monkeypatch.delenv("WANDB_MODE")
    res = CliRunner().invoke(cli, ["create", str(ROOT / "sweeps" / "demo.yaml")])
    assert res.exit_code == 0, res.output
    assert "backend: local (no W&B credentials for" in res.output
    assert (tmp_path / "state" / "cvsweep.db").exists()


def test_sync_without_credentials_says_what_to_do(monkeypatch, tmp_path):
    from agent.controller import LocalController
    from agent.store import SQLiteStore

    monkeypatch.setenv("CVSWEEP_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    store = SQLiteStore()
    sweep = LocalController(store).create_sweep({"method": "grid", "parameters": {"epochs": {"value": 1}}})
    (store.root / "sweeps" / sweep.id / "wandb" / "offline-run-20261127_000000-abc").mkdir(parents=True)
    res = CliRunner().invoke(cli, ["sync", sweep.id])
    assert res.exit_code == 1 and "no W&B credentials" in res.output and "Nothing was uploaded" in res.output
    assert "wandb login" in res.output


@pytest.mark.parametrize("when", ["while training", "before training began"])
def test_wandbs_injected_exception_becomes_a_stop_and_never_reaches_training(when):
    """wandb.agent stops a trial with pyagent's own _terminate_thread (PyThreadState_SetAsyncExc of a
    bare Exception on the trial function's thread). Training runs elsewhere and sees only a stop."""
    import threading

    from wandb.agents.pyagent import _terminate_thread

    from agent.wandb_worker import WandbWorker

    seen = {"exceptions": [], "kind": None}
    training = threading.Event()

    def train(cfg, resume=None, stop_event=None):
        training.set()
        try:
            while not stop_event.is_set():
                sum(range(1000))  # pure-Python work: an async exception aimed here would land here
            seen["kind"] = stop_event.kind
        except BaseException as exc:  # noqa: BLE001 - what this test is about
            seen["exceptions"].append(exc)
            raise
        return "result"

    worker = WandbWorker(train_fn=train, environ={"CVTRAIN_MODEL_NAME": "test_resnet"}, poll=0.01)
    entered, release = threading.Event(), threading.Event()
    if when == "before training began":
        worker._StopRequest = _held_stop_request(worker._StopRequest, entered, release)
    agent_thread = threading.Thread(target=worker.trial)
    agent_thread.start()
    if when == "while training":
        assert training.wait(30)
    else:
        assert entered.wait(30)  # the agent's thread is inside the trial's first line
    _terminate_thread(agent_thread)
    release.set()  # the exception lands as it returns to Python code, before training could start
    agent_thread.join(30)
    assert not agent_thread.is_alive() and seen["exceptions"] == []
    if when == "while training":
        assert seen["kind"] == "stopped" and worker.last_result == "result"
    else:
        assert not training.is_set() and seen["kind"] is None and worker.last_result is None


def _held_stop_request(cls, entered, release):
    """A StopRequest whose construction waits for the test: the injected exception lands inside it."""

    class Held(cls):
        def __init__(self):
            entered.set()
            release.wait(30)
            super().__init__()
    return Held
