"""Secrets at rest: encrypted in channels.json, a 0600 key file, clear errors, key rotation."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet

from dummy_channel import dummy_channel, plugin as dummy_plugin
from sophon_core import channels_file, secrets
from sophon_core import config as config_mod
from sophon_core.errors import ConfigError
from sophon_core.plugins import agents, channel_types, get_plugin_manager
from sophon_core.settings import Settings

TOKEN = "canary-token-5d1e"


@pytest.fixture
def files(tmp_path):
    """(channels path, settings factory, writer kwargs factory) over the dummy type."""
    path = tmp_path / "channels.json"
    pm = get_plugin_manager([dummy_plugin], env={"SOPHON_PLUGINS": "default_agent"})
    types = channel_types(pm)

    def settings(**env):
        return Settings.from_env({"SOPHON_DATA_DIR": str(tmp_path / "data"), **env})

    def kw(**env):
        return {"pm": pm, "types": types, "agents": agents(pm), "settings": settings(**env)}

    def load(**env):
        return config_mod.load_file(path, types, pm, settings(**env))

    return path, kw, load


def write_plain(path, *channels):
    path.write_text(json.dumps({"channels": list(channels)}, indent=2))


def activate(path, kw, cid="d1"):
    channels_file.edit(path, lambda d: channels_file.find(d, cid).__setitem__("enabled", True), **kw)


def test_a_write_encrypts_secrets_and_the_key_file_is_private(files, tmp_path):
    path, kw, load = files
    write_plain(path, dummy_channel(token=TOKEN, enabled=False))
    activate(path, kw())
    text = path.read_text()
    assert TOKEN not in text
    stored = json.loads(text)["channels"][0]["config"]["token"]
    assert stored.startswith("enc:v1:")
    key = tmp_path / "data" / "secret.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # The loaded channel holds the plain value, for the plugin to use.
    assert load().get("d1").config["token"] == TOKEN
    # Only the secret field is encrypted; a second write leaves the stored token as it is.
    assert json.loads(text)["channels"][0]["config"]["address"] == "dummy:bob"
    activate(path, kw())
    assert json.loads(path.read_text())["channels"][0]["config"]["token"] == stored


def test_a_plaintext_secret_is_used_warned_about_and_encrypted_on_the_next_write(files):
    path, kw, load = files
    write_plain(path, dummy_channel(token=TOKEN))
    cfg = load()
    assert cfg.get("d1").config["token"] == TOKEN
    assert [str(w) for w in cfg.warnings if w.path == "config.token"] == [
        "d1: config.token: is stored in plain text; Sophon encrypts it the next time it writes the file, "
        "or now with `sophon channels encrypt`"]
    assert all(TOKEN not in str(w) for w in cfg.warnings)
    channels_file.edit(path, lambda d: None, **kw())
    assert TOKEN not in path.read_text()
    cfg = load()
    assert cfg.get("d1").config["token"] == TOKEN
    assert [w for w in cfg.warnings if w.path == "config.token"] == []


def test_a_wrong_key_names_the_channel_and_field_and_shows_no_secret(files):
    path, kw, load = files
    write_plain(path, dummy_channel(token=TOKEN))
    channels_file.edit(path, lambda d: None, **kw())
    other = Fernet.generate_key().decode()
    with pytest.raises(ConfigError) as info:
        load(SOPHON_SECRET_KEY=other)
    (problem,) = info.value.problems
    assert (problem.channel_id, problem.path) == ("d1", "config.token")
    assert "cannot be decrypted with the key from SOPHON_SECRET_KEY" in problem.message
    assert TOKEN not in str(info.value)


def test_a_missing_key_file_is_a_clear_error(files, tmp_path):
    path, kw, load = files
    write_plain(path, dummy_channel(token=TOKEN))
    channels_file.edit(path, lambda d: None, **kw())
    (tmp_path / "data" / "secret.key").unlink()
    with pytest.raises(ConfigError, match=r"d1: config.token: is encrypted but there is no key"):
        load()


def test_a_malformed_env_key_is_a_clear_error(files):
    path, kw, load = files
    write_plain(path, dummy_channel(token=TOKEN))
    channels_file.edit(path, lambda d: None, **kw())
    with pytest.raises(ConfigError, match="SOPHON_SECRET_KEY does not hold a valid key"):
        load(SOPHON_SECRET_KEY="not-a-key")


def test_rotation_with_the_key_file_replaces_the_key_and_keeps_every_secret(files, tmp_path):
    path, kw, load = files
    write_plain(path, dummy_channel(token=TOKEN), dummy_channel("d2", "dummy:ann", token="another-secret"))
    channels_file.edit(path, lambda d: None, **kw())
    key_path = tmp_path / "data" / "secret.key"
    old_key = key_path.read_text().strip()
    count, source = channels_file.rotate_key(path, **kw())
    assert (count, source) == (2, str(key_path))
    new_key = key_path.read_text().strip()
    assert new_key != old_key and "\n" not in new_key
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert {c.id: c.config["token"] for c in load().channels} == {"d1": TOKEN, "d2": "another-secret"}
    # The old key opens nothing any more.
    with pytest.raises(ConfigError, match="cannot be decrypted"):
        load(SOPHON_SECRET_KEY=old_key)


def test_rotation_with_an_env_key_needs_the_new_key_first(files):
    path, kw, load = files
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    write_plain(path, dummy_channel(token=TOKEN))
    channels_file.edit(path, lambda d: None, **kw(SOPHON_SECRET_KEY=old))
    with pytest.raises(secrets.SecretKeyError, match="holds one key"):
        channels_file.rotate_key(path, **kw(SOPHON_SECRET_KEY=old))
    count, _ = channels_file.rotate_key(path, **kw(SOPHON_SECRET_KEY=f"{new},{old}"))
    assert count == 1
    assert load(SOPHON_SECRET_KEY=new).get("d1").config["token"] == TOKEN


def test_cli_encrypt_and_a_wrong_key_error_without_traceback(files, tmp_path):
    path, kw, load = files
    write_plain(path, dummy_channel(token=TOKEN))
    # The CLI loads plugins from entry points; the dummy type comes from a fake distribution.
    env = {**os.environ, "SOPHON_CHANNELS": str(path), "SOPHON_DATA_DIR": str(tmp_path / "data"),
           "SOPHON_PLUGINS": "default_agent,dummy_channel",
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "dist"), os.path.dirname(__file__)])}
    make_dummy_distribution(tmp_path / "dist")
    run = [sys.executable, "-c", "from sophon_core.cli import main; main()"]
    out = subprocess.run([*run, "channels", "encrypt", "--json"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["encrypted"] == 1
    assert TOKEN not in out.stdout + out.stderr and TOKEN not in path.read_text()
    bad = subprocess.run([*run, "validate"], env={**env, "SOPHON_SECRET_KEY": Fernet.generate_key().decode()},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "d1: config.token: cannot be decrypted" in bad.stderr
    assert "Traceback" not in bad.stderr and TOKEN not in bad.stdout + bad.stderr


def make_dummy_distribution(folder):
    """A dist-info that registers ``dummy_channel`` (tests/dummy_channel) under the ``sophon`` group."""
    info = folder / "dummy_channel_plugin-0.0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dummy-channel-plugin\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text("[sophon]\ndummy_channel = dummy_channel:plugin\n")
