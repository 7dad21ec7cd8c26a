"""A local Twilio sandbox: the REST API v2010 subset the SMS channel uses, and a phone.

Run it with ``python -m sophon_sms_twilio.sandbox --sms-url http://127.0.0.1:8080/...``,
or in tests::

    from sophon_sms_twilio.sandbox import Sandbox

    with Sandbox() as sb:
        account = sb.add_account()
        sb.add_number(account.sid, "+15005550006", sms_url=webhook_url)
        client = sb.twilio_client(account.sid)  # twilio.rest.Client aimed at sb.url

WhatsApp: ``sb.add_number(account.sid, "+15005550020", sms_url=hook, whatsapp=True)``, then
``sb.send_inbound(from_="whatsapp:+15551230001", to="whatsapp:+15005550020", body="hi")``;
see the server module's docstring for media, the 24-hour window and status callbacks.
"""

from .server import (
    API_VERSION,
    DEMO_ACCOUNT_SID,
    DEMO_AUTH_TOKEN,
    DEMO_NUMBER,
    DEMO_PEER,
    DEMO_SPARE_NUMBER,
    DEMO_WHATSAPP_NUMBER,
    Account,
    Number,
    Sandbox,
    SandboxError,
    demo_sandbox,
    main,
)
from ..segments import count_segments

__all__ = [
    "API_VERSION",
    "DEMO_ACCOUNT_SID",
    "DEMO_AUTH_TOKEN",
    "DEMO_NUMBER",
    "DEMO_PEER",
    "DEMO_SPARE_NUMBER",
    "DEMO_WHATSAPP_NUMBER",
    "Account",
    "Number",
    "Sandbox",
    "SandboxError",
    "count_segments",
    "demo_sandbox",
    "main",
]
