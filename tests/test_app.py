"""The core app with a throwaway channel type: ack fast, run the agent later, reply once."""
from __future__ import annotations

import threading
import time

import falcon.testing
import pytest

from dummy_channel import dummy_channel, wait_sent
from sophon_core.app import create_app
from sophon_core.hookspecs import hookimpl
from sophon_core.pipeline import APOLOGY


class Agents:
    """Throwaway agents: 'history' shows what it was handed; 'boom' raises; 'slow' blocks."""

    def __init__(self):
        self.release = threading.Event()
        self.seen = []

    @hookimpl
    def sophon_agents(self):
        outer = self

        class History:
            id = "history"

            def reply(self, message, history):
                outer.seen.append([(t.role, t.text) for t in history])
                return f"{message.sender}:{message.text}:{len(history)}"

        class Boom:
            id = "boom"

            def reply(self, message, history):
                raise RuntimeError("agent exploded")

        class Slow:
            id = "slow"

            def reply(self, message, history):
                outer.release.wait(10)
                return "too late"

        class Paced:
            """For texts starting with 'slow': waits for ``release``, then 50 ms; instant
            otherwise; records the order."""
            id = "paced"

            def reply(self, message, history):
                if message.text.startswith("slow"):
                    outer.release.wait(10)
                    time.sleep(0.05)
                outer.seen.append(message.text)
                return message.text

        class Hang:
            """Hangs on 'hang' until released; instant otherwise."""
            id = "hang"

            def reply(self, message, history):
                if message.text == "hang":
                    outer.release.wait(20)
                return f"ok {message.text}"

        return [History(), Boom(), Slow(), Paced(), Hang()]


def post(client, sender="dummy:ann", text="hi", mid="m1", to="dummy:bob", token="s3cret-token"):
    return client.simulate_post("/api/channels/dummy/webhook",
                                json={"to": to, "from": sender, "id": mid, "text": text, "token": token})


def test_webhook_acks_and_default_agent_replies(make_runtime, sent):
    rt = make_runtime([dummy_channel()])
    client = falcon.testing.TestClient(create_app(rt))
    r = post(client)
    assert (r.status_code, r.text) == (200, "ok")
    assert wait_sent(1) == [("d1", "dummy:ann",
                             'Sophon default agent. You said: "hi"')]


def test_default_agent_sees_the_session(make_runtime, sent):
    rt = make_runtime([dummy_channel(routing={"agentId": "default", "dmBehavior": "per-peer"})])
    client = falcon.testing.TestClient(create_app(rt))
    for i in range(25):  # more than the history handed to agents
        post(client, text=f"m{i}", mid=f"m{i}")
    post(client, sender="dummy:cat", text="other", mid="c")
    got = wait_sent(26)
    ann = [text for (_, to, text) in got if to == "dummy:ann"]
    assert ann[0] == 'Sophon default agent. You said: "m0"'
    assert ann[24] == 'Sophon default agent. You said: "m24" (before that: "m23")'
    assert [t for (_, to, t) in got if to == "dummy:cat"] == ['Sophon default agent. You said: "other"']


def test_duplicate_delivery_is_answered_once(make_runtime, sent):
    rt = make_runtime([dummy_channel()])
    client = falcon.testing.TestClient(create_app(rt))
    assert post(client, mid="same").status_code == 200
    assert post(client, mid="same").status_code == 200
    wait_sent(1)
    time.sleep(0.3)
    assert len(sent) == 1
    assert [m["direction"] for m in rt.store.recent()] == ["out", "in"]


def test_body_over_limit_is_413_and_nothing_is_stored(make_runtime, sent):
    rt = make_runtime([dummy_channel()], max_body_bytes=1024)
    client = falcon.testing.TestClient(create_app(rt))
    r = post(client, text="x" * 2000)
    assert r.status_code == 413 and "limit is 1024" in r.text
    assert rt.store.recent() == []


def test_unknown_route_and_rejections_change_nothing(make_runtime, sent):
    rt = make_runtime([dummy_channel(), dummy_channel("off", "dummy:off", enabled=False)])
    client = falcon.testing.TestClient(create_app(rt))
    assert post(client, token="wrong").status_code == 403
    assert post(client, to="dummy:off").status_code == 404
    time.sleep(0.2)
    assert rt.store.recent() == [] and sent == []


@pytest.mark.parametrize("behavior,expected_second_history", [
    ("main-session", [("user", "one"), ("agent", "dummy:ann:one:0")]),
    ("per-peer", []),
])
def test_dm_behavior_decides_who_shares_a_session(make_runtime, sent, behavior, expected_second_history):
    agents = Agents()
    rt = make_runtime([dummy_channel(routing={"agentId": "history", "dmBehavior": behavior})], extra=[agents])
    client = falcon.testing.TestClient(create_app(rt))
    post(client, sender="dummy:ann", text="one", mid="1")
    wait_sent(1)
    post(client, sender="dummy:cat", text="two", mid="2")
    wait_sent(2)
    assert agents.seen[1] == expected_second_history
    post(client, sender="dummy:ann", text="three", mid="3")
    wait_sent(3)
    assert ("user", "one") in agents.seen[2]


def test_agent_that_raises_gets_an_apology_and_the_worker_lives(make_runtime, sent, caplog):
    rt = make_runtime([dummy_channel(routing={"agentId": "boom"})], extra=[Agents()])
    client = falcon.testing.TestClient(create_app(rt))
    post(client, mid="a")
    post(client, mid="b")
    assert [s[2] for s in wait_sent(2)] == [APOLOGY, APOLOGY]
    assert "agent 'boom' raised RuntimeError" in caplog.text


def test_agent_that_times_out_gets_an_apology(make_runtime, sent, caplog):
    agents = Agents()
    rt = make_runtime([dummy_channel(routing={"agentId": "slow"})], extra=[agents], agent_timeout=3.0)
    client = falcon.testing.TestClient(create_app(rt))
    started = time.monotonic()
    assert post(client).status_code == 200
    assert time.monotonic() - started < 3.0  # the webhook never waits for the agent (3 s timeout, 10 s hang)
    assert [s[2] for s in wait_sent(1)] == [APOLOGY]
    agents.release.set()
    assert "agent 'slow' took longer than 3 s (SOPHON_AGENT_TIMEOUT)" in caplog.text


def test_a_sessions_messages_are_answered_in_order_and_do_not_block_others(make_runtime, sent):
    agents = Agents()
    rt = make_runtime([dummy_channel(routing={"agentId": "paced", "dmBehavior": "per-peer"})], extra=[agents])
    client = falcon.testing.TestClient(create_app(rt))
    for i in range(8):
        post(client, sender="dummy:ann", text=f"slow-{i}", mid=f"s{i}")
    post(client, sender="dummy:cat", text="fast", mid="f")
    # cat's message does not wait behind ann's: answered while ann's first is still held
    assert wait_sent(1, timeout=10) == [("d1", "dummy:cat", "fast")]
    agents.release.set()
    wait_sent(9, timeout=20)
    ann = [text for (_, to, text) in sent if to == "dummy:ann"]
    assert ann == [f"slow-{i}" for i in range(8)]


def test_hung_agent_calls_do_not_use_up_the_pipeline(make_runtime, sent):
    agents = Agents()
    rt = make_runtime([dummy_channel(routing={"agentId": "hang", "dmBehavior": "per-peer"})], extra=[agents],
                      agent_timeout=0.3)
    client = falcon.testing.TestClient(create_app(rt))
    for i in range(20):  # more hung calls than the pipeline has threads
        post(client, sender=f"dummy:h{chr(97 + i)}", text="hang", mid=f"h{i}")
    wait_sent(20, timeout=20)
    post(client, sender="dummy:zed", text="hi", mid="z")
    got = wait_sent(21, timeout=5)
    agents.release.set()
    assert got[-1] == ("d1", "dummy:zed", "ok hi")
    assert rt.pipeline.abandoned_agent_calls == 20


def test_pipeline_drops_messages_for_inactive_or_foreign_channels(make_runtime, sent, caplog):
    from sophon_core.models import InboundMessage

    rt = make_runtime([dummy_channel(), dummy_channel("off", "dummy:off", enabled=False)])
    msgs = [InboundMessage("off", "x1", "dummy:ann", "dummy:off", "hi"),
            InboundMessage("nope", "x2", "dummy:ann", "dummy:bob", "hi")]
    assert rt.pipeline.accept("dummy", msgs) == 0
    assert rt.pipeline.accept("sms", [InboundMessage("d1", "x3", "dummy:ann", "dummy:bob", "hi")]) == 0
    assert rt.store.recent() == []
    assert "which is not an active dummy channel; dropped" in caplog.text


def test_send_failure_is_recorded_with_its_reason(make_runtime, sent):
    ch = dummy_channel()
    ch["config"]["failWith"] = "permanent"
    rt = make_runtime([ch])
    client = falcon.testing.TestClient(create_app(rt))
    post(client)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and rt.store.job_states() != {"failed": 1}:  # (the reply's row is
        time.sleep(0.05)                                              # written before its send is tried)
    out = rt.store.recent()[0]
    assert (out["direction"], out["status"], out["error"]) == ("out", "failed", "dummy refuses (permanent)")


def test_secrets_are_redacted_from_logs(make_runtime, sent):
    import io
    import logging

    rt = make_runtime([dummy_channel(token="tok-SECRET-123")])
    create_app(rt)
    handler = next(h for h in logging.getLogger().handlers if getattr(h, "_sophon", False))
    stream = io.StringIO()
    old = handler.setStream(stream)
    logging.getLogger("sophon.test").warning("leaking %s here", "tok-SECRET-123")
    logging.getLogger("gunicorn.error").error("gunicorn saw tok-SECRET-123")
    try:
        raise ValueError("boom tok-SECRET-123")
    except ValueError:
        logging.getLogger("sophon.test").exception("failed")
    finally:
        handler.setStream(old)
    err = stream.getvalue()
    assert "leaking *** here" in err and "ValueError: boom ***" in err and "gunicorn saw ***" in err
    assert "tok-SECRET-123" not in err


def test_healthz(make_runtime):
    rt = make_runtime([dummy_channel(), dummy_channel("off", "dummy:off", enabled=False)])
    client = falcon.testing.TestClient(create_app(rt))
    r = client.simulate_get("/healthz")
    assert r.json == {"status": "ok", "channel_types": ["dummy"], "active_channels": ["d1"], "jobs_waiting": 0,
                      "replies": "workers"}
    rt.store.path = rt.store.path.parent  # a directory: no connection can open it
    rt.store._local = type(rt.store._local)()
    r = client.simulate_get("/healthz")
    assert (r.status_code, r.json["status"]) == (503, "store unavailable")
