"""Plugin discovery, the SOPHON_PLUGINS filter, and the contract every channel type must pass."""
from __future__ import annotations

import falcon.testing
import jsonschema
import pytest

from dummy_channel import plugin as dummy_plugin
from sophon_core.hookspecs import hookimpl
from sophon_core.errors import Problem, WebhookRejected
from sophon_core.models import Channel
from sophon_core.plugins import PluginError, channel_types, get_plugin_manager
from sophon_core.settings import Settings

CHANNEL_HOOKS = ("validate_config", "test_connection", "handle_inbound", "send")


def install_distribution(site, monkeypatch, name: str, entry_point: str) -> None:
    """Make a distribution with one ``sophon`` entry point importable, as pip would."""
    dist = site / f"{name.replace('-', '_')}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[sophon]\n{entry_point}\n")
    monkeypatch.syspath_prepend(str(site))


@pytest.fixture
def installed_dummy(tmp_path, monkeypatch):
    install_distribution(tmp_path, monkeypatch, "sophon-dummy-channel", "dummy = dummy_channel:plugin")
    return "dummy"


def test_entry_point_plugin_is_discovered_validated_and_mounted(installed_dummy, make_runtime, tmp_path):
    import falcon.testing

    from sophon_core.app import create_app
    from sophon_core.runtime import Runtime
    from sophon_core.settings import Settings

    pm = get_plugin_manager(env={"SOPHON_PLUGINS": "dummy,default_agent"})
    assert pm.get_plugin("dummy") is dummy_plugin
    assert set(channel_types(pm)) == {"dummy"}

    path = tmp_path / "c.json"
    path.write_text('{"channels": [{"id": "d", "type": "dummy", "config": {"address": "nope", "token": "12345678"}}]}')
    settings = Settings.from_env({"SOPHON_CHANNELS": str(path), "SOPHON_DATA_DIR": str(tmp_path / "d"),
                                  "SOPHON_PLUGINS": "dummy,default_agent"})
    with pytest.raises(Exception, match="d: config.address: 'nope' is not a dummy address"):
        Runtime.build(settings)
    path.write_text('{"channels": [{"id": "d", "type": "dummy", "config": {"address": "dummy:x", "token": "12345678"}}]}')
    rt = Runtime.build(settings)
    try:
        client = falcon.testing.TestClient(create_app(rt))
        r = client.simulate_post("/api/channels/dummy/webhook", json={"to": "dummy:x", "token": "wrong"})
        assert r.status_code == 403  # mounted: the plugin's own handler answered
        assert client.simulate_post("/api/channels/other/webhook").status_code == 404
    finally:
        rt.close()


def test_sophon_plugins_limits_what_loads(installed_dummy):
    assert get_plugin_manager(env={"SOPHON_PLUGINS": "default_agent"}).get_plugin("dummy") is None
    assert get_plugin_manager(env={"SOPHON_PLUGINS": ""}).get_plugins() == set()
    assert get_plugin_manager(env={}).get_plugin("dummy") is dummy_plugin


def test_misspelled_hook_fails_at_start_up():
    class Typo:
        @hookimpl
        def handle_inbund(self, channel_type, request):
            return None

    with pytest.raises(PluginError, match="handle_inbund.*misspelled"):
        get_plugin_manager([Typo()], entrypoints=False)


def test_a_type_declared_twice_is_refused():
    class Copy:
        @hookimpl
        def sophon_channel_types(self):
            return dummy_plugin.sophon_channel_types()

    pm = get_plugin_manager([dummy_plugin, Copy()], entrypoints=False)
    with pytest.raises(PluginError, match="'dummy' is declared by two plugins"):
        channel_types(pm)


def test_broken_entry_point_is_reported(tmp_path, monkeypatch):
    install_distribution(tmp_path, monkeypatch, "broken", "broken = no_such_module_xyz:plugin")
    with pytest.raises(PluginError, match="plugin 'broken' .* failed to load"):
        get_plugin_manager(env={})


def _types_by_plugin(pm):
    out = {}
    for impl in pm.hook.sophon_channel_types.get_hookimpls():
        for ct in impl.function():
            out[ct.name] = (impl.plugin, ct)
    return out


def _installed_types():
    pm = get_plugin_manager([dummy_plugin])
    return pm, _types_by_plugin(pm)


@pytest.mark.parametrize("type_name", sorted(_installed_types()[1]))
def test_every_installed_channel_type_honours_the_contract(type_name):
    pm, by_type = _installed_types()
    plugin, ct = by_type[type_name]
    assert ct.display_name.strip()
    jsonschema.Draft202012Validator.check_schema(ct.config_schema)
    props = ct.config_schema.get("properties", {})
    for name, prop in props.items():
        assert prop.get("description"), f"{type_name}: config.{name} needs a description (docs, forms)"
    if ct.address_field:
        assert ct.address_field in ct.config_schema.get("required", ())
    for hook in CHANNEL_HOOKS:
        owners = [i.plugin for i in getattr(pm.hook, hook).get_hookimpls()]
        assert plugin in owners, f"{type_name}: its plugin does not implement {hook}"
    # Behaviour, on the schema's own examples (every type ships at least one).
    examples = ct.config_schema.get("examples") or []
    assert examples, f"{type_name}: give the config schema an 'examples' list"

    def own(hook):
        return next(i for i in getattr(pm.hook, hook).get_hookimpls() if i.plugin is plugin)

    def call(hook, **kw):
        impl = own(hook)
        return impl.function(*[kw[a] for a in impl.argnames])

    for example in examples:
        assert not list(jsonschema.Draft202012Validator(ct.config_schema).iter_errors(example))
        problems = call("validate_config", channel_type=type_name, channel_id="c", config=example,
                        settings=Settings())
        assert isinstance(problems, list) and all(isinstance(p, Problem) for p in problems)
        channel = Channel(id="c", type=type_name, name="c", enabled=True, config=example,
                          address=example.get(ct.address_field) if ct.address_field else None)
        req = falcon.testing.create_req(method="POST", path=ct.webhook_path, body=b"")
        req.context.body = b""
        with pytest.raises(WebhookRejected) as info:  # an unauthenticated, empty request is refused
            call("handle_inbound", channel_type=type_name, request=req, channels=(channel,), settings=Settings())
        assert 400 <= info.value.status < 500

    # Foreign types are declined with None, so firstresult dispatch reaches the owner.
    class Foreign:
        type = "__other__"

    kwargs = {"channel_type": "__other__", "channel_id": "x", "config": {}, "settings": None,
              "channel": Foreign(), "request": None, "channels": (), "message": None}
    for hook in CHANNEL_HOOKS:
        impl = next(i for i in getattr(pm.hook, hook).get_hookimpls() if i.plugin is plugin)
        assert impl.function(*[kwargs[a] for a in impl.argnames]) is None, f"{type_name}: {hook}"


def test_extra_routes_get_the_runtime_and_cannot_shadow_the_webhook(make_runtime):
    import falcon.testing

    from dummy_channel import SCHEMA, dummy_channel
    from sophon_core.app import create_app
    from sophon_core.models import ChannelType

    class Status:
        def on_get(self, req, resp):
            resp.media = {"channels": [c.id for c in req.context.runtime.config.channels]}

    def plugin_with(path):
        class Extra:
            @hookimpl
            def sophon_channel_types(self):
                return [ChannelType("extra", "Extra", SCHEMA, routes={path: Status()})]
        return Extra()

    rt = make_runtime([dummy_channel()], extra=[plugin_with("/api/channels/extra/status")])
    client = falcon.testing.TestClient(create_app(rt))
    assert client.simulate_get("/api/channels/extra/status").json == {"channels": ["d1"]}

    rt = make_runtime([dummy_channel()], extra=[plugin_with("/api/channels/dummy/webhook")])
    with pytest.raises(PluginError, match="declares route /api/channels/dummy/webhook, which channel type 'dummy'"):
        create_app(rt)
