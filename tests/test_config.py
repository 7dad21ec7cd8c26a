"""channels.json validation: every problem at once, each naming channel, path and fix."""
from __future__ import annotations

import json

import pytest

from dummy_channel import dummy_channel, plugin as dummy_plugin
from sophon_core import config as config_mod
from sophon_core.errors import ConfigError
from sophon_core.plugins import channel_types, get_plugin_manager
from sophon_core.settings import Settings


@pytest.fixture
def env():
    pm = get_plugin_manager([dummy_plugin], env={"SOPHON_PLUGINS": "default_agent"})
    return pm, channel_types(pm), Settings()


def validate(env, data):
    pm, types, settings = env
    return config_mod.validate_data(data, types, pm, settings)


def problems(env, data):
    with pytest.raises(ConfigError) as info:
        validate(env, data)
    return [str(p) for p in info.value.problems]


def test_valid_file_gives_channels_with_defaults(env):
    cfg = validate(env, {"channels": [
        {"id": "d1", "type": "dummy", "config": {"address": "dummy:bob", "token": "12345678"}}]})
    (c,) = cfg.channels
    assert (c.id, c.type, c.name, c.enabled, c.address) == ("d1", "dummy", "d1", True, "dummy:bob")
    assert (c.routing.agent_id, c.routing.dm_behavior) == ("default", "main-session")


def test_single_channel_object_and_bare_list_are_accepted(env):
    one = dummy_channel()
    assert [c.id for c in validate(env, one).channels] == ["d1"]
    assert [c.id for c in validate(env, [one, dummy_channel("d2", "dummy:ann")]).channels] == ["d1", "d2"]


def test_every_problem_is_reported_at_once(env):
    got = problems(env, {"channels": [
        {"id": "a", "type": "dummy", "config": {"address": "bob", "token": "12345678"}},
        {"id": "b", "type": "nope", "config": {}},
        {"id": "c", "type": "dummy", "config": {"address": "dummy:x"}, "routing": {"dmBehavior": "group"}},
        {"id": "a", "type": "dummy", "config": {"address": "dummy:y", "token": "12345678", "extra": 1}},
    ]})
    assert "a: config.address: 'bob' is not a dummy address (example: dummy:bob)" in got
    assert "b: type: unknown channel type 'nope' (installed: dummy); install its plugin or fix the type" in got
    assert "c: config.token: missing required field 'token' (shared secret)" in got
    assert any(p.startswith("c: routing.dmBehavior: 'group' is not one of: main-session, per-peer") for p in got)
    assert any(p.startswith("a: config: unknown field(s) 'extra'") for p in got)
    assert "a: id: 2 channels share the id 'a'; ids must be unique" in got
    assert len(got) == 6


def test_duplicate_ids_and_addresses(env):
    got = problems(env, {"channels": [dummy_channel("x", "dummy:bob"), dummy_channel("x", "dummy:ann"),
                                      dummy_channel("y", "dummy:bob")]})
    assert "x: id: 2 channels share the id 'x'; ids must be unique" in got
    assert ("y: config.address: dummy:bob is already used by channel 'x'; "
            "each address can belong to one channel only") in got


def test_plugin_validate_config_hook_runs_after_schema(env):
    got = problems(env, [dummy_channel(address="dummy:reserved")])
    assert got == ["d1: config.address: dummy:reserved is reserved; pick another"]


def test_secret_values_never_appear_in_errors(env):
    secret = "hunter2-ultra-secret"
    bad = {"id": "d1", "type": "dummy", "config": {"address": "dummy:bob", "token": 12345}}
    text = "\n".join(problems(env, [bad]))
    assert "token" in text and "12345" not in text
    bad["config"]["token"] = secret
    bad["config"]["failWith"] = secret
    text = str(pytest.raises(ConfigError, validate, env, [bad]).value)
    assert "failWith" in text  # the non-secret field is reported with its value
    bad["config"] = {"address": "dummy:bob", "token": "q7x9z"}
    text = str(pytest.raises(ConfigError, validate, env, [bad]).value)
    assert "config.token" in text and "q7x9z" not in text


def test_envelope_errors_name_the_channel_or_index(env):
    got = problems(env, {"channels": [{"type": "dummy", "config": {}}, {"id": "bad id!", "type": "dummy",
                                                                        "config": {"address": "dummy:a", "token": "12345678"}}]})
    assert "channels[0]: id: missing required field 'id' (Unique id of the channel, e.g. sms-twilio)" in got
    assert any(p.startswith("bad id!: id: 'bad id!' is not a valid id") for p in got)


def test_file_errors(tmp_path, env):
    pm, types, settings = env
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match="does not exist: create it"):
        config_mod.load_file(missing, types, pm, settings)
    broken = tmp_path / "broken.json"
    broken.write_text('{"channels": [\n  {"id": "x",}\n]}')
    with pytest.raises(ConfigError, match=r"line 2 column 14: not valid JSON"):
        config_mod.load_file(broken, types, pm, settings)
    top = tmp_path / "top.json"
    top.write_text(json.dumps({"chanels": []}))
    with pytest.raises(ConfigError) as info:
        config_mod.load_file(top, types, pm, settings)
    assert [str(p) for p in info.value.problems] == [
        "(file): channels: missing required field 'channels'",
        "(file): unknown field(s) 'chanels' (allowed: $schema, channels)"]


def test_duplicates_and_unknown_agents_are_reported_with_schema_errors(env):
    pm, types, settings = env
    with pytest.raises(ConfigError) as info:
        config_mod.validate_data([dummy_channel("x", "dummy:bob", routing={"agentId": "gpt"}),
                                  {**dummy_channel("y", "dummy:bob"), "enabled": "yes"}],
                                 types, pm, settings, agents=["default"])
    assert sorted(map(str, info.value.problems)) == [
        "x: routing.agentId: no agent 'gpt' is installed (installed: default)",
        "y: config.address: dummy:bob is already used by channel 'x'; each address can belong to one channel only",
        "y: enabled: 'yes' should be of type boolean",
    ]


def test_a_secret_inside_a_misplaced_object_is_never_printed(env):
    secret = "TOPSECRET-token-value"
    channel = dummy_channel(token=secret)
    for data in ({"channels": {"c": channel}}, {"channels": [channel], "extra": {"nested": channel}},
                 {"channels": [{**channel, "routing": channel["config"]}]}):
        with pytest.raises(ConfigError) as info:
            validate(env, data)
        assert secret not in str(info.value)


def test_secret_is_scrubbed_even_from_a_plugins_own_messages(env):
    from sophon_core.errors import Problem
    from sophon_core.hookspecs import hookimpl
    from sophon_core.plugins import get_plugin_manager

    class Careless:
        @hookimpl
        def validate_config(self, channel_type, channel_id, config):
            return [Problem(channel_id, "config.token", f"token {config['token']} looks odd")]

    pm = get_plugin_manager([dummy_plugin, Careless()], entrypoints=False)  # last registered runs first
    with pytest.raises(ConfigError) as info:
        config_mod.validate_data([dummy_channel(token="careless-secret")], channel_types(pm), pm, Settings())
    assert str(info.value.problems[0]) == "d1: config.token: token *** looks odd"


def test_unknown_agent_is_an_error(make_runtime):
    with pytest.raises(ConfigError, match=r"d1: routing.agentId: no agent 'gpt' is installed \(installed: default\)"):
        make_runtime([dummy_channel(routing={"agentId": "gpt"})])


def test_open_main_session_channels_get_a_warning(env):
    cfg = validate(env, [dummy_channel("a"), dummy_channel("b", "dummy:ann", routing={"dmBehavior": "per-peer"}),
                         dummy_channel("c", "dummy:cat", access={"mode": "allowlist", "allow": ["dummy:zed"]})])
    assert [str(w) for w in cfg.warnings if w.path.startswith("routing")] == [
        "a: routing.dmBehavior: main-session on an open channel: every stranger who texts shares one "
        "session with everyone else; use per-peer, or access.mode allowlist"]
    c = cfg.get("c")
    assert (c.access, c.allow, c.admits("dummy:zed"), c.admits("dummy:bob")) == (
        "allowlist", frozenset({"dummy:zed"}), True, False)


def test_limits_are_validated(env):
    got = problems(env, [dummy_channel(limits={"sendRate": 0, "dailyOutboundUnits": "lots"})])
    assert got == ["d1: limits.sendRate: 0 must be greater than 0",
                   "d1: limits.dailyOutboundUnits: 'lots' should be of type integer"]
