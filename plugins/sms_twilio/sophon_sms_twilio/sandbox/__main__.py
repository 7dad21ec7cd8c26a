"""``python -m sophon_sms_twilio.sandbox``: run the demo Twilio sandbox until Ctrl-C."""

import sys

from .server import main

if __name__ == "__main__":
    sys.exit(main())
