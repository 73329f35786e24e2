"""wandb's real client, unchanged, against the stand-in W&B server (tests/wandb_server.py).

These tests pin what the server must answer and document how wandb 0.31
behaves on the wire; the product's own wire tests build on them.
"""

import os

import pytest

wandb = pytest.importorskip("wandb")


def assert_clean(server):
    """Every request was understood and authenticated with the server's key."""
    assert server.unknown_ops == []
    assert server.errors == []
    assert {key for _, key in server.auth} == {server.api_key}


def test_online_run_reaches_the_server_with_history_summary_and_state(wandb_server):
    run = wandb.init(project="proj", name="first", group="g1", tags=["a"], job_type="train",
                     config={"lr": 0.001, "opt": {"name": "adamw"}})
    for step in range(3):
        run.log({"loss": 1.0 / (step + 1), "epoch": step})
    run.summary["best_val_f1"] = 0.75
    run.finish()

    record = wandb_server.runs[run.id]
    assert record.state == "finished" and record.exitcode == 0
    assert [row["loss"] for row in record.history] == [1.0, 0.5, 1.0 / 3]
    assert [row["_step"] for row in record.history] == [0, 1, 2]
    assert record.summary["best_val_f1"] == 0.75 and record.summary["loss"] == 1.0 / 3
    assert record.params == {"lr": 0.001, "opt": {"name": "adamw"}}
    assert (record.display_name, record.group, record.tags, record.job_type) == ("first", "g1", ["a"], "train")
    assert record.project == "proj" and record.entity == wandb_server.entity
    assert "wandb-summary.json" in record.files and "config.yaml" in record.files
    assert_clean(wandb_server)


def test_a_run_finished_with_a_nonzero_exit_code_is_failed(wandb_server):
    run = wandb.init(project="proj")
    run.log({"loss": 1.0})
    run.finish(exit_code=1)

    assert wandb_server.runs[run.id].state == "failed"
    assert wandb_server.runs[run.id].exitcode == 1
    assert_clean(wandb_server)


def test_mark_preempting_reaches_the_file_stream_and_a_resumed_run_continues(wandb_server):
    run = wandb.init(project="proj", id="resumable", resume="allow")
    run.log({"epoch": 0})
    run.mark_preempting()  # sent as `"preempting": true` in a file-stream request
    wandb_server.wait_for(lambda: wandb_server.runs["resumable"].preempting, 10, "preempting flag")
    assert wandb_server.runs["resumable"].state == "preempting"
    run.finish(exit_code=143)
    assert wandb_server.runs["resumable"].state == "preempted"

    run = wandb.init(project="proj", id="resumable", resume="must")  # asks RunResumeStatus first
    run.log({"epoch": 1})
    run.finish()

    record = wandb_server.runs["resumable"]
    assert record.state == "finished"
    assert [(row["_step"], row["epoch"]) for row in record.history] == [(0, 0), (1, 1)]
    assert wandb_server.requests.count("RunResumeStatus") == 2
    assert_clean(wandb_server)


def test_logged_artifact_is_committed_with_its_bytes_and_skip_cache_is_per_file(wandb_server, tmp_path):
    weights = tmp_path / "last.pt"
    weights.write_bytes(os.urandom(2048))
    run = wandb.init(project="proj")
    artifact = wandb.Artifact("model-run", type="model", metadata={"epoch": 3})
    # wandb 0.31: `skip_cache` is an argument of add_file/add_dir, not of log_artifact.
    artifact.add_file(str(weights), policy="immutable", skip_cache=True)
    run.log_artifact(artifact, aliases=["best"]).wait()
    run.finish()

    (record,) = wandb_server.artifacts.values()
    assert (record.name, record.type, record.state) == ("model-run", "model", "COMMITTED")
    assert record.files == {"last.pt": weights.read_bytes()}
    assert b'"last.pt"' in record.manifest
    assert "best" in record.aliases and record.metadata == {"epoch": 3}
    assert wandb_server.runs[run.id].artifacts == [record.id]
    assert not [p for p in (tmp_path / "wandb-cache").rglob("*") if p.is_file() and p.stat().st_size == 2048]
    assert_clean(wandb_server)


def test_an_artifact_file_is_copied_into_the_cache_unless_skip_cache(wandb_server, tmp_path):
    weights = tmp_path / "last.pt"
    weights.write_bytes(os.urandom(3000))
    run = wandb.init(project="proj")
    artifact = wandb.Artifact("model-run", type="model")
    artifact.add_file(str(weights), policy="immutable")
    run.log_artifact(artifact).wait()
    run.finish()

    copies = [p for p in (tmp_path / "wandb-cache").rglob("*") if p.is_file() and p.stat().st_size == 3000]
    assert len(copies) == 1 and copies[0].read_bytes() == weights.read_bytes()
    assert_clean(wandb_server)


def test_credentials_only_in_netrc_authenticate_an_online_run(wandb_server_netrc):
    server = wandb_server_netrc
    assert "WANDB_API_KEY" not in os.environ
    netrc = os.path.join(os.environ["HOME"], ".netrc")
    assert f"machine {server.host}" in open(netrc).read()  # host:port of WANDB_BASE_URL

    run = wandb.init(project="proj")
    run.log({"loss": 0.5})
    run.finish()

    assert server.runs[run.id].state == "finished"
    assert_clean(server)
