"""Measure webhook acknowledgement: signed Twilio-shaped POSTs to a real gunicorn.

Starts the local Twilio sandbox and Sophon under gunicorn on loopback, sends
--requests signed inbound webhooks (each with a unique MessageSid) over
--connections keep-alive connections, and prints requests/s and latency
percentiles, then how long until every reply reached the sandbox.
Loopback only; bounded in count and time. Not a test: it measures and prints.

    .venv/bin/python bench/webhook_ack.py [--requests 2000] [--connections 16] [--workers 2]
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

from twilio.request_validator import RequestValidator

from sophon_core.testing import free_port, gunicorn
from sophon_sms_twilio.sandbox import Sandbox

NUMBER = "+15005550006"
PATH = "/api/channels/sms/webhook"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--sync", choices=("FULL", "NORMAL"), default="FULL", help="SOPHON_SQLITE_SYNC")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="stop sending after this long")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp, Sandbox() as box:
        port = free_port()
        public = f"http://127.0.0.1:{port}"
        acct = box.add_account()
        box.add_number(acct.sid, NUMBER, sms_url=public + PATH)
        channels = Path(tmp) / "channels.json"
        channels.write_text(json.dumps({"channels": [{
            "id": "sms", "type": "sms", "config": {"accountSid": acct.sid, "authToken": acct.auth_token,
                                                   "phoneNumber": NUMBER},
            "routing": {"agentId": "default", "dmBehavior": "per-peer"},
            # measure the webhook and pipeline, not the cost guards: pacing off, limits out of the way
            "limits": {"sendRate": 100000, "inboundPerSenderPerHour": 1000000,
                       "dailyOutboundUnits": 100000000}}]}))
        env = {"SOPHON_CHANNELS": str(channels), "SOPHON_DATA_DIR": str(Path(tmp) / "data"),
               "SOPHON_PUBLIC_URL": public, "SOPHON_TWILIO_API_URL": box.url, "SOPHON_LOG_LEVEL": "WARNING", "SOPHON_SQLITE_SYNC": args.sync}

        validator = RequestValidator(acct.auth_token)
        bodies = []
        for i in range(args.requests):
            form = {"MessageSid": f"SM{i:032x}", "SmsSid": f"SM{i:032x}", "AccountSid": acct.sid,
                    "From": f"+1555{i % 50:07d}", "To": NUMBER, "Body": f"bench message {i}",
                    "NumMedia": "0", "NumSegments": "1", "ApiVersion": "2010-04-01", "SmsStatus": "received"}
            bodies.append((urlencode(form), validator.compute_signature(public + PATH, form)))

        with gunicorn(env, port=port, workers=args.workers, threads=args.threads,
                      log=Path(tmp) / "gunicorn.log"):
            latencies: list[float] = []
            errors: list[str] = []
            lock = threading.Lock()
            next_index = iter(range(args.requests))
            deadline = time.monotonic() + args.max_seconds

            def client() -> None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                mine = []
                for i in next_index:
                    if time.monotonic() > deadline:
                        break
                    body, sig = bodies[i]
                    t0 = time.perf_counter()
                    conn.request("POST", PATH, body, {"Content-Type": "application/x-www-form-urlencoded",
                                                      "X-Twilio-Signature": sig})
                    resp = conn.getresponse()
                    resp.read()
                    mine.append(time.perf_counter() - t0)
                    if resp.status != 200:
                        with lock:
                            errors.append(str(resp.status))
                conn.close()
                with lock:
                    latencies.extend(mine)

            started = time.perf_counter()
            threads = [threading.Thread(target=client) for _ in range(args.connections)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - started
            sent = len(latencies)
            try:
                box.wait_for_messages(sent, timeout=120)
                replied = time.perf_counter() - started
            except TimeoutError:
                replied = None

        q = statistics.quantiles(latencies, n=100)
        print(f"webhook ack: {sent} signed requests, {args.connections} connections, "
              f"{args.workers} worker(s) x {args.threads} threads, SOPHON_SQLITE_SYNC={args.sync}")
        print(f"  requests/s  {sent / elapsed:8.0f}")
        print(f"  p50         {q[49] * 1000:8.1f} ms")
        print(f"  p99         {q[98] * 1000:8.1f} ms")
        print(f"  max         {max(latencies) * 1000:8.1f} ms")
        print(f"  non-200     {len(errors)}")
        print(f"  all {sent} replies at the sandbox after "
              + (f"{replied:.1f} s" if replied else "(timed out)"))


if __name__ == "__main__":
    main()
