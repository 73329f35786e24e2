"""Credentials but no route to W&B (a cluster's compute node): every command that talks to W&B says
so in one line, fast, and names the offline road; an empty WANDB_MODE means not set."""
import socket

import pytest
from click.testing import CliRunner
from conftest import ROOT, SECRET

from agent.cli import cli


@pytest.fixture
def no_route(tmp_path, monkeypatch):
    """A base URL on a local port nothing listens on, and a key: wandb would retry for ~20 s."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: connections are refused
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("WANDB_BASE_URL", url)
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CVSWEEP_DIR", str(tmp_path / "state"))
    return url


@pytest.mark.parametrize("args", [
    ["create", str(ROOT / "sweeps" / "demo.yaml")],
    ["create", str(ROOT / "sweeps" / "demo.yaml"), "--backend", "wandb"],
    ["agent", "team/docs/abc123", "--gpus", "none", "--dry-run"],
    ["leaderboard", "team/docs/abc123", "--write-back"],
    ["status", "team/docs/abc123"],
    ["runs", "team/docs/abc123"],
    ["report", "team/docs/abc123"],
    ["pause", "team/docs/abc123"],
], ids=lambda a: " ".join(a[:2]).replace(str(ROOT), ""))
def test_a_wandb_command_without_a_route_says_so_in_one_line_and_exits_2(no_route, args):
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in res.output and "Usage:" not in res.output, res.output
    assert f"W&B at {no_route} is unreachable" in lines[0]
    assert "--backend local (or WANDB_MODE=offline) to sweep offline" in lines[0]
    assert SECRET not in res.output


def test_a_server_that_never_answers_is_given_up_on_within_the_bound():
    """A route that swallows packets (a firewall that drops): the check stops waiting at its bound."""
    from agent.access import WandbUnreachable, check_reachable

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # connections complete in the kernel; nothing ever reads or answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(WandbUnreachable, match=r"is unreachable \((timed out|no answer within 0.5 s)\)"):
            check_reachable(url, timeout=0.5)


def test_an_empty_wandb_mode_means_not_set(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no credentials: local by default
    monkeypatch.setenv("CVSWEEP_DIR", str(tmp_path / "state"))
    res = CliRunner().invoke(cli, ["create", str(ROOT / "sweeps" / "demo.yaml")])
    assert res.exit_code == 0, res.output
    assert "backend: local (no W&B credentials for" in res.output and "validation" not in res.output
