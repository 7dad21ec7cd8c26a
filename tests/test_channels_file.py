"""channels.json writers: serialized across processes, validated, atomic; live reload."""
from __future__ import annotations

import json
import multiprocessing
import threading

import falcon.testing
import pytest

from dummy_channel import dummy_channel, plugin as dummy_plugin
from sophon_core import channels_file
from sophon_core import runtime as runtime_mod
from sophon_core.app import create_app
from sophon_core.errors import ConfigError
from sophon_core.plugins import agents, channel_types, get_plugin_manager
from sophon_core.settings import Settings


def writer_kwargs(path):
    """Everything ``edit`` needs; the key file for secrets goes beside ``path``, never in ./.sophon."""
    pm = get_plugin_manager([dummy_plugin], env={"SOPHON_PLUGINS": "default_agent"})
    settings = Settings.from_env({"SOPHON_DATA_DIR": str(path.parent / "data")})
    return {"pm": pm, "types": channel_types(pm), "agents": agents(pm), "settings": settings}


def add_channels(path, worker, count):
    kw = writer_kwargs(path)
    for i in range(count):
        name = f"w{worker}x{i}"
        channels_file.edit(path, lambda data: data["channels"].append(
            dummy_channel(name, "dummy:" + "".join(chr(97 + int(c)) for c in f"{worker}{i:02d}"),
                          routing={"dmBehavior": "per-peer"})), **kw)


def test_concurrent_writers_in_many_processes_lose_no_channel(tmp_path):
    path = tmp_path / "channels.json"
    path.write_text('{"channels": []}')
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=add_channels, args=(path, w, 8)) for w in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 6
    ids = sorted(c["id"] for c in json.loads(path.read_text())["channels"])
    assert ids == sorted(f"w{w}x{i}" for w in range(6) for i in range(8))
    assert list(tmp_path.glob(".channels.json.*")) == []  # no temporary file left behind
    # Six processes raced to make the secrets key: one key file, and it opens every secret.
    assert all(c["config"]["token"].startswith("enc:v1:") for c in json.loads(path.read_text())["channels"])
    kw = writer_kwargs(path)
    cfg = channels_file.config_mod.load_file(path, kw["types"], kw["pm"], kw["settings"])
    assert {c.config["token"] for c in cfg.channels} == {"s3cret-token"}


def test_an_invalid_change_is_refused_and_changes_nothing(tmp_path):
    path = tmp_path / "channels.json"
    path.write_text(json.dumps({"channels": [dummy_channel()]}, indent=1))
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="d2: config.address: 'bad' is not a dummy address"):
        channels_file.edit(path, lambda d: d["channels"].append(dummy_channel("d2", "bad")), **writer_kwargs(path))
    with pytest.raises(ConfigError, match="already used by channel 'd1'"):
        channels_file.edit(path, lambda d: d["channels"].append(dummy_channel("d2")), **writer_kwargs(path))
    assert path.read_bytes() == before


def test_running_app_follows_edits_and_keeps_the_last_good_config(make_runtime, write_channels, caplog, sent):
    rt = make_runtime([dummy_channel()])
    client = falcon.testing.TestClient(create_app(rt))

    def post():
        return client.simulate_post("/api/channels/dummy/webhook", json={
            "to": "dummy:bob", "from": "dummy:ann", "id": f"m{len(caplog.records)}", "text": "hi",
            "token": "s3cret-token"}).status_code

    assert post() == 200
    kw = {"pm": rt.pm, "types": rt.types, "agents": rt.agents, "settings": rt.settings}
    channels_file.edit(rt.settings.channels_path, lambda d: d["channels"][0].__setitem__("enabled", False), **kw)
    rt._checked_at = 0  # do not wait the second the app waits between checks
    assert post() == 404
    channels_file.edit(rt.settings.channels_path, lambda d: d["channels"][0].__setitem__("enabled", True), **kw)
    rt._checked_at = 0
    assert post() == 200
    rt.settings.channels_path.write_text('{"channels": [ broken')  # a bad hand edit
    rt._checked_at = 0
    assert post() == 200  # still serving the last good config
    assert "changed but is not valid; still serving the last good configuration" in caplog.text


def test_a_thread_that_checks_while_another_reloads_waits_for_the_new_config(make_runtime, monkeypatch):
    """Runners and request threads share one Runtime: one of them finding channels.json
    changed loads it; another checking meanwhile must wait and then see the new config, not
    go on with the old one (a runner would fail a job of a channel activated a moment ago)."""
    rt = make_runtime([dummy_channel(enabled=False)])
    assert not rt.config.get("d1").enabled
    loading, release = threading.Event(), threading.Event()
    real_load = runtime_mod.config_mod.load_file

    def slow_load(*args, **kwargs):
        loading.set()
        assert release.wait(10)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(runtime_mod.config_mod, "load_file", slow_load)
    kw = {"pm": rt.pm, "types": rt.types, "agents": rt.agents, "settings": rt.settings}
    channels_file.edit(rt.settings.channels_path, lambda d: d["channels"][0].__setitem__("enabled", True), **kw)
    seen = {}
    first = threading.Thread(target=lambda: seen.update(first=rt.reload_if_changed(every=0)))
    second = threading.Thread(target=lambda: seen.update(
        second=rt.reload_if_changed(every=0), enabled=rt.config.get("d1").enabled))
    first.start()
    assert loading.wait(10)
    second.start()
    second.join(0.3)
    assert second.is_alive(), "a second caller went on while the first was still loading"
    release.set()
    first.join(10)
    second.join(10)
    assert seen == {"first": True, "second": False, "enabled": True}
