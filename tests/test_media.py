"""Files in messages, through the core only: a throwaway channel type that carries files.

Inbound files are fetched (through the type's ``fetch_attachment``) before the agent
runs; outbound files are kept and served through short-lived signed URLs.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import urlopen

import falcon.testing
import pytest

from dummy_channel import dummy_channel, wait_sent
from sophon_core.app import create_app
from sophon_core.errors import AttachmentError, WebhookRejected
from sophon_core.hookspecs import hookimpl
from sophon_core.media import MediaFiles
from sophon_core.models import (Attachment, ChannelType, InboundMessage, Reply, SentPart,
                                WebhookReply)
from sophon_core.pipeline import APOLOGY, layout
from sophon_core.store import Store

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
PDF = b"%PDF-1.4\n" + b"x" * 3000


class FileServer:
    """The 'provider's' file host: real HTTP on loopback."""

    def __init__(self, files):
        self.files = files
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body, ctype = outer.files.get(self.path, (None, None))
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class FileBox:
    """Channel type "filebox": JSON webhooks naming files; one file per outbound message."""

    def __init__(self, per_message=1):
        self.per_message = per_message
        self.sent: list = []
        self.cond = threading.Condition()

    @hookimpl
    def sophon_channel_types(self):
        schema = {"type": "object", "required": ["address"], "additionalProperties": False,
                  "properties": {"address": {"type": "string"}}}
        return [ChannelType("filebox", "File box", schema, address_field="address", max_text_length=40,
                            max_attachments=self.per_message)]

    @hookimpl
    def handle_inbound(self, channel_type, request, channels):
        if channel_type != "filebox":
            return None
        data = json.loads(request.context.body)
        channel = next((c for c in channels if c.address == data["to"] and c.enabled), None)
        if channel is None:
            raise WebhookRejected(404, "no such box")
        files = tuple(Attachment(f["type"], url=f["url"]) for f in data.get("files", ()))
        return WebhookReply(body="ok", messages=(InboundMessage(channel.id, data["id"], data["from"], data["to"],
                                                                data.get("text", ""), attachments=files),))

    @hookimpl
    def fetch_attachment(self, channel, attachment):
        if channel.type != "filebox":
            return None
        if "refuse" in attachment.url:
            raise AttachmentError("refused: not a host of this provider")
        with urlopen(attachment.url, timeout=5) as resp:  # loopback only
            return resp.read()

    @hookimpl
    def send(self, channel, message):
        if channel.type != "filebox":
            return None
        with self.cond:
            self.sent.append(message)
            self.cond.notify_all()
        return SentPart(f"F{len(self.sent)}", message.text, "sent")

    def wait(self, n, timeout=10.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.sent) < n:
                left = deadline - time.monotonic()
                assert left > 0, f"expected {n} sends, got {self.sent}"
                self.cond.wait(left)
            return list(self.sent)


class Agents:
    """'files': records what it got, answers with text and the files named in the text."""

    def __init__(self):
        self.seen: list[InboundMessage] = []
        self.reply_with: object = None

    @hookimpl
    def sophon_agents(self):
        outer = self

        class Files:
            id = "files"

            def reply(self, message, history):
                outer.seen.append(message)
                return outer.reply_with

        return [Files()]


def box_channel(**extra):
    return {"id": "box", "type": "filebox", "name": "box", "enabled": True, "config": {"address": "box:1"},
            "routing": {"agentId": "files"}, **extra}


@pytest.fixture
def files():
    server = FileServer({"/a.png": (PNG, "image/png"), "/b.pdf": (PDF, "application/pdf")})
    yield server
    server.close()


def post(client, **data):
    body = {"to": "box:1", "from": "box:ann", "id": "m1", "text": "hi", **data}
    return client.simulate_post("/api/channels/filebox/webhook", body=json.dumps(body))


def get_url(client, url):
    parts = urlsplit(url)
    return client.simulate_get(parts.path, query_string=parts.query)


def test_layout_puts_files_on_the_first_parts_and_extra_files_alone():
    a, b, c = {"id": "a"}, {"id": "b"}, {"id": "c"}
    assert layout(["one", "two"], [a, b, c], 1) == (["one", "two", ""], [[a], [b], [c]])
    assert layout(["one"], [a, b, c], 2) == (["one", ""], [[a, b], [c]])
    assert layout(["one", "two"], [], 1) == (["one", "two"], [[], []])
    assert layout([""], [a], 1) == ([""], [[a]])
    assert layout(["one"], [a], 0) == (["one"], [[]])


def test_agent_gets_fetched_files_and_the_reason_a_file_was_dropped(make_runtime, files, tmp_path):
    box, agents = FileBox(), Agents()
    agents.reply_with = "thanks"
    rt = make_runtime([box_channel()], extra=[box, agents], env={"SOPHON_PUBLIC_URL": "http://sophon.test"})
    client = falcon.testing.TestClient(create_app(rt))
    r = post(client, files=[{"url": files.url + "/a.png", "type": "image/png"},
                            {"url": files.url + "/refuse.exe", "type": "application/x-msdownload"},
                            {"url": files.url + "/missing.pdf", "type": "application/pdf"}])
    assert r.status_code == 200
    box.wait(1)
    msg = agents.seen[0]
    assert [a.content_type for a in msg.attachments] == ["image/png"]
    got = msg.attachments[0]
    assert Path(got.path).read_bytes() == PNG and got.size == len(PNG)
    assert Path(got.path).is_relative_to(tmp_path / "data" / "media" / "in")
    reasons = {d.content_type: d.reason for d in msg.dropped_attachments}
    assert reasons["application/x-msdownload"] == "refused: not a host of this provider"
    assert reasons["application/pdf"] == "could not be fetched (internal error)"  # a 404 the plugin did not word


def test_reply_files_go_out_one_per_message_through_signed_urls(make_runtime, files):
    box, agents = FileBox(per_message=1), Agents()
    agents.reply_with = Reply("here are your files, three of them, in order",
                              attachments=(Attachment("image/png", data=PNG, filename="a.png"),
                                           Attachment("application/pdf", data=PDF),
                                           Attachment("image/png", data=PNG[:100])))
    rt = make_runtime([box_channel()], extra=[box, agents], env={"SOPHON_PUBLIC_URL": "http://sophon.test"})
    client = falcon.testing.TestClient(create_app(rt))
    assert post(client).status_code == 200
    sent = box.wait(3)
    assert [m.text.strip() for m in sent] == ["here are your files, three of them, in", "order", ""]
    assert [[a.content_type for a in m.attachments] for m in sent] == [["image/png"], ["application/pdf"],
                                                                        ["image/png"]]
    for message, body in zip(sent, (PNG, PDF, PNG[:100])):
        att = message.attachments[0]
        assert att.url.startswith("http://sophon.test/media/") and att.size == len(body)
        r = get_url(client, att.url)  # no admin token: the signature is the permission
        assert r.status_code == 200 and r.content == body
        assert r.headers["content-type"] == att.content_type
    assert sent[0].attachments[0].filename == "a.png"
    # The parts and their files are recorded: a retry would send the same files.
    rows = rt.store._conn().execute("SELECT part_no, media FROM messages WHERE direction = 'out' "
                                    "ORDER BY part_no").fetchall()
    assert [json.loads(m)[0]["content_type"] for _, m in rows] == ["image/png", "application/pdf", "image/png"]


def test_signed_urls_refuse_tampering_expiry_and_unknown_names(make_runtime, tmp_path):
    rt = make_runtime([dummy_channel()])
    client = falcon.testing.TestClient(create_app(rt))
    meta = rt.media.keep_outbound(Attachment("image/png", data=PNG))
    url = urlsplit(rt.media.signed_url("http://x", meta["id"]))
    assert client.simulate_get(url.path, query_string=url.query).status_code == 200
    assert client.simulate_head(url.path, query_string=url.query).status_code == 200
    other = rt.media.keep_outbound(Attachment("image/png", data=b"other"))
    forged = client.simulate_get(f"/media/{other['id']}", query_string=url.query)  # signature of another file
    assert forged.status_code == 403 and "signature" in forged.json["description"]
    bad = url.query.replace("signature=", "signature=0")
    assert client.simulate_get(url.path, query_string=bad).status_code == 403
    assert client.simulate_get(url.path).status_code == 403  # unsigned
    old = urlsplit(rt.media.signed_url("http://x", meta["id"], now=time.time() - 3600))
    expired = client.simulate_get(old.path, query_string=old.query)
    assert expired.status_code == 403 and "expired" in expired.json["description"]
    assert client.simulate_get("/media/..%2Fsophon.db", query_string=url.query).status_code == 404
    # A second MediaFiles over the same folder (another worker) accepts the same links.
    again = MediaFiles(tmp_path / "data")
    assert again.check(meta["id"], *[dict(p.split("=") for p in url.query.split("&"))[k]
                                     for k in ("expires", "signature")]).read_bytes() == PNG


def test_without_a_public_url_files_are_not_sent_but_the_text_is(make_runtime, caplog):
    box, agents = FileBox(), Agents()
    agents.reply_with = Reply("text goes", attachments=(Attachment("image/png", data=PNG),))
    rt = make_runtime([box_channel()], extra=[box, agents])
    client = falcon.testing.TestClient(create_app(rt))
    post(client)
    sent = box.wait(1)
    assert (sent[0].text, sent[0].attachments) == ("text goes", ())
    assert "set SOPHON_PUBLIC_URL" in caplog.text
    agents.reply_with = Reply("", attachments=(Attachment("image/png", data=PNG),))
    post(client, id="m2")
    assert "".join(m.text for m in box.wait(3)[1:]) == APOLOGY  # 2 parts of 40 characters


def test_a_text_only_channel_sends_the_text_of_a_reply_with_files(make_runtime, sent, caplog):
    agents = Agents()
    agents.reply_with = Reply("just text", attachments=(Attachment("image/png", data=PNG),))
    rt = make_runtime([dummy_channel(routing={"agentId": "files"})], extra=[agents],
                      env={"SOPHON_PUBLIC_URL": "http://sophon.test"})
    client = falcon.testing.TestClient(create_app(rt))
    client.simulate_post("/api/channels/dummy/webhook",
                         json={"to": "dummy:bob", "from": "dummy:ann", "id": "x", "text": "hi", "token": "s3cret-token"})
    assert wait_sent(1) == [("d1", "dummy:ann", "just text")]
    assert "sends text only" in caplog.text


@pytest.mark.parametrize("bad", [Reply(""), Reply("x", attachments=("not an attachment",)), 42])
def test_an_agent_reply_that_is_not_text_or_a_reply_gets_an_apology(make_runtime, bad, caplog):
    box, agents = FileBox(), Agents()
    agents.reply_with = bad
    rt = make_runtime([box_channel()], extra=[box, agents])
    post(falcon.testing.TestClient(create_app(rt)))
    assert "".join(m.text for m in box.wait(2)) == APOLOGY  # 2 parts of 40 characters
    assert "instead of text or a Reply" in caplog.text


def test_a_store_made_before_files_existed_gets_the_media_column(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, channel_id TEXT NOT NULL, direction TEXT NOT NULL,"
               " provider_id TEXT, peer TEXT NOT NULL, session_key TEXT NOT NULL, text TEXT NOT NULL,"
               " status TEXT NOT NULL, error TEXT, reply_to INTEGER, job_id INTEGER, part_no INTEGER,"
               " units INTEGER, created_at REAL NOT NULL, updated_at REAL)")
    db.execute("INSERT INTO messages (channel_id, direction, peer, session_key, text, status, created_at)"
               " VALUES ('c', 'in', 'p', 's', 'kept', 'received', 1)")
    db.commit()
    db.close()
    store = Store(path)
    cols = {r[1] for r in store._conn().execute("PRAGMA table_info(messages)")}
    assert "media" in cols
    assert store._conn().execute("SELECT text FROM messages").fetchall() == [("kept",)]
    Store(path)  # a second opener (another worker) finds it done


def test_inbound_files_are_kept_once_per_message_and_index(tmp_path):
    media = MediaFiles(tmp_path)
    first = media.keep_inbound("c", "MM1", 0, b"one", "image/jpeg")
    again = media.keep_inbound("c", "MM1", 0, b"one", "image/jpeg")
    other = media.keep_inbound("c", "MM1", 1, b"two", "image/jpeg")
    assert first == again != other and first.suffix == ".jpg"
    assert hashlib.sha256(first.read_bytes()).hexdigest() == hashlib.sha256(b"one").hexdigest()


def test_kept_files_are_pruned_after_the_retention_time(tmp_path):
    import os

    media = MediaFiles(tmp_path)
    old_in = media.keep_inbound("c", "MM1", 0, b"old", "image/png")
    new_in = media.keep_inbound("c", "MM2", 0, b"new", "image/png")
    old_out = media.keep_outbound(Attachment("image/png", data=b"old"))
    week_ago = time.time() - 7 * 86400
    for path in (old_in, tmp_path / "media" / "out" / old_out["id"], tmp_path / "media" / "out" / f"{old_out['id']}.json"):
        os.utime(path, (week_ago, week_ago))
    assert media.prune(3 * 86400) == 3
    assert not old_in.exists() and new_in.exists()
    assert not (tmp_path / "media" / "out" / old_out["id"]).exists()
    assert media.prune(3 * 86400) == 0
    assert MediaFiles(tmp_path / "nothing-yet").prune(1) == 0


def test_the_pipeline_prunes_old_files(make_runtime, tmp_path):
    import os

    rt = make_runtime([dummy_channel()], env={"SOPHON_MEDIA_RETENTION_DAYS": "1"})
    old = rt.media.keep_inbound("d1", "m1", 0, b"old", "image/png")
    fresh = rt.media.keep_inbound("d1", "m2", 0, b"new", "image/png")
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    assert rt.pipeline._prune_media() == 1
    assert not old.exists() and fresh.exists()
