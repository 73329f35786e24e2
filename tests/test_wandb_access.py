"""Online or offline, decided the way wandb decides: environment, .env, ~/.netrc, wandb's settings files.

wandb's own readers do the work (its Settings, its netrc reader); these tests pin the decision.
"""
import logging

import pytest
from conftest import SECRET

from cvtrain.tracking import AccessError, WandbAccess, create_run_name, wandb_access, warn_offline_in_sweep

KEY = "k" * 40


def _netrc(home, machine, key=KEY):
    home.mkdir(parents=True, exist_ok=True)
    (home / ".netrc").write_text(f"machine {machine}\n  login user\n  password {key}\n")
    (home / ".netrc").chmod(0o600)


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(h / ".config" / "wandb"))
    return h


def test_wandb_login_credentials_in_netrc_mean_online_for_a_server_with_a_port(home):
    _netrc(home, "127.0.0.1:8765")  # what `wandb login --host=http://127.0.0.1:8765` writes
    acc = wandb_access(environ={"WANDB_BASE_URL": "http://127.0.0.1:8765"})
    assert acc.mode == "online" and acc.key_source == str(home / ".netrc")
    assert acc.api_key is None  # wandb finds it again itself: nothing to hand over
    other = wandb_access(environ={"WANDB_BASE_URL": "http://127.0.0.1:9999"})
    assert other.mode == "offline" and "no W&B credentials for http://127.0.0.1:9999" in other.reason


def test_a_key_from_env_or_dotenv_is_handed_over_and_never_shown(home):
    acc = wandb_access(None, SECRET, None, environ={}, key_source="env WANDB_API_KEY")
    assert acc.mode == "online" and acc.api_key == SECRET and acc.key_source == "env WANDB_API_KEY"
    assert SECRET not in repr(acc) and SECRET not in acc.reason


def test_an_explicit_offline_or_disabled_mode_wins_over_credentials(home):
    _netrc(home, "127.0.0.1:8765")
    env = {"WANDB_BASE_URL": "http://127.0.0.1:8765"}
    assert wandb_access("offline", environ=env).mode == "offline"
    assert wandb_access("disabled", environ=env).mode == "disabled"
    assert wandb_access("dryrun", environ=env).mode == "offline"


def _access_with_settings_file(home, settings: str):
    """wandb_access with credentials in ~/.netrc for 127.0.0.1:8765 and ``settings`` in wandb's settings file."""
    _netrc(home, "127.0.0.1:8765")
    cfg_dir = home / ".config" / "wandb"
    cfg_dir.mkdir(parents=True)
    (cfg_dir / "settings").write_text("[default]\n" + settings)
    return wandb_access(environ={"WANDB_CONFIG_DIR": str(cfg_dir)})


def test_wandb_offline_in_the_settings_file_is_honoured(home):
    acc = _access_with_settings_file(home, "mode = offline\nbase_url = http://127.0.0.1:8765\n")
    assert acc.mode == "offline" and acc.base_url == "http://127.0.0.1:8765"


def test_base_url_from_wandb_settings_file_selects_the_netrc_entry(home):
    acc = _access_with_settings_file(home, "base_url = http://127.0.0.1:8765\n")
    assert acc.mode == "online" and acc.base_url == "http://127.0.0.1:8765"


def test_online_asked_for_without_credentials_names_the_fix(home):
    with pytest.raises(AccessError) as err:
        wandb_access("online", environ={"WANDB_BASE_URL": "http://127.0.0.1:8765"})
    assert "wandb login --host=http://127.0.0.1:8765" in str(err.value) and "WANDB_API_KEY" in str(err.value)


def test_a_malformed_netrc_key_is_an_error_that_does_not_echo_it(home):
    _netrc(home, "127.0.0.1:8765", key="short-secret-value")
    with pytest.raises(AccessError) as err:
        wandb_access(environ={"WANDB_BASE_URL": "http://127.0.0.1:8765"})
    assert "wandb login --relogin" in str(err.value) and "short-secret-value" not in str(err.value)


def test_offline_under_a_sweep_is_said_loudly_once(caplog):
    import cvtrain.tracking as tracking

    tracking._offline_sweep_warned.clear()
    off = WandbAccess("offline", "http://x", None, "no W&B credentials for http://x")
    with caplog.at_level(logging.WARNING, logger="cvtrain.tracking"):
        assert warn_offline_in_sweep(off, {}) is False  # not a sweep: nothing to say
        assert warn_offline_in_sweep(off, {"WANDB_SWEEP_ID": "sw1"}) is True
        assert warn_offline_in_sweep(off, {"WANDB_SWEEP_ID": "sw1"}) is False
    text = caplog.text
    assert text.count("runs OFFLINE") == 1 and "sweep sw1" in text and "wandb login" in text


def test_run_names_keep_the_learning_rate_and_a_sweep_trial_its_id(tiny):
    a, b = tiny(learning_rate=0.0012), tiny(learning_rate=0.0014)
    assert create_run_name(a) != create_run_name(b)  # ".0e" made both lr1e-03
    assert create_run_name(a, "r1abc") == create_run_name(a) + "-r1abc"


def test_a_sigterm_from_the_wandb_agent_is_a_stop_any_other_signal_a_preemption():
    import signal

    from cvtrain.stop import classify_signal

    assert classify_signal(signal.SIGTERM, 4242, 4242)[0] == "stopped"
    kind, reason = classify_signal(signal.SIGTERM, 99, 4242)  # a cluster's SIGTERM, from its own daemon
    assert kind == "preempted" and "SIGTERM from pid 99" in reason
    assert classify_signal(signal.SIGINT, 4242, 4242)[0] == "preempted"  # Ctrl-C reaches the whole group
    assert classify_signal(signal.SIGTERM, 4242, None)[0] == "preempted"  # not under wandb agent
