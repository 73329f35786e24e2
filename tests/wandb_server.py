"""A stand-in W&B server on 127.0.0.1, for running wandb's real client code in tests.

wandb 0.31 sends every network call through its Go sidecar `wandb-core`:
GraphQL as `POST /graphql` (operation named in the query text, basic auth
`api:<key>`), a run's metrics as `POST /files/<entity>/<project>/<run>/file_stream`,
file bytes as `PUT` to the upload URLs this server hands out. The public API
(`wandb.Api()`) and both sweep agents go through the same sidecar, so one HTTP
server answers them all. `WandbServer` keeps what it hears as plain state that
tests read and drive.

Fixtures (tests/conftest.py): `wandb_server` starts a server and points wandb
at it through the environment (`client_env`: WANDB_BASE_URL, WANDB_API_KEY =
`server.api_key`, WANDB_MODE=online, every WANDB_*_DIR under tmp, metrics
flushed every second); `wandb_server_netrc` is the `wandb login` user: no
WANDB_API_KEY, the key only in `$HOME/.netrc` (HOME under tmp). Both call
`wandb.teardown()` before and after and restore all of os.environ (wandb
writes to it). Subprocesses started in the test inherit the environment.

State to read: `runs` (run id -> RunRecord: display_name, config / `params`,
summary, history rows, state, exitcode, preempting, sweep, group, tags,
job_type, files uploaded, artifacts), `sweeps` (id -> SweepRecord: config,
state, `states` set over time), `agents` (id -> AgentRecord: `sent` commands,
heartbeats), `artifacts` (id -> ArtifactRecord: name, type, state, aliases,
files, manifest), `requests`/`timeline` (operation names seen, with times),
`auth` (operation, key used), `unknown_ops`, `errors` (handler crashes);
`assert_clean()` checks the last three.
To drive: `add_sweep`, `add_run` (seed without a client), `queue_run`,
`requeue_run` (a `resume` command), `stop_run`, `set_sweep_state`,
`finish_sweep`, `cancel_after` (a deadline for in-process agents), `expire_run`,
`wait_for(predicate)`. Helpers: `agent_cli`
(argv for the `wandb agent` CLI, optionally with a shorter poll interval),
`fast_agents` (in-process agent heartbeats every 0.2 s).

Operations answered (one handler each; dispatch on the operation name, from
the request's `operationName` or else the query text; the Python side sends
an empty operationName):

  credentials   Viewer, GetViewer, GetDefaultEntity, ServerInfo,
                ServerFeaturesQuery, OrganizationCoreWeaveOrganizationID,
                FetchOrgEntityFromEntity, XXHashDigestsEnabled
  runs          UpsertBucket (wandb-core's create/update, Run.update(),
                HTTPSummary's summary write), RunResumeStatus, RunState,
                QueryRunInfo, CreateRunFiles, MarkRunFilesUploaded, StopRun,
                Run, Runs, RunSampledHistory, RunFullHistory, RunHistoryKeys,
                RunParquetHistory + HistoryPage (wandb-core's scan_history)
  artifacts     ArtifactType, ArtifactByID, CreateArtifact,
                FetchArtifactDigestAlgorithm, CreateArtifactManifest,
                UpdateArtifactManifest, CreateArtifactFiles, CommitArtifact,
                UseArtifact
  sweeps        UpsertSweep (create; and `id` + `state`, which `wandb sweep
                --pause/--resume/--stop/--cancel` sends), UpsertSweepState,
                SweepWithRuns, GetSweep, GetSweepLegacy, GetSweepState,
                SweepConfig, CreateAgent, Heartbeat
  REST          POST /files/<e>/<p>/<run>/file_stream, PUT /upload/...,
                POST /sdk/otel/... (wandb's own telemetry: accepted, ignored)

Anything else is answered with a GraphQL error and appended to `unknown_ops`
(and logged at WARNING): a missing operation fails a test by name instead of
hanging it or panicking wandb-core (an empty `data` makes wandb-core crash on
a nil pointer).

What each scenario sends (as observed; tests/test_wandb_server.py pins them):
- online run (init, log, summary, finish): UpsertBucket (twice and more),
  OrganizationCoreWeaveOrganizationID, ServerFeaturesQuery, file_stream
  (history/summary/output.log lines at offsets; the last one `complete` with
  `exitcode`), CreateRunFiles + PUTs (config.yaml, wandb-summary.json,
  wandb-metadata.json, output.log, requirements.txt, media files).
  `resume=`: RunResumeStatus first. `mark_preempting()`: a file_stream
  request with `"preempting": true`.
- log_artifact: Viewer, ArtifactType, CreateArtifact, CreateArtifactManifest
  (twice), CreateArtifactFiles, PUTs, CommitArtifact; `.wait()` adds
  ArtifactByID. A logged wandb.Table is also a `run_table` artifact.
- wandb.sweep: Viewer, UpsertSweep (config as YAML, `distribution` filled).
- in-process wandb.agent: Viewer, CreateAgent, Heartbeat...; per trial a
  teardown, a fresh Viewer and the run's own calls. No sweep query.
- `wandb agent` CLI: Viewer, SweepWithRuns (reads `command`), CreateAgent,
  Heartbeat...; the child's run as above.
- `wandb sweep --pause ID` etc.: SweepWithRuns, then UpsertSweep(id, state).
- Api().sweep(path).runs: GetSweep, Runs in pages of 10 (lightweight fields),
  then one `Run` per run whose config/summary is read; run.history():
  RunFullHistory (no keys) or RunSampledHistory (keys); run.update():
  UpsertBucket (config, tags...) then UpsertBucket (summaryMetrics).

Run and sweep nodes hold the fields the query names (a field is included when
its name appears in the query text): the lightweight run fragment of
`Api().runs` comes back without config/summaryMetrics, as on W&B.

Heartbeats (`_next_command`):
- At most one command per heartbeat (the in-process agent only reads
  `commands[0]`). A `stop` for a run the agent reports running goes first and
  is repeated while the agent still reports it, as W&B does: the CLI agent
  SIGTERMs on the first and SIGKILLs once WANDB_AGENT_KILL_DELAY (30 s) has
  passed; the in-process agent injects `Exception` into the trial's thread.
- Then queued runs (RUNNING sweeps only), first come first served.
- Otherwise `[]`, or `exit` once the sweep is FINISHED/CANCELED and the agent
  reports nothing running (CANCELED first stops what is running).
- Intervals: the CLI agent waits `wandb_agent.Agent.POLL_INTERVAL` (5 s, no
  env var) before each heartbeat; the in-process agent sleeps
  `pyagent.Agent.HEARTBEAT_SLEEP_SECONDS` (5 s) between them.

Run states: the file stream's `complete` with exit code 0 -> finished, else
failed (preempted if the run flagged `preempting`). A run whose process is
killed stays "running" (nothing reports its end); W&B calls it crashed after
its heartbeats stop, which `expire_run` plays. A queued run stopped before an
agent took it is "killed". Runs are keyed by run id alone (ids are unique
across projects in tests).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import secrets
import string
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import unquote, urlsplit

import yaml

log = logging.getLogger(__name__)

ENTITY = "tester"
_ID_CHARS = string.ascii_lowercase + string.digits
_OP_RE = re.compile(r"\b(query|mutation)\s+([A-Za-z_]\w*)")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _project_number(entity: str, project: str) -> str:
    """W&B's numeric project id (`projectId`, `internalId`): the client calls int() on it."""
    return str(zlib.crc32(f"{entity}/{project}".encode()) % 1_000_000)


def _unb64(text: str) -> str:
    try:
        return base64.b64decode(text.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        return ""


def _loads(value: Any, default: Any = None) -> Any:
    """A JSONString variable: a JSON text, already-parsed JSON, or null."""
    if value is None:
        return default
    if isinstance(value, (dict, list)):
        return value
    return json.loads(value)


def _unwrap(config: dict) -> dict:
    """W&B stores config as {key: {"value": v, "desc": ...}}; tests want {key: v}."""
    return {k: (v["value"] if isinstance(v, dict) and "value" in v else v)
            for k, v in config.items() if k not in ("_wandb", "wandb_version")}


# --------------------------------------------------------------------------- state


@dataclass
class RunRecord:
    """One run as the server holds it. `config` is stored as W&B stores it: {k: {"value": v}}."""

    id: str  # the run id users see (GraphQL `name`)
    entity: str
    project: str
    display_name: str | None = None
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    history: list = field(default_factory=list)  # one dict per logged step
    events: list = field(default_factory=list)  # system metrics rows
    logs: list = field(default_factory=list)  # console lines (output.log)
    state: str = "running"
    exitcode: int | None = None
    preempting: bool = False
    sweep: str | None = None
    group: str | None = None
    job_type: str | None = None
    tags: list = field(default_factory=list)
    notes: str | None = None
    description: str | None = None
    host: str | None = None
    program: str | None = None
    files: dict = field(default_factory=dict)  # name -> bytes uploaded
    artifacts: list = field(default_factory=list)  # ids of artifacts it logged
    used_artifacts: list = field(default_factory=list)
    created_at: str = field(default_factory=_now)
    heartbeat_at: str = field(default_factory=_now)
    upserts: int = 0
    should_stop: bool = False
    agent: str | None = None  # agent the sweep handed it to

    @property
    def storage_id(self) -> str:
        return _b64(f"Run:v1:{self.id}:{self.project}:{self.entity}")

    @property
    def params(self) -> dict:
        """Config values without W&B's wrappers and internal keys."""
        return _unwrap(self.config)

    @property
    def finished(self) -> bool:
        return self.state not in ("running", "pending", "preempting")


@dataclass
class SweepRecord:
    id: str  # the sweep id users see (GraphQL `name`)
    entity: str
    project: str
    config: dict
    config_yaml: str
    state: str = "RUNNING"
    display_name: str | None = None
    description: str | None = None
    created_at: str = field(default_factory=_now)
    queue: list = field(default_factory=list)  # pending "run" commands
    stops: set = field(default_factory=set)  # run ids to stop
    states: list = field(default_factory=list)  # every state it was set to
    agents: list = field(default_factory=list)
    handed_out: list = field(default_factory=list)  # run ids given to agents
    prior_runs: Any = None

    @property
    def storage_id(self) -> str:
        return _b64(f"Sweep:{self.entity}/{self.project}/{self.id}")


@dataclass
class AgentRecord:
    id: str
    sweep: str
    host: str
    created_at: str = field(default_factory=_now)
    heartbeats: int = 0
    running: set = field(default_factory=set)  # run ids it reported running
    sent: list = field(default_factory=list)  # every command it was given


@dataclass
class ArtifactRecord:
    id: str
    name: str  # collection (sequence) name
    type: str
    entity: str
    project: str
    run: str | None
    digest: str
    version: int
    aliases: list = field(default_factory=list)
    metadata: Any = None
    state: str = "PENDING"
    manifest: bytes | None = None
    manifest_id: str | None = None
    files: dict = field(default_factory=dict)  # storage path / name -> bytes
    storage_paths: dict = field(default_factory=dict)  # upload key -> name


# --------------------------------------------------------------------------- server


class GraphQLError(Exception):
    pass


class WandbServer:
    """HTTP stand-in for api.wandb.ai. Start with `start()` (or a `with` block), read `url`."""

    def __init__(self, entity: str = ENTITY, api_key: str | None = None):
        self.entity = entity
        self.api_key = api_key or secrets.token_hex(20)  # 40 characters, like a real key
        self.lock = threading.RLock()
        self.runs: dict[str, RunRecord] = {}
        self.sweeps: dict[str, SweepRecord] = {}
        self.agents: dict[str, AgentRecord] = {}
        self.artifacts: dict[str, ArtifactRecord] = {}
        self.requests: list[str] = []  # operation names / REST kinds, in order
        self.timeline: list[tuple[float, str]] = []  # (seconds since start, request): for timing questions
        self._t0 = time.monotonic()
        self.unknown_ops: list[str] = []
        self.errors: list[str] = []  # handler exceptions (server-side bugs)
        self.auth: list[tuple[str, str | None]] = []  # (operation, key used or None)
        self.features: list[str] = []  # names ServerFeaturesQuery reports enabled
        self.uploads: dict[str, bytes] = {}  # upload path -> bytes
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timers: list[threading.Timer] = []
        self._ops: dict[str, Callable[[dict, str], dict]] = {
            "Viewer": self._op_viewer,
            "GetViewer": self._op_viewer,
            "GetDefaultEntity": self._op_viewer,
            "ServerInfo": self._op_server_info,
            "ServerFeaturesQuery": self._op_server_info,
            "OrganizationCoreWeaveOrganizationID": self._op_entity,
            "FetchOrgEntityFromEntity": self._op_entity,
            "XXHashDigestsEnabled": self._op_entity,
            "UpsertBucket": self._op_upsert_bucket,
            "RunResumeStatus": self._op_run_resume_status,
            "RunState": self._op_project_run,
            "QueryRunInfo": self._op_project_run,
            "Run": self._op_project_run,
            "RunSampledHistory": self._op_project_run,
            "RunFullHistory": self._op_project_run,
            "RunHistoryKeys": self._op_project_run,
            "RunParquetHistory": self._op_project_run,
            "HistoryPage": self._op_project_run,
            "SampledHistoryPage": self._op_project_run,
            "Runs": self._op_runs,
            "CreateRunFiles": self._op_create_run_files,
            "MarkRunFilesUploaded": self._op_mark_run_files_uploaded,
            "StopRun": self._op_stop_run_mutation,
            "ArtifactType": self._op_artifact_type,
            "ArtifactByID": self._op_artifact_by_id,
            "CreateArtifact": self._op_create_artifact,
            "FetchArtifactDigestAlgorithm": self._op_fetch_digest_algorithm,
            "CreateArtifactManifest": self._op_create_artifact_manifest,
            "UpdateArtifactManifest": self._op_update_artifact_manifest,
            "CreateArtifactFiles": self._op_create_artifact_files,
            "CommitArtifact": self._op_commit_artifact,
            "UseArtifact": self._op_use_artifact,
            "UpsertSweep": self._op_upsert_sweep,
            "UpsertSweepState": self._op_upsert_sweep_state,
            "SweepWithRuns": self._op_project_sweep,
            "GetSweep": self._op_project_sweep,
            "GetSweepLegacy": self._op_project_sweep,
            "GetSweepState": self._op_project_sweep,
            "SweepConfig": self._op_project_sweep,
            "CreateAgent": self._op_create_agent,
            "Heartbeat": self._op_heartbeat,
        }

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> "WandbServer":
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="wandb-stand-in", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> "WandbServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def host(self) -> str:
        """`127.0.0.1:<port>`: the netrc machine name wandb looks up for this server."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    # ----------------------------------------------------------------- test drivers

    def add_sweep(self, config: dict, project: str = "proj", entity: str | None = None,
                  state: str = "RUNNING", sweep_id: str | None = None) -> str:
        """Register a sweep without a client (as `wandb sweep` would); returns its id."""
        with self.lock:
            sweep = SweepRecord(id=sweep_id or self._new_id(self.sweeps), entity=entity or self.entity,
                                project=project, config=config, config_yaml=yaml.safe_dump(config), state=state)
            self.sweeps[sweep.id] = sweep
            return sweep.id

    def add_run(self, project: str = "proj", run_id: str | None = None, *, entity: str | None = None,
                config: dict | None = None, summary: dict | None = None, history: list | None = None,
                state: str = "finished", sweep: str | None = None, name: str | None = None,
                **attrs: Any) -> RunRecord:
        """Seed a run as if a client had logged it (config given as plain values)."""
        with self.lock:
            run = RunRecord(id=run_id or self._new_id(self.runs), entity=entity or self.entity, project=project,
                            display_name=name, config={k: {"value": v} for k, v in (config or {}).items()},
                            summary=dict(summary or {}), history=list(history or []), state=state, sweep=sweep,
                            **attrs)
            self.runs[run.id] = run
            return run

    def queue_run(self, sweep_id: str, params: dict, run_id: str | None = None, program: str | None = None) -> str:
        """The next heartbeat of an agent of this sweep hands out a run with these parameters."""
        with self.lock:
            sweep = self.sweeps[sweep_id]
            run_id = run_id or self._new_id(self.runs)
            run = RunRecord(id=run_id, entity=sweep.entity, project=sweep.project, state="pending",
                            sweep=sweep_id, config={k: {"value": v} for k, v in params.items()})
            self.runs[run_id] = run
            sweep.queue.append({"type": "run", "run_id": run_id,
                                "args": {k: {"value": v} for k, v in params.items()},
                                "program": program or sweep.config.get("program")})
            return run_id

    def requeue_run(self, run_id: str) -> None:
        """Hand an existing run out again as a `resume` command (W&B does this for preempted runs);
        both agents treat `resume` like `run`, with the same run id."""
        with self.lock:
            run = self.runs[run_id]
            sweep = self.sweeps[run.sweep]
            args = {k: v for k, v in run.config.items() if k not in ("_wandb", "wandb_version")}
            sweep.queue.append({"type": "resume", "run_id": run_id, "args": args,
                                "program": sweep.config.get("program")})

    def stop_run(self, run_id: str) -> None:
        """The owning agent gets `stop` for this run on its next heartbeat(s); a run still queued
        is taken off the queue instead."""
        with self.lock:
            run = self.runs[run_id]
            run.should_stop = True
            sweep = self.sweeps[run.sweep]
            queued = [c for c in sweep.queue if c["run_id"] == run_id]
            if queued and run.state == "pending":
                sweep.queue = [c for c in sweep.queue if c["run_id"] != run_id]
                run.state = "killed"
            else:
                sweep.stops.add(run_id)

    def set_sweep_state(self, sweep_id: str, state: str) -> None:
        with self.lock:
            sweep = self.sweeps[sweep_id]
            sweep.state = state.upper()
            sweep.states.append(sweep.state)

    def finish_sweep(self, sweep_id: str) -> None:
        """No more runs: once an agent has nothing running, its next heartbeat says `exit`."""
        self.set_sweep_state(sweep_id, "FINISHED")

    def cancel_after(self, sweep_id: str, seconds: float) -> None:
        """A deadline for an in-process agent (which has no timeout of its own): after `seconds`
        the sweep is CANCELED, so its agents are told to stop their runs and exit."""
        timer = threading.Timer(seconds, self.set_sweep_state, (sweep_id, "CANCELED"))
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def expire_run(self, run_id: str) -> None:
        """What W&B does when a run stops heartbeating: crashed, or preempted if it flagged preempting."""
        with self.lock:
            run = self.runs[run_id]
            if not run.finished:
                run.state = "preempted" if run.preempting else "crashed"

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
        """Poll `predicate` (under the lock) until it is truthy; raise with the request log after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not reached in {timeout}s; requests: {self.requests[-30:]}")
            time.sleep(0.05)

    def assert_clean(self) -> None:
        """Every request was understood, handled, and authenticated with `api_key`."""
        with self.lock:
            assert not self.unknown_ops, f"operations the stand-in server does not answer: {self.unknown_ops}"
            assert not self.errors, f"stand-in server handlers failed: {self.errors}"
            others = [(op, key) for op, key in self.auth if key != self.api_key]
            assert not others, f"requests without the server's API key: {others}"

    def run_by_name(self, display_name: str) -> list[RunRecord]:
        with self.lock:
            return [r for r in self.runs.values() if r.display_name == display_name]

    # ----------------------------------------------------------------- helpers

    def _record(self, request: str) -> None:
        self.requests.append(request)
        self.timeline.append((time.monotonic() - self._t0, request))

    def _new_id(self, taken: dict) -> str:
        while True:
            new = "".join(secrets.choice(_ID_CHARS) for _ in range(8))
            if new not in taken:
                return new

    def _run_by_storage_id(self, storage_id: str) -> RunRecord | None:
        text = _unb64(storage_id)
        if text.startswith("Run:v1:"):
            return self.runs.get(text.split(":")[2])
        return None

    def _sweep_by_any_id(self, ident: str) -> SweepRecord | None:
        if ident in self.sweeps:
            return self.sweeps[ident]
        for sweep in self.sweeps.values():
            if sweep.storage_id == ident:
                return sweep
        return None

    def _project_node(self, entity: str | None, project: str | None) -> dict:
        entity = entity or self.entity
        project = project or "uncategorized"
        return {"id": _b64(f"Project:{entity}/{project}"), "name": project,
                "internalId": _project_number(entity, project), "readOnly": False,
                "entity": {"id": _b64(f"Entity:{entity}"), "name": entity}}

    # ----------------------------------------------------------------- dispatch

    def handle_graphql(self, body: dict, key: str | None) -> dict:
        query = body.get("query") or ""
        variables = body.get("variables") or {}
        op = body.get("operationName")
        if not op:
            match = _OP_RE.search(query)
            op = match.group(2) if match else "<anonymous>"
        with self.lock:
            self._record(op)
            self.auth.append((op, key))
            handler = self._ops.get(op)
            if handler is None:
                self.unknown_ops.append(op)
                log.warning("stand-in W&B server: unknown GraphQL operation %s\n%s\nvariables=%s",
                            op, query, json.dumps(variables)[:2000])
                return {"data": None, "errors": [{"message": f"stand-in W&B server: unknown operation {op}"}]}
            try:
                return {"data": handler(variables, query)}
            except GraphQLError as exc:
                return {"data": None, "errors": [{"message": str(exc)}]}
            except Exception as exc:  # a bug here must fail the test, not hang the client
                log.exception("stand-in W&B server: %s failed", op)
                self.errors.append(f"{op}: {exc!r}")
                return {"data": None, "errors": [{"message": f"stand-in W&B server: {op} failed: {exc!r}"}]}

    # ----------------------------------------------------------------- credentials

    def _op_viewer(self, variables: dict, query: str) -> dict:
        return {"viewer": {
            "id": _b64(f"User:{self.entity}"), "name": self.entity, "username": self.entity, "entity": self.entity,
            "email": f"{self.entity}@example.com", "admin": False, "flags": "{}", "deletedAt": None,
            "photoUrl": None, "apiKeys": {"edges": []},
            "teams": {"edges": [{"node": {"name": self.entity}}]},
        }}

    def _op_server_info(self, variables: dict, query: str) -> dict:
        return {"serverInfo": {
            "features": [{"name": name, "isEnabled": True} for name in self.features],
            "cliVersionInfo": {}, "latestLocalVersionInfo": None,
        }}

    def _op_entity(self, variables: dict, query: str) -> dict:
        return {"entity": {"xxhashDigestsEnabled": False, "organization": None}}

    # ----------------------------------------------------------------- runs

    def _op_upsert_bucket(self, variables: dict, query: str) -> dict:
        run = self._run_by_storage_id(variables["id"]) if variables.get("id") else None
        if run is None:
            name = variables.get("name")
            if not name:
                raise GraphQLError("upsertBucket: neither a known id nor a name")
            run = self.runs.get(name)
            inserted = run is None or run.state == "pending"
            if run is None:
                run = RunRecord(id=name, entity=variables.get("entity") or self.entity,
                                project=variables.get("project") or "uncategorized")
                self.runs[name] = run
        else:
            inserted = False
        if "name" in variables and (run.state == "pending" or run.finished):
            # wandb-core's upserts (they name the run; Run.update() and the summary write do not):
            # a process runs it now, for the first time or resumed. They all precede the file
            # stream's final `complete`, so a finished run is not revived by its own last upsert.
            run.state, run.exitcode, run.preempting = "running", None, False
        run.upserts += 1
        run.heartbeat_at = _now()
        if variables.get("entity"):
            run.entity = variables["entity"]
        simple = {"displayName": "display_name", "display_name": "display_name", "groupName": "group",
                  "jobType": "job_type", "notes": "notes", "description": "description", "host": "host",
                  "program": "program"}
        for var, attr in simple.items():
            if variables.get(var) is not None:
                setattr(run, attr, variables[var])
        if variables.get("tags") is not None:
            run.tags = list(variables["tags"])
        if variables.get("config") is not None:
            run.config = _loads(variables["config"], {})
        if variables.get("summaryMetrics") is not None:
            run.summary = _loads(variables["summaryMetrics"], {})
        if variables.get("sweep"):
            sweep = self._sweep_by_any_id(variables["sweep"])
            if sweep is None:
                raise GraphQLError(f"upsertBucket: no sweep {variables['sweep']!r}")
            run.sweep = sweep.id
        if variables.get("state"):
            run.state = variables["state"]
        return {"upsertBucket": {"bucket": self._run_node(run, query, variables), "inserted": inserted}}

    def _op_run_resume_status(self, variables: dict, query: str) -> dict:
        project = self._project_node(variables.get("entity"), variables.get("project"))
        run = self.runs.get(variables["name"])
        bucket = None
        if run is not None and run.state != "pending":
            bucket = {
                "id": run.storage_id, "name": run.id, "displayName": run.display_name,
                "summaryMetrics": json.dumps(run.summary), "logLineCount": len(run.logs),
                "historyLineCount": len(run.history), "eventsLineCount": len(run.events),
                "historyTail": json.dumps([json.dumps(r) for r in run.history[-10:]]),
                "eventsTail": json.dumps([json.dumps(r) for r in run.events[-10:]]),
                "config": json.dumps(run.config), "tags": run.tags, "notes": run.notes,
                "wandbConfig": json.dumps({"t": (run.config.get("_wandb") or {}).get("value", {}).get("t")}),
            }
        return {"model": {**project, "bucket": bucket}}

    def _op_project_run(self, variables: dict, query: str) -> dict:
        name = variables.get("name") or variables.get("run") or variables.get("runName")
        run = self.runs.get(name)
        node = self._run_node(run, query, variables) if run is not None else None
        return {"project": {**self._project_node(variables.get("entity"), variables.get("project")), "run": node}}

    def _run_node(self, run: RunRecord, query: str, variables: dict) -> dict:
        """The run's GraphQL node, holding the fields the query names."""
        sweep = self.sweeps.get(run.sweep) if run.sweep else None
        fields: dict[str, Callable[[], Any]] = {
            "id": lambda: run.storage_id,
            "name": lambda: run.id,
            "displayName": lambda: run.display_name,
            "description": lambda: run.description,
            "notes": lambda: run.notes,
            "tags": lambda: run.tags,
            "state": lambda: run.state,
            "config": lambda: json.dumps(run.config),
            "summaryMetrics": lambda: json.dumps(run.summary),
            "systemMetrics": lambda: json.dumps(run.events[-1] if run.events else {}),
            "group": lambda: run.group,
            "jobType": lambda: run.job_type,
            "sweepName": lambda: run.sweep,
            "commit": lambda: None,
            "readOnly": lambda: False,
            "createdAt": lambda: run.created_at,
            "heartbeatAt": lambda: run.heartbeat_at,
            "updatedAt": lambda: run.heartbeat_at,
            "exitcode": lambda: run.exitcode,
            "shouldStop": lambda: run.should_stop,
            "failed": lambda: run.state == "failed",
            "stopped": lambda: run.should_stop and run.finished,
            "running": lambda: not run.finished,
            "historyLineCount": lambda: len(run.history),
            "historyKeys": lambda: self._history_keys(run),
            "sampledHistory": lambda: self._sampled_history(run, variables),
            "history": lambda: self._full_history(run, variables),
            "parquetHistory": lambda: self._parquet_history(run, variables),
            "events": lambda: [json.dumps(r) for r in run.events][-int(variables.get("samples") or 500):],
            "projectId": lambda: _project_number(run.entity, run.project),
            "project": lambda: self._project_node(run.entity, run.project),
            "user": lambda: {"name": run.entity, "username": run.entity},
            "host": lambda: run.host,
            "sweep": lambda: {"name": sweep.id} if sweep else None,
        }
        return {key: make() for key, make in fields.items() if re.search(rf"\b{key}\b", query)}

    @staticmethod
    def _history_keys(run: RunRecord) -> dict:
        keys: dict[str, dict] = {}
        for row in run.history:
            for k, v in row.items():
                keys.setdefault(k, {"typeCounts": [{"type": type(v).__name__, "count": 0}]})
                keys[k]["typeCounts"][0]["count"] += 1
        last = max((row.get("_step", i) for i, row in enumerate(run.history)), default=-1)
        return {"keys": keys, "lastStep": last}

    @staticmethod
    def _sample(rows: list, samples: int) -> list:
        if samples <= 0 or len(rows) <= samples:
            return list(rows)
        step = len(rows) / samples
        return [rows[int(i * step)] for i in range(samples)]

    def _sampled_history(self, run: RunRecord, variables: dict) -> list:
        specs = variables.get("specs", variables.get("historySpecs", variables.get("spec", [])))
        if isinstance(specs, (str, dict)):
            specs = [specs]
        out = []
        for spec in specs:
            spec = _loads(spec, {})
            keys = spec.get("keys") or []
            # A step range (wandb-core's SampledHistoryPage, scan_history with keys): both ends inclusive,
            # as wandb-core asks for them (pages [k * size, (k + 1) * size - 1], the last ending at the
            # run's last step).
            lo, hi = spec.get("minStep"), spec.get("maxStep")
            history = [row for row in run.history
                       if (lo is None or row.get("_step", -1) >= lo) and (hi is None or row.get("_step", -1) <= hi)]
            if keys:
                rows = [{k: row[k] for k in keys} for row in history if all(k in row for k in keys)]
            else:
                rows = list(history)
            out.append(self._sample(rows, int(spec.get("samples") or 500)))
        return out

    def _full_history(self, run: RunRecord, variables: dict) -> list:
        """``history(samples)`` (the Python client's), or a step range ``history(minStep, maxStep,
        samples: pageSize)`` (wandb-core's HistoryPage, a page of ``scan_history``): whole rows."""
        if "minStep" in variables:  # both ends inclusive (see _sampled_history)
            lo, hi = int(variables["minStep"]), int(variables["maxStep"])
            rows = [row for row in run.history if lo <= row.get("_step", -1) <= hi]
            return [json.dumps(row) for row in rows[:int(variables.get("pageSize") or len(rows))]]
        return [json.dumps(row) for row in self._sample(run.history, int(variables.get("samples") or 500))]

    @staticmethod
    def _parquet_history(run: RunRecord, variables: dict) -> dict:
        """A server that has exported no history to parquet yet: no URLs, every row live."""
        return {"parquetUrls": [], "liveData": [dict(row) for row in run.history]}

    def _op_runs(self, variables: dict, query: str) -> dict:
        filters = _loads(variables.get("filters"), {})
        runs = [r for r in self.runs.values()
                if r.project == variables.get("project") and r.entity == (variables.get("entity") or self.entity)
                and r.state != "pending" and _match(r, filters)]
        runs = _order(runs, variables.get("order") or "+created_at")
        start = int(_unb64(variables["cursor"]).split(":")[1]) + 1 if variables.get("cursor") else 0
        per_page = int(variables.get("perPage") or 50)
        page = runs[start:start + per_page]
        edges = [{"node": self._run_node(r, query, variables), "cursor": _b64(f"cursor:{start + i}")}
                 for i, r in enumerate(page)]
        return {"project": {
            **self._project_node(variables.get("entity"), variables.get("project")),
            "runCount": len(runs),
            "runs": {"edges": edges, "pageInfo": {"endCursor": edges[-1]["cursor"] if edges else None,
                                                  "hasNextPage": start + per_page < len(runs)}},
        }}

    def _op_create_run_files(self, variables: dict, query: str) -> dict:
        run = self.runs.get(variables["run"])
        if run is None:
            return {"createRunFiles": {"runID": None, "uploadHeaders": [], "files": []}}
        base = f"{self.url}/upload/run/{run.entity}/{run.project}/{run.id}/"
        return {"createRunFiles": {
            "runID": run.storage_id, "uploadHeaders": [],
            "files": [{"name": name, "uploadUrl": base + name} for name in variables["files"]],
        }}

    def _op_mark_run_files_uploaded(self, variables: dict, query: str) -> dict:
        return {"markRunFilesUploaded": {"success": True}}

    def _op_stop_run_mutation(self, variables: dict, query: str) -> dict:
        run = self._run_by_storage_id(variables["id"])
        if run is not None:
            run.should_stop = True
        return {"stopRun": {"success": run is not None}}

    # ----------------------------------------------------------------- artifacts

    def _op_create_artifact(self, variables: dict, query: str) -> dict:
        spec = variables.get("input") or variables
        name = spec.get("artifactCollectionName") or spec.get("artifactSequenceName")
        if not name:
            names = spec.get("artifactCollectionNames") or [None]
            name = names[0]
        entity = spec.get("entityName") or self.entity
        project = spec.get("projectName") or "uncategorized"
        same = [a for a in self.artifacts.values() if (a.entity, a.project, a.name) == (entity, project, name)]
        for existing in same:
            if existing.digest == spec.get("digest") and existing.state == "COMMITTED":
                latest = max(same, key=lambda a: a.version)
                return {"createArtifact": {"artifact": {"id": existing.id, "state": existing.state,
                                                        "artifactSequence": {"latestArtifact": {"id": latest.id}}}}}
        art = ArtifactRecord(id=_b64(f"Artifact:{len(self.artifacts) + 1}"), name=name,
                             type=spec.get("artifactTypeName"), entity=entity, project=project,
                             run=spec.get("runName"), digest=spec.get("digest"), version=len(same),
                             aliases=[a.get("alias") for a in spec.get("aliases") or []],
                             metadata=_loads(spec.get("metadata")))
        self.artifacts[art.id] = art
        run = self.runs.get(art.run) if art.run else None
        if run is not None:
            run.artifacts.append(art.id)
        latest = max(same, key=lambda a: a.version) if same else None
        return {"createArtifact": {"artifact": {
            "id": art.id, "state": art.state,
            "artifactSequence": {"latestArtifact": {"id": latest.id} if latest else None}}}}

    def _op_artifact_type(self, variables: dict, query: str) -> dict:
        name, _, version = variables["name"].partition(":")
        entity, project = variables.get("entity") or self.entity, variables.get("project")
        same = [a for a in self.artifacts.values()
                if (a.entity, a.project, a.name) == (entity, project, name) and a.state == "COMMITTED"]
        if version not in ("", "latest"):
            same = [a for a in same if version in a.aliases or version == f"v{a.version}"]
        node = {"artifactType": {"name": same[-1].type}} if same else None
        return {"project": {**self._project_node(entity, project), "artifact": node}}

    def _op_artifact_by_id(self, variables: dict, query: str) -> dict:
        art = self.artifacts.get(variables["id"])
        return {"artifact": self._artifact_node(art) if art else None}

    def _artifact_node(self, art: ArtifactRecord) -> dict:
        project = {"id": _b64(f"Project:{art.entity}/{art.project}"),
                   "internalId": _project_number(art.entity, art.project),
                   "name": art.project, "entity": {"name": art.entity}}
        collection = {"__typename": "ArtifactSequence", "name": art.name, "project": project}
        return {
            "__typename": "Artifact", "id": art.id, "artifactSequence": collection, "versionIndex": art.version,
            "artifactType": {"name": art.type}, "description": None,
            "metadata": json.dumps(art.metadata or {}), "ttlDurationSeconds": -2, "ttlIsInherited": True,
            "tags": [], "historyStep": None, "state": art.state,
            "size": sum(len(b) for b in art.files.values()), "digest": art.digest, "digestAlgorithm": "MANIFEST_MD5",
            "commitHash": art.digest[:20], "fileCount": len(art.storage_paths), "createdAt": _now(),
            "updatedAt": _now(),
            "aliases": [{"__typename": "ArtifactAlias", "id": _b64(f"Alias:{art.id}:{alias}"), "alias": alias,
                         "artifactCollection": collection}
                        for alias in art.aliases + [f"v{art.version}"]],
        }

    def _op_fetch_digest_algorithm(self, variables: dict, query: str) -> dict:
        return {"project": {"artifactType": None}}

    def _manifest_payload(self, art: ArtifactRecord, variables: dict) -> dict:
        art.manifest_id = art.manifest_id or _b64(f"ArtifactManifest:{art.id}")
        file = {"id": _b64(f"File:manifest:{art.id}")}
        if variables.get("includeUpload", True):
            file.update(uploadUrl=f"{self.url}/upload/manifest/{art.id}", uploadHeaders=[])
        return {"artifactManifest": {"id": art.manifest_id, "file": file}}

    def _op_create_artifact_manifest(self, variables: dict, query: str) -> dict:
        art = self.artifacts[variables["artifactID"]]
        return {"createArtifactManifest": self._manifest_payload(art, variables)}

    def _op_update_artifact_manifest(self, variables: dict, query: str) -> dict:
        art = next(a for a in self.artifacts.values() if a.manifest_id == variables["artifactManifestID"])
        return {"updateArtifactManifest": self._manifest_payload(art, variables)}

    def _op_create_artifact_files(self, variables: dict, query: str) -> dict:
        edges = []
        for spec in variables["input"]["artifactFiles"]:
            art = self.artifacts[spec["artifactID"]]
            key = secrets.token_hex(8)
            art.storage_paths[key] = spec["name"]
            edges.append({"node": {
                "storagePath": f"{art.entity}/{art.project}/{key}/{spec['name']}",
                "uploadUrl": f"{self.url}/upload/artifact/{art.id}/{key}", "uploadHeaders": [],
                "uploadMultipartUrls": None, "artifact": {"id": art.id}}})
        return {"createArtifactFiles": {"files": {"edges": edges}}}

    def _op_commit_artifact(self, variables: dict, query: str) -> dict:
        art = self.artifacts[variables["artifactID"]]
        art.state = "COMMITTED"
        return {"commitArtifact": {"artifact": {"id": art.id, "digest": art.digest}}}

    def _op_use_artifact(self, variables: dict, query: str) -> dict:
        spec = variables.get("input") or variables
        run = self.runs.get(spec.get("runName"))
        if run is not None:
            run.used_artifacts.append(spec.get("artifactID"))
        return {"useArtifact": {"artifact": {"id": spec.get("artifactID")}}}

    # ----------------------------------------------------------------- sweeps

    def _op_upsert_sweep(self, variables: dict, query: str) -> dict:
        if variables.get("id"):
            sweep = self._sweep_by_any_id(variables["id"])
            if sweep is None:
                raise GraphQLError(f"upsertSweep: no sweep {variables['id']!r}")
            if variables.get("config"):
                sweep.config_yaml = variables["config"]
                sweep.config = yaml.safe_load(variables["config"])
        else:
            config_yaml = variables.get("config") or "{}"
            sweep = SweepRecord(id=self._new_id(self.sweeps), entity=variables.get("entityName") or self.entity,
                                project=variables.get("projectName") or "uncategorized",
                                config=yaml.safe_load(config_yaml), config_yaml=config_yaml,
                                description=variables.get("description"), display_name=variables.get("displayName"),
                                prior_runs=_loads(variables.get("priorRunsFilters")))
            self.sweeps[sweep.id] = sweep
        if variables.get("state"):
            sweep.state = variables["state"].upper()
            sweep.states.append(sweep.state)
        return {"upsertSweep": {
            "sweep": {"name": sweep.id, "id": sweep.storage_id, "state": sweep.state,
                      "project": self._project_node(sweep.entity, sweep.project)},
            "configValidationWarnings": [],
        }}

    def _op_upsert_sweep_state(self, variables: dict, query: str) -> dict:
        sweep = self._sweep_by_any_id(variables["id"])
        if sweep is None:
            raise GraphQLError(f"upsertSweep: no sweep {variables['id']!r}")
        sweep.state = variables["state"].upper()
        sweep.states.append(sweep.state)
        return {"upsertSweep": {"sweep": {"state": sweep.state}}}

    def _op_project_sweep(self, variables: dict, query: str) -> dict:
        entity, project = variables.get("entity") or self.entity, variables.get("project")
        name = variables.get("sweep") or variables.get("name")
        sweep = self.sweeps.get(name)
        if sweep is not None and (sweep.entity, sweep.project) != (entity, project):
            sweep = None  # W&B looks sweeps up within the project the path names
        node = self._sweep_node(sweep, query, variables) if sweep is not None else None
        return {"project": {**self._project_node(entity, project), "sweep": node}}

    def _sweep_node(self, sweep: SweepRecord, query: str, variables: dict) -> dict:
        runs = [r for r in self.runs.values() if r.sweep == sweep.id and r.state != "pending"]
        fields: dict[str, Callable[[], Any]] = {
            "__typename": lambda: "Sweep",
            "id": lambda: sweep.storage_id,
            "name": lambda: sweep.id,
            "displayName": lambda: sweep.display_name,
            "method": lambda: sweep.config.get("method"),
            "state": lambda: sweep.state,
            "description": lambda: sweep.description,
            "bestLoss": lambda: None,
            "config": lambda: sweep.config_yaml,
            "createdAt": lambda: sweep.created_at,
            "updatedAt": lambda: sweep.created_at,
            "heartbeatAt": lambda: sweep.created_at,
            "earlyStopJobRunning": lambda: False,
            "controller": lambda: None,
            "scheduler": lambda: None,
            "runCount": lambda: len(runs),
            "runCountExpected": lambda: None,
            "runs": lambda: {"edges": [{"node": self._run_node(r, _runs_selection(query), variables)} for r in runs],
                             "pageInfo": {"hasNextPage": False, "endCursor": None}},
        }
        selection = _strip_runs_selection(query)
        return {key: make() for key, make in fields.items()
                if re.search(rf"\b{key}\b", selection) or (key == "runs" and "runs" in query)}

    def _op_create_agent(self, variables: dict, query: str) -> dict:
        sweep = self.sweeps.get(variables["sweep"])
        if sweep is None or sweep.project != variables.get("projectName") or \
                sweep.entity != (variables.get("entityName") or self.entity):
            raise GraphQLError(f"createAgent: no sweep {variables.get('entityName')}/"
                               f"{variables.get('projectName')}/{variables['sweep']}")
        agent = AgentRecord(id=_b64(f"Agent:{len(self.agents) + 1}"), sweep=sweep.id, host=variables.get("host"))
        self.agents[agent.id] = agent
        sweep.agents.append(agent.id)
        return {"createAgent": {"agent": {"id": agent.id}}}

    def _op_heartbeat(self, variables: dict, query: str) -> dict:
        agent = self.agents.get(variables["id"])
        if agent is None:
            raise GraphQLError(f"agentHeartbeat: no agent {variables['id']!r}")
        agent.heartbeats += 1
        agent.running = {run_id for run_id, alive in _loads(variables.get("runState"), {}).items() if alive}
        for run_id in agent.running:
            if run_id in self.runs:
                self.runs[run_id].heartbeat_at = _now()
        command = self._next_command(self.sweeps[agent.sweep], agent)
        commands = [command] if command else []
        agent.sent.extend(commands)
        return {"agentHeartbeat": {"agent": {"id": agent.id}, "commands": json.dumps(commands)}}

    def _next_command(self, sweep: SweepRecord, agent: AgentRecord) -> dict | None:
        if sweep.state == "CANCELED":
            sweep.stops.update(agent.running)
        for run_id in sorted(agent.running & sweep.stops):
            return {"type": "stop", "run_id": run_id}
        if sweep.state == "RUNNING" and sweep.queue:
            command = sweep.queue.pop(0)
            sweep.handed_out.append(command["run_id"])
            self.runs[command["run_id"]].agent = agent.id
            return command
        if sweep.state in ("FINISHED", "CANCELED") and not agent.running:
            return {"type": "exit"}
        return None

    # ----------------------------------------------------------------- REST

    def handle_file_stream(self, entity: str, project: str, run_id: str, body: dict) -> dict:
        with self.lock:
            self._record("file_stream")
            run = self.runs.get(run_id)
            if run is None:
                run = self.runs[run_id] = RunRecord(id=run_id, entity=entity, project=project)
            run.heartbeat_at = _now()
            for name, chunk in (body.get("files") or {}).items():
                offset, lines = chunk.get("offset", 0), chunk.get("content", [])
                if name == "wandb-history.jsonl":
                    _put_lines(run.history, offset, [json.loads(line) for line in lines])
                elif name == "wandb-events.jsonl":
                    _put_lines(run.events, offset, [json.loads(line) for line in lines])
                elif name == "wandb-summary.json":
                    if lines:
                        run.summary = json.loads(lines[-1])
                elif name == "output.log":
                    _put_lines(run.logs, offset, lines)
                else:
                    self.unknown_ops.append(f"file_stream:{name}")
            if body.get("preempting"):
                run.preempting = True
                if not run.finished:
                    run.state = "preempting"
            if body.get("complete"):
                run.exitcode = body.get("exitcode")
                if run.exitcode == 0:
                    run.state = "finished"
                else:
                    run.state = "preempted" if run.preempting else "failed"
            elif run.state == "pending":
                run.state = "running"
            return {"exitcode": None, "limits": {}}

    def handle_upload(self, path: str, data: bytes) -> None:
        with self.lock:
            self._record("upload")
            self.uploads[path] = data
            parts = path.strip("/").split("/")
            if parts[:2] == ["upload", "run"] and len(parts) >= 6:
                run = self.runs.get(parts[4])
                if run is not None:
                    run.files["/".join(parts[5:])] = data
            elif parts[:2] == ["upload", "manifest"]:
                self.artifacts[parts[2]].manifest = data
            elif parts[:2] == ["upload", "artifact"]:
                art = self.artifacts[parts[2]]
                art.files[art.storage_paths.get(parts[3], parts[3])] = data


# --------------------------------------------------------------------------- query helpers


def _put_lines(target: list, offset: int, items: list) -> None:
    """Write items at the file-stream offset (a resent chunk overwrites, it does not duplicate)."""
    for i, item in enumerate(items):
        index = offset + i
        while len(target) < index:
            target.append(None)
        if index < len(target):
            target[index] = item
        else:
            target.append(item)


def _runs_selection(query: str) -> str:
    """The text of the `runs { ... }` block of a sweep query (what its run nodes select)."""
    start = query.find("runs")
    if start < 0:
        return ""
    depth, i = 0, query.find("{", start)
    begin = i
    while i < len(query):
        depth += {"{": 1, "}": -1}.get(query[i], 0)
        if depth == 0:
            return query[begin:i + 1]
        i += 1
    return query[begin:]


def _strip_runs_selection(query: str) -> str:
    block = _runs_selection(query)
    return query.replace(block, "") if block else query


def _run_field(run: RunRecord, key: str) -> Any:
    """A run's value for a W&B filter/order key: sweep, state, name, config.x(.value), summary_metrics.x."""
    plain = {"sweep": run.sweep, "state": run.state, "name": run.id, "displayName": run.display_name,
             "display_name": run.display_name, "group": run.group, "jobType": run.job_type,
             "job_type": run.job_type, "tags": run.tags, "created_at": run.created_at,
             "createdAt": run.created_at, "heartbeat_at": run.heartbeat_at}
    if key in plain:
        return plain[key]
    head, _, rest = key.partition(".")
    if head == "config":
        rest = rest[:-len(".value")] if rest.endswith(".value") else rest
        return run.params.get(rest)
    if head in ("summary_metrics", "summaryMetrics"):
        value: Any = run.summary
        for part in rest.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value
    return None


_FILTER_OPS = {
    "$in": lambda value, arg: value in arg if not isinstance(value, list) else bool(set(value) & set(arg)),
    "$nin": lambda value, arg: value not in arg,
    "$ne": lambda value, arg: value != arg,
    "$eq": lambda value, arg: value == arg,
    "$gt": lambda value, arg: value is not None and value > arg,
    "$gte": lambda value, arg: value is not None and value >= arg,
    "$lt": lambda value, arg: value is not None and value < arg,
    "$lte": lambda value, arg: value is not None and value <= arg,
    "$exists": lambda value, arg: (value is not None) == bool(arg),
}


def _match(run: RunRecord, filters: dict) -> bool:
    for key, cond in (filters or {}).items():
        if key == "$and":
            if not all(_match(run, f) for f in cond):
                return False
        elif key == "$or":
            if not any(_match(run, f) for f in cond):
                return False
        else:
            value = _run_field(run, key)
            if isinstance(cond, dict):
                for op, arg in cond.items():
                    ok = _FILTER_OPS.get(op)
                    if ok is None:
                        raise GraphQLError(f"runs filter: operator {op} not supported by the stand-in server")
                    if not ok(value, arg):
                        return False
            elif value != cond:
                return False
    return True


def _order(runs: list, order: str) -> list:
    descending, key = order.startswith("-"), order.lstrip("+-")
    present = [r for r in runs if _run_field(r, key) is not None]
    missing = [r for r in runs if _run_field(r, key) is None]
    present.sort(key=lambda r: _run_field(r, key), reverse=descending)
    return present + missing  # W&B puts runs without the key last either way


# --------------------------------------------------------------------------- HTTP


def _make_handler(server: WandbServer) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("stand-in W&B server: " + fmt, *args)

        def _key(self) -> str | None:
            header = self.headers.get("Authorization") or ""
            if header.startswith("Basic "):
                user, _, key = _unb64(header[6:]).partition(":")
                return key if user == "api" else None
            return None

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                return self.rfile.read(length)
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return b""

        def _reply(self, obj: Any, status: int = 200) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self, what: str) -> str | None:
            key = self._key()
            if key is None or len(key) < 40:
                with server.lock:
                    server._record(f"unauthorized:{what}")
                    server.auth.append((what, key))
                self._reply({"errors": [{"message": "user is not logged in"}]}, 401)
                return None
            return key

        def do_POST(self) -> None:  # noqa: N802
            path = urlsplit(self.path).path
            body = self._body()
            if path == "/graphql":
                key = self._authorized("graphql")
                if key is not None:
                    self._reply(server.handle_graphql(json.loads(body or b"{}"), key))
                return
            parts = [unquote(p) for p in path.strip("/").split("/")]
            if len(parts) == 5 and parts[0] == "files" and parts[4] == "file_stream":
                if self._authorized("file_stream") is not None:
                    self._reply(server.handle_file_stream(parts[1], parts[2], parts[3], json.loads(body or b"{}")))
                return
            if path.startswith("/sdk/otel/"):  # wandb's own telemetry
                self._reply({})
                return
            with server.lock:
                server.unknown_ops.append(f"POST {path}")
            log.warning("stand-in W&B server: unknown POST %s", path)
            self._reply({"error": "not found"}, 404)

        def do_PUT(self) -> None:  # noqa: N802
            path = urlsplit(self.path).path
            data = self._body()
            if path.startswith("/upload/"):
                server.handle_upload(path, data)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            with server.lock:
                server.unknown_ops.append(f"PUT {path}")
            self._reply({"error": "not found"}, 404)

        def do_GET(self) -> None:  # noqa: N802
            path = urlsplit(self.path).path
            with server.lock:
                server._record(f"GET {path}")
            if path.startswith("/upload/") and path in server.uploads:
                data = server.uploads[path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            if path == "/":  # cvsweep's reachability check before any wandb call: any answer is a route
                self._reply({})
                return
            with server.lock:
                server.unknown_ops.append(f"GET {path}")
            self._reply({"error": "not found"}, 404)

    return Handler


# --------------------------------------------------------------------------- fixtures' body


def client_env(server: WandbServer, root: Path, *, netrc: bool = False) -> dict[str, str | None]:
    """Environment for wandb's client to talk to `server`, with every wandb directory under `root`.

    `netrc=True` is the `wandb login` user: no WANDB_API_KEY, the key only in
    `$HOME/.netrc` under machine `127.0.0.1:<port>` (wandb looks up the base
    URL's host:port; `$NETRC` would take priority, so it is unset). None = unset.
    """
    dirs = {"WANDB_DIR": root / "wandb-dir", "WANDB_CACHE_DIR": root / "wandb-cache",
            "WANDB_CONFIG_DIR": root / "wandb-config", "WANDB_DATA_DIR": root / "wandb-data",
            "WANDB_ARTIFACT_DIR": root / "wandb-artifacts"}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    env: dict[str, str | None] = {k: str(v) for k, v in dirs.items()}
    env.update(WANDB_BASE_URL=server.url, WANDB_MODE="online", WANDB_SILENT="true",
               WANDB_ENTITY=None, WANDB_PROJECT=None, WANDB_ERROR_REPORTING="false",
               WANDB_DISABLE_CODE="true", WANDB_DISABLE_GIT="true",
               # metrics reach the server within a second instead of every 15 s (wandb-core truncates
               # the interval to whole seconds: "0.5" means 0, which means the 15 s default);
               # no system-metrics sampler competing for the CPU
               WANDB__FILE_STREAM_TRANSMIT_INTERVAL="1", WANDB__DISABLE_STATS="true",
               WANDB_API_KEY=server.api_key, NETRC=None)
    if netrc:
        home = root / "home"
        home.mkdir(parents=True, exist_ok=True)
        path = home / ".netrc"
        path.write_text(f"machine {server.host}\n  login user\n  password {server.api_key}\n")
        path.chmod(0o600)
        env.update(HOME=str(home), WANDB_API_KEY=None)
    return env


def agent_cli(*args: str, poll_interval: float | None = None) -> list[str]:
    """argv of `wandb agent ARGS` in a subprocess; with `poll_interval`, the same CLI code with
    `wandb_agent.Agent.POLL_INTERVAL` (5 s, no env var) lowered, so a test waits less per heartbeat."""
    if poll_interval is None:
        return [sys.executable, "-m", "wandb", "agent", *args]
    shim = ("import sys; from wandb import wandb_agent; "
            f"wandb_agent.Agent.POLL_INTERVAL = {float(poll_interval)!r}; "
            "from wandb.cli.cli import cli; sys.exit(cli(prog_name='wandb'))")
    return [sys.executable, "-c", shim, "agent", *args]


def fast_agents(monkeypatch: Any, seconds: float = 0.2) -> None:
    """In-process `wandb.agent`: heartbeat every `seconds` instead of 5 s (pyagent's own test knob)."""
    from wandb.agents import pyagent

    monkeypatch.setattr(pyagent.Agent, "HEARTBEAT_SLEEP_SECONDS", seconds)


def teardown_wandb() -> None:
    """Finish wandb's service and forget its settings, if this process used wandb."""
    wandb = sys.modules.get("wandb")
    if wandb is not None:
        wandb.teardown()


def serve_wandb(root: Path, monkeypatch: Any, *, netrc: bool = False) -> Iterator[WandbServer]:
    """Body of the `wandb_server` fixtures: a started server, the client's environment pointed at it.

    The whole of os.environ is restored afterwards: wandb itself writes to it
    (`wandb.sweep` sets WANDB_PROJECT/ENTITY, the agents WANDB_SWEEP_ID, WANDB_DIR...).
    """
    teardown_wandb()
    # Saved after the teardown: it stops this process's wandb service and drops WANDB_SERVICE, which
    # restoring would bring back naming a dead socket (every later in-process wandb.init then fails).
    saved = dict(os.environ)
    server = WandbServer().start()
    try:
        for key, value in client_env(server, root, netrc=netrc).items():
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)
        yield server
    finally:
        try:
            teardown_wandb()
        finally:
            server.close()
            os.environ.clear()
            os.environ.update(saved)
