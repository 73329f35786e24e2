import dataclasses

"""cvsweep's settings: resolved once (environment over .env over defaults); the key stays out of os.environ."""
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ROOT, SECRET

from agent.cli import cli
from agent.settings import DEFAULT_LEASE_SECONDS, Settings, SettingsError, load_settings


def test_env_file_values_are_read_and_the_environment_wins(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("CVSWEEP_DIR=from-dotenv\nCVSWEEP_LEASE_SECONDS=8\n")
    s = load_settings({}, env_file)
    assert s.state_dir == Path("from-dotenv") and s.lease_seconds == 8.0 and s.lease_seconds / 4 == 2.0
    s = load_settings({"CVSWEEP_LEASE_SECONDS": "20", "CVSWEEP_DIR": "from-env"}, env_file)
    assert s.state_dir == Path("from-env") and s.lease_seconds == 20.0
    s = load_settings({}, tmp_path / "missing.env")
    assert s.state_dir == Path(".cvsweep") and s.lease_seconds == DEFAULT_LEASE_SECONDS


@pytest.mark.parametrize("bad", ["soon", "0", "-5", "nan"])
def test_a_bad_lease_names_the_setting_its_source_and_the_fix(tmp_path, bad):
    env_file = tmp_path / ".env"
    env_file.write_text(f"CVSWEEP_LEASE_SECONDS={bad}\n")
    with pytest.raises(SettingsError, match=rf"CVSWEEP_LEASE_SECONDS='{bad}' \(from .*\.env\): must be a number"):
        load_settings({}, env_file)


def test_the_key_goes_only_into_the_child_environments_that_ask_for_it():
    s = load_settings({"WANDB_API_KEY": SECRET, "CVSWEEP_DIR": "/s", "CVSWEEP_LEASE_SECONDS": "12"}, None)
    assert SECRET not in repr(s) and "WANDB_API_KEY" not in s.env
    local = s.child_env({"PATH": "/bin", "WANDB_API_KEY": SECRET})
    assert "WANDB_API_KEY" not in local and local["CVSWEEP_DIR"] == "/s" and float(local["CVSWEEP_LEASE_SECONDS"]) == 12
    assert s.child_env({"PATH": "/bin"}, with_key=True)["WANDB_API_KEY"] == SECRET


def test_a_child_talking_to_wandb_gets_the_server_from_dotenv_with_the_key(tmp_path):
    """`wandb sync` of a local sweep: key and W&B Server only in .env; the key must go to that server."""
    env_file = tmp_path / ".env"
    env_file.write_text(f"WANDB_API_KEY={SECRET}\nWANDB_BASE_URL=https://wandb.example.com\nWANDB_PROJECT=p\n")
    s = load_settings({"PATH": "/bin"}, env_file)
    child = s.child_env({"PATH": "/bin"}, with_key=True)
    assert child["WANDB_API_KEY"] == SECRET and child["WANDB_BASE_URL"] == "https://wandb.example.com"
    assert s.child_env({"PATH": "/bin"})["WANDB_BASE_URL"] == "https://wandb.example.com"
    mine = s.child_env({"PATH": "/bin", "WANDB_BASE_URL": "https://other.example.com"}, with_key=True)
    assert mine["WANDB_BASE_URL"] == "https://other.example.com"  # the environment wins over .env


def test_cli_reads_cvsweep_dir_from_dotenv_and_never_exports_the_key(tmp_path):
    (tmp_path / ".env").write_text(f"CVSWEEP_DIR={tmp_path / 'dotenv-state'}\nWANDB_API_KEY={SECRET}\n"
                                   "WANDB_MODE=offline\n")
    res = CliRunner().invoke(cli, ["create", str(ROOT / "sweeps" / "demo.yaml"), "--seed", "5"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "dotenv-state" / "cvsweep.db").exists() and "(seed 5)" in res.output
    assert "WANDB_API_KEY" not in os.environ
    sid = res.output.strip().splitlines()[-1]
    status = CliRunner().invoke(cli, ["status", sid])
    assert status.exit_code == 0 and "disk: 0.0 MiB in" in status.output, status.output
    assert "WANDB_API_KEY" not in os.environ


def test_cli_says_what_is_wrong_with_a_setting(tmp_path):
    (tmp_path / ".env").write_text("CVSWEEP_LEASE_SECONDS=soon\n")
    res = CliRunner().invoke(cli, ["runs"])
    assert res.exit_code == 2 and "CVSWEEP_LEASE_SECONDS='soon'" in res.output


def test_settings_are_frozen():
    s = Settings(Path("x"), 60.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.lease_seconds = 1
