"""Constants and builders shared by the SMS plugin's tests."""
from __future__ import annotations

import time
from urllib.parse import urlencode

from twilio.request_validator import RequestValidator

NUMBER = "+15005550006"
PEER = "+15551230001"
PUBLIC = "https://bot.example.com"
WEBHOOK = "/api/channels/sms/webhook"


def sms_channel(account, cid="sms-twilio", number=NUMBER, **extra):
    """A channel for the sandbox account. Pacing is effectively off (the pacing tests set it)."""
    return {"id": cid, "type": "sms", "name": "Sophon SMS", "enabled": True,
            "config": {"accountSid": account.sid, "authToken": account.auth_token, "phoneNumber": number},
            "routing": {"agentId": "default", "dmBehavior": "per-peer"},
            "limits": {"sendRate": 1000}, **extra}


def inbound_form(account_sid, body="hello", sender=PEER, to=NUMBER, sid=None, **extra):
    sid = sid or f"SM{time.time_ns():032x}"[:34]
    form = {"ToCountry": "US", "ToState": "CA", "SmsMessageSid": sid, "NumMedia": "0", "ToCity": "",
            "FromZip": "", "SmsSid": sid, "FromState": "CA", "SmsStatus": "received", "FromCity": "",
            "Body": body, "FromCountry": "US", "To": to, "ToZip": "", "NumSegments": "1",
            "MessageSid": sid, "AccountSid": account_sid, "From": sender, "ApiVersion": "2010-04-01"}
    form.update(extra)
    return {k: v for k, v in form.items() if v is not None}


def post_signed(client, token, form, *, url=PUBLIC + WEBHOOK, signature=None, path=WEBHOOK, headers=None):
    """POST a form to the Falcon test client, signed as Twilio signs it for ``url``."""
    sig = RequestValidator(token).compute_signature(url, form) if signature is None else signature
    hdrs = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": sig, **(headers or {})}
    if signature == "":
        del hdrs["X-Twilio-Signature"]
    return client.simulate_post(path, body=urlencode(form), headers=hdrs)
