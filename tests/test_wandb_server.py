"""wandb's real client, unchanged, against the stand-in W&B server (tests/wandb_server.py).

These tests pin what the server must answer and document how wandb 0.31
behaves on the wire; the product's own wire tests build on them.
"""

import os

import pytest

wandb = pytest.importorskip("wandb")


def assert_clean(server):
    """Every request was understood and authenticated with the server's key."""
    assert server.auth, "no request reached the server"
    server.assert_clean()


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
    assert wandb_server.runs["resumable"].state == "running"
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


# --------------------------------------------------------------------------- sweeps and agents

SWEEP = {"method": "random", "metric": {"name": "best_val_f1", "goal": "maximize"},
         "parameters": {"learning_rate": {"min": 1e-5, "max": 1e-2}, "amp": {"values": [True, False]}}}


def test_wandb_sweep_registers_the_config_and_returns_its_id(wandb_server):
    sweep_id = wandb.sweep(SWEEP, project="proj", entity=wandb_server.entity)

    sweep = wandb_server.sweeps[sweep_id]
    assert (sweep.entity, sweep.project, sweep.state) == (wandb_server.entity, "proj", "RUNNING")
    # wandb fills `distribution` for min/max pairs before sending the YAML
    assert sweep.config["parameters"]["learning_rate"] == {"min": 1e-5, "max": 1e-2, "distribution": "uniform"}
    assert sweep.config["metric"] == SWEEP["metric"]
    # a side effect product code must expect: wandb.sweep exports the project/entity to os.environ
    assert os.environ["WANDB_PROJECT"] == "proj" and os.environ["WANDB_ENTITY"] == wandb_server.entity
    assert_clean(wandb_server)


def test_in_process_agent_runs_each_queued_trial_with_its_parameters(wandb_server, monkeypatch):
    from wandb_server import fast_agents

    fast_agents(monkeypatch)
    sweep_id = wandb_server.add_sweep(SWEEP, project="proj")
    queued = [wandb_server.queue_run(sweep_id, {"learning_rate": 1e-4, "amp": True, "opt": {"name": "adamw"}}),
              wandb_server.queue_run(sweep_id, {"learning_rate": 3e-3, "amp": False, "opt": {"name": "sgd"}})]
    seen = []

    def trial():
        run = wandb.init()
        seen.append((run.id, run.sweep_id, dict(run.config)))
        run.log({"best_val_f1": 0.5})

    wandb_server.cancel_after(sweep_id, 60)
    wandb.agent(f"{wandb_server.entity}/proj/{sweep_id}", function=trial, count=2)

    assert [s[0] for s in seen] == queued
    assert {s[1] for s in seen} == {sweep_id}
    assert seen[0][2] == {"learning_rate": 1e-4, "amp": True, "opt": {"name": "adamw"}}
    assert seen[1][2] == {"learning_rate": 3e-3, "amp": False, "opt": {"name": "sgd"}}
    for run_id in queued:
        record = wandb_server.runs[run_id]
        assert (record.sweep, record.state, record.history[-1]["best_val_f1"]) == (sweep_id, "finished", 0.5)
    assert_clean(wandb_server)


def test_in_process_stop_is_a_bare_exception_injected_into_the_trial_thread(wandb_server, monkeypatch):
    """pyagent stops a trial with PyThreadState_SetAsyncExc(thread, Exception): a plain `Exception()`
    raised wherever the trial's thread happens to be; then it calls wandb.finish(exit_code=1), so
    the stopped run is `failed` on W&B unless the trial finished it first."""
    import threading

    from wandb_server import fast_agents

    fast_agents(monkeypatch)
    sweep_id = wandb_server.add_sweep(SWEEP, project="proj")
    run_id = wandb_server.queue_run(sweep_id, {"learning_rate": 1e-3, "amp": False})
    caught = {}

    def trial():
        run = wandb.init()
        caught["thread"] = threading.current_thread()
        wandb_server.stop_run(run.id)
        try:
            for step in range(200):
                run.log({"best_val_f1": step / 200})
                threading.Event().wait(0.05)
        except Exception as exc:  # noqa: BLE001 - what pyagent raises is exactly this
            caught["exc"] = exc
            caught["step"] = step
            raise

    wandb_server.cancel_after(sweep_id, 60)
    wandb.agent(sweep_id, function=trial, entity=wandb_server.entity, project="proj", count=1)

    assert type(caught["exc"]) is Exception and caught["exc"].args == ()
    assert caught["thread"] is not threading.main_thread()
    assert caught["step"] < 200
    record = wandb_server.runs[run_id]
    assert (record.state, record.exitcode) == ("failed", 1)
    assert [c["type"] for c in wandb_server.agents[record.agent].sent] == ["run", "stop"]
    assert_clean(wandb_server)


def test_a_requeued_run_comes_back_as_resume_with_the_same_id(wandb_server, monkeypatch):
    from wandb_server import fast_agents

    fast_agents(monkeypatch)
    sweep_id = wandb_server.add_sweep(SWEEP, project="proj")
    run_id = wandb_server.queue_run(sweep_id, {"learning_rate": 1e-3, "amp": False})
    seen = []

    def trial():
        run = wandb.init(resume="allow")
        seen.append((run.id, dict(run.config)))
        run.log({"best_val_f1": len(seen) / 10})
        if len(seen) == 1:
            run.mark_preempting()
            run.finish(exit_code=143)
            wandb_server.requeue_run(run.id)

    wandb_server.cancel_after(sweep_id, 60)
    wandb.agent(sweep_id, function=trial, entity=wandb_server.entity, project="proj", count=2)

    assert seen == [(run_id, {"learning_rate": 1e-3, "amp": False})] * 2
    record = wandb_server.runs[run_id]
    assert record.state == "finished" and [row["best_val_f1"] for row in record.history] == [0.1, 0.2]
    assert [c["type"] for c in wandb_server.agents[record.agent].sent] == ["run", "resume"]
    assert_clean(wandb_server)


TRIAL = '''\
import json, os, signal, sys, threading, time

# SIGTERM is blocked in every thread and taken by sigwaitinfo, which also says who sent it.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
got = {}
def wait_for_sigterm():
    info = signal.sigwaitinfo({signal.SIGTERM})
    got.update(signal=info.si_signo, sender=info.si_pid)
threading.Thread(target=wait_for_sigterm, daemon=True).start()
import wandb

run = wandb.init()
record = {"argv": sys.argv[1:], "run_id": run.id, "sweep_id": run.sweep_id, "config": dict(run.config),
          "env": {k: os.environ.get(k) for k in ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH",
                                                 "WANDB_API_KEY")}}
for step in range(int(os.environ.get("TRIAL_STEPS", "2"))):
    if "signal" in got and not os.environ.get("TRIAL_IGNORE_SIGTERM"):
        break
    run.log({"best_val_f1": step / 100})
    time.sleep(0.1)
record["signal"] = got.get("signal")
record["sent_by_parent"] = got.get("sender") == os.getppid()  # the agent is the trial's parent
run.summary["stopped"] = "signal" in got
with open(os.path.join(os.environ["TRIAL_OUT"], run.id + ".json"), "w") as f:
    json.dump(record, f)
run.finish()
'''


def cli_sweep(server, tmp_path, monkeypatch, steps):
    """A sweep whose program is TRIAL (run with this interpreter); its records land in tmp_path/out."""
    import sys

    program = tmp_path / "trial.py"
    program.write_text(TRIAL)
    (tmp_path / "out").mkdir()
    monkeypatch.setenv("TRIAL_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("TRIAL_STEPS", str(steps))
    config = dict(SWEEP, program=str(program), command=["${env}", sys.executable, "${program}", "${args}"])
    return server.add_sweep(config, project="proj")


def trial_record(tmp_path, run_id):
    import json

    return json.loads((tmp_path / "out" / f"{run_id}.json").read_text())


def test_cli_agent_runs_the_program_and_a_stop_arrives_as_sigterm(wandb_server, tmp_path, monkeypatch):
    import subprocess

    from wandb_server import agent_cli

    sweep_id = cli_sweep(wandb_server, tmp_path, monkeypatch, steps=600)
    run_id = wandb_server.queue_run(sweep_id, {"learning_rate": 1e-4, "amp": False, "opt": {"name": "adamw"}})
    agent = subprocess.Popen(agent_cli(f"{wandb_server.entity}/proj/{sweep_id}", poll_interval=1),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wandb_server.wait_for(lambda: wandb_server.runs[run_id].history, 60, "the trial's first metrics")
        wandb_server.stop_run(run_id)
        wandb_server.wait_for(lambda: wandb_server.runs[run_id].finished, 30, "the stopped trial to finish")
        wandb_server.finish_sweep(sweep_id)  # no more work: the next heartbeat says exit
        output, _ = agent.communicate(timeout=30)
    finally:
        agent.kill()
    assert agent.returncode == 0, output

    record = trial_record(tmp_path, run_id)
    assert record["signal"] == 15  # SIGTERM, to the child's pid (its own process group)
    assert record["sent_by_parent"] is True
    assert record["argv"] == ["--learning_rate=0.0001", "--amp=False", "--opt={'name': 'adamw'}"]
    assert record["config"] == {"learning_rate": 1e-4, "amp": False, "opt": {"name": "adamw"}}
    assert (record["run_id"], record["sweep_id"]) == (run_id, sweep_id)
    assert record["env"]["WANDB_SWEEP_ID"] == sweep_id and record["env"]["WANDB_RUN_ID"] == run_id
    assert record["env"]["WANDB_SWEEP_PARAM_PATH"].endswith(f"sweep-{sweep_id}/config-{run_id}.yaml")
    server_run = wandb_server.runs[run_id]
    assert (server_run.state, server_run.sweep, server_run.summary["stopped"]) == ("finished", sweep_id, True)
    sent = wandb_server.agents[server_run.agent].sent
    assert [c["type"] for c in sent] == ["run", "stop", "exit"]
    assert_clean(wandb_server)


def test_cli_agent_with_netrc_login_gives_the_child_no_key_and_its_run_is_still_online(
        wandb_server_netrc, tmp_path, monkeypatch):
    import subprocess

    from wandb_server import agent_cli

    server = wandb_server_netrc
    sweep_id = cli_sweep(server, tmp_path, monkeypatch, steps=2)
    run_id = server.queue_run(sweep_id, {"learning_rate": 1e-3, "amp": True})
    subprocess.run(agent_cli("--count", "1", sweep_id, "--project", "proj", "--entity", server.entity,
                             poll_interval=1), timeout=60, check=True, capture_output=True)

    record = trial_record(tmp_path, run_id)
    assert record["env"]["WANDB_API_KEY"] is None  # the agent never passes the key on
    assert server.runs[run_id].state == "finished" and len(server.runs[run_id].history) == 2
    assert_clean(server)


def test_cli_agent_kills_a_trial_that_outlives_the_kill_delay(wandb_server, tmp_path, monkeypatch):
    """The stop command is repeated on every heartbeat while the agent still reports the run;
    once WANDB_AGENT_KILL_DELAY (default 30 s) has passed since the SIGTERM, the agent SIGKILLs."""
    import subprocess

    from wandb_server import agent_cli

    sweep_id = cli_sweep(wandb_server, tmp_path, monkeypatch, steps=600)
    monkeypatch.setenv("TRIAL_IGNORE_SIGTERM", "1")
    monkeypatch.setenv("WANDB_AGENT_KILL_DELAY", "2")
    run_id = wandb_server.queue_run(sweep_id, {"learning_rate": 1e-3, "amp": True})
    agent = subprocess.Popen(agent_cli("--count", "1", f"{wandb_server.entity}/proj/{sweep_id}", poll_interval=1),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wandb_server.wait_for(lambda: wandb_server.runs[run_id].history, 60, "the trial's first metrics")
        wandb_server.stop_run(run_id)
        output, _ = agent.communicate(timeout=60)
    finally:
        agent.kill()

    assert "Kill: " + run_id in output
    assert not (tmp_path / "out" / f"{run_id}.json").exists()  # killed before it could write anything
    sent = [c["type"] for c in wandb_server.agents[wandb_server.runs[run_id].agent].sent]
    assert sent[0] == "run" and sent.count("stop") >= 3
    # nothing reports the killed trial's end: it stays "running" until W&B's heartbeat timeout
    assert (wandb_server.runs[run_id].state, wandb_server.runs[run_id].exitcode) == ("running", None)
    wandb_server.expire_run(run_id)
    assert wandb_server.runs[run_id].state == "crashed"
    assert_clean(wandb_server)


@pytest.mark.slow
def test_cli_agent_unmodified_heartbeats_every_five_seconds(wandb_server, tmp_path, monkeypatch):
    import subprocess

    from wandb_server import agent_cli

    sweep_id = cli_sweep(wandb_server, tmp_path, monkeypatch, steps=2)
    run_id = wandb_server.queue_run(sweep_id, {"learning_rate": 1e-3, "amp": True})
    subprocess.run(agent_cli("--count", "1", f"{wandb_server.entity}/proj/{sweep_id}"), timeout=90, check=True,
                   capture_output=True)

    assert wandb_server.runs[run_id].state == "finished"
    times = {request: t for t, request in reversed(wandb_server.timeline)}  # first time of each
    assert times["Heartbeat"] - times["CreateAgent"] > 4.5  # the agent waits a poll interval first
    assert_clean(wandb_server)


@pytest.mark.parametrize("flag, state", [("--pause", "PAUSED"), ("--stop", "FINISHED"), ("--cancel", "CANCELED")])
def test_sweep_state_commands_reach_the_server(wandb_server, flag, state):
    from click.testing import CliRunner
    from wandb.cli.cli import cli

    sweep_id = wandb_server.add_sweep(SWEEP, project="proj")
    result = CliRunner().invoke(cli, ["sweep", flag, f"{wandb_server.entity}/proj/{sweep_id}"])

    assert result.exit_code == 0, result.output
    assert wandb_server.sweeps[sweep_id].states == [state]
    assert_clean(wandb_server)


# --------------------------------------------------------------------------- public API


def seed_sweep_with_runs(server, count=120, names=7):
    sweep_id = server.add_sweep(SWEEP, project="proj")
    for i in range(count):
        server.add_run("proj", name=f"lr-{i % names}", sweep=sweep_id, config={"learning_rate": i / 1000},
                       summary={"best_val_f1": i / count, "nested": {"epoch": i}},
                       history=[{"_step": s, "best_val_f1": s / 10, "loss": 1 - s / 10} for s in range(3)],
                       state="finished" if i % 5 else "failed")
    server.add_run("proj", name="lr-0", config={"learning_rate": 0.5})  # same project, not in the sweep
    return sweep_id


def test_api_sweep_runs_come_back_in_pages_of_ten_with_unique_ids(wandb_server):
    sweep_id = seed_sweep_with_runs(wandb_server)

    sweep = wandb.Api().sweep(f"{wandb_server.entity}/proj/{sweep_id}")
    runs = list(sweep.runs)

    assert (sweep.id, sweep.state, sweep.config["metric"]) == (sweep_id, "RUNNING", SWEEP["metric"])
    assert len(runs) == 120 and len({run.id for run in runs}) == 120
    assert len({run.name for run in runs}) == 7  # display names collide; ids do not
    assert wandb_server.requests.count("Runs") == 12  # Sweep.runs pages by 10 (per_page=10)
    assert sum(run.state == "failed" for run in runs) == 24
    assert_clean(wandb_server)


def test_api_run_config_summary_history_and_update_round_trip(wandb_server):
    from wandb.apis.public.summary import HTTPSummary, SummarySubDict

    sweep_id = seed_sweep_with_runs(wandb_server, count=12)
    run = list(wandb.Api().sweep(f"{wandb_server.entity}/proj/{sweep_id}").runs)[3]
    lazy_loads = wandb_server.requests.count("Run")

    assert run.config == {"learning_rate": 0.003}
    assert wandb_server.requests.count("Run") == lazy_loads + 1  # lazy runs: config costs a request each
    assert isinstance(run.summary, HTTPSummary) and not isinstance(run.summary, dict)
    assert isinstance(run.summary["nested"], SummarySubDict) and run.summary["nested"]["epoch"] == 3
    assert run.summary["best_val_f1"] == 3 / 12
    assert run.history(pandas=False) == wandb_server.runs[run.id].history
    assert run.history(keys=["loss"], pandas=False) == [{"_step": s, "loss": 1 - s / 10} for s in range(3)]

    run.summary["reason"] = "stopped: hyperband"
    run.update()

    assert wandb_server.runs[run.id].summary["reason"] == "stopped: hyperband"
    assert wandb_server.runs[run.id].summary["nested"] == {"epoch": 3}
    assert wandb_server.runs[run.id].params == {"learning_rate": 0.003}
    assert_clean(wandb_server)


def test_api_runs_filters_by_sweep_and_orders_by_summary(wandb_server):
    sweep_id = seed_sweep_with_runs(wandb_server, count=30)
    api = wandb.Api()

    runs = api.runs(f"{wandb_server.entity}/proj", filters={"sweep": sweep_id, "state": "finished"},
                    order="-summary_metrics.best_val_f1")
    values = [run.summary["best_val_f1"] for run in runs]

    assert len(values) == 24 and values == sorted(values, reverse=True)
    assert api.sweep(f"{wandb_server.entity}/proj/{sweep_id}").best_run().summary["best_val_f1"] == 29 / 30
    assert_clean(wandb_server)


def test_api_sweep_path_needs_entity_and_project(wandb_server):
    """`entity/id` is read as project/id: the sweep is looked up in project `entity` and not found."""
    sweep_id = wandb_server.add_sweep(SWEEP, project="proj")
    api = wandb.Api()

    assert api.sweep(f"{wandb_server.entity}/proj/{sweep_id}").id == sweep_id
    with pytest.raises(wandb.errors.CommError, match="Could not find sweep"):
        api.sweep(f"{wandb_server.entity}/{sweep_id}")  # looked up as project "tester"
    with pytest.raises(wandb.errors.CommError, match="missing project"):
        api.sweep(sweep_id)


# --------------------------------------------------------------------------- the server itself


def test_unknown_operations_and_missing_credentials_are_recorded_not_hidden(wandb_server):
    import base64
    import json
    import urllib.error
    import urllib.request

    def post(body, key):
        request = urllib.request.Request(f"{wandb_server.url}/graphql", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        if key:
            request.add_header("Authorization", "Basic " + base64.b64encode(f"api:{key}".encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, None

    status, answer = post({"query": "query NoSuchThing { nothing }"}, wandb_server.api_key)
    assert status == 200 and answer["errors"] and wandb_server.unknown_ops == ["NoSuchThing"]
    assert post({"query": "query Viewer { viewer { id } }"}, None)[0] == 401
    assert "unauthorized:graphql" in wandb_server.requests


def test_heartbeat_answers_follow_the_sweep_state():
    """The server's side of the agent protocol, without a client: one command per heartbeat."""
    import json

    from wandb_server import WandbServer

    server = WandbServer()  # not started: handle_graphql is called directly
    sweep_id = server.add_sweep(SWEEP, project="proj")

    def beat(agent_id, running=()):
        answer = server.handle_graphql({"query": "mutation Heartbeat { agentHeartbeat }", "variables": {
            "id": agent_id, "runState": json.dumps({run_id: True for run_id in running})}}, server.api_key)
        return [(c["type"], c.get("run_id")) for c in json.loads(answer["data"]["agentHeartbeat"]["commands"])]

    agent = server.handle_graphql({"query": "mutation CreateAgent { createAgent }", "variables": {
        "host": "h", "sweep": sweep_id, "projectName": "proj", "entityName": server.entity}},
        server.api_key)["data"]["createAgent"]["agent"]["id"]
    first, second = server.queue_run(sweep_id, {"lr": 1}), server.queue_run(sweep_id, {"lr": 2})

    server.set_sweep_state(sweep_id, "PAUSED")
    assert beat(agent) == []
    server.set_sweep_state(sweep_id, "RUNNING")
    assert beat(agent) == [("run", first)]
    server.stop_run(first)
    assert beat(agent, [first]) == [("stop", first)]
    assert beat(agent, [first]) == [("stop", first)]  # again, while the agent still reports it
    assert beat(agent) == [("run", second)]
    server.finish_sweep(sweep_id)
    assert beat(agent, [second]) == []  # finished: no exit while a run is still running
    assert beat(agent) == [("exit", None)]

    other = server.add_sweep(SWEEP, project="proj")
    server.agents[agent].sweep = other
    third = server.queue_run(other, {"lr": 3})
    assert beat(agent) == [("run", third)]
    server.set_sweep_state(other, "CANCELED")
    assert beat(agent, [third]) == [("stop", third)]
    assert beat(agent) == [("exit", None)]
    assert server.unknown_ops == [] and server.errors == []


def test_cancel_from_the_cli_stops_the_running_trial_and_the_agent_exits(wandb_server, tmp_path, monkeypatch):
    import subprocess

    from click.testing import CliRunner
    from wandb.cli.cli import cli
    from wandb_server import agent_cli

    sweep_id = cli_sweep(wandb_server, tmp_path, monkeypatch, steps=600)
    run_id = wandb_server.queue_run(sweep_id, {"learning_rate": 1e-3, "amp": True})
    path = f"{wandb_server.entity}/proj/{sweep_id}"
    agent = subprocess.Popen(agent_cli(path, poll_interval=1), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        wandb_server.wait_for(lambda: wandb_server.runs[run_id].history, 60, "the trial's first metrics")
        assert CliRunner().invoke(cli, ["sweep", "--cancel", path]).exit_code == 0
        output, _ = agent.communicate(timeout=30)
    finally:
        agent.kill()

    assert agent.returncode == 0, output
    assert trial_record(tmp_path, run_id)["signal"] == 15
    assert wandb_server.runs[run_id].state == "finished"
    assert [c["type"] for c in wandb_server.agents[wandb_server.runs[run_id].agent].sent] == ["run", "stop", "exit"]
    assert_clean(wandb_server)
