"""Pre-signed Twilio webhooks for the load generator.

Each request is a real Twilio-shaped inbound SMS form (the fields Twilio posts
for an incoming message, ``application/x-www-form-urlencoded``) with a unique
``MessageSid`` (``SM`` + 32 hex), a unique body, a unique
``I-Twilio-Idempotency-Token`` and the ``X-Twilio-Signature`` Twilio computes
for the exact URL (HMAC-SHA1 of the URL plus the sorted fields, keyed with the
Auth Token). One line per request: ``signature\\tidempotency token\\tbody``.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote_plus, urlencode

from twilio.request_validator import RequestValidator


def scattered_sid(seed: str) -> str:
    """A Twilio-shaped MessageSid (``SM`` + 32 hex) derived from ``seed``: distinct seeds give
    sids scattered over the whole key space, as Twilio's are."""
    return "SM" + hashlib.blake2b(seed.encode(), digest_size=16).hexdigest()


def sender_numbers(count: int = 200) -> list[str]:
    """The phone numbers the benchmark's messages come from (``+1555`` and seven digits)."""
    return [f"+1555{n:07d}" for n in range(1, count + 1)]


class Signer:
    """Signs webhooks for one account and URL; every MessageSid it makes is new.

    The sids are ``SM`` + 32 hex of a hash of a per-process random prefix and a counter:
    no two requests of one benchmark run (or, in practice, of two runs) share one, and,
    like Twilio's, consecutive sids are scattered over the whole key space (so each one
    lands on its own page of the store's unique index, not after the one before).
    """

    def __init__(self, account_sid: str, auth_token: str, url: str, senders: int = 200):
        self.account_sid = account_sid
        self.url = url
        self.key = auth_token.encode("utf-8")
        self.validator = RequestValidator(auth_token)
        self.prefix = secrets.token_hex(4)
        self.counter = itertools.count(1)
        self.senders = sender_numbers(senders)

    def form(self, to: str, n: int | None = None) -> dict[str, str]:
        n = next(self.counter) if n is None else n
        sid = scattered_sid(f"{self.prefix}:{n}")
        return {"ToCountry": "US", "ToState": "CA", "SmsMessageSid": sid, "NumMedia": "0", "ToCity": "",
                "FromZip": "", "SmsSid": sid, "FromState": "CA", "SmsStatus": "received", "FromCity": "",
                "Body": f"bench m{n:x}", "FromCountry": "US", "To": to, "ToZip": "", "NumSegments": "1",
                "MessageSid": sid, "AccountSid": self.account_sid, "From": self.senders[n % len(self.senders)],
                "ApiVersion": "2010-04-01"}

    def signature(self, form: dict[str, str]) -> str:
        """Twilio's X-Twilio-Signature (what ``RequestValidator.compute_signature`` returns for
        single-valued fields, about ten times faster; ``write`` checks it against the SDK)."""
        data = self.url + "".join(k + form[k] for k in sorted(form))
        return base64.b64encode(hmac.new(self.key, data.encode("utf-8"), hashlib.sha1).digest()).decode()

    def sign(self, form: dict[str, str]) -> tuple[str, str, str]:
        """``(signature, idempotency token, body)`` of one request."""
        token = f"{self.prefix}-{form['MessageSid']}"
        return self.signature(form), token, "&".join(f"{k}={self._quote(v)}" for k, v in form.items())

    _SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
    _quoted: ClassVar[dict[str, str]] = {}

    def _quote(self, value: str) -> str:
        """``quote_plus`` (what ``urlencode`` does), fast for the values these forms hold."""
        if self._SAFE.issuperset(value):
            return value
        if value.startswith("bench ") and self._SAFE.issuperset(value[6:]):
            return "bench+" + value[6:]
        quoted = self._quoted.get(value)
        if quoted is None:
            quoted = self._quoted[value] = quote_plus(value)
        return quoted

    def requests(self, count: int, numbers: Sequence[str]) -> Iterator[tuple[dict, tuple[str, str, str]]]:
        for i in range(count):
            form = self.form(numbers[i % len(numbers)])
            yield form, self.sign(form)

    def write(self, path: Path, count: int, numbers: Sequence[str]) -> list[str]:
        """Write ``count`` requests (cycling through ``numbers`` as ``To``) to ``path``.

        :return: the MessageSids in file order (line i is request i).
        """
        sids = []
        tmp = Path(f"{path}.tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            for form, (sig, token, body) in self.requests(count, numbers):
                if len(sids) < 3 and (sig != self.validator.compute_signature(self.url, form)
                                      or body != urlencode(form)):
                    raise AssertionError("the bench's signing differs from twilio's RequestValidator / urlencode")
                f.write(f"{sig}\t{token}\t{body}\n")
                sids.append(form["MessageSid"])
        tmp.replace(path)
        return sids
